//! Priority levels of a durable queue across restarts and crashes, and expiry from anywhere in a
//! queue (`Queue::expire`), including a property test against a plain model.

// Helpers here are test code too: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use warren_codec::ShortString;
use warren_store::{CrashMode, MemBackend, Message, Queue, QueueDef, Store, StoreOptions};

fn message(body: &str, priority: Option<u8>, expires_at_ms: Option<u64>) -> Arc<Message> {
    let mut message = Message::new(
        ShortString::from_static("amq.direct"),
        ShortString::from_static("key"),
        Bytes::new(),
        Bytes::copy_from_slice(body.as_bytes()),
    )
    .with_persistent(true);
    message.priority = priority;
    message.expires_at_ms = expires_at_ms;
    Arc::new(message)
}

fn open(backend: &MemBackend) -> (Store, Vec<Queue>) {
    let (store, mut recovery) = Store::open_with(
        Arc::new(backend.clone()),
        StoreOptions::default().with_segment_size(4096),
    )
    .unwrap();
    let queue = match recovery.queues.pop() {
        Some((_, queue)) => queue,
        None => store
            .declare_queue(&QueueDef {
                vhost: ShortString::from_static("/"),
                name: ShortString::from_static("prio"),
                auto_delete: false,
                arguments: Bytes::new(),
            })
            .unwrap(),
    };
    (store, queue.into_levels(4))
}

/// Pushes to the level of the message's priority, as the broker does.
fn push(levels: &mut [Queue], message: Arc<Message>) -> u64 {
    let level = usize::from(message.priority.unwrap_or(0)).min(levels.len() - 1);
    levels[level].push(message).offset
}

/// Pops everything, highest level first: (body, redelivered).
fn drain(levels: &mut [Queue]) -> Vec<(String, bool)> {
    drain_and_ack(levels, false)
}

fn drain_and_ack(levels: &mut [Queue], ack: bool) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for queue in levels.iter_mut().rev() {
        while let Some(delivery) = queue.pop() {
            if ack {
                assert!(queue.ack(delivery.offset).is_some());
            }
            out.push((
                String::from_utf8(delivery.message.body.to_vec()).unwrap(),
                delivery.redelivered,
            ));
        }
    }
    out
}

fn fill(levels: &mut [Queue]) {
    for (body, priority) in [
        ("low-1", None),
        ("high-1", Some(3)),
        ("mid-1", Some(1)),
        ("capped", Some(9)),
        ("low-2", Some(0)),
        ("high-2", Some(3)),
        ("mid-2", Some(1)),
    ] {
        push(levels, message(body, priority, None));
    }
}

const ORDER: [&str; 7] = [
    "high-1", "capped", "high-2", "mid-1", "mid-2", "low-1", "low-2",
];

#[test]
fn durable_levels_come_back_in_order_after_a_clean_restart() {
    let backend = MemBackend::new();
    let (store, mut levels) = open(&backend);
    fill(&mut levels);
    // "high-1" was delivered (not acked), "mid-1" delivered and acked.
    let high = levels[3].pop().unwrap();
    assert_eq!(&high.message.body[..], b"high-1");
    let mid = levels[1].pop().unwrap();
    assert!(levels[1].ack(mid.offset).is_some());
    drop(levels);
    store.close().unwrap();
    drop(store);

    let (_store, mut levels) = open(&backend);
    let order = drain(&mut levels);
    let bodies: Vec<_> = order.iter().map(|(body, _)| body.as_str()).collect();
    assert_eq!(
        bodies,
        ["high-1", "capped", "high-2", "mid-2", "low-1", "low-2"]
    );
    let redelivered: Vec<_> = order.iter().map(|(_, flag)| *flag).collect();
    assert_eq!(redelivered, [true, false, false, false, false, false]);
}

#[test]
fn durable_levels_come_back_in_order_after_a_crash() {
    for mode in [CrashMode::KeepWrites, CrashMode::LoseUnsynced] {
        let backend = MemBackend::new();
        let (store, mut levels) = open(&backend);
        fill(&mut levels);
        store.sync().unwrap();
        drop(levels);
        backend.crash(mode);
        drop(store);

        let (store, mut levels) = open(&backend);
        let order = drain_and_ack(&mut levels, true);
        let bodies: Vec<_> = order.iter().map(|(body, _)| body.as_str()).collect();
        assert_eq!(bodies, ORDER, "{mode:?}");
        // After a crash any message may have been delivered.
        assert!(
            order.iter().all(|(_, redelivered)| *redelivered),
            "{mode:?}"
        );
        // New messages keep their levels' order after the recovered ones, and offsets are
        // not reused.
        fill(&mut levels);
        store.sync().unwrap();
        drop(levels);
        store.close().unwrap();
        drop(store);
        let (_store, mut levels) = open(&backend);
        let bodies: Vec<_> = drain(&mut levels).into_iter().map(|(b, _)| b).collect();
        assert_eq!(bodies, ORDER, "{mode:?}: the acked ones stay acked");
    }
}

#[test]
fn a_queue_logged_without_levels_comes_back_in_level_zero() {
    let backend = MemBackend::new();
    let (store, mut recovery) = Store::open_with(
        Arc::new(backend.clone()),
        StoreOptions::default().with_segment_size(4096),
    )
    .unwrap();
    assert!(recovery.queues.pop().is_none());
    let mut queue = store
        .declare_queue(&QueueDef {
            vhost: ShortString::from_static("/"),
            name: ShortString::from_static("prio"),
            auto_delete: false,
            arguments: Bytes::new(),
        })
        .unwrap();
    queue.push(message("old-high", Some(3), None));
    queue.push(message("old-low", None, None));
    drop(queue);
    store.close().unwrap();
    drop(store);
    let (_store, mut levels) = open(&backend);
    assert_eq!(levels[0].ready_count(), 2);
    push(&mut levels, message("new-high", Some(3), None));
    let bodies: Vec<_> = drain(&mut levels).into_iter().map(|(b, _)| b).collect();
    assert_eq!(bodies, ["new-high", "old-high", "old-low"]);
}

#[test]
fn joined_levels_delete_every_message() {
    let backend = MemBackend::new();
    let (store, mut levels) = open(&backend);
    fill(&mut levels);
    let joined = Queue::from_levels(levels);
    assert_eq!(joined.ready_count(), 7);
    store
        .delete_queue(
            &ShortString::from_static("/"),
            &ShortString::from_static("prio"),
            joined,
        )
        .unwrap();
    store.sync().unwrap();
    drop(store);
    backend.crash(CrashMode::KeepWrites);
    let (_store, recovery) = Store::open_with(
        Arc::new(backend.clone()),
        StoreOptions::default().with_segment_size(4096),
    )
    .unwrap();
    assert!(recovery.queues.is_empty());
}

#[test]
fn expired_messages_leave_from_anywhere_and_stay_gone_after_a_restart() {
    let backend = MemBackend::new();
    let (store, mut levels) = open(&backend);
    let queue = &mut levels[0];
    queue.push(message("forever", None, None));
    queue.push(message("short", None, Some(100)));
    queue.push(message("long", None, Some(1_000)));
    queue.push(message("shorter", None, Some(50)));
    assert_eq!(queue.next_expiry(), Some(50));
    assert!(queue.expire(49, true).is_empty());
    let expired: Vec<_> = queue
        .expire(100, true)
        .into_iter()
        .map(|e| e.message.unwrap().body.clone())
        .collect();
    assert_eq!(
        expired,
        [&b"shorter"[..], b"short"],
        "soonest deadline first"
    );
    assert_eq!(queue.ready_count(), 2);
    assert_eq!(queue.ready_bytes(), 7 + 4);
    assert_eq!(queue.next_expiry(), Some(1_000));
    store.sync().unwrap();
    drop(levels);
    store.close().unwrap();
    drop(store);

    let (_store, mut levels) = open(&backend);
    assert_eq!(levels[0].ready_count(), 2);
    // The deadline came back with the message: it still expires from behind "forever".
    assert_eq!(levels[0].next_expiry(), Some(1_000));
    let expired = levels[0].expire(1_000, false);
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].body_len, 4);
    let bodies: Vec<_> = drain(&mut levels).into_iter().map(|(b, _)| b).collect();
    assert_eq!(bodies, ["forever"]);
}

#[test]
fn a_requeued_message_expires_and_an_unacked_one_does_not() {
    let mut queue = Queue::new();
    queue.push(message("a", None, Some(10)));
    queue.push(message("b", None, Some(10)));
    let a = queue.pop().unwrap();
    let b = queue.pop().unwrap();
    assert!(queue.expire(20, true).is_empty(), "unacked messages wait");
    assert!(queue.requeue(a.offset));
    let expired = queue.expire(20, true);
    assert_eq!(expired.len(), 1);
    assert_eq!(&expired[0].message.as_ref().unwrap().body[..], b"a");
    assert!(queue.ack(b.offset).is_some());
    assert!(queue.is_empty());
}

/// What the model does for one step.
#[derive(Debug, Clone)]
enum Op {
    /// A message with no deadline, or one `ttl` ms from now.
    Push(Option<u8>),
    Pop,
    PopNoAck,
    /// Ack or requeue the unacked message at this index (mod their count).
    Ack(usize),
    Requeue(usize),
    /// Time moves on by this much, then expire.
    Expire(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::option::weighted(0.7, any::<u8>()).prop_map(Op::Push),
        2 => Just(Op::Pop),
        1 => Just(Op::PopNoAck),
        1 => any::<usize>().prop_map(Op::Ack),
        1 => any::<usize>().prop_map(Op::Requeue),
        2 => any::<u8>().prop_map(Op::Expire),
    ]
}

proptest! {
    /// Against a model that keeps ready messages in a map by offset and expires by looking at
    /// all of them: deliveries, expiries (and their order), counts and bytes agree.
    #[test]
    fn expiry_matches_a_model(ops in proptest::collection::vec(op(), 1..200)) {
        let mut queue = Queue::new();
        // offset -> (body, deadline)
        let mut ready: BTreeMap<u64, (String, Option<u64>)> = BTreeMap::new();
        let mut unacked: BTreeMap<u64, (String, Option<u64>)> = BTreeMap::new();
        let mut now = 1_000u64;
        for (n, op) in ops.into_iter().enumerate() {
            match op {
                Op::Push(ttl) => {
                    let body = format!("m{n}");
                    let deadline = ttl.map(|ttl| now + u64::from(ttl));
                    let offset = queue.push(message(&body, None, deadline)).offset;
                    ready.insert(offset, (body, deadline));
                }
                Op::Pop | Op::PopNoAck => {
                    let got = if matches!(op, Op::Pop) { queue.pop() } else { queue.pop_no_ack() };
                    let want = ready.pop_first();
                    prop_assert_eq!(got.as_ref().map(|d| d.offset), want.as_ref().map(|w| w.0));
                    if let (Some(got), Some((offset, entry))) = (got, want) {
                        prop_assert_eq!(&got.message.body[..], entry.0.as_bytes());
                        if matches!(op, Op::Pop) {
                            unacked.insert(offset, entry);
                        }
                    }
                }
                Op::Ack(i) | Op::Requeue(i) => {
                    if unacked.is_empty() {
                        continue;
                    }
                    let offset = *unacked.keys().nth(i % unacked.len()).unwrap();
                    let entry = unacked.remove(&offset).unwrap();
                    if matches!(op, Op::Ack(_)) {
                        prop_assert!(queue.ack(offset).is_some());
                    } else {
                        prop_assert!(queue.requeue(offset));
                        ready.insert(offset, entry);
                    }
                }
                Op::Expire(step) => {
                    now += u64::from(step);
                    let mut due: Vec<(u64, u64)> = ready
                        .iter()
                        .filter_map(|(offset, (_, deadline))| {
                            deadline.filter(|at| *at <= now).map(|at| (at, *offset))
                        })
                        .collect();
                    due.sort_unstable();
                    let want: Vec<String> = due
                        .iter()
                        .map(|(_, offset)| ready.remove(offset).unwrap().0)
                        .collect();
                    let got: Vec<String> = queue
                        .expire(now, true)
                        .into_iter()
                        .map(|e| String::from_utf8(e.message.unwrap().body.to_vec()).unwrap())
                        .collect();
                    prop_assert_eq!(got, want);
                }
            }
            prop_assert_eq!(queue.ready_count(), ready.len());
            let bytes: usize = ready.values().map(|(body, _)| body.len()).sum();
            prop_assert_eq!(queue.ready_bytes(), bytes as u64);
            let soonest = ready.values().filter_map(|(_, deadline)| *deadline).min();
            // The index may hold a stale earlier deadline, never miss the soonest one.
            prop_assert!(queue.next_expiry().is_some() || soonest.is_none());
            if let (Some(next), Some(soonest)) = (queue.next_expiry(), soonest) {
                prop_assert!(next <= soonest);
            }
        }
    }
}
