//! The disk alarm (RabbitMQ's free disk space alarm): while the file system holding the data
//! folder has less free space than `disk_free_limit`, or while the store cannot write its log
//! (a write or fsync failed and is being retried), publishing connections are blocked exactly as
//! under the memory alarm: they stop being read, and those advertising the `connection.blocked`
//! capability are told so. Consumers keep being served, which is what frees space again.
//!
//! Free space is measured with `statvfs` (the blocks available to unprivileged users, as `df`
//! shows them), at start, then at an interval that shrinks as free space nears the limit:
//! up to every 10 s with plenty of room, down to every 100 ms near the limit, as RabbitMQ does.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

/// RabbitMQ's default `disk_free_limit`: 50 MB.
pub const DEFAULT_DISK_FREE_LIMIT: u64 = 50_000_000;

/// The longest and shortest pause between two measurements.
const MAX_INTERVAL: Duration = Duration::from_secs(10);
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// The fastest a disk is assumed to fill (bytes per second): the next measurement comes before
/// the margin above the limit could be used up at this rate, twice over.
const FAST_FILL_RATE: u64 = 1 << 30;

/// Free space against the limit, store write failures, and the alarm they raise.
pub struct DiskMonitor {
    /// The data folder; its file system is the one measured.
    dir: PathBuf,
    /// Free bytes below which the alarm is raised; 0 disables the check.
    limit: AtomicU64,
    /// Free bytes at the last measurement (`u64::MAX` before the first, or when it failed).
    free: AtomicU64,
    /// The last measurement was below the limit.
    low_space: AtomicBool,
    /// The store's last write or fsync failed (full disk, I/O error); cleared by a success.
    store_failing: AtomicBool,
    /// Mirrors the watch value, so the hot path reads one atomic instead of the watch's lock.
    alarm: AtomicBool,
    /// Connections wait on this to resume reading.
    alarm_tx: watch::Sender<bool>,
    /// Wakes the checker at once (the limit changed).
    recheck: Notify,
    /// A failed measurement was logged; later ones are not, until one succeeds.
    warned: AtomicBool,
}

impl DiskMonitor {
    /// A monitor of the file system holding `dir`, raising its alarm below `limit` free bytes.
    /// Nothing is measured until [`DiskMonitor::check`] runs (see [`DiskMonitor::run`]).
    pub fn new(dir: impl Into<PathBuf>, limit: u64) -> Self {
        let (alarm_tx, _) = watch::channel(false);
        DiskMonitor {
            dir: dir.into(),
            limit: AtomicU64::new(limit),
            free: AtomicU64::new(u64::MAX),
            low_space: AtomicBool::new(false),
            store_failing: AtomicBool::new(false),
            alarm: AtomicBool::new(false),
            alarm_tx,
            recheck: Notify::new(),
            warned: AtomicBool::new(false),
        }
    }

    /// Whether publishers must stop now.
    pub fn alarm(&self) -> bool {
        self.alarm.load(Ordering::Relaxed)
    }

    /// A receiver to wait for the alarm to change.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.alarm_tx.subscribe()
    }

    /// The limit in bytes.
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Free bytes at the last measurement; `None` before the first or when it failed.
    pub fn free(&self) -> Option<u64> {
        Some(self.free.load(Ordering::Relaxed)).filter(|&free| free != u64::MAX)
    }

    /// Changes the limit at run time (RabbitMQ's `rabbitmqctl set_disk_free_limit`) and has
    /// the checker measure again at once.
    pub fn set_limit(&self, limit: u64) {
        let before = self.limit.swap(limit, Ordering::Relaxed);
        if before != limit {
            tracing::info!(limit, "disk free limit set");
        }
        self.recheck.notify_one();
    }

    /// The store reports whether its last write and fsync failed (`true`) or worked (`false`).
    /// While they fail, its records wait in memory: publishers are blocked until it recovers.
    pub fn set_store_failing(&self, failing: bool) {
        if self.store_failing.swap(failing, Ordering::AcqRel) != failing {
            if failing {
                tracing::warn!("the message store cannot write: blocking publishers");
            } else {
                tracing::info!("the message store writes again");
            }
            self.update();
        }
    }

    /// Measures free space now and raises or clears the alarm; returns the free bytes.
    pub fn check(&self) -> Option<u64> {
        let measured = free_bytes(&self.dir);
        match &measured {
            Ok(free) => {
                self.warned.store(false, Ordering::Relaxed);
                self.free.store(*free, Ordering::Relaxed);
            }
            Err(error) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(dir = %self.dir.display(), %error,
                        "cannot measure free disk space; the disk alarm keeps its state");
                }
            }
        }
        let free = measured.ok();
        if let Some(free) = free {
            let low = free < self.limit();
            if self.low_space.swap(low, Ordering::AcqRel) != low {
                tracing::info!(
                    free,
                    limit = self.limit(),
                    "free disk space {} the limit",
                    if low { "fell below" } else { "is back above" }
                );
                self.update();
            }
        }
        free
    }

    /// How long to wait before the next measurement, given the last one.
    fn interval(&self, free: Option<u64>) -> Duration {
        let Some(free) = free else {
            return MAX_INTERVAL;
        };
        let margin = free.abs_diff(self.limit());
        let ideal = Duration::from_secs_f64(margin as f64 / (2 * FAST_FILL_RATE) as f64);
        ideal.clamp(MIN_INTERVAL, MAX_INTERVAL)
    }

    /// Measures until `shutdown` changes: at start, then at [`DiskMonitor::interval`], and at
    /// once when the limit changes. `statvfs` may block (a hung network file system), so it
    /// runs on the blocking pool.
    pub async fn run(self: std::sync::Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(
            dir = %self.dir.display(),
            limit = self.limit(),
            "free disk space monitoring enabled"
        );
        loop {
            let monitor = std::sync::Arc::clone(&self);
            let free = tokio::task::spawn_blocking(move || monitor.check())
                .await
                .ok()
                .flatten();
            tokio::select! {
                _ = tokio::time::sleep(self.interval(free)) => {}
                _ = self.recheck.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    fn update(&self) {
        let on =
            self.low_space.load(Ordering::Acquire) || self.store_failing.load(Ordering::Acquire);
        if self.alarm.swap(on, Ordering::AcqRel) != on {
            tracing::info!(
                "disk alarm {}",
                if on {
                    "set: blocking publishers"
                } else {
                    "cleared"
                }
            );
            self.alarm_tx.send_replace(on);
        }
    }
}

/// Bytes available to unprivileged users on the file system holding `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_above_free_space_raises_the_alarm_and_lowering_it_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let monitor = DiskMonitor::new(dir.path(), 0);
        let free = monitor
            .check()
            .expect("statvfs works on a temporary folder");
        assert!(free > 0);
        assert!(!monitor.alarm());
        monitor.set_limit(u64::MAX - 1);
        monitor.check();
        assert!(monitor.alarm());
        monitor.set_limit(0);
        monitor.check();
        assert!(!monitor.alarm());
    }

    #[test]
    fn a_failing_store_holds_the_alarm_until_it_writes_again() {
        let dir = tempfile::tempdir().unwrap();
        let monitor = DiskMonitor::new(dir.path(), 0);
        let mut rx = monitor.subscribe();
        monitor.set_store_failing(true);
        assert!(monitor.alarm());
        assert!(rx.has_changed().unwrap());
        assert!(*rx.borrow_and_update());
        // Plenty of space does not clear it while the store fails.
        monitor.check();
        assert!(monitor.alarm());
        monitor.set_store_failing(false);
        assert!(!monitor.alarm());
        assert!(!*rx.borrow_and_update());
    }

    #[test]
    fn an_unmeasurable_folder_raises_nothing_and_checks_rarely() {
        let monitor = DiskMonitor::new("/nonexistent/warren-disk-test", u64::MAX - 1);
        assert_eq!(monitor.check(), None);
        assert!(!monitor.alarm());
        assert_eq!(monitor.interval(None), MAX_INTERVAL);
    }

    #[test]
    fn checks_come_sooner_near_the_limit() {
        let monitor = DiskMonitor::new("/", 1_000_000_000);
        assert_eq!(monitor.interval(Some(1_000_000_000)), MIN_INTERVAL);
        assert_eq!(monitor.interval(Some(u64::MAX / 2)), MAX_INTERVAL);
        let mid = monitor.interval(Some(3_000_000_000));
        assert!(mid > MIN_INTERVAL && mid < MAX_INTERVAL, "{mid:?}");
    }
}
