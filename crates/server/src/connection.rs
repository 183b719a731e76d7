//! One AMQP connection: the protocol header, the handshake on channel 0, heartbeats, the frame
//! loop that hands frames to channels, and the only writer of the socket.
//!
//! ```text
//!   header ok        start-ok ok        tune-ok ok        open ok
//! Start ---------> AwaitStartOk ----> AwaitTuneOk ----> AwaitOpen ----> Open
//!                                                                        |
//!               error (we send close) or client close (we send close-ok) |
//!                                                                        v
//!                                                 Closing (wait close-ok, then drop the socket)
//! ```
//!
//! The task reads into one `BytesMut`, decodes every whole frame it holds, and encodes every
//! reply and delivery into one output `BytesMut`, written with one `write` per loop turn, so a
//! burst of frames costs one syscall each way. Deliveries from queues arrive through the
//! connection's [`Outbox`] and are encoded straight into that buffer with the raw properties
//! received from the publisher.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, trace};
use warren_codec::frame::{self, ContentHeader, Frame};
use warren_codec::generated as m;
use warren_codec::{FieldTable, FieldValue, Method, ReplyCode, ShortString};

use crate::auth;
use crate::broker::{Broker, VHost};
use crate::channel::{After, Channel, ConnCtx};
use crate::error::{AmqpError, ConnectionError};
use crate::queue::{Outbound, Outbox};

/// Frames larger than this are refused before `connection.tune-ok` (RabbitMQ 3.10: 4096).
const PRE_TUNE_FRAME_MAX: u32 = 4096;
/// How long we wait for `close-ok` after sending `connection.close`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Bytes read per `read` call at most (the buffer grows to a whole frame as needed).
const READ_CHUNK: usize = 64 * 1024;
/// The read buffer of a new connection; enough for the handshake and small publishes.
const INITIAL_READ_BUFFER: usize = 4096;
/// Write buffer size above which the connection stops taking deliveries from its outbox until
/// the socket drains.
const WRITE_HIGH_WATER: usize = 1024 * 1024;
/// Write buffer size above which the connection also stops reading and handling the client's
/// frames, so a client that sends requests but never reads the replies cannot grow it without
/// bound (REFERENCE row 16).
const READ_PAUSE_OUTPUT: usize = 4 * WRITE_HIGH_WATER;

/// Capabilities the client announced in `client-properties`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientCaps {
    /// The client handles server-sent `basic.cancel`.
    pub consumer_cancel_notify: bool,
    /// The client handles `connection.blocked` / `unblocked`.
    pub connection_blocked: bool,
    /// The client expects `connection.close` 403 on a failed login (else the socket is closed).
    pub authentication_failure_close: bool,
}

/// The output side: frames are encoded here and written in one go.
pub struct Out {
    /// Encoded frames not yet written.
    pub buf: BytesMut,
    /// The negotiated frame_max, for splitting bodies.
    pub frame_max: u32,
}

impl Out {
    /// Encodes a method frame.
    pub fn method(&mut self, channel: u16, method: impl Into<Method>) {
        frame::encode_method_frame(channel, &method.into(), &mut self.buf);
    }

    /// Encodes a content header (with properties exactly as received) and the body frames.
    pub fn content(&mut self, channel: u16, raw_properties: &[u8], body: &[u8]) {
        frame::encode_header_frame(
            channel,
            60,
            body.len() as u64,
            raw_properties,
            &mut self.buf,
        );
        let frame_max = if self.frame_max == 0 {
            131_072
        } else {
            self.frame_max
        };
        frame::encode_body_frames(channel, body, frame_max, &mut self.buf);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitStartOk,
    AwaitTuneOk,
    AwaitOpen,
    Open,
    /// A login was refused: input is dropped until `auth_failure_delay` has passed, then the
    /// refusal (if any) is sent and the connection closes.
    Refused,
    /// We sent `connection.close` and wait for `close-ok`; everything else is dropped.
    Closing,
    /// Done: flush and drop the socket.
    Done,
}

/// The state of one connection, owned by its task.
pub struct Connection {
    id: u64,
    peer: SocketAddr,
    broker: Arc<Broker>,
    phase: Phase,
    /// Max frame size we accept now (pre-tune limit, then the negotiated one).
    frame_max: u32,
    channel_max: u16,
    heartbeat: u16,
    user: String,
    vhost: Option<Arc<VHost>>,
    caps: ClientCaps,
    channels: Vec<Option<Box<Channel>>>,
    out: Out,
    outbox: Arc<Outbox>,
    /// Exclusive queues declared on this connection, deleted when it closes.
    exclusive_queues: Vec<Arc<crate::queue::QueueEntity>>,
    /// Whether this connection published (only publishers are blocked by resource alarms).
    has_published: bool,
    /// Whether we told the client it is blocked.
    sent_blocked: bool,
    /// Channels with publisher confirms to flush at the end of this batch.
    confirm_dirty: Vec<u16>,
    /// Set when the read side saw EOF.
    read_closed: bool,
    /// Set after a framing error: input is read and dropped until the socket closes.
    discard_input: bool,
    /// When the handshake must be complete, or closing must have finished.
    deadline: Option<Instant>,
    /// The store's sync progress (None with `--ephemeral`), for confirms of persisted messages.
    sync: Option<watch::Receiver<crate::broker::SyncState>>,
    /// The sync progress moved since confirms were last flushed.
    sync_changed: bool,
    /// Held until `connection.open`: counts this connection as unauthenticated.
    handshake_slot: Option<crate::broker::HandshakeSlot>,
    /// In `Phase::Refused`: the `connection.close` to send when the delay is over (`None` for
    /// clients that expect a plain socket close).
    refusal: Option<ConnectionError>,
}

/// Runs one connection to completion. Never panics on client input; logs one line when opened
/// and one when closed.
pub async fn serve(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    shutdown: watch::Receiver<bool>,
) {
    let span = info_span!("conn", id, %peer);
    async move {
        let _ = stream.set_nodelay(true);
        let handshake_timeout = broker.config.limits.handshake_timeout;
        let sync = broker.sync_state();
        let mut conn = Connection {
            id,
            peer,
            broker,
            phase: Phase::AwaitStartOk,
            frame_max: PRE_TUNE_FRAME_MAX,
            channel_max: 0,
            heartbeat: 0,
            user: String::new(),
            vhost: None,
            caps: ClientCaps::default(),
            channels: Vec::new(),
            out: Out {
                buf: BytesMut::with_capacity(1024),
                frame_max: PRE_TUNE_FRAME_MAX,
            },
            outbox: Arc::new(Outbox::default()),
            exclusive_queues: Vec::new(),
            has_published: false,
            sent_blocked: false,
            confirm_dirty: Vec::new(),
            read_closed: false,
            discard_input: false,
            sync,
            sync_changed: false,
            deadline: Some(Instant::now() + handshake_timeout),
            handshake_slot: None,
            refusal: None,
        };
        let Some(slot) = conn.broker.begin_handshake(peer.ip()) else {
            info!("too many unauthenticated connections: closed");
            return;
        };
        conn.handshake_slot = Some(slot);
        info!("connection accepted");
        let result = conn.run(stream, shutdown).await;
        conn.cleanup();
        match result {
            Ok(()) => info!("connection closed"),
            Err(e) => info!(error = %e, "connection closed"),
        }
    }
    .instrument(span)
    .await
}

impl Connection {
    async fn run(
        &mut self,
        mut stream: TcpStream,
        mut shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        // Small at first: an idle connection costs little; a busy one grows it (see below).
        let mut inbuf = BytesMut::with_capacity(INITIAL_READ_BUFFER);

        // The protocol header: 8 bytes within the handshake timeout.
        let deadline = self.deadline.unwrap_or_else(Instant::now);
        let mut check = frame::check_protocol_header(&inbuf);
        while check == frame::ProtocolHeaderCheck::NeedMore {
            let n = tokio::select! {
                n = stream.read_buf(&mut inbuf) => n?,
                _ = tokio::time::sleep_until(deadline) => {
                    info!("handshake timeout before protocol header");
                    return Ok(());
                }
                _ = shutdown.changed() => return Ok(()),
            };
            if n == 0 {
                return Ok(());
            }
            check = frame::check_protocol_header(&inbuf);
        }
        if check == frame::ProtocolHeaderCheck::Bad {
            info!("bad protocol header: answering with ours and closing");
            stream.write_all(frame::PROTOCOL_HEADER).await?;
            let _ = stream.shutdown().await;
            return Ok(());
        }
        inbuf.advance(8);
        self.send_start();

        let mut alarm = self.broker.memory.subscribe();
        let mut disk_alarm = self.broker.disk.subscribe();
        let mut pending: Vec<Outbound> = Vec::new();
        let mut last_read = Instant::now();
        let mut last_write = Instant::now();
        // Since when output has been waiting without the socket taking any of it.
        let mut write_stalled_since: Option<Instant> = None;
        let (mut reader, mut writer) = stream.split();

        loop {
            // Turn whatever is buffered into work before waiting again.
            if !inbuf.is_empty() && self.phase != Phase::Done {
                self.process_frames(&mut inbuf);
            }
            self.drain_outbox(&mut pending);
            self.flush_confirms();
            self.update_blocked();
            if self.phase == Phase::Done {
                break;
            }

            if self.out.buf.is_empty() {
                write_stalled_since = None;
            } else if write_stalled_since.is_none() {
                write_stalled_since = Some(Instant::now());
            }
            let blocked = self.sent_blocked
                || (self.has_published
                    && self.broker.alarm_reason().is_some()
                    && self.phase == Phase::Open);
            let backlogged = self.out.buf.len() > READ_PAUSE_OUTPUT;
            let can_read = !self.read_closed && !blocked && !backlogged;
            let heartbeat = Duration::from_secs(u64::from(self.heartbeat));
            let heartbeat_on = self.heartbeat != 0 && self.phase == Phase::Open;
            let next_heartbeat_send = last_write + heartbeat / 2;
            let peer_deadline = last_read + heartbeat * 2;
            // A peer that takes none of our output for two intervals is as dead as a silent one
            // (while we do not read, its heartbeats cannot show it alive).
            let write_deadline = write_stalled_since.map(|since| since + heartbeat * 2);
            let ack_deadline = self.ack_deadline();
            let timer = {
                let mut t = self.deadline;
                if let Some(a) = ack_deadline {
                    t = Some(t.map_or(a, |d| d.min(a)));
                }
                if heartbeat_on {
                    t = Some(t.map_or(next_heartbeat_send, |d| d.min(next_heartbeat_send)));
                    if !blocked && !backlogged {
                        t = Some(t.map_or(peer_deadline, |d| d.min(peer_deadline)));
                    }
                    if let Some(w) = write_deadline {
                        t = Some(t.map_or(w, |d| d.min(w)));
                    }
                }
                t
            };

            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    self.force_close(ReplyCode::ConnectionForced,
                        "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'");
                }
                res = writer.write(&self.out.buf), if !self.out.buf.is_empty() => {
                    let n = res?;
                    if n == 0 {
                        return Ok(());
                    }
                    self.out.buf.advance(n);
                    last_write = Instant::now();
                    write_stalled_since = Some(last_write);
                }
                res = reader.read_buf(&mut inbuf), if can_read => {
                    let n = res?;
                    if n == 0 {
                        self.read_closed = true;
                        if self.phase != Phase::Closing {
                            debug!("client closed the socket");
                        }
                        self.phase = Phase::Done;
                    } else {
                        last_read = Instant::now();
                        // A read that filled the buffer means a busy peer: read bigger chunks.
                        // (Bodies are sliced out of this buffer, so it is not reused in place.)
                        if inbuf.capacity() == inbuf.len() {
                            inbuf.reserve(READ_CHUNK);
                        } else if inbuf.capacity() - inbuf.len() < 1024 {
                            inbuf.reserve(INITIAL_READ_BUFFER);
                        }
                    }
                }
                _ = self.outbox.notify.notified() => {}
                _ = alarm.changed() => {}
                _ = disk_alarm.changed() => {}
                changed = async {
                    match self.sync.as_mut() {
                        Some(rx) => rx.changed().await,
                        None => std::future::pending().await,
                    }
                }, if self.channels.iter().flatten().any(|ch| ch.has_waiting_confirms()) => {
                    match changed {
                        Ok(()) => self.sync_changed = true,
                        // The sync thread is gone (shutdown): nothing more will be confirmed.
                        Err(_) => self.sync = None,
                    }
                }
                _ = async {
                    match timer {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let now = Instant::now();
                    if let Some(d) = self.deadline && now >= d {
                        if self.phase == Phase::Refused {
                            self.end_refusal();
                        } else {
                            if self.phase == Phase::Closing {
                                debug!("no close-ok in time");
                            } else {
                                info!("handshake timeout");
                            }
                            self.phase = Phase::Done;
                        }
                    } else if heartbeat_on && !blocked && !backlogged && now >= peer_deadline {
                        info!(timeout_s = self.heartbeat, "missed heartbeats from client, closing");
                        self.phase = Phase::Done;
                    } else if heartbeat_on && write_deadline.is_some_and(|w| now >= w) {
                        info!(timeout_s = self.heartbeat, "client stopped reading, closing");
                        self.phase = Phase::Done;
                    } else if heartbeat_on && now >= next_heartbeat_send && self.out.buf.is_empty() {
                        frame::encode_heartbeat(&mut self.out.buf);
                        // Stamp now, so a heartbeat stuck behind a full socket is not repeated.
                        last_write = now;
                    }
                    if ack_deadline.is_some_and(|a| now >= a) {
                        self.enforce_ack_timeout(now);
                    }
                }
            }
        }
        // Flush what is left (the close or close-ok) and say goodbye.
        if !self.out.buf.is_empty() {
            let _ =
                tokio::time::timeout(Duration::from_secs(1), writer.write_all(&self.out.buf)).await;
        }
        let _ = writer.shutdown().await;
        Ok(())
    }

    /// Decodes and handles every whole frame in `inbuf`.
    fn process_frames(&mut self, inbuf: &mut BytesMut) {
        if self.discard_input {
            inbuf.clear();
            return;
        }
        loop {
            if matches!(self.phase, Phase::Done) {
                return;
            }
            if self.out.buf.len() > READ_PAUSE_OUTPUT && self.phase == Phase::Open {
                // The client is not reading its replies: leave the rest for when it does.
                return;
            }
            let decoded = frame::decode_frame(inbuf, self.frame_max);
            let frame = match decoded {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(e) => {
                    inbuf.clear();
                    if self.phase == Phase::Closing {
                        // The stream is out of step already; stop reading it.
                        self.phase = Phase::Done;
                        return;
                    }
                    let code = e.reply_code();
                    let text = format!("{} - {e}", crate::error::code_name(code));
                    self.send_connection_close(ConnectionError {
                        code,
                        text,
                        class_id: 0,
                        method_id: 0,
                    });
                    // After a framing error nothing more can be parsed: read and drop the rest
                    // (closing with unread input would reset the connection and could lose
                    // our close frame), and give up sooner than for a well-formed peer.
                    self.discard_input = true;
                    self.deadline = Some(Instant::now() + Duration::from_secs(1));
                    return;
                }
            };
            if carries_credentials(&frame) {
                trace!("frame: a method carrying credentials (not logged)");
            } else {
                trace!(?frame, "frame");
            }
            if let Err(e) = self.handle_frame(frame) {
                self.send_connection_close(e);
            }
            if self.discard_input {
                // A refused login: what the client pipelined behind it must not be answered
                // before the refusal (that would reveal the verdict early).
                inbuf.clear();
                return;
            }
        }
    }

    fn handle_frame(&mut self, frame: Frame) -> Result<(), ConnectionError> {
        if self.phase == Phase::Closing {
            // Only close-ok (or a crossing close) matters now.
            if let Frame::Method { channel: 0, method } = frame {
                match method {
                    Method::ConnectionCloseOk(_) => self.phase = Phase::Done,
                    Method::ConnectionClose(_) => {
                        self.out.method(0, m::ConnectionCloseOk {});
                    }
                    _ => {}
                }
            }
            return Ok(());
        }
        match frame {
            Frame::Heartbeat { channel: 0 } => Ok(()),
            Frame::Heartbeat { .. } => Err(ConnectionError::unexpected_frame(
                "type 8, all octets = <<>>",
            )),
            Frame::Method { channel: 0, method } => self.handle_method0(method),
            Frame::Header { channel: 0, .. } | Frame::Body { channel: 0, .. } => Err(
                ConnectionError::unexpected_frame("content frame on channel 0"),
            ),
            frame if self.phase != Phase::Open => Err(ConnectionError::command_invalid(format!(
                "unexpected frame on channel {} before connection.open",
                frame_channel(&frame)
            ))),
            Frame::Method { channel, method } => self.channel_method(channel, method),
            Frame::Header { channel, header } => self.channel_header(channel, header),
            Frame::Body { channel, payload } => {
                let broker = Arc::clone(&self.broker);
                let result = match self.channel_mut(channel) {
                    Some(ch) if ch.closing => return Ok(()),
                    Some(ch) => ch.recv_body(payload, &broker.config.limits),
                    None => {
                        return Err(ConnectionError::channel_error("expected 'channel.open'"));
                    }
                };
                match result {
                    Ok(Some(publish)) => {
                        self.run_channel(channel, |ch, ctx| ch.publish(publish, ctx))
                    }
                    Ok(None) => Ok(()),
                    Err(e) => self.channel_failed(channel, e),
                }
            }
        }
    }

    fn channel_header(
        &mut self,
        channel: u16,
        header: ContentHeader,
    ) -> Result<(), ConnectionError> {
        let broker = Arc::clone(&self.broker);
        let result = match self.channel_mut(channel) {
            Some(ch) if ch.closing => return Ok(()),
            Some(ch) => ch.recv_header(header, &broker.config.limits),
            None => {
                return Err(ConnectionError::channel_error("expected 'channel.open'"));
            }
        };
        match result {
            Ok(Some(publish)) => self.run_channel(channel, |ch, ctx| ch.publish(publish, ctx)),
            Ok(None) => Ok(()),
            Err(e) => self.channel_failed(channel, e),
        }
    }

    fn channel_method(&mut self, channel: u16, method: Method) -> Result<(), ConnectionError> {
        let class_id = method.class_id();
        let method_id = method.method_id();
        if class_id == 10 {
            return Err(
                ConnectionError::command_invalid("unimplemented method").on(class_id, method_id)
            );
        }
        if channel > self.channel_max && self.channel_max != 0 {
            return Err(ConnectionError::not_allowed(format!(
                "channel number {channel} is above the negotiated channel_max ({})",
                self.channel_max
            ))
            .on(class_id, method_id));
        }
        // Names, keys, tags and texts must be UTF-8, as RabbitMQ 3.10 checks them; publishes
        // are exempt there too (their fields are never stored or shown as names).
        if !matches!(method, Method::BasicPublish(_)) && !method.short_strings_are_utf8() {
            return Err(ConnectionError::frame_error("Malformed UTF-8 in shortstr"));
        }
        let exists = self.channel_mut(channel).is_some();
        match method {
            Method::ChannelOpen(_) if !exists => {
                self.open_channel(channel);
                self.out.method(channel, m::ChannelOpenOk {});
                debug!(channel, "channel opened");
                Ok(())
            }
            Method::ChannelOpen(_) => {
                Err(ConnectionError::channel_error("second 'channel.open' seen")
                    .on(class_id, method_id))
            }
            _ if !exists => {
                Err(ConnectionError::channel_error("expected 'channel.open'")
                    .on(class_id, method_id))
            }
            Method::ChannelCloseOk(_) => {
                if self.channel_mut(channel).is_some_and(|ch| ch.closing) {
                    self.close_channel(channel);
                    Ok(())
                } else {
                    // RabbitMQ's answer to a close-ok nobody asked for.
                    Err(ConnectionError::command_invalid("unimplemented method")
                        .on(class_id, method_id))
                }
            }
            Method::ChannelClose(close) => {
                debug!(channel, code = close.reply_code, text = ?close.reply_text, "client closed channel");
                self.close_channel(channel);
                self.out.method(channel, m::ChannelCloseOk {});
                Ok(())
            }
            _ if self.channel_mut(channel).is_some_and(|ch| ch.closing) => Ok(()),
            method => {
                if matches!(method, Method::BasicPublish(_)) {
                    self.has_published = true;
                }
                self.run_channel(channel, move |ch, ctx| {
                    ch.recv_method(method, ctx)
                        .map_err(|e| e.on(class_id, method_id))
                })
            }
        }
    }

    /// Runs a channel handler with the connection's context, then carries out what it asks.
    fn run_channel(
        &mut self,
        channel: u16,
        f: impl FnOnce(&mut Channel, &mut ConnCtx<'_>) -> Result<After, AmqpError>,
    ) -> Result<(), ConnectionError> {
        let Some(vhost) = self.vhost.clone() else {
            return Ok(());
        };
        let Some(Some(ch)) = self.channels.get_mut(usize::from(channel)) else {
            return Ok(());
        };
        let mut ctx = ConnCtx {
            conn_id: self.id,
            broker: &self.broker,
            vhost: &vhost,
            out: &mut self.out,
            caps: self.caps,
            exclusive_queues: &mut self.exclusive_queues,
            confirm_dirty: &mut self.confirm_dirty,
            user: &self.user,
        };
        let span = tracing::debug_span!("chan", n = channel);
        let _enter = span.enter();
        match f(ch, &mut ctx) {
            Ok(After::Nothing) => Ok(()),
            Ok(After::CancelConsumer { tag, reply }) => {
                // Deliveries dispatched before the cancel go out first, as in RabbitMQ.
                let mut pending = Vec::new();
                self.drain_outbox_all(&mut pending);
                if let Some(Some(ch)) = self.channels.get_mut(usize::from(channel)) {
                    ch.consumers.remove(&tag);
                }
                if reply {
                    self.out
                        .method(channel, m::BasicCancelOk { consumer_tag: tag });
                }
                Ok(())
            }
            Err(e) => self.channel_failed_amqp(channel, e),
        }
    }

    fn channel_failed(&mut self, channel: u16, e: AmqpError) -> Result<(), ConnectionError> {
        self.channel_failed_amqp(channel, e)
    }

    fn channel_failed_amqp(&mut self, channel: u16, e: AmqpError) -> Result<(), ConnectionError> {
        match e {
            AmqpError::Connection(e) => Err(e),
            AmqpError::Channel(e) => {
                info!(channel, code = e.code as u16, text = ?e.text, "channel error");
                self.close_channel_state(channel);
                if let Some(Some(ch)) = self.channels.get_mut(usize::from(channel)) {
                    ch.closing = true;
                }
                self.out.method(
                    channel,
                    m::ChannelClose {
                        reply_code: e.code as u16,
                        reply_text: short(&e.text),
                        class_id: e.class_id,
                        method_id: e.method_id,
                    },
                );
                Ok(())
            }
        }
    }

    fn channel_mut(&mut self, channel: u16) -> Option<&mut Channel> {
        self.channels
            .get_mut(usize::from(channel))
            .and_then(|c| c.as_deref_mut())
    }

    fn open_channel(&mut self, channel: u16) {
        let idx = usize::from(channel);
        if self.channels.len() <= idx {
            self.channels.resize_with(idx + 1, || None);
        }
        if let Some(slot) = self.channels.get_mut(idx) {
            *slot = Some(Box::new(Channel::new(channel, Arc::clone(&self.outbox))));
        }
    }

    /// Releases a channel's consumers and unacked messages (they return to their queues), but
    /// keeps the slot (for a channel that waits for close-ok).
    fn close_channel_state(&mut self, channel: u16) {
        let Some(Some(ch)) = self.channels.get_mut(usize::from(channel)) else {
            return;
        };
        ch.detach_consumers(&self.broker, self.vhost.as_ref());
        // Deliveries already dispatched to this channel go back to their queues.
        let mut pending = Vec::new();
        self.drain_outbox_all(&mut pending);
        if let Some(Some(ch)) = self.channels.get_mut(usize::from(channel)) {
            ch.requeue_all_unacked();
        }
    }

    fn close_channel(&mut self, channel: u16) {
        self.close_channel_state(channel);
        if let Some(slot) = self.channels.get_mut(usize::from(channel)) {
            *slot = None;
        }
        self.confirm_dirty.retain(|&c| c != channel);
    }

    /// When the oldest unacked delivery of any channel times out (`consumer_timeout`).
    fn ack_deadline(&self) -> Option<Instant> {
        let timeout = self.broker.config.limits.consumer_timeout?;
        if self.phase != Phase::Open {
            return None;
        }
        self.channels
            .iter()
            .flatten()
            .filter(|ch| !ch.closing)
            .filter_map(|ch| ch.oldest_unacked())
            .min()
            .map(|at| at + timeout)
    }

    /// Closes, with RabbitMQ's 406, every channel holding a delivery unacked for longer than
    /// `consumer_timeout`; its unacked messages go back to their queues.
    fn enforce_ack_timeout(&mut self, now: Instant) {
        let Some(timeout) = self.broker.config.limits.consumer_timeout else {
            return;
        };
        let late: Vec<u16> = self
            .channels
            .iter()
            .enumerate()
            .filter_map(|(n, ch)| {
                let ch = ch.as_ref()?;
                let late = !ch.closing && ch.oldest_unacked().is_some_and(|at| at + timeout <= now);
                late.then(|| u16::try_from(n).ok()).flatten()
            })
            .collect();
        for n in late {
            let e = crate::error::ChannelError::precondition_failed(format!(
                "delivery acknowledgement on channel {n} timed out. Timeout value used: {} ms. This timeout value can be configured, see consumers doc guide to learn more",
                timeout.as_millis()
            ));
            if let Err(e) = self.channel_failed_amqp(n, e.into()) {
                self.send_connection_close(e);
            }
        }
    }

    /// Takes the outbox's items into the write buffer, unless the socket is backed up.
    fn drain_outbox(&mut self, pending: &mut Vec<Outbound>) {
        if self.out.buf.len() > WRITE_HIGH_WATER && self.phase == Phase::Open {
            return;
        }
        self.drain_outbox_all(pending);
    }

    fn drain_outbox_all(&mut self, pending: &mut Vec<Outbound>) {
        let was_congested = self.outbox.congested();
        self.outbox.take(pending);
        if pending.is_empty() {
            return;
        }
        let mut kick: Vec<Arc<crate::queue::QueueEntity>> = Vec::new();
        for item in pending.drain(..) {
            match item {
                Outbound::Deliver {
                    consumer,
                    queue,
                    delivery,
                } => {
                    self.outbox.release(delivery.message.body.len());
                    let number = consumer.channel.number;
                    let live = self.phase == Phase::Open
                        && matches!(
                            self.channels.get(usize::from(number)),
                            Some(Some(ch)) if !ch.closing
                                && ch.consumers.get(&consumer.tag).is_some_and(|c| Arc::ptr_eq(c, &consumer))
                        );
                    if live {
                        if let Some(Some(ch)) = self.channels.get_mut(usize::from(number)) {
                            ch.deliver(&consumer, queue, delivery, &mut self.out);
                        }
                    } else {
                        // The consumer went away before this was sent: give it back.
                        consumer.release_credit();
                        if consumer.no_ack {
                            queue.return_unsent(delivery);
                        } else {
                            queue.requeue(delivery.offset);
                        }
                        if !kick.iter().any(|q| Arc::ptr_eq(q, &queue)) {
                            kick.push(queue);
                        }
                    }
                }
                Outbound::Cancel { consumer } => {
                    let number = consumer.channel.number;
                    let tag = consumer.tag.clone();
                    if let Some(Some(ch)) = self.channels.get_mut(usize::from(number))
                        && ch
                            .consumers
                            .get(&tag)
                            .is_some_and(|c| Arc::ptr_eq(c, &consumer))
                    {
                        ch.consumers.remove(&tag);
                        if self.caps.consumer_cancel_notify && !ch.closing {
                            self.out.method(
                                number,
                                m::BasicCancel {
                                    consumer_tag: tag,
                                    nowait: true,
                                },
                            );
                        }
                    }
                }
            }
        }
        for queue in kick {
            queue.dispatch();
        }
        if was_congested && !self.outbox.congested() {
            // Consumers were skipped while we were backed up; let their queues try again.
            self.kick_consumer_queues();
        }
    }

    fn kick_consumer_queues(&mut self) {
        let mut queues: Vec<Arc<crate::queue::QueueEntity>> = Vec::new();
        for ch in self.channels.iter().flatten() {
            for consumer in ch.consumers.values() {
                if !queues.iter().any(|q| Arc::ptr_eq(q, &consumer.queue)) {
                    queues.push(Arc::clone(&consumer.queue));
                }
            }
        }
        for queue in queues {
            queue.dispatch();
        }
    }

    /// Sends due confirms: those of this batch's publishes, and those waiting for a sync that
    /// has now happened.
    fn flush_confirms(&mut self) {
        let sync = self.sync.as_ref().map(|rx| *rx.borrow());
        let dirty = std::mem::take(&mut self.confirm_dirty);
        for number in dirty {
            if let Some(Some(ch)) = self.channels.get_mut(usize::from(number)) {
                ch.flush_confirms(&mut self.out, sync);
            }
        }
        if self.sync_changed {
            self.sync_changed = false;
            for ch in self.channels.iter_mut().flatten() {
                if ch.has_waiting_confirms() {
                    ch.flush_confirms(&mut self.out, sync);
                }
            }
        }
    }

    /// Sends `connection.blocked` / `unblocked` as the memory and disk alarms change, to
    /// clients that advertise the capability, and only once they published (as RabbitMQ does):
    /// one `blocked` when the first alarm is raised, one `unblocked` when all have cleared.
    fn update_blocked(&mut self) {
        if self.phase != Phase::Open {
            return;
        }
        let alarm = self.broker.alarm_reason();
        if let Some(reason) = alarm
            && self.has_published
            && !self.sent_blocked
        {
            self.sent_blocked = true;
            if self.caps.connection_blocked {
                self.out.method(
                    0,
                    m::ConnectionBlocked {
                        reason: ShortString::from_static(reason),
                    },
                );
            }
        } else if alarm.is_none() && self.sent_blocked {
            self.sent_blocked = false;
            if self.caps.connection_blocked {
                self.out.method(0, m::ConnectionUnblocked {});
            }
        }
    }

    fn force_close(&mut self, code: ReplyCode, text: &str) {
        if matches!(self.phase, Phase::Closing | Phase::Done) {
            return;
        }
        if self.phase != Phase::Open {
            self.phase = Phase::Done;
            return;
        }
        self.send_connection_close(ConnectionError {
            code,
            text: text.to_owned(),
            class_id: 0,
            method_id: 0,
        });
    }

    fn send_connection_close(&mut self, e: ConnectionError) {
        info!(code = e.code as u16, text = ?e.text, "connection error");
        // Consumers stop and unacked messages go back now, not when the socket finally closes.
        self.release_all_channels();
        self.out.method(
            0,
            m::ConnectionClose {
                reply_code: e.code as u16,
                reply_text: short(&e.text),
                class_id: e.class_id,
                method_id: e.method_id,
            },
        );
        self.phase = Phase::Closing;
        self.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
    }

    fn release_all_channels(&mut self) {
        for number in 0..self.channels.len() {
            if let Ok(number) = u16::try_from(number)
                && self.channel_mut(number).is_some()
            {
                self.close_channel(number);
            }
        }
    }

    /// Everything a closed connection leaves behind: consumers detach, unacked messages return
    /// to their queues, exclusive queues are deleted.
    fn cleanup(&mut self) {
        self.release_all_channels();
        let mut pending = Vec::new();
        self.phase = Phase::Done;
        self.drain_outbox_all(&mut pending);
        if let Some(vhost) = &self.vhost {
            for queue in self.exclusive_queues.drain(..) {
                vhost.delete_queue(&queue);
            }
        }
    }

    // ===== Channel 0: the handshake and connection-level methods =====

    fn send_start(&mut self) {
        let identity = &self.broker.config.identity;
        let mut caps = FieldTable::new();
        for name in [
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "consumer_priorities",
            "authentication_failure_close",
            "per_consumer_qos",
            "direct_reply_to",
        ] {
            caps.insert(ShortString::from_static(name), FieldValue::Bool(true));
        }
        // Same keys and order as RabbitMQ 3.10.
        let mut props = FieldTable::new();
        props.insert(
            ShortString::from_static("capabilities"),
            FieldValue::Table(caps),
        );
        props.insert(
            ShortString::from_static("cluster_name"),
            long(&identity.cluster_name),
        );
        props.insert(
            ShortString::from_static("copyright"),
            long("Copyright (c) the Warren authors"),
        );
        props.insert(
            ShortString::from_static("information"),
            long("Licensed under MIT or Apache-2.0. Warren, an AMQP 0-9-1 broker in Rust"),
        );
        props.insert(
            ShortString::from_static("platform"),
            long(&format!("Rust (Warren {})", env!("CARGO_PKG_VERSION"))),
        );
        props.insert(ShortString::from_static("product"), long(&identity.product));
        props.insert(ShortString::from_static("version"), long(&identity.version));
        self.out.method(
            0,
            m::ConnectionStart {
                version_major: 0,
                version_minor: 9,
                server_properties: props,
                mechanisms: bytes::Bytes::from_static(auth::MECHANISMS.as_bytes()),
                locales: bytes::Bytes::from_static(b"en_US"),
            },
        );
    }

    fn handle_method0(&mut self, method: Method) -> Result<(), ConnectionError> {
        let class_id = method.class_id();
        let method_id = method.method_id();
        match (self.phase, method) {
            (Phase::AwaitStartOk, Method::ConnectionStartOk(start_ok)) => {
                self.recv_start_ok(start_ok)
            }
            (Phase::AwaitTuneOk, Method::ConnectionTuneOk(tune_ok)) => self.recv_tune_ok(tune_ok),
            (Phase::AwaitOpen, Method::ConnectionOpen(open)) => self.recv_open(open),
            (_, Method::ConnectionClose(close)) => {
                info!(code = close.reply_code, text = ?close.reply_text, "client closed connection");
                self.release_all_channels();
                self.out.method(0, m::ConnectionCloseOk {});
                self.phase = Phase::Done;
                Ok(())
            }
            (Phase::Open, Method::ConnectionCloseOk(_)) => Ok(()),
            (Phase::Open, Method::ConnectionUpdateSecret(_)) => {
                self.out.method(0, m::ConnectionUpdateSecretOk {});
                Ok(())
            }
            (_, method) => Err(ConnectionError::command_invalid(format!(
                "unexpected method on channel 0: {}.{}",
                method.class_id(),
                method.method_id()
            ))
            .on(class_id, method_id)),
        }
    }

    fn recv_start_ok(&mut self, start_ok: m::ConnectionStartOk) -> Result<(), ConnectionError> {
        if let Some(FieldValue::Table(caps)) = start_ok.client_properties.get(b"capabilities") {
            let flag = |name: &[u8]| matches!(caps.get(name), Some(FieldValue::Bool(true)));
            self.caps = ClientCaps {
                consumer_cancel_notify: flag(b"consumer_cancel_notify"),
                connection_blocked: flag(b"connection.blocked"),
                authentication_failure_close: flag(b"authentication_failure_close"),
            };
        }
        let mechanism = start_ok.mechanism.as_bytes();
        let creds = match auth::parse_response(mechanism, &start_ok.response) {
            Ok(creds) => creds,
            Err(auth::SaslError::UnknownMechanism(name)) => {
                info!(mechanism = ?name, "login refused: unknown mechanism");
                return self.delay_refusal(Some(
                    ConnectionError::command_invalid(format!(
                        "unknown authentication mechanism '{name}'"
                    ))
                    .on(10, 11),
                ));
            }
            Err(auth::SaslError::Malformed) => {
                return self.refuse_login(format!(
                    "{} login refused: response invalid",
                    String::from_utf8_lossy(mechanism)
                ));
            }
        };
        let username = String::from_utf8_lossy(&creds.username).into_owned();
        let config = &self.broker.config;
        let user_ok = config
            .users
            .iter()
            .find(|u| u.name == username)
            .is_some_and(|u| auth::verify_password(&u.password_hash, &creds.password));
        if !user_ok {
            return self.refuse_login(format!(
                "Login was refused using authentication mechanism {}. For details see the broker logfile.",
                String::from_utf8_lossy(mechanism)
            ));
        }
        if !login_allowed_from(&config.loopback_users, &username, self.peer.ip()) {
            return self.refuse_login(format!("user '{username}' can only connect via localhost"));
        }
        self.user = username;
        let limits = &config.limits;
        self.out.method(
            0,
            m::ConnectionTune {
                channel_max: limits.channel_max,
                frame_max: limits.frame_max,
                heartbeat: limits.heartbeat,
            },
        );
        self.phase = Phase::AwaitTuneOk;
        Ok(())
    }

    /// A failed login: 403 `connection.close` to clients that advertise
    /// `authentication_failure_close`, a plain socket close for the others (RabbitMQ's rule).
    fn refuse_login(&mut self, text: String) -> Result<(), ConnectionError> {
        let close = self
            .caps
            .authentication_failure_close
            .then(|| ConnectionError::new(ReplyCode::AccessRefused, text.clone()));
        info!(text = ?text, "login refused");
        self.delay_refusal(close)
    }

    /// Answers a refused login only after `auth_failure_delay`, dropping the client's input
    /// meanwhile and keeping its unauthenticated slot, so each guess costs the guesser time
    /// while the broker holds nothing but an idle socket.
    fn delay_refusal(&mut self, close: Option<ConnectionError>) -> Result<(), ConnectionError> {
        let delay = self.broker.config.limits.auth_failure_delay;
        if delay.is_zero() {
            return match close {
                Some(e) => Err(e),
                None => {
                    self.phase = Phase::Done;
                    Ok(())
                }
            };
        }
        self.refusal = close;
        self.phase = Phase::Refused;
        self.discard_input = true;
        self.deadline = Some(Instant::now() + delay);
        Ok(())
    }

    /// The refusal delay is over: send the close (the client may answer it with close-ok), or
    /// just drop the socket.
    fn end_refusal(&mut self) {
        self.discard_input = false;
        match self.refusal.take() {
            Some(e) => self.send_connection_close(e),
            None => self.phase = Phase::Done,
        }
    }

    fn recv_tune_ok(&mut self, tune_ok: m::ConnectionTuneOk) -> Result<(), ConnectionError> {
        let limits = &self.broker.config.limits;
        negotiate(
            "channel_max",
            0,
            u32::from(limits.channel_max),
            u32::from(tune_ok.channel_max),
        )?;
        negotiate("frame_max", 4096, limits.frame_max, tune_ok.frame_max)?;
        self.channel_max = tune_ok.channel_max;
        self.frame_max = tune_ok.frame_max;
        self.out.frame_max = tune_ok.frame_max;
        self.heartbeat = tune_ok.heartbeat;
        self.phase = Phase::AwaitOpen;
        Ok(())
    }

    fn recv_open(&mut self, open: m::ConnectionOpen) -> Result<(), ConnectionError> {
        let name = open.virtual_host.to_string();
        let Some(vhost) = self.broker.vhost(&name) else {
            return Err(ConnectionError::not_allowed(format!("vhost {name} not found")).on(10, 40));
        };
        let allowed = self
            .broker
            .config
            .users
            .iter()
            .find(|u| u.name == self.user)
            .is_some_and(|u| u.vhosts.is_empty() || u.vhosts.contains(&name));
        if !allowed {
            return Err(ConnectionError::not_allowed(format!(
                "access to vhost '{name}' refused for user '{}'",
                self.user
            ))
            .on(10, 40));
        }
        self.vhost = Some(vhost);
        self.out.method(0, m::ConnectionOpenOk {});
        self.phase = Phase::Open;
        self.handshake_slot = None;
        self.deadline = None;
        info!(user = ?self.user, vhost = ?name, "connection opened");
        Ok(())
    }
}

/// Whether a frame holds a password or token, which must never reach the logs (REFERENCE row 24).
fn carries_credentials(frame: &Frame) -> bool {
    matches!(
        frame,
        Frame::Method {
            method: Method::ConnectionStartOk(_)
                | Method::ConnectionSecureOk(_)
                | Method::ConnectionUpdateSecret(_),
            ..
        }
    )
}

/// RabbitMQ's `loopback_users` rule: those users may only log in from a loopback address.
/// The real peer address is checked (an IPv4 client of a dual-stack listener shows up as
/// `::ffff:127.0.0.1`, which counts as loopback).
fn login_allowed_from(loopback_users: &[String], username: &str, peer: std::net::IpAddr) -> bool {
    !loopback_users.iter().any(|u| u == username) || peer.to_canonical().is_loopback()
}

/// RabbitMQ's `validate_negotiated_integer_value`: the client may lower a limit, not raise it,
/// and 0 ("no limit") counts as above any server limit.
fn negotiate(field: &str, min: u32, server: u32, client: u32) -> Result<(), ConnectionError> {
    if client != 0 && client < min {
        return Err(ConnectionError::not_allowed(format!(
            "negotiated {field} = {client} is lower than the minimum allowed value ({min})"
        ))
        .on(10, 31));
    }
    if server != 0 && (client == 0 || client > server) {
        let detail = if client == 0 && field == "channel_max" {
            " (no limit)"
        } else {
            ""
        };
        return Err(ConnectionError::not_allowed(format!(
            "negotiated {field} = {client}{detail} is higher than the maximum allowed value ({server})"
        ))
        .on(10, 31));
    }
    Ok(())
}

fn frame_channel(frame: &Frame) -> u16 {
    match frame {
        Frame::Method { channel, .. }
        | Frame::Header { channel, .. }
        | Frame::Body { channel, .. }
        | Frame::Heartbeat { channel } => *channel,
    }
}

fn long(s: &str) -> FieldValue {
    FieldValue::LongString(bytes::Bytes::copy_from_slice(s.as_bytes()))
}

/// A reply text as a short string, cut at 255 bytes (on a char boundary) if longer.
pub fn short(text: &str) -> ShortString {
    let mut end = text.len().min(ShortString::MAX_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::try_from(text.get(..end).unwrap_or_default()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_users_only_from_loopback() {
        let users = vec!["guest".to_owned()];
        let local: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: std::net::IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let remote: std::net::IpAddr = "10.1.2.3".parse().unwrap();
        let remote6: std::net::IpAddr = "2001:db8::1".parse().unwrap();
        assert!(login_allowed_from(&users, "guest", local));
        assert!(login_allowed_from(&users, "guest", mapped));
        assert!(login_allowed_from(&users, "guest", "::1".parse().unwrap()));
        assert!(!login_allowed_from(&users, "guest", remote));
        assert!(!login_allowed_from(&users, "guest", remote6));
        assert!(login_allowed_from(&users, "alice", remote));
    }

    #[test]
    fn negotiation_follows_rabbit_reader() {
        assert!(negotiate("frame_max", 4096, 131072, 4096).is_ok());
        assert!(negotiate("frame_max", 4096, 131072, 4095).is_err());
        assert!(negotiate("frame_max", 4096, 131072, 0).is_err());
        assert!(negotiate("channel_max", 0, 2047, 0).is_err());
        assert!(negotiate("channel_max", 0, 0, 0).is_ok());
        assert!(negotiate("channel_max", 0, 2047, 1).is_ok());
    }
}
