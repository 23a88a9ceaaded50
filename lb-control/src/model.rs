//! The operator's view of the balancer: VIPs and their backends. The config
//! file, the API and the state file all speak these types; the engine turns
//! them into map contents.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use lb_common::{IPPROTO_TCP, IPPROTO_UDP, VIP_F_HASH_NO_SRC_PORT, VIP_F_NO_CONN_TABLE, VIP_F_UDP_NO_CONN_TABLE};
use serde::{Deserialize, Serialize};

/// Largest backend weight accepted.
pub const MAX_WEIGHT: u32 = 10_000;

/// A backend's weight when the config or an API call gives none.
pub const DEFAULT_WEIGHT: u32 = 1;

/// [`DEFAULT_WEIGHT`], for `#[serde(default = ...)]`.
pub fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

impl FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            other => Err(format!("unknown protocol '{other}' (expected tcp or udp)")),
        }
    }
}

/// A VIP's identity: address, port (0 = every port) and protocol. Written
/// `tcp:10.0.0.10:80` or `udp:[fc00::10]:443` in URLs, logs and the CLI: one
/// path segment, no escaping needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VipId {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for VipId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.proto, SocketAddr::new(self.addr, self.port))
    }
}

impl FromStr for VipId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (proto, sock) = s
            .split_once(':')
            .ok_or_else(|| format!("'{s}' is not a VIP: expected PROTOCOL:ADDRESS:PORT, e.g. tcp:10.0.0.10:80"))?;
        let sock: SocketAddr =
            sock.parse().map_err(|_| format!("'{sock}' is not ADDRESS:PORT (IPv6 in brackets: [fc00::1]:80)"))?;
        Ok(VipId { addr: sock.ip(), port: sock.port(), proto: proto.parse()? })
    }
}

impl Serialize for VipId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VipId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Per-VIP behaviour switches. The same kebab-case names in the config,
/// the API and lbctl's `--flag`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, clap::ValueEnum, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
#[clap(rename_all = "kebab-case")]
pub enum VipFlag {
    /// Hash on the client address only: one client, one backend.
    HashNoSrcPort,
    /// Never use the connection table.
    NoConnTable,
    /// UDP never uses the connection table.
    UdpNoConnTable,
}

impl VipFlag {
    pub fn bits(flags: &[VipFlag]) -> u32 {
        flags.iter().fold(0, |acc, f| {
            acc | match f {
                VipFlag::HashNoSrcPort => VIP_F_HASH_NO_SRC_PORT,
                VipFlag::NoConnTable => VIP_F_NO_CONN_TABLE,
                VipFlag::UdpNoConnTable => VIP_F_UDP_NO_CONN_TABLE,
            }
        })
    }
}

/// One backend of a VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// Relative weight; 0 drains the backend: no new flows, established
    /// ones stay through the connection table.
    pub weight: u32,
}

/// What the operator wants a VIP to be.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipSpec {
    #[serde(default)]
    pub flags: Vec<VipFlag>,
    #[serde(default)]
    pub backends: BTreeMap<IpAddr, Backend>,
}

impl VipSpec {
    pub fn flag_bits(&self) -> u32 {
        VipFlag::bits(&self.flags)
    }
}

/// The whole set of VIPs.
pub type VipSet = BTreeMap<VipId, VipSpec>;

/// Checks a VIP/backend combination the data plane can carry.
pub fn check_backend_family(vip: &VipId, backend: IpAddr) -> Result<(), String> {
    if vip.addr.is_ipv6() && backend.is_ipv4() {
        return Err(format!("backend {backend} is IPv4 but VIP {vip} is IPv6: IPv6 cannot be carried inside IPv4"));
    }
    Ok(())
}

/// Why an address can never be a VIP's or a backend's. The API answers 400
/// with [`AddressError::CODE`]; the config names the key.
#[derive(thiserror::Error, Clone, Debug, PartialEq, Eq)]
pub enum AddressError {
    #[error("{role} {addr} is the unspecified address")]
    Unspecified { role: &'static str, addr: IpAddr },
    #[error("{role} {addr} is the broadcast address")]
    Broadcast { role: &'static str, addr: IpAddr },
    #[error("{role} {addr} is a multicast address")]
    Multicast { role: &'static str, addr: IpAddr },
    #[error("{role} {addr} is a loopback address: it never leaves its host")]
    Loopback { role: &'static str, addr: IpAddr },
    #[error("backend {addr} is the address of VIP {vip} itself")]
    OwnVip { vip: VipId, addr: IpAddr },
    #[error("backend {mapped} is {v4} written as IPv4-mapped IPv6, and {v4} is a backend of VIP {vip} too")]
    MappedTwin { vip: VipId, mapped: IpAddr, v4: IpAddr },
}

impl AddressError {
    /// The API's stable error code: `invalid_address` for an address that
    /// is wrong on its own (the OpenAPI schema's patterns exclude those),
    /// `backend_is_vip` and `duplicate_backend` for an address wrong only
    /// beside another (no schema can say so).
    pub fn code(&self) -> &'static str {
        match self {
            AddressError::OwnVip { .. } => "backend_is_vip",
            AddressError::MappedTwin { .. } => "duplicate_backend",
            _ => "invalid_address",
        }
    }
}

/// Addresses that are never a unicast host on the wire.
fn check_unicast(role: &'static str, addr: IpAddr) -> Result<(), AddressError> {
    // An IPv4-mapped address is judged as the IPv4 address it maps.
    let canonical = addr.to_canonical();
    if canonical.is_unspecified() {
        return Err(AddressError::Unspecified { role, addr });
    }
    if canonical.is_multicast() {
        return Err(AddressError::Multicast { role, addr });
    }
    if canonical.is_loopback() {
        return Err(AddressError::Loopback { role, addr });
    }
    if matches!(canonical, IpAddr::V4(a) if a.is_broadcast()) {
        return Err(AddressError::Broadcast { role, addr });
    }
    Ok(())
}

/// Checks that a VIP's address can receive traffic.
pub fn check_vip_addr(addr: IpAddr) -> Result<(), AddressError> {
    check_unicast("VIP", addr)
}

/// Checks one backend address of a VIP: a unicast host other than the VIP.
pub fn check_backend_addr(vip: &VipId, addr: IpAddr) -> Result<(), AddressError> {
    check_unicast("backend", addr)?;
    if addr.to_canonical() == vip.addr.to_canonical() {
        return Err(AddressError::OwnVip { vip: *vip, addr });
    }
    Ok(())
}

/// Checks a VIP's backend list as a whole: an IPv4 address and its
/// IPv4-mapped IPv6 form are the same host listed twice.
pub fn check_backend_set<'a>(vip: &VipId, addrs: impl IntoIterator<Item = &'a IpAddr>) -> Result<(), AddressError> {
    let addrs: Vec<IpAddr> = addrs.into_iter().copied().collect();
    for mapped in addrs.iter().filter(|a| a.is_ipv6()) {
        let v4 = mapped.to_canonical();
        if v4.is_ipv4() && addrs.contains(&v4) {
            return Err(AddressError::MappedTwin { vip: *vip, mapped: *mapped, v4 });
        }
    }
    Ok(())
}

pub fn check_weight(weight: u32) -> Result<(), String> {
    if weight > MAX_WEIGHT {
        return Err(format!("weight {weight} is out of range 0..={MAX_WEIGHT}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vip_ids_round_trip_through_text() {
        for s in ["tcp:10.0.0.10:80", "udp:[fc00::10]:443", "tcp:10.0.0.1:0"] {
            let id: VipId = s.parse().unwrap();
            assert_eq!(id.to_string(), s);
        }
        assert!("10.0.0.10:80".parse::<VipId>().is_err());
        assert!("sctp:10.0.0.10:80".parse::<VipId>().unwrap_err().contains("sctp"));
        assert!("tcp:fc00::1:80".parse::<VipId>().unwrap_err().contains("brackets"));
    }

    #[test]
    fn addresses_that_are_never_right_are_refused() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let vip4: VipId = "tcp:10.0.0.10:80".parse().unwrap();
        let vip6: VipId = "tcp:[fc00::10]:80".parse().unwrap();
        for bad in ["0.0.0.0", "::", "255.255.255.255", "224.0.0.1", "ff02::1", "127.0.0.1", "::1", "::ffff:0.0.0.0"] {
            assert!(check_vip_addr(ip(bad)).is_err(), "VIP {bad}");
            assert!(check_backend_addr(&vip6, ip(bad)).is_err(), "backend {bad}");
        }
        assert!(matches!(check_backend_addr(&vip4, ip("10.0.0.10")), Err(AddressError::OwnVip { .. })));
        assert!(matches!(check_backend_addr(&vip4, ip("::ffff:10.0.0.10")), Err(AddressError::OwnVip { .. })));
        assert!(matches!(check_backend_addr(&vip6, ip("fc00::10")), Err(AddressError::OwnVip { .. })));
        for good in ["10.1.0.1", "192.0.2.1", "fc00:1::1", "2001:db8::1", "::ffff:10.1.0.1"] {
            assert_eq!(check_backend_addr(&vip6, ip(good)), Ok(()), "{good}");
            assert_eq!(check_vip_addr(ip(good)), Ok(()), "{good}");
        }
        let twins = [ip("10.1.0.1"), ip("::ffff:10.1.0.1")];
        let err = check_backend_set(&vip4, &twins).unwrap_err();
        assert!(err.to_string().contains("IPv4-mapped"), "{err}");
        assert_eq!(check_backend_set(&vip4, &[ip("10.1.0.1"), ip("::ffff:10.1.0.2")]), Ok(()));
    }
}
