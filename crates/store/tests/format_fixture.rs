//! Files written by an earlier release keep opening: the format-1 and format-2 folders checked in
//! under `tests/fixtures` (written by `examples/write_format_fixture.rs`) are read back in full.
//! The format-2 folder holds only moved records (its first segment was compacted away).

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use warren_store::{DestinationKind, Store};

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn format_1_data_folder_opens_with_everything_in_it() {
    check_fixture("format-1");
}

#[test]
fn format_2_data_folder_with_moved_records_opens_with_everything_in_it() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-2");
    assert!(
        !fixture.join("0000000000000001.seg").exists(),
        "the fixture's first segment was compacted: only copies are left"
    );
    check_fixture("format-2");
}

fn check_fixture(folder: &str) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(folder);
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture, dir.path());

    let (_store, mut recovery) = Store::open(dir.path()).unwrap();
    assert!(recovery.report.clean_shutdown);
    assert_eq!(recovery.report.bad_records, 0);

    assert_eq!(recovery.exchanges.len(), 1);
    let exchange = &recovery.exchanges[0];
    assert_eq!(exchange.name.as_bytes(), b"fixture.orders");
    assert_eq!(exchange.kind.as_bytes(), b"topic");

    assert_eq!(recovery.bindings.len(), 1);
    let binding = &recovery.bindings[0];
    assert_eq!(binding.destination.as_bytes(), b"fixture.queue");
    assert_eq!(binding.destination_kind, DestinationKind::Queue);
    assert_eq!(binding.routing_key.as_bytes(), b"eu.#");

    assert_eq!(recovery.queues.len(), 2);
    let index = recovery
        .queues
        .iter()
        .position(|(def, _)| def.name.as_bytes() == b"fixture.copy")
        .unwrap();
    let (_, mut copy) = recovery.queues.remove(index);
    // Its records point at the bodies in the first queue's records (one of them acked there).
    let bodies: Vec<_> = std::iter::from_fn(|| copy.pop())
        .map(|delivery| (delivery.message.body.clone(), delivery.redelivered))
        .collect();
    assert_eq!(
        bodies,
        vec![
            (bytes::Bytes::from_static(b"acked"), false),
            (bytes::Bytes::from_static(b"delivered"), false),
            (bytes::Bytes::from_static(b"ready"), false)
        ]
    );
    let (def, mut queue) = recovery.queues.pop().unwrap();
    assert_eq!(def.name.as_bytes(), b"fixture.queue");
    let delivered = queue.pop().unwrap();
    assert_eq!(&delivered.message.body[..], b"delivered");
    assert!(delivered.redelivered);
    assert_eq!(delivered.offset, 1);
    assert_eq!(delivered.message.priority, Some(3));
    assert_eq!(delivered.message.exchange.as_bytes(), b"fixture.orders");
    assert_eq!(delivered.message.routing_key.as_bytes(), b"eu.de");
    assert_eq!(&delivered.message.properties[..], b"\x80\x00\x0atext/plain");
    assert!(delivered.message.persistent);
    let ready = queue.pop().unwrap();
    assert_eq!(&ready.message.body[..], b"ready");
    assert!(!ready.redelivered);
    assert_eq!(ready.message.priority, None);
    assert!(queue.pop().is_none(), "the acked message stays gone");
    // Opened as it is, then marked as this build's format before anything new was written.
    let version = std::fs::read_to_string(dir.path().join("VERSION")).unwrap();
    assert_eq!(version, "warren-store 2\n");
}
