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
