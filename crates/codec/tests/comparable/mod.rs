//! Strategies restricted to what amq-protocol can represent (UTF-8 short strings, tables with
//! sorted unique keys). The generated per-method strategies are included here so that they pick
//! up these leaf strategies through `super::`.

// Strategies run only under #[test]; this test binary does not use every generated item.
#![allow(clippy::unwrap_used, dead_code)]

use bytes::Bytes;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use warren_codec::{FieldTable, FieldValue, ShortString};

#[path = "../support/strategies.rs"]
pub mod strategies;

pub fn short_string() -> impl Strategy<Value = ShortString> {
    // At most 60 chars of at most 4 bytes each: always within 255 bytes.
    "\\PC{0,60}".prop_map(|s| ShortString::try_from(s).unwrap())
}

pub fn long_string() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

fn scalar() -> impl Strategy<Value = FieldValue> {
    prop_oneof![
        any::<bool>().prop_map(FieldValue::Bool),
        any::<i8>().prop_map(FieldValue::I8),
        any::<u8>().prop_map(FieldValue::U8),
        any::<i16>().prop_map(FieldValue::I16),
        any::<u16>().prop_map(FieldValue::U16),
        any::<i32>().prop_map(FieldValue::I32),
        any::<u32>().prop_map(FieldValue::U32),
        any::<i64>().prop_map(FieldValue::I64),
        any::<f32>()
            .prop_filter("NaN", |f| !f.is_nan())
            .prop_map(FieldValue::F32),
        any::<f64>()
            .prop_filter("NaN", |f| !f.is_nan())
            .prop_map(FieldValue::F64),
        (any::<u8>(), any::<u32>()).prop_map(|(scale, value)| FieldValue::Decimal { scale, value }),
        long_string().prop_map(FieldValue::LongString),
        any::<u64>().prop_map(FieldValue::Timestamp),
        Just(FieldValue::Void),
        long_string().prop_map(FieldValue::ByteArray),
    ]
}

fn sorted_table(value: impl Strategy<Value = FieldValue>) -> impl Strategy<Value = FieldTable> {
    btree_map("\\PC{0,20}", value, 0..6).prop_map(|map| {
        FieldTable(
            map.into_iter()
                .map(|(k, v)| (ShortString::try_from(k).unwrap(), v))
                .collect(),
        )
    })
}

pub fn field_value() -> impl Strategy<Value = FieldValue> {
    scalar().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(FieldValue::Array),
            sorted_table(inner).prop_map(FieldValue::Table),
        ]
    })
}

pub fn field_table() -> impl Strategy<Value = FieldTable> {
    sorted_table(field_value())
}
