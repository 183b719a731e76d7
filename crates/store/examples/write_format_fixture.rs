//! Writes the data folder that `tests/format_fixture.rs` reads, to pin the on-disk format.
//!
//! `cargo run -p warren-store --example write_format_fixture -- crates/store/tests/fixtures/format-2`
//! Run it only when a new format version is introduced (into a new folder), never to "fix" the
//! test: the point is that files written by an earlier release keep opening.
//!
//! Since format 2 the first segment is also compacted (small segments, fillers of a deleted
//! queue), so the folder holds moved records of every kind: publishes, enqueues and a body-only
//! publish (acked in its own queue, its body still used by the other).

use std::sync::Arc;

use bytes::Bytes;
use warren_codec::ShortString;
use warren_store::{
    BindingDef, DestinationKind, ExchangeDef, FileBackend, Message, QueueDef, Store, StoreOptions,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: write_format_fixture DIR (an empty or missing folder)")?;
    let options = StoreOptions::default().with_segment_size(4096);
    let (store, _) = Store::open_with(Arc::new(FileBackend::new(&dir)?), options)?;
    store.put_exchange(&ExchangeDef {
        vhost: ShortString::from_static("/"),
        name: ShortString::from_static("fixture.orders"),
        kind: ShortString::from_static("topic"),
        auto_delete: false,
        internal: false,
        arguments: Bytes::new(),
    })?;
    let mut queue = store.declare_queue(&QueueDef {
        vhost: ShortString::from_static("/"),
        name: ShortString::from_static("fixture.queue"),
        auto_delete: false,
        arguments: Bytes::new(),
    })?;
    // A second durable queue gets the same messages: its records point at the first one's bodies.
    let mut copy = store.declare_queue(&QueueDef {
        vhost: ShortString::from_static("/"),
        name: ShortString::from_static("fixture.copy"),
        auto_delete: false,
        arguments: Bytes::new(),
    })?;
    store.put_binding(&BindingDef {
        vhost: ShortString::from_static("/"),
        source: ShortString::from_static("fixture.orders"),
        destination: ShortString::from_static("fixture.queue"),
        destination_kind: DestinationKind::Queue,
        routing_key: ShortString::from_static("eu.#"),
        arguments: Bytes::new(),
    })?;
    for (body, priority) in [("acked", None), ("delivered", Some(3)), ("ready", None)] {
        let mut message = Message::new(
            ShortString::from_static("fixture.orders"),
            ShortString::from_static("eu.de"),
            // Property flags with content-type set, then "text/plain" as a shortstr.
            Bytes::from_static(b"\x80\x00\x0atext/plain"),
            Bytes::from_static(body.as_bytes()),
        )
        .with_persistent(true);
        message.priority = priority;
        let message = Arc::new(message);
        queue.push(Arc::clone(&message));
        copy.push(message);
    }
    // Fillers in the first segment, dead once their queue is deleted: it becomes sparse.
    let filler_def = QueueDef {
        vhost: ShortString::from_static("/"),
        name: ShortString::from_static("fixture.filler"),
        auto_delete: false,
        arguments: Bytes::new(),
    };
    let mut filler = store.declare_queue(&filler_def)?;
    for n in 0..30 {
        let body = format!("filler {n} {}", "f".repeat(300));
        filler.push(Arc::new(
            Message::new(
                ShortString::new(),
                ShortString::from_static("fixture.filler"),
                Bytes::new(),
                Bytes::from(body),
            )
            .with_persistent(true),
        ));
    }
    let acked = queue.pop().ok_or("no message")?;
    queue.ack(acked.offset);
    let delivered = queue.pop().ok_or("no message")?;
    queue.requeue(delivered.offset);
    store.delete_queue(&filler_def.vhost, &filler_def.name, filler)?;
    // Compact the first segment: copy, sync, delete.
    for _ in 0..6 {
        store.sync()?;
    }
    store.close()?;
    Ok(())
}
