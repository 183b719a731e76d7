//! The pager: one thread (`warren-pager`) that keeps message bodies within the memory budget.
//!
//! Every tick it surveys the queues (a short lock each) and refreshes the memory account with
//! what is paged out and the bookkeeping estimate (`MemoryMonitor::refresh`). Then, when the
//! broker can page (it has a data folder):
//! - above the paging threshold, it pages out the bodies of the queues holding the most in
//!   memory, past a resident window at each queue's head, until the account is back under 90%
//!   of the threshold. A persistent body on a durable queue is already in the message log and is
//!   just dropped from memory; any other goes to the store's spill log.
//! - for every queue with paged-out bodies, it reads back those inside the window, ahead of the
//!   consumers, so that a drain finds its next messages in memory and runs at full speed.
//!
//! The window is a share of a quarter of the paging threshold, split between the queues that
//! page, between `MIN_WINDOW` and `MAX_WINDOW` messages. Work is done in rounds of at most
//! `ROUND_BYTES` (out) or `ROUND_LOADS` messages (in) per lock, so a queue's publishers and
//! consumers never wait long for the pager.
//! Ticks are `FAST_TICK` apart while anything is paged out or memory is above the threshold,
//! `SLOW_TICK` otherwise.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::memory::{MemoryMonitor, QueueMemory, RESIDENT_MESSAGE_OVERHEAD};
use crate::queue::QueueEntity;

/// Time between ticks while paging.
const FAST_TICK: Duration = Duration::from_millis(5);
/// Time between ticks otherwise.
const SLOW_TICK: Duration = Duration::from_millis(100);
/// The fewest messages kept in memory at a queue's head.
const MIN_WINDOW: usize = 16;
/// The most messages kept in memory at a queue's head: at 400 000 deliveries per second, 50 ms
/// of consuming, ten ticks.
const MAX_WINDOW: usize = 20_000;
/// Body bytes paged out per lock.
const ROUND_BYTES: usize = 2 << 20;
/// Bodies read back per lock (about 2 MiB of 1 KiB messages).
const ROUND_LOADS: usize = 2048;

/// The pager thread; stopped when this is stopped or dropped.
pub struct Pager {
    stop: Arc<AtomicBool>,
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Pager {
    /// Starts the thread. Without `can_page` (no data folder) it only keeps the account.
    pub fn start(monitor: Arc<MemoryMonitor>, can_page: bool) -> Pager {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("warren-pager".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        let busy = tick(&monitor, can_page);
                        std::thread::sleep(if busy { FAST_TICK } else { SLOW_TICK });
                    }
                })
                .map_err(|error| tracing::error!(%error, "cannot start the pager thread"))
                .ok()
        };
        Pager {
            stop,
            thread: parking_lot::Mutex::new(thread),
        }
    }

    /// Stops the thread and waits for it.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Pager {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// One queue as surveyed.
struct Surveyed {
    queue: Arc<QueueEntity>,
    memory: QueueMemory,
}

/// Surveys every queue and refreshes the account.
fn survey(monitor: &MemoryMonitor) -> Vec<Surveyed> {
    let surveyed: Vec<Surveyed> = monitor
        .live_queues()
        .into_iter()
        .map(|queue| Surveyed {
            memory: queue.memory(),
            queue,
        })
        .collect();
    let paged_bytes: u64 = surveyed.iter().map(|s| s.memory.paged_bytes()).sum();
    let paged: usize = surveyed.iter().map(|s| s.memory.paged).sum();
    let overhead: usize = surveyed.iter().map(|s| s.memory.overhead()).sum();
    monitor.refresh(
        usize::try_from(paged_bytes).unwrap_or(usize::MAX),
        paged,
        overhead,
    );
    surveyed
}

/// The resident window of a queue, in messages: its share of `window_bytes` over its typical
/// message size.
fn window(memory: &QueueMemory, window_bytes: usize) -> usize {
    let per_message = memory
        .ready_bytes
        .checked_div(memory.ready as u64)
        .map_or(1024, |bytes| usize::try_from(bytes).unwrap_or(usize::MAX))
        .saturating_add(RESIDENT_MESSAGE_OVERHEAD);
    (window_bytes / per_message).clamp(MIN_WINDOW, MAX_WINDOW)
}

/// One tick: survey, page out if over the threshold, read ahead where bodies are paged out.
/// Returns whether paging is going on (the next tick comes sooner).
fn tick(monitor: &MemoryMonitor, can_page: bool) -> bool {
    let mut surveyed = survey(monitor);
    if !can_page {
        return false;
    }
    let threshold = monitor.paging_threshold();
    // Queues that page, or would: those with paged-out bodies or a backlog past the smallest
    // window. They share a quarter of the threshold as resident windows.
    let paging = surveyed
        .iter()
        .filter(|s| s.memory.paged > 0 || s.memory.ready > MIN_WINDOW)
        .count()
        .max(1);
    let window_bytes = threshold / 4 / paging;
    let over = monitor.used() > threshold;
    if over {
        let target = threshold - threshold / 10;
        let mut excess = monitor.used().saturating_sub(target);
        surveyed.sort_unstable_by_key(|s| std::cmp::Reverse(s.memory.resident_ready_bytes));
        for s in &surveyed {
            if excess == 0 {
                break;
            }
            let keep = window(&s.memory, window_bytes);
            loop {
                let paged = s.queue.page_out(keep, ROUND_BYTES.min(excess.max(1)));
                if paged == 0 {
                    break;
                }
                excess = excess.saturating_sub(usize::try_from(paged).unwrap_or(usize::MAX));
                if excess == 0 {
                    break;
                }
            }
        }
        surveyed = survey(monitor);
    }
    let mut any_paged = false;
    for s in &surveyed {
        if s.memory.paged == 0 {
            continue;
        }
        any_paged = true;
        let keep = window(&s.memory, window_bytes);
        while s.queue.page_in(keep, ROUND_LOADS) == ROUND_LOADS {}
    }
    any_paged || over
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_a_share_of_bytes_within_bounds() {
        let memory = QueueMemory {
            ready: 1000,
            ready_bytes: 1000 * 1024,
            ..QueueMemory::default()
        };
        let per_message = 1024 + RESIDENT_MESSAGE_OVERHEAD;
        assert_eq!(window(&memory, 100 * per_message), 100);
        assert_eq!(window(&memory, 1), MIN_WINDOW);
        assert_eq!(window(&memory, usize::MAX), MAX_WINDOW);
        // An empty queue counts 1 KiB per message.
        assert_eq!(window(&QueueMemory::default(), 50 * per_message), 50);
    }
}
