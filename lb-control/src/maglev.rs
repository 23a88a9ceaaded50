//! Maglev consistent hashing: builds the lookup table that maps a flow hash
//! slot to a backend (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016, section 3.4), with weights.
//!
//! Every backend gets a pseudo-random permutation of the `M` table slots,
//! `p(j) = (offset + j * skip) % M` with `offset = h1(key) % M` and
//! `skip = h2(key) % (M - 1) + 1`. Backends take turns claiming the next
//! still-empty slot of their own permutation until the table is full. `M` is
//! prime, so every `skip` is coprime with it and each permutation visits
//! every slot.
//!
//! Weights follow the variant Katran uses: in every round each backend earns
//! its weight in credit and takes a turn whenever its credit reaches the
//! largest weight. With equal weights every backend takes one turn per round,
//! which is exactly the paper's algorithm.
//!
//! The table depends only on the *set* of `(key, weight, id)`: backends are
//! ordered by key internally and the hash is a fixed, platform-independent
//! function (XXH64 with frozen seeds). Every load balancer host must compute
//! the same table for the same configuration, otherwise flows would land on
//! different backends depending on which host ECMP picks.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// Default table size (a prime), the data plane's.
pub use lb_common::DEFAULT_RING_SIZE;

/// Largest accepted table size: the data plane's (a ring is `ring_size * 2`
/// bytes per VIP in the ring pool, 2 MiB at this cap). The cap also keeps
/// every intermediate product well inside `u64`.
pub use lb_common::MAX_RING_SIZE;

/// Slot value meaning "no backend".
const EMPTY: u32 = lb_common::REAL_NONE;

/// Seeds of the two hashes. Arbitrary but frozen forever: changing either
/// changes every table (see the pinned regression test).
const OFFSET_SEED: u64 = 0x6d61_676c_6576_3031; // "maglev01"
const SKIP_SEED: u64 = 0x6d61_676c_6576_3032; // "maglev02"

/// One backend as the table builder sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MaglevBackend {
    /// Value written into the backend's slots (its index in the BPF backend
    /// array). Must not be 0, which marks an empty slot.
    pub id: u32,
    /// Stable identity (e.g. the address bytes) that seeds the permutation.
    /// Hashing the identity rather than the id keeps a backend's slots when
    /// it is moved to another array index.
    pub key: Vec<u8>,
    /// Relative weight; 0 means draining (no slots).
    pub weight: u32,
}

impl MaglevBackend {
    /// A backend with the given table id, identity bytes and weight.
    pub fn new(id: u32, key: impl Into<Vec<u8>>, weight: u32) -> Self {
        Self {
            id,
            key: key.into(),
            weight,
        }
    }
}

/// Why a table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    #[error("Maglev ring size {0} is too small: it must be a prime of at least 2")]
    RingSizeTooSmall(u32),
    #[error("Maglev ring size {ring_size} exceeds the maximum of {max}")]
    RingSizeTooLarge { ring_size: u32, max: u32 },
    #[error("Maglev ring size {0} is not a prime")]
    RingSizeNotPrime(u32),
    #[error(
        "Maglev ring size {ring_size} is smaller than the number of backends with a \
         non-zero weight ({backends})"
    )]
    TooManyBackends { ring_size: u32, backends: usize },
    #[error("two Maglev backends have the same key {}", hex(.key))]
    DuplicateKey { key: Vec<u8> },
    #[error("Maglev backend with key {} has id 0, which is reserved for empty slots", hex(.key))]
    ZeroId { key: Vec<u8> },
    #[error("two Maglev backends have the same id {id}: their slots could not be told apart")]
    DuplicateId { id: u32 },
    #[error("the sum of the Maglev backend weights overflows u32")]
    WeightOverflow,
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(2 + 2 * bytes.len());
    s.push_str("0x");
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Builds the Maglev table: `ring_size` slots, each holding the id of the
/// backend that owns it, or all zeros if no backend has a non-zero weight.
///
/// `ring_size` must be a prime in `2..=MAX_RING_SIZE` and at least the number
/// of backends with a non-zero weight. Keys must be unique, ids non-zero and
/// the weights must sum to at most `u32::MAX`. The result does not depend on
/// the order of `backends`.
///
/// # Errors
/// [`MaglevError`] names the first problem found: the ring size (too small,
/// too large, not prime), then, in key order, an id of 0, a duplicate key,
/// an overflowing weight sum, and finally more weighted backends than slots.
pub fn build(backends: &[MaglevBackend], ring_size: u32) -> Result<Vec<u32>, MaglevError> {
    validate_ring_size(ring_size)?;

    // Key order makes the result independent of the input order and makes
    // duplicates adjacent. Errors are reported in key order too, so the same
    // bad input always yields the same error.
    let mut sorted: Vec<&MaglevBackend> = backends.iter().collect();
    sorted.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    if let Some(b) = sorted.iter().find(|b| b.id == EMPTY) {
        return Err(MaglevError::ZeroId { key: b.key.clone() });
    }
    if let Some(w) = sorted.windows(2).find(|w| w[0].key == w[1].key) {
        return Err(MaglevError::DuplicateKey {
            key: w[0].key.clone(),
        });
    }
    let mut ids: Vec<u32> = sorted.iter().map(|b| b.id).collect();
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(MaglevError::DuplicateId { id: w[0] });
    }
    sorted
        .iter()
        .try_fold(0u32, |sum, b| sum.checked_add(b.weight))
        .ok_or(MaglevError::WeightOverflow)?;

    sorted.retain(|b| b.weight > 0);
    if sorted.is_empty() {
        return Ok(vec![EMPTY; ring_size as usize]);
    }
    if sorted.len() > ring_size as usize {
        return Err(MaglevError::TooManyBackends {
            ring_size,
            backends: sorted.len(),
        });
    }

    let m = u64::from(ring_size);
    let mut cursors: Vec<Cursor> = sorted.iter().map(|b| Cursor::new(b, m)).collect();
    let weights: Vec<u32> = sorted.iter().map(|b| b.weight).collect();
    let mut filler = Filler::new(ring_size);
    schedule(&weights, ring_size as usize, |turns| {
        filler.claim_all(turns, &mut cursors)
    });
    debug_assert_eq!(filler.left, 0);
    Ok(filler.table)
}

/// Slots per id in `table` (empty slots are counted under id 0).
#[must_use]
pub fn shares(table: &[u32]) -> BTreeMap<u32, usize> {
    let mut shares = BTreeMap::new();
    for &id in table {
        *shares.entry(id).or_insert(0) += 1;
    }
    shares
}

/// Number of slots whose owner differs between two tables of the same size.
///
/// # Panics
/// If the tables have different lengths: slots of tables of different sizes
/// do not correspond to the same flows, so the comparison has no meaning.
#[must_use]
pub fn moved_slots(a: &[u32], b: &[u32]) -> usize {
    assert_eq!(a.len(), b.len(), "Maglev tables of different sizes");
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

fn validate_ring_size(ring_size: u32) -> Result<(), MaglevError> {
    if ring_size < 2 {
        return Err(MaglevError::RingSizeTooSmall(ring_size));
    }
    if ring_size > MAX_RING_SIZE {
        return Err(MaglevError::RingSizeTooLarge {
            ring_size,
            max: MAX_RING_SIZE,
        });
    }
    if !is_prime(ring_size) {
        return Err(MaglevError::RingSizeNotPrime(ring_size));
    }
    Ok(())
}

use lb_common::is_prime;

/// Look at a cursor's own slot alone first while it was free in more than
/// this share (in 1/65536ths, here 30%) of recent turns. Adapts to the
/// table's fill and to who takes the turns: one heavy backend among light
/// ones mostly finds its own next slot free even in a nearly full table.
const SPARSE_HIT_RATE: u32 = 19_661;

/// Table positions examined per step once the table is fairly full (6 was
/// the fastest of 4 to 8 when measured).
const GROUP: usize = 6;

/// A backend's walk along its permutation `p(j) = (offset + j * skip) % M`.
///
/// All values are `< M <= 2^24`: stored as `u32` to keep cursors small (a
/// build touches each one every round), computed on as `u64`.
struct Cursor {
    /// `p(next)`: the next position to look at. Stored instead of `next` so
    /// that advancing is an addition and a conditional subtraction, with no
    /// multiplication or division per probe.
    pos: u32,
    /// `step[k] = (k + 1) * skip % M` (so `step[0]` is `skip`): the next
    /// `GROUP` positions follow from one base independently, instead of
    /// through a chain of dependent additions.
    step: [u32; GROUP],
    /// `skip^-1 mod M`, computed when first needed (0: not yet; 0 is never an
    /// inverse).
    inv: u32,
    id: u32,
}

impl Cursor {
    fn new(b: &MaglevBackend, m: u64) -> Self {
        let skip = xxh64(&b.key, SKIP_SEED) % (m - 1) + 1;
        let mut step = [skip as u32; GROUP];
        for k in 1..GROUP {
            step[k] = wrap(m, u64::from(step[k - 1]) + skip) as u32;
        }
        Self {
            pos: (xxh64(&b.key, OFFSET_SEED) % m) as u32,
            step,
            inv: 0,
            id: b.id,
        }
    }

    fn skip(&self) -> u64 {
        u64::from(self.step[0])
    }
}

/// The table being filled, and how.
///
/// A turn gives the backend the first empty slot along its permutation, at
/// or after its cursor. The slots a cursor passes over are occupied for
/// good, and `skip` is coprime with the prime `M`, so the permutation
/// reaches every slot: a turn always finds one while the table is not full.
///
/// Finding it is the whole cost of a build: most turns near the end pass
/// over many occupied slots (about `M ln M` probes in total), and whether a
/// slot is free is a coin toss the branch predictor cannot learn. So the
/// search adapts, always returning the same slot:
/// * while a cursor's own slot was free in most recent turns (the table is
///   mostly empty, or one heavy backend takes most turns), look at it alone;
/// * otherwise look at `GROUP` slots at once and branch once on the result;
/// * in the last `late` turns, if walks are long, compute for each of the
///   few empty slots how far along the permutation it lies and take the
///   nearest, instead of walking past thousands of occupied slots.
struct Filler {
    table: Vec<u32>,
    m: u64,
    /// Empty slots left.
    left: usize,
    /// How often lately a cursor's own slot was empty, in 1/65536ths (a
    /// moving average over about 32 turns).
    hit_rate: u32,
    /// Free-list search once at most this many slots are empty: it costs
    /// about `left` steps per turn where walking costs about `M / left`, so
    /// the cross-over is near `sqrt(M)`. Set to 0 when walks stay short.
    late: usize,
    /// The empty slots, once `left <= late`.
    free: Vec<u32>,
    /// `floor((2^64 - 1) / M)`, for division-free reduction modulo `M`.
    barrett: u64,
}

impl Filler {
    fn new(ring_size: u32) -> Self {
        let m = u64::from(ring_size);
        Self {
            table: vec![EMPTY; ring_size as usize],
            m,
            left: ring_size as usize,
            hit_rate: 1 << 16,
            late: ring_size.isqrt() as usize,
            free: Vec::new(),
            barrett: u64::MAX / m,
        }
    }

    /// Gives each backend in `turns` (indices into `cursors`), in order, its
    /// next slot. The table must have an empty slot for every turn.
    fn claim_all(&mut self, turns: &[u32], cursors: &mut [Cursor]) {
        // Locals, so the hot loop keeps them in registers.
        let m = self.m;
        let (mut left, mut hit_rate) = (self.left, self.hit_rate);
        for &i in turns {
            let c = &mut cursors[i as usize];
            if left == self.late && hit_rate > SPARSE_HIT_RATE {
                // Walks are short (say one heavy backend among light ones
                // takes most turns): keep walking to the end.
                self.late = 0;
            }
            if left > self.late {
                let table = &mut self.table[..];
                let (slot, hit) = walk(table, m, hit_rate > SPARSE_HIT_RATE, c);
                table[slot] = c.id;
                hit_rate = hit_rate - (hit_rate >> 5) + (u32::from(hit) << 11);
            } else {
                self.left = left;
                let slot = self.nearest_free(c);
                self.table[slot] = c.id;
            }
            left -= 1;
        }
        self.left = left;
        self.hit_rate = hit_rate;
    }

    /// The empty slot the cursor would reach first, found from the list of
    /// empty slots: slot `s` is `(s - pos) * skip^-1 mod M` steps away.
    fn nearest_free(&mut self, c: &mut Cursor) -> usize {
        if self.free.len() != self.left {
            // First late turn: collect the empty slots. Few chunks have any,
            // and testing a whole chunk vectorizes.
            const CHUNK: usize = 64;
            self.free = Vec::with_capacity(self.left);
            for (i, chunk) in self.table.chunks(CHUNK).enumerate() {
                if chunk.iter().fold(false, |any, &id| any | (id == EMPTY)) {
                    let empty = chunk.iter().enumerate().filter(|(_, &id)| id == EMPTY);
                    self.free.extend(empty.map(|(j, _)| (i * CHUNK + j) as u32));
                }
            }
            debug_assert_eq!(self.free.len(), self.left);
        }
        if c.inv == 0 {
            c.inv = mod_inverse(c.skip(), self.m) as u32;
        }
        // Pack (distance, index) so one `min` finds the nearest; distances
        // differ since the map is a bijection.
        let (inv, back) = (u64::from(c.inv), self.m - u64::from(c.pos));
        let mut nearest = u64::MAX;
        for (i, &s) in self.free.iter().enumerate() {
            let delta = wrap(self.m, u64::from(s) + back);
            nearest = nearest.min(self.mul_mod(delta, inv) << 32 | i as u64);
        }
        let slot = u64::from(self.free.swap_remove(nearest as u32 as usize));
        c.pos = wrap(self.m, slot + c.skip()) as u32;
        slot as usize
    }

    /// `a * b % M` for `a, b < M` by Barrett reduction: the estimated
    /// quotient is exact or one too small, for any product below 2^64.
    #[inline]
    fn mul_mod(&self, a: u64, b: u64) -> u64 {
        let x = a * b;
        let q = ((u128::from(x) * u128::from(self.barrett)) >> 64) as u64;
        wrap(self.m, x - q * self.m)
    }
}

/// `p % m` for `p < 2m`, without a branch.
#[inline]
fn wrap(m: u64, p: u64) -> u64 {
    p.min(p.wrapping_sub(m))
}

/// Walks `c` along its permutation to the first empty slot, and returns it
/// and whether it was the cursor's own slot. `sparse`: that is likely, so it
/// is worth a look on its own before looking at a group.
#[inline]
fn walk(table: &[u32], m: u64, sparse: bool, c: &mut Cursor) -> (usize, bool) {
    let mut base = u64::from(c.pos);
    let hit = table[base as usize] == EMPTY;
    if sparse && hit {
        c.pos = wrap(m, base + c.skip()) as u32;
        return (base as usize, true);
    }
    let step = c.step.map(u64::from);
    loop {
        let at = |k: usize| match k {
            0 => base,
            _ => wrap(m, base + step[k - 1]),
        };
        let mut empty = 0u32;
        for k in 0..GROUP {
            empty |= u32::from(table[at(k) as usize] == EMPTY) << k;
        }
        if empty != 0 {
            let k = empty.trailing_zeros() as usize;
            c.pos = wrap(m, base + step[k]) as u32;
            return (at(k) as usize, hit);
        }
        base = wrap(m, base + step[GROUP - 1]);
    }
}

/// `a^-1 mod m` by the extended Euclidean algorithm, for `a` in `1..m` and
/// `m` prime.
fn mod_inverse(a: u64, m: u64) -> u64 {
    let (mut r0, mut r1) = (m as i64, a as i64);
    let (mut t0, mut t1) = (0i64, 1i64);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (t0, t1) = (t1, t0 - q * t1);
    }
    debug_assert_eq!(r0, 1, "{a} has no inverse modulo {m}");
    t0.rem_euclid(m as i64) as u64
}

/// Hands out exactly `turns` turns, in the order of the weighted round
/// robin, to `take` in batches (slices of indices into `weights`). In every
/// round each backend `i`, in slice order, adds `weights[i]` to its credit
/// and takes a turn if the credit reaches the largest weight, which it then
/// pays. `weights` must be non-empty with no zero.
///
/// Backend `i` thus takes its `k`-th turn in round `ceil(k * max / w_i)`.
/// Two implementations produce that same order; the cheaper one is picked.
fn schedule(weights: &[u32], turns: usize, take: impl FnMut(&[u32])) {
    let max = *weights.iter().max().expect("no backends");
    if weights.iter().all(|&w| w == max) {
        schedule_equal(weights.len(), turns, take);
    } else if prefer_heap(weights, turns) {
        schedule_heap(weights, turns, take);
    } else {
        schedule_rounds(weights, turns, take);
    }
}

/// Whether the heap is cheaper than going round by round.
fn prefer_heap(weights: &[u32], turns: usize) -> bool {
    let n = weights.len() as u64;
    let max = u64::from(*weights.iter().max().expect("no backends"));
    let sum: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    // Rounds: the table is full after about turns * max / sum rounds, each
    // costing one credit step per backend. Heap: about log2(n) sift steps per
    // turn; a sift step costs a few credit steps.
    let rounds_work = ((turns as u64 * max).div_ceil(sum) + 1) * n;
    let heap_work = turns as u64 * u64::from(64 - n.leading_zeros()) * 4;
    heap_work < rounds_work
}

/// Equal weights: every backend takes a turn every round (the paper's
/// algorithm). The common case, so it skips the credit bookkeeping.
fn schedule_equal(n: usize, turns: usize, mut take: impl FnMut(&[u32])) {
    let round: Vec<u32> = (0..n as u32).collect();
    let mut left = turns;
    while left > 0 {
        let len = n.min(left);
        take(&round[..len]);
        left -= len;
    }
}

/// The direct round-by-round form (what Katran does). Cheap when the weights
/// are similar, since then almost every backend takes a turn every round.
fn schedule_rounds(weights: &[u32], turns: usize, mut take: impl FnMut(&[u32])) {
    let max = u64::from(*weights.iter().max().expect("no backends"));
    let mut credit = vec![0u64; weights.len()];
    let mut round = vec![0u32; weights.len()];
    let mut left = turns;
    while left > 0 {
        // Who takes a turn this round, collected without a branch per
        // backend: with mixed weights whether one fires is unpredictable.
        let mut len = 0;
        for (i, (&w, c)) in weights.iter().zip(credit.iter_mut()).enumerate() {
            let sum = *c + u64::from(w);
            let fire = sum >= max;
            *c = sum - if fire { max } else { 0 };
            round[len] = i as u32;
            len += usize::from(fire);
        }
        let len = len.min(left);
        take(&round[..len]);
        left -= len;
    }
}

/// The same order driven by a min-heap of `(round of next turn, index)`, so
/// rounds in which only a few heavy backends act cost nothing for the rest.
/// Keeps a build fast with extreme weight ratios (e.g. 1 000 000 : 1).
fn schedule_heap(weights: &[u32], turns: usize, mut take: impl FnMut(&[u32])) {
    const BATCH: usize = 1024;
    let max = u64::from(*weights.iter().max().expect("no backends"));
    // Round of backend i's k-th turn. k <= turns + 1 <= 2^24 + 1 and
    // max < 2^32, so the product fits in u64.
    let round_of = |k: u64, w: u32| (k * max).div_ceil(u64::from(w));
    let mut taken = vec![0u64; weights.len()];
    let mut heap: BinaryHeap<Reverse<(u64, u32)>> = (0..weights.len() as u32)
        .map(|i| Reverse((round_of(1, weights[i as usize]), i)))
        .collect();
    let mut batch = Vec::with_capacity(BATCH);
    for _ in 0..turns {
        // Update the top in place: one sift-down instead of a pop and a push.
        let mut top = heap.peek_mut().expect("no backends");
        let i = top.0 .1;
        batch.push(i);
        taken[i as usize] += 1;
        top.0 .0 = round_of(taken[i as usize] + 1, weights[i as usize]);
        if batch.len() == BATCH {
            take(&batch);
            batch.clear();
        }
    }
    take(&batch);
}

// XXH64 (https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md),
// written out here so the table never depends on a third-party crate's
// version or on std's randomly seeded hashers. Input words are read as little
// endian, so the result is the same on every platform.
const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

fn xxh64_round(acc: u64, input: u64) -> u64 {
    acc.wrapping_add(input.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

fn xxh64_merge(acc: u64, val: u64) -> u64 {
    (acc ^ xxh64_round(0, val))
        .wrapping_mul(P1)
        .wrapping_add(P4)
}

fn read_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

fn read_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

fn xxh64(data: &[u8], seed: u64) -> u64 {
    let mut rest = data;
    let mut h = if data.len() >= 32 {
        let mut v = [
            seed.wrapping_add(P1).wrapping_add(P2),
            seed.wrapping_add(P2),
            seed,
            seed.wrapping_sub(P1),
        ];
        while rest.len() >= 32 {
            for (lane, chunk) in v.iter_mut().zip(rest[..32].chunks_exact(8)) {
                *lane = xxh64_round(*lane, read_u64(chunk));
            }
            rest = &rest[32..];
        }
        let mut h = v[0]
            .rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18));
        for lane in v {
            h = xxh64_merge(h, lane);
        }
        h
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(data.len() as u64);
    while rest.len() >= 8 {
        h ^= xxh64_round(0, read_u64(rest));
        h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
        rest = &rest[8..];
    }
    if rest.len() >= 4 {
        h ^= u64::from(read_u32(rest)).wrapping_mul(P1);
        h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        rest = &rest[4..];
    }
    for &byte in rest {
        h ^= u64::from(byte).wrapping_mul(P5);
        h = h.rotate_left(11).wrapping_mul(P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u32 = DEFAULT_RING_SIZE;

    /// Backend `i` (0-based): key 10.x.y.z derived from `i`, id `i + 1`.
    fn backend(i: u32, weight: u32) -> MaglevBackend {
        let key = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        MaglevBackend::new(i + 1, key, weight)
    }

    fn equal(n: u32) -> Vec<MaglevBackend> {
        (0..n).map(|i| backend(i, 1)).collect()
    }

    /// xorshift64: deterministic pseudo-random numbers without a rand crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn shuffle<T>(&mut self, v: &mut [T]) {
            for i in (1..v.len()).rev() {
                v.swap(i, self.below(i as u64 + 1) as usize);
            }
        }
    }

    /// The paper's pseudocode taken literally (each permutation entry
    /// computed with a multiplication and a modulo, one probe at a time)
    /// with Katran's weighted rounds. Slow but plainly right: `build`, with
    /// all its shortcuts, must produce exactly the same table.
    fn reference(backends: &[MaglevBackend], ring_size: u32) -> Vec<u32> {
        let mut bs: Vec<&MaglevBackend> = backends.iter().filter(|b| b.weight > 0).collect();
        bs.sort_by(|a, b| a.key.cmp(&b.key));
        let m = u64::from(ring_size);
        let perm: Vec<(u64, u64)> = bs
            .iter()
            .map(|b| {
                let offset = xxh64(&b.key, OFFSET_SEED) % m;
                let skip = xxh64(&b.key, SKIP_SEED) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let max = u64::from(bs.iter().map(|b| b.weight).max().unwrap());
        let mut next = vec![0u64; bs.len()];
        let mut credit = vec![0u64; bs.len()];
        let mut table = vec![0u32; ring_size as usize];
        let mut filled = 0;
        loop {
            for i in 0..bs.len() {
                credit[i] += u64::from(bs[i].weight);
                if credit[i] < max {
                    continue;
                }
                credit[i] -= max;
                let (offset, skip) = perm[i];
                let mut c = (offset + next[i] * skip) % m;
                while table[c as usize] != 0 {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % m;
                }
                table[c as usize] = bs[i].id;
                next[i] += 1;
                filled += 1;
                if filled == ring_size {
                    return table;
                }
            }
        }
    }

    type Scheduler = fn(&[u32], usize, &mut dyn FnMut(&[u32]));

    fn order_of(f: Scheduler, weights: &[u32], turns: usize) -> Vec<u32> {
        let mut order = Vec::with_capacity(turns);
        f(weights, turns, &mut |batch| order.extend_from_slice(batch));
        order
    }

    #[test]
    fn xxh64_matches_published_vectors() {
        // From the xxHash reference implementation and its test suite; the
        // 40-byte input exercises the four-lane path.
        assert_eq!(xxh64(b"", 0), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxh64(b"a", 0), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxh64(b"abc", 0), 0x44BC_2CF5_AD77_0999);
        assert_eq!(
            xxh64(b"Nobody inspects the spammish repetition", 0),
            0xFBCE_A83C_8A37_8BF1
        );
    }

    #[test]
    fn mod_inverse_and_mul_mod() {
        for m in [2u32, 3, 7, 65537, 16_777_213] {
            let f = Filler::new(m);
            let m = u64::from(m);
            for a in [1, 2, m / 2, m - 1]
                .into_iter()
                .filter(|&a| a >= 1 && a < m)
            {
                let inv = mod_inverse(a, m);
                assert!(inv < m);
                assert_eq!(a * inv % m, 1, "{a}^-1 mod {m}");
                assert_eq!(f.mul_mod(a, inv), 1);
                assert_eq!(f.mul_mod(a, m - 1), a * (m - 1) % m);
            }
        }
    }

    #[test]
    fn equal_weights_share_evenly() {
        let n = 100;
        let table = build(&equal(n), M).unwrap();
        assert_eq!(table.len(), M as usize);
        let shares = shares(&table);
        assert_eq!(shares.len(), n as usize, "every backend owns slots");
        assert!(!shares.contains_key(&0), "no empty slot");
        let ideal = f64::from(M) / f64::from(n);
        for (&id, &s) in &shares {
            let err = (s as f64 - ideal).abs();
            assert!(err <= 0.01 * ideal, "id {id}: {s} slots, ideal {ideal}");
        }
        // One turn per backend per round: everyone gets floor or ceil of M/N.
        let min = shares.values().min().unwrap();
        let max = shares.values().max().unwrap();
        assert!(max - min <= 1, "min {min} max {max}");
    }

    #[test]
    fn matches_reference_algorithm() {
        let mut mixed: Vec<_> = (0..50).map(|i| backend(i, 1 + i % 7)).collect();
        mixed.push(backend(50, 0));
        let extreme = vec![backend(0, 1_000_000), backend(1, 1), backend(2, 3)];
        // One heavy backend among many light ones: built with the heap.
        let heavy: Vec<_> = (0..200)
            .map(|i| backend(i, if i == 77 { 1000 } else { 1 + i % 3 }))
            .collect();
        let weights: Vec<u32> = heavy.iter().map(|b| b.weight).collect();
        assert!(prefer_heap(&weights, 4099));
        assert!(
            !prefer_heap(&[1, 2, 3, 4], 65537),
            "similar weights go round by round"
        );
        for (bs, m) in [
            (equal(1), 7),
            (equal(2), 2),
            (equal(7), 7),
            (equal(13), 251),
            (equal(100), M),
            (equal(1000), M),
            (mixed, M),
            (extreme, 1009),
            (heavy, 4099),
        ] {
            let n = bs.len();
            assert_eq!(
                build(&bs, m).unwrap(),
                reference(&bs, m),
                "{n} backends, M={m}"
            );
        }

        // Random sizes and weights, including tables nearly as small as the
        // number of backends and weights up to a 1000:1 ratio.
        let mut rng = Rng(0x5eed);
        let primes = [2, 3, 5, 11, 31, 97, 251, 1009, 4099, 65537];
        for case in 0..60 {
            let m = primes[case % primes.len()];
            let n = 1 + rng.below(u64::from(m).min(300)) as u32;
            let heavy = rng.below(3) == 0;
            let bs: Vec<_> = (0..n)
                .map(|i| {
                    let w = match rng.below(4) {
                        0 if heavy => 1000,
                        _ => rng.below(4) as u32,
                    };
                    backend(i * 7919, w)
                })
                .collect();
            let weighted = bs.iter().filter(|b| b.weight > 0).count();
            if weighted == 0 {
                continue;
            }
            assert_eq!(
                build(&bs, m).unwrap(),
                reference(&bs, m),
                "case {case}: N={n}, M={m}"
            );
        }
    }

    #[test]
    fn schedulers_agree() {
        let all_equal: Scheduler = |w, t, f| schedule_equal(w.len(), t, f);
        let rounds: Scheduler = |w, t, f| schedule_rounds(w, t, f);
        let heap: Scheduler = |w, t, f| schedule_heap(w, t, f);
        let cases: [&[u32]; 7] = [
            &[1],
            &[5, 5, 5],
            &[1, 2, 3, 4],
            &[7, 1, 7, 3, 2],
            &[1_000_000, 1, 999_999, 3],
            &[u32::MAX - 5, 1, 2],
            &[u32::MAX; 4],
        ];
        for weights in cases {
            let a = order_of(rounds, weights, 20_000);
            assert_eq!(a.len(), 20_000);
            assert_eq!(a, order_of(heap, weights, 20_000), "weights {weights:?}");
            if weights.iter().all(|&w| w == weights[0]) {
                assert_eq!(
                    a,
                    order_of(all_equal, weights, 20_000),
                    "weights {weights:?}"
                );
            }
        }
    }

    #[test]
    fn removing_a_backend_moves_few_other_slots() {
        // Every slot of the removed backend must move; what matters is how
        // many *other* slots change owner as a side effect. Averaged over
        // removals of backends spread across the key order.
        for n in [10, 100, 1000] {
            let before = equal(n);
            let a = build(&before, M).unwrap();
            let victims: Vec<u32> = (0..10).map(|k| k * n / 10 + 1).collect();
            let mut fractions = Vec::new();
            for &victim in &victims {
                let after: Vec<_> = before.iter().filter(|b| b.id != victim).cloned().collect();
                let b = build(&after, M).unwrap();
                assert!(!b.contains(&victim));
                let own = a.iter().filter(|&&id| id == victim).count();
                let moved = moved_slots(&a, &b);
                assert!(moved >= own);
                fractions.push((moved - own) as f64 / f64::from(M));
            }
            let mean = fractions.iter().sum::<f64>() / fractions.len() as f64;
            let max = fractions.iter().cloned().fold(0.0, f64::max);
            let min = fractions.iter().cloned().fold(1.0, f64::min);
            println!(
                "remove 1 of {n}: other slots moved: mean {:.3}% (min {:.3}%, max {:.3}%) of the table",
                mean * 100.0,
                min * 100.0,
                max * 100.0
            );
            assert!(mean <= 0.006, "N={n}: mean {mean}");
            assert!(max <= 0.0075, "N={n}: max {max}");
        }
    }

    #[test]
    fn adding_a_backend_moves_about_its_share() {
        for n in [10, 100, 1000] {
            let before = equal(n);
            let mut after = before.clone();
            after.push(backend(n, 1));
            let a = build(&before, M).unwrap();
            let b = build(&after, M).unwrap();
            let moved = moved_slots(&a, &b);
            let gained = shares(&b)[&(n + 1)];
            let ideal = f64::from(M) / f64::from(n + 1);
            println!(
                "add 1 to {n}: {moved} slots moved, new backend got {gained}, M/(N+1) = {ideal:.0}"
            );
            assert!(
                moved >= gained,
                "all of the new backend's slots changed owner"
            );
            assert!((gained as f64 - ideal).abs() <= 1.0);
            let beyond = moved as f64 - ideal;
            assert!(beyond.abs() <= 0.01 * f64::from(M), "N={n}: {moved} moved");
        }
    }

    #[test]
    fn deterministic_and_order_independent() {
        let mut bs: Vec<_> = (0..200).map(|i| backend(i, 1 + i % 3)).collect();
        let table = build(&bs, M).unwrap();
        assert_eq!(table, build(&bs, M).unwrap());
        let mut rng = Rng(42);
        for round in 0..3 {
            rng.shuffle(&mut bs);
            assert_eq!(table, build(&bs, M).unwrap(), "shuffle {round}");
        }
        bs.reverse();
        assert_eq!(table, build(&bs, M).unwrap());
    }

    #[test]
    fn weights_are_proportional() {
        // Half weight 1, half weight 2, plus a draining backend.
        let mut bs: Vec<_> = (0..100).map(|i| backend(i, 1 + i % 2)).collect();
        bs.push(backend(100, 0));
        let table = build(&bs, M).unwrap();
        let shares = shares(&table);
        assert!(!shares.contains_key(&101), "weight 0 gets no slot");
        assert!(!shares.contains_key(&0), "no empty slot");
        let total: u32 = bs.iter().map(|b| b.weight).sum();
        for b in bs.iter().filter(|b| b.weight > 0) {
            let expected = f64::from(M) * f64::from(b.weight) / f64::from(total);
            let got = shares[&b.id] as f64;
            assert!(
                (got - expected).abs() <= 0.01 * expected,
                "id {}: {got} vs {expected}",
                b.id
            );
        }
        let one: usize = bs
            .iter()
            .filter(|b| b.weight == 1)
            .map(|b| shares[&b.id])
            .sum();
        let two: usize = bs
            .iter()
            .filter(|b| b.weight == 2)
            .map(|b| shares[&b.id])
            .sum();
        let ratio = two as f64 / one as f64;
        assert!((ratio - 2.0).abs() < 0.01, "ratio {ratio}");

        // Extreme ratio (heap scheduler): still proportional. Each count is
        // the exact share rounded by less than one slot per backend.
        let bs = vec![backend(0, 1000), backend(1, 1), backend(2, 10)];
        let shares = super::shares(&build(&bs, M).unwrap());
        for b in &bs {
            let expected = f64::from(M) * f64::from(b.weight) / 1011.0;
            let got = shares[&b.id] as f64;
            assert!(
                (got - expected).abs() < bs.len() as f64,
                "id {}: {got} vs {expected}",
                b.id
            );
        }
    }

    #[test]
    fn zero_weights_give_an_empty_table() {
        assert_eq!(build(&[], M).unwrap(), vec![0; M as usize]);
        let bs: Vec<_> = (0..5).map(|i| backend(i, 0)).collect();
        assert_eq!(build(&bs, 13).unwrap(), vec![0; 13]);
        assert_eq!(shares(&[0; 13]), BTreeMap::from([(0, 13)]));
    }

    #[test]
    fn shares_and_moved_slots() {
        assert_eq!(shares(&[3, 1, 3, 3]), BTreeMap::from([(1, 1), (3, 3)]));
        assert_eq!(moved_slots(&[1, 2, 3], &[1, 3, 2]), 2);
        assert_eq!(moved_slots(&[], &[]), 0);
    }

    #[test]
    #[should_panic(expected = "different sizes")]
    fn moved_slots_rejects_different_sizes() {
        let _ = moved_slots(&[1, 2], &[1]);
    }

    #[test]
    fn errors() {
        use MaglevError::*;
        let two = equal(2);
        assert_eq!(build(&two, 0), Err(RingSizeTooSmall(0)));
        assert_eq!(build(&two, 1), Err(RingSizeTooSmall(1)));
        assert_eq!(build(&two, 4), Err(RingSizeNotPrime(4)));
        assert_eq!(build(&two, 65535), Err(RingSizeNotPrime(65535)));
        assert_eq!(build(&two, 65536), Err(RingSizeNotPrime(65536)));
        // 1 048 583 and 16 777 259 are primes above the cap.
        for ring_size in [1_048_583, 16_777_259] {
            let too_large = RingSizeTooLarge { ring_size, max: MAX_RING_SIZE };
            assert_eq!(build(&two, ring_size), Err(too_large));
        }
        assert_eq!(
            build(&two, u32::MAX).unwrap_err(),
            RingSizeTooLarge {
                ring_size: u32::MAX,
                max: MAX_RING_SIZE
            }
        );
        assert!(build(&two, 2).is_ok());
        // Largest prime under the cap (validated only: building it takes a while in debug).
        assert_eq!(validate_ring_size(1_048_573), Ok(()));
        assert_eq!(
            validate_ring_size(MAX_RING_SIZE),
            Err(RingSizeNotPrime(MAX_RING_SIZE))
        );

        assert_eq!(
            build(&equal(8), 7),
            Err(TooManyBackends {
                ring_size: 7,
                backends: 8
            })
        );
        // Draining backends do not count.
        let mut bs = equal(7);
        bs.push(backend(7, 0));
        assert!(build(&bs, 7).is_ok());

        let mut bs = equal(3);
        bs.push(MaglevBackend::new(9, bs[1].key.clone(), 0));
        assert_eq!(
            build(&bs, M),
            Err(DuplicateKey {
                key: bs[1].key.clone()
            })
        );

        let mut bs = equal(3);
        bs[2].id = bs[0].id;
        assert_eq!(build(&bs, M), Err(DuplicateId { id: bs[0].id }));

        let mut bs = equal(3);
        bs[2].id = 0;
        assert_eq!(
            build(&bs, M),
            Err(ZeroId {
                key: bs[2].key.clone()
            })
        );
        bs[2].weight = 0;
        assert_eq!(
            build(&bs, M),
            Err(ZeroId {
                key: bs[2].key.clone()
            })
        );

        let bs = vec![backend(0, u32::MAX), backend(1, 1)];
        assert_eq!(build(&bs, M), Err(WeightOverflow));
        let bs = vec![backend(0, u32::MAX - 1), backend(1, 1)];
        assert!(build(&bs, M).is_ok());

        // Messages name the offending key.
        let msg = ZeroId {
            key: vec![10, 0, 0, 1],
        }
        .to_string();
        assert!(msg.contains("0x0a000001"), "{msg}");
    }

    /// Regression guard, NOT a statement of what the table should be: the
    /// literal values below were computed once by this implementation.
    /// Every load balancer host (and every version of this code during a
    /// rolling upgrade) must compute the same table for the same backends,
    /// or flows break when ECMP moves them between hosts. If this test
    /// fails, the hash, seeds, ordering or fill order changed: that is a
    /// breaking change to fix, not numbers to update.
    #[test]
    fn pinned_tables() {
        let v4 = |d: u8| vec![192, 0, 2, d];
        let equal: Vec<_> = (1..=5)
            .map(|i| MaglevBackend::new(i, v4(i as u8), 1))
            .collect();
        let v6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let weighted = vec![
            MaglevBackend::new(3, v4(1), 3),
            MaglevBackend::new(1, v4(2), 1),
            MaglevBackend::new(2, v4(3), 0),
            MaglevBackend::new(7, v6, 2),
        ];
        // Whole-table fingerprint, so a change past the first slots is
        // caught too.
        let fingerprint = |t: &[u32]| {
            let bytes: Vec<u8> = t.iter().flat_map(|id| id.to_le_bytes()).collect();
            xxh64(&bytes, 0)
        };
        let a = build(&equal, M).unwrap();
        let b = build(&weighted, M).unwrap();
        assert_eq!(a[..16], [4, 1, 5, 3, 3, 5, 2, 3, 1, 5, 4, 3, 1, 5, 1, 4]);
        assert_eq!(fingerprint(&a), 0x23f7_71cc_0ab6_c9e1);
        assert_eq!(b[..16], [1, 3, 7, 7, 3, 3, 7, 7, 3, 1, 3, 7, 3, 3, 3, 7]);
        assert_eq!(fingerprint(&b), 0x5b4d_2ed9_724e_6c7c);
    }
}
