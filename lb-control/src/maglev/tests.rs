//! Tests of the Maglev table builder: the reference algorithm, spread,
//! disruption, weights, errors and the pinned tables.

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
    assert_eq!(xxh64(b"Nobody inspects the spammish repetition", 0), 0xFBCE_A83C_8A37_8BF1);
}

#[test]
fn mod_inverse_and_mul_mod() {
    for m in [2u32, 3, 7, 65537, 16_777_213] {
        let f = Filler::new(m);
        let m = u64::from(m);
        for a in [1, 2, m / 2, m - 1].into_iter().filter(|&a| a >= 1 && a < m) {
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
    let heavy: Vec<_> = (0..200).map(|i| backend(i, if i == 77 { 1000 } else { 1 + i % 3 })).collect();
    let weights: Vec<u32> = heavy.iter().map(|b| b.weight).collect();
    assert!(prefer_heap(&weights, 4099));
    assert!(!prefer_heap(&[1, 2, 3, 4], 65537), "similar weights go round by round");
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
        assert_eq!(build(&bs, m).unwrap(), reference(&bs, m), "{n} backends, M={m}");
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
        assert_eq!(build(&bs, m).unwrap(), reference(&bs, m), "case {case}: N={n}, M={m}");
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
            assert_eq!(a, order_of(all_equal, weights, 20_000), "weights {weights:?}");
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
        println!("add 1 to {n}: {moved} slots moved, new backend got {gained}, M/(N+1) = {ideal:.0}");
        assert!(moved >= gained, "all of the new backend's slots changed owner");
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
        assert!((got - expected).abs() <= 0.01 * expected, "id {}: {got} vs {expected}", b.id);
    }
    let one: usize = bs.iter().filter(|b| b.weight == 1).map(|b| shares[&b.id]).sum();
    let two: usize = bs.iter().filter(|b| b.weight == 2).map(|b| shares[&b.id]).sum();
    let ratio = two as f64 / one as f64;
    assert!((ratio - 2.0).abs() < 0.01, "ratio {ratio}");

    // Extreme ratio (heap scheduler): still proportional. Each count is
    // the exact share rounded by less than one slot per backend.
    let bs = vec![backend(0, 1000), backend(1, 1), backend(2, 10)];
    let shares = super::shares(&build(&bs, M).unwrap());
    for b in &bs {
        let expected = f64::from(M) * f64::from(b.weight) / 1011.0;
        let got = shares[&b.id] as f64;
        assert!((got - expected).abs() < bs.len() as f64, "id {}: {got} vs {expected}", b.id);
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
    assert_eq!(build(&two, u32::MAX).unwrap_err(), RingSizeTooLarge { ring_size: u32::MAX, max: MAX_RING_SIZE });
    assert!(build(&two, 2).is_ok());
    // Largest prime under the cap (validated only: building it takes a while in debug).
    assert_eq!(validate_ring_size(1_048_573), Ok(()));
    assert_eq!(validate_ring_size(MAX_RING_SIZE), Err(RingSizeNotPrime(MAX_RING_SIZE)));

    assert_eq!(build(&equal(8), 7), Err(TooManyBackends { ring_size: 7, backends: 8 }));
    // Draining backends do not count.
    let mut bs = equal(7);
    bs.push(backend(7, 0));
    assert!(build(&bs, 7).is_ok());

    let mut bs = equal(3);
    bs.push(MaglevBackend::new(9, bs[1].key.clone(), 0));
    assert_eq!(build(&bs, M), Err(DuplicateKey { key: bs[1].key.clone() }));

    let mut bs = equal(3);
    bs[2].id = bs[0].id;
    assert_eq!(build(&bs, M), Err(DuplicateId { id: bs[0].id }));

    let mut bs = equal(3);
    bs[2].id = 0;
    assert_eq!(build(&bs, M), Err(ZeroId { key: bs[2].key.clone() }));
    bs[2].weight = 0;
    assert_eq!(build(&bs, M), Err(ZeroId { key: bs[2].key.clone() }));

    let bs = vec![backend(0, u32::MAX), backend(1, 1)];
    assert_eq!(build(&bs, M), Err(WeightOverflow));
    let bs = vec![backend(0, u32::MAX - 1), backend(1, 1)];
    assert!(build(&bs, M).is_ok());

    // Messages name the offending key.
    let msg = ZeroId { key: vec![10, 0, 0, 1] }.to_string();
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
    let equal: Vec<_> = (1..=5).map(|i| MaglevBackend::new(i, v4(i as u8), 1)).collect();
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
