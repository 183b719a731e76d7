//! Hostile input: arbitrary bytes, mutated valid frames and frames with arbitrary payloads never
//! panic the decoder; every error carries a reply code a broker can close with.

mod support;

use bytes::{BufMut, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use support::strategies::{any_method, basic_properties};
use warren_codec::frame::{
    ProtocolHeaderCheck, check_protocol_header, encode_basic_header_frame, encode_method_frame,
};
use warren_codec::{BasicProperties, DecodeError, FieldTable, Method, ReplyCode, decode_frame};

/// Decodes frames until the buffer runs dry or an error; returns the error, if any. Asserts
/// that each error maps to a hard (connection-closing) reply code.
fn drain(buf: &mut BytesMut, frame_max: u32) -> Option<DecodeError> {
    loop {
        match decode_frame(buf, frame_max) {
            Ok(Some(_)) => continue,
            Ok(None) => return None,
            Err(error) => {
                let code = error.reply_code();
                assert!(code.is_hard(), "{error:?} maps to soft {code:?}");
                assert!(matches!(
                    code,
                    ReplyCode::FrameError | ReplyCode::UnexpectedFrame | ReplyCode::NotImplemented
                ));
                return Some(error);
            }
        }
    }
}

fn framed(frame_type: u8, channel: u16, payload: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u8(frame_type);
    buf.put_u16(channel);
    buf.put_u32(payload.len() as u32);
    buf.put_slice(payload);
    buf.put_u8(0xCE);
    buf
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in vec(any::<u8>(), 0..4096),
        frame_max in prop_oneof![Just(0u32), Just(4096u32), any::<u32>()],
    ) {
        let mut buf = BytesMut::from(&bytes[..]);
        drain(&mut buf, frame_max);
        let _ = check_protocol_header(&bytes);
    }

    #[test]
    fn arbitrary_payloads_in_valid_frames_never_panic(
        frame_type in prop_oneof![Just(1u8), Just(2u8), Just(3u8), Just(8u8)],
        class_and_method in prop_oneof![
            // A known method id pair, so the bytes reach the field decoders.
            any_method().prop_map(|m| [m.class_id().to_be_bytes(), m.method_id().to_be_bytes()].concat()),
            // The header prefix: class 60, weight 0, a body size.
            any::<u64>().prop_map(|size| [&[0u8, 60, 0, 0][..], &size.to_be_bytes()].concat()),
            vec(any::<u8>(), 0..12),
        ],
        rest in vec(any::<u8>(), 0..600),
    ) {
        let payload = [class_and_method, rest].concat();
        let mut buf = framed(frame_type, 1, &payload);
        drain(&mut buf, 0);
    }

    #[test]
    fn mutated_method_frames_never_panic(
        method in any_method(),
        flips in vec((any::<usize>(), any::<u8>()), 1..6),
        truncate in any::<usize>(),
    ) {
        let mut buf = BytesMut::new();
        encode_method_frame(1, &method, &mut buf);
        for (at, byte) in flips {
            let at = at % buf.len();
            buf[at] = byte;
        }
        let keep = truncate % (buf.len() + 1);
        buf.truncate(keep);
        drain(&mut buf, 131072);
    }

    #[test]
    fn mutated_method_fields_in_a_valid_envelope_never_panic(
        method in any_method(),
        flips in vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        // Mutate only the payload and re-frame it, so the size and frame end stay valid and
        // the damage reaches the method field decoders and the table parser.
        let mut payload = BytesMut::new();
        method.encode(&mut payload);
        for (at, byte) in flips {
            let at = 4 + at % (payload.len().max(5) - 4);
            if at < payload.len() {
                payload[at] = byte;
            }
        }
        let keep = 4 + cut % (payload.len() - 3);
        payload.truncate(keep);
        let mut buf = framed(1, 1, &payload);
        if let Some(error) = drain(&mut buf, 0) {
            prop_assert!(matches!(error, DecodeError::MalformedMethod { .. }), "{:?}", error);
            prop_assert_eq!(error.class_method(), (method.class_id(), method.method_id()));
        }
    }

    #[test]
    fn mutated_content_headers_never_panic(
        properties in basic_properties(),
        flips in vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        let mut buf = BytesMut::new();
        encode_basic_header_frame(1, 10, &properties, &mut buf);
        let n = buf.len();
        for (at, byte) in flips {
            // Leave the envelope alone: damage class, weight, size, flags and properties.
            let at = 7 + at % (n - 8);
            buf[at] = byte;
        }
        drain(&mut buf, 0);
    }

    #[test]
    fn arbitrary_bytes_as_properties_or_table_never_panic(bytes in vec(any::<u8>(), 0..1024)) {
        let bytes = bytes::Bytes::from(bytes);
        let _ = BasicProperties::decode(&bytes);
        let _ = FieldTable::decode(&bytes);
        let _ = Method::decode(&bytes);
    }
}

#[test]
fn protocol_header_of_every_length_is_classified() {
    let header = b"AMQP\x00\x00\x09\x01";
    for n in 0..8 {
        assert_eq!(
            check_protocol_header(&header[..n]),
            ProtocolHeaderCheck::NeedMore
        );
    }
}
