//! Field tables and arrays: every RabbitMQ type letter, nesting, and hostile lengths and depths.

use bytes::{BufMut, Bytes, BytesMut};
use warren_codec::table::MAX_TABLE_DEPTH;
use warren_codec::{FieldError, FieldTable, FieldValue, ShortString};

fn key(name: &'static str) -> ShortString {
    ShortString::from_static(name)
}

fn encoded(table: &FieldTable) -> Bytes {
    let mut buf = BytesMut::new();
    table.encode(&mut buf);
    buf.freeze()
}

/// One value of each type, with the bytes RabbitMQ puts on the wire for it.
fn every_type() -> Vec<(FieldValue, &'static [u8])> {
    vec![
        (FieldValue::Bool(true), b"t\x01"),
        (FieldValue::I8(-2), b"b\xfe"),
        (FieldValue::U8(200), b"B\xc8"),
        (FieldValue::I16(-2), b"s\xff\xfe"),
        (FieldValue::U16(0xBEEF), b"u\xbe\xef"),
        (FieldValue::I32(-1), b"I\xff\xff\xff\xff"),
        (FieldValue::U32(7), b"i\x00\x00\x00\x07"),
        (FieldValue::I64(-3), b"l\xff\xff\xff\xff\xff\xff\xff\xfd"),
        (FieldValue::F32(1.5), b"f\x3f\xc0\x00\x00"),
        (FieldValue::F64(-2.0), b"d\xc0\x00\x00\x00\x00\x00\x00\x00"),
        (
            FieldValue::Decimal {
                scale: 2,
                value: 12345,
            },
            b"D\x02\x00\x00\x30\x39",
        ),
        (
            FieldValue::LongString(Bytes::from_static(b"hi")),
            b"S\x00\x00\x00\x02hi",
        ),
        (
            FieldValue::Timestamp(1_700_000_000),
            b"T\x00\x00\x00\x00\x65\x53\xf1\x00",
        ),
        (FieldValue::Void, b"V"),
        (
            FieldValue::ByteArray(Bytes::from_static(b"\x00\xff")),
            b"x\x00\x00\x00\x02\x00\xff",
        ),
        (
            FieldValue::Array(vec![FieldValue::U8(1), FieldValue::Void]),
            b"A\x00\x00\x00\x03B\x01V",
        ),
        (
            FieldValue::Table(FieldTable(vec![(key("a"), FieldValue::Bool(false))])),
            b"F\x00\x00\x00\x04\x01at\x00",
        ),
    ]
}

#[test]
fn every_value_type_encodes_to_rabbitmq_bytes_and_back() {
    for (value, wire) in every_type() {
        let mut buf = BytesMut::new();
        value.encode(&mut buf);
        assert_eq!(&buf[..], wire, "{value:?}");
        let table = FieldTable(vec![(key("k"), value.clone())]);
        assert_eq!(FieldTable::decode(&encoded(&table)).unwrap(), table);
    }
}

#[test]
fn table_with_every_type_round_trips() {
    let table = FieldTable(
        every_type()
            .into_iter()
            .enumerate()
            .map(|(i, (value, _))| (ShortString::try_from(format!("key-{i}")).unwrap(), value))
            .collect(),
    );
    let bytes = encoded(&table);
    assert_eq!(
        u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize,
        bytes.len() - 4
    );
    assert_eq!(FieldTable::decode(&bytes).unwrap(), table);
}

#[test]
fn any_non_zero_bool_octet_is_true() {
    let bytes = Bytes::from_static(b"\x00\x00\x00\x04\x01kt\x07");
    assert_eq!(
        FieldTable::decode(&bytes).unwrap().get(b"k"),
        Some(&FieldValue::Bool(true))
    );
}

#[test]
fn duplicate_keys_are_kept_in_order_and_get_returns_the_first() {
    let bytes = Bytes::from_static(b"\x00\x00\x00\x08\x01kB\x01\x01kB\x02");
    let table = FieldTable::decode(&bytes).unwrap();
    assert_eq!(table.len(), 2);
    assert_eq!(table.get(b"k"), Some(&FieldValue::U8(1)));
    assert_eq!(encoded(&table), bytes);
}

#[test]
fn py_amqp_long_letter_reads_as_a_signed_long() {
    // py-amqp (kombu, Celery) writes integers beyond 32 bits as 'L', two's complement, and a
    // real RabbitMQ 3.10 accepts them in queue.bind arguments and headers: so must Warren.
    let mut buf = BytesMut::new();
    buf.put_u32(26);
    buf.put_slice(b"\x03bigL");
    buf.put_i64(1 << 40);
    buf.put_slice(b"\x03negL");
    buf.put_i64(-(1 << 40));
    let table = FieldTable::decode(&buf.freeze()).unwrap();
    assert_eq!(table.get(b"big"), Some(&FieldValue::I64(1 << 40)));
    assert_eq!(table.get(b"neg"), Some(&FieldValue::I64(-(1 << 40))));
}

#[test]
fn unknown_type_letter_is_refused() {
    // 'U' is in the 0-9-1 document but not in RabbitMQ's parser.
    for letter in [b'Z', b'U', 0] {
        let mut buf = BytesMut::new();
        buf.put_u32(5);
        buf.put_slice(&[1, b'k', letter, 0, 0]);
        assert_eq!(
            FieldTable::decode(&buf.freeze()),
            Err(FieldError::UnknownFieldType(letter))
        );
    }
}

#[test]
fn declared_table_length_past_the_end_is_refused() {
    let bytes = Bytes::from_static(b"\xff\xff\xff\xff\x01kV");
    assert_eq!(
        FieldTable::decode(&bytes),
        Err(FieldError::Truncated {
            needed: u64::from(u32::MAX),
            remaining: 3
        })
    );
}

#[test]
fn value_length_past_the_table_end_is_refused() {
    // The string claims 4 GiB inside a 9-byte table: refused without reading or allocating.
    let bytes = Bytes::from_static(b"\x00\x00\x00\x07\x01kS\xff\xff\xff\xff");
    assert!(matches!(
        FieldTable::decode(&bytes),
        Err(FieldError::Truncated {
            needed: 0xFFFF_FFFF,
            ..
        })
    ));
    // A value may not run past its table's declared length even if the payload goes on.
    let bytes = Bytes::from_static(b"\x00\x00\x00\x04\x01kI\x00\x00\x00\x00");
    assert!(matches!(
        FieldTable::decode(&bytes),
        Err(FieldError::Truncated { .. })
    ));
}

#[test]
fn every_truncation_of_a_table_is_an_error_not_a_panic() {
    let table = FieldTable(
        every_type()
            .into_iter()
            .map(|(v, _)| (key("k"), v))
            .collect(),
    );
    let bytes = encoded(&table);
    for cut in 0..bytes.len() {
        assert!(
            FieldTable::decode(&bytes.slice(..cut)).is_err(),
            "cut at {cut}"
        );
    }
}

/// A table nested `depth` levels deep: {"k": {"k": ... {} }}.
fn nested_tables(depth: usize) -> Bytes {
    // Built inside out so no recursion is needed here either.
    let mut inner = BytesMut::new();
    inner.put_u32(0);
    for _ in 0..depth {
        let mut outer = BytesMut::with_capacity(inner.len() + 7);
        outer.put_u32(inner.len() as u32 + 3);
        outer.put_slice(&[1, b'k', b'F']);
        outer.put_slice(&inner);
        inner = outer;
    }
    inner.freeze()
}

/// A table holding an array nested `depth` levels deep: {"k": [[[...]]]}.
fn nested_arrays(depth: usize) -> Bytes {
    // The value, built inside out: an empty array, then `depth - 1` arrays around it.
    let mut value = BytesMut::new();
    value.put_slice(b"A\x00\x00\x00\x00");
    for _ in 1..depth {
        let mut outer = BytesMut::with_capacity(value.len() + 5);
        outer.put_u8(b'A');
        outer.put_u32(value.len() as u32);
        outer.put_slice(&value);
        value = outer;
    }
    let mut table = BytesMut::new();
    table.put_u32(value.len() as u32 + 2);
    table.put_slice(&[1, b'k']);
    table.put_slice(&value);
    table.freeze()
}

#[test]
fn nesting_up_to_the_limit_decodes() {
    let table = FieldTable::decode(&nested_tables(MAX_TABLE_DEPTH)).unwrap();
    let mut depth = 0;
    let mut current = &table;
    while let Some(FieldValue::Table(inner)) = current.get(b"k") {
        current = inner;
        depth += 1;
    }
    assert_eq!(depth, MAX_TABLE_DEPTH);
}

#[test]
fn nesting_20000_deep_is_refused_by_the_depth_limit() {
    assert_eq!(
        FieldTable::decode(&nested_tables(20_000)),
        Err(FieldError::TooDeep)
    );
    assert_eq!(
        FieldTable::decode(&nested_tables(MAX_TABLE_DEPTH + 1)),
        Err(FieldError::TooDeep)
    );
    assert_eq!(
        FieldTable::decode(&nested_arrays(20_000)),
        Err(FieldError::TooDeep)
    );
    assert!(FieldTable::decode(&nested_arrays(MAX_TABLE_DEPTH)).is_ok());
    assert_eq!(
        FieldTable::decode(&nested_arrays(MAX_TABLE_DEPTH + 1)),
        Err(FieldError::TooDeep)
    );
}

#[test]
fn large_array_of_one_byte_items_is_bounded_by_its_bytes() {
    let n = 100_000;
    let mut buf = BytesMut::new();
    buf.put_u32(n as u32 + 7);
    buf.put_slice(&[1, b'k', b'A']);
    buf.put_u32(n as u32);
    buf.put_bytes(b'V', n);
    let table = FieldTable::decode(&buf.freeze()).unwrap();
    let Some(FieldValue::Array(items)) = table.get(b"k") else {
        panic!()
    };
    assert_eq!(items.len(), n);
}

#[test]
fn table_helpers_insert_get_remove() {
    let mut table = FieldTable::new();
    table.insert(key("a"), FieldValue::U8(1));
    table.insert(key("b"), FieldValue::U8(2));
    table.insert(key("a"), FieldValue::U8(3));
    assert_eq!(table.len(), 2);
    assert_eq!(table.get(b"a"), Some(&FieldValue::U8(3)));
    assert_eq!(table.remove(b"a"), Some(FieldValue::U8(3)));
    assert_eq!(table.get(b"a"), None);
    assert_eq!(table.iter().count(), 1);
}

#[test]
fn decode_requires_exactly_one_table() {
    let bytes = Bytes::from_static(b"\x00\x00\x00\x00\x00");
    assert_eq!(
        FieldTable::decode(&bytes),
        Err(FieldError::TrailingBytes(1))
    );
}
