//! The daemon's TOML config: parsed with serde (`raw`), then validated into
//! a [`Config`] (`validate`, `host`). Every error names the file, the line,
//! the column and the key (`problem`).

mod bgp;
pub mod health;
mod host;
mod problem;
mod raw;
mod second_chance;
mod syn_flood;
mod validate;
mod vip_file;

pub use bgp::{Bgp, DEFAULT_BGP_INCLUDE_FILE, DEFAULT_BIRD_SOCKET};
pub use host::{check_pin_dir, read_token};
pub use problem::{ConfigError, Problem};
pub use second_chance::{SecondChance, DEFAULT_SECOND_CHANCE_WINDOW};
pub use syn_flood::{SynFlood, MAX_SYN_FLOOD_THRESHOLD};
pub use vip_file::{
    parse_vip_file, render_vip_file, BackendChanges, FlagChange, HealthChange, VipChange, VipChecks, VipFile,
    VipSetDiff, WeightChange,
};

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{dataplane::Limits, model::VipSet};
use problem::Checker;

pub use crate::dataplane::XdpMode;
pub use lb_common::{format_mac, Mac};

/// An IPv4 or IPv6 prefix the outer source addresses are drawn from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix<A> {
    pub addr: A,
    pub len: u8,
}

impl<A: fmt::Display> fmt::Display for Prefix<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn parse_prefix<A: std::str::FromStr>(s: &str, max: u8) -> Result<Prefix<A>, String> {
    let (a, l) = s.split_once('/').ok_or_else(|| format!("'{s}' is not a prefix (ADDRESS/LENGTH)"))?;
    let addr = a.parse::<A>().map_err(|_| format!("'{a}' is not an address of this family"))?;
    let len: u8 = l.parse().map_err(|_| format!("'{l}' is not a prefix length"))?;
    if len > max {
        return Err(format!("prefix length {len} is longer than {max}"));
    }
    Ok(Prefix { addr, len })
}

/// [`lb_common::parse_mac`] with the text in the message.
pub fn parse_mac(s: &str) -> Result<Mac, String> {
    lb_common::parse_mac(s).map_err(|e| format!("'{s}' is {e}"))
}

/// Outer-header settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encap {
    pub source_v4: Prefix<Ipv4Addr>,
    pub source_v6: Prefix<Ipv6Addr>,
    /// Largest L3 packet the egress link carries, outer header included.
    pub mtu: u32,
}

/// Overrides for what netlink would discover.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gateway {
    pub mac: Option<Mac>,
    pub interface_mac: Option<Mac>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Api {
    pub listen: SocketAddr,
    pub token_file: Option<PathBuf>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// A connection that has not sent a whole request head within this is
    /// closed.
    pub header_read_timeout: Duration,
    /// A connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; more are closed as soon as accepted.
    pub max_connections: usize,
}

/// What the daemon does when the balancer is detached behind its back
/// (`lb-control detach --force`, `bpftool`, the interface going away).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reattach {
    /// Attach again at once (and again whenever it is removed).
    #[default]
    Auto,
    /// Stay detached, not ready and refusing changes, until a restart.
    Never,
}

/// A validated config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub reattach: Reattach,
    /// bpffs directory the program link and maps are pinned under.
    pub pin_dir: PathBuf,
    /// Where API changes are persisted.
    pub state_file: PathBuf,
    pub encap: Encap,
    pub gateway: Gateway,
    pub limits: Limits,
    pub api: Api,
    pub bgp: Bgp,
    pub second_chance: SecondChance,
    pub syn_flood: SynFlood,
    /// `[health]` and `[vip.health]`.
    pub health: health::HealthSettings,
    pub vips: VipSet,
}

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xdp-lb";
pub const DEFAULT_STATE_FILE: &str = "/var/lib/xdp-lb/state.json";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9780";
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Longest API timeout accepted (a day): longer is a typo, not a choice.
const MAX_TIMEOUT_SECS: u64 = 86_400;

pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

impl Config {
    /// Reads and validates a config file, the host included (the pin
    /// directory is on bpffs, the token file can be read): what `check`,
    /// start-up and SIGHUP all do.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::check_text(&text, &path.display().to_string(), true)
    }

    /// Parses and validates config text, without looking at the host.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::check_text(text, "<config>", false)
    }

    fn check_text(text: &str, file: &str, check_host: bool) -> Result<Config, ConfigError> {
        let mut c = Checker::new(text, check_host);
        let config = match toml::from_str::<raw::RawConfig>(text) {
            Ok(raw) => validate::validate(&mut c, raw),
            Err(e) => {
                c.add_toml_error(&e);
                None
            }
        };
        match config {
            Some(config) if c.problems.is_empty() => Ok(config),
            _ => Err(ConfigError::Invalid { file: file.to_string(), problems: c.problems }),
        }
    }
}

pub use lb_common::is_prime;

#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;
