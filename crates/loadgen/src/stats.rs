//! Counters shared by the producer and consumer tasks and the once-a-second reporter, latency
//! histograms, and the publisher-confirm window.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;

/// Latencies are recorded in microseconds, from 1 µs to one hour, with 3 significant digits.
const LATENCY_MAX_US: u64 = 3_600_000_000;

/// A fresh latency histogram.
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low, sigfig <= 5),
    // so this cannot fail; a unit test builds one.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("constant histogram bounds are valid")
}

/// Counters every task adds to (in batches, so the cache line is touched rarely).
pub struct Shared {
    /// When the generator started: the zero of the send times carried in bodies.
    pub epoch: Instant,
    pub published: AtomicU64,
    pub confirmed: AtomicU64,
    pub nacked: AtomicU64,
    pub returned: AtomicU64,
    pub consumed: AtomicU64,
    /// Latencies since the reporter last looked.
    pub interval: Mutex<Histogram<u64>>,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            epoch: Instant::now(),
            published: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            nacked: AtomicU64::new(0),
            returned: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            interval: Mutex::new(new_histogram()),
        }
    }

    /// Nanoseconds since `epoch`: what producers stamp and consumers subtract.
    pub fn now_nanos(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub fn snapshot(&self) -> Counts {
        Counts {
            published: self.published.load(Ordering::Relaxed),
            confirmed: self.confirmed.load(Ordering::Relaxed),
            nacked: self.nacked.load(Ordering::Relaxed),
            consumed: self.consumed.load(Ordering::Relaxed),
        }
    }

    /// Takes the latencies recorded since the last call.
    pub fn take_interval(&self) -> Histogram<u64> {
        let mut fresh = new_histogram();
        if let Ok(mut guard) = self.interval.lock() {
            std::mem::swap(&mut *guard, &mut fresh);
        }
        fresh
    }
}

/// A reading of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub published: u64,
    pub confirmed: u64,
    pub nacked: u64,
    pub consumed: u64,
}

/// Latency percentiles in microseconds, as reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Latency {
    pub count: u64,
    pub min_us: u64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            min_us: h.min(),
            p50_us: h.value_at_quantile(0.50),
            p95_us: h.value_at_quantile(0.95),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
            mean_us: (h.mean() * 10.0).round() / 10.0,
        }
    }
}

/// Publisher confirms outstanding on one channel: tags `low..low + pending.len()`, each marked
/// once confirmed. Brokers may confirm out of order and with `multiple`, so a plain counter is
/// not enough.
#[derive(Debug, Clone)]
pub struct ConfirmWindow {
    /// The lowest tag not yet confirmed.
    low: u64,
    /// Whether each tag from `low` on has been confirmed.
    pending: VecDeque<bool>,
}

impl Default for ConfirmWindow {
    fn default() -> Self {
        ConfirmWindow {
            low: 1,
            pending: VecDeque::new(),
        }
    }
}

/// What a confirm settled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settled {
    pub messages: u64,
    /// Tags confirmed that were never published or were confirmed before.
    pub bogus: u64,
}

impl ConfirmWindow {
    /// Notes one more published message (tags are 1, 2, 3, ... per channel).
    pub fn publish(&mut self) {
        self.pending.push_back(false);
    }

    /// Messages published and not yet confirmed.
    pub fn outstanding(&self) -> u64 {
        self.pending.iter().filter(|done| !**done).count() as u64
    }

    /// Cheap upper bound of `outstanding`, for the hot path.
    pub fn span(&self) -> u64 {
        self.pending.len() as u64
    }

    /// Applies an ack or nack for `tag` (and every earlier tag when `multiple`).
    pub fn settle(&mut self, tag: u64, multiple: bool) -> Settled {
        let mut settled = Settled::default();
        let end = self.low + self.pending.len() as u64;
        if tag < self.low || tag >= end {
            // A multiple-confirm below the window repeats nothing new; a single one is a repeat.
            if !(multiple && tag < end) {
                settled.bogus += 1;
            }
            return settled;
        }
        let index = (tag - self.low) as usize;
        let first = if multiple { 0 } else { index };
        for done in self.pending.range_mut(first..=index) {
            if !*done {
                *done = true;
                settled.messages += 1;
            } else if !multiple {
                settled.bogus += 1;
            }
        }
        while self.pending.front() == Some(&true) {
            self.pending.pop_front();
            self.low += 1;
        }
        settled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirm_window_handles_multiple_and_out_of_order() {
        let mut w = ConfirmWindow::default();
        for _ in 0..10 {
            w.publish();
        }
        assert_eq!(
            w.settle(3, false),
            Settled {
                messages: 1,
                bogus: 0
            }
        );
        assert_eq!(w.outstanding(), 9);
        assert_eq!(
            w.settle(5, true),
            Settled {
                messages: 4,
                bogus: 0
            },
            "1, 2, 4, 5"
        );
        assert_eq!(w.span(), 5, "6..=10 remain");
        assert_eq!(
            w.settle(5, false),
            Settled {
                messages: 0,
                bogus: 1
            },
            "a repeat"
        );
        assert_eq!(
            w.settle(10, false),
            Settled {
                messages: 1,
                bogus: 0
            }
        );
        assert_eq!(
            w.settle(9, true),
            Settled {
                messages: 4,
                bogus: 0
            },
            "6..=9"
        );
        assert_eq!(w.outstanding(), 0);
        assert_eq!(w.span(), 0);
        assert_eq!(
            w.settle(11, false),
            Settled {
                messages: 0,
                bogus: 1
            },
            "never published"
        );
    }

    #[test]
    fn latency_percentiles() {
        let mut h = new_histogram();
        for us in 1..=1000 {
            h.record(us).unwrap();
        }
        let l = Latency::of(&h);
        assert_eq!(l.count, 1000);
        assert_eq!(l.min_us, 1);
        assert_eq!(l.p50_us, 500);
        assert_eq!(l.p99_us, 990);
        assert_eq!(l.max_us, 1000);
        assert_eq!(Latency::of(&new_histogram()), Latency::default());
    }
}
