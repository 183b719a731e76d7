//! Property test: random pushes, pops, acks, requeues, purges, syncs, compactions, full disks,
//! crashes and clean restarts against a model of what must, may and must not come back.
//!
//! Every sync also runs a compaction step (live records of sparse segments copied forward, the
//! segment deleted once the copies are synced); each case draws its own segment size and
//! compaction threshold, from none to nearly every segment, and `Compact` runs several syncs in
//! a row so that passes complete and crashes land between their steps.

// Helpers here are test code too: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use warren_codec::ShortString;
use warren_store::{CrashMode, MemBackend, Message, Queue, QueueDef, Store, StoreOptions};

const QUEUES: usize = 2;

#[derive(Debug, Clone)]
enum Op {
    Push {
        queue: usize,
        len: usize,
        persistent: bool,
    },
    /// A fanout: the same message pushed to every queue.
    PushAll {
        len: usize,
        persistent: bool,
    },
    Pop {
        queue: usize,
    },
    PopNoAck {
        queue: usize,
    },
    /// A no-ack delivery whose consumer vanished before it was sent: popped and restored.
    Bounce {
        queue: usize,
    },
    /// Memory pressure: bodies past the first `keep` go to disk.
    PageOut {
        queue: usize,
        keep: usize,
        /// Stop after about this many body bytes (`page_out_upto`); `None`: all.
        max_bytes: Option<usize>,
    },
    /// Reading ahead: the paged-out bodies among the first `count` come back into memory.
    PageIn {
        queue: usize,
        count: usize,
    },
    Ack {
        queue: usize,
        pick: usize,
    },
    Requeue {
        queue: usize,
        pick: usize,
    },
    Purge {
        queue: usize,
    },
    Sync,
    /// Several syncs in a row: compaction passes get to copy, sync and delete.
    Compact(u8),
    DiskFull(bool),
    Crash(u8, u64),
    CleanRestart,
}

fn op() -> impl Strategy<Value = Op> {
    let queue = 0..QUEUES;
    prop_oneof![
        8 => (queue.clone(), 0..700usize, prop::bool::weighted(0.8))
            .prop_map(|(queue, len, persistent)| Op::Push { queue, len, persistent }),
        3 => (0..700usize, prop::bool::weighted(0.8))
            .prop_map(|(len, persistent)| Op::PushAll { len, persistent }),
        4 => queue.clone().prop_map(|queue| Op::Pop { queue }),
        1 => queue.clone().prop_map(|queue| Op::PopNoAck { queue }),
        1 => queue.clone().prop_map(|queue| Op::Bounce { queue }),
        2 => (queue.clone(), 0..3usize, proptest::option::of(0..64usize))
            .prop_map(|(queue, keep, max_bytes)| Op::PageOut { queue, keep, max_bytes }),
        1 => (queue.clone(), 0..5usize).prop_map(|(queue, count)| Op::PageIn { queue, count }),
        4 => (queue.clone(), any::<usize>()).prop_map(|(queue, pick)| Op::Ack { queue, pick }),
        2 => (queue.clone(), any::<usize>()).prop_map(|(queue, pick)| Op::Requeue { queue, pick }),
        1 => queue.prop_map(|queue| Op::Purge { queue }),
        3 => Just(Op::Sync),
        3 => (1..6u8).prop_map(Op::Compact),
        1 => any::<bool>().prop_map(Op::DiskFull),
        1 => (0..3u8, any::<u64>()).prop_map(|(mode, seed)| Op::Crash(mode, seed)),
        1 => Just(Op::CleanRestart),
    ]
}

/// How far a record got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dur {
    /// Appended, not synced yet.
    Pending,
    /// A sync covering it succeeded.
    Durable,
    /// A sync covering it failed: it may or may not be on disk, forever.
    Uncertain,
}

#[derive(Debug, Clone)]
struct ModelMessage {
    persistent: bool,
    publish: Dur,
    ack: Option<Dur>,
    /// The first delivery's record (only written for persistent messages not already flagged).
    delivered: Option<Dur>,
    /// Came back from an unclean stop: flagged redelivered for good.
    survivor: bool,
}

#[derive(Debug, Default)]
struct ModelQueue {
    /// Every message that may still be on disk or in memory, by id (= push order).
    messages: BTreeMap<u64, ModelMessage>,
    ready: BTreeSet<u64>,
    unacked: BTreeSet<u64>,
}

fn advance(model: &mut [ModelQueue], from: Dur, to: Dur) {
    for queue in model {
        for message in queue.messages.values_mut() {
            for state in [
                Some(&mut message.publish),
                message.ack.as_mut(),
                message.delivered.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                if *state == from {
                    *state = to;
                }
            }
        }
    }
}

fn def(index: usize) -> QueueDef {
    QueueDef {
        vhost: ShortString::from_static("/"),
        name: ShortString::try_from(format!("q{index}")).unwrap(),
        auto_delete: false,
        arguments: Bytes::new(),
    }
}

/// The store's shape for one case.
#[derive(Debug, Clone, Copy)]
struct Shape {
    segment_size: u64,
    /// Compaction threshold in percent (0: off).
    compact_below: u8,
}

fn shape() -> impl Strategy<Value = Shape> {
    (
        prop_oneof![Just(4096u64), Just(12_288u64)],
        prop_oneof![Just(0u8), Just(30), Just(50), Just(95)],
    )
        .prop_map(|(segment_size, compact_below)| Shape {
            segment_size,
            compact_below,
        })
}

fn open(backend: &MemBackend, shape: Shape) -> (Store, Vec<Queue>, bool) {
    // Few resident messages at recovery, so that paged-out bodies are read back often; small
    // compaction steps, so that a pass over a larger segment takes several syncs.
    let options = StoreOptions::default()
        .with_segment_size(shape.segment_size)
        .with_compaction(shape.compact_below)
        .with_compaction_step(4096)
        .with_recovery_resident_per_queue(3);
    let (store, recovery) = Store::open_with(Arc::new(backend.clone()), options).unwrap();
    let clean = recovery.report.clean_shutdown;
    let mut by_name: BTreeMap<String, Queue> = recovery
        .queues
        .into_iter()
        .map(|(def, queue)| (def.name.to_string(), queue))
        .collect();
    let queues = (0..QUEUES)
        .map(|index| match by_name.remove(&format!("q{index}")) {
            Some(queue) => queue,
            None => store.declare_queue(&def(index)).unwrap(),
        })
        .collect();
    (store, queues, clean)
}

fn id_of(delivery: &warren_store::Delivery) -> u64 {
    let text = std::str::from_utf8(&delivery.message.body).unwrap();
    text.split(':').next().unwrap().parse().unwrap()
}

/// Reopens after a crash or clean close and checks every queue against the model.
fn check_recovery(
    backend: &MemBackend,
    shape: Shape,
    model: &mut [ModelQueue],
    clean_expected: bool,
) -> (Store, Vec<Queue>) {
    let (store, mut queues, clean) = open(backend, shape);
    assert_eq!(clean, clean_expected);
    for (index, (queue, model_queue)) in queues.iter_mut().zip(model.iter_mut()).enumerate() {
        // Drain to see what came back, then push nothing: rebuild the model from it.
        let mut recovered = Vec::new();
        while let Some(delivery) = queue.pop() {
            recovered.push((id_of(&delivery), delivery.redelivered, delivery.offset));
        }
        let ids: Vec<u64> = recovered.iter().map(|(id, _, _)| *id).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            ids, sorted,
            "queue {index}: recovered out of order or twice"
        );
        for (id, message) in &model_queue.messages {
            let must =
                message.persistent && message.publish == Dur::Durable && message.ack.is_none();
            let must_not = !message.persistent || message.ack == Some(Dur::Durable);
            let present = ids.contains(id);
            assert!(
                !must || present,
                "queue {index}: lost message {id} {message:?}"
            );
            assert!(
                !must_not || !present,
                "queue {index}: message {id} came back {message:?}"
            );
        }
        for (id, redelivered, _) in &recovered {
            let message = model_queue
                .messages
                .get(id)
                .unwrap_or_else(|| panic!("queue {index}: unknown message {id}"));
            if !clean {
                assert!(redelivered, "queue {index}: {id} not flagged after a crash");
            } else if message.survivor || message.delivered == Some(Dur::Durable) {
                assert!(redelivered, "queue {index}: {id} delivered but not flagged");
            } else if message.delivered.is_none() {
                assert!(
                    !redelivered,
                    "queue {index}: {id} never delivered but flagged"
                );
            }
        }
        // Put them back (requeue keeps the order) and rebuild the model.
        for (_, _, offset) in &recovered {
            assert!(queue.requeue(*offset));
        }
        let mut messages = BTreeMap::new();
        for (id, redelivered, _) in &recovered {
            let mut message = model_queue.messages[id].clone();
            message.publish = Dur::Durable;
            message.ack = None;
            message.survivor |= !clean;
            if *redelivered && !message.survivor {
                // Flagged by a delivery record that made it to disk.
                message.delivered = Some(Dur::Durable);
            } else if !*redelivered {
                // Draining above was a first delivery: it wrote a delivery record.
                message.delivered = Some(Dur::Pending);
            }
            messages.insert(*id, message);
        }
        model_queue.messages = messages;
        model_queue.ready = recovered.iter().map(|(id, _, _)| *id).collect();
        model_queue.unacked.clear();
    }
    (store, queues)
}

fn run(shape: Shape, ops: Vec<Op>) {
    let backend = MemBackend::new();
    let (mut store, mut queues, _) = open(&backend, shape);
    let mut model: Vec<ModelQueue> = (0..QUEUES).map(|_| ModelQueue::default()).collect();
    let mut next_id = 0u64;
    for op in ops {
        match op {
            Op::Push {
                queue,
                len,
                persistent,
            } => {
                let id = next_id;
                next_id += 1;
                let body = format!("{id}:{}", "b".repeat(len));
                let message = Message::new(
                    ShortString::new(),
                    ShortString::from_static("k"),
                    Bytes::new(),
                    Bytes::from(body),
                )
                .with_persistent(persistent);
                let pushed = queues[queue].push(Arc::new(message));
                assert_eq!(pushed.lsn.is_some(), persistent);
                model[queue].messages.insert(
                    id,
                    ModelMessage {
                        persistent,
                        publish: Dur::Pending,
                        ack: None,
                        delivered: None,
                        survivor: false,
                    },
                );
                model[queue].ready.insert(id);
            }
            Op::PushAll { len, persistent } => {
                let id = next_id;
                next_id += 1;
                let body = format!("{id}:{}", "f".repeat(len));
                let message = Arc::new(
                    Message::new(
                        ShortString::new(),
                        ShortString::from_static("k"),
                        Bytes::new(),
                        Bytes::from(body),
                    )
                    .with_persistent(persistent),
                );
                for (queue, model_queue) in queues.iter_mut().zip(model.iter_mut()) {
                    let pushed = queue.push(Arc::clone(&message));
                    assert_eq!(pushed.lsn.is_some(), persistent);
                    model_queue.messages.insert(
                        id,
                        ModelMessage {
                            persistent,
                            publish: Dur::Pending,
                            ack: None,
                            delivered: None,
                            survivor: false,
                        },
                    );
                    model_queue.ready.insert(id);
                }
            }
            Op::Pop { queue } | Op::PopNoAck { queue } => {
                let no_ack = matches!(op, Op::PopNoAck { .. });
                let delivery = if no_ack {
                    queues[queue].pop_no_ack()
                } else {
                    queues[queue].pop()
                };
                let expected = model[queue].ready.pop_first();
                assert_eq!(delivery.as_ref().map(id_of), expected);
                if let (Some(delivery), Some(id)) = (delivery, expected) {
                    let message = model[queue].messages.get_mut(&id).unwrap();
                    if message.survivor {
                        assert!(delivery.redelivered, "{id} survived a crash");
                    }
                    if message.persistent {
                        if no_ack {
                            message.ack = Some(Dur::Pending);
                        } else if !delivery.redelivered {
                            message.delivered = Some(Dur::Pending);
                        }
                    }
                    if !no_ack {
                        model[queue].unacked.insert(id);
                    }
                }
            }
            Op::PageOut {
                queue,
                keep,
                max_bytes,
            } => {
                match max_bytes {
                    Some(max_bytes) => queues[queue].page_out_upto(keep, max_bytes),
                    None => queues[queue].page_out(keep),
                };
            }
            Op::PageIn { queue, count } => {
                let paged = queues[queue].paged_count();
                let loaded = queues[queue].page_in(count);
                assert!(loaded <= count.min(paged));
                assert_eq!(queues[queue].paged_count(), paged - loaded);
            }
            Op::Bounce { queue } => {
                let Some(delivery) = queues[queue].pop_no_ack() else {
                    assert!(model[queue].ready.is_empty());
                    continue;
                };
                assert_eq!(Some(id_of(&delivery)), model[queue].ready.first().copied());
                let message = model[queue].messages.get_mut(&id_of(&delivery)).unwrap();
                if message.persistent {
                    // Logged as acked, then published again.
                    message.publish = Dur::Pending;
                    message.ack = None;
                }
                queues[queue].restore(delivery);
            }
            Op::Ack { queue, pick } | Op::Requeue { queue, pick } => {
                let unacked: Vec<u64> = model[queue].unacked.iter().copied().collect();
                if unacked.is_empty() {
                    continue;
                }
                let id = unacked[pick % unacked.len()];
                let offset = offset_of(&queues[queue], id);
                model[queue].unacked.remove(&id);
                if matches!(op, Op::Ack { .. }) {
                    assert!(queues[queue].ack(offset).is_some());
                    let message = model[queue].messages.get_mut(&id).unwrap();
                    if message.persistent {
                        message.ack = Some(Dur::Pending);
                    }
                } else {
                    assert!(queues[queue].requeue(offset));
                    model[queue].ready.insert(id);
                }
            }
            Op::Purge { queue } => {
                let ready: Vec<u64> = std::mem::take(&mut model[queue].ready)
                    .into_iter()
                    .collect();
                assert_eq!(queues[queue].purge(), ready.len() as u64);
                for id in ready {
                    let message = model[queue].messages.get_mut(&id).unwrap();
                    if message.persistent {
                        message.ack = Some(Dur::Pending);
                    }
                }
            }
            Op::Sync => match store.sync() {
                Ok(_) => advance(&mut model, Dur::Pending, Dur::Durable),
                Err(_) => advance(&mut model, Dur::Pending, Dur::Uncertain),
            },
            Op::Compact(syncs) => {
                for _ in 0..syncs {
                    match store.sync() {
                        Ok(_) => advance(&mut model, Dur::Pending, Dur::Durable),
                        Err(_) => advance(&mut model, Dur::Pending, Dur::Uncertain),
                    }
                }
            }
            Op::DiskFull(full) => backend.set_disk_full(full),
            Op::Crash(mode, seed) => {
                drop(queues);
                drop(store);
                backend.set_disk_full(false);
                backend.crash(match mode {
                    0 => CrashMode::KeepWrites,
                    1 => CrashMode::LoseUnsynced,
                    _ => CrashMode::Torn { seed },
                });
                (store, queues) = check_recovery(&backend, shape, &mut model, false);
            }
            Op::CleanRestart => {
                let closed = store.close();
                match closed {
                    Ok(()) => advance(&mut model, Dur::Pending, Dur::Durable),
                    Err(_) => advance(&mut model, Dur::Pending, Dur::Uncertain),
                }
                drop(queues);
                drop(store);
                backend.set_disk_full(false);
                (store, queues) = check_recovery(&backend, shape, &mut model, closed.is_ok());
            }
        }
        for (queue, model_queue) in queues.iter().zip(&model) {
            assert_eq!(queue.ready_count(), model_queue.ready.len());
            assert_eq!(queue.unacked_count(), model_queue.unacked.len());
        }
    }
    // Drain everything: the log shrinks back to a segment or two.
    backend.set_disk_full(false);
    for queue in &mut queues {
        while let Some(delivery) = queue.pop() {
            queue.ack(delivery.offset);
        }
        for offset in unacked_offsets(queue) {
            queue.ack(offset);
        }
    }
    // Syncs until the log has moved on from any failure, then reclaim.
    for _ in 0..3 {
        let _ = store.sync();
    }
    // Whatever is still in a queue was copied forward or sits in the newest segments: the log
    // holds no more than a few segments, however scattered the survivors were.
    assert!(
        store.segment_count() <= 3,
        "segments left: {}",
        store.segment_count()
    );
}

/// The offset of the unacked message with body id `id`.
fn offset_of(queue: &Queue, id: u64) -> u64 {
    queue
        .unacked()
        .find(|delivery| id_of(delivery) == id)
        .map(|delivery| delivery.offset)
        .unwrap()
}

fn unacked_offsets(queue: &Queue) -> Vec<u64> {
    queue.unacked().map(|delivery| delivery.offset).collect()
}

/// 96 cases in CI; `PROPTEST_CASES=5000` for a longer run.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(96)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn the_log_keeps_what_was_confirmed_and_drops_what_was_acked(
        shape in shape(),
        ops in prop::collection::vec(op(), 1..120),
    ) {
        run(shape, ops);
    }
}
