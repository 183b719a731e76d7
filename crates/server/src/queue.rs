//! A queue as the broker sees it: the store's messages plus the consumers attached to it, behind
//! one short per-queue lock, and the round-robin dispatch that hands ready messages to consumers
//! with prefetch credit.
//!
//! Why a lock per queue rather than a task per queue: a publish then costs one uncontended lock
//! and no task switch or channel hop, and dispatch runs right where the message arrives (in the
//! publisher's connection task, or in the consumer's when an ack frees credit). The lock is never
//! held across an `.await`, and it only guards in-memory work (push, pop, a few atomics, a push
//! into the consumer connection's outbox), so it is held for well under a microsecond.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;
use warren_codec::{FieldTable, ShortString};
use warren_store::{Delivery, Lsn, Message};

use crate::arguments::QueueType;
use crate::levels::Levels;
use crate::memory::MemoryMonitor;

/// Bytes of deliveries waiting in a connection's outbox above which dispatch skips that
/// connection's consumers, so a client that does not read cannot make the broker buffer
/// without bound (REFERENCE row 16).
pub const OUTBOX_HIGH_WATER: usize = 4 * 1024 * 1024;

/// Something another task wants a connection to send; only the connection task writes to its
/// socket, so everything else goes through its [`Outbox`].
pub enum Outbound {
    /// A message for a consumer: the connection assigns the delivery tag and encodes it.
    Deliver {
        /// The consumer it was dispatched to.
        consumer: Arc<Consumer>,
        /// The queue it came from (for ack and requeue).
        queue: Arc<QueueEntity>,
        /// The message, its offset in the queue, and the redelivered flag.
        delivery: Delivery,
    },
    /// The queue of this consumer went away: send `basic.cancel` if the client asked for it.
    Cancel {
        /// The consumer that lost its queue.
        consumer: Arc<Consumer>,
    },
}

/// A connection's inbox of [`Outbound`] items, filled by other tasks and drained in batches by
/// the connection task (one lock to swap the vector out, then encode everything into one
/// write buffer).
#[derive(Default)]
pub struct Outbox {
    /// Items not yet taken by the connection task.
    items: Mutex<Vec<Outbound>>,
    /// Wakes the connection task when `items` goes from empty to non-empty.
    pub notify: Notify,
    /// Approximate bytes of message bodies in `items`.
    pending_bytes: AtomicUsize,
}

impl Outbox {
    /// Queues an item and wakes the connection if it was idle.
    pub fn push(&self, item: Outbound) {
        if let Outbound::Deliver { delivery, .. } = &item {
            self.pending_bytes
                .fetch_add(delivery.message.body.len() + 64, Ordering::Relaxed);
        }
        let was_empty = {
            let mut items = self.items.lock();
            let was_empty = items.is_empty();
            items.push(item);
            was_empty
        };
        if was_empty {
            self.notify.notify_one();
        }
    }

    /// Takes everything queued so far, in order.
    pub fn take(&self, into: &mut Vec<Outbound>) {
        let mut items = self.items.lock();
        std::mem::swap(&mut *items, into);
    }

    /// Called by the connection as it encodes a delivery taken from the outbox.
    pub fn release(&self, body_len: usize) {
        self.pending_bytes
            .fetch_sub(body_len + 64, Ordering::Relaxed);
    }

    /// Whether dispatch should skip this connection's consumers for now.
    pub fn congested(&self) -> bool {
        self.pending_bytes.load(Ordering::Relaxed) > OUTBOX_HIGH_WATER
    }
}

/// Per-channel state a queue needs to decide whether it may deliver to one of the channel's
/// consumers: the channel-wide (global) prefetch and `channel.flow`.
pub struct ChannelShared {
    /// The channel number, for the deliver frame.
    pub number: u16,
    /// `basic.qos` with `global = true`: limit shared by all the channel's consumers (0 = none).
    pub global_prefetch: AtomicU32,
    /// Unacked deliveries to the channel's consumers, counted against `global_prefetch`.
    pub unacked: AtomicU32,
    /// `channel.flow`: false stops deliveries to the channel.
    pub flow: AtomicBool,
    /// The connection's outbox.
    pub outbox: Arc<Outbox>,
}

/// A consumer, shared between its channel and the queue it consumes from.
pub struct Consumer {
    /// The consumer tag.
    pub tag: ShortString,
    /// `no-ack`: deliveries are forgotten by the queue as they leave it.
    pub no_ack: bool,
    /// `exclusive`: no other consumer may use the queue.
    pub exclusive: bool,
    /// Per-consumer prefetch (0 = none), fixed when the consumer was created, as in RabbitMQ 3.x.
    pub prefetch: u32,
    /// Unacked deliveries to this consumer.
    pub unacked: AtomicU32,
    /// The consumer's channel.
    pub channel: Arc<ChannelShared>,
    /// The queue consumed from.
    pub queue: Arc<QueueEntity>,
    /// `x-priority`: consumers of a higher priority get messages while they have credit;
    /// round-robin among equals (0 when not given, as in RabbitMQ).
    pub priority: i64,
}

impl Consumer {
    /// Takes one unit of prefetch credit if the consumer may receive a message now.
    fn try_take_credit(&self) -> bool {
        let channel = &self.channel;
        if !channel.flow.load(Ordering::Relaxed) || channel.outbox.congested() {
            return false;
        }
        if self.no_ack {
            return true;
        }
        if self.prefetch != 0 && self.unacked.load(Ordering::Relaxed) >= self.prefetch {
            return false;
        }
        let global = channel.global_prefetch.load(Ordering::Relaxed);
        let took = channel
            .unacked
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (global == 0 || n < global).then_some(n + 1)
            })
            .is_ok();
        if took {
            self.unacked.fetch_add(1, Ordering::Relaxed);
        }
        took
    }

    /// Gives back the credit of one delivery (acked, rejected, or never sent).
    pub fn release_credit(&self) {
        if self.no_ack {
            return;
        }
        // Saturating: a queue deleted under a consumer may release after a reset.
        let _ = self
            .unacked
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1));
        let _ = self
            .channel
            .unacked
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

/// A queue: its declared properties, and its messages and consumers behind one lock.
pub struct QueueEntity {
    /// The queue name.
    pub name: ShortString,
    /// The vhost name, for reply texts.
    pub vhost: Arc<str>,
    /// `durable` as declared.
    pub durable: bool,
    /// `auto-delete` as declared: deleted when its last consumer goes.
    pub auto_delete: bool,
    /// The id of the connection that owns an exclusive queue.
    pub exclusive_owner: Option<u64>,
    /// `arguments` as declared, compared on redeclare.
    pub arguments: FieldTable,
    /// `x-queue-type`: a quorum queue counts deliveries (`x-delivery-count`, `x-delivery-limit`).
    pub queue_type: QueueType,
    /// `x-delivery-limit` (quorum queues): a message returned more often is dead-lettered
    /// (`delivery_limit`) or dropped. `None`: no limit.
    delivery_limit: Option<u32>,
    /// Messages and consumers.
    inner: Mutex<QueueInner>,
    /// `x-max-length`, `x-max-length-bytes` and `x-overflow`, read once at declare.
    limits: LengthLimits,
    /// `x-message-ttl` in milliseconds.
    message_ttl: Option<u64>,
    /// `x-dead-letter-exchange` and `x-dead-letter-routing-key`.
    dead_letter: Option<DeadLetterTarget>,
    /// Where dead letters are routed (the queue's vhost), set once at declare.
    sink: std::sync::OnceLock<std::sync::Weak<crate::broker::VHost>>,
    /// Set once a message with an expiry was pushed: the vhost's sweep looks at this queue.
    pub expiring: AtomicBool,
    /// `x-expires` in milliseconds: the queue is deleted after being unused that long.
    pub expires: Option<u64>,
    /// `x-single-active-consumer`: one consumer receives at a time.
    single_active: bool,
    /// When the queue was last used (declared, consumed from, read with basic.get), in ms.
    last_used: std::sync::atomic::AtomicU64,
    /// Set once the queue is deleted; late publishes and requeues are dropped.
    deleted: AtomicBool,
    /// The broker-wide memory account.
    memory: Arc<MemoryMonitor>,
}

struct QueueInner {
    /// The store's queue (one per priority level): ready messages in order, unacked ones
    /// by offset.
    messages: Levels,
    /// Consumers in round-robin order.
    consumers: Vec<Arc<Consumer>>,
    /// Index of the consumer to try first on the next delivery.
    next_consumer: usize,
    /// Whether a consumer was ever attached (auto-delete only applies after one).
    had_consumer: bool,
    /// Messages that died under the lock (expired, dropped, rejected), routed to the
    /// dead-letter exchange once the lock is released.
    dead: Vec<(Arc<Message>, &'static str)>,
    /// Quorum queues: how often each message (by offset) was returned to the queue. Only
    /// returned messages have an entry; it leaves with the message.
    delivery_counts: std::collections::HashMap<u64, u32>,
}

/// Where a queue's dead messages go.
#[derive(Debug, Clone)]
pub struct DeadLetterTarget {
    /// The exchange (`""` is the default exchange).
    pub exchange: ShortString,
    /// Replaces the message's routing key when set.
    pub routing_key: Option<ShortString>,
}

/// What became of a message pushed to a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Queued; `Some` when written to the durable log (confirm after that position syncs).
    Queued(Option<Lsn>),
    /// Refused: the queue is full and its overflow is `reject-publish` (the confirm is a nack).
    Rejected,
}

/// A queue's length limits (RabbitMQ's `x-max-length`, `x-max-length-bytes`, `x-overflow`).
#[derive(Debug, Clone, Copy, Default)]
struct LengthLimits {
    max_length: Option<u64>,
    max_length_bytes: Option<u64>,
    /// `reject-publish` (or `reject-publish-dlx`): refuse new messages instead of dropping the
    /// oldest.
    reject_publish: bool,
    /// `reject-publish-dlx`: a refused message is also dead-lettered (`maxlen`).
    dead_letter_refused: bool,
}

impl LengthLimits {
    fn from_arguments(arguments: &FieldTable, queue_type: QueueType) -> Self {
        use warren_codec::FieldValue;
        let int = |name: &[u8]| -> Option<u64> {
            match arguments.get(name)? {
                FieldValue::I8(v) => u64::try_from(*v).ok(),
                FieldValue::U8(v) => Some(u64::from(*v)),
                FieldValue::I16(v) => u64::try_from(*v).ok(),
                FieldValue::U16(v) => Some(u64::from(*v)),
                FieldValue::I32(v) => u64::try_from(*v).ok(),
                FieldValue::U32(v) => Some(u64::from(*v)),
                FieldValue::I64(v) => u64::try_from(*v).ok(),
                _ => None,
            }
        };
        let overflow = match arguments.get(b"x-overflow") {
            Some(FieldValue::LongString(v)) => &v[..],
            _ => b"drop-head",
        };
        // RabbitMQ 3.10's quorum queues take `reject-publish-dlx` and act as `drop-head`.
        let dead_letter_refused =
            overflow == b"reject-publish-dlx" && queue_type != QueueType::Quorum;
        LengthLimits {
            max_length: int(b"x-max-length"),
            max_length_bytes: int(b"x-max-length-bytes"),
            reject_publish: overflow == b"reject-publish" || dead_letter_refused,
            dead_letter_refused,
        }
    }
}

/// Why a consumer could not be attached.
pub enum AttachError {
    /// The queue has an exclusive consumer, or an exclusive one was asked for a used queue.
    ExclusiveInUse,
    /// The queue was deleted meanwhile.
    Deleted,
}

impl QueueEntity {
    /// A queue holding `messages`: a new transient `warren_store::Queue`, one from the durable
    /// store (`Store::declare_queue`), or one recovered at start-up.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: ShortString,
        vhost: Arc<str>,
        durable: bool,
        auto_delete: bool,
        exclusive_owner: Option<u64>,
        arguments: FieldTable,
        memory: Arc<MemoryMonitor>,
        messages: warren_store::Queue,
    ) -> Self {
        memory.add(
            usize::try_from(messages.ready_bytes() + messages.unacked_bytes())
                .unwrap_or(usize::MAX),
        );
        let queue_type = QueueType::of(&arguments);
        let limits = LengthLimits::from_arguments(&arguments, queue_type);
        // RabbitMQ 3.10 ignores a limit that is not an integer and reads a negative one as 0.
        let delivery_limit = match arguments.get(b"x-delivery-limit") {
            Some(value) if queue_type == QueueType::Quorum => crate::arguments::integer(value)
                .map(|n| u32::try_from(n.max(0)).unwrap_or(u32::MAX)),
            _ => None,
        };
        let recovered_any = messages.ready_count() > 0;
        // x-max-priority: RabbitMQ caps it at 255. A durable queue's levels share its log, and
        // recovery puts each message back in its level (see `Levels`).
        let max_priority = integer_argument(&arguments, b"x-max-priority")
            .map(|max| u8::try_from(max).unwrap_or(u8::MAX));
        let message_ttl = integer_argument(&arguments, b"x-message-ttl");
        let dead_letter = match arguments.get(b"x-dead-letter-exchange") {
            Some(warren_codec::FieldValue::LongString(exchange)) => {
                ShortString::from_bytes(exchange.clone())
                    .ok()
                    .map(|exchange| DeadLetterTarget {
                        exchange,
                        routing_key: match arguments.get(b"x-dead-letter-routing-key") {
                            Some(warren_codec::FieldValue::LongString(key)) => {
                                ShortString::from_bytes(key.clone()).ok()
                            }
                            _ => None,
                        },
                    })
            }
            _ => None,
        };
        QueueEntity {
            queue_type,
            delivery_limit,
            limits,
            message_ttl,
            dead_letter,
            sink: std::sync::OnceLock::new(),
            // Recovered messages may carry deadlines (the store keeps them in its log).
            expiring: AtomicBool::new(recovered_any),
            expires: integer_argument(&arguments, b"x-expires"),
            single_active: matches!(
                arguments.get(b"x-single-active-consumer"),
                Some(warren_codec::FieldValue::Bool(true))
            ),
            last_used: std::sync::atomic::AtomicU64::new(now_ms()),
            name,
            vhost,
            durable,
            auto_delete,
            exclusive_owner,
            arguments,
            inner: Mutex::new(QueueInner {
                messages: Levels::new(messages, max_priority),
                consumers: Vec::new(),
                next_consumer: 0,
                had_consumer: false,
                dead: Vec::new(),
                delivery_counts: std::collections::HashMap::new(),
            }),
            deleted: AtomicBool::new(false),
            memory,
        }
    }

    /// Whether the queue was deleted.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Appends a published message and hands out whatever the consumers can take. Returns the
    /// log position to wait for before confirming, when the message was written to disk.
    pub fn publish(self: &Arc<Self>, mut message: Arc<Message>) -> Published {
        if self.is_deleted() {
            return Published::Queued(None);
        }
        if self.queue_type == QueueType::Quorum && !message.persistent {
            // A quorum queue keeps every message on disk, whatever its delivery mode, as
            // RabbitMQ's do; what consumers see is unchanged.
            message = Arc::new(Message::clone(&message).with_persistent(true));
        }
        if let Some(ttl) = self.message_ttl {
            // The queue's TTL counts from now; the earlier of it and the message's own wins.
            // Other queues share the message, so this queue gets its own (cheap) copy.
            let deadline = now_ms().saturating_add(ttl);
            if message.expires_at_ms.is_none_or(|at| at > deadline) {
                let mut copy = Message::clone(&message);
                copy.expires_at_ms = Some(deadline);
                message = Arc::new(copy);
            }
        }
        // Load first: a swap on every publish would write the shared cache line.
        if message.expires_at_ms.is_some()
            && !self.expiring.load(Ordering::Relaxed)
            && !self.expiring.swap(true, Ordering::Relaxed)
            && let Some(vhost) = self.sink.get().and_then(std::sync::Weak::upgrade)
        {
            vhost.register_expiring(Arc::downgrade(self));
        }
        let (outcome, dead) = {
            let mut inner = self.inner.lock();
            let outcome = self.push_locked(&mut inner, message);
            (outcome, std::mem::take(&mut inner.dead))
        };
        self.dead_letter(dead);
        outcome
    }

    fn push_locked(
        self: &Arc<Self>,
        inner: &mut QueueInner,
        mut message: Arc<Message>,
    ) -> Published {
        // A message that will wait behind a real backlog, and that no other queue shares,
        // gets its own small allocation, so it stops pinning the connection's read buffer
        // (whole 64 KiB chunks otherwise stay alive for a few small messages each). A short
        // queue (a consumer's prefetch window) is left alone: the copy would cost more CPU
        // than the memory it saves for a moment.
        if inner.messages.ready_count() >= COMPACT_AFTER_READY && Arc::strong_count(&message) == 1 {
            message = compact(message);
        }
        let body_len = message.body.len();
        let limits = &self.limits;
        let full = limits
            .max_length
            .is_some_and(|max| inner.messages.ready_count() as u64 >= max)
            || limits
                .max_length_bytes
                .is_some_and(|max| inner.messages.ready_bytes() + body_len as u64 > max);
        let refused = if self.queue_type == QueueType::Quorum {
            // RabbitMQ 3.10's quorum queues refuse only once they are over the limit, so they
            // take one message more than a classic queue.
            limits
                .max_length
                .is_some_and(|max| inner.messages.ready_count() as u64 > max)
                || limits
                    .max_length_bytes
                    .is_some_and(|max| inner.messages.ready_bytes() > max)
        } else {
            full
        };
        if limits.reject_publish && refused {
            if limits.dead_letter_refused {
                self.died(inner, message, "maxlen");
            }
            return Published::Rejected;
        }
        self.memory.add(body_len);
        let pushed = inner.messages.push(message);
        if full && !limits.reject_publish {
            // drop-head (RabbitMQ's default overflow): the oldest ready messages make room.
            while limits
                .max_length
                .is_some_and(|max| inner.messages.ready_count() as u64 > max)
                || limits
                    .max_length_bytes
                    .is_some_and(|max| inner.messages.ready_bytes() > max)
            {
                match inner.messages.pop_no_ack() {
                    Some(dropped) => {
                        forget_count(inner, dropped.offset);
                        self.memory.sub(dropped.message.body.len());
                        self.died(inner, dropped.message, "maxlen");
                    }
                    None => break,
                }
            }
        }
        self.dispatch_locked(inner);
        Published::Queued(pushed.lsn)
    }

    /// Records a dead message for the dead-letter exchange, if the queue has one.
    fn died(&self, inner: &mut QueueInner, message: Arc<Message>, reason: &'static str) {
        if self.dead_letter.is_some() {
            inner.dead.push((message, reason));
        }
    }

    /// Takes out every ready message whose deadline has passed, wherever it sits in the queue
    /// (RabbitMQ only expires at the head), through the store's expiry index: no scan, and
    /// nothing to do until the soonest deadline. Dead-lettered soonest deadline first. Returns
    /// the time it used, or `None` when no message of the queue ever had a deadline.
    fn expire_locked(&self, inner: &mut QueueInner) -> Option<u64> {
        if !self.expiring.load(Ordering::Relaxed) {
            return None;
        }
        let now = now_ms();
        if inner.messages.next_expiry().is_none_or(|at| at > now) {
            return Some(now);
        }
        // A body paged out to disk is read back only to dead-letter it. (A quorum queue's
        // delivery count of an expired returned message stays until the queue goes: the index
        // does not say which offsets it took, and offsets are never reused.)
        let read_back = self.dead_letter.is_some();
        for expired in inner.messages.expire(now, read_back) {
            self.memory
                .sub(usize::try_from(expired.body_len).unwrap_or(usize::MAX));
            if let Some(message) = expired.message {
                self.died(inner, message, "expired");
            }
        }
        Some(now)
    }

    /// Takes the next ready message for a consumer or `basic.get`, never an expired one: the
    /// index catches nearly all of them first, but a message recovered without its deadline in
    /// the index (one that was fanned out to several durable queues) is only known at the head.
    /// `now` is what `expire_locked` returned just before (one clock read per dispatch).
    fn take_next(
        &self,
        inner: &mut QueueInner,
        no_ack: bool,
        now: Option<u64>,
    ) -> Option<Delivery> {
        loop {
            let delivery = if no_ack {
                inner.messages.pop_no_ack()
            } else {
                inner.messages.pop()
            }?;
            let expired = match (delivery.message.expires_at_ms, now) {
                (Some(at), Some(now)) => at <= now,
                _ => false,
            };
            if !expired {
                return Some(delivery);
            }
            if !no_ack {
                inner.messages.ack(delivery.offset);
            }
            forget_count(inner, delivery.offset);
            self.memory.sub(delivery.message.body.len());
            self.died(inner, delivery.message, "expired");
        }
    }

    /// Records a use of the queue, for `x-expires`.
    pub fn touch(&self) {
        self.last_used.store(now_ms(), Ordering::Relaxed);
    }

    /// Whether `x-expires` has run out: no consumer and no use for that long.
    pub fn unused_for_too_long(&self) -> bool {
        let Some(expires) = self.expires else {
            return false;
        };
        let idle = now_ms().saturating_sub(self.last_used.load(Ordering::Relaxed));
        idle >= expires && self.inner.lock().consumers.is_empty()
    }

    /// Expires what is due (the vhost's sweep calls this for queues with expiring messages).
    pub fn expire(self: &Arc<Self>) {
        let dead = {
            let mut inner = self.inner.lock();
            self.expire_locked(&mut inner);
            std::mem::take(&mut inner.dead)
        };
        self.dead_letter(dead);
    }

    /// Sets where dead letters are routed (once, when the queue is registered in its vhost).
    pub fn set_dead_letter_sink(&self, vhost: std::sync::Weak<crate::broker::VHost>) {
        let _ = self.sink.set(vhost);
    }

    /// Routes messages that died to the dead-letter exchange, outside the queue's lock.
    fn dead_letter(self: &Arc<Self>, dead: Vec<(Arc<Message>, &'static str)>) {
        if dead.is_empty() {
            return;
        }
        let (Some(target), Some(vhost)) = (
            &self.dead_letter,
            self.sink.get().and_then(std::sync::Weak::upgrade),
        ) else {
            return;
        };
        for (message, reason) in dead {
            vhost.dead_letter(self, target, &message, reason);
        }
    }

    /// Takes the messages out (the queue is being deleted), for `Store::delete_queue`.
    pub fn take_messages(&self) -> warren_store::Queue {
        let messages = self.inner.lock().messages.take_all();
        self.memory.sub(
            usize::try_from(messages.ready_bytes() + messages.unacked_bytes())
                .unwrap_or(usize::MAX),
        );
        messages
    }

    /// Hands ready messages to consumers with credit, round-robin.
    pub fn dispatch(self: &Arc<Self>) {
        let dead = {
            let mut inner = self.inner.lock();
            self.dispatch_locked(&mut inner);
            std::mem::take(&mut inner.dead)
        };
        self.dead_letter(dead);
    }

    fn dispatch_locked(self: &Arc<Self>, inner: &mut QueueInner) {
        let now = self.expire_locked(inner);
        let n_consumers = inner.consumers.len();
        if n_consumers == 0 {
            return;
        }
        while inner.messages.ready_count() > 0 {
            // x-single-active-consumer: only the first consumer (by priority, then by arrival)
            // receives; the next one takes over when it goes.
            let candidates = if self.single_active {
                inner.consumers.get(..1).unwrap_or_default()
            } else {
                &inner.consumers[..]
            };
            let Some(idx) = choose_consumer(candidates, inner.next_consumer) else {
                break;
            };
            let Some(consumer) = inner.consumers.get(idx).cloned() else {
                break;
            };
            inner.next_consumer = (idx + 1) % n_consumers;
            // A message that expired while waiting for credit is not delivered.
            let Some(delivery) = self.take_next(inner, consumer.no_ack, now) else {
                consumer.release_credit();
                break;
            };
            let delivery = self.counted(inner, delivery, consumer.no_ack, false);
            if consumer.no_ack {
                self.memory.sub(delivery.message.body.len());
            }
            let outbox = Arc::clone(&consumer.channel.outbox);
            outbox.push(Outbound::Deliver {
                consumer,
                queue: Arc::clone(self),
                delivery,
            });
        }
    }

    /// `basic.get`: the next ready message and the number left, or `None` when empty.
    pub fn get(self: &Arc<Self>, no_ack: bool) -> Option<(Delivery, u32)> {
        self.touch();
        let (result, dead) = {
            let mut inner = self.inner.lock();
            let now = self.expire_locked(&mut inner);
            let result = self.get_locked(&mut inner, no_ack, now);
            (result, std::mem::take(&mut inner.dead))
        };
        self.dead_letter(dead);
        result
    }

    fn get_locked(
        &self,
        inner: &mut QueueInner,
        no_ack: bool,
        now: Option<u64>,
    ) -> Option<(Delivery, u32)> {
        let delivery = self.take_next(inner, no_ack, now)?;
        let delivery = self.counted(inner, delivery, no_ack, true);
        if no_ack {
            self.memory.sub(delivery.message.body.len());
        }
        let left = u32::try_from(inner.messages.ready_count()).unwrap_or(u32::MAX);
        Some((delivery, left))
    }

    /// A message rejected without requeue: forgotten, and dead-lettered if the queue says so.
    pub fn reject(self: &Arc<Self>, offset: u64) {
        let dead = {
            let mut inner = self.inner.lock();
            forget_count(&mut inner, offset);
            if let Some(message) = inner.messages.ack(offset)
                && !self.is_deleted()
            {
                self.memory.sub(message.body.len());
                self.died(&mut inner, message, "rejected");
            }
            std::mem::take(&mut inner.dead)
        };
        self.dead_letter(dead);
    }

    /// Forgets an acknowledged message.
    pub fn ack(&self, offset: u64) {
        let mut inner = self.inner.lock();
        forget_count(&mut inner, offset);
        // A deleted queue already gave its bytes back to the memory account.
        if let Some(message) = inner.messages.ack(offset)
            && !self.is_deleted()
        {
            self.memory.sub(message.body.len());
        }
    }

    /// Puts an unacked message back at its original position, flagged redelivered (a quorum
    /// queue counts the return, see [`QueueEntity::return_counted`]). The caller dispatches
    /// afterwards (once per batch).
    pub fn requeue(self: &Arc<Self>, offset: u64) {
        let dead = {
            let mut inner = self.inner.lock();
            if self.is_deleted() {
                inner.messages.ack(offset);
                return;
            }
            if self.queue_type == QueueType::Quorum {
                self.return_counted(&mut inner, offset);
            } else {
                inner.messages.requeue(offset);
            }
            std::mem::take(&mut inner.dead)
        };
        self.dead_letter(dead);
    }

    /// A quorum queue's return, as RabbitMQ 3.10 does it: the message's delivery count goes
    /// up; past `x-delivery-limit` it dies (`delivery_limit`); under a limit it goes back to the
    /// head of the queue, and with no limit to the tail.
    fn return_counted(&self, inner: &mut QueueInner, offset: u64) {
        let count = inner
            .delivery_counts
            .remove(&offset)
            .unwrap_or(0)
            .saturating_add(1);
        match self.delivery_limit {
            Some(limit) if count > limit => {
                if let Some(message) = inner.messages.ack(offset) {
                    self.memory.sub(message.body.len());
                    self.died(inner, message, "delivery_limit");
                }
            }
            Some(_) => {
                if inner.messages.requeue(offset) {
                    inner.delivery_counts.insert(offset, count);
                }
            }
            None => {
                if let Some(message) = inner.messages.ack(offset) {
                    let pushed = inner.messages.push(message);
                    inner.delivery_counts.insert(pushed.offset, count);
                }
            }
        }
    }

    /// A quorum queue's delivery carries its count: `redelivered` once returned, and the
    /// `x-delivery-count` header RabbitMQ 3.10 adds (to a `basic.get` always, to a consumer's
    /// delivery once the message was returned). The queue keeps the message as published.
    fn counted(
        &self,
        inner: &mut QueueInner,
        mut delivery: Delivery,
        no_ack: bool,
        get: bool,
    ) -> Delivery {
        if self.queue_type != QueueType::Quorum {
            return delivery;
        }
        let count = if no_ack {
            inner.delivery_counts.remove(&delivery.offset)
        } else {
            inner.delivery_counts.get(&delivery.offset).copied()
        }
        .unwrap_or(0);
        if count > 0 {
            delivery.redelivered = true;
        }
        if count > 0 || get {
            delivery.message = with_delivery_count(&delivery.message, count);
        }
        delivery
    }

    /// Puts back a no-ack message that was dispatched but never sent (its consumer went away
    /// before the connection encoded it): at its original place, with its redelivered flag as
    /// it was (`Queue::restore`). The caller dispatches afterwards.
    pub fn return_unsent(&self, delivery: Delivery) {
        let mut inner = self.inner.lock();
        if self.is_deleted() {
            return;
        }
        self.memory.add(delivery.message.body.len());
        inner.messages.restore(delivery);
    }

    /// Attaches a consumer, then dispatches to it.
    pub fn attach(self: &Arc<Self>, consumer: Arc<Consumer>) -> Result<(), AttachError> {
        let mut inner = self.inner.lock();
        if self.is_deleted() {
            return Err(AttachError::Deleted);
        }
        if inner.consumers.iter().any(|c| c.exclusive)
            || (consumer.exclusive && !inner.consumers.is_empty())
        {
            return Err(AttachError::ExclusiveInUse);
        }
        // Sorted by priority, highest first; a new consumer goes after its equals.
        let at = inner
            .consumers
            .iter()
            .position(|c| c.priority < consumer.priority)
            .unwrap_or(inner.consumers.len());
        inner.consumers.insert(at, consumer);
        inner.had_consumer = true;
        self.touch();
        self.dispatch_locked(&mut inner);
        Ok(())
    }

    /// Detaches a consumer. Returns true when the queue is auto-delete and now unused, in which
    /// case the caller deletes it.
    pub fn detach(&self, consumer: &Arc<Consumer>) -> bool {
        self.touch();
        let mut inner = self.inner.lock();
        inner.consumers.retain(|c| !Arc::ptr_eq(c, consumer));
        self.auto_delete && inner.had_consumer && inner.consumers.is_empty() && !self.is_deleted()
    }

    /// Ready messages and consumers, for `queue.declare-ok`.
    pub fn counts(self: &Arc<Self>) -> (u32, u32) {
        self.expire();
        let inner = self.inner.lock();
        (
            u32::try_from(inner.messages.ready_count()).unwrap_or(u32::MAX),
            u32::try_from(inner.consumers.len()).unwrap_or(u32::MAX),
        )
    }

    /// Whether the queue has no messages at all (ready or unacked), for `if-empty`.
    pub fn is_empty(&self) -> bool {
        let inner = self.inner.lock();
        inner.messages.ready_count() == 0
    }

    /// Whether the queue has consumers, for `if-unused`.
    pub fn has_consumers(&self) -> bool {
        !self.inner.lock().consumers.is_empty()
    }

    /// Drops every ready message; returns how many.
    pub fn purge(&self) -> u32 {
        // A quorum queue's delivery counts stay: unacked messages keep theirs, and entries of
        // purged returned messages (offsets are never reused) go with the queue.
        let mut inner = self.inner.lock();
        let bytes = inner.messages.ready_bytes();
        let n = inner.messages.purge();
        self.memory
            .sub(usize::try_from(bytes).unwrap_or(usize::MAX));
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Marks the queue deleted, drops its messages and tells its consumers' connections.
    /// Returns the number of ready messages it held.
    pub fn delete(&self) -> u32 {
        let (consumers, n_ready) = {
            let mut inner = self.inner.lock();
            if self.deleted.swap(true, Ordering::AcqRel) {
                return 0;
            }
            let n_ready = u32::try_from(inner.messages.ready_count()).unwrap_or(u32::MAX);
            let bytes = inner.messages.ready_bytes() + inner.messages.unacked_bytes();
            inner.messages.purge();
            self.memory
                .sub(usize::try_from(bytes).unwrap_or(usize::MAX));
            (std::mem::take(&mut inner.consumers), n_ready)
        };
        for consumer in consumers {
            let outbox = Arc::clone(&consumer.channel.outbox);
            outbox.push(Outbound::Cancel { consumer });
        }
        n_ready
    }
}

/// Forgets a quorum queue's delivery count for a message leaving the queue.
fn forget_count(inner: &mut QueueInner, offset: u64) {
    if !inner.delivery_counts.is_empty() {
        inner.delivery_counts.remove(&offset);
    }
}

/// A copy of `message` whose headers carry `x-delivery-count` (a long, as RabbitMQ sends it).
fn with_delivery_count(message: &Message, count: u32) -> Arc<Message> {
    let mut properties = crate::broker::decode_properties(&message.properties, message.body.len());
    let headers = properties.headers.get_or_insert_with(FieldTable::new);
    headers.insert(
        ShortString::from_static("x-delivery-count"),
        warren_codec::FieldValue::I64(i64::from(count)),
    );
    crate::broker::sort_headers(headers);
    let mut raw = bytes::BytesMut::new();
    properties.encode(&mut raw);
    let mut copy = Message::clone(message);
    copy.properties = raw.freeze();
    Arc::new(copy)
}

/// Paging (see `pager.rs`): the pager thread surveys every queue and moves bodies between
/// memory and disk, one bounded round per lock, so publishers and consumers of the queue wait
/// for at most one round.
impl QueueEntity {
    /// Counts and bytes for the memory account.
    pub fn memory(&self) -> crate::memory::QueueMemory {
        self.inner.lock().messages.memory()
    }

    /// Pages out bodies past the first `keep` ready messages, about `max_bytes` of them at most.
    /// Returns the body bytes paged out.
    pub fn page_out(&self, keep: usize, max_bytes: usize) -> u64 {
        let mut inner = self.inner.lock();
        if self.is_deleted() {
            return 0;
        }
        inner.messages.page_out(keep, max_bytes)
    }

    /// Reads back paged-out bodies among the next `window` messages to be delivered, at most
    /// `max_loads` of them. Returns how many were loaded.
    pub fn page_in(&self, window: usize, max_loads: usize) -> usize {
        let mut inner = self.inner.lock();
        if self.is_deleted() {
            return 0;
        }
        inner.messages.page_in(window, max_loads)
    }
}

/// Messages queued behind at least this many ready ones are compacted.
const COMPACT_AFTER_READY: usize = 1024;

/// Bodies up to this size are copied out of the read buffer when they queue up.
const COMPACT_MAX_BODY: usize = 16 * 1024;

/// Copies a message's names, properties and body into one exact-size allocation.
fn compact(message: Arc<Message>) -> Arc<Message> {
    if message.body.len() > COMPACT_MAX_BODY {
        return message;
    }
    let mut owned = Arc::try_unwrap(message).unwrap_or_else(|shared| Message::clone(&shared));
    let lengths = [
        owned.exchange.len(),
        owned.routing_key.len(),
        owned.properties.len(),
    ];
    let mut buf = bytes::BytesMut::with_capacity(lengths.iter().sum::<usize>() + owned.body.len());
    buf.extend_from_slice(owned.exchange.as_bytes());
    buf.extend_from_slice(owned.routing_key.as_bytes());
    buf.extend_from_slice(&owned.properties);
    buf.extend_from_slice(&owned.body);
    let mut all = buf.freeze();
    let [exchange_len, key_len, properties_len] = lengths;
    let exchange = all.split_to(exchange_len);
    let routing_key = all.split_to(key_len);
    owned.properties = all.split_to(properties_len);
    owned.body = all;
    // The lengths came from short strings, so these cannot fail; keep the old ones if they do.
    if let Ok(exchange) = ShortString::from_bytes(exchange) {
        owned.exchange = exchange;
    }
    if let Ok(routing_key) = ShortString::from_bytes(routing_key) {
        owned.routing_key = routing_key;
    }
    Arc::new(owned)
}

/// Milliseconds since the Unix epoch (message expiry times).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A non-negative integer queue argument.
fn integer_argument(arguments: &FieldTable, name: &[u8]) -> Option<u64> {
    use warren_codec::FieldValue;
    match arguments.get(name)? {
        FieldValue::I8(v) => u64::try_from(*v).ok(),
        FieldValue::U8(v) => Some(u64::from(*v)),
        FieldValue::I16(v) => u64::try_from(*v).ok(),
        FieldValue::U16(v) => Some(u64::from(*v)),
        FieldValue::I32(v) => u64::try_from(*v).ok(),
        FieldValue::U32(v) => Some(u64::from(*v)),
        FieldValue::I64(v) => u64::try_from(*v).ok(),
        _ => None,
    }
}

/// The consumer the next message goes to: the first priority level (highest first) with a
/// consumer that has credit, round-robin inside the level from `next`. Takes the credit.
fn choose_consumer(consumers: &[Arc<Consumer>], next: usize) -> Option<usize> {
    let mut lo = 0;
    while let Some(first) = consumers.get(lo) {
        let level = first.priority;
        let len = consumers
            .get(lo..)
            .unwrap_or_default()
            .iter()
            .take_while(|c| c.priority == level)
            .count();
        let hi = lo + len;
        let start = if (lo..hi).contains(&next) {
            next - lo
        } else {
            0
        };
        for i in 0..len {
            let idx = lo + (start + i) % len;
            if consumers.get(idx).is_some_and(|c| c.try_take_credit()) {
                return Some(idx);
            }
        }
        lo = hi;
    }
    None
}

/// A unique name with RabbitMQ's shape: `amq.gen-` or `amq.ctag-` followed by 22 characters of
/// URL-safe base64 of 16 random bytes.
pub fn generated_name(prefix: &str) -> ShortString {
    use base64::Engine as _;
    let random: [u8; 16] = rand::random();
    let suffix = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random);
    let name = format!("{prefix}{suffix}");
    ShortString::from_bytes(Bytes::from(name)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_keeps_every_field_and_drops_the_big_buffer() {
        let read_buffer = bytes::Bytes::from(vec![7u8; 64 * 1024]);
        let mut message = Message::new(
            ShortString::from_static("amq.direct"),
            ShortString::from_static("key"),
            read_buffer.slice(0..10),
            read_buffer.slice(10..110),
        )
        .with_persistent(true);
        message.expires_at_ms = Some(42);
        message.priority = Some(3);
        let compacted = compact(Arc::new(message.clone()));
        assert_eq!(*compacted, message);
        drop(message);
        // The compacted copy no longer shares the 64 KiB buffer.
        assert!(read_buffer.is_unique());
    }

    #[test]
    fn large_bodies_are_left_alone() {
        let body = bytes::Bytes::from(vec![1u8; COMPACT_MAX_BODY + 1]);
        let message = Arc::new(Message::new(
            ShortString::new(),
            ShortString::new(),
            bytes::Bytes::new(),
            body.clone(),
        ));
        let same = compact(Arc::clone(&message));
        assert!(Arc::ptr_eq(&same, &message));
    }
}
