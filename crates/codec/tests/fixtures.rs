//! Byte fixtures captured from a real session: pika 1.4.4 talking to RabbitMQ 3.10.8 through a
//! recording proxy (handshake with frame_max 4096, confirms, queue.declare with arguments, a
//! publish with all 14 properties and a headers table, a 10 KB body split over three frames,
//! basic.get, consume, ack, nack, cancel, get-empty, queue.delete, a 404 channel close, and
//! connection close). Both directions decode, and every frame re-encodes to the exact bytes the
//! peer sent, so Warren's encoding matches RabbitMQ's and pika's byte for byte.

// The helpers run only under #[test], where a panic is a failed assertion.
#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use warren_codec::frame::{
    PROTOCOL_HEADER, ProtocolHeaderCheck, check_protocol_header, encode_body_frames,
    encode_header_frame, encode_heartbeat, encode_method_frame,
};
use warren_codec::{
    Assembled, ContentAssembly, FieldValue, Frame, Method, ReplyCode, ShortString, decode_frame,
};

const CLIENT: &[u8] = include_bytes!("fixtures/pika-rabbitmq-client.bin");
const SERVER: &[u8] = include_bytes!("fixtures/pika-rabbitmq-server.bin");

/// Decodes a whole stream, checking each frame re-encodes to exactly its own bytes, except
/// `connection.open`, where pika sets the reserved `insist` bit that Warren sends as 0.
fn decode_stream(bytes: &[u8]) -> Vec<Frame> {
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    loop {
        let before = buf.clone();
        let Some(frame) = decode_frame(&mut buf, 0).unwrap() else {
            break;
        };
        let consumed = &before[..before.len() - buf.len()];
        let mut encoded = BytesMut::new();
        match &frame {
            Frame::Method { channel, method } => {
                encode_method_frame(*channel, method, &mut encoded)
            }
            Frame::Header { channel, header } => encode_header_frame(
                *channel,
                header.class_id,
                header.body_size,
                &header.raw_properties,
                &mut encoded,
            ),
            Frame::Body { channel, payload } => {
                encode_body_frames(*channel, payload, 0, &mut encoded)
            }
            Frame::Heartbeat { .. } => encode_heartbeat(&mut encoded),
        }
        if let Frame::Method {
            method: Method::ConnectionOpen(_),
            ..
        } = &frame
        {
            assert_eq!(encoded.len(), consumed.len());
        } else {
            assert_eq!(&encoded[..], consumed, "re-encoding {frame:?}");
        }
        frames.push(frame);
    }
    assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
    frames
}

fn method_names(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .filter_map(|frame| match frame {
            Frame::Method { channel, method } => Some(format!("{channel}:{}", method.name())),
            _ => None,
        })
        .collect()
}

fn client_frames() -> Vec<Frame> {
    assert_eq!(check_protocol_header(CLIENT), ProtocolHeaderCheck::Ok);
    decode_stream(&CLIENT[PROTOCOL_HEADER.len()..])
}

fn s(value: &'static str) -> ShortString {
    ShortString::from_static(value)
}

#[test]
fn pika_session_decodes_in_order() {
    let expected = [
        "0:connection.start-ok",
        "0:connection.tune-ok",
        "0:connection.open",
        "1:channel.open",
        "1:confirm.select",
        "1:queue.declare",
        "1:basic.publish",
        "1:basic.publish",
        "1:basic.get",
        "1:basic.ack",
        "1:basic.consume",
        "1:basic.nack",
        "1:basic.cancel",
        "1:basic.get",
        "1:queue.delete",
        "2:channel.open",
        "2:basic.get",
        "2:channel.close-ok",
        "1:channel.close",
        "0:connection.close",
    ];
    assert_eq!(method_names(&client_frames()), expected);
}

#[test]
fn rabbitmq_session_decodes_in_order() {
    let expected = [
        "0:connection.start",
        "0:connection.tune",
        "0:connection.open-ok",
        "1:channel.open-ok",
        "1:confirm.select-ok",
        "1:queue.declare-ok",
        "1:basic.ack",
        "1:basic.ack",
        "1:basic.get-ok",
        "1:basic.consume-ok",
        "1:basic.deliver",
        "1:basic.cancel-ok",
        "1:basic.get-empty",
        "1:queue.delete-ok",
        "2:channel.open-ok",
        "2:channel.close",
        "1:channel.close-ok",
        "0:connection.close-ok",
    ];
    assert_eq!(method_names(&decode_stream(SERVER)), expected);
}

#[test]
fn rabbitmq_start_and_tune_carry_its_properties() {
    let frames = decode_stream(SERVER);
    let Frame::Method {
        method: Method::ConnectionStart(start),
        ..
    } = &frames[0]
    else {
        panic!("{:?}", frames[0])
    };
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    assert_eq!(&start.mechanisms[..], b"AMQPLAIN PLAIN");
    assert_eq!(
        start.server_properties.get(b"product"),
        Some(&FieldValue::LongString(Bytes::from_static(b"RabbitMQ")))
    );
    let Some(FieldValue::Table(capabilities)) = start.server_properties.get(b"capabilities") else {
        panic!("no capabilities")
    };
    assert_eq!(
        capabilities.get(b"basic.nack"),
        Some(&FieldValue::Bool(true))
    );
    let Frame::Method {
        method: Method::ConnectionTune(tune),
        ..
    } = &frames[1]
    else {
        panic!("{:?}", frames[1])
    };
    assert_eq!(
        (tune.channel_max, tune.frame_max, tune.heartbeat),
        (2047, 131072, 60)
    );
}

#[test]
fn published_properties_and_bodies_assemble() {
    let mut assembly = ContentAssembly::new(1 << 20);
    let mut messages = Vec::new();
    for frame in client_frames() {
        let result = match frame {
            Frame::Method { method, .. } => assembly.recv_method(method),
            Frame::Header { header, .. } => assembly.recv_header(header),
            Frame::Body { payload, .. } => assembly.recv_body(payload),
            Frame::Heartbeat { .. } => Ok(Assembled::Pending),
        };
        if let Assembled::Message(message) = result.unwrap() {
            messages.push(message);
        }
    }
    assert_eq!(messages.len(), 2);
    assert_eq!(&messages[0].body[..], br#"{"order": 42}"#);
    assert_eq!(&messages[1].body[..], &[b'x'; 10_000][..]);
    let properties = &messages[0].header.properties;
    assert_eq!(properties.content_type, Some(s("application/json")));
    assert_eq!(properties.delivery_mode, Some(2));
    assert_eq!(properties.priority, Some(5));
    assert_eq!(properties.timestamp, Some(1_700_000_000));
    assert_eq!(properties.kind, Some(s("order.created")));
    assert_eq!(properties.cluster_id, Some(s("")));
    let headers = properties.headers.as_ref().unwrap();
    assert_eq!(headers.get(b"retries"), Some(&FieldValue::I32(3)));
    assert_eq!(
        headers.get(b"price"),
        Some(&FieldValue::Decimal {
            scale: 1,
            value: 125
        })
    );
    assert_eq!(
        headers.get(b"at"),
        Some(&FieldValue::Timestamp(1_704_153_600))
    );
    let Some(FieldValue::Table(nested)) = headers.get(b"nested") else {
        panic!("no nested")
    };
    assert_eq!(
        nested.get(b"a"),
        Some(&FieldValue::Array(vec![
            FieldValue::I32(1),
            FieldValue::LongString(Bytes::from_static(b"two")),
            FieldValue::Void,
        ]))
    );
}

#[test]
fn rabbitmq_relays_the_published_property_bytes_unchanged() {
    // What `raw_properties` is for: RabbitMQ's get-ok header carries exactly the bytes pika sent.
    let headers = |frames: Vec<Frame>| -> Vec<Bytes> {
        frames
            .into_iter()
            .filter_map(|frame| match frame {
                Frame::Header { header, .. } => Some(header.raw_properties),
                _ => None,
            })
            .collect()
    };
    let published = headers(client_frames());
    let delivered = headers(decode_stream(SERVER));
    assert_eq!(published, delivered);
}

#[test]
fn rabbitmq_channel_close_carries_404_and_the_failed_method() {
    let frames = decode_stream(SERVER);
    let close = frames
        .iter()
        .find_map(|frame| match frame {
            Frame::Method {
                channel: 2,
                method: Method::ChannelClose(close),
            } => Some(close),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        ReplyCode::from_u16(close.reply_code),
        Some(ReplyCode::NotFound)
    );
    assert_eq!(
        close.reply_text,
        s("NOT_FOUND - no queue 'codec.missing' in vhost '/'")
    );
    assert_eq!((close.class_id, close.method_id), (60, 70));
    assert!(
        close
            .reply_text
            .as_bytes()
            .starts_with(ReplyCode::NotFound.name().as_bytes())
    );
}
