//! Writes the data folder that `tests/format_fixture.rs` reads, to pin the on-disk format.
//!
//! `cargo run -p warren-store --example write_format_fixture -- crates/store/tests/fixtures/format-1`
//! Run it only when a new format version is introduced (into a new folder), never to "fix" the
//! test: the point is that files written by an earlier release keep opening.

use std::sync::Arc;

use bytes::Bytes;
use warren_codec::ShortString;
use warren_store::{BindingDef, DestinationKind, ExchangeDef, Message, QueueDef, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: write_format_fixture DIR (an empty or missing folder)")?;
    let (store, _) = Store::open(&dir)?;
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
    let acked = queue.pop().ok_or("no message")?;
    queue.ack(acked.offset);
    let delivered = queue.pop().ok_or("no message")?;
    queue.requeue(delivered.offset);
    store.close()?;
    Ok(())
}
