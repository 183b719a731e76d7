//! Frame-level behaviour: the protocol header, streaming decode over partial reads, limits, and
//! the reply code each malformed frame maps to (as RabbitMQ 3.10 answers them).

use bytes::{BufMut, Bytes, BytesMut};
use warren_codec::frame::{
    self, FRAME_MAX_HARD_CAP, PROTOCOL_HEADER, ProtocolHeaderCheck, check_protocol_header,
    encode_body_frames, encode_header_frame, encode_heartbeat, encode_method_frame,
};
use warren_codec::{
    BasicProperties, BasicPublish, ContentHeader, DecodeError, FieldError, FieldTable, FieldValue,
    Frame, Method, QueueDeclare, ReplyCode, ShortString, decode_frame,
};

fn raw_frame(frame_type: u8, channel: u16, payload: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u8(frame_type);
    buf.put_u16(channel);
    buf.put_u32(payload.len() as u32);
    buf.put_slice(payload);
    buf.put_u8(0xCE);
    buf
}

fn publish() -> Method {
    BasicPublish {
        exchange: ShortString::from_static("amq.direct"),
        routing_key: ShortString::from_static("orders"),
        mandatory: true,
        immediate: false,
    }
    .into()
}

#[test]
fn protocol_header_is_recognised() {
    assert_eq!(
        check_protocol_header(PROTOCOL_HEADER),
        ProtocolHeaderCheck::Ok
    );
    assert_eq!(
        check_protocol_header(b"AMQP\x01\x01\x00\x09"),
        ProtocolHeaderCheck::Ok
    );
    assert_eq!(check_protocol_header(b""), ProtocolHeaderCheck::NeedMore);
    assert_eq!(
        check_protocol_header(b"AMQP\x00"),
        ProtocolHeaderCheck::NeedMore
    );
    assert_eq!(
        check_protocol_header(b"AMQP\x01\x01"),
        ProtocolHeaderCheck::NeedMore
    );
    // Bytes after the header (a client pipelining start-ok) do not matter.
    assert_eq!(
        check_protocol_header(b"AMQP\x00\x00\x09\x01\x01\x00"),
        ProtocolHeaderCheck::Ok
    );
    assert_eq!(
        check_protocol_header(b"GET / HTTP/1.1"),
        ProtocolHeaderCheck::Bad
    );
    assert_eq!(check_protocol_header(b"G"), ProtocolHeaderCheck::Bad);
    assert_eq!(
        check_protocol_header(b"\x16\x03\x01"),
        ProtocolHeaderCheck::Bad
    );
    assert_eq!(
        check_protocol_header(b"AMQP\x00\x00\x09\x00"),
        ProtocolHeaderCheck::Bad
    );
    assert_eq!(
        check_protocol_header(b"AMQP\x01\x01\x08\x00"),
        ProtocolHeaderCheck::Bad
    );
    assert_eq!(
        check_protocol_header(b"AMQP\x00\x01\x00\x00"),
        ProtocolHeaderCheck::Bad
    );
}

#[test]
fn method_frame_round_trips_and_is_split_off() {
    let mut buf = BytesMut::new();
    encode_method_frame(7, &publish(), &mut buf);
    encode_heartbeat(&mut buf);
    let frame = decode_frame(&mut buf, 131072).unwrap().unwrap();
    assert_eq!(
        frame,
        Frame::Method {
            channel: 7,
            method: publish()
        }
    );
    assert_eq!(
        decode_frame(&mut buf, 131072).unwrap(),
        Some(Frame::Heartbeat { channel: 0 })
    );
    assert!(buf.is_empty());
    assert_eq!(decode_frame(&mut buf, 131072).unwrap(), None);
}

#[test]
fn method_frame_bytes_match_the_spec_layout() {
    let mut buf = BytesMut::new();
    encode_method_frame(1, &publish(), &mut buf);
    let mut expected = vec![1, 0, 1, 0, 0, 0, 25, 0, 60, 0, 40, 0, 0, 10];
    expected.extend_from_slice(b"amq.direct");
    expected.push(6);
    expected.extend_from_slice(b"orders");
    expected.extend_from_slice(&[1, 0xCE]);
    assert_eq!(&buf[..], &expected[..]);
}

#[test]
fn every_partial_read_returns_none_then_the_frame() {
    let mut whole = BytesMut::new();
    encode_method_frame(3, &publish(), &mut whole);
    for cut in 0..whole.len() {
        let mut partial = BytesMut::from(&whole[..cut]);
        assert_eq!(
            decode_frame(&mut partial, 4096).unwrap(),
            None,
            "cut at {cut}"
        );
        assert_eq!(partial.len(), cut, "nothing consumed at {cut}");
        partial.extend_from_slice(&whole[cut..]);
        let frame = decode_frame(&mut partial, 4096).unwrap().unwrap();
        assert_eq!(frame.channel(), 3);
    }
}

#[test]
fn content_frames_round_trip_and_body_is_zero_copy() {
    let properties = BasicProperties {
        content_type: Some(ShortString::from_static("text/plain")),
        delivery_mode: Some(2),
        headers: Some(FieldTable(vec![(
            ShortString::from_static("k"),
            FieldValue::I32(-5),
        )])),
        ..Default::default()
    };
    let mut raw = BytesMut::new();
    properties.encode(&mut raw);
    let body = vec![0xAB; 10_000];
    let mut buf = BytesMut::new();
    encode_header_frame(1, 60, body.len() as u64, &raw, &mut buf);
    encode_body_frames(1, &body, 4096, &mut buf);
    let header = decode_frame(&mut buf, 4096).unwrap().unwrap();
    let Frame::Header { channel: 1, header } = header else {
        panic!("{header:?}")
    };
    assert_eq!(header.class_id, 60);
    assert_eq!(header.body_size, 10_000);
    assert_eq!(header.properties, properties);
    assert_eq!(header.raw_properties, raw.freeze());
    let mut received = Vec::new();
    let mut n_frames = 0;
    while let Some(frame) = decode_frame(&mut buf, 4096).unwrap() {
        let Frame::Body {
            channel: 1,
            payload,
        } = frame
        else {
            panic!("{frame:?}")
        };
        assert!(payload.len() <= 4096 - 8);
        received.extend_from_slice(&payload);
        n_frames += 1;
    }
    assert_eq!(n_frames, 3);
    assert_eq!(received, body);
}

#[test]
fn body_payload_points_into_the_read_buffer() {
    let mut buf = raw_frame(3, 1, b"hello body");
    let base = buf.as_ptr() as usize;
    let Some(Frame::Body { payload, .. }) = decode_frame(&mut buf, 4096).unwrap() else {
        panic!("not a body")
    };
    assert_eq!(payload.as_ptr() as usize, base + 7);
}

#[test]
fn encode_body_frames_empty_body_writes_nothing() {
    let mut buf = BytesMut::new();
    encode_body_frames(1, b"", 4096, &mut buf);
    assert!(buf.is_empty());
}

#[test]
fn encode_body_frames_without_limit_writes_one_frame() {
    let mut buf = BytesMut::new();
    encode_body_frames(2, &[7; 100_000], 0, &mut buf);
    assert_eq!(buf.len(), 100_008);
}

#[test]
fn frame_of_exactly_frame_max_is_accepted_one_more_refused() {
    let mut buf = raw_frame(3, 1, &vec![0; 4096]);
    assert!(decode_frame(&mut buf, 4096).unwrap().is_some());
    let mut buf = raw_frame(3, 1, &vec![0; 4097]);
    let error = decode_frame(&mut buf, 4096).unwrap_err();
    assert_eq!(
        error,
        DecodeError::FrameTooLarge {
            size: 4097,
            limit: 4096
        }
    );
    assert_eq!(error.reply_code(), ReplyCode::FrameError);
}

#[test]
fn oversized_frame_is_refused_from_the_header_alone() {
    // Only the 7-byte header is buffered: the size check must not wait for the payload.
    let mut buf = BytesMut::from(&[1u8, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF][..]);
    let error = decode_frame(&mut buf, 131072).unwrap_err();
    assert!(matches!(
        error,
        DecodeError::FrameTooLarge { size: u32::MAX, .. }
    ));
    assert_eq!(
        buf.capacity(),
        7,
        "nothing reserved from the declared length"
    );
    // frame_max = 0 means no negotiated limit, but the hard cap still applies.
    let error = decode_frame(&mut buf, 0).unwrap_err();
    assert_eq!(
        error,
        DecodeError::FrameTooLarge {
            size: u32::MAX,
            limit: FRAME_MAX_HARD_CAP
        }
    );
}

#[test]
fn bad_frame_end_is_a_frame_error() {
    let mut buf = raw_frame(1, 1, &[0, 90, 0, 10]);
    let last = buf.len() - 1;
    buf[last] = 0;
    let error = decode_frame(&mut buf, 4096).unwrap_err();
    assert_eq!(error, DecodeError::BadFrameEnd(0));
    assert_eq!(error.reply_code(), ReplyCode::FrameError);
}

#[test]
fn unknown_frame_type_is_a_frame_error() {
    for frame_type in [0u8, 4, 5, 7, 9, 0xCE, 0xFF] {
        let mut buf = raw_frame(frame_type, 1, b"abc");
        let error = decode_frame(&mut buf, 4096).unwrap_err();
        assert_eq!(error, DecodeError::UnknownFrameType(frame_type));
        assert_eq!(error.reply_code(), ReplyCode::FrameError);
    }
}

#[test]
fn frames_shorter_than_their_fixed_fields_are_frame_errors() {
    for (frame_type, payload) in [
        (1u8, &b""[..]),
        (1, &[0, 60][..]),
        (1, &[0, 60, 0][..]),
        (2, &[0, 60, 0][..]),
        (2, &[0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..]),
        (8, &b"ab"[..]),
    ] {
        let mut buf = raw_frame(frame_type, 1, payload);
        let error = decode_frame(&mut buf, 4096).unwrap_err();
        assert_eq!(
            error,
            DecodeError::FrameTooShort {
                frame_type,
                size: payload.len()
            },
            "{frame_type} {payload:?}"
        );
        assert_eq!(error.reply_code(), ReplyCode::FrameError);
    }
}

#[test]
fn truncated_and_trailing_method_fields_are_frame_errors_with_ids() {
    // basic.qos with two bytes of fields: RabbitMQ closes with 501 "cannot decode", 60/10.
    let mut buf = raw_frame(1, 1, &[0, 60, 0, 10, 0, 0]);
    let error = decode_frame(&mut buf, 4096).unwrap_err();
    assert!(matches!(
        error,
        DecodeError::MalformedMethod {
            class_id: 60,
            method_id: 10,
            source: FieldError::Truncated { .. }
        }
    ));
    assert_eq!(error.reply_code(), ReplyCode::FrameError);
    assert_eq!(error.class_method(), (60, 10));
    let mut buf = raw_frame(1, 1, &[0, 60, 0, 10, 0, 0, 0, 0, 0, 10, 0, b'x']);
    let error = decode_frame(&mut buf, 4096).unwrap_err();
    assert!(matches!(
        error,
        DecodeError::MalformedMethod {
            source: FieldError::TrailingBytes(1),
            ..
        }
    ));
}

#[test]
fn unknown_class_or_method_is_not_implemented() {
    for (class_id, method_id) in [(999u16, 10u16), (60, 999), (0, 0), (30, 20)] {
        let mut payload = Vec::new();
        payload.extend_from_slice(&class_id.to_be_bytes());
        payload.extend_from_slice(&method_id.to_be_bytes());
        let mut buf = raw_frame(1, 1, &payload);
        let error = decode_frame(&mut buf, 4096).unwrap_err();
        assert_eq!(
            error,
            DecodeError::UnknownMethod {
                class_id,
                method_id
            }
        );
        assert_eq!(error.reply_code(), ReplyCode::NotImplemented);
    }
}

#[test]
fn header_with_weight_is_unexpected_frame() {
    let mut payload = vec![0, 60, 0, 1];
    payload.extend_from_slice(&0u64.to_be_bytes());
    payload.extend_from_slice(&[0, 0]);
    let mut buf = raw_frame(2, 1, &payload);
    let error = decode_frame(&mut buf, 4096).unwrap_err();
    assert_eq!(error, DecodeError::NonZeroWeight(1));
    assert_eq!(error.reply_code(), ReplyCode::UnexpectedFrame);
}

#[test]
fn header_with_bad_properties_is_a_frame_error() {
    let mut payload = vec![0, 60, 0, 0];
    payload.extend_from_slice(&0u64.to_be_bytes());
    payload.extend_from_slice(&[0x80, 0x00, 0x10, b'a', b'b']);
    let mut buf = raw_frame(2, 1, &payload);
    let error = decode_frame(&mut buf, 4096).unwrap_err();
    assert!(matches!(
        error,
        DecodeError::MalformedProperties { class_id: 60, .. }
    ));
    assert_eq!(error.reply_code(), ReplyCode::FrameError);
    let mut payload = vec![0, 60, 0, 0];
    payload.extend_from_slice(&0u64.to_be_bytes());
    payload.extend_from_slice(&[0x00, 0x01, 0, 0]);
    let mut buf = raw_frame(2, 1, &payload);
    assert!(matches!(
        decode_frame(&mut buf, 4096).unwrap_err(),
        DecodeError::MalformedProperties {
            source: FieldError::PropertyFlagsContinued,
            ..
        }
    ));
}

#[test]
fn header_of_another_class_keeps_raw_properties() {
    let mut payload = vec![0, 50, 0, 0];
    payload.extend_from_slice(&5u64.to_be_bytes());
    payload.extend_from_slice(&[0x80, 0x00]);
    let mut buf = raw_frame(2, 1, &payload);
    let Some(Frame::Header { header, .. }) = decode_frame(&mut buf, 4096).unwrap() else {
        panic!("not a header")
    };
    assert_eq!(header.class_id, 50);
    assert_eq!(header.properties, BasicProperties::default());
    assert_eq!(&header.raw_properties[..], &[0x80, 0x00]);
}

#[test]
fn content_header_new_encodes_raw_properties() {
    let header = ContentHeader::new(
        3,
        BasicProperties {
            priority: Some(9),
            ..Default::default()
        },
    );
    assert_eq!(&header.raw_properties[..], &[0x08, 0x00, 9]);
    let mut buf = BytesMut::new();
    frame::encode_basic_header_frame(4, 3, &header.properties, &mut buf);
    let decoded = decode_frame(&mut buf, 4096).unwrap().unwrap();
    assert_eq!(decoded, Frame::Header { channel: 4, header });
}

#[test]
fn queue_declare_with_arguments_decodes_from_rabbitmq_bytes() {
    // queue.declare as pika sends it: ticket 0, "q1", durable, x-max-priority = 10 ('l').
    let mut payload = vec![0, 50, 0, 10, 0, 0, 2, b'q', b'1', 0b0000_0010];
    let mut table = Vec::new();
    table.push(14);
    table.extend_from_slice(b"x-max-priority");
    table.push(b'l');
    table.extend_from_slice(&10i64.to_be_bytes());
    payload.extend_from_slice(&(table.len() as u32).to_be_bytes());
    payload.extend_from_slice(&table);
    let mut buf = raw_frame(1, 1, &payload);
    let Some(Frame::Method {
        method: Method::QueueDeclare(declare),
        ..
    }) = decode_frame(&mut buf, 4096).unwrap()
    else {
        panic!("not a queue.declare")
    };
    assert_eq!(
        declare,
        QueueDeclare {
            queue: ShortString::from_static("q1"),
            durable: true,
            arguments: FieldTable(vec![(
                ShortString::from_static("x-max-priority"),
                FieldValue::I64(10)
            )]),
            ..Default::default()
        }
    );
}

#[test]
fn many_frames_in_one_read_decode_in_order() {
    let mut buf = BytesMut::new();
    for channel in 1..=50u16 {
        encode_method_frame(channel, &publish(), &mut buf);
        encode_header_frame(channel, 60, 1, &[0, 0], &mut buf);
        encode_body_frames(channel, b"x", 4096, &mut buf);
    }
    let mut n = 0;
    while let Some(frame) = decode_frame(&mut buf, 4096).unwrap() {
        assert_eq!(frame.channel(), (n / 3 + 1) as u16);
        n += 1;
    }
    assert_eq!(n, 150);
}

#[test]
fn decoded_strings_share_the_frame_buffer() {
    let mut buf = BytesMut::new();
    encode_method_frame(1, &publish(), &mut buf);
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();
    let Some(Frame::Method {
        method: Method::BasicPublish(publish),
        ..
    }) = decode_frame(&mut buf, 4096).unwrap()
    else {
        panic!()
    };
    let ptr = publish.routing_key.as_bytes().as_ptr() as usize;
    assert!(ptr >= start && ptr < end);
    let _: Bytes = publish.exchange.as_shared().clone();
}
