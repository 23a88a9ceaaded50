//! The daemon's TOML config: parsed with serde, then validated into a
//! [`Config`]. Every error names the line, the column and the key.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

use crate::{
    dataplane::Limits,
    model::{check_backend_family, check_weight, Backend, Proto, VipFlag, VipId, VipSet, VipSpec},
};

pub type Mac = [u8; 6];

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver (fastest; the NIC driver must support it).
    #[default]
    Native,
    /// In the kernel's generic path (any interface; slower).
    Generic,
    /// Native if the driver can, generic otherwise.
    Auto,
}

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

pub fn parse_mac(s: &str) -> Result<Mac, String> {
    let parts: Vec<_> = s.split(':').collect();
    let bad = || format!("'{s}' is not a MAC address (aa:bb:cc:dd:ee:ff)");
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *m = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(mac)
}

pub fn format_mac(mac: &Mac) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
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
}

/// A validated config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    /// bpffs directory the program link and maps are pinned under.
    pub pin_dir: PathBuf,
    /// Where API changes are persisted.
    pub state_file: PathBuf,
    pub encap: Encap,
    pub gateway: Gateway,
    pub limits: Limits,
    pub api: Api,
    pub bgp: Bgp,
    pub vips: VipSet,
}

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xdp-lb";
pub const DEFAULT_STATE_FILE: &str = "/var/lib/xdp-lb/state.json";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9780";

// ---- raw TOML shape -----------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interfaces: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    xdp_mode: XdpMode,
    pin_dir: Option<PathBuf>,
    state_file: Option<PathBuf>,
    #[serde(default)]
    encap: RawEncap,
    #[serde(default)]
    gateway: RawGateway,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    bgp: RawBgp,
    #[serde(default, rename = "vip")]
    vips: Vec<Spanned<RawVip>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEncap {
    source_v4: Option<Spanned<String>>,
    source_v6: Option<Spanned<String>>,
    mtu: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    mac: Option<Spanned<String>>,
    interface_mac: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    ring_size: Option<Spanned<u32>>,
    max_vips: Option<Spanned<u32>>,
    max_backends: Option<Spanned<u32>>,
    conn_table_size: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApi {
    listen: Option<Spanned<String>>,
    token_file: Option<PathBuf>,
    max_body_bytes: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    address: Spanned<String>,
    port: Spanned<u32>,
    protocol: Spanned<String>,
    #[serde(default)]
    flags: Vec<Spanned<VipFlag>>,
    #[serde(default, rename = "backend")]
    backends: Vec<Spanned<RawBackend>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Spanned<String>,
    #[serde(default = "default_weight")]
    weight: Spanned<u32>,
}

fn default_weight() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

// ---- errors -------------------------------------------------------------

/// One problem in a config file, located.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.key, self.message)
        } else {
            write!(f, "line {}, column {}: {}: {}", self.line, self.column, self.key, self.message)
        }
    }
}

#[derive(thiserror::Error, Debug)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(p) => p,
            ConfigError::Read { .. } => &[],
        }
    }
}

/// Collects problems with their positions in the source text.
struct Checker<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn position(&self, span: &Range<usize>) -> (usize, usize) {
        if span.is_empty() && span.start == 0 {
            return (0, 0);
        }
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rfind('\n').map_or(before.len(), |i| before.len() - i - 1) + 1;
        (line, column)
    }

    fn add(&mut self, span: &Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        let (line, column) = self.position(span);
        self.problems.push(Problem { line, column, key: key.into(), message: message.into() });
    }

    fn ip(&mut self, value: &Spanned<String>, key: &str) -> Option<IpAddr> {
        match value.get_ref().parse::<IpAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.add(&value.span(), key, format!("'{}' is not an IP address", value.get_ref()));
                None
            }
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse(&text)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut c = Checker { text, problems: Vec::new() };
        let raw: RawConfig = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                let key = key_at(text, &span);
                c.add(&span, key, e.message().to_string());
                return Err(ConfigError::Invalid(c.problems));
            }
        };
        let config = validate(&mut c, raw);
        if c.problems.is_empty() {
            Ok(config.expect("no problems means a config"))
        } else {
            Err(ConfigError::Invalid(c.problems))
        }
    }
}

/// The key of the line a span starts on, for parse errors toml reports
/// without one.
fn key_at(text: &str, span: &Range<usize>) -> String {
    let start = text[..span.start.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    match line.split_once('=') {
        Some((k, _)) => k.trim().to_string(),
        None => line.trim().to_string(),
    }
}

fn validate(c: &mut Checker<'_>, raw: RawConfig) -> Option<Config> {
    // Interfaces.
    let mut interfaces = Vec::new();
    if raw.interfaces.get_ref().is_empty() {
        c.add(&raw.interfaces.span(), "interfaces", "at least one interface is needed");
    }
    for (i, name) in raw.interfaces.get_ref().iter().enumerate() {
        let n = name.get_ref();
        if n.is_empty() || n.len() > 15 || n.contains(['/', ' ']) {
            c.add(&name.span(), format!("interfaces[{i}]"), format!("'{n}' is not an interface name"));
        } else if interfaces.contains(n) {
            c.add(&name.span(), format!("interfaces[{i}]"), format!("'{n}' is listed twice"));
        } else {
            interfaces.push(n.clone());
        }
    }

    // Encapsulation.
    let source_v4 = match &raw.encap.source_v4 {
        Some(s) => parse_prefix::<Ipv4Addr>(s.get_ref(), 32)
            .map_err(|e| c.add(&s.span(), "encap.source_v4", e))
            .ok(),
        None => Some(Prefix { addr: Ipv4Addr::new(172, 16, 0, 0), len: 16 }),
    };
    let source_v6 = match &raw.encap.source_v6 {
        Some(s) => parse_prefix::<Ipv6Addr>(s.get_ref(), 128)
            .map_err(|e| c.add(&s.span(), "encap.source_v6", e))
            .ok(),
        None => Some(Prefix { addr: "fc00:ffff::".parse().expect("literal"), len: 96 }),
    };
    let mtu = raw.encap.mtu.as_ref().map_or(lb_common::DEFAULT_MTU, |m| *m.get_ref());
    if !(576..=65535).contains(&mtu) {
        let span = raw.encap.mtu.as_ref().map(|m| m.span()).unwrap_or(0..0);
        c.add(&span, "encap.mtu", format!("{mtu} is outside 576..=65535"));
    }

    // Gateway overrides.
    let mut mac = |v: &Option<Spanned<String>>, key: &str| {
        v.as_ref().and_then(|s| parse_mac(s.get_ref()).map_err(|e| c.add(&s.span(), key, e)).ok())
    };
    let gateway = Gateway { mac: mac(&raw.gateway.mac, "gateway.mac"), interface_mac: mac(&raw.gateway.interface_mac, "gateway.interface_mac") };

    // Limits.
    let d = Limits::default();
    let get = |v: &Option<Spanned<u32>>, default: u32| v.as_ref().map_or(default, |x| *x.get_ref());
    let limits = Limits {
        ring_size: get(&raw.limits.ring_size, d.ring_size),
        max_vips: get(&raw.limits.max_vips, d.max_vips),
        // The data plane reserves index 0.
        max_reals: get(&raw.limits.max_backends, d.max_reals - 1).saturating_add(1),
        conn_table_size: get(&raw.limits.conn_table_size, d.conn_table_size),
    };
    if let Some(r) = &raw.limits.ring_size {
        if !is_prime(*r.get_ref()) {
            c.add(&r.span(), "limits.ring_size", format!("{} is not a prime (Maglev needs one; the default is 65537)", r.get_ref()));
        }
    }
    if let Err(e) = limits.validate() {
        let span = raw.limits.ring_size.as_ref().or(raw.limits.max_vips.as_ref()).map(|s| s.span()).unwrap_or(0..0);
        c.add(&span, "limits", e.to_string());
    }

    // API.
    let listen = match &raw.api.listen {
        Some(s) => s.get_ref().parse::<SocketAddr>().map_err(|_| c.add(&s.span(), "api.listen", format!("'{}' is not ADDRESS:PORT", s.get_ref()))).ok(),
        None => Some(DEFAULT_LISTEN.parse().expect("literal")),
    };
    let max_body_bytes = raw.api.max_body_bytes.as_ref().map_or(1 << 20, |s| *s.get_ref());

    // VIPs.
    let mut vips = VipSet::new();
    let mut all_backends = BTreeSet::new();
    for (i, v) in raw.vips.iter().enumerate() {
        let v_span = v.span();
        let v = v.get_ref();
        let key = format!("vip[{i}]");
        let addr = c.ip(&v.address, &format!("{key}.address"));
        let port = *v.port.get_ref();
        if port > u16::MAX as u32 {
            c.add(&v.port.span(), format!("{key}.port"), format!("{port} is not a port (0..=65535; 0 means every port)"));
        }
        let proto = v
            .protocol
            .get_ref()
            .parse::<Proto>()
            .map_err(|e| c.add(&v.protocol.span(), format!("{key}.protocol"), e))
            .ok();
        let mut flags: Vec<VipFlag> = v.flags.iter().map(|f| *f.get_ref()).collect();
        flags.sort();
        flags.dedup();
        let (Some(addr), Some(proto), true) = (addr, proto, port <= u16::MAX as u32) else { continue };
        let id = VipId { addr, port: port as u16, proto };
        let mut spec = VipSpec { flags, backends: BTreeMap::new() };
        for (j, b) in v.backends.iter().enumerate() {
            let b = b.get_ref();
            let bkey = format!("{key}.backend[{j}]");
            let Some(baddr) = c.ip(&b.address, &format!("{bkey}.address")) else { continue };
            if let Err(e) = check_backend_family(&id, baddr) {
                c.add(&b.address.span(), format!("{bkey}.address"), e);
                continue;
            }
            if let Err(e) = check_weight(*b.weight.get_ref()) {
                c.add(&b.weight.span(), format!("{bkey}.weight"), e);
                continue;
            }
            if spec.backends.insert(baddr, Backend { weight: *b.weight.get_ref() }).is_some() {
                c.add(&b.address.span(), format!("{bkey}.address"), format!("backend {baddr} is listed twice for VIP {id}"));
            }
            all_backends.insert(baddr);
        }
        if spec.backends.len() as u64 > limits.ring_size as u64 {
            c.add(&v_span, key.clone(), format!("{} backends do not fit a ring of {}", spec.backends.len(), limits.ring_size));
        }
        if vips.insert(id, spec).is_some() {
            c.add(&v.address.span(), format!("{key}.address"), format!("VIP {id} is defined twice"));
        }
    }
    if vips.len() as u64 > limits.max_vips as u64 {
        c.add(&(0..0), "vip", format!("{} VIPs exceed limits.max_vips = {}", vips.len(), limits.max_vips));
    }
    if all_backends.len() as u64 >= limits.max_reals as u64 {
        c.add(&(0..0), "vip.backend", format!("{} distinct backends exceed limits.max_backends = {}", all_backends.len(), limits.max_reals - 1));
    }

    Some(Config {
        interfaces,
        xdp_mode: raw.xdp_mode,
        pin_dir: raw.pin_dir.unwrap_or_else(|| DEFAULT_PIN_DIR.into()),
        state_file: raw.state_file.unwrap_or_else(|| DEFAULT_STATE_FILE.into()),
        encap: Encap { source_v4: source_v4?, source_v6: source_v6?, mtu },
        gateway,
        limits,
        api: Api { listen: listen?, token_file: raw.api.token_file, max_body_bytes },
        bgp: validate_bgp(c, &raw.bgp)?,
        vips,
    })
}

// ---- [bgp]: announcing VIPs through BIRD (see crate::bgp) -------------------

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
struct RawBgp {
    enabled: Option<bool>,
    bird_socket: Option<Spanned<PathBuf>>,
    include_file: Option<Spanned<PathBuf>>,
    min_healthy: Option<Spanned<u32>>,
    #[serde(default)]
    communities: Vec<Spanned<String>>,
}

fn validate_bgp(c: &mut Checker<'_>, raw: &RawBgp) -> Option<Bgp> {
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

// ---- [bgp] end ---------------------------------------------------------------

pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = n as u64;
    let mut d = 2u64;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
interfaces = ["eth0"]
xdp_mode = "generic"
pin_dir = "/sys/fs/bpf/test"

[encap]
source_v4 = "10.255.0.0/16"
source_v6 = "fc00:ffff::/96"
mtu = 9000

[limits]
ring_size = 65537
max_vips = 64
max_backends = 1000

[[vip]]
address = "10.0.0.10"
port = 80
protocol = "tcp"
flags = ["hash-no-src-port"]

[[vip.backend]]
address = "10.1.0.1"
weight = 2

[[vip.backend]]
address = "10.1.0.2"

[[vip]]
address = "fc00::10"
port = 0
protocol = "udp"
"#;

    #[test]
    fn good_config_parses() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.interfaces, ["eth0"]);
        assert_eq!(c.xdp_mode, XdpMode::Generic);
        assert_eq!(c.encap.mtu, 9000);
        assert_eq!(c.limits.max_reals, 1001);
        let id: VipId = "tcp:10.0.0.10:80".parse().unwrap();
        let spec = &c.vips[&id];
        assert_eq!(spec.flags, [VipFlag::HashNoSrcPort]);
        assert_eq!(spec.backends.len(), 2);
        assert_eq!(spec.backends[&"10.1.0.1".parse::<IpAddr>().unwrap()].weight, 2);
        assert_eq!(spec.backends[&"10.1.0.2".parse::<IpAddr>().unwrap()].weight, 1);
        assert!(c.vips.contains_key(&"udp:[fc00::10]:0".parse().unwrap()));
    }

    fn problems(text: &str) -> Vec<Problem> {
        Config::parse(text).unwrap_err().problems().to_vec()
    }

    fn one(text: &str) -> Problem {
        let p = problems(text);
        assert_eq!(p.len(), 1, "{p:?}");
        p[0].clone()
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let p = one("interfaces = [\"eth0\"]\nbogus = 1\n");
        assert_eq!(p.line, 2);
        assert!(p.message.contains("bogus"), "{p}");
        let p = one("interfaces = [\"eth0\"]\n[[vip]]\naddress = \"10.0.0.1\"\nport = 80\nprotocol = \"tcp\"\nwieght = 3\n");
        assert_eq!(p.line, 6, "{p}");
        assert!(p.message.contains("wieght"), "{p}");
    }

    #[test]
    fn bad_addresses_are_located() {
        let text = GOOD.replace("address = \"10.1.0.2\"", "address = \"10.1.0.300\"");
        let p = one(&text);
        assert_eq!(p.key, "vip[0].backend[1].address");
        assert_eq!(p.line, text.lines().position(|l| l.contains("10.1.0.300")).unwrap() + 1);
        assert!(p.message.contains("10.1.0.300"));
    }

    #[test]
    fn duplicates_are_errors() {
        let dup_vip = format!("{GOOD}\n[[vip]]\naddress = \"10.0.0.10\"\nport = 80\nprotocol = \"tcp\"\n");
        let p = one(&dup_vip);
        assert!(p.message.contains("defined twice"), "{p}");
        assert_eq!(p.line, dup_vip.lines().count() - 2);
        let dup_backend = GOOD.replace("address = \"10.1.0.2\"", "address = \"10.1.0.1\"");
        assert!(one(&dup_backend).message.contains("listed twice"));
    }

    #[test]
    fn ranges_and_limits() {
        assert!(one(&GOOD.replace("weight = 2", "weight = 10001")).message.contains("out of range"));
        assert!(one(&GOOD.replace("port = 80", "port = 70000")).key.ends_with(".port"));
        assert!(one(&GOOD.replace("ring_size = 65537", "ring_size = 65536")).message.contains("prime"));
        assert!(one(&GOOD.replace("mtu = 9000", "mtu = 100")).key == "encap.mtu");
        assert!(one(&GOOD.replace("max_vips = 64", "max_vips = 1")).message.contains("exceed"));
        assert!(one(&GOOD.replace("max_backends = 1000", "max_backends = 1")).message.contains("exceed"));
        assert!(one(&GOOD.replace("\"udp\"", "\"sctp\"")).message.contains("sctp"));
        assert!(one(&GOOD.replace("\"10.255.0.0/16\"", "\"10.255.0.0/33\"")).key == "encap.source_v4");
        assert!(one(&GOOD.replace("\"hash-no-src-port\"", "\"sticky\"")).message.contains("sticky"));
    }

    #[test]
    fn ipv4_backend_of_ipv6_vip_is_refused() {
        let text = format!("{GOOD}\n[[vip.backend]]\naddress = \"10.1.0.9\"\n");
        assert!(one(&text).message.contains("IPv6 cannot be carried inside IPv4"));
    }

    #[test]
    fn several_problems_are_reported_together() {
        let text = GOOD.replace("\"10.1.0.2\"", "\"nope\"").replace("mtu = 9000", "mtu = 1");
        assert_eq!(problems(&text).len(), 2);
    }

    #[test]
    fn interfaces_are_required() {
        assert!(problems("[[vip]]\naddress = \"10.0.0.1\"\nport = 1\nprotocol = \"tcp\"\n")[0].message.contains("interfaces"));
        assert!(one("interfaces = []\n").message.contains("at least one"));
    }

    #[test]
    fn bgp_table() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.bgp, Bgp::default(), "absent: disabled, defaults");
        let text = format!(
            "{GOOD}\n[bgp]\nenabled = true\nbird_socket = \"/run/b.ctl\"\ninclude_file = \"/run/v.conf\"\n\
             min_healthy = 2\ncommunities = [\"65000:100\", \"65000:1:2\"]\n"
        );
        let b = Config::parse(&text).unwrap().bgp;
        assert!(b.enabled);
        assert_eq!(
            (b.bird_socket.to_str(), b.include_file.to_str(), b.min_healthy),
            (Some("/run/b.ctl"), Some("/run/v.conf"), 2)
        );
        assert_eq!(b.communities.iter().map(|c| c.to_string()).collect::<Vec<_>>(), ["65000:100", "65000:1:2"]);
        let p = one(&text.replace("\"65000:1:2\"", "\"65000:70000\""));
        assert_eq!((p.key.as_str(), p.line), ("bgp.communities[1]", text.lines().count()));
        assert!(one(&text.replace("\"65000:1:2\"", "\"65000:100\"")).message.contains("twice"));
        assert_eq!(one(&text.replace("/run/v.conf", "v.conf")).key, "bgp.include_file");
        assert_eq!(one(&text.replace("/run/b.ctl", "")).key, "bgp.bird_socket");
        assert!(one(&text.replace("min_healthy = 2", "min_healty = 2")).message.contains("min_healty"));
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("02:00:00:aa:bb:0c").unwrap(), [2, 0, 0, 0xaa, 0xbb, 0x0c]);
        assert!(parse_mac("02:00:00:aa:bb").is_err());
        assert_eq!(format_mac(&[2, 0, 0, 0xaa, 0xbb, 0x0c]), "02:00:00:aa:bb:0c");
    }
}
