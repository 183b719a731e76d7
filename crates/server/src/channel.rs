//! One AMQP channel: content assembly for `basic.publish`, one handler per method, consumers,
//! delivery tags and unacked messages, publisher confirms and transactions.
//!
//! ```text
//!            basic.publish            header (body_size > 0)          last body frame
//!   Idle ------------------> Header ------------------------> Body -----------------> Idle
//!     ^                        | header with body_size = 0                              (publish)
//!     +------------------------+ (publish)
//!   Any other frame while a content is being assembled is 505 UNEXPECTED_FRAME.
//! ```
//!
//! Handlers return `Result<After, AmqpError>`; `connection.rs` turns errors into closes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use bytes::{Bytes, BytesMut};
use warren_codec::frame::ContentHeader;
use warren_codec::generated as m;
use warren_codec::{BasicProperties, Method, ReplyCode, ShortString};
use warren_store::{Delivery, Lsn, Message};

use crate::broker::{Broker, QueueDeclare, SyncState, VHost};
use crate::config::{HARD_MAX_MESSAGE_SIZE, Limits};
use crate::connection::{ClientCaps, Out};
use crate::error::{AmqpError, ChannelError, ConnectionError};
use crate::queue::{
    AttachError, ChannelShared, Consumer, Outbox, Published, QueueEntity, generated_name,
};

/// The pseudo-queue of RabbitMQ's direct reply-to.
const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// What the connection must do after a handler returned.
pub enum After {
    /// Nothing more.
    Nothing,
    /// Send out deliveries already dispatched to this consumer, forget it, then answer
    /// `basic.cancel-ok` if `reply`.
    CancelConsumer {
        /// The consumer's tag.
        tag: ShortString,
        /// Whether to send `cancel-ok` (false for `nowait`).
        reply: bool,
    },
}

/// The connection's context lent to a channel handler.
pub struct ConnCtx<'a> {
    /// The connection id (owner of exclusive queues).
    pub conn_id: u64,
    /// The broker.
    pub broker: &'a Arc<Broker>,
    /// The vhost opened by the connection.
    pub vhost: &'a Arc<VHost>,
    /// The output buffer.
    pub out: &'a mut Out,
    /// What the client said it supports.
    pub caps: ClientCaps,
    /// Exclusive queues of the connection.
    pub exclusive_queues: &'a mut Vec<Arc<QueueEntity>>,
    /// Channels with confirms to flush at the end of the batch.
    pub confirm_dirty: &'a mut Vec<u16>,
    /// The authenticated user (checked against the `user_id` property).
    pub user: &'a str,
}

/// A publish whose content is complete.
pub struct Publish {
    exchange: ShortString,
    routing_key: ShortString,
    mandatory: bool,
    properties: BasicProperties,
    raw_properties: Bytes,
    body: Bytes,
}

/// Content assembly in progress. Kept inline (not boxed): one per channel, and boxing would
/// cost an allocation per publish.
#[allow(clippy::large_enum_variant)]
enum Assembly {
    Idle,
    Header(m::BasicPublish),
    Body {
        publish: m::BasicPublish,
        header: ContentHeader,
        body_size: u64,
        parts: BodyParts,
    },
}

/// Body frames received so far: one `Bytes` kept as is (zero-copy), or a buffer once a second
/// frame arrives.
enum BodyParts {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl BodyParts {
    fn len(&self) -> usize {
        match self {
            BodyParts::Empty => 0,
            BodyParts::One(b) => b.len(),
            BodyParts::Many(b) => b.len(),
        }
    }

    fn push(&mut self, payload: Bytes, body_size: usize) {
        *self = match std::mem::replace(self, BodyParts::Empty) {
            BodyParts::Empty => BodyParts::One(payload),
            BodyParts::One(first) => {
                // Capacity from what arrived, not from the declared size: a client that declares
                // a large body and sends little costs little.
                let mut buf = BytesMut::with_capacity(
                    (first.len() * 4)
                        .min(body_size)
                        .max(first.len() + payload.len()),
                );
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&payload);
                BodyParts::Many(buf)
            }
            BodyParts::Many(mut buf) => {
                buf.extend_from_slice(&payload);
                BodyParts::Many(buf)
            }
        }
    }

    fn freeze(self) -> Bytes {
        match self {
            BodyParts::Empty => Bytes::new(),
            BodyParts::One(b) => b,
            BodyParts::Many(b) => b.freeze(),
        }
    }
}

/// A delivery waiting for its ack.
struct Unacked {
    tag: u64,
    queue: Arc<QueueEntity>,
    offset: u64,
    /// The consumer it went to (None for `basic.get`), whose credit the ack gives back.
    consumer: Option<Arc<Consumer>>,
    /// When it was delivered, for the consumer acknowledgement timeout.
    at: tokio::time::Instant,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum AckKind {
    Ack,
    Reject { requeue: bool },
}

/// Publisher confirms or transactions, mutually exclusive.
enum Mode {
    Plain,
    Confirm {
        /// The tag the next publish gets (from 1).
        next_tag: u64,
        /// Confirms not yet sent that need no sync: (first, last).
        pending: Option<(u64, u64)>,
        /// Confirms waiting for the store's sync: (tag, log position, nack?), in tag order. A
        /// publish
        /// that needs no sync still queues here behind one that does, so acks stay in order.
        waiting: VecDeque<(u64, Lsn, bool)>,
    },
    Tx {
        publishes: Vec<Publish>,
        acks: Vec<(AckKind, Vec<Unacked>)>,
        /// Commits whose commit-ok waits for the store's sync, by log position, in order.
        commits: VecDeque<Lsn>,
    },
}

/// One open channel.
pub struct Channel {
    number: u16,
    /// Shared with this channel's consumers (limits, flow, outbox).
    shared: Arc<ChannelShared>,
    /// We sent `channel.close` and wait for `close-ok`: other frames are dropped.
    pub closing: bool,
    assembly: Assembly,
    next_delivery_tag: u64,
    unacked: VecDeque<Unacked>,
    /// Consumers by tag.
    pub consumers: HashMap<ShortString, Arc<Consumer>>,
    /// `basic.qos` with `global = false`: the prefetch new consumers get.
    consumer_prefetch: u32,
    mode: Mode,
    /// The name of this channel's direct reply-to queue, once it consumed
    /// `amq.rabbitmq.reply-to`.
    reply_to: Option<ShortString>,
    /// The queue last declared on this channel, for the empty-name shortcut.
    last_queue: Option<ShortString>,
    /// Scratch space for routing, reused from one publish to the next.
    route_buf: warren_router::RouteBuf<Arc<QueueEntity>>,
}

impl Channel {
    /// A freshly opened channel.
    pub fn new(number: u16, outbox: Arc<Outbox>) -> Self {
        Channel {
            number,
            shared: Arc::new(ChannelShared {
                number,
                global_prefetch: AtomicU32::new(0),
                unacked: AtomicU32::new(0),
                flow: AtomicBool::new(true),
                outbox,
            }),
            closing: false,
            assembly: Assembly::Idle,
            next_delivery_tag: 1,
            unacked: VecDeque::new(),
            consumers: HashMap::new(),
            consumer_prefetch: 0,
            mode: Mode::Plain,
            reply_to: None,
            last_queue: None,
            route_buf: warren_router::RouteBuf::new(),
        }
    }

    // ===== Content assembly =====

    /// A content header frame.
    pub fn recv_header(
        &mut self,
        header: ContentHeader,
        limits: &Limits,
    ) -> Result<Option<Publish>, AmqpError> {
        let Assembly::Header(publish) = std::mem::replace(&mut self.assembly, Assembly::Idle)
        else {
            return Err(ConnectionError::unexpected_frame(
                "expected method frame, got non method frame instead",
            )
            .into());
        };
        if header.class_id != 60 {
            return Err(ConnectionError::unexpected_frame(format!(
                "expected content header for class 60, got one for class {} instead",
                header.class_id
            ))
            .on(60, 40)
            .into());
        }
        if header.body_size > HARD_MAX_MESSAGE_SIZE {
            return Err(ConnectionError::frame_error(format!(
                "message size {} is larger than the maximum {HARD_MAX_MESSAGE_SIZE}",
                header.body_size
            ))
            .into());
        }
        if header.body_size > limits.max_message_size {
            return Err(ChannelError::precondition_failed(format!(
                "message size {} is larger than configured max size {}",
                header.body_size, limits.max_message_size
            ))
            .on(60, 40)
            .into());
        }
        if header.body_size == 0 {
            return Ok(Some(complete(publish, header, Bytes::new())));
        }
        let body_size = header.body_size;
        self.assembly = Assembly::Body {
            publish,
            header,
            body_size,
            parts: BodyParts::Empty,
        };
        Ok(None)
    }

    /// A content body frame.
    pub fn recv_body(
        &mut self,
        payload: Bytes,
        _limits: &Limits,
    ) -> Result<Option<Publish>, AmqpError> {
        let Assembly::Body {
            body_size, parts, ..
        } = &mut self.assembly
        else {
            return Err(ConnectionError::unexpected_frame(
                "expected method frame, got non method frame instead",
            )
            .into());
        };
        let size = usize::try_from(*body_size).unwrap_or(usize::MAX);
        if parts.len() + payload.len() > size {
            return Err(ConnectionError::frame_error(format!(
                "content body of {} bytes is larger than the declared {body_size}",
                parts.len() + payload.len()
            ))
            .into());
        }
        parts.push(payload, size);
        if parts.len() < size {
            return Ok(None);
        }
        let Assembly::Body {
            publish,
            header,
            parts,
            ..
        } = std::mem::replace(&mut self.assembly, Assembly::Idle)
        else {
            return Ok(None);
        };
        Ok(Some(complete(publish, header, parts.freeze())))
    }

    // ===== Methods =====

    /// One method on this channel (other than open/close, which the connection handles).
    pub fn recv_method(
        &mut self,
        method: Method,
        ctx: &mut ConnCtx<'_>,
    ) -> Result<After, AmqpError> {
        if !matches!(self.assembly, Assembly::Idle) {
            return Err(ConnectionError::unexpected_frame(
                "expected content header for class 60, got non content header frame instead",
            )
            .into());
        }
        let n = self.number;
        match method {
            Method::BasicPublish(publish) => {
                if publish.immediate {
                    return Err(ConnectionError::not_implemented("immediate=true").into());
                }
                self.assembly = Assembly::Header(publish);
            }
            Method::BasicAck(ack) => {
                self.recv_ack(AckKind::Ack, ack.delivery_tag, ack.multiple, ctx)?
            }
            Method::BasicNack(nack) => self.recv_ack(
                AckKind::Reject {
                    requeue: nack.requeue,
                },
                nack.delivery_tag,
                nack.multiple,
                ctx,
            )?,
            Method::BasicReject(reject) => self.recv_ack(
                AckKind::Reject {
                    requeue: reject.requeue,
                },
                reject.delivery_tag,
                false,
                ctx,
            )?,
            Method::BasicQos(qos) => {
                if qos.prefetch_size != 0 {
                    return Err(ConnectionError::not_implemented(format!(
                        "prefetch_size!=0 ({})",
                        qos.prefetch_size
                    ))
                    .into());
                }
                if qos.global {
                    self.shared
                        .global_prefetch
                        .store(u32::from(qos.prefetch_count), Ordering::Release);
                    self.kick_queues();
                } else {
                    self.consumer_prefetch = u32::from(qos.prefetch_count);
                }
                ctx.out.method(n, m::BasicQosOk {});
            }
            Method::BasicConsume(consume) => return self.recv_consume(consume, ctx),
            Method::BasicCancel(cancel) => {
                let tag = cancel.consumer_tag;
                if let Some(consumer) = self.consumers.get(&tag).cloned() {
                    if consumer.queue.detach(&consumer) {
                        ctx.vhost.delete_queue(&consumer.queue);
                    }
                    return Ok(After::CancelConsumer {
                        tag,
                        reply: !cancel.nowait,
                    });
                }
                // RabbitMQ answers cancel-ok for an unknown tag.
                if !cancel.nowait {
                    ctx.out.method(n, m::BasicCancelOk { consumer_tag: tag });
                }
            }
            Method::BasicGet(get) => self.recv_get(get, ctx)?,
            Method::BasicRecover(recover) => {
                self.recover(recover.requeue)?;
                ctx.out.method(n, m::BasicRecoverOk {});
            }
            Method::BasicRecoverAsync(recover) => self.recover(recover.requeue)?,
            Method::ConfirmSelect(select) => {
                match self.mode {
                    Mode::Tx { .. } => {
                        return Err(ChannelError::precondition_failed(
                            "cannot switch from tx to confirm mode",
                        )
                        .into());
                    }
                    Mode::Plain => {
                        self.mode = Mode::Confirm {
                            next_tag: 1,
                            pending: None,
                            waiting: VecDeque::new(),
                        }
                    }
                    Mode::Confirm { .. } => {}
                }
                if !select.nowait {
                    ctx.out.method(n, m::ConfirmSelectOk {});
                }
            }
            Method::TxSelect(_) => {
                match self.mode {
                    Mode::Confirm { .. } => {
                        return Err(ChannelError::precondition_failed(
                            "cannot switch from confirm to tx mode",
                        )
                        .into());
                    }
                    Mode::Plain => {
                        self.mode = Mode::Tx {
                            publishes: Vec::new(),
                            acks: Vec::new(),
                            commits: VecDeque::new(),
                        }
                    }
                    Mode::Tx { .. } => {}
                }
                ctx.out.method(n, m::TxSelectOk {});
            }
            Method::TxCommit(_) => {
                let Mode::Tx {
                    publishes, acks, ..
                } = &mut self.mode
                else {
                    return Err(
                        ChannelError::precondition_failed("channel is not transactional").into(),
                    );
                };
                let publishes = std::mem::take(publishes);
                let acks = std::mem::take(acks);
                let mut lsn: Option<Lsn> = None;
                for publish in publishes {
                    lsn = lsn.max(self.route(publish, ctx)?);
                }
                for (kind, entries) in acks {
                    self.settle(kind, entries);
                }
                // A commit of persisted messages is answered once they are on disk.
                let Mode::Tx { commits, .. } = &mut self.mode else {
                    return Ok(After::Nothing);
                };
                match lsn.max(commits.back().copied()) {
                    None => ctx.out.method(n, m::TxCommitOk {}),
                    Some(at) => {
                        commits.push_back(at);
                        if !ctx.confirm_dirty.contains(&n) {
                            ctx.confirm_dirty.push(n);
                        }
                    }
                }
            }
            Method::TxRollback(_) => {
                let Mode::Tx {
                    publishes, acks, ..
                } = &mut self.mode
                else {
                    return Err(
                        ChannelError::precondition_failed("channel is not transactional").into(),
                    );
                };
                publishes.clear();
                let acks = std::mem::take(acks);
                // Acks not committed: the messages are unacked again, in tag order.
                for (_, entries) in acks {
                    self.unacked.extend(entries);
                }
                self.unacked.make_contiguous().sort_by_key(|u| u.tag);
                ctx.out.method(n, m::TxRollbackOk {});
            }
            Method::ChannelFlow(flow) => {
                // RabbitMQ 3.x does not let clients pause deliveries this way (use basic.qos).
                if !flow.active {
                    return Err(ConnectionError::not_implemented("active=false").into());
                }
                self.shared.flow.store(flow.active, Ordering::Release);
                if flow.active {
                    self.kick_queues();
                }
                ctx.out.method(
                    n,
                    m::ChannelFlowOk {
                        active: flow.active,
                    },
                );
            }
            Method::ChannelFlowOk(_) => {}
            Method::ExchangeDeclare(declare) => {
                let nowait = declare.nowait;
                ctx.vhost.declare_exchange(&declare)?;
                if !nowait {
                    ctx.out.method(n, m::ExchangeDeclareOk {});
                }
            }
            Method::ExchangeDelete(delete) => {
                ctx.vhost
                    .delete_exchange(&delete.exchange, delete.if_unused)?;
                if !delete.nowait {
                    ctx.out.method(n, m::ExchangeDeleteOk {});
                }
            }
            Method::ExchangeBind(bind) => {
                ctx.vhost.bind_exchange(
                    &bind.destination,
                    &bind.source,
                    &bind.routing_key,
                    &bind.arguments,
                )?;
                if !bind.nowait {
                    ctx.out.method(n, m::ExchangeBindOk {});
                }
            }
            Method::ExchangeUnbind(unbind) => {
                ctx.vhost.unbind_exchange(
                    &unbind.destination,
                    &unbind.source,
                    &unbind.routing_key,
                    &unbind.arguments,
                )?;
                if !unbind.nowait {
                    ctx.out.method(n, m::ExchangeUnbindOk {});
                }
            }
            Method::QueueDeclare(declare) => self.recv_queue_declare(declare, ctx)?,
            Method::QueueBind(bind) => {
                let queue = self.queue_for(&bind.queue, ctx)?;
                // Both empty: the routing key is the last declared queue's name too.
                let routing_key = if bind.queue.is_empty() && bind.routing_key.is_empty() {
                    queue.name.clone()
                } else {
                    bind.routing_key.clone()
                };
                ctx.vhost
                    .bind_queue(&queue, &bind.exchange, &routing_key, &bind.arguments)?;
                if !bind.nowait {
                    ctx.out.method(n, m::QueueBindOk {});
                }
            }
            Method::QueueUnbind(unbind) => {
                let queue = self.queue_for(&unbind.queue, ctx)?;
                ctx.vhost.unbind_queue(
                    &queue,
                    &unbind.exchange,
                    &unbind.routing_key,
                    &unbind.arguments,
                )?;
                ctx.out.method(n, m::QueueUnbindOk {});
            }
            Method::QueuePurge(purge) => {
                let queue = self.queue_for(&purge.queue, ctx)?;
                let message_count = queue.purge();
                if !purge.nowait {
                    ctx.out.method(n, m::QueuePurgeOk { message_count });
                }
            }
            Method::QueueDelete(delete) => {
                let name = self.resolve_queue_name(&delete.queue)?;
                let message_count = match ctx.vhost.queue(&name) {
                    None => 0,
                    Some(queue) => {
                        check_exclusive(&queue, ctx)?;
                        if delete.if_unused && queue.has_consumers() {
                            return Err(ChannelError::precondition_failed(format!(
                                "queue '{}' in vhost '{}' in use",
                                queue.name,
                                ctx.vhost.name()
                            ))
                            .into());
                        }
                        if delete.if_empty && !queue.is_empty() {
                            return Err(ChannelError::precondition_failed(format!(
                                "queue '{}' in vhost '{}' not empty",
                                queue.name,
                                ctx.vhost.name()
                            ))
                            .into());
                        }
                        ctx.vhost.delete_queue(&queue)
                    }
                };
                if !delete.nowait {
                    ctx.out.method(n, m::QueueDeleteOk { message_count });
                }
            }
            other => {
                return Err(ConnectionError::command_invalid(format!(
                    "method {}.{} is not allowed from a client on channel {}",
                    other.class_id(),
                    other.method_id(),
                    n
                ))
                .into());
            }
        }
        Ok(After::Nothing)
    }

    fn recv_queue_declare(
        &mut self,
        declare: m::QueueDeclare,
        ctx: &mut ConnCtx<'_>,
    ) -> Result<(), AmqpError> {
        let n = self.number;
        let name = if declare.queue.is_empty() && !declare.passive {
            generated_name("amq.gen-")
        } else {
            declare.queue.clone()
        };
        let (queue, created) = ctx.vhost.declare_queue(QueueDeclare {
            name,
            passive: declare.passive,
            durable: declare.durable,
            exclusive: declare.exclusive,
            auto_delete: declare.auto_delete,
            arguments: declare.arguments,
            conn_id: ctx.conn_id,
        })?;
        self.last_queue = Some(queue.name.clone());
        if created && queue.exclusive_owner.is_some() {
            ctx.exclusive_queues.push(Arc::clone(&queue));
        }
        if !declare.nowait {
            let (message_count, consumer_count) = queue.counts();
            ctx.out.method(
                n,
                m::QueueDeclareOk {
                    queue: queue.name.clone(),
                    message_count,
                    consumer_count,
                },
            );
        }
        Ok(())
    }

    /// The spec's shortcut: an empty queue name means the queue last declared on the channel.
    fn resolve_queue_name(&self, name: &ShortString) -> Result<ShortString, AmqpError> {
        if !name.is_empty() {
            return Ok(name.clone());
        }
        self.last_queue
            .clone()
            .ok_or_else(|| ChannelError::not_found("no previously declared queue").into())
    }

    fn queue_for(
        &self,
        name: &ShortString,
        ctx: &ConnCtx<'_>,
    ) -> Result<Arc<QueueEntity>, AmqpError> {
        let name = &self.resolve_queue_name(name)?;
        let queue = ctx.vhost.queue(name).ok_or_else(|| {
            ChannelError::not_found(format!("no queue '{name}' in vhost '{}'", ctx.vhost.name()))
        })?;
        check_exclusive(&queue, ctx)?;
        Ok(queue)
    }

    fn recv_consume(
        &mut self,
        consume: m::BasicConsume,
        ctx: &mut ConnCtx<'_>,
    ) -> Result<After, AmqpError> {
        let n = self.number;
        let queue = if consume.queue.as_bytes() == REPLY_TO.as_bytes() {
            self.reply_queue(&consume, ctx)?
        } else {
            let queue = self.queue_for(&consume.queue, ctx)?;
            crate::arguments::check_consume(
                &queue.name,
                ctx.vhost.name(),
                queue.queue_type,
                &consume.arguments,
            )?;
            if queue.queue_type == crate::arguments::QueueType::Quorum
                && self.shared.global_prefetch.load(Ordering::Relaxed) != 0
            {
                return Err(crate::arguments::global_qos_refused(
                    &queue.name,
                    ctx.vhost.name(),
                ));
            }
            queue
        };
        let tag = if consume.consumer_tag.is_empty() {
            generated_name("amq.ctag-")
        } else {
            consume.consumer_tag.clone()
        };
        if self.consumers.contains_key(&tag) {
            return Err(ConnectionError::not_allowed(format!(
                "attempt to reuse consumer tag '{tag}'"
            ))
            .into());
        }
        let consumer = Arc::new(Consumer {
            tag: tag.clone(),
            no_ack: consume.no_ack,
            exclusive: consume.exclusive,
            prefetch: self.consumer_prefetch,
            unacked: AtomicU32::new(0),
            channel: Arc::clone(&self.shared),
            queue: Arc::clone(&queue),
            priority: consumer_priority(&consume.arguments),
        });
        // Deliveries dispatched by `attach` wait in the outbox, which the connection drains
        // after this handler, so consume-ok still goes out before them.
        self.consumers.insert(tag.clone(), Arc::clone(&consumer));
        match queue.attach(consumer) {
            Ok(()) => {
                if !consume.nowait {
                    ctx.out.method(n, m::BasicConsumeOk { consumer_tag: tag });
                }
                Ok(After::Nothing)
            }
            Err(AttachError::ExclusiveInUse) => {
                self.consumers.remove(&tag);
                Err(ChannelError::access_refused(format!(
                    "queue '{}' in vhost '{}' in exclusive use",
                    queue.name,
                    ctx.vhost.name()
                ))
                .into())
            }
            Err(AttachError::Deleted) => {
                self.consumers.remove(&tag);
                Err(ChannelError::not_found(format!(
                    "no queue '{}' in vhost '{}'",
                    queue.name,
                    ctx.vhost.name()
                ))
                .into())
            }
        }
    }

    /// Direct reply-to: consuming the pseudo-queue `amq.rabbitmq.reply-to` creates a private
    /// queue (no bindings, not listed) that replies are routed to by its generated name.
    fn reply_queue(
        &mut self,
        consume: &m::BasicConsume,
        ctx: &mut ConnCtx<'_>,
    ) -> Result<Arc<QueueEntity>, AmqpError> {
        if !consume.no_ack {
            return Err(
                ChannelError::precondition_failed("reply consumer cannot acknowledge").into(),
            );
        }
        if self.reply_to.is_some() {
            return Err(ChannelError::precondition_failed("reply consumer already set").into());
        }
        let queue = ctx.vhost.create_reply_queue(ctx.conn_id);
        self.reply_to = Some(queue.name.clone());
        Ok(queue)
    }

    fn recv_get(&mut self, get: m::BasicGet, ctx: &mut ConnCtx<'_>) -> Result<(), AmqpError> {
        let n = self.number;
        let queue = self.queue_for(&get.queue, ctx)?;
        match queue.get(get.no_ack) {
            None => ctx.out.method(n, m::BasicGetEmpty {}),
            Some((delivery, message_count)) => {
                let tag = self.next_delivery_tag;
                self.next_delivery_tag += 1;
                let message = &delivery.message;
                ctx.out.method(
                    n,
                    m::BasicGetOk {
                        delivery_tag: tag,
                        redelivered: delivery.redelivered,
                        exchange: message.exchange.clone(),
                        routing_key: message.routing_key.clone(),
                        message_count,
                    },
                );
                ctx.out.content(n, &message.properties, &message.body);
                if !get.no_ack {
                    self.unacked.push_back(Unacked {
                        tag,
                        queue,
                        offset: delivery.offset,
                        consumer: None,
                        at: tokio::time::Instant::now(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Encodes a delivery dispatched to one of this channel's consumers.
    pub fn deliver(
        &mut self,
        consumer: &Arc<Consumer>,
        queue: Arc<QueueEntity>,
        delivery: Delivery,
        out: &mut Out,
    ) {
        let tag = self.next_delivery_tag;
        self.next_delivery_tag += 1;
        let message = &delivery.message;
        out.method(
            self.number,
            m::BasicDeliver {
                consumer_tag: consumer.tag.clone(),
                delivery_tag: tag,
                redelivered: delivery.redelivered,
                exchange: message.exchange.clone(),
                routing_key: message.routing_key.clone(),
            },
        );
        out.content(self.number, &message.properties, &message.body);
        if !consumer.no_ack {
            self.unacked.push_back(Unacked {
                tag,
                queue,
                offset: delivery.offset,
                consumer: Some(Arc::clone(consumer)),
                at: tokio::time::Instant::now(),
            });
        }
    }

    /// Removes the unacked entries an ack/nack/reject names: 406 when the tag is unknown.
    fn take_unacked(&mut self, tag: u64, multiple: bool) -> Result<Vec<Unacked>, AmqpError> {
        if multiple && tag == 0 {
            return Ok(self.unacked.drain(..).collect());
        }
        let Ok(idx) = self.unacked.binary_search_by_key(&tag, |u| u.tag) else {
            return Err(
                ChannelError::precondition_failed(format!("unknown delivery tag {tag}")).into(),
            );
        };
        if multiple {
            Ok(self.unacked.drain(..=idx).collect())
        } else {
            Ok(self.unacked.remove(idx).into_iter().collect())
        }
    }

    fn recv_ack(
        &mut self,
        kind: AckKind,
        tag: u64,
        multiple: bool,
        _ctx: &mut ConnCtx<'_>,
    ) -> Result<(), AmqpError> {
        let entries = self.take_unacked(tag, multiple)?;
        if let Mode::Tx { acks, .. } = &mut self.mode {
            acks.push((kind, entries));
            return Ok(());
        }
        self.settle(kind, entries);
        Ok(())
    }

    /// Applies acks or rejects to the queues, gives credit back and lets queues dispatch again.
    fn settle(&mut self, kind: AckKind, entries: Vec<Unacked>) {
        let mut kick: Vec<Arc<QueueEntity>> = Vec::new();
        let global = self.shared.global_prefetch.load(Ordering::Relaxed) != 0;
        for entry in entries {
            match kind {
                AckKind::Ack => entry.queue.ack(entry.offset),
                AckKind::Reject { requeue: false } => entry.queue.reject(entry.offset),
                AckKind::Reject { requeue: true } => entry.queue.requeue(entry.offset),
            }
            let freed = entry.consumer.is_some();
            if let Some(consumer) = &entry.consumer {
                consumer.release_credit();
            }
            if (freed || kind != AckKind::Ack) && !kick.iter().any(|q| Arc::ptr_eq(q, &entry.queue))
            {
                kick.push(entry.queue);
            }
        }
        if global {
            for consumer in self.consumers.values() {
                if !kick.iter().any(|q| Arc::ptr_eq(q, &consumer.queue)) {
                    kick.push(Arc::clone(&consumer.queue));
                }
            }
        }
        for queue in kick {
            queue.dispatch();
        }
    }

    fn recover(&mut self, requeue: bool) -> Result<(), AmqpError> {
        if !requeue {
            return Err(ConnectionError::not_implemented("requeue=false").into());
        }
        self.requeue_all_unacked();
        Ok(())
    }

    /// Returns every unacked message to its queue (channel closed, or `basic.recover`).
    pub fn requeue_all_unacked(&mut self) {
        let mut entries: Vec<Unacked> = self.unacked.drain(..).collect();
        if let Mode::Tx { acks, .. } = &mut self.mode {
            for (_, e) in acks.drain(..) {
                entries.extend(e);
            }
        }
        self.settle(AckKind::Reject { requeue: true }, entries);
    }

    /// Detaches every consumer from its queue (the channel is closing). Auto-delete queues
    /// left without consumers are deleted.
    pub fn detach_consumers(&mut self, _broker: &Arc<Broker>, vhost: Option<&Arc<VHost>>) {
        for (_, consumer) in self.consumers.drain() {
            if consumer.queue.detach(&consumer)
                && let Some(vhost) = vhost
            {
                vhost.delete_queue(&consumer.queue);
            }
        }
        self.shared.flow.store(false, Ordering::Release);
    }

    fn kick_queues(&self) {
        let mut kicked: Vec<&Arc<QueueEntity>> = Vec::new();
        for consumer in self.consumers.values() {
            if !kicked.iter().any(|q| Arc::ptr_eq(q, &consumer.queue)) {
                consumer.queue.dispatch();
                kicked.push(&consumer.queue);
            }
        }
    }

    // ===== Publishing =====

    /// A complete message from the client.
    pub fn publish(&mut self, publish: Publish, ctx: &mut ConnCtx<'_>) -> Result<After, AmqpError> {
        // RabbitMQ refuses a user-id property that is not the connection's user (no impersonation).
        if let Some(user_id) = &publish.properties.user_id
            && user_id.as_bytes() != ctx.user.as_bytes()
        {
            return Err(ChannelError::precondition_failed(format!(
                "user_id property set to '{user_id}' but authenticated user was '{}'",
                ctx.user
            ))
            .on(60, 40)
            .into());
        }
        if let Some(expiration) = &publish.properties.expiration {
            crate::arguments::parse_expiration(expiration.as_bytes())?;
        }
        if let Mode::Tx { publishes, .. } = &mut self.mode {
            // Check the exchange now, as RabbitMQ does, but route at commit.
            ctx.vhost.check_publish(&publish.exchange)?;
            publishes.push(publish);
            return Ok(After::Nothing);
        }
        self.route(publish, ctx)?;
        Ok(After::Nothing)
    }

    /// Routes one complete message; returns the log position its confirm (or commit) waits
    /// for, if a queue wrote it to disk.
    fn route(
        &mut self,
        mut publish: Publish,
        ctx: &mut ConnCtx<'_>,
    ) -> Result<Option<Lsn>, AmqpError> {
        let n = self.number;
        if publish
            .properties
            .reply_to
            .as_ref()
            .map(ShortString::as_bytes)
            == Some(REPLY_TO.as_bytes())
        {
            // Direct reply-to: the reply address becomes this channel's private queue.
            let Some(name) = &self.reply_to else {
                return Err(ChannelError::precondition_failed(
                    "fast reply consumer does not exist",
                )
                .on(60, 40)
                .into());
            };
            publish.properties.reply_to = Some(name.clone());
            let mut raw = bytes::BytesMut::new();
            publish.properties.encode(&mut raw);
            publish.raw_properties = raw.freeze();
        }
        let direct = if publish.exchange.is_empty() {
            ctx.vhost.reply_queue(&publish.routing_key)
        } else {
            None
        };
        if direct.is_none() {
            ctx.vhost.route(
                &publish.exchange,
                &publish.routing_key,
                publish.properties.headers.as_ref(),
                &mut self.route_buf,
            )?;
        }
        // BCC routing keys are used for routing, then removed from what consumers see.
        if let Some(headers) = publish.properties.headers.as_mut()
            && headers.remove(b"BCC").is_some()
        {
            let mut raw = bytes::BytesMut::new();
            publish.properties.encode(&mut raw);
            publish.raw_properties = raw.freeze();
        }
        let persistent = publish.properties.delivery_mode == Some(2);
        // The furthest log position this message was written at, if any queue logged it.
        let mut lsn: Option<Lsn> = None;
        // A queue at its x-max-length with x-overflow reject-publish refused it: nack.
        let mut rejected = false;
        if direct.is_none() && self.route_buf.is_empty() {
            if publish.mandatory {
                // The return goes out before this message's confirm.
                self.flush_confirms(ctx.out, None);
                ctx.out.method(
                    n,
                    m::BasicReturn {
                        reply_code: ReplyCode::NoRoute as u16,
                        reply_text: ShortString::from_static("NO_ROUTE"),
                        exchange: publish.exchange.clone(),
                        routing_key: publish.routing_key.clone(),
                    },
                );
                ctx.out.content(n, &publish.raw_properties, &publish.body);
            }
        } else {
            let mut message = Message::new(
                publish.exchange,
                publish.routing_key,
                publish.raw_properties,
                publish.body,
            )
            .with_persistent(persistent);
            message.priority = publish.properties.priority;
            // Per-message TTL: the expiration property, in milliseconds, as a string.
            if let Some(ttl) = publish
                .properties
                .expiration
                .as_ref()
                .and_then(|e| crate::arguments::parse_expiration(e.as_bytes()).ok())
            {
                message.expires_at_ms = Some(crate::queue::now_ms().saturating_add(ttl));
            }
            let message = Arc::new(message);
            let mut record = |outcome: Published| match outcome {
                Published::Queued(at) => lsn = lsn.max(at),
                Published::Rejected => rejected = true,
            };
            if direct.is_none() && self.route_buf.len() == 1 {
                // One queue: hand over the only reference, so the queue may compact it.
                if let Some(queue) = self.route_buf.drain().next() {
                    record(queue.publish(message));
                }
            } else if let Some(queue) = direct {
                record(queue.publish(message));
            } else {
                for queue in self.route_buf.drain() {
                    record(queue.publish(Arc::clone(&message)));
                }
            }
        }
        if let Mode::Confirm {
            next_tag,
            pending,
            waiting,
        } = &mut self.mode
        {
            let tag = *next_tag;
            *next_tag += 1;
            let behind = waiting.back().map(|&(_, at, _)| at);
            match (lsn.max(behind), rejected) {
                (None, false) => {
                    *pending = Some(match *pending {
                        None => (tag, tag),
                        Some((first, _)) => (first, tag),
                    });
                }
                (None, true) => {
                    // Nothing to wait for: earlier confirms, then this nack, in order.
                    send_acks(ctx.out, n, pending.take());
                    send_nack(ctx.out, n, tag);
                }
                (Some(at), nack) => waiting.push_back((tag, at, nack)),
            }
            if !ctx.confirm_dirty.contains(&n) {
                ctx.confirm_dirty.push(n);
            }
        }
        Ok(lsn)
    }

    /// Sends the confirms that are due: those collected in this batch that needed no sync as
    /// one `basic.ack` (with `multiple` for a run), then those whose log position is synced;
    /// a failed sync nacks the ones it may have lost.
    pub fn flush_confirms(&mut self, out: &mut Out, sync: Option<SyncState>) {
        if let Mode::Tx { commits, .. } = &mut self.mode {
            let Some(sync) = sync else { return };
            while let Some(&at) = commits.front() {
                if at <= sync.synced {
                    out.method(self.number, m::TxCommitOk {});
                } else if at <= sync.failed {
                    // The disk failed under this commit: say so rather than leave the client
                    // waiting (RabbitMQ would crash the queue).
                    out.method(
                        self.number,
                        m::ChannelClose {
                            reply_code: ReplyCode::InternalError as u16,
                            reply_text: ShortString::from_static(
                                "INTERNAL_ERROR - the store could not sync this transaction",
                            ),
                            class_id: 90,
                            method_id: 20,
                        },
                    );
                    self.closing = true;
                    commits.clear();
                    return;
                } else {
                    break;
                }
                commits.pop_front();
            }
            return;
        }
        let Mode::Confirm {
            pending, waiting, ..
        } = &mut self.mode
        else {
            return;
        };
        send_acks(out, self.number, pending.take());
        let Some(sync) = sync else { return };
        // Confirms go out in tag order: a run of acks as one `multiple` ack, broken by a nack
        // for a message the store failed to sync (or that a full queue rejected).
        let mut acked: Option<(u64, u64)> = None;
        while let Some(&(tag, lsn, rejected)) = waiting.front() {
            let nack = if lsn <= sync.synced {
                rejected
            } else if lsn <= sync.failed {
                true
            } else {
                break;
            };
            waiting.pop_front();
            if nack {
                send_acks(out, self.number, acked.take());
                send_nack(out, self.number, tag);
            } else {
                acked = Some(acked.map_or((tag, tag), |(first, _)| (first, tag)));
            }
        }
        send_acks(out, self.number, acked);
    }

    /// When the oldest unacked delivery was sent (None when nothing is unacked).
    pub fn oldest_unacked(&self) -> Option<tokio::time::Instant> {
        self.unacked.iter().map(|u| u.at).min()
    }

    /// Whether confirms wait for the store's sync.
    pub fn has_waiting_confirms(&self) -> bool {
        match &self.mode {
            Mode::Confirm { waiting, .. } => !waiting.is_empty(),
            Mode::Tx { commits, .. } => !commits.is_empty(),
            Mode::Plain => false,
        }
    }
}

fn complete(publish: m::BasicPublish, header: ContentHeader, body: Bytes) -> Publish {
    Publish {
        exchange: publish.exchange,
        routing_key: publish.routing_key,
        mandatory: publish.mandatory,
        properties: header.properties,
        raw_properties: header.raw_properties,
        body,
    }
}

/// The `x-priority` consumer argument (any integer type), 0 when absent.
fn consumer_priority(arguments: &warren_codec::FieldTable) -> i64 {
    use warren_codec::FieldValue;
    match arguments.get(b"x-priority") {
        Some(FieldValue::I8(v)) => i64::from(*v),
        Some(FieldValue::U8(v)) => i64::from(*v),
        Some(FieldValue::I16(v)) => i64::from(*v),
        Some(FieldValue::U16(v)) => i64::from(*v),
        Some(FieldValue::I32(v)) => i64::from(*v),
        Some(FieldValue::U32(v)) => i64::from(*v),
        Some(FieldValue::I64(v)) => *v,
        _ => 0,
    }
}

/// 405 when the queue is exclusive to another connection.
fn check_exclusive(queue: &QueueEntity, ctx: &ConnCtx<'_>) -> Result<(), AmqpError> {
    match queue.exclusive_owner {
        Some(owner) if owner != ctx.conn_id => Err(ChannelError::resource_locked(format!(
            "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
            queue.name,
            ctx.vhost.name()
        ))
        .into()),
        _ => Ok(()),
    }
}

/// Confirms the tags `first..=last` with one `basic.ack` (`multiple` when more than one).
fn send_acks(out: &mut Out, channel: u16, range: Option<(u64, u64)>) {
    if let Some((first, last)) = range {
        out.method(
            channel,
            m::BasicAck {
                delivery_tag: last,
                multiple: last > first,
            },
        );
    }
}

/// Tells the publisher that the message with `tag` was not taken.
fn send_nack(out: &mut Out, channel: u16, tag: u64) {
    out.method(
        channel,
        m::BasicNack {
            delivery_tag: tag,
            multiple: false,
            requeue: false,
        },
    );
}
