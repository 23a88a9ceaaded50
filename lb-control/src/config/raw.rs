//! The config file's TOML shape, as serde reads it: every value that can be
//! wrong keeps its span, so validation can name the line and column.

use serde::Deserialize;
use toml::Spanned;

use super::{Reattach, XdpMode};
use crate::model::VipFlag;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub interfaces: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub xdp_mode: XdpMode,
    #[serde(default)]
    pub reattach: Reattach,
    pub pin_dir: Option<Spanned<String>>,
    pub state_file: Option<Spanned<String>>,
    #[serde(default)]
    pub encap: RawEncap,
    #[serde(default)]
    pub gateway: RawGateway,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub api: RawApi,
    #[serde(default)]
    pub bgp: super::bgp::RawBgp,
    #[serde(default)]
    pub second_chance: super::second_chance::RawSecondChance,
    #[serde(default)]
    pub syn_flood: super::syn_flood::RawSynFlood,
    pub health: Option<Spanned<super::health::RawHealthCheck>>,
    #[serde(default, rename = "vip")]
    pub vips: Vec<Spanned<RawVip>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEncap {
    pub source_v4: Option<Spanned<String>>,
    pub source_v6: Option<Spanned<String>>,
    pub mtu: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    pub mac: Option<Spanned<String>>,
    pub interface_mac: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub ring_size: Option<Spanned<u32>>,
    pub max_vips: Option<Spanned<u32>>,
    pub max_backends: Option<Spanned<u32>>,
    pub conn_table_size: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    pub listen: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
    pub max_body_bytes: Option<Spanned<usize>>,
    pub header_read_timeout_secs: Option<Spanned<u64>>,
    pub idle_timeout_secs: Option<Spanned<u64>>,
    pub max_connections: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVip {
    pub address: Spanned<String>,
    pub port: Spanned<u32>,
    pub protocol: Spanned<String>,
    #[serde(default)]
    pub flags: Vec<Spanned<VipFlag>>,
    #[serde(default, rename = "backend")]
    pub backends: Vec<Spanned<RawBackend>>,
    pub health: Option<Spanned<super::health::RawHealthCheck>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub address: Spanned<String>,
    #[serde(default = "default_weight")]
    pub weight: Spanned<u32>,
}

fn default_weight() -> Spanned<u32> {
    Spanned::new(0..0, crate::model::DEFAULT_WEIGHT)
}
