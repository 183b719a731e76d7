//! Helpers shared by the store's integration tests (`mod support;` in each file that uses them).

// Test code: a panic is a failed assertion. Not every test file uses every helper.
#![allow(clippy::unwrap_used, dead_code)]

use std::sync::Arc;

use bytes::Bytes;
use warren_codec::ShortString;
use warren_store::{Message, Queue, QueueDef, Recovery};

pub fn name(text: &str) -> ShortString {
    ShortString::try_from(text).unwrap()
}

/// A durable queue's definition in vhost `/`.
pub fn queue_def(queue: &str) -> QueueDef {
    QueueDef {
        vhost: name("/"),
        name: name(queue),
        auto_delete: false,
        arguments: Bytes::new(),
    }
}

/// A message published to `amq.direct` with routing key `key`.
pub fn message(body: &str, persistent: bool) -> Arc<Message> {
    Arc::new(
        Message::new(
            name("amq.direct"),
            name("key"),
            Bytes::from_static(b"\x10\x00\x02"),
            Bytes::copy_from_slice(body.as_bytes()),
        )
        .with_persistent(persistent),
    )
}

/// Takes the named queue out of a recovery.
pub fn take_queue(recovery: &mut Recovery, queue: &str) -> Queue {
    let index = recovery
        .queues
        .iter()
        .position(|(def, _)| def.name.as_bytes() == queue.as_bytes())
        .unwrap();
    recovery.queues.remove(index).1
}

/// Pops everything ready: (body, redelivered).
pub fn drain(queue: &mut Queue) -> Vec<(String, bool)> {
    std::iter::from_fn(|| queue.pop())
        .map(|delivery| {
            (
                String::from_utf8(delivery.message.body.to_vec()).unwrap(),
                delivery.redelivered,
            )
        })
        .collect()
}

pub fn bodies(list: &[(String, bool)]) -> Vec<&str> {
    list.iter().map(|(body, _)| body.as_str()).collect()
}
