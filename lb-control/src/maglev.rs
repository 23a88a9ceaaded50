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

mod schedule;

use std::collections::BTreeMap;

use schedule::schedule;
#[cfg(test)]
use schedule::{prefer_heap, schedule_equal, schedule_heap, schedule_rounds};

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
        Self { id, key: key.into(), weight }
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
        return Err(MaglevError::DuplicateKey { key: w[0].key.clone() });
    }
    let mut ids: Vec<u32> = sorted.iter().map(|b| b.id).collect();
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(MaglevError::DuplicateId { id: w[0] });
    }
    sorted.iter().try_fold(0u32, |sum, b| sum.checked_add(b.weight)).ok_or(MaglevError::WeightOverflow)?;

    sorted.retain(|b| b.weight > 0);
    if sorted.is_empty() {
        return Ok(vec![EMPTY; ring_size as usize]);
    }
    if sorted.len() > ring_size as usize {
        return Err(MaglevError::TooManyBackends { ring_size, backends: sorted.len() });
    }

    let m = u64::from(ring_size);
    let mut cursors: Vec<Cursor> = sorted.iter().map(|b| Cursor::new(b, m)).collect();
    let weights: Vec<u32> = sorted.iter().map(|b| b.weight).collect();
    let mut filler = Filler::new(ring_size);
    schedule(&weights, ring_size as usize, |turns| filler.claim_all(turns, &mut cursors));
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
        return Err(MaglevError::RingSizeTooLarge { ring_size, max: MAX_RING_SIZE });
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
        Self { pos: (xxh64(&b.key, OFFSET_SEED) % m) as u32, step, inv: 0, id: b.id }
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

// XXH64 (https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md), a
// fixed, platform-independent function: never std's randomly seeded hashers.
// The published test vectors and the pinned tables (tests.rs) guard it.
use xxhash_rust::xxh64::xxh64;

#[cfg(test)]
mod tests;
