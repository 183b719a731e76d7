//! Frames: the protocol header check, the streaming frame decoder over a `BytesMut` read buffer,
//! and the frame encoders that append many frames to one write buffer.
//!
//! ```text
//! 0      1         3             7                  size+7     size+8
//! +------+---------+-------------+  +-------------+  +-----------+
//! | type | channel | size (u32)  |  | payload ... |  | end: 0xCE |
//! +------+---------+-------------+  +-------------+  +-----------+
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::generated::{
    BasicProperties, FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, Method,
    class_id,
};

/// What a client must send first, and what a server answers with before closing when the
/// client sent anything else.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// The header AMQP 0-9 clients send; RabbitMQ serves them as 0-9-1, and so do we.
pub const PROTOCOL_HEADER_0_9: &[u8; 8] = b"AMQP\x01\x01\x00\x09";

/// Bytes in a frame around its payload: 7 of header, 1 frame-end octet.
pub const FRAME_OVERHEAD: usize = 8;

/// The largest frame payload accepted whatever was negotiated, including `frame_max` = 0
/// ("no limit"). 128 MiB is RabbitMQ 3.10's largest message, so no legitimate frame is bigger.
pub const FRAME_MAX_HARD_CAP: u32 = 128 * 1024 * 1024;

/// The result of looking at the first bytes a client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolHeaderCheck {
    /// Fewer than 8 bytes so far, and they match an accepted header: read more.
    NeedMore,
    /// The 8 bytes are an accepted AMQP 0-9-1 header; consume them and start the handshake.
    Ok,
    /// Anything else: write `PROTOCOL_HEADER` and close, as the spec and RabbitMQ do.
    Bad,
}

/// Checks the first bytes a client sent (all of them, or at least the first 8). Reports `Bad`
/// as soon as a byte differs, so an HTTP request or TLS hello is refused without waiting.
pub fn check_protocol_header(received: &[u8]) -> ProtocolHeaderCheck {
    let n = received.len().min(8);
    let head = received.get(..n).unwrap_or_default();
    let matches = |header: &[u8; 8]| header.get(..n) == Some(head);
    if !matches(PROTOCOL_HEADER) && !matches(PROTOCOL_HEADER_0_9) {
        ProtocolHeaderCheck::Bad
    } else if n < 8 {
        ProtocolHeaderCheck::NeedMore
    } else {
        ProtocolHeaderCheck::Ok
    }
}

/// A decoded frame.
// A content header is large (14 properties) but moving it is a memcpy; boxing it would
// cost an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A method frame.
    Method {
        /// The channel number.
        channel: u16,
        /// The method.
        method: Method,
    },
    /// A content header frame.
    Header {
        /// The channel number.
        channel: u16,
        /// The header.
        header: ContentHeader,
    },
    /// A content body frame; `payload` is a zero-copy slice of the read buffer.
    Body {
        /// The channel number.
        channel: u16,
        /// The body bytes.
        payload: Bytes,
    },
    /// A heartbeat. The spec requires channel 0; the connection checks it (505 otherwise).
    Heartbeat {
        /// The channel number.
        channel: u16,
    },
}

impl Frame {
    /// The channel the frame was sent on.
    pub fn channel(&self) -> u16 {
        match self {
            Frame::Method { channel, .. }
            | Frame::Header { channel, .. }
            | Frame::Body { channel, .. }
            | Frame::Heartbeat { channel } => *channel,
        }
    }
}

/// A content header frame's payload.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentHeader {
    /// The class of the content (60 for `basic`; anything else is refused by assembly).
    pub class_id: u16,
    /// The total size of the body frames that follow.
    pub body_size: u64,
    /// The decoded properties (default when `class_id` is not `basic`).
    pub properties: BasicProperties,
    /// Property flags and property list exactly as received, a slice of the read buffer, so a
    /// broker can re-send them on delivery without re-encoding.
    pub raw_properties: Bytes,
}

impl ContentHeader {
    /// A `basic` content header with properties, filling `raw_properties` by encoding them.
    pub fn new(body_size: u64, properties: BasicProperties) -> Self {
        let mut raw = BytesMut::new();
        properties.encode(&mut raw);
        ContentHeader {
            class_id: class_id::BASIC,
            body_size,
            properties,
            raw_properties: raw.freeze(),
        }
    }

    /// Decodes a header frame's payload (class id, weight, body size, flags, properties).
    pub fn decode(payload: &Bytes) -> Result<ContentHeader, DecodeError> {
        ContentHeader::decode_owned(payload.clone())
    }

    /// As `decode`, taking the payload by value so `raw_properties` reuses its reference.
    fn decode_owned(mut payload: Bytes) -> Result<ContentHeader, DecodeError> {
        // Class id, weight and body size, then at least the property flags.
        if payload.len() < 14 {
            return Err(DecodeError::FrameTooShort {
                frame_type: FRAME_HEADER,
                size: payload.len(),
            });
        }
        let class_id = payload.get_u16();
        let weight = payload.get_u16();
        let body_size = payload.get_u64();
        if weight != 0 {
            return Err(DecodeError::NonZeroWeight(weight));
        }
        let raw_properties = payload;
        let properties = if class_id == class_id::BASIC {
            BasicProperties::decode(&raw_properties)
                .map_err(|source| DecodeError::MalformedProperties { class_id, source })?
        } else {
            BasicProperties::default()
        };
        Ok(ContentHeader {
            class_id,
            body_size,
            properties,
            raw_properties,
        })
    }
}

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(None)` until a whole frame is buffered, leaving `buf` untouched. The frame type
/// and the declared size are checked against `frame_max` (0 = no limit, but never above
/// [`FRAME_MAX_HARD_CAP`]) as soon as the 7-byte header is there, before any payload is waited
/// for, so a declared 4 GiB frame is refused without buffering or allocating. On success the
/// frame's bytes are split off `buf`; strings and bodies are zero-copy slices of them.
pub fn decode_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, DecodeError> {
    let Some(header) = buf.get(..7) else {
        return Ok(None);
    };
    let mut header = header;
    let frame_type = header.get_u8();
    let channel = header.get_u16();
    let size = header.get_u32();
    if !matches!(
        frame_type,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(DecodeError::UnknownFrameType(frame_type));
    }
    // RabbitMQ accepts a payload of up to frame_max bytes (8 bytes of slack for clients that
    // forget the frame overhead), so Warren does too.
    let limit = match frame_max {
        0 => FRAME_MAX_HARD_CAP,
        n => n.min(FRAME_MAX_HARD_CAP),
    };
    if size > limit {
        return Err(DecodeError::FrameTooLarge { size, limit });
    }
    // `size` <= 128 MiB, so this cannot overflow even on 32-bit targets.
    let total = size as usize + FRAME_OVERHEAD;
    let Some(&end) = buf.get(total - 1) else {
        return Ok(None);
    };
    if end != FRAME_END {
        return Err(DecodeError::BadFrameEnd(end));
    }
    // Split the frame off, then trim header and frame end in place: one reference count
    // increment per frame, where slicing a frozen frame would take another (and a decrement).
    let mut frame = buf.split_to(total);
    frame.advance(7);
    frame.truncate(size as usize);
    let payload = frame.freeze();
    let frame = match frame_type {
        FRAME_METHOD => Frame::Method {
            channel,
            method: Method::decode(&payload)?,
        },
        FRAME_HEADER => Frame::Header {
            channel,
            header: ContentHeader::decode_owned(payload)?,
        },
        FRAME_BODY => Frame::Body { channel, payload },
        _ => {
            if !payload.is_empty() {
                return Err(DecodeError::FrameTooShort {
                    frame_type,
                    size: payload.len(),
                });
            }
            Frame::Heartbeat { channel }
        }
    };
    Ok(Some(frame))
}

/// Writes a frame header with a zero size; returns the offset of the size to patch.
#[inline]
fn begin_frame(buf: &mut BytesMut, frame_type: u8, channel: u16) -> usize {
    buf.put_u8(frame_type);
    buf.put_u16(channel);
    let at = buf.len();
    buf.put_u32(0);
    at
}

/// Patches the size written by `begin_frame` and appends the frame-end octet.
#[inline]
fn end_frame(buf: &mut BytesMut, at: usize) {
    let size = (buf.len() - at - 4) as u32;
    if let Some(slot) = buf.get_mut(at..at + 4) {
        slot.copy_from_slice(&size.to_be_bytes());
    }
    buf.put_u8(FRAME_END);
}

/// Appends a method frame.
pub fn encode_method_frame(channel: u16, method: &Method, buf: &mut BytesMut) {
    let at = begin_frame(buf, FRAME_METHOD, channel);
    method.encode(buf);
    end_frame(buf, at);
}

/// Appends a content header frame whose flags and property list are `raw_properties` (as
/// received in `ContentHeader::raw_properties`, or from `BasicProperties::encode`).
pub fn encode_header_frame(
    channel: u16,
    class_id: u16,
    body_size: u64,
    raw_properties: &[u8],
    buf: &mut BytesMut,
) {
    buf.reserve(FRAME_OVERHEAD + 12 + raw_properties.len());
    let at = begin_frame(buf, FRAME_HEADER, channel);
    buf.put_u16(class_id);
    buf.put_u16(0);
    buf.put_u64(body_size);
    buf.put_slice(raw_properties);
    end_frame(buf, at);
}

/// Appends a `basic` content header frame, encoding `properties` in place.
pub fn encode_basic_header_frame(
    channel: u16,
    body_size: u64,
    properties: &BasicProperties,
    buf: &mut BytesMut,
) {
    let at = begin_frame(buf, FRAME_HEADER, channel);
    buf.put_u16(class_id::BASIC);
    buf.put_u16(0);
    buf.put_u64(body_size);
    properties.encode(buf);
    end_frame(buf, at);
}

/// Appends body frames carrying `body`, each payload at most `frame_max - 8` bytes (0 = no
/// limit other than [`FRAME_MAX_HARD_CAP`]). An empty body takes no frames, as the spec says.
pub fn encode_body_frames(channel: u16, body: &[u8], frame_max: u32, buf: &mut BytesMut) {
    let limit = match frame_max {
        0 => FRAME_MAX_HARD_CAP as usize,
        n => (n.min(FRAME_MAX_HARD_CAP) as usize)
            .saturating_sub(FRAME_OVERHEAD)
            .max(1),
    };
    let n_frames = body.len().div_ceil(limit);
    buf.reserve(body.len() + n_frames * FRAME_OVERHEAD);
    for chunk in body.chunks(limit) {
        buf.put_u8(FRAME_BODY);
        buf.put_u16(channel);
        buf.put_u32(chunk.len() as u32);
        buf.put_slice(chunk);
        buf.put_u8(FRAME_END);
    }
}

/// Appends a heartbeat frame (always channel 0).
pub fn encode_heartbeat(buf: &mut BytesMut) {
    buf.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}
