//! The durable store against crashes, torn tails, corruption, full disks and format versions,
//! on the in-memory backend that loses what was not synced.

// Helpers here are test code too: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use support::{bodies, drain, message, name, queue_def, take_queue};
use warren_store::{
    BindingDef, CrashMode, DestinationKind, ExchangeDef, MemBackend, Message, Queue, Recovery,
    Store, StoreError, StoreOptions,
};

fn small_segments() -> StoreOptions {
    StoreOptions::default().with_segment_size(4096)
}

fn open(backend: &MemBackend) -> (Store, Recovery) {
    Store::open_with(Arc::new(backend.clone()), small_segments()).unwrap()
}

#[test]
fn persistent_messages_survive_a_clean_restart_and_transient_ones_do_not() {
    let backend = MemBackend::new();
    let (store, _) = open(&backend);
    let mut queue = store.declare_queue(&queue_def("jobs")).unwrap();
    assert!(queue.is_durable());
    let first = queue.push(message("one", true));
    assert!(first.lsn.is_some());
    assert_eq!(queue.push(message("transient", false)).lsn, None);
    queue.push(message("two", true));
    let synced = store.sync().unwrap();
    assert!(synced >= first.lsn.unwrap());
    store.close().unwrap();
    drop(queue);
    drop(store);

    let (_store, mut recovery) = open(&backend);
    assert!(recovery.report.clean_shutdown);
    assert_eq!(recovery.report.messages, 2);
    let mut queue = take_queue(&mut recovery, "jobs");
    let popped = drain(&mut queue);
    assert_eq!(
        popped,
        vec![("one".to_owned(), false), ("two".to_owned(), false)]
    );
    // Offsets continue past the recovered ones.
    assert!(queue.push(message("three", true)).offset >= 3);
}

#[test]
fn after_a_crash_synced_messages_come_back_flagged_redelivered_and_acked_ones_do_not() {
    for mode in [CrashMode::KeepWrites, CrashMode::LoseUnsynced] {
        let backend = MemBackend::new();
        let (store, _) = open(&backend);
        let mut queue = store.declare_queue(&queue_def("q")).unwrap();
        for body in ["a", "b", "c", "d"] {
            queue.push(message(body, true));
        }
        let a = queue.pop().unwrap();
        let b = queue.pop().unwrap();
        queue.ack(a.offset).unwrap();
        queue.requeue(b.offset);
        store.sync().unwrap();
        backend.crash(mode);

        let (_store, mut recovery) = open(&backend);
        assert!(!recovery.report.clean_shutdown);
        let mut queue = take_queue(&mut recovery, "q");
        let popped = drain(&mut queue);
        assert_eq!(bodies(&popped), vec!["b", "c", "d"], "{mode:?}");
        assert!(popped.iter().all(|(_, redelivered)| *redelivered));
    }
}

#[test]
fn a_clean_restart_flags_only_delivered_messages() {
    let backend = MemBackend::new();
    let (store, _) = open(&backend);
    let mut queue = store.declare_queue(&queue_def("q")).unwrap();
    for body in ["a", "b", "c"] {
        queue.push(message(body, true));
    }
    let a = queue.pop().unwrap();
    let _b_unacked = queue.pop().unwrap();
    queue.requeue(a.offset);
    store.close().unwrap();

    let (_store, mut recovery) = open(&backend);
    let mut queue = take_queue(&mut recovery, "q");
    assert_eq!(
        drain(&mut queue),
        vec![
            ("a".to_owned(), true),
            ("b".to_owned(), true),
            ("c".to_owned(), false)
        ]
    );
}

#[test]
fn unsynced_records_may_be_lost_but_never_break_recovery() {
    for seed in 0..200 {
        let backend = MemBackend::new();
        let (store, _) = open(&backend);
        let mut queue = store.declare_queue(&queue_def("q")).unwrap();
        let synced: Vec<String> = (0..20).map(|n| format!("synced-{n}")).collect();
        for body in &synced {
            queue.push(message(body, true));
        }
        store.sync().unwrap();
        // Enough unsynced data to roll segments and flush partly.
        let unsynced: Vec<String> = (0..60)
            .map(|n| format!("late-{n}-{}", "x".repeat(200)))
            .collect();
        for body in &unsynced {
            queue.push(message(body, true));
        }
        drop(queue);
        drop(store);
        backend.crash(CrashMode::Torn { seed });

        let (_store, mut recovery) = open(&backend);
        let mut queue = take_queue(&mut recovery, "q");
        let popped = drain(&mut queue);
        let got = bodies(&popped);
        assert!(
            got.len() >= synced.len(),
            "seed {seed}: lost synced messages"
        );
        assert_eq!(
            got[..synced.len()],
            synced.iter().map(String::as_str).collect::<Vec<_>>()[..]
        );
        // Whatever else survived is a prefix of what was appended, in order.
        for (got, expected) in got[synced.len()..].iter().zip(&unsynced) {
            assert_eq!(got, expected, "seed {seed}");
        }
    }
}

#[test]
fn a_torn_tail_is_cut_off_and_reported() {
    let backend = MemBackend::new();
    let (store, _) = open(&backend);
    let mut queue = store.declare_queue(&queue_def("q")).unwrap();
    queue.push(message("whole", true));
    queue.push(message("torn", true));
    store.sync().unwrap();
    drop(queue);
    drop(store);
    let segment = "0000000000000001.seg";
    let mut bytes = backend.read_file(segment).unwrap();
    let len = bytes.len();
    bytes.truncate(len - 3);
    backend.write_file(segment, bytes);

    let (store, mut recovery) = open(&backend);
    assert_eq!(recovery.report.bad_records, 1);
    assert!(recovery.report.truncated_bytes > 0);
    let mut queue = take_queue(&mut recovery, "q");
    assert_eq!(bodies(&drain(&mut queue)), vec!["whole"]);
    store.sync().unwrap();
    drop(queue);
    drop(store);
    // The cut is for good: the next open finds nothing wrong.
    let (_store, recovery) = open(&backend);
    assert_eq!(recovery.report.bad_records, 0);
}

#[test]
fn a_corrupt_record_in_an_older_segment_skips_only_that_segment_rest() {
    let backend = MemBackend::new();
    let (store, _) = open(&backend);
    let mut queue = store.declare_queue(&queue_def("q")).unwrap();
    // ~1 KiB messages into 4 KiB segments: three per segment.
    let all: Vec<String> = (0..12)
        .map(|n| format!("{n:02}-{}", "y".repeat(1000)))
        .collect();
    for body in &all {
        queue.push(message(body, true));
    }
    store.sync().unwrap();
    drop(queue);
    drop(store);
    // Flip a byte inside the second record of the first segment.
    let segment = "0000000000000001.seg";
    let mut bytes = backend.read_file(segment).unwrap();
    bytes[24 + 1100] ^= 0x40;
    backend.write_file(segment, bytes);

    let (_store, mut recovery) = open(&backend);
    assert_eq!(recovery.report.bad_records, 1);
    let mut queue = take_queue(&mut recovery, "q");
    let popped = drain(&mut queue);
    let got = bodies(&popped);
    assert_eq!(got[0], all[0]);
    assert!(!got.contains(&all[1].as_str()));
    // Later segments are whole.
    assert!(got.ends_with(&all[3..].iter().map(String::as_str).collect::<Vec<_>>()));
}

#[test]
fn acked_segments_are_reclaimed_and_stay_gone_after_a_crash() {
    let backend = MemBackend::new();
    let (store, _) = open(&backend);
    let mut queue = store.declare_queue(&queue_def("q")).unwrap();
    for n in 0..500 {
        queue.push(message(&format!("{n}-{}", "z".repeat(300)), true));
    }
    store.sync().unwrap();
    let full = store.disk_usage();
    assert!(full > 150_000, "{full}");
    assert!(store.segment_count() > 30);
    while let Some(delivery) = queue.pop() {
        queue.ack(delivery.offset).unwrap();
    }
    store.sync().unwrap();
    // A second sync deletes the segments holding only the acks.
    store.sync().unwrap();
    assert!(store.segment_count() <= 2, "{}", store.segment_count());
    assert!(store.disk_usage() < 10_000, "{}", store.disk_usage());

    backend.crash(CrashMode::LoseUnsynced);
    let (_store, mut recovery) = open(&backend);
    assert_eq!(recovery.report.messages, 0);
    assert!(take_queue(&mut recovery, "q").pop().is_none());
}

#[test]
fn one_unacked_message_pins_only_its_own_segment() {
    let backend = MemBackend::new();
    let (store, _) = open(&backend);
    let mut queue = store.declare_queue(&queue_def("q")).unwrap();
    queue.push(message("stuck", true));
    let stuck = queue.pop().unwrap();
    for round in 0..20 {
        for n in 0..20 {
            queue.push(message(&format!("{round}-{n}-{}", "w".repeat(300)), true));
        }
        while let Some(delivery) = queue.pop() {
            queue.ack(delivery.offset).unwrap();
        }
        store.sync().unwrap();
    }
    store.sync().unwrap();
    assert!(store.segment_count() <= 4, "{}", store.segment_count());
    backend.crash(CrashMode::LoseUnsynced);
    let (_store, mut recovery) = open(&backend);
    let mut queue = take_queue(&mut recovery, "q");
    assert_eq!(drain(&mut queue), vec![("stuck".to_owned(), true)]);
    assert!(stuck.offset == 0);
}

#[test]
fn an_unknown_format_version_is_a_clear_error() {
    let backend = MemBackend::new();
    let (store, _) = open(&backend);
    drop(store);
    backend.write_file("VERSION", b"warren-store 99\n".to_vec());
    let error = Store::open_with(Arc::new(backend.clone()), small_segments()).unwrap_err();
    assert!(
        matches!(&error, StoreError::UnsupportedFormat { found, supported: 2 } if found.contains("99")),
        "{error}"
    );
    assert!(error.to_string().contains("not supported"));
    assert_eq!(error.reply_code(), 541);
}

#[test]
fn a_segment_of_a_newer_format_is_refused() {
    let backend = MemBackend::new();
    let (store, _) = open(&backend);
    drop(store);
    let segment = "0000000000000001.seg";
    let mut bytes = backend.read_file(segment).unwrap();
    bytes[8] = 3;
    backend.write_file(segment, bytes);
    let error = Store::open_with(Arc::new(backend.clone()), small_segments()).unwrap_err();
    assert!(
        matches!(error, StoreError::UnsupportedFormat { .. }),
        "{error}"
    );
}

#[test]
fn store_files_without_a_version_marker_are_refused() {
    let backend = MemBackend::new();
    backend.write_file("0000000000000001.seg", b"WRNSEG\r\n".to_vec());
    let error = Store::open_with(Arc::new(backend.clone()), small_segments()).unwrap_err();
    assert!(
        matches!(error, StoreError::UnsupportedFormat { .. }),
        "{error}"
    );
}

#[test]
fn definitions_are_restored_and_queue_deletion_drops_its_bindings_and_messages() {
    let backend = MemBackend::new();
    let (store, _) = open(&backend);
    let exchange = ExchangeDef {
        vhost: name("/"),
        name: name("orders"),
        kind: name("topic"),
        auto_delete: false,
        internal: true,
        arguments: Bytes::from_static(b"\x00\x00\x00\x00"),
    };
    store.put_exchange(&exchange).unwrap();
    let mut kept = store.declare_queue(&queue_def("kept")).unwrap();
    let mut gone = store.declare_queue(&queue_def("gone")).unwrap();
    let binding = |queue: &str| BindingDef {
        vhost: name("/"),
        source: name("orders"),
        destination: name(queue),
        destination_kind: DestinationKind::Queue,
        routing_key: name("eu.#"),
        arguments: Bytes::new(),
    };
    store.put_binding(&binding("kept")).unwrap();
    store.put_binding(&binding("kept")).unwrap();
    store.put_binding(&binding("gone")).unwrap();
    kept.push(message("k", true));
    gone.push(message("g", true));
    store.sync().unwrap();
    store.delete_queue(&name("/"), &name("gone"), gone).unwrap();
    backend.crash(CrashMode::LoseUnsynced);

    let (store, mut recovery) = open(&backend);
    assert_eq!(recovery.exchanges, vec![exchange.clone()]);
    assert_eq!(recovery.bindings, vec![binding("kept")]);
    assert_eq!(recovery.queues.len(), 1);
    assert_eq!(recovery.report.messages, 1);
    let mut kept = take_queue(&mut recovery, "kept");
    assert_eq!(bodies(&drain(&mut kept)), vec!["k"]);

    // A queue declared again under the same name starts empty.
    let again = store.declare_queue(&queue_def("gone")).unwrap();
    assert!(again.is_empty());
    store.delete_exchange(&name("/"), &name("orders")).unwrap();
    drop(store);
    backend.crash(CrashMode::LoseUnsynced);
    let (_store, recovery) = open(&backend);
    assert!(recovery.exchanges.is_empty());
    assert!(
        recovery.bindings.is_empty(),
        "bindings from a deleted exchange go with it"
    );
    assert_eq!(recovery.queues.len(), 2);
}

#[test]
fn the_definitions_file_is_compacted_and_survives_a_torn_tail() {
    let backend = MemBackend::new();
    let (store, _) = open(&backend);
    let def = |n: u32| ExchangeDef {
        vhost: name("/"),
        name: name(&format!("ex-{}", n % 10)),
        kind: name("fanout"),
        auto_delete: n.is_multiple_of(2),
        internal: false,
        arguments: Bytes::new(),
    };
    for n in 0..5000 {
        store.put_exchange(&def(n)).unwrap();
    }
    let size = backend.read_file("definitions.log").unwrap().len();
    assert!(size < 150_000, "rewritten when stale: {size}");
    drop(store);
    let mut bytes = backend.read_file("definitions.log").unwrap();
    bytes.extend_from_slice(b"\x30\x00\x00\x00garbage");
    backend.write_file("definitions.log", bytes);
    let (_store, recovery) = open(&backend);
    let mut names: Vec<_> = recovery
        .exchanges
        .iter()
        .map(|def| def.name.to_string())
        .collect();
    names.sort();
    assert_eq!(names.len(), 10);
    assert!(
        recovery
            .exchanges
            .iter()
            .any(|d| d.name.as_bytes() == b"ex-9" && !d.auto_delete)
    );
}

/// Declares from many threads at once share their syncs (group commit), and every one that
/// returned is there after a power loss.
#[test]
fn concurrent_declares_share_one_sync_per_batch_and_all_survive() {
    let backend = MemBackend::new();
    let (store, _) = open(&backend);
    let store = Arc::new(store);
    // A slow disk, so that declares pile up while a sync runs.
    backend.set_sync_delay(Duration::from_millis(2));
    let before = backend.sync_count();
    let threads: Vec<_> = (0..8)
        .map(|thread| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for n in 0..50 {
                    let queue = format!("t{thread}-q{n}");
                    store.declare_queue(&queue_def(&queue)).unwrap();
                    store
                        .put_binding(&BindingDef {
                            vhost: name("/"),
                            source: name("amq.direct"),
                            destination: name(&queue),
                            destination_kind: DestinationKind::Queue,
                            routing_key: name(&queue),
                            arguments: Bytes::new(),
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let syncs = backend.sync_count() - before;
    // 800 records; one sync each without group commit.
    assert!(syncs * 2 <= 800, "{syncs} syncs for 800 definitions");
    backend.set_sync_delay(Duration::ZERO);
    drop(store);
    backend.crash(CrashMode::LoseUnsynced);
    let (_store, recovery) = open(&backend);
    assert_eq!(recovery.queues.len(), 400);
    assert_eq!(recovery.bindings.len(), 400);
    let mut ids = std::collections::BTreeSet::new();
    for (def, _) in &recovery.queues {
        assert!(ids.insert(def.name.to_string()));
    }
}

/// A declare whose write fails returns the error and is not there after a restart; the
/// definitions file carries on once the disk accepts writes.
#[test]
fn a_failed_definition_write_is_reported_and_cut_off() {
    let backend = MemBackend::new();
    let (store, _) = open(&backend);
    store.declare_queue(&queue_def("before")).unwrap();
    backend.set_disk_full(true);
    assert!(matches!(
        store.declare_queue(&queue_def("refused")),
        Err(StoreError::Io { .. })
    ));
    backend.set_disk_full(false);
    store.declare_queue(&queue_def("after")).unwrap();
    drop(store);
    backend.crash(CrashMode::KeepWrites);
    let (_store, recovery) = open(&backend);
    let mut names: Vec<_> = recovery
        .queues
        .iter()
        .map(|(def, _)| def.name.to_string())
        .collect();
    names.sort();
    assert_eq!(names, vec!["after", "before"]);
}

#[test]
fn a_full_disk_fails_the_sync_then_the_store_recovers() {
    let backend = MemBackend::new();
    let (store, _) = open(&backend);
    let mut queue = store.declare_queue(&queue_def("q")).unwrap();
    queue.push(message("before", true));
    store.sync().unwrap();
    backend.set_disk_full(true);
    let failed_push = queue.push(message("while full", true));
    let failed = store.sync().unwrap_err();
    assert!(
        failed.upto >= failed_push.lsn.unwrap(),
        "its confirm must be nacked"
    );
    assert!(matches!(failed.error, StoreError::Io { .. }));
    // Consumers keep being served from memory.
    assert_eq!(queue.ready_count(), 2);
    // The records wait in memory; the broker blocks publishers past a limit.
    let waiting = store.unsynced_bytes();
    for n in 0..10 {
        queue.push(message(&format!("blocked {n}"), true));
    }
    assert!(store.unsynced_bytes() > waiting, "{waiting}");
    assert!(store.sync().is_err());
    let deliveries: Vec<_> = std::iter::from_fn(|| queue.pop()).collect();
    assert_eq!(deliveries.len(), 12);
    for delivery in deliveries {
        if delivery.message.body.starts_with(b"blocked") {
            queue.ack(delivery.offset).unwrap();
        } else {
            queue.requeue(delivery.offset);
        }
    }
    backend.set_disk_full(false);
    let after = queue.push(message("after", true));
    let synced = store.sync().unwrap();
    assert!(synced >= after.lsn.unwrap());
    assert_eq!(store.unsynced_bytes(), 0);
    backend.crash(CrashMode::LoseUnsynced);
    let (_store, mut recovery) = open(&backend);
    let popped = drain(&mut take_queue(&mut recovery, "q"));
    // The nacked one was kept in memory and written again once the disk had room.
    assert_eq!(bodies(&popped), vec!["before", "while full", "after"]);
}

#[test]
fn a_sync_thread_confirms_what_other_threads_append() {
    let backend = MemBackend::new();
    let (store, _) = open(&backend);
    let store = Arc::new(store);
    let mut queue = store.declare_queue(&queue_def("q")).unwrap();
    let syncer = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || {
            let mut syncs = 0;
            while syncs < 3 {
                if store
                    .wait_and_sync(Duration::from_secs(5))
                    .unwrap()
                    .is_some()
                {
                    syncs += 1;
                }
            }
        })
    };
    let mut last = None;
    for round in 0..3 {
        last = queue.push(message(&format!("m{round}"), true)).lsn;
        while store.synced() < last.unwrap() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    syncer.join().unwrap();
    assert!(store.synced() >= last.unwrap());
    assert!(store.synced() >= store.appended());
}

#[test]
fn real_files_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = Store::open(dir.path()).unwrap();
        let mut queue = store.declare_queue(&queue_def("disk")).unwrap();
        queue.push(message("on disk", true));
        store.sync().unwrap();
    }
    let (_store, mut recovery) = Store::open(dir.path()).unwrap();
    assert_eq!(
        drain(&mut take_queue(&mut recovery, "disk")),
        vec![("on disk".to_owned(), true)]
    );
    let version = std::fs::read_to_string(dir.path().join("VERSION")).unwrap();
    assert_eq!(version, "warren-store 2\n");
}

#[test]
fn a_restored_no_ack_message_survives_a_crash() {
    let backend = MemBackend::new();
    let (store, _) = open(&backend);
    let mut queue = store.declare_queue(&queue_def("q")).unwrap();
    queue.push(message("kept", true));
    queue.push(message("taken", true));
    let kept = queue.pop_no_ack().unwrap();
    let _taken = queue.pop_no_ack().unwrap();
    queue.restore(kept);
    store.sync().unwrap();
    backend.crash(CrashMode::LoseUnsynced);
    let (_store, mut recovery) = open(&backend);
    assert_eq!(
        drain(&mut take_queue(&mut recovery, "q")),
        vec![("kept".to_owned(), true)]
    );
}

#[test]
fn paged_out_bodies_are_read_back_in_order() {
    let backend = MemBackend::new();
    let (store, _) = open(&backend);
    let mut queue = store.declare_queue(&queue_def("q")).unwrap();
    let bodies_in: Vec<String> = (0..50)
        .map(|n| format!("{n}-{}", "p".repeat(200)))
        .collect();
    for body in &bodies_in {
        queue.push(message(body, true));
    }
    // Shared with another queue: paged out too, but its memory stays until the other lets go.
    let shared = message("shared", true);
    queue.push(Arc::clone(&shared));
    // Not synced yet: nothing may be paged.
    assert_eq!(queue.page_out(0), 0);
    store.sync().unwrap();
    let unsynced = queue.push(message("unsynced", true));
    let released = queue.page_out(10);
    assert!(released > 40 * 200, "{released}");
    assert_eq!(queue.paged_count(), 41);
    assert_eq!(
        queue.ready_bytes(),
        50 * 200 + 50 * 3 - 10 + 6 + 8,
        "bytes still counted"
    );
    let paged_bytes: u64 = (10..50u64)
        .map(|n| 201 + n.to_string().len() as u64)
        .sum::<u64>()
        + 6;
    assert_eq!(
        queue.resident_ready_bytes(),
        queue.ready_bytes() - paged_bytes
    );
    // Prefetch the first paged ones.
    assert_eq!(queue.page_in(12), 2);
    assert_eq!(queue.paged_count(), 39);
    // Paging again only looks at what is new: the unsynced one once it is synced.
    assert_eq!(queue.page_out(10), 0);
    store.sync().unwrap();
    assert!(queue.page_out(10) > 0);
    assert_eq!(queue.paged_count(), 40);
    // A smaller window looks again at what the larger one kept.
    assert!(queue.page_out(5) > 0);
    assert_eq!(
        queue.paged_count(),
        47,
        "40 + entries 5..12 (10 and 11 were read back)"
    );

    let popped = drain(&mut queue);
    let mut expected: Vec<&str> = bodies_in.iter().map(String::as_str).collect();
    expected.extend(["shared", "unsynced"]);
    assert_eq!(bodies(&popped), expected);
    assert_eq!(queue.paged_count(), 0);
    assert!(unsynced.lsn.is_some());
    assert_eq!(queue.resident_ready_bytes(), 0);
}

#[test]
fn page_in_reads_runs_of_records_across_segments_logs_and_gaps() {
    let backend = MemBackend::new();
    let (store, _) = open(&backend);
    let mut queue = store.declare_queue(&queue_def("q")).unwrap();
    let mut other = store.declare_queue(&queue_def("other")).unwrap();
    let mut expected = Vec::new();
    for n in 0..300 {
        let body = format!("{n}-{}", "r".repeat(n % 97));
        // Transient ones spill, persistent ones stay in the log; acks of another queue and
        // fanout enqueue records make gaps between the records of this queue.
        let shared = message(&body, n % 3 != 0);
        queue.push(Arc::clone(&shared));
        if n % 5 == 0 {
            other.push(shared);
            let delivery = other.pop().unwrap();
            other.ack(delivery.offset).unwrap();
        }
        expected.push(body);
    }
    store.sync().unwrap();
    // Bounded rounds page out in steps, each carrying on where the last one stopped.
    assert!(queue.page_out_upto(0, 500) > 0);
    let after_one_round = queue.paged_count();
    assert!(
        after_one_round > 0 && after_one_round < 300,
        "{after_one_round}"
    );
    while queue.page_out_upto(0, 500) > 0 {}
    assert_eq!(queue.paged_count(), 300);
    assert!(store.segment_count() > 5, "{}", store.segment_count());
    assert_eq!(queue.page_in(120), 120);
    assert_eq!(queue.paged_count(), 180);
    assert_eq!(queue.page_in(1000), 180);
    assert_eq!(queue.paged_count(), 0);
    assert_eq!(queue.resident_ready_bytes(), queue.ready_bytes());
    let popped = drain(&mut queue);
    assert_eq!(
        bodies(&popped),
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
}

#[test]
fn recovery_leaves_bodies_past_the_limit_on_disk() {
    let backend = MemBackend::new();
    let options = small_segments().with_recovery_resident_per_queue(10);
    let (store, _) = Store::open_with(Arc::new(backend.clone()), options).unwrap();
    let mut queue = store.declare_queue(&queue_def("q")).unwrap();
    let all: Vec<String> = (0..100).map(|n| format!("m{n}")).collect();
    for body in &all {
        queue.push(message(body, true));
    }
    // Ack a few at the front: the limit counts what replay holds, not what survives.
    for _ in 0..3 {
        let delivery = queue.pop().unwrap();
        queue.ack(delivery.offset).unwrap();
    }
    store.close().unwrap();
    drop(queue);
    drop(store);

    let (store, mut recovery) = Store::open_with(Arc::new(backend.clone()), options).unwrap();
    let mut queue = take_queue(&mut recovery, "q");
    assert_eq!(queue.ready_count(), 97);
    assert!(queue.paged_count() >= 87, "{}", queue.paged_count());
    let popped = drain(&mut queue);
    assert_eq!(
        bodies(&popped),
        all[3..].iter().map(String::as_str).collect::<Vec<_>>()
    );
    // Acks of read-back messages reclaim the log as usual.
    for delivery in queue.unacked().collect::<Vec<_>>() {
        queue.ack(delivery.offset).unwrap();
    }
    store.sync().unwrap();
    store.sync().unwrap();
    assert!(store.segment_count() <= 2, "{}", store.segment_count());
}

fn spill_files(backend: &MemBackend) -> usize {
    use warren_store::Backend;
    backend
        .list()
        .unwrap()
        .iter()
        .filter(|name| name.starts_with("spill-"))
        .count()
}

#[test]
fn transient_bodies_spill_to_disk_and_come_back_in_order() {
    let backend = MemBackend::new();
    let (store, _) = open(&backend);
    let mut queue = store.transient_queue();
    assert!(!queue.is_durable());
    let all: Vec<String> = (0..100)
        .map(|n| format!("{n}-{}", "t".repeat(200)))
        .collect();
    for (n, body) in all.iter().enumerate() {
        // Persistent messages on a transient queue are not logged; they spill like the rest.
        assert_eq!(queue.push(message(body, n.is_multiple_of(2))).lsn, None);
    }
    let released = queue.page_out(10);
    assert!(released > 90 * 200, "{released}");
    assert_eq!(queue.paged_count(), 90);
    assert!(spill_files(&backend) > 3, "{}", spill_files(&backend));
    assert_eq!(queue.page_in(15), 5);

    let mut got = Vec::new();
    while let Some(delivery) = queue.pop() {
        let body = String::from_utf8(delivery.message.body.to_vec()).unwrap();
        let n: usize = body.split('-').next().unwrap().parse().unwrap();
        assert_eq!(delivery.message.persistent, n.is_multiple_of(2), "{n}");
        assert!(!delivery.redelivered);
        queue.ack(delivery.offset).unwrap();
        got.push(body);
    }
    assert_eq!(got, all);
    assert_eq!(queue.paged_count(), 0);
    assert_eq!(queue.resident_ready_bytes(), 0);
    store.sync().unwrap();
    assert_eq!(
        spill_files(&backend),
        1,
        "only the current spill segment is left"
    );
}

#[test]
fn spilled_bodies_die_with_their_queue_and_with_the_process() {
    let backend = MemBackend::new();
    let (store, _) = open(&backend);
    let mut transient = store.transient_queue();
    let mut durable = store.declare_queue(&queue_def("q")).unwrap();
    for n in 0..40u32 {
        transient.push(message(&format!("t{n}-{}", "s".repeat(300)), false));
        durable.push(message(
            &format!("d{n}-{}", "s".repeat(300)),
            n.is_multiple_of(2),
        ));
    }
    store.sync().unwrap();
    transient.page_out(0);
    // Persistent ones are paged to the log, transient ones spilled.
    durable.page_out(0);
    assert_eq!(durable.paged_count(), 40);
    let spilled = spill_files(&backend);
    assert!(spilled > 5, "{spilled}");
    drop(transient);
    store.sync().unwrap();
    assert!(spill_files(&backend) < spilled);

    backend.crash(CrashMode::KeepWrites);
    let (_store, mut recovery) = open(&backend);
    assert_eq!(spill_files(&backend), 1, "spill files are wiped at start");
    let popped = drain(&mut take_queue(&mut recovery, "q"));
    let expected: Vec<String> = (0..40)
        .step_by(2)
        .map(|n| format!("d{n}-{}", "s".repeat(300)))
        .collect();
    assert_eq!(
        bodies(&popped),
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
}

#[test]
fn a_fanout_to_durable_queues_writes_the_body_once_and_each_queue_keeps_it() {
    let backend = MemBackend::new();
    let (store, _) = open(&backend);
    let mut queues: Vec<Queue> = (0..3)
        .map(|n| store.declare_queue(&queue_def(&format!("fan{n}"))).unwrap())
        .collect();
    let before = store.disk_usage();
    let body = "f".repeat(2000);
    let shared = message(&body, true);
    let lsns: Vec<_> = queues
        .iter_mut()
        .map(|queue| queue.push(Arc::clone(&shared)).lsn.unwrap())
        .collect();
    assert!(lsns.windows(2).all(|pair| pair[0] < pair[1]));
    store.sync().unwrap();
    let written = store.disk_usage() - before;
    assert!(
        written < 2000 + 400,
        "one body and two small records: {written}"
    );

    // The first queue (whose record holds the body) acks; the others still need the body.
    let delivery = queues[0].pop().unwrap();
    queues[0].ack(delivery.offset).unwrap();
    // Filler so that the body's segment would be reclaimable if nothing held it.
    for n in 0..30 {
        queues[0].push(message(&format!("filler{n}-{}", "x".repeat(300)), true));
    }
    while let Some(delivery) = queues[0].pop() {
        queues[0].ack(delivery.offset).unwrap();
    }
    store.sync().unwrap();
    store.sync().unwrap();
    // Paging the second queue's copy out reads the body back from the first queue's record.
    assert_eq!(
        queues[1].page_out(0),
        0,
        "the third queue still holds the body in memory"
    );
    assert_eq!(queues[1].paged_count(), 1);
    backend.crash(CrashMode::LoseUnsynced);

    let (store, mut recovery) = open(&backend);
    assert!(drain(&mut take_queue(&mut recovery, "fan0")).is_empty());
    for name in ["fan1", "fan2"] {
        let mut queue = take_queue(&mut recovery, name);
        assert_eq!(queue.ready_bytes(), 2000, "{name}");
        let delivery = queue.pop().unwrap();
        assert_eq!(&delivery.message.body[..], body.as_bytes(), "{name}");
        assert!(delivery.redelivered);
        queue.ack(delivery.offset).unwrap();
    }
    store.sync().unwrap();
    store.sync().unwrap();
    assert!(store.segment_count() <= 2, "{}", store.segment_count());
}

#[test]
fn a_changed_copy_of_a_fanned_out_message_keeps_its_own_fields_across_a_restart() {
    let backend = MemBackend::new();
    let (store, _) = open(&backend);
    let mut plain = store.declare_queue(&queue_def("plain")).unwrap();
    let mut ttl = store.declare_queue(&queue_def("ttl")).unwrap();
    let original = message("body", true);
    plain.push(Arc::clone(&original));
    // The broker gives a queue with x-message-ttl its own copy with a deadline.
    let mut copy = Message::clone(&original);
    copy.expires_at_ms = Some(123_456);
    ttl.push(Arc::new(copy));
    store.close().unwrap();
    drop((plain, ttl, store));

    let (_store, mut recovery) = open(&backend);
    let plain = take_queue(&mut recovery, "plain").pop().unwrap();
    let ttl = take_queue(&mut recovery, "ttl").pop().unwrap();
    assert_eq!(plain.message.expires_at_ms, None);
    assert_eq!(ttl.message.expires_at_ms, Some(123_456));
}

#[test]
fn a_sync_thread_racing_appends_rolls_and_acks_keeps_the_promises() {
    use std::sync::atomic::{AtomicBool, Ordering};
    for round in 0..5 {
        let backend = MemBackend::new();
        let (store, _) = open(&backend);
        let store = Arc::new(store);
        let stop = Arc::new(AtomicBool::new(false));
        let syncer = {
            let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    store.sync().unwrap();
                }
            })
        };
        let mut queue = store.declare_queue(&queue_def("race")).unwrap();
        // body -> (publish lsn, lsn bound of its ack)
        let mut log: BTreeMap<String, (u64, Option<u64>)> = BTreeMap::new();
        for n in 0..3000 {
            let body = format!("{round}-{n:05}-{}", "r".repeat(n % 300));
            let pushed = queue.push(message(&body, true));
            log.insert(body, (pushed.lsn.unwrap().0, None));
            if n % 50 != 0 {
                let delivery = queue.pop().unwrap();
                queue.ack(delivery.offset).unwrap();
                let body = String::from_utf8(delivery.message.body.to_vec()).unwrap();
                let bound = store.appended().0;
                log.get_mut(&body).unwrap().1 = Some(bound);
            }
        }
        stop.store(true, Ordering::Release);
        syncer.join().unwrap();
        let synced = store.synced().0;
        drop(queue);
        backend.crash(CrashMode::LoseUnsynced);

        let (_store, mut recovery) = open(&backend);
        let popped = drain(&mut take_queue(&mut recovery, "race"));
        let present: std::collections::BTreeSet<&str> = bodies(&popped).into_iter().collect();
        for (body, (publish, ack)) in &log {
            match ack {
                Some(ack) if *ack <= synced => {
                    assert!(!present.contains(body.as_str()), "acked {body} came back")
                }
                None if *publish <= synced => {
                    assert!(present.contains(body.as_str()), "confirmed {body} lost")
                }
                _ => {}
            }
        }
    }
}

/// Reclaiming a segment whose delivery or ack records point at a segment that stays carries
/// them forward and syncs again. That second sync also covers records appended meanwhile (a
/// publish waiting for its confirm), so `sync` must report it: a sync thread that idles once
/// nothing is unsynced would otherwise never release that confirm.
#[test]
fn a_sync_that_carries_records_forward_reports_everything_it_synced() {
    let backend = MemBackend::new();
    // Without compaction, which appends copies after a sync (the next sync takes them).
    let (store, _) = Store::open_with(
        Arc::new(backend.clone()),
        small_segments().with_compaction(0),
    )
    .unwrap();
    let mut queue = store.declare_queue(&queue_def("carry")).unwrap();
    // Stays unacked in the first segment: delivery records pointing at it get carried.
    queue.push(message("keep", true));
    let mut carried = 0;
    for round in 0..20 {
        for n in 0..15 {
            queue.push(message(&format!("{round}-{n}-{}", "c".repeat(300)), true));
        }
        let mut offsets = Vec::new();
        while let Some(delivery) = queue.pop() {
            offsets.push(delivery.offset);
        }
        // The first message's delivery record lands in a later, soon reclaimable segment.
        if round == 0 {
            offsets.remove(0);
        }
        for offset in offsets {
            queue.ack(offset).unwrap();
        }
        let before = store.appended();
        let synced = store.sync().unwrap();
        if store.appended() > before {
            carried += 1;
        }
        assert_eq!(synced, store.synced(), "round {round}");
        assert!(
            store.appended() <= synced,
            "round {round}: records left behind the reported sync"
        );
    }
    assert!(carried > 0, "no sync carried records forward");
}
