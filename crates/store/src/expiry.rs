//! A queue's expiry index: `(deadline, offset)` pairs, soonest first, cheap for the way deadlines
//! really arrive.
//!
//! Messages get their deadline at publish time from one of a few TTLs (the queue's
//! `x-message-ttl`, or the handful of `expiration` values an application uses), so the deadlines
//! of one TTL arrive in nondecreasing order (and so do the pairs: offsets grow too). The index keeps up to [`MAX_RUNS`] *runs*, each a
//! `VecDeque` of nondecreasing deadlines: a new pair is appended to the run whose last deadline
//! is the largest not after it (best fit), so each TTL ends up with a run of its own, and push and
//! pop are O(1) with no cache-missing sift through a large heap. A pair that fits no run (more
//! distinct TTLs than runs, a requeued message's old deadline) goes to a binary heap, O(log n).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// Runs kept at most; pairs that fit none go to the heap.
const MAX_RUNS: usize = 8;

/// `(deadline in ms, offset)`.
type Pair = (u64, u64);

/// Soonest-first index of `(deadline, offset)` pairs.
#[derive(Debug, Default)]
pub(crate) struct ExpiryIndex {
    /// Each run's pairs are nondecreasing front to back; no run is empty.
    runs: Vec<VecDeque<Pair>>,
    /// Pairs that fit no run.
    heap: BinaryHeap<Reverse<Pair>>,
}

impl ExpiryIndex {
    /// Adds a pair.
    pub(crate) fn push(&mut self, deadline: u64, offset: u64) {
        // Runs are ordered by the whole pair, so equal deadlines come out by offset (a requeued
        // message's older offset does not fit behind a newer one with the same deadline).
        let pair = (deadline, offset);
        let best = self
            .runs
            .iter_mut()
            .filter(|run| run.back().is_some_and(|last| *last <= pair))
            .max_by_key(|run| run.back().copied().unwrap_or_default());
        if let Some(run) = best {
            run.push_back((deadline, offset));
        } else if self.runs.len() < MAX_RUNS {
            self.runs.push(VecDeque::from([(deadline, offset)]));
        } else {
            self.heap.push(Reverse((deadline, offset)));
        }
    }

    /// The soonest pair.
    pub(crate) fn peek(&self) -> Option<Pair> {
        self.runs
            .iter()
            .filter_map(|run| run.front().copied())
            .chain(self.heap.peek().map(|Reverse(pair)| *pair))
            .min()
    }

    /// Takes the soonest pair out.
    pub(crate) fn pop(&mut self) -> Option<Pair> {
        let soonest = self.peek()?;
        self.remove_if_first(soonest);
        Some(soonest)
    }

    /// Removes `pair` if it is at the front of a run or on top of the heap (the usual case for a
    /// message popped from a FIFO queue); returns whether it did.
    pub(crate) fn remove_if_first(&mut self, pair: Pair) -> bool {
        if self.heap.peek() == Some(&Reverse(pair)) {
            self.heap.pop();
            return true;
        }
        let Some(index) = self.runs.iter().position(|run| run.front() == Some(&pair)) else {
            return false;
        };
        if let Some(run) = self.runs.get_mut(index) {
            run.pop_front();
            if run.is_empty() {
                self.runs.swap_remove(index);
            }
        }
        true
    }

    /// How many pairs.
    pub(crate) fn len(&self) -> usize {
        self.runs.iter().map(VecDeque::len).sum::<usize>() + self.heap.len()
    }

    /// Keeps only the pairs `keep` accepts (O(n)).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(Pair) -> bool) {
        for run in &mut self.runs {
            run.retain(|pair| keep(*pair));
        }
        self.runs.retain(|run| !run.is_empty());
        self.heap.retain(|Reverse(pair)| keep(*pair));
    }

    /// Drops every pair.
    pub(crate) fn clear(&mut self) {
        self.runs.clear();
        self.heap.clear();
    }

    /// Moves every pair out (to split or join priority levels).
    pub(crate) fn drain(&mut self) -> Vec<Pair> {
        let mut pairs: Vec<Pair> = self.runs.drain(..).flatten().collect();
        pairs.extend(
            std::mem::take(&mut self.heap)
                .into_iter()
                .map(|Reverse(p)| p),
        );
        pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaved_ttls_get_a_run_each_and_come_out_soonest_first() {
        let mut index = ExpiryIndex::default();
        // Three TTLs in turn, published 1 ms apart.
        for now in 0..300u64 {
            let ttl = [1_000, 60_000, 5][(now % 3) as usize];
            index.push(now + ttl, now);
        }
        assert_eq!(index.runs.len(), 3);
        assert!(index.heap.is_empty());
        let mut last = (0, 0);
        let mut n = 0;
        while let Some(pair) = index.pop() {
            assert!(pair >= last, "{pair:?} after {last:?}");
            last = pair;
            n += 1;
        }
        assert_eq!(n, 300);
        assert_eq!(index.len(), 0);
    }

    #[test]
    fn more_ttls_than_runs_spill_into_the_heap_and_stay_ordered() {
        let mut index = ExpiryIndex::default();
        let mut want = Vec::new();
        for n in 0..1000u64 {
            let deadline = (n * 7919) % 1013;
            index.push(deadline, n);
            want.push((deadline, n));
        }
        assert!(index.runs.len() <= MAX_RUNS);
        assert!(!index.heap.is_empty());
        want.sort_unstable();
        let got: Vec<_> = std::iter::from_fn(|| index.pop()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn remove_if_first_and_retain() {
        let mut index = ExpiryIndex::default();
        for n in 0..10 {
            index.push(100 + n, n);
        }
        assert!(index.remove_if_first((100, 0)));
        assert!(!index.remove_if_first((105, 5)), "not first");
        index.retain(|(_, offset)| offset % 2 == 0);
        assert_eq!(index.len(), 4);
        assert_eq!(index.peek(), Some((102, 2)));
        let mut drained = index.drain();
        drained.sort_unstable();
        assert_eq!(drained, [(102, 2), (104, 4), (106, 6), (108, 8)]);
        assert_eq!(index.peek(), None);
    }
}
