//! Addresses as the data plane keeps them: four network-order words, with
//! the conversions user space needs.

/// An IPv4 or IPv6 address as four words holding the network-order bytes
/// (`u32::from_ne_bytes` of each 4-byte group). IPv4 uses word 0 only.
pub type Addr = [u32; 4];

/// Converts IPv4 octets to an [`Addr`].
#[inline(always)]
pub const fn addr_v4(octets: [u8; 4]) -> Addr {
    [u32::from_ne_bytes(octets), 0, 0, 0]
}

/// Converts IPv6 octets to an [`Addr`].
#[inline(always)]
pub const fn addr_v6(o: [u8; 16]) -> Addr {
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// Key of the decap program's `DECAP_ADDRS` map: an outer destination this
/// host accepts tunnelled packets for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DecapAddr {
    pub addr: Addr,
    pub family: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<DecapAddr>() == 20);

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, explicit padding: every bit pattern is valid.
unsafe impl aya::Pod for DecapAddr {}

/// A MAC address.
pub type Mac = [u8; 6];

#[cfg(feature = "user")]
mod user {
    use core::{fmt, net::IpAddr};

    use super::{addr_v4, addr_v6, Addr, DecapAddr, Mac};
    use crate::{vip::Real, FAMILY_V4, FAMILY_V6};

    /// An IP address as the data plane's [`Addr`] and family tag.
    pub fn ip_to_addr(ip: IpAddr) -> (Addr, u8) {
        match ip {
            IpAddr::V4(a) => (addr_v4(a.octets()), FAMILY_V4),
            IpAddr::V6(a) => (addr_v6(a.octets()), FAMILY_V6),
        }
    }

    /// The IP address an [`Addr`] of this family holds; `None` for an
    /// unknown family (an empty slot).
    pub fn addr_to_ip(addr: &Addr, family: u8) -> Option<IpAddr> {
        let mut bytes = [0u8; 16];
        for (chunk, word) in bytes.chunks_exact_mut(4).zip(addr) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        match family {
            FAMILY_V4 => Some(IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])),
            FAMILY_V6 => Some(IpAddr::from(bytes)),
            _ => None,
        }
    }

    impl From<IpAddr> for Real {
        fn from(ip: IpAddr) -> Self {
            let (addr, family) = ip_to_addr(ip);
            Real { addr, family, _pad: [0; 3] }
        }
    }

    impl Real {
        /// The backend's address; `None` for an unused slot.
        pub fn ip(&self) -> Option<IpAddr> {
            addr_to_ip(&self.addr, self.family)
        }
    }

    impl From<IpAddr> for DecapAddr {
        fn from(ip: IpAddr) -> Self {
            let (addr, family) = ip_to_addr(ip);
            DecapAddr { addr, family, _pad: [0; 3] }
        }
    }

    /// Why a string is not a MAC address.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct MacParseError;

    impl fmt::Display for MacParseError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("not a MAC address: expected six two-digit hex groups separated by ':' (02:00:5e:00:53:01)")
        }
    }

    /// Parses `aa:bb:cc:dd:ee:ff`: exactly six groups of exactly two hex
    /// digits (no sign, no other separator, no shorter groups).
    pub fn parse_mac(s: &str) -> Result<Mac, MacParseError> {
        let mut mac = [0u8; 6];
        let mut groups = s.split(':');
        for byte in mac.iter_mut() {
            let group = groups.next().ok_or(MacParseError)?.as_bytes();
            let [hi, lo] = group else { return Err(MacParseError) };
            let digit = |c: u8| (c as char).to_digit(16).ok_or(MacParseError);
            *byte = (digit(*hi)? * 16 + digit(*lo)?) as u8;
        }
        match groups.next() {
            None => Ok(mac),
            Some(_) => Err(MacParseError),
        }
    }

    /// Shows a MAC as `aa:bb:cc:dd:ee:ff` (lower-case hex).
    pub fn format_mac(mac: &Mac) -> impl fmt::Display + '_ {
        struct Show<'a>(&'a Mac);
        impl fmt::Display for Show<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let m = self.0;
                write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
            }
        }
        Show(mac)
    }

    #[cfg(test)]
    mod tests {
        extern crate std;
        use std::string::ToString;

        use super::*;

        #[test]
        fn ip_addresses_round_trip() {
            for ip in ["192.0.2.7", "10.0.0.1", "2001:db8::7", "::ffff:10.0.0.1"] {
                let ip: IpAddr = ip.parse().unwrap();
                let (addr, family) = ip_to_addr(ip);
                assert_eq!(addr_to_ip(&addr, family), Some(ip));
                assert_eq!(Real::from(ip).ip(), Some(ip));
            }
            assert_eq!(ip_to_addr("192.0.2.7".parse().unwrap()), (addr_v4([192, 0, 2, 7]), FAMILY_V4));
            assert_eq!(Real::default().ip(), None);
        }

        #[test]
        fn macs_parse_strictly() {
            assert_eq!(parse_mac("02:00:00:aa:BB:0c"), Ok([2, 0, 0, 0xaa, 0xbb, 0x0c]));
            assert_eq!(format_mac(&[2, 0, 0, 0xaa, 0xbb, 0x0c]).to_string(), "02:00:00:aa:bb:0c");
            for bad in [
                "+2:00:00:00:00:01",
                "2:00:00:00:00:01",
                "02:00:00:00:00",
                "02:00:00:00:00:01:03",
                "02:00:00:00:00:01:",
                "02-00-00-00-00-01",
                "02:00:00:00:00:0g",
                "020:00:00:00:00:1",
                "",
                "02:00:00:00:00:é",
            ] {
                assert_eq!(parse_mac(bad), Err(MacParseError), "{bad:?} was accepted");
            }
        }
    }
}

#[cfg(feature = "user")]
pub use user::{addr_to_ip, format_mac, ip_to_addr, parse_mac, MacParseError};
