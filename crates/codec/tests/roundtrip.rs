//! Property tests: every method, every field value type, nested tables and content headers
//! survive encode then decode unchanged; frames survive any split into reads; bodies survive
//! splitting by any frame_max and reassembly.

mod support;

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use support::strategies::{N_METHODS, any_method, basic_properties};
use support::{field_table, field_value};
use warren_codec::frame::{
    encode_basic_header_frame, encode_body_frames, encode_header_frame, encode_method_frame,
};
use warren_codec::{
    Assembled, ContentAssembly, ContentHeader, FieldTable, FieldValue, Frame, Method, ShortString,
    decode_frame,
};

#[allow(clippy::unwrap_used)] // Called only from tests.
fn decode_all(buf: &mut BytesMut, frame_max: u32) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some(frame) = decode_frame(buf, frame_max).unwrap() {
        frames.push(frame);
    }
    frames
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn every_method_round_trips(method in any_method(), channel in any::<u16>()) {
        let mut buf = BytesMut::new();
        encode_method_frame(channel, &method, &mut buf);
        let decoded = decode_frame(&mut buf, 0).unwrap();
        prop_assert_eq!(decoded, Some(Frame::Method { channel, method }));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn method_payload_round_trips(method in any_method()) {
        let mut buf = BytesMut::new();
        method.encode(&mut buf);
        let payload = buf.freeze();
        prop_assert_eq!(Method::decode(&payload).unwrap(), method);
    }
}

proptest! {
    #[test]
    fn every_field_value_round_trips(value in field_value()) {
        let table = FieldTable(vec![(ShortString::from_static("v"), value)]);
        let mut buf = BytesMut::new();
        table.encode(&mut buf);
        prop_assert_eq!(FieldTable::decode(&buf.freeze()).unwrap(), table);
    }

    #[test]
    fn field_tables_round_trip_and_re_encode_to_the_same_bytes(table in field_table()) {
        let mut buf = BytesMut::new();
        table.encode(&mut buf);
        let bytes = buf.freeze();
        let decoded = FieldTable::decode(&bytes).unwrap();
        let mut again = BytesMut::new();
        decoded.encode(&mut again);
        prop_assert_eq!(&decoded, &table);
        prop_assert_eq!(again.freeze(), bytes);
    }

    #[test]
    fn field_value_type_letter_is_the_first_byte(value in field_value()) {
        let mut buf = BytesMut::new();
        value.encode(&mut buf);
        prop_assert_eq!(buf[0], value.type_letter());
    }

    #[test]
    fn content_header_round_trips(
        properties in basic_properties(),
        body_size in any::<u64>(),
        channel in any::<u16>(),
    ) {
        let mut buf = BytesMut::new();
        encode_basic_header_frame(channel, body_size, &properties, &mut buf);
        let expected = ContentHeader::new(body_size, properties);
        // The raw form re-sends byte for byte.
        let mut resent = BytesMut::new();
        encode_header_frame(channel, 60, body_size, &expected.raw_properties, &mut resent);
        prop_assert_eq!(&resent, &buf);
        let decoded = decode_frame(&mut buf, 0).unwrap();
        prop_assert_eq!(decoded, Some(Frame::Header { channel, header: expected }));
    }

    #[test]
    fn frames_survive_any_split_into_reads(
        methods in vec(any_method(), 1..8),
        cuts in vec(any::<usize>(), 0..8),
    ) {
        let mut wire = BytesMut::new();
        for (i, method) in methods.iter().enumerate() {
            encode_method_frame(i as u16, method, &mut wire);
        }
        let wire = wire.freeze();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
        cuts.push(wire.len());
        cuts.sort_unstable();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        let mut from = 0;
        for cut in cuts {
            buf.extend_from_slice(&wire[from..cut]);
            from = cut;
            frames.extend(decode_all(&mut buf, 0));
        }
        prop_assert!(buf.is_empty());
        let expected: Vec<Frame> = methods
            .into_iter()
            .enumerate()
            .map(|(i, method)| Frame::Method { channel: i as u16, method })
            .collect();
        prop_assert_eq!(frames, expected);
    }

    #[test]
    fn bodies_split_by_frame_max_reassemble(
        body in vec(any::<u8>(), 0..20_000),
        frame_max in prop_oneof![Just(0u32), 9u32..70_000],
        properties in basic_properties(),
    ) {
        let mut wire = BytesMut::new();
        let publish = Method::BasicPublish(Default::default());
        encode_method_frame(1, &publish, &mut wire);
        encode_basic_header_frame(1, body.len() as u64, &properties, &mut wire);
        encode_body_frames(1, &body, frame_max, &mut wire);
        let mut assembly = ContentAssembly::new(u64::MAX);
        let mut messages = Vec::new();
        // Decode without a limit: the header may exceed the tiny frame_max used for bodies.
        let frames = decode_all(&mut wire, 0);
        for frame in frames {
            if let Frame::Body { payload, .. } = &frame {
                prop_assert!(frame_max == 0 || payload.len() <= frame_max as usize - 8);
            }
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
        prop_assert_eq!(messages.len(), 1);
        prop_assert_eq!(&messages[0].body, &Bytes::from(body));
        prop_assert_eq!(&messages[0].header.properties, &properties);
        prop_assert_eq!(&messages[0].method, &publish);
    }
}

#[test]
fn any_method_covers_every_method() {
    // Sample until every (class, method) pair has been produced, proving the union is complete.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = any_method();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20_000 {
        let method = strategy.new_tree(&mut runner).unwrap().current();
        seen.insert((method.class_id(), method.method_id()));
        if seen.len() == N_METHODS {
            break;
        }
    }
    assert_eq!(seen.len(), N_METHODS);
    // 66 = every method of the eight classes in the RabbitMQ spec, extensions included.
    assert_eq!(N_METHODS, 66);
}

#[test]
fn every_scalar_type_letter_is_generated() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = field_value();
    let mut letters = std::collections::BTreeSet::new();
    for _ in 0..5_000 {
        let value: FieldValue = strategy.new_tree(&mut runner).unwrap().current();
        letters.insert(value.type_letter());
    }
    let all: std::collections::BTreeSet<u8> = b"tbBsuIilfdDSATFVx".iter().copied().collect();
    assert_eq!(letters, all);
}
