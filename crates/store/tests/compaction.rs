//! Copy-forward compaction: long-lived messages no longer pin their segments, and a crash at
//! any step of a compaction loses nothing, duplicates nothing and undoes no ack.

// Helpers here are test code too: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use support::{bodies, drain, message, queue_def, take_queue};
use warren_store::{CrashMode, MemBackend, Queue, Recovery, Store, StoreOptions};

/// 4 KiB segments, compaction below half live, one segment per step.
fn options(compact_below: u8) -> StoreOptions {
    StoreOptions::default()
        .with_segment_size(4096)
        .with_compaction(compact_below)
        .with_compaction_step(4096)
}

fn open(backend: &MemBackend, compact_below: u8) -> (Store, Recovery) {
    Store::open_with(Arc::new(backend.clone()), options(compact_below)).unwrap()
}

/// Pushes `count` filler messages of about 300 bytes and acks them all (other ready messages
/// are delivered and requeued).
fn churn(queue: &mut Queue, tag: &str, count: usize) {
    for n in 0..count {
        queue.push(message(&format!("{tag}-{n}-{}", "f".repeat(300)), true));
    }
    let mut others = Vec::new();
    while let Some(delivery) = queue.pop() {
        if delivery.message.body.starts_with(tag.as_bytes()) {
            queue.ack(delivery.offset).unwrap();
        } else {
            others.push(delivery.offset);
        }
    }
    for offset in others {
        queue.requeue(offset);
    }
}

fn segment_files(backend: &MemBackend) -> Vec<String> {
    let mut names: Vec<String> = (1..200)
        .map(|n| format!("{n:016x}.seg"))
        .filter(|name| backend.read_file(name).is_some())
        .collect();
    names.sort();
    names
}

#[test]
fn one_long_lived_message_no_longer_pins_its_segment() {
    for compact_below in [0, 50] {
        let backend = MemBackend::new();
        let (store, _) = open(&backend, compact_below);
        let mut queue = store.declare_queue(&queue_def("q")).unwrap();
        queue.push(message("long-lived", true));
        churn(&mut queue, "a", 200);
        for _ in 0..10 {
            store.sync().unwrap();
        }
        let first_segment_kept = segment_files(&backend).contains(&format!("{:016x}.seg", 1));
        if compact_below == 0 {
            // Without compaction the first segment stays for one message.
            assert!(first_segment_kept);
            continue;
        }
        assert!(!first_segment_kept, "{:?}", segment_files(&backend));
        assert!(store.segment_count() <= 2, "{}", store.segment_count());
        assert!(store.disk_usage() < 4096 * 2, "{}", store.disk_usage());

        drop(queue);
        drop(store);
        backend.crash(CrashMode::LoseUnsynced);
        let (_store, mut recovery) = open(&backend, compact_below);
        let mut queue = take_queue(&mut recovery, "q");
        assert_eq!(bodies(&drain(&mut queue)), vec!["long-lived"]);
    }
}

/// What the scenario below leaves in each queue, and what it acked.
struct Scenario {
    store: Store,
    a: Queue,
    b: Queue,
}

/// Queue `a` holds a long-lived message, a delivered-but-unacked one and (acked) the first copy
/// of a fanout whose other copy `b` keeps, all in the first segment, among many acked fillers.
fn scenario(backend: &MemBackend) -> Scenario {
    let (store, _) = open(backend, 50);
    let mut a = store.declare_queue(&queue_def("a")).unwrap();
    let mut b = store.declare_queue(&queue_def("b")).unwrap();
    a.push(message("long-lived", true));
    let fanout = message("fanout", true);
    a.push(Arc::clone(&fanout));
    b.push(fanout);
    a.push(message("delivered", true));
    // Take the first three: ack the fanout's copy in `a`, keep the others unacked.
    let long_lived = a.pop().unwrap();
    let fanout_in_a = a.pop().unwrap();
    let delivered = a.pop().unwrap();
    a.ack(fanout_in_a.offset).unwrap();
    a.requeue(long_lived.offset);
    assert_eq!(delivered.offset, 2);
    churn(&mut a, "x", 40);
    store.sync().unwrap();
    Scenario { store, a, b }
}

/// After a crash: `a` has the long-lived and the delivered message, `b` the fanout, each once.
fn check_after_crash(backend: &MemBackend, delivered_acked: bool) {
    let (_store, mut recovery) = open(backend, 50);
    let mut a = take_queue(&mut recovery, "a");
    let mut b = take_queue(&mut recovery, "b");
    let mut expected = vec!["long-lived"];
    if !delivered_acked {
        expected.push("delivered");
    }
    let got = drain(&mut a);
    assert_eq!(bodies(&got), expected);
    assert!(got.iter().all(|(_, redelivered)| *redelivered));
    assert_eq!(bodies(&drain(&mut b)), vec!["fanout"]);
}

#[test]
fn a_crash_at_any_step_of_a_compaction_loses_and_duplicates_nothing() {
    let modes = |seed| {
        [
            CrashMode::KeepWrites,
            CrashMode::LoseUnsynced,
            CrashMode::Torn { seed },
        ]
    };
    let mut compacted_at = None;
    for steps in 0..8 {
        for mode in modes(steps) {
            let backend = MemBackend::new();
            let Scenario { store, a, b } = scenario(&backend);
            for _ in 0..steps {
                store.sync().unwrap();
            }
            if !segment_files(&backend).contains(&format!("{:016x}.seg", 1)) {
                compacted_at.get_or_insert(steps);
            }
            drop((a, b, store));
            backend.crash(mode);
            check_after_crash(&backend, false);
        }
    }
    assert!(
        compacted_at.is_some(),
        "the first segment was never compacted"
    );
}

/// Acks and deliveries recorded against a moved record still apply after a restart, also once
/// the segments holding the ack records are reclaimed themselves.
#[test]
fn acks_of_moved_records_still_apply_after_a_crash() {
    for mode in [CrashMode::LoseUnsynced, CrashMode::KeepWrites] {
        let backend = MemBackend::new();
        let Scenario { store, mut a, b } = scenario(&backend);
        for _ in 0..6 {
            store.sync().unwrap();
        }
        assert!(!segment_files(&backend).contains(&format!("{:016x}.seg", 1)));
        // The delivered message's record was moved: its ack names the original segment.
        a.ack(2).unwrap();
        store.sync().unwrap();
        // Roll and reclaim the segment holding that ack, and compact again meanwhile.
        churn(&mut a, "y", 60);
        for _ in 0..6 {
            store.sync().unwrap();
        }
        drop((a, b, store));
        backend.crash(mode);
        check_after_crash(&backend, true);
    }
}

/// A clean restart keeps the delivered flag of a moved record exactly: delivered ones are
/// flagged, never-delivered ones are not.
#[test]
fn moved_records_keep_their_delivered_flag_across_a_clean_restart() {
    let backend = MemBackend::new();
    let Scenario { store, a, b } = scenario(&backend);
    for _ in 0..6 {
        store.sync().unwrap();
    }
    assert!(!segment_files(&backend).contains(&format!("{:016x}.seg", 1)));
    drop((a, b));
    store.close().unwrap();
    drop(store);
    let (_store, mut recovery) = open(&backend, 50);
    let mut a = take_queue(&mut recovery, "a");
    let mut b = take_queue(&mut recovery, "b");
    assert_eq!(
        drain(&mut a),
        vec![
            ("long-lived".to_owned(), true),
            ("delivered".to_owned(), true)
        ]
    );
    assert_eq!(drain(&mut b), vec![("fanout".to_owned(), false)]);
}

/// Leaves a closed folder whose first segment holds three ready messages among acked fillers
/// (so it is compacted at the next open), and reopens it with every body left on disk.
fn three_paged_out_in_a_sparse_segment(backend: &MemBackend) -> (Store, Queue) {
    let (store, _) = open(backend, 50);
    let mut queue = store.declare_queue(&queue_def("q")).unwrap();
    for n in 0..3 {
        queue.push(message(&format!("kept-{n}"), true));
    }
    churn(&mut queue, "x", 40);
    drop(queue);
    store.close().unwrap();
    drop(store);
    let options = options(50).with_recovery_resident_per_queue(0);
    let (store, mut recovery) = Store::open_with(Arc::new(backend.clone()), options).unwrap();
    let queue = take_queue(&mut recovery, "q");
    assert_eq!(queue.paged_count(), 3);
    // Opening ran a first compaction step: the copies are still in memory, the original is
    // still on disk (it goes once a sync made the copies durable).
    assert!(segment_files(backend).contains(&format!("{:016x}.seg", 1)));
    (store, queue)
}

fn bodies_of(queue: &mut Queue) -> Vec<String> {
    std::iter::from_fn(|| queue.pop())
        .map(|delivery| String::from_utf8(delivery.message.body.to_vec()).unwrap())
        .collect()
}

/// A paged-out body whose record compaction moves is read from the copy: from memory before
/// the copy is written to its file, from the file after the original segment is gone.
#[test]
fn paged_out_bodies_follow_their_moved_records() {
    let backend = MemBackend::new();
    let (store, mut queue) = three_paged_out_in_a_sparse_segment(&backend);
    assert_eq!(
        String::from_utf8(queue.pop().unwrap().message.body.to_vec()).unwrap(),
        "kept-0"
    );
    for _ in 0..4 {
        store.sync().unwrap();
    }
    assert!(!segment_files(&backend).contains(&format!("{:016x}.seg", 1)));
    assert_eq!(bodies_of(&mut queue), vec!["kept-1", "kept-2"]);
}

/// The same through `page_in`, which reads runs of records with one `pread`.
#[test]
fn page_in_reads_moved_records_in_memory_and_on_file() {
    let backend = MemBackend::new();
    let (store, mut queue) = three_paged_out_in_a_sparse_segment(&backend);
    assert_eq!(queue.page_in(1), 1, "a copy still in memory");
    for _ in 0..4 {
        store.sync().unwrap();
    }
    assert!(!segment_files(&backend).contains(&format!("{:016x}.seg", 1)));
    assert_eq!(queue.page_in(3), 2, "copies on file, read as one run");
    assert_eq!(queue.paged_count(), 0);
    assert_eq!(bodies_of(&mut queue), vec!["kept-0", "kept-1", "kept-2"]);
}
