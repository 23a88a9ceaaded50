//! The order in which backends take turns claiming Maglev slots, with
//! weights: three implementations of one order (see [`schedule`]).

use std::{cmp::Reverse, collections::BinaryHeap};

/// Hands out exactly `turns` turns, in the order of the weighted round
/// robin, to `take` in batches (slices of indices into `weights`). In every
/// round each backend `i`, in slice order, adds `weights[i]` to its credit
/// and takes a turn if the credit reaches the largest weight, which it then
/// pays. `weights` must be non-empty with no zero.
///
/// Backend `i` thus takes its `k`-th turn in round `ceil(k * max / w_i)`.
/// Two implementations produce that same order; the cheaper one is picked.
pub(super) fn schedule(weights: &[u32], turns: usize, take: impl FnMut(&[u32])) {
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
pub(super) fn prefer_heap(weights: &[u32], turns: usize) -> bool {
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
pub(super) fn schedule_equal(n: usize, turns: usize, mut take: impl FnMut(&[u32])) {
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
pub(super) fn schedule_rounds(weights: &[u32], turns: usize, mut take: impl FnMut(&[u32])) {
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
pub(super) fn schedule_heap(weights: &[u32], turns: usize, mut take: impl FnMut(&[u32])) {
    const BATCH: usize = 1024;
    let max = u64::from(*weights.iter().max().expect("no backends"));
    // Round of backend i's k-th turn. k <= turns + 1 <= 2^24 + 1 and
    // max < 2^32, so the product fits in u64.
    let round_of = |k: u64, w: u32| (k * max).div_ceil(u64::from(w));
    let mut taken = vec![0u64; weights.len()];
    let mut heap: BinaryHeap<Reverse<(u64, u32)>> =
        (0..weights.len() as u32).map(|i| Reverse((round_of(1, weights[i as usize]), i))).collect();
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
