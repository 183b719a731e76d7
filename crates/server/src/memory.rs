//! The broker-wide memory account: the budget (RabbitMQ's memory high watermark, by default 40%
//! of the machine's RAM), the paging threshold below it, and the alarm raised above it.
//!
//! What is counted is the memory messages hold: bodies of messages in queues (each queue's
//! copy; a conservative estimate, since fanout shares one body), minus those paged out to disk,
//! plus an estimate of the bookkeeping per message (the `Message` itself and the queue's index
//! entry). Queues add and remove body bytes as messages come and go; the pager thread
//! (`pager.rs`) refreshes the paged-out bytes and the bookkeeping estimate as it surveys the
//! queues.
//!
//! Above the paging threshold (`memory_paging_ratio` of the budget, 0.5 by default as in
//! RabbitMQ 3.x) the pager moves bodies of long queues to disk. Above the budget itself the
//! alarm is raised: connections that publish stop being read, and those that advertise the
//! `connection.blocked` capability are told so. With a data folder the alarm is a last resort
//! (paging normally keeps the account below the threshold); with `--ephemeral` there is nowhere
//! to page to, and the alarm is the only guard.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::queue::QueueEntity;

/// Memory a message in memory holds beyond its body bytes and the queue's index entry: the
/// `Message` struct and its `Arc` counters, and typical properties, names and allocator slack.
pub const RESIDENT_MESSAGE_OVERHEAD: usize = std::mem::size_of::<warren_store::Message>() + 16 + 96;

/// How large the memory budget is: a fraction of the machine's RAM, or a number of bytes
/// (RabbitMQ's `vm_memory_high_watermark.relative` and `.absolute`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemoryLimit {
    /// A fraction of the RAM (of the cgroup's limit, when lower).
    Relative(f64),
    /// Bytes.
    Absolute(u64),
}

impl Default for MemoryLimit {
    /// 40% of the RAM, RabbitMQ's default.
    fn default() -> Self {
        MemoryLimit::Relative(0.4)
    }
}

impl MemoryLimit {
    /// Parses `0.4` or `40%` (relative), or `2147483648`, `2GiB`, `512MB`, `1.5G` (absolute;
    /// `k`, `KiB`, `M`, `MiB`, `G`, `GiB`, `T`, `TiB` are powers of 1024, `kB`, `MB`, `GB`,
    /// `TB` powers of 1000, as in rabbitmq.conf).
    pub fn parse(text: &str) -> Result<MemoryLimit, String> {
        let text = text.trim();
        let bad = || {
            format!(
                "memory limit {text:?}: expected a fraction of the RAM (0.4, 40%) or a size (2GiB, 2147483648)"
            )
        };
        if let Some(percent) = text.strip_suffix('%') {
            let percent: f64 = percent.trim().parse().map_err(|_| bad())?;
            return MemoryLimit::relative(percent / 100.0).ok_or_else(bad);
        }
        if let Ok(bytes) = text.parse::<u64>() {
            return Ok(MemoryLimit::Absolute(bytes));
        }
        if let Ok(fraction) = text.parse::<f64>() {
            return MemoryLimit::relative(fraction).ok_or_else(bad);
        }
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, unit) = text.split_at(split);
        let number: f64 = number.parse().map_err(|_| bad())?;
        let multiplier: f64 = match unit.trim() {
            "B" | "b" => 1.0,
            "k" | "K" | "KiB" | "kiB" => 1024.0,
            "kB" | "KB" => 1e3,
            "M" | "MiB" => 1024.0 * 1024.0,
            "MB" => 1e6,
            "G" | "GiB" => 1024.0 * 1024.0 * 1024.0,
            "GB" => 1e9,
            "T" | "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
            "TB" => 1e12,
            _ => return Err(bad()),
        };
        let bytes = number * multiplier;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(bad());
        }
        Ok(MemoryLimit::Absolute(bytes as u64))
    }

    /// A fraction of the RAM; `None` unless it is a number in (0, 1].
    pub fn relative(fraction: f64) -> Option<MemoryLimit> {
        (fraction > 0.0 && fraction <= 1.0).then_some(MemoryLimit::Relative(fraction))
    }

    /// The budget in bytes on a machine with `total` bytes of RAM.
    pub fn resolve(self, total: u64) -> u64 {
        match self {
            MemoryLimit::Absolute(bytes) => bytes,
            MemoryLimit::Relative(fraction) => (total as f64 * fraction) as u64,
        }
    }
}

impl std::fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemoryLimit::Relative(fraction) => write!(f, "{}% of RAM", fraction * 100.0),
            MemoryLimit::Absolute(bytes) => write!(f, "{bytes} bytes"),
        }
    }
}

/// The RAM the broker may use: `MemTotal` from /proc/meminfo, or the cgroup's memory limit when
/// that is lower (a container). `None` when neither can be read (not Linux).
pub fn total_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let total = meminfo.as_deref().and_then(parse_meminfo_total);
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|path| std::fs::read_to_string(path).ok())
    .find_map(|text| text.trim().parse::<u64>().ok());
    match (total, cgroup) {
        (Some(total), Some(cgroup)) => Some(total.min(cgroup)),
        (total, cgroup) => total.or(cgroup),
    }
}

/// `MemTotal:  24576000 kB` -> bytes.
fn parse_meminfo_total(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?;
    let mut words = line.split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// One queue's part of the account, as the pager surveys it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueMemory {
    /// Ready messages.
    pub ready: usize,
    /// Of those, paged out.
    pub paged: usize,
    /// Body bytes of ready messages.
    pub ready_bytes: u64,
    /// Of those, in memory.
    pub resident_ready_bytes: u64,
    /// Delivered messages waiting for an ack (always in memory).
    pub unacked: usize,
    /// The queue's index, by capacity.
    pub index_bytes: usize,
}

impl QueueMemory {
    /// Body bytes paged out.
    pub fn paged_bytes(&self) -> u64 {
        self.ready_bytes - self.resident_ready_bytes
    }

    /// The bookkeeping estimate: the index, and the `Message` of every message in memory.
    pub fn overhead(&self) -> usize {
        self.index_bytes + (self.ready - self.paged + self.unacked) * RESIDENT_MESSAGE_OVERHEAD
    }
}

/// What [`MemoryMonitor::report`] returns: the account and its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct MemoryReport {
    /// Bytes of bodies of messages in queues, paged out or not (each queue's copy).
    pub body_bytes: usize,
    /// Of those, bytes paged out to disk (as of the pager's last survey).
    pub paged_bytes: usize,
    /// Messages whose body is paged out (as of the pager's last survey).
    pub paged_messages: usize,
    /// Estimated bookkeeping of all messages (as of the pager's last survey).
    pub overhead_bytes: usize,
    /// The account: `body_bytes - paged_bytes + overhead_bytes`.
    pub used: usize,
    /// The budget: the alarm is on above it.
    pub limit: usize,
    /// Paging starts above this.
    pub paging_threshold: usize,
    /// Whether the alarm is on.
    pub alarm: bool,
}

/// The account, the thresholds and the alarm state, plus the queues the pager looks after.
pub struct MemoryMonitor {
    /// Bytes of message bodies in queues (each queue's copy).
    body: AtomicUsize,
    /// Bytes of those bodies paged out to disk, as of the pager's last survey.
    paged: AtomicUsize,
    /// Messages paged out, as of the pager's last survey.
    paged_messages: AtomicUsize,
    /// Estimated bookkeeping of the messages, as of the pager's last survey.
    overhead: AtomicUsize,
    /// The budget (high watermark), in bytes.
    limit: usize,
    /// The pager moves bodies to disk while the account is above this.
    paging_threshold: usize,
    /// Mirrors the watch value, so the hot path reads one atomic instead of the watch's lock.
    alarm: AtomicBool,
    /// Connections wait on this to resume reading.
    alarm_tx: watch::Sender<bool>,
    /// Every queue, for the pager (dead ones are dropped at each survey).
    queues: Mutex<Vec<Weak<QueueEntity>>>,
}

impl MemoryMonitor {
    /// A monitor raising its alarm above `limit` bytes and asking for paging above
    /// `limit * paging_ratio`.
    pub fn new(limit: u64, paging_ratio: f64) -> Self {
        let (alarm_tx, _) = watch::channel(false);
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        MemoryMonitor {
            body: AtomicUsize::new(0),
            paged: AtomicUsize::new(0),
            paged_messages: AtomicUsize::new(0),
            overhead: AtomicUsize::new(0),
            limit,
            paging_threshold: (limit as f64 * paging_ratio.clamp(0.0, 1.0)) as usize,
            alarm: AtomicBool::new(false),
            alarm_tx,
            queues: Mutex::new(Vec::new()),
        }
    }

    /// Accounts for `bytes` more of bodies.
    pub fn add(&self, bytes: usize) {
        self.body.fetch_add(bytes, Ordering::Relaxed);
        if !self.alarm.load(Ordering::Relaxed) && self.used() > self.limit {
            self.set_alarm(true);
        }
    }

    /// Accounts for `bytes` fewer of bodies.
    pub fn sub(&self, bytes: usize) {
        let _ = self
            .body
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(bytes))
            });
        if self.alarm.load(Ordering::Relaxed) && self.used() <= self.limit {
            self.set_alarm(false);
        }
    }

    /// The pager's survey: bytes and messages paged out, and the bookkeeping estimate. Sets or
    /// clears the alarm accordingly.
    pub(crate) fn refresh(&self, paged_bytes: usize, paged_messages: usize, overhead: usize) {
        self.paged.store(paged_bytes, Ordering::Relaxed);
        self.paged_messages.store(paged_messages, Ordering::Relaxed);
        self.overhead.store(overhead, Ordering::Relaxed);
        self.set_alarm(self.used() > self.limit);
    }

    fn set_alarm(&self, on: bool) {
        if self.alarm.swap(on, Ordering::AcqRel) != on {
            tracing::info!(
                used = self.used(),
                limit = self.limit,
                "memory alarm {}",
                if on {
                    "set: blocking publishers"
                } else {
                    "cleared"
                }
            );
            self.alarm_tx.send_replace(on);
        }
    }

    /// Whether publishers must stop now.
    pub fn alarm(&self) -> bool {
        self.alarm.load(Ordering::Relaxed)
    }

    /// A receiver to wait for the alarm to clear.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.alarm_tx.subscribe()
    }

    /// The account, in bytes: bodies in memory plus the bookkeeping estimate.
    pub fn used(&self) -> usize {
        self.body
            .load(Ordering::Relaxed)
            .saturating_sub(self.paged.load(Ordering::Relaxed))
            .saturating_add(self.overhead.load(Ordering::Relaxed))
    }

    /// The budget in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The account above which the pager moves bodies to disk.
    pub fn paging_threshold(&self) -> usize {
        self.paging_threshold
    }

    /// The account and its parts.
    pub fn report(&self) -> MemoryReport {
        MemoryReport {
            body_bytes: self.body.load(Ordering::Relaxed),
            paged_bytes: self.paged.load(Ordering::Relaxed),
            paged_messages: self.paged_messages.load(Ordering::Relaxed),
            overhead_bytes: self.overhead.load(Ordering::Relaxed),
            used: self.used(),
            limit: self.limit,
            paging_threshold: self.paging_threshold,
            alarm: self.alarm(),
        }
    }

    /// Puts a new queue in the pager's care.
    pub fn register(&self, queue: &Arc<QueueEntity>) {
        self.queues.lock().push(Arc::downgrade(queue));
    }

    /// The queues alive now (and forgets the others).
    pub(crate) fn live_queues(&self) -> Vec<Arc<QueueEntity>> {
        let mut queues = self.queues.lock();
        let mut live = Vec::with_capacity(queues.len());
        queues.retain(|weak| match weak.upgrade() {
            Some(queue) if !queue.is_deleted() => {
                live.push(queue);
                true
            }
            _ => false,
        });
        live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_as_rabbitmq_writes_them() {
        let cases = [
            ("0.4", MemoryLimit::Relative(0.4)),
            ("40%", MemoryLimit::Relative(0.4)),
            (" 1.0 ", MemoryLimit::Relative(1.0)),
            ("2147483648", MemoryLimit::Absolute(2_147_483_648)),
            ("2GiB", MemoryLimit::Absolute(2 << 30)),
            ("2G", MemoryLimit::Absolute(2 << 30)),
            ("2GB", MemoryLimit::Absolute(2_000_000_000)),
            ("512MiB", MemoryLimit::Absolute(512 << 20)),
            ("1.5 GiB", MemoryLimit::Absolute(3 << 29)),
            ("64k", MemoryLimit::Absolute(64 << 10)),
            ("0", MemoryLimit::Absolute(0)),
        ];
        for (text, expected) in cases {
            assert_eq!(MemoryLimit::parse(text), Ok(expected), "{text}");
        }
        for bad in [
            "",
            "0.0",
            "1.5",
            "-1",
            "150%",
            "2 parsecs",
            "GiB",
            "1e400GB",
        ] {
            assert!(MemoryLimit::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn relative_limits_resolve_against_the_ram() {
        assert_eq!(MemoryLimit::Relative(0.4).resolve(10_000), 4_000);
        assert_eq!(MemoryLimit::Absolute(123).resolve(10_000), 123);
        assert_eq!(MemoryLimit::default(), MemoryLimit::Relative(0.4));
    }

    #[test]
    fn meminfo_total_is_read_in_bytes() {
        let meminfo = "MemTotal:       24576000 kB\nMemFree:        20000000 kB\n";
        assert_eq!(parse_meminfo_total(meminfo), Some(24_576_000 * 1024));
        assert_eq!(parse_meminfo_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_meminfo_total("MemTotal: lots kB\n"), None);
        // This machine's, when there is one.
        if let Some(total) = total_memory() {
            assert!(total > 16 << 20, "{total}");
        }
    }

    #[test]
    fn the_alarm_follows_the_account_including_the_pagers_survey() {
        let monitor = MemoryMonitor::new(1000, 0.5);
        assert_eq!(monitor.paging_threshold(), 500);
        monitor.add(900);
        assert!(!monitor.alarm());
        monitor.add(200);
        assert!(monitor.alarm(), "1100 > 1000");
        // The pager paged 600 bytes out: 500 left in memory, plus 100 of bookkeeping.
        monitor.refresh(600, 3, 100);
        assert!(!monitor.alarm());
        assert_eq!(monitor.used(), 600);
        let report = monitor.report();
        assert_eq!(
            (report.body_bytes, report.paged_messages, report.used),
            (1100, 3, 600)
        );
        // Bookkeeping alone can raise it (a huge number of paged-out messages).
        monitor.refresh(600, 3, 600);
        assert!(monitor.alarm());
        monitor.sub(1100);
        monitor.refresh(0, 0, 0);
        assert!(!monitor.alarm());
        assert_eq!(monitor.used(), 0);
    }
}
