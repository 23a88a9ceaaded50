//! Internet checksum helpers (RFC 1071, RFC 1624). Sums are kept unfolded in
//! a u32/u64 and folded once at the end.

/// Folds a 32-bit one's-complement sum to 16 bits and complements it.
#[inline(always)]
pub fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Adds a 32-bit word (raw, network-order bytes) to a running sum.
#[inline(always)]
pub fn add32(sum: u64, word: u32) -> u64 {
    sum + (word & 0xffff) as u64 + (word >> 16) as u64
}

/// Adds four words (an IPv6 address) to a running sum.
#[inline(always)]
pub fn add_addr(sum: u64, addr: &[u32; 4]) -> u64 {
    add32(add32(add32(add32(sum, addr[0]), addr[1]), addr[2]), addr[3])
}

/// Checksum of a 20-byte IPv4 header whose `check` field is zero.
#[inline(always)]
pub fn ipv4_header(hdr: &crate::hdr::Ipv4Hdr) -> u16 {
    // SAFETY: Ipv4Hdr is 20 bytes of plain data; read it as five words.
    let words: [u32; 5] = unsafe { core::mem::transmute(*hdr) };
    let mut sum = 0u64;
    for w in words {
        sum = add32(sum, w);
    }
    fold(sum)
}

/// Incrementally updates checksum `check` when a 16-bit field changes from
/// `old` to `new` (all three raw network-order values), per RFC 1624 eqn. 4:
/// `HC' = HC + m + ~m'` in one's complement. Unlike eqn. 3
/// (`~(~HC + ~m + m')`), this never yields 0x0000, which would be wrong for
/// a message whose other words are all zero (its checksum is 0xffff); where
/// 0x0000 would also be right, 0xffff verifies as well.
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    let sum = check as u64 + old as u64 + (!new) as u64;
    // `fold` complements; undo that to keep the sum itself.
    !fold(sum)
}
