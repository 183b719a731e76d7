//! The message as the broker holds it: built once per publish, shared by every queue it is routed to.

use std::sync::OnceLock;

use bytes::Bytes;
use warren_codec::ShortString;

/// A published message. The broker wraps it in an `Arc` and pushes the same `Arc` to every
/// queue the message is routed to, so a fanout to ten queues shares one body.
///
/// Fields are public for reading; the struct is `#[non_exhaustive]` so that fields can be added
/// (for instance for TTL or priorities) without breaking callers: build it with [`Message::new`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Message {
    /// The exchange named in `basic.publish`, as received (empty for the default exchange).
    pub exchange: ShortString,
    /// The routing key named in `basic.publish`, as received.
    pub routing_key: ShortString,
    /// The content header's property flags and property list exactly as received, so a delivery
    /// re-sends them without decoding and encoding them again.
    pub properties: Bytes,
    /// The content body: a zero-copy slice of what the connection read.
    pub body: Bytes,
    /// `delivery_mode` was 2: the message is written to disk when routed to a durable queue.
    pub persistent: bool,
    /// The `priority` property, if the publisher set one: the broker picks the level of a
    /// priority queue by it ([`crate::Queue::into_levels`]).
    pub priority: Option<u8>,
    /// When the message expires, in milliseconds since the Unix epoch: by its own `expiration`
    /// property (computed by the server at publish time), or by the TTL of the queue it sits in
    /// (the server gives each such queue its own copy, since the same message may sit in queues
    /// with different TTLs). A queue indexes it ([`crate::Queue::expire`]).
    pub expires_at_ms: Option<u64>,
    /// Where a durable log first wrote this message's body: (log id, record end, record length).
    /// Further durable queues it is routed to refer to that record instead of writing the body
    /// again.
    pub(crate) logged: OnceLock<(u64, u64, u32)>,
}

impl PartialEq for Message {
    /// Messages are equal when what a client sees is equal; where they were logged does not count.
    fn eq(&self, other: &Message) -> bool {
        self.exchange == other.exchange
            && self.routing_key == other.routing_key
            && self.properties == other.properties
            && self.body == other.body
            && self.persistent == other.persistent
            && self.priority == other.priority
            && self.expires_at_ms == other.expires_at_ms
    }
}

impl Eq for Message {}

impl Clone for Message {
    /// A copy that was not logged anywhere: the broker clones a message to change it (a queue's
    /// TTL deadline), so the copy must not point at the original's record, which holds the
    /// original's fields.
    fn clone(&self) -> Message {
        Message {
            exchange: self.exchange.clone(),
            routing_key: self.routing_key.clone(),
            properties: self.properties.clone(),
            body: self.body.clone(),
            persistent: self.persistent,
            priority: self.priority,
            expires_at_ms: self.expires_at_ms,
            logged: OnceLock::new(),
        }
    }
}

/// Bytes a message costs beyond its buffers: the struct itself and the `Arc` counters.
const MESSAGE_OVERHEAD: usize = std::mem::size_of::<Message>() + 2 * std::mem::size_of::<usize>();

impl Message {
    /// A transient message (not persistent, no priority, no expiry).
    pub fn new(
        exchange: ShortString,
        routing_key: ShortString,
        properties: Bytes,
        body: Bytes,
    ) -> Message {
        Message {
            exchange,
            routing_key,
            properties,
            body,
            persistent: false,
            priority: None,
            expires_at_ms: None,
            logged: OnceLock::new(),
        }
    }

    /// The same message with the persistent flag set as given (`delivery_mode == 2`).
    pub fn with_persistent(mut self, persistent: bool) -> Message {
        self.persistent = persistent;
        self
    }

    /// Body length in bytes: what RabbitMQ reports as a queue's `message_bytes` and what
    /// `x-max-length-bytes` counts.
    pub fn body_len(&self) -> u64 {
        self.body.len() as u64
    }

    /// An estimate of the memory the message holds (buffers plus bookkeeping), for the broker's
    /// memory budget. Counted once per message, however many queues share it.
    pub fn memory_size(&self) -> usize {
        MESSAGE_OVERHEAD
            + self.body.len()
            + self.properties.len()
            + self.exchange.len()
            + self.routing_key.len()
    }
}
