//! The handful of AMQP 0-9-1 frames the load generator sends and reads, behind a narrow
//! interface (`Out`, `In`, `decode`) over warren-codec, so the producer and consumer loops only
//! see the few fields they use.

use bytes::{BufMut, Bytes, BytesMut};
use warren_codec as codec;
use warren_codec::{FieldTable, FieldValue, Method, ShortString};

/// The largest frame we accept, whatever was negotiated: a sanity bound against garbage.
const MAX_FRAME: u32 = 16 * 1024 * 1024;

/// What went wrong reading the broker's bytes.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(transparent)]
    Decode(#[from] codec::DecodeError),
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

pub use codec::frame::PROTOCOL_HEADER;

/// A short string from a name the CLI already limited to 255 bytes (longer ones are cut, which
/// keeps the frame valid; the broker then refuses the unknown name).
fn short(s: &str) -> ShortString {
    let bytes = s.as_bytes();
    let cut = Bytes::copy_from_slice(&bytes[..bytes.len().min(255)]);
    ShortString::from_bytes(cut).unwrap_or_default()
}

/// Converts a table of `Arg`s to a codec field table.
pub fn field_table(table: &Table) -> FieldTable {
    let mut out = FieldTable::default();
    for (name, value) in table {
        let value = match value {
            Arg::Str(s) => FieldValue::LongString(Bytes::copy_from_slice(s.as_bytes())),
            Arg::Int(i) => FieldValue::I64(*i),
            Arg::Bool(b) => FieldValue::Bool(*b),
        };
        out.insert(short(name), value);
    }
    out
}

fn to_method(method: &Out<'_>) -> Method {
    match method {
        Out::StartOk { user, password } => {
            let mut response = Vec::with_capacity(user.len() + password.len() + 2);
            response.push(0);
            response.extend_from_slice(user.as_bytes());
            response.push(0);
            response.extend_from_slice(password.as_bytes());
            let props = vec![("product".to_string(), Arg::Str("warren-loadgen".into()))];
            codec::ConnectionStartOk {
                client_properties: field_table(&props),
                mechanism: short("PLAIN"),
                response: Bytes::from(response),
                locale: short("en_US"),
            }
            .into()
        }
        Out::TuneOk {
            channel_max,
            frame_max,
            heartbeat,
        } => codec::ConnectionTuneOk {
            channel_max: *channel_max,
            frame_max: *frame_max,
            heartbeat: *heartbeat,
        }
        .into(),
        Out::Open { vhost } => codec::ConnectionOpen {
            virtual_host: short(vhost),
        }
        .into(),
        Out::ConnectionClose { code, text } => codec::ConnectionClose {
            reply_code: *code,
            reply_text: short(text),
            class_id: 0,
            method_id: 0,
        }
        .into(),
        Out::ConnectionCloseOk => codec::ConnectionCloseOk.into(),
        Out::ChannelOpen => codec::ChannelOpen.into(),
        Out::ChannelCloseOk => codec::ChannelCloseOk.into(),
        Out::ExchangeDeclare {
            exchange,
            kind,
            durable,
            auto_delete,
        } => codec::ExchangeDeclare {
            exchange: short(exchange),
            kind: short(kind),
            passive: false,
            durable: *durable,
            auto_delete: *auto_delete,
            internal: false,
            nowait: false,
            arguments: FieldTable::default(),
        }
        .into(),
        Out::ExchangeDelete { exchange } => codec::ExchangeDelete {
            exchange: short(exchange),
            if_unused: false,
            nowait: false,
        }
        .into(),
        Out::QueueDeclare {
            queue,
            passive,
            durable,
            exclusive,
            auto_delete,
            arguments,
        } => codec::QueueDeclare {
            queue: short(queue),
            passive: *passive,
            durable: *durable,
            exclusive: *exclusive,
            auto_delete: *auto_delete,
            nowait: false,
            arguments: field_table(arguments),
        }
        .into(),
        Out::QueueBind {
            queue,
            exchange,
            routing_key,
            arguments,
        } => codec::QueueBind {
            queue: short(queue),
            exchange: short(exchange),
            routing_key: short(routing_key),
            nowait: false,
            arguments: field_table(arguments),
        }
        .into(),
        Out::QueuePurge { queue } => codec::QueuePurge {
            queue: short(queue),
            nowait: false,
        }
        .into(),
        Out::QueueDelete { queue } => codec::QueueDelete {
            queue: short(queue),
            if_unused: false,
            if_empty: false,
            nowait: false,
        }
        .into(),
        Out::BasicQos { prefetch_count } => codec::BasicQos {
            prefetch_size: 0,
            prefetch_count: *prefetch_count,
            global: false,
        }
        .into(),
        Out::BasicConsume {
            queue,
            consumer_tag,
            no_ack,
        } => codec::BasicConsume {
            queue: short(queue),
            consumer_tag: short(consumer_tag),
            no_local: false,
            no_ack: *no_ack,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        }
        .into(),
        Out::BasicPublish {
            exchange,
            routing_key,
        } => codec::BasicPublish {
            exchange: short(exchange),
            routing_key: short(routing_key),
            mandatory: false,
            immediate: false,
        }
        .into(),
        Out::BasicAck {
            delivery_tag,
            multiple,
        } => codec::BasicAck {
            delivery_tag: *delivery_tag,
            multiple: *multiple,
        }
        .into(),
        Out::ConfirmSelect => codec::ConfirmSelect { nowait: false }.into(),
    }
}

/// Appends one method frame to `buf`.
pub fn put_method(buf: &mut BytesMut, channel: u16, method: &Out<'_>) {
    // Basic.ack is the one method sent per batch of messages; skip building a `Method` for it.
    if let Out::BasicAck {
        delivery_tag,
        multiple,
    } = method
    {
        buf.put_slice(&[1]);
        buf.put_u16(channel);
        buf.put_u32(13);
        buf.put_u16(60);
        buf.put_u16(80);
        buf.put_u64(*delivery_tag);
        buf.put_u8(u8::from(*multiple));
        buf.put_u8(0xCE);
        return;
    }
    codec::frame::encode_method_frame(channel, &to_method(method), buf);
}

/// Appends a `basic` content header frame: body size, and the properties the generator sets
/// (delivery-mode 2 when persistent, and a headers table when given).
pub fn put_header(
    buf: &mut BytesMut,
    channel: u16,
    body_size: u64,
    persistent: bool,
    headers: Option<&Table>,
    expiration: Option<u32>,
) {
    let properties = codec::BasicProperties {
        headers: headers.map(field_table),
        delivery_mode: persistent.then_some(2),
        expiration: expiration
            .and_then(|ms| ShortString::from_bytes(Bytes::from(ms.to_string())).ok()),
        ..Default::default()
    };
    codec::frame::encode_basic_header_frame(channel, body_size, &properties, buf);
}

/// Appends body frames for `body`, split so that no frame exceeds `frame_max`.
pub fn put_body(buf: &mut BytesMut, channel: u16, body: &[u8], frame_max: u32) {
    codec::frame::encode_body_frames(channel, body, frame_max, buf);
}

fn from_method(method: Method) -> In {
    match method {
        Method::ConnectionStart(_) => In::ConnectionStart,
        Method::ConnectionTune(m) => In::ConnectionTune {
            channel_max: m.channel_max,
            frame_max: m.frame_max,
            heartbeat: m.heartbeat,
        },
        Method::ConnectionOpenOk(_) => In::ConnectionOpenOk,
        Method::ConnectionClose(m) => In::ConnectionClose {
            code: m.reply_code,
            text: m.reply_text.to_string(),
        },
        Method::ConnectionCloseOk(_) => In::ConnectionCloseOk,
        Method::ConnectionBlocked(_) => In::ConnectionBlocked,
        Method::ConnectionUnblocked(_) => In::ConnectionUnblocked,
        Method::ChannelOpenOk(_) => In::ChannelOpenOk,
        Method::ChannelClose(m) => In::ChannelClose {
            code: m.reply_code,
            text: m.reply_text.to_string(),
        },
        Method::ChannelCloseOk(_) => In::ChannelCloseOk,
        Method::ExchangeDeclareOk(_) => In::ExchangeDeclareOk,
        Method::ExchangeDeleteOk(_) => In::ExchangeDeleteOk,
        Method::QueueDeclareOk(m) => In::QueueDeclareOk {
            message_count: m.message_count,
        },
        Method::QueueBindOk(_) => In::QueueBindOk,
        Method::QueuePurgeOk(m) => In::QueuePurgeOk {
            message_count: m.message_count,
        },
        Method::QueueDeleteOk(m) => In::QueueDeleteOk {
            message_count: m.message_count,
        },
        Method::BasicQosOk(_) => In::BasicQosOk,
        Method::BasicConsumeOk(_) => In::BasicConsumeOk,
        Method::BasicCancel(_) => In::BasicCancel,
        Method::BasicReturn(m) => In::BasicReturn { code: m.reply_code },
        Method::BasicDeliver(m) => In::BasicDeliver {
            delivery_tag: m.delivery_tag,
            redelivered: m.redelivered,
        },
        Method::BasicAck(m) => In::BasicAck {
            delivery_tag: m.delivery_tag,
            multiple: m.multiple,
        },
        Method::BasicNack(m) => In::BasicNack {
            delivery_tag: m.delivery_tag,
            multiple: m.multiple,
        },
        Method::ConfirmSelectOk(_) => In::ConfirmSelectOk,
        other => In::Other {
            class_id: other.class_id(),
            method_id: other.method_id(),
        },
    }
}

/// Takes one whole frame off the front of `buf`, or `Ok(None)` until one is buffered.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
    let Some(frame) = codec::decode_frame(buf, MAX_FRAME)? else {
        return Ok(None);
    };
    Ok(Some(match frame {
        codec::Frame::Method { channel, method } => Frame::Method {
            channel,
            method: from_method(method),
        },
        codec::Frame::Header { channel, header } => Frame::Header {
            channel,
            body_size: header.body_size,
        },
        codec::Frame::Body { channel, payload } => Frame::Body { channel, payload },
        codec::Frame::Heartbeat { .. } => Frame::Heartbeat,
    }))
}

/// A frame on the consumer's hot path, read in place without splitting the buffer.
#[derive(Debug, Clone, PartialEq)]
pub enum Hot {
    Deliver {
        delivery_tag: u64,
        redelivered: bool,
    },
    Header {
        body_size: u64,
    },
    /// A body frame: its length and up to its first 16 bytes (where the stamp is).
    Body {
        len: usize,
        front: [u8; 16],
        front_len: usize,
    },
    /// Anything else, decoded by the codec.
    Other(Frame),
}

/// Like `decode`, but reads deliveries, content headers and bodies straight from the buffer and
/// only advances it. Going through `codec::decode_frame` costs a shared-buffer split and
/// several reference-count updates per frame, three frames per message, which made the consumer
/// the generator's most expensive part; the codec still handles every other frame, and the
/// test below checks both paths agree.
pub fn decode_hot(buf: &mut BytesMut) -> Result<Option<Hot>, WireError> {
    let Some(&[kind, _, _, s0, s1, s2, s3]) = buf.get(..7) else {
        return Ok(None);
    };
    let size = u32::from_be_bytes([s0, s1, s2, s3]);
    if size > MAX_FRAME {
        return decode(buf).map(|f| f.map(Hot::Other));
    }
    let size = size as usize;
    let Some(&end) = buf.get(7 + size) else {
        buf.reserve(8 + size - buf.len());
        return Ok(None);
    };
    let payload = buf.get(7..7 + size).unwrap_or_default();
    let hot = match (kind, end) {
        (3, 0xCE) => {
            let mut front = [0u8; 16];
            let front_len = size.min(16);
            front[..front_len].copy_from_slice(&payload[..front_len]);
            Some(Hot::Body {
                len: size,
                front,
                front_len,
            })
        }
        (2, 0xCE) => payload.get(4..12).map(|b| {
            let mut size_bytes = [0u8; 8];
            size_bytes.copy_from_slice(b);
            Hot::Header {
                body_size: u64::from_be_bytes(size_bytes),
            }
        }),
        (1, 0xCE) if payload.get(..4) == Some(&[0, 60, 0, 60]) => {
            // basic.deliver: consumer-tag (short string), delivery-tag, redelivered bit, ...
            let tag_len = usize::from(payload.get(4).copied().unwrap_or(255));
            let at = 5 + tag_len;
            match (payload.get(at..at + 8), payload.get(at + 8)) {
                (Some(tag), Some(bits)) => {
                    let mut tag_bytes = [0u8; 8];
                    tag_bytes.copy_from_slice(tag);
                    Some(Hot::Deliver {
                        delivery_tag: u64::from_be_bytes(tag_bytes),
                        redelivered: bits & 1 != 0,
                    })
                }
                _ => None,
            }
        }
        _ => None,
    };
    match hot {
        Some(hot) => {
            bytes::Buf::advance(buf, 8 + size);
            Ok(Some(hot))
        }
        // Not a hot frame, or a malformed one: let the codec decode it or name the error.
        None => decode(buf).map(|f| f.map(Hot::Other)),
    }
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
        put_header(&mut whole, 3, 1000, true, None, None);
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
        assert!(decode(&mut buf).is_err(), "bad frame end");
    }

    #[test]
    fn the_hot_path_reads_what_the_codec_encodes() {
        let mut buf = BytesMut::new();
        let deliver = codec::BasicDeliver {
            consumer_tag: short("loadgen-3"),
            delivery_tag: 77,
            redelivered: true,
            exchange: short("x"),
            routing_key: short("k"),
        };
        codec::frame::encode_method_frame(1, &deliver.into(), &mut buf);
        put_header(&mut buf, 1, 40, true, None, None);
        put_body(&mut buf, 1, &[9u8; 40], 4096);
        put_method(
            &mut buf,
            1,
            &Out::BasicAck {
                delivery_tag: 5,
                multiple: false,
            },
        );
        let whole = buf.clone();
        let mut hot = Vec::new();
        while let Some(frame) = decode_hot(&mut buf).unwrap() {
            hot.push(frame);
        }
        assert!(buf.is_empty());
        assert_eq!(
            hot[0],
            Hot::Deliver {
                delivery_tag: 77,
                redelivered: true
            }
        );
        assert_eq!(hot[1], Hot::Header { body_size: 40 });
        assert_eq!(
            hot[2],
            Hot::Body {
                len: 40,
                front: [9u8; 16],
                front_len: 16
            }
        );
        assert_eq!(
            hot[3],
            Hot::Other(Frame::Method {
                channel: 1,
                method: In::BasicAck {
                    delivery_tag: 5,
                    multiple: false
                }
            })
        );
        // Byte by byte, nothing is decoded early and the result is the same.
        let mut trickle = BytesMut::new();
        let mut again = Vec::new();
        for byte in whole.iter() {
            trickle.put_u8(*byte);
            while let Some(frame) = decode_hot(&mut trickle).unwrap() {
                again.push(frame);
            }
        }
        assert_eq!(again, hot);
    }

    #[test]
    fn the_hot_path_refuses_garbage() {
        // A method frame whose end byte is wrong goes to the codec, which names the error.
        let mut buf = BytesMut::from(&[1u8, 0, 1, 0, 0, 0, 4, 0, 60, 0, 60, 0x00][..]);
        assert!(decode_hot(&mut buf).is_err());
        // A deliver too short for its delivery tag is not read past its end.
        let mut buf = BytesMut::from(&[1u8, 0, 1, 0, 0, 0, 6, 0, 60, 0, 60, 9, 1, 0xCE][..]);
        assert!(decode_hot(&mut buf).is_err());
    }
}
