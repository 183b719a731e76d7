//! Figures for compaction on real files (docs/performance.md), with compaction off and on:
//!
//! 1. Disk use after one long-lived message among N acked 1 KiB ones (default N = 1,000,000).
//! 2. Publish throughput (1 KiB persistent, one fdatasync per 100, everything acked except one
//!    message in 20, which is held until 200,000 messages later), and the disk use it leaves:
//!    every sealed segment keeps 5% of live records, so compaction runs all the time.
//!
//! `cargo run --release -p warren-store --example compaction_figures -- [N] [DIR]` (DIR: where
//! to put the data folders, default the system's temporary folder; run it under
//! `flock /work/bench.lock`).

// An example is test code: a panic is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use warren_codec::ShortString;
use warren_store::{FileBackend, Message, QueueDef, Store, StoreOptions};

fn message() -> Arc<Message> {
    Arc::new(
        Message::new(
            ShortString::from_static("amq.direct"),
            ShortString::from_static("bench"),
            Bytes::from_static(b"\x10\x00\x02"),
            Bytes::from(vec![b'x'; 1024]),
        )
        .with_persistent(true),
    )
}

fn open(dir: &Path, compact_below: u8) -> Store {
    let backend = Arc::new(FileBackend::new(dir).unwrap());
    let options = StoreOptions::default().with_compaction(compact_below);
    Store::open_with(backend, options).unwrap().0
}

fn def(name: &'static str) -> QueueDef {
    QueueDef {
        vhost: ShortString::from_static("/"),
        name: ShortString::from_static(name),
        auto_delete: false,
        arguments: Bytes::new(),
    }
}

/// Bytes in the folder's files, as `du` would count them (apparent size).
fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .sum()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn one_long_lived(root: &Path, count: usize, compact_below: u8) {
    let dir = tempfile::tempdir_in(root).unwrap();
    let store = open(dir.path(), compact_below);
    let mut queue = store.declare_queue(&def("q")).unwrap();
    let body = message();
    queue.push(message());
    let long_lived = queue.pop().unwrap();
    let started = Instant::now();
    for n in 0..count {
        queue.push(Arc::clone(&body));
        if n % 1000 == 999 {
            store.sync().unwrap();
            while let Some(delivery) = queue.pop() {
                queue.ack(delivery.offset);
            }
        }
    }
    store.sync().unwrap();
    while let Some(delivery) = queue.pop() {
        queue.ack(delivery.offset);
    }
    let publish = started.elapsed();
    let peak = folder_bytes(dir.path());
    // The broker's sync thread keeps syncing while idle; do the same until nothing changes.
    let settle = Instant::now();
    let mut syncs = 0;
    let mut last = (u64::MAX, 0);
    loop {
        store.sync().unwrap();
        syncs += 1;
        let now = (folder_bytes(dir.path()), store.segment_count());
        if now == last || syncs > 10_000 {
            break;
        }
        last = now;
    }
    println!(
        "one long-lived among {count} acked, compaction {compact_below}%: {:.1}s publishing, \
         {:.1} MiB on disk before settling, {:.2} MiB and {} segment files after {} syncs \
         ({:.0} ms); long-lived message still unacked at offset {}",
        publish.as_secs_f64(),
        mib(peak),
        mib(last.0),
        last.1,
        syncs,
        settle.elapsed().as_secs_f64() * 1000.0,
        long_lived.offset,
    );
}

fn scattered(root: &Path, count: usize, compact_below: u8) {
    let dir = tempfile::tempdir_in(root).unwrap();
    let store = open(dir.path(), compact_below);
    let mut queue = store.declare_queue(&def("q")).unwrap();
    let body = message();
    let mut held = VecDeque::new();
    let mut max_disk = 0;
    let started = Instant::now();
    let mut sync_time = Duration::ZERO;
    let mut n = 0usize;
    while n < count {
        for _ in 0..100 {
            queue.push(Arc::clone(&body));
        }
        n += 100;
        let sync_started = Instant::now();
        store.sync().unwrap();
        sync_time += sync_started.elapsed();
        while let Some(delivery) = queue.pop() {
            if delivery.offset.is_multiple_of(20) {
                held.push_back(delivery.offset);
            } else {
                queue.ack(delivery.offset);
            }
        }
        // Held for 200,000 messages (10,000 held at a time).
        while held.len() > 10_000 {
            let offset = held.pop_front().unwrap();
            queue.ack(offset);
        }
        if n.is_multiple_of(10_000) {
            max_disk = max_disk.max(folder_bytes(dir.path()));
        }
    }
    let elapsed = started.elapsed();
    let end_disk = folder_bytes(dir.path());
    println!(
        "{count} x 1 KiB, 1 in 20 held for 200k messages, compaction {compact_below}%: \
         {:.0} msg/s, {:.1} us per fdatasync+step, disk peak {:.0} MiB, at end {:.0} MiB \
         (live: 10,000 held = {:.0} MiB)",
        count as f64 / elapsed.as_secs_f64(),
        sync_time.as_secs_f64() * 1e6 / (count / 100) as f64,
        mib(max_disk),
        mib(end_disk),
        mib(10_000 * 1100),
    );
}

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|count| count.parse().ok())
        .unwrap_or(1_000_000);
    let root = std::env::args()
        .nth(2)
        .map_or_else(std::env::temp_dir, std::path::PathBuf::from);
    for compact_below in [0, 50] {
        one_long_lived(&root, count, compact_below);
    }
    for compact_below in [0, 50] {
        scattered(&root, count, compact_below);
    }
}
