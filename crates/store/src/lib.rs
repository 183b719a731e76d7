//! Queues and their messages, in memory and on disk. Synchronous: the server decides where calls run.
//!
//! # The pieces
//! - [`Message`]: one published message (exchange, routing key, raw content-header properties,
//!   body). The broker wraps it in an `Arc` and pushes the same `Arc` to every queue it is routed
//!   to, so fanout never copies a body.
//! - [`Queue`]: one queue's messages. Ready messages in order, delivered-but-unacked messages by
//!   offset, requeue back to the original position with `redelivered = true`, purge, counts and
//!   bytes. Every operation is O(1) on the common path (O(log n) for requeued messages).
//!
//! # The hot path
//! publish -> [`Queue::push`] -> [`Queue::pop`] -> deliver -> [`Queue::ack`]:
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use warren_codec::ShortString;
//! use warren_store::{Message, Queue};
//!
//! let message = Arc::new(
//!     Message::new(
//!         ShortString::from_static("amq.direct"),
//!         ShortString::from_static("jobs"),
//!         Bytes::new(), // property flags + list, exactly as received
//!         Bytes::from_static(b"hello"),
//!     )
//!     .with_persistent(true),
//! );
//!
//! let mut queue = Queue::new(); // transient: memory only
//! let pushed = queue.push(Arc::clone(&message));
//! assert_eq!(pushed.lsn, None); // nothing to sync: a confirm may go out at once
//!
//! let delivery = queue.pop().unwrap();
//! assert_eq!(&delivery.message.body[..], b"hello");
//! assert!(!delivery.redelivered);
//! assert_eq!((queue.ready_count(), queue.unacked_count()), (0, 1));
//!
//! // A nack with requeue puts it back where it was, flagged redelivered.
//! assert!(queue.requeue(delivery.offset));
//! let again = queue.pop().unwrap();
//! assert!(again.redelivered);
//!
//! // basic.ack: forgotten for good.
//! assert!(queue.ack(again.offset).is_some());
//! assert!(queue.is_empty());
//! ```
//!
//! The server maps its per-channel delivery tags to `(queue, offset)`; offsets are per queue and
//! never reused while the queue lives.

pub mod backend;
mod definitions;
mod error;
mod journal;
mod message;
mod queue;
mod record;
mod store;

pub use backend::{Backend, CrashMode, FileBackend, FileHandle, MemBackend};
pub use definitions::{BindingDef, DestinationKind, ExchangeDef, QueueDef};
pub use error::{INTERNAL_ERROR, StoreError};
pub use journal::{StoreOptions, SyncFailed};
pub use message::Message;
pub use queue::{Delivery, Lsn, Pushed, Queue};
pub use store::{Recovery, RecoveryReport, Store};
