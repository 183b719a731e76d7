//! Store benchmarks: the in-memory hot path, durable appends with group commit, and recovery.
//!
//! `cargo bench -p warren-store --bench store`; `WARREN_BENCH_RECOVERY=N` sets how many 1 KiB
//! messages the recovery benchmark writes (default 1,000,000).

// Benchmarks are test code: a panic is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use warren_codec::ShortString;
use warren_store::{FileBackend, Message, Queue, QueueDef, Store, StoreOptions};

fn message(len: usize, persistent: bool) -> Arc<Message> {
    Arc::new(
        Message::new(
            ShortString::from_static("amq.direct"),
            ShortString::from_static("bench"),
            Bytes::from_static(b"\x10\x00\x02"),
            Bytes::from(vec![b'x'; len]),
        )
        .with_persistent(persistent),
    )
}

fn queue_def(name: &str) -> QueueDef {
    QueueDef {
        vhost: ShortString::from_static("/"),
        name: ShortString::try_from(name).unwrap(),
        auto_delete: false,
        arguments: Bytes::new(),
    }
}

fn memory(c: &mut Criterion) {
    let mut group = c.benchmark_group("memory");
    group.throughput(Throughput::Elements(1));
    let shared = message(1024, false);

    // The broker's steady state: a backlog, one message in and one out per step.
    group.bench_function("push_pop_ack/backlog_1000", |b| {
        let mut queue = Queue::new();
        for _ in 0..1000 {
            queue.push(Arc::clone(&shared));
        }
        b.iter(|| {
            queue.push(Arc::clone(&shared));
            let delivery = queue.pop().unwrap();
            black_box(queue.ack(delivery.offset));
        });
    });

    // Prefetch-like: 100 unacked in flight, acked in order.
    group.bench_function("push_pop_ack/inflight_100", |b| {
        let mut queue = Queue::new();
        let mut inflight = std::collections::VecDeque::new();
        for _ in 0..100 {
            queue.push(Arc::clone(&shared));
            inflight.push_back(queue.pop().unwrap().offset);
        }
        b.iter(|| {
            queue.push(Arc::clone(&shared));
            inflight.push_back(queue.pop().unwrap().offset);
            let oldest = inflight.pop_front().unwrap();
            black_box(queue.ack(oldest));
        });
    });

    // nack with requeue, then delivered again.
    group.bench_function("pop_requeue", |b| {
        let mut queue = Queue::new();
        for _ in 0..1000 {
            queue.push(Arc::clone(&shared));
        }
        b.iter(|| {
            let delivery = queue.pop().unwrap();
            black_box(queue.requeue(delivery.offset));
        });
    });

    group.bench_function("fill_and_drain_10000", |b| {
        b.iter_batched(
            Queue::new,
            |mut queue| {
                for _ in 0..10_000 {
                    queue.push(Arc::clone(&shared));
                }
                while let Some(delivery) = queue.pop() {
                    queue.ack(delivery.offset);
                }
                queue
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn durable(c: &mut Criterion) {
    let mut group = c.benchmark_group("durable");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    let persistent = message(1024, true);
    for batch in [1u64, 10, 100, 1000] {
        group.throughput(Throughput::Elements(batch));
        // Real files: what a confirm costs with `batch` messages per fdatasync.
        group.bench_function(format!("1KiB_publish_ack_sync_every_{batch}"), |b| {
            let dir = tempfile::tempdir().unwrap();
            let (store, _) = Store::open(dir.path()).unwrap();
            let mut queue = store.declare_queue(&queue_def("bench")).unwrap();
            b.iter(|| {
                for _ in 0..batch {
                    queue.push(Arc::clone(&persistent));
                }
                store.sync().unwrap();
                while let Some(delivery) = queue.pop() {
                    queue.ack(delivery.offset);
                }
            });
        });
    }
    // A fanout of persistent 1 KiB messages to 10 durable queues: one body record, nine enqueue
    // records, one fdatasync per 100 publishes.
    group.throughput(Throughput::Elements(100));
    group.bench_function("1KiB_fanout_to_10_durable_queues_sync_every_100", |b| {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let mut queues: Vec<Queue> = (0..10)
            .map(|n| store.declare_queue(&queue_def(&format!("fan{n}"))).unwrap())
            .collect();
        b.iter(|| {
            for _ in 0..100 {
                let shared = message(1024, true);
                for queue in &mut queues {
                    queue.push(Arc::clone(&shared));
                }
            }
            store.sync().unwrap();
            for queue in &mut queues {
                while let Some(delivery) = queue.pop() {
                    queue.ack(delivery.offset);
                }
            }
        });
    });

    // Consumers draining a backlog whose bodies were paged out: one pread per message.
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("1KiB_drain_10000_paged_out", |b| {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let mut queue = store.declare_queue(&queue_def("paged")).unwrap();
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                for _ in 0..10_000 {
                    queue.push(message(1024, true));
                }
                store.sync().unwrap();
                assert!(queue.page_out(0) > 0);
                let started = Instant::now();
                while let Some(delivery) = queue.pop() {
                    queue.ack(delivery.offset);
                }
                total += started.elapsed();
                store.sync().unwrap();
            }
            total
        });
    });
    group.finish();
}

/// Writes `count` persistent 1 KiB messages into a new data folder.
fn write_backlog(count: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (store, _) = Store::open(dir.path()).unwrap();
    let mut queue = store.declare_queue(&queue_def("backlog")).unwrap();
    let persistent = message(1024, true);
    for n in 0..count {
        queue.push(Arc::clone(&persistent));
        if n % 10_000 == 0 {
            store.sync().unwrap();
        }
    }
    store.sync().unwrap();
    eprintln!(
        "wrote {count} persistent 1 KiB messages in {:?} ({} bytes on disk)",
        started.elapsed(),
        store.disk_usage()
    );
    dir
}

fn recovery(c: &mut Criterion) {
    let count: usize = std::env::var("WARREN_BENCH_RECOVERY")
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(1_000_000);
    // Written on first use only, so that filtering the other benchmarks skips it.
    let backlog = std::sync::OnceLock::new();
    let mut group = c.benchmark_group("recovery");
    group.sample_size(10);
    group.throughput(Throughput::Elements(count as u64));
    group.bench_function(format!("open_{count}_1KiB_messages"), |b| {
        let dir = backlog.get_or_init(|| write_backlog(count));
        b.iter(|| {
            let (store, recovery) = Store::open(dir.path()).unwrap();
            assert_eq!(recovery.report.messages, count as u64);
            black_box((store, recovery));
        });
    });
    // The same folder with every body left on disk (paged), as for a backlog beyond RAM.
    group.bench_function(
        format!("open_{count}_1KiB_messages_bodies_left_on_disk"),
        |b| {
            let dir = backlog.get_or_init(|| write_backlog(count));
            let options = StoreOptions::default().with_recovery_resident_per_queue(0);
            b.iter(|| {
                let backend = Arc::new(FileBackend::new(dir.path()).unwrap());
                let (store, recovery) = Store::open_with(backend, options).unwrap();
                assert_eq!(recovery.report.messages, count as u64);
                black_box((store, recovery));
            });
        },
    );
    group.finish();
}

criterion_group!(benches, memory, durable, recovery);
criterion_main!(benches);
