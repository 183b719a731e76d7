//! The handful of AMQP 0-9-1 frames the load generator sends and reads, behind a narrow
//! interface (`Out`, `In`, `decode`) so the client code does not care who does the byte work.
//!
//! This first version encodes and decodes by hand; it is meant to be replaced by calls into
//! `warren-codec` once that crate's frame layer lands, which changes only this file.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Frame types (AMQP 0-9-1 section 4.2.3).
const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// The class of `basic.*` methods and of their content headers.
const CLASS_BASIC: u16 = 60;
/// The largest frame we accept, whatever was negotiated: a sanity bound against garbage.
const MAX_FRAME: usize = 16 * 1024 * 1024;

/// What went wrong reading the broker's bytes.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {0} bytes is larger than we accept")]
    FrameTooLarge(usize),
    #[error("frame does not end with 0xCE")]
    BadFrameEnd,
    #[error("frame type {0} is unknown")]
    BadFrameType(u8),
    #[error("method {class_id}.{method_id} is truncated")]
    Truncated { class_id: u16, method_id: u16 },
}

/// A field table value, as far as the generator needs them (queue arguments, headers).
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Str(String),
    Int(i64),
    Bool(bool),
}

/// A field table: names and values in order.
pub type Table = Vec<(String, Arg)>;

/// Methods the generator sends.
#[derive(Debug, Clone)]
pub enum Out<'a> {
    StartOk {
        user: &'a str,
        password: &'a str,
    },
    TuneOk {
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    },
    Open {
        vhost: &'a str,
    },
    ConnectionClose {
        code: u16,
        text: &'a str,
    },
    ConnectionCloseOk,
    ChannelOpen,
    ChannelCloseOk,
    ExchangeDeclare {
        exchange: &'a str,
        kind: &'a str,
        durable: bool,
        auto_delete: bool,
    },
    QueueDeclare {
        queue: &'a str,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: &'a Table,
    },
    QueueBind {
        queue: &'a str,
        exchange: &'a str,
        routing_key: &'a str,
        arguments: &'a Table,
    },
    QueuePurge {
        queue: &'a str,
    },
    QueueDelete {
        queue: &'a str,
    },
    ExchangeDelete {
        exchange: &'a str,
    },
    BasicQos {
        prefetch_count: u16,
    },
    BasicConsume {
        queue: &'a str,
        consumer_tag: &'a str,
        no_ack: bool,
    },
    BasicPublish {
        exchange: &'a str,
        routing_key: &'a str,
    },
    BasicAck {
        delivery_tag: u64,
        multiple: bool,
    },
    ConfirmSelect,
}

/// Methods the generator reads; the fields it does not use are skipped.
#[derive(Debug, Clone, PartialEq)]
pub enum In {
    ConnectionStart,
    ConnectionTune {
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    },
    ConnectionOpenOk,
    ConnectionClose {
        code: u16,
        text: String,
    },
    ConnectionCloseOk,
    ConnectionBlocked,
    ConnectionUnblocked,
    ChannelOpenOk,
    ChannelClose {
        code: u16,
        text: String,
    },
    ChannelCloseOk,
    ExchangeDeclareOk,
    ExchangeDeleteOk,
    QueueDeclareOk {
        message_count: u32,
    },
    QueueBindOk,
    QueuePurgeOk {
        message_count: u32,
    },
    QueueDeleteOk {
        message_count: u32,
    },
    BasicQosOk,
    BasicConsumeOk,
    BasicCancel,
    BasicDeliver {
        delivery_tag: u64,
        redelivered: bool,
    },
    BasicAck {
        delivery_tag: u64,
        multiple: bool,
    },
    BasicNack {
        delivery_tag: u64,
        multiple: bool,
    },
    BasicReturn {
        code: u16,
    },
    ConfirmSelectOk,
    Other {
        class_id: u16,
        method_id: u16,
    },
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Method { channel: u16, method: In },
    Header { channel: u16, body_size: u64 },
    Body { channel: u16, payload: Bytes },
    Heartbeat,
}

/// The 8 bytes a client sends first.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

fn put_short_str(buf: &mut BytesMut, s: &str) {
    // Names longer than 255 bytes are refused by the CLI; truncating here keeps the frame valid.
    let bytes = &s.as_bytes()[..s.len().min(255)];
    buf.put_u8(bytes.len() as u8);
    buf.put_slice(bytes);
}

fn put_long_str(buf: &mut BytesMut, s: &[u8]) {
    buf.put_u32(s.len() as u32);
    buf.put_slice(s);
}

/// Encodes a field table (4-byte size, then name, type letter, value).
pub fn put_table(buf: &mut BytesMut, table: &Table) {
    let size_at = buf.len();
    buf.put_u32(0);
    for (name, value) in table {
        put_short_str(buf, name);
        match value {
            Arg::Str(s) => {
                buf.put_u8(b'S');
                put_long_str(buf, s.as_bytes());
            }
            Arg::Int(i) => {
                buf.put_u8(b'l');
                buf.put_i64(*i);
            }
            Arg::Bool(b) => {
                buf.put_u8(b't');
                buf.put_u8(u8::from(*b));
            }
        }
    }
    let size = (buf.len() - size_at - 4) as u32;
    buf[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
}

fn bits(flags: &[bool]) -> u8 {
    flags
        .iter()
        .enumerate()
        .fold(0u8, |acc, (i, &f)| acc | (u8::from(f) << i))
}

/// Appends one method frame to `buf`.
pub fn put_method(buf: &mut BytesMut, channel: u16, method: &Out<'_>) {
    buf.put_u8(FRAME_METHOD);
    buf.put_u16(channel);
    let size_at = buf.len();
    buf.put_u32(0);
    let empty = Table::new();
    match method {
        Out::StartOk { user, password } => {
            buf.put_u16(10);
            buf.put_u16(11);
            let props = vec![("product".into(), Arg::Str("warren-loadgen".into()))];
            put_table(buf, &props);
            put_short_str(buf, "PLAIN");
            let mut response = Vec::with_capacity(user.len() + password.len() + 2);
            response.push(0);
            response.extend_from_slice(user.as_bytes());
            response.push(0);
            response.extend_from_slice(password.as_bytes());
            put_long_str(buf, &response);
            put_short_str(buf, "en_US");
        }
        Out::TuneOk {
            channel_max,
            frame_max,
            heartbeat,
        } => {
            buf.put_u16(10);
            buf.put_u16(31);
            buf.put_u16(*channel_max);
            buf.put_u32(*frame_max);
            buf.put_u16(*heartbeat);
        }
        Out::Open { vhost } => {
            buf.put_u16(10);
            buf.put_u16(40);
            put_short_str(buf, vhost);
            put_short_str(buf, "");
            buf.put_u8(0);
        }
        Out::ConnectionClose { code, text } => {
            buf.put_u16(10);
            buf.put_u16(50);
            buf.put_u16(*code);
            put_short_str(buf, text);
            buf.put_u16(0);
            buf.put_u16(0);
        }
        Out::ConnectionCloseOk => {
            buf.put_u16(10);
            buf.put_u16(51);
        }
        Out::ChannelOpen => {
            buf.put_u16(20);
            buf.put_u16(10);
            put_short_str(buf, "");
        }
        Out::ChannelCloseOk => {
            buf.put_u16(20);
            buf.put_u16(41);
        }
        Out::ExchangeDeclare {
            exchange,
            kind,
            durable,
            auto_delete,
        } => {
            buf.put_u16(40);
            buf.put_u16(10);
            buf.put_u16(0);
            put_short_str(buf, exchange);
            put_short_str(buf, kind);
            buf.put_u8(bits(&[false, *durable, *auto_delete, false, false]));
            put_table(buf, &empty);
        }
        Out::ExchangeDelete { exchange } => {
            buf.put_u16(40);
            buf.put_u16(20);
            buf.put_u16(0);
            put_short_str(buf, exchange);
            buf.put_u8(0);
        }
        Out::QueueDeclare {
            queue,
            passive,
            durable,
            exclusive,
            auto_delete,
            arguments,
        } => {
            buf.put_u16(50);
            buf.put_u16(10);
            buf.put_u16(0);
            put_short_str(buf, queue);
            buf.put_u8(bits(&[*passive, *durable, *exclusive, *auto_delete, false]));
            put_table(buf, arguments);
        }
        Out::QueueBind {
            queue,
            exchange,
            routing_key,
            arguments,
        } => {
            buf.put_u16(50);
            buf.put_u16(20);
            buf.put_u16(0);
            put_short_str(buf, queue);
            put_short_str(buf, exchange);
            put_short_str(buf, routing_key);
            buf.put_u8(0);
            put_table(buf, arguments);
        }
        Out::QueuePurge { queue } => {
            buf.put_u16(50);
            buf.put_u16(30);
            buf.put_u16(0);
            put_short_str(buf, queue);
            buf.put_u8(0);
        }
        Out::QueueDelete { queue } => {
            buf.put_u16(50);
            buf.put_u16(40);
            buf.put_u16(0);
            put_short_str(buf, queue);
            buf.put_u8(0);
        }
        Out::BasicQos { prefetch_count } => {
            buf.put_u16(60);
            buf.put_u16(10);
            buf.put_u32(0);
            buf.put_u16(*prefetch_count);
            buf.put_u8(0);
        }
        Out::BasicConsume {
            queue,
            consumer_tag,
            no_ack,
        } => {
            buf.put_u16(60);
            buf.put_u16(20);
            buf.put_u16(0);
            put_short_str(buf, queue);
            put_short_str(buf, consumer_tag);
            buf.put_u8(bits(&[false, *no_ack, false, false]));
            put_table(buf, &empty);
        }
        Out::BasicPublish {
            exchange,
            routing_key,
        } => {
            buf.put_u16(60);
            buf.put_u16(40);
            buf.put_u16(0);
            put_short_str(buf, exchange);
            put_short_str(buf, routing_key);
            buf.put_u8(0);
        }
        Out::BasicAck {
            delivery_tag,
            multiple,
        } => {
            buf.put_u16(60);
            buf.put_u16(80);
            buf.put_u64(*delivery_tag);
            buf.put_u8(u8::from(*multiple));
        }
        Out::ConfirmSelect => {
            buf.put_u16(85);
            buf.put_u16(10);
            buf.put_u8(0);
        }
    }
    let size = (buf.len() - size_at - 4) as u32;
    buf[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    buf.put_u8(FRAME_END);
}

/// Appends a `basic` content header frame: body size, and the properties the generator sets
/// (delivery-mode 2 when persistent, and a headers table when given).
pub fn put_header(
    buf: &mut BytesMut,
    channel: u16,
    body_size: u64,
    persistent: bool,
    headers: Option<&Table>,
) {
    buf.put_u8(FRAME_HEADER);
    buf.put_u16(channel);
    let size_at = buf.len();
    buf.put_u32(0);
    buf.put_u16(CLASS_BASIC);
    buf.put_u16(0);
    buf.put_u64(body_size);
    let mut flags = 0u16;
    if headers.is_some() {
        flags |= 1 << 13;
    }
    if persistent {
        flags |= 1 << 12;
    }
    buf.put_u16(flags);
    if let Some(headers) = headers {
        put_table(buf, headers);
    }
    if persistent {
        buf.put_u8(2);
    }
    let size = (buf.len() - size_at - 4) as u32;
    buf[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    buf.put_u8(FRAME_END);
}

/// Appends body frames for `body`, split so that no frame exceeds `frame_max`.
pub fn put_body(buf: &mut BytesMut, channel: u16, body: &[u8], frame_max: u32) {
    let chunk = (frame_max as usize).saturating_sub(8).max(1);
    for part in body.chunks(chunk) {
        buf.put_u8(FRAME_BODY);
        buf.put_u16(channel);
        buf.put_u32(part.len() as u32);
        buf.put_slice(part);
        buf.put_u8(FRAME_END);
    }
}

/// A cursor over a method's arguments that reports truncation instead of panicking.
struct Args<'a> {
    bytes: &'a [u8],
    class_id: u16,
    method_id: u16,
}

impl Args<'_> {
    fn truncated(&self) -> WireError {
        WireError::Truncated {
            class_id: self.class_id,
            method_id: self.method_id,
        }
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        if self.bytes.is_empty() {
            return Err(self.truncated());
        }
        Ok(self.bytes.get_u8())
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        if self.bytes.len() < 2 {
            return Err(self.truncated());
        }
        Ok(self.bytes.get_u16())
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        if self.bytes.len() < 4 {
            return Err(self.truncated());
        }
        Ok(self.bytes.get_u32())
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        if self.bytes.len() < 8 {
            return Err(self.truncated());
        }
        Ok(self.bytes.get_u64())
    }
    fn short_str(&mut self) -> Result<String, WireError> {
        let len = usize::from(self.u8()?);
        if self.bytes.len() < len {
            return Err(self.truncated());
        }
        let s = String::from_utf8_lossy(&self.bytes[..len]).into_owned();
        self.bytes.advance(len);
        Ok(s)
    }
    fn skip_short_str(&mut self) -> Result<(), WireError> {
        let len = usize::from(self.u8()?);
        if self.bytes.len() < len {
            return Err(self.truncated());
        }
        self.bytes.advance(len);
        Ok(())
    }
}

fn decode_method(payload: &[u8]) -> Result<In, WireError> {
    let mut args = Args {
        bytes: payload,
        class_id: 0,
        method_id: 0,
    };
    let class_id = args.u16()?;
    let method_id = args.u16()?;
    args.class_id = class_id;
    args.method_id = method_id;
    Ok(match (class_id, method_id) {
        (10, 10) => In::ConnectionStart,
        (10, 30) => In::ConnectionTune {
            channel_max: args.u16()?,
            frame_max: args.u32()?,
            heartbeat: args.u16()?,
        },
        (10, 41) => In::ConnectionOpenOk,
        (10, 50) => In::ConnectionClose {
            code: args.u16()?,
            text: args.short_str()?,
        },
        (10, 51) => In::ConnectionCloseOk,
        (10, 60) => In::ConnectionBlocked,
        (10, 61) => In::ConnectionUnblocked,
        (20, 11) => In::ChannelOpenOk,
        (20, 40) => In::ChannelClose {
            code: args.u16()?,
            text: args.short_str()?,
        },
        (20, 41) => In::ChannelCloseOk,
        (40, 11) => In::ExchangeDeclareOk,
        (40, 21) => In::ExchangeDeleteOk,
        (50, 11) => {
            args.skip_short_str()?;
            In::QueueDeclareOk {
                message_count: args.u32()?,
            }
        }
        (50, 21) => In::QueueBindOk,
        (50, 31) => In::QueuePurgeOk {
            message_count: args.u32()?,
        },
        (50, 41) => In::QueueDeleteOk {
            message_count: args.u32()?,
        },
        (60, 11) => In::BasicQosOk,
        (60, 21) => In::BasicConsumeOk,
        (60, 30) => In::BasicCancel,
        (60, 50) => In::BasicReturn { code: args.u16()? },
        (60, 60) => {
            args.skip_short_str()?;
            let delivery_tag = args.u64()?;
            let redelivered = args.u8()? & 1 != 0;
            In::BasicDeliver {
                delivery_tag,
                redelivered,
            }
        }
        (60, 80) => In::BasicAck {
            delivery_tag: args.u64()?,
            multiple: args.u8()? & 1 != 0,
        },
        (60, 120) => In::BasicNack {
            delivery_tag: args.u64()?,
            multiple: args.u8()? & 1 != 0,
        },
        (85, 11) => In::ConfirmSelectOk,
        _ => In::Other {
            class_id,
            method_id,
        },
    })
}

/// Takes one whole frame off the front of `buf`, or `Ok(None)` until one is buffered.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    if size > MAX_FRAME {
        return Err(WireError::FrameTooLarge(size));
    }
    if buf.len() < 7 + size + 1 {
        buf.reserve(7 + size + 1 - buf.len());
        return Ok(None);
    }
    if buf[7 + size] != FRAME_END {
        return Err(WireError::BadFrameEnd);
    }
    buf.advance(7);
    let payload = buf.split_to(size);
    buf.advance(1);
    Ok(Some(match kind {
        FRAME_METHOD => Frame::Method {
            channel,
            method: decode_method(&payload)?,
        },
        FRAME_HEADER => {
            let mut args = Args {
                bytes: &payload,
                class_id: CLASS_BASIC,
                method_id: 0,
            };
            let _class = args.u16()?;
            let _weight = args.u16()?;
            Frame::Header {
                channel,
                body_size: args.u64()?,
            }
        }
        FRAME_BODY => Frame::Body {
            channel,
            payload: payload.freeze(),
        },
        FRAME_HEARTBEAT => Frame::Heartbeat,
        other => return Err(WireError::BadFrameType(other)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_round_trips_through_encode_and_decode() {
        let mut buf = BytesMut::new();
        put_method(
            &mut buf,
            1,
            &Out::BasicAck {
                delivery_tag: 42,
                multiple: true,
            },
        );
        let frame = decode(&mut buf).unwrap().unwrap();
        assert_eq!(
            frame,
            Frame::Method {
                channel: 1,
                method: In::BasicAck {
                    delivery_tag: 42,
                    multiple: true
                }
            }
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut whole = BytesMut::new();
        put_header(&mut whole, 3, 1000, true, None);
        put_body(&mut whole, 3, &[7u8; 1000], 300);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for byte in whole.iter() {
            buf.put_u8(*byte);
            while let Some(frame) = decode(&mut buf).unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(
            frames.len(),
            1 + 4,
            "a header and 1000 bytes in frames of at most 292"
        );
        assert_eq!(
            frames[0],
            Frame::Header {
                channel: 3,
                body_size: 1000
            }
        );
        let body: usize = frames[1..]
            .iter()
            .map(|f| match f {
                Frame::Body { payload, .. } => payload.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(body, 1000);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut buf = BytesMut::from(&[1u8, 0, 1, 0, 0, 0, 2, 0, 60, 0xCE][..]);
        assert!(decode(&mut buf).is_err());
        let mut buf = BytesMut::from(&[1u8, 0, 1, 0, 0, 0, 1, 0, 0x00][..]);
        assert!(matches!(decode(&mut buf), Err(WireError::BadFrameEnd)));
    }
}
