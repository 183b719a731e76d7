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
//!
//! # Durable queues
//! [`Store`] owns a data folder (see `docs/storage-format.md`). A durable queue is the same
//! [`Queue`] type, obtained from the store; a persistent message pushed to it is logged, and
//! [`Pushed::lsn`] says which sync makes it durable. How the broker uses it:
//!
//! 1. At start (on a blocking thread): [`Store::open`] returns the store and a [`Recovery`] with
//!    the durable exchanges, queues (with their recovered messages, ready in order) and bindings.
//!    Declare them in the router before accepting connections. `--ephemeral` skips the store:
//!    every queue is [`Queue::new`] and every confirm goes out at once.
//! 2. On `exchange.declare`/`queue.bind`/... with `durable`: call [`Store::put_exchange`],
//!    [`Store::put_binding`], and for a new durable queue [`Store::declare_queue`] (it returns the
//!    queue to register). These fsync before returning: run them off the async workers
//!    (`spawn_blocking`), then send the `-ok`. On delete: [`Store::delete_queue`] (pass the
//!    queue), [`Store::delete_exchange`], [`Store::delete_binding`].
//! 3. On publish: push the same `Arc<Message>` to every matched queue. Confirm at once if every
//!    `Pushed::lsn` is `None`; otherwise remember `(delivery tag, max lsn)` and confirm once
//!    [`Store::synced`] reaches it.
//! 4. One dedicated OS thread loops on [`Store::wait_and_sync`]: it fdatasyncs everything appended
//!    by every queue since the last sync (group commit) and returns the durable [`Lsn`]; publish it
//!    (e.g. a `tokio::sync::watch`) so channels send `basic.ack` for their confirms up to it. On
//!    `Err(SyncFailed)`, `basic.nack` every confirm waiting on an `Lsn` up to
//!    [`SyncFailed::upto`]; later syncs work again once the disk does. The same loop compacts
//!    the log (a bounded step per sync, also while idle): live records of mostly-dead segments
//!    are copied forward so that long-lived messages do not pin old segments. Meanwhile the records wait
//!    in memory: block publishers of persistent messages while [`Store::unsynced_bytes`] is
//!    above a limit.
//! 5. On shutdown, after the last queue operation: [`Store::close`], so the next start knows which
//!    messages were never delivered.
//! 6. Memory: create transient queues with [`Store::transient_queue`] (not [`Queue::new`]) when a
//!    store exists, so they can page out too. When the broker's memory is over budget, call
//!    [`Queue::page_out`] on the longest queues (keeping a window of a few thousand messages at
//!    the head) and [`Queue::page_in`] on that window as consumers drain it; both may wait for the
//!    disk, so run them off the async workers.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use bytes::Bytes;
//! use warren_codec::ShortString;
//! use warren_store::{Message, QueueDef, Store};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let (store, recovery) = Store::open(dir.path()).unwrap();
//! assert!(recovery.queues.is_empty());
//! let store = Arc::new(store);
//! let mut queue = store
//!     .declare_queue(&QueueDef {
//!         vhost: ShortString::from_static("/"),
//!         name: ShortString::from_static("orders"),
//!         auto_delete: false,
//!         arguments: Bytes::new(),
//!     })
//!     .unwrap();
//! let message = Message::new(
//!     ShortString::new(),
//!     ShortString::from_static("orders"),
//!     Bytes::new(),
//!     Bytes::from_static(b"order 1"),
//! )
//! .with_persistent(true);
//! let pushed = queue.push(Arc::new(message));
//! let confirm_after = pushed.lsn.unwrap();
//!
//! // The sync thread's loop body:
//! let synced = store.wait_and_sync(Duration::from_millis(100)).unwrap().unwrap();
//! assert!(synced >= confirm_after); // basic.ack may go out now
//!
//! drop(queue);
//! store.close().unwrap();
//! drop(store);
//! let (_store, mut recovery) = Store::open(dir.path()).unwrap();
//! let (def, mut queue) = recovery.queues.pop().unwrap();
//! assert_eq!(def.name.as_bytes(), b"orders");
//! assert_eq!(&queue.pop().unwrap().message.body[..], b"order 1");
//! ```

pub mod backend;
mod definitions;
mod error;
mod expiry;
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
pub use queue::{Delivery, Expired, LEVEL_SHIFT, Lsn, Pushed, Queue, level_of_offset};
pub use store::{Recovery, RecoveryReport, Store};
