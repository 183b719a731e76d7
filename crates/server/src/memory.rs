//! The broker-wide memory account behind back-pressure: bytes of message bodies held in queues,
//! and the alarm raised above the high watermark (RabbitMQ's memory alarm). While the alarm is
//! on, connections that publish stop reading from their sockets, and those that advertise the
//! `connection.blocked` capability are told so.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::watch;

/// Bytes held and the alarm state.
pub struct MemoryMonitor {
    /// Bytes of message bodies in queues (each queue's copy counted: a conservative estimate,
    /// since fanout shares one body).
    used: AtomicUsize,
    /// The high watermark, in bytes.
    limit: usize,
    /// Mirrors the watch value, so the hot path reads one atomic instead of the watch's lock.
    alarm: AtomicBool,
    /// Connections wait on this to resume reading.
    alarm_tx: watch::Sender<bool>,
}

impl MemoryMonitor {
    /// A monitor raising its alarm above `limit` bytes.
    pub fn new(limit: u64) -> Self {
        let (alarm_tx, _) = watch::channel(false);
        MemoryMonitor {
            used: AtomicUsize::new(0),
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            alarm: AtomicBool::new(false),
            alarm_tx,
        }
    }

    /// Accounts for `bytes` more.
    pub fn add(&self, bytes: usize) {
        let used = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if used > self.limit && !self.alarm.load(Ordering::Relaxed) {
            self.set_alarm(true);
        }
    }

    /// Accounts for `bytes` fewer.
    pub fn sub(&self, bytes: usize) {
        let before = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(bytes))
            })
            .unwrap_or(0);
        let used = before.saturating_sub(bytes);
        if used <= self.limit && self.alarm.load(Ordering::Relaxed) {
            self.set_alarm(false);
        }
    }

    fn set_alarm(&self, on: bool) {
        if self.alarm.swap(on, Ordering::AcqRel) != on {
            tracing::info!(
                used = self.used.load(Ordering::Relaxed),
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

    /// Bytes currently accounted.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}
