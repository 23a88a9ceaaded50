//! The hashes both sides compute: the pinned Maglev flow hash, the
//! connection table's 64-bit flow hash, the VIP table's key hash (see
//! [`crate::vip`]) and the ring-slot reduction.

use crate::{addr::Addr, conn::FlowKey};

/// The 64-bit hash of a flow's full 5-tuple: its low bits pick the
/// connection table's set, its top 47 bits are the slot's fingerprint, its
/// low 32 bits give the outer source address and IPv6 flow label. Only the
/// Maglev choice uses the pinned [`flow_hash`], and only on a
/// connection-table miss. 64-bit multiply-xorshift rounds: half the work of
/// two 32-bit hashes. Not pinned: it never leaves one host.
#[inline(always)]
pub const fn flow_hash64(flow: &FlowKey) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let (s, d) = (&flow.src, &flow.dst);
    let ports = ((flow.src_port as u64) << 48)
        | ((flow.dst_port as u64) << 32)
        | ((flow.proto as u64) << 8)
        | flow.family as u64;
    let mut h = 0x243f_6a88_85a3_08d3u64;
    h = (h ^ (((s[0] as u64) << 32) | s[1] as u64)).wrapping_mul(K);
    h = (h ^ (h >> 29) ^ (((s[2] as u64) << 32) | s[3] as u64)).wrapping_mul(K);
    h = (h ^ (h >> 29) ^ (((d[0] as u64) << 32) | d[1] as u64)).wrapping_mul(K);
    h = (h ^ (h >> 29) ^ (((d[2] as u64) << 32) | d[3] as u64)).wrapping_mul(K);
    h = (h ^ (h >> 29) ^ ports).wrapping_mul(K);
    // splitmix64's finaliser: every input bit reaches every output bit.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Murmur3-style mixing: cheap in BPF (no loops, no tables) and well spread.
#[inline(always)]
pub(crate) const fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
pub(crate) const fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The flow hash that picks a flow's Maglev slot (on a connection-table
/// miss). The outer source address and IPv6 flow label come from
/// [`flow_hash64`] instead.
///
/// Shared by both sides so tests and tools can predict the data plane's
/// choice. It has no per-host seed on purpose: every balancer behind the same
/// ECMP route must send a flow to the same backend. Ports are raw network
/// order `u16`s; pass `src_port = 0` for client-address stickiness.
#[inline(always)]
pub const fn flow_hash(src: &Addr, src_port: u16, dst_port: u16, proto: u8) -> u32 {
    flow_hash_seeded(0x9747_b28c, src, src_port, dst_port, proto)
}

#[inline(always)]
const fn flow_hash_seeded(seed: u32, src: &Addr, src_port: u16, dst_port: u16, proto: u8) -> u32 {
    let mut h = seed;
    h = mix(h, src[0]);
    h = mix(h, src[1]);
    h = mix(h, src[2]);
    h = mix(h, src[3]);
    h = mix(h, ((src_port as u32) << 16) | dst_port as u32);
    h = mix(h, proto as u32);
    finish(h ^ 24)
}

/// Maps a flow hash to a slot of a Maglev ring of `ring_size` entries.
///
/// A multiply-shift (Lemire's range reduction) instead of `%`: uniform over
/// the ring and far cheaper than a division in the data plane.
#[inline(always)]
pub const fn ring_slot(hash: u32, ring_size: u32) -> u32 {
    ((hash as u64 * ring_size as u64) >> 32) as u32
}

/// Whether `n` is prime (Maglev ring sizes must be). Trial division by odd
/// numbers: at most ~500 divisions below [`crate::MAX_RING_SIZE`].
pub const fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let n = n as u64;
    let mut d = 3u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        addr::{addr_v4, addr_v6},
        DEFAULT_RING_SIZE, IPPROTO_TCP, IPPROTO_UDP,
    };

    /// Every balancer, of every version, must hash a flow the same way:
    /// hosts behind one ECMP route would otherwise disagree on backends
    /// during a rolling upgrade. These values were computed once; a change
    /// here is a breaking change of the data plane.
    #[test]
    fn flow_hash_is_pinned() {
        let client = addr_v4([192, 0, 2, 7]);
        let p = |x: u16| u16::from_ne_bytes(x.to_be_bytes());
        let client6 = addr_v6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
        let got = [
            flow_hash(&client, p(40000), p(80), IPPROTO_TCP),
            flow_hash(&client, 0, p(80), IPPROTO_TCP),
            flow_hash(&client6, p(40000), p(443), IPPROTO_UDP),
        ];
        assert_eq!(got, PINNED);
    }

    const PINNED: [u32; 3] = [4_287_520_068, 1_889_238_607, 1_242_248_024];

    #[test]
    fn flow_hash_depends_on_every_input() {
        let a = addr_v4([10, 0, 0, 1]);
        let base = flow_hash(&a, 1, 2, IPPROTO_TCP);
        assert_ne!(base, flow_hash(&addr_v4([10, 0, 0, 2]), 1, 2, IPPROTO_TCP));
        assert_ne!(base, flow_hash(&a, 3, 2, IPPROTO_TCP));
        assert_ne!(base, flow_hash(&a, 1, 3, IPPROTO_TCP));
        assert_ne!(base, flow_hash(&a, 1, 2, IPPROTO_UDP));
        assert_ne!(base, flow_hash(&[a[0], 1, 0, 0], 1, 2, IPPROTO_TCP));
    }

    #[test]
    fn ring_slot_stays_in_range_and_spreads() {
        let size = DEFAULT_RING_SIZE;
        assert_eq!(ring_slot(0, size), 0);
        assert_eq!(ring_slot(u32::MAX, size), size - 1);
        let mut buckets = [0u32; 16];
        for i in 0..160_000u32 {
            let h = flow_hash(&addr_v4(i.to_be_bytes()), 0, 0, IPPROTO_TCP);
            let slot = ring_slot(h, size);
            assert!(slot < size);
            buckets[(slot as u64 * 16 / size as u64) as usize] += 1;
        }
        // 10,000 expected per bucket; a fair hash stays well within 5%.
        for b in buckets {
            assert!((9_500..=10_500).contains(&b), "uneven buckets: {buckets:?}");
        }
    }

    #[test]
    fn primes() {
        let primes: [u32; 8] = [2, 3, 5, 7, 11, 13, 65537, 1_048_573];
        assert!(primes.iter().all(|&p| is_prime(p)));
        assert!([0u32, 1, 4, 9, 65535, 1 << 20, 1_048_575].iter().all(|&n| !is_prime(n)));
    }
}

#[cfg(test)]
mod stat_tests {
    use crate::Stat;

    #[test]
    fn counter_names_are_unique_and_snake_case() {
        let mut names: [&str; Stat::COUNT as usize] = [""; Stat::COUNT as usize];
        for (i, s) in Stat::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i);
            names[i] = s.name();
            assert!(s.name().bytes().all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit()));
        }
        names.sort_unstable();
        assert!(names.windows(2).all(|w| w[0] != w[1]));
    }
}

#[cfg(test)]
mod hash64_tests {
    extern crate std;
    use super::*;
    use crate::{addr::addr_v4, CONN_FINGERPRINT_MASK, FAMILY_V4, IPPROTO_TCP, IPPROTO_UDP};

    fn flow(i: u32) -> FlowKey {
        FlowKey::new(
            FAMILY_V4,
            IPPROTO_TCP,
            addr_v4((0xc000_0200 + (i >> 16)).to_be_bytes()),
            (i & 0xffff) as u16,
            addr_v4([10, 0, 0, 10]),
            80u16.to_be(),
        )
    }

    #[test]
    fn flow_hash64_spreads_sets_and_separates_fingerprints() {
        // 2^17 flows from 2 clients over 1024 sets: about 128 each.
        let mut sets = [0u32; 1024];
        let mut fingerprints = std::collections::HashSet::new();
        for i in 0..(1 << 17) {
            let h = flow_hash64(&flow(i));
            sets[(h & 1023) as usize] += 1;
            fingerprints.insert(h & CONN_FINGERPRINT_MASK);
        }
        let (lo, hi) = sets.iter().fold((u32::MAX, 0), |(lo, hi), &n| (lo.min(n), hi.max(n)));
        assert!(lo > 80 && hi < 180, "sets from {lo} to {hi} flows");
        assert_eq!(fingerprints.len(), 1 << 17, "no two flows share a fingerprint");
        // Every field matters, the destination included.
        let base = flow_hash64(&flow(7));
        let mut f = flow(7);
        f.dst = addr_v4([10, 0, 0, 11]);
        assert_ne!(flow_hash64(&f), base);
        f = flow(7);
        f.proto = IPPROTO_UDP;
        assert_ne!(flow_hash64(&f), base);
    }
}
