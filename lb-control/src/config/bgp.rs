//! `[bgp]`: announcing the VIP addresses this host can serve through BIRD
//! (see [`crate::bgp`]): the validated table and its checks.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::problem::Checker;

/// `[bgp]`: announce the VIP addresses this host can serve through BIRD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bgp {
    pub enabled: bool,
    /// BIRD's control socket (`birdc -s`).
    pub bird_socket: PathBuf,
    /// The include file of generated static protocols BIRD's config reads.
    pub include_file: PathBuf,
    /// Backends up (weight > 0) a VIP needs for its address to be announced.
    pub min_healthy: u32,
    /// Communities attached to every announced route.
    pub communities: Vec<crate::bgp::Community>,
}

pub const DEFAULT_BIRD_SOCKET: &str = "/run/bird/bird.ctl";
pub const DEFAULT_BGP_INCLUDE_FILE: &str = "/run/xdp-lb/bird-vips.conf";

impl Default for Bgp {
    fn default() -> Self {
        Bgp {
            enabled: false,
            bird_socket: DEFAULT_BIRD_SOCKET.into(),
            include_file: DEFAULT_BGP_INCLUDE_FILE.into(),
            min_healthy: 1,
            communities: Vec::new(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBgp {
    enabled: Option<bool>,
    bird_socket: Option<Spanned<PathBuf>>,
    include_file: Option<Spanned<PathBuf>>,
    min_healthy: Option<Spanned<u32>>,
    #[serde(default)]
    communities: Vec<Spanned<String>>,
}

pub(super) fn validate_bgp(c: &mut Checker<'_>, raw: &RawBgp) -> Option<Bgp> {
    let d = Bgp::default();
    let mut path = |v: &Option<Spanned<PathBuf>>, key: &str, default: PathBuf| match v {
        None => Some(default),
        Some(p) if p.get_ref().is_absolute() && p.get_ref().file_name().is_some() => Some(p.get_ref().clone()),
        Some(p) => {
            c.add(&p.span(), key, format!("'{}' is not an absolute file path", p.get_ref().display()));
            None
        }
    };
    let bird_socket = path(&raw.bird_socket, "bgp.bird_socket", d.bird_socket);
    let include_file = path(&raw.include_file, "bgp.include_file", d.include_file);
    let mut communities = Vec::new();
    for (i, s) in raw.communities.iter().enumerate() {
        match s.get_ref().parse::<crate::bgp::Community>() {
            Ok(x) if communities.contains(&x) => {
                c.add(&s.span(), format!("bgp.communities[{i}]"), format!("{x} is listed twice"))
            }
            Ok(x) => communities.push(x),
            Err(e) => c.add(&s.span(), format!("bgp.communities[{i}]"), e),
        }
    }
    Some(Bgp {
        enabled: raw.enabled.unwrap_or(d.enabled),
        bird_socket: bird_socket?,
        include_file: include_file?,
        min_healthy: raw.min_healthy.as_ref().map_or(d.min_healthy, |m| *m.get_ref()),
        communities,
    })
}
