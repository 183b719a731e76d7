//! Shared test helpers: proptest strategies for strings, field values and tables (hand-written)
//! and for every method and the basic properties (generated, in `strategies.rs`).

// Each test binary uses a different subset of the helpers, and they run only under #[test],
// where a panic is a failed assertion.
#![allow(dead_code, clippy::unwrap_used)]

pub mod strategies;

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use warren_codec::{FieldTable, FieldValue, ShortString};

/// Any short string, 0 to 255 arbitrary octets (not necessarily UTF-8).
pub fn short_string() -> impl Strategy<Value = ShortString> {
    prop_oneof![
        "[a-z.#*]{0,12}".prop_map(|s| ShortString::try_from(s).unwrap()),
        vec(any::<u8>(), 0..=255).prop_map(|v| ShortString::from_bytes(Bytes::from(v)).unwrap()),
    ]
}

/// Any long string, including lengths above 255.
pub fn long_string() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        vec(any::<u8>(), 0..16).prop_map(Bytes::from),
        vec(any::<u8>(), 0..600).prop_map(Bytes::from),
    ]
}

/// Floats compare with `==` in the round trip, so NaN (which never equals itself) is left out;
/// its bit pattern still travels, which `f32::from_bits` in the decoder makes certain.
fn f32_not_nan() -> impl Strategy<Value = f32> {
    any::<f32>().prop_filter("NaN != NaN", |f| !f.is_nan())
}

fn f64_not_nan() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("NaN != NaN", |f| !f.is_nan())
}

/// Any scalar field value: every type letter except `A` and `F`.
pub fn scalar_value() -> impl Strategy<Value = FieldValue> {
    prop_oneof![
        any::<bool>().prop_map(FieldValue::Bool),
        any::<i8>().prop_map(FieldValue::I8),
        any::<u8>().prop_map(FieldValue::U8),
        any::<i16>().prop_map(FieldValue::I16),
        any::<u16>().prop_map(FieldValue::U16),
        any::<i32>().prop_map(FieldValue::I32),
        any::<u32>().prop_map(FieldValue::U32),
        any::<i64>().prop_map(FieldValue::I64),
        f32_not_nan().prop_map(FieldValue::F32),
        f64_not_nan().prop_map(FieldValue::F64),
        (any::<u8>(), any::<u32>()).prop_map(|(scale, value)| FieldValue::Decimal { scale, value }),
        long_string().prop_map(FieldValue::LongString),
        any::<u64>().prop_map(FieldValue::Timestamp),
        Just(FieldValue::Void),
        long_string().prop_map(FieldValue::ByteArray),
    ]
}

/// Any field value, with arrays and tables nested a few levels.
pub fn field_value() -> impl Strategy<Value = FieldValue> {
    scalar_value().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(FieldValue::Array),
            vec((short_string(), inner), 0..6)
                .prop_map(|entries| FieldValue::Table(FieldTable(entries))),
        ]
    })
}

/// Any field table (duplicate keys included, as the wire allows them).
pub fn field_table() -> impl Strategy<Value = FieldTable> {
    vec((short_string(), field_value()), 0..6).prop_map(FieldTable)
}
