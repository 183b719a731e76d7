//! Field tables and field values, with RabbitMQ's type letters (which differ from the
//! 0-9-1 document's in places), and the `ShortString` used for names and table keys.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::FieldError;
use crate::wire::{self, Reader};

/// How deep field tables and arrays may nest inside one another. Real clients nest two or three
/// levels; the limit keeps the recursive decoder's stack use small and fixed.
pub const MAX_TABLE_DEPTH: usize = 64;

/// An AMQP `shortstr`: at most 255 octets. Not required to be UTF-8 on the wire; the server
/// checks UTF-8 where RabbitMQ does (names). Backed by `Bytes` so decoding never copies.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShortString(Bytes);

/// Returned when a string is longer than a `shortstr` can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("short string of {0} bytes is longer than 255")]
pub struct ShortStringTooLong(pub usize);

impl ShortString {
    /// The longest a short string may be, in bytes.
    pub const MAX_LEN: usize = 255;

    /// An empty short string.
    pub const fn new() -> Self {
        ShortString(Bytes::new())
    }

    /// A short string from a static string. Strings longer than 255 bytes are truncated at
    /// compile-time-known call sites only by mistake, so this checks and truncates to stay valid.
    pub fn from_static(s: &'static str) -> Self {
        let bytes = s.as_bytes();
        let len = bytes.len().min(Self::MAX_LEN);
        ShortString(Bytes::from_static(&bytes[..len]))
    }

    /// Wraps bytes that are already known to be at most 255 long.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, ShortStringTooLong> {
        if bytes.len() > Self::MAX_LEN {
            return Err(ShortStringTooLong(bytes.len()));
        }
        Ok(ShortString(bytes))
    }

    /// Wraps a slice read from the wire after a one-octet length, so at most 255 long.
    #[inline]
    pub(crate) fn from_wire(bytes: Bytes) -> Self {
        ShortString(bytes)
    }

    /// The raw octets.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The underlying shared buffer.
    pub fn as_shared(&self) -> &Bytes {
        &self.0
    }

    /// The string, if it is valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// Length in octets.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the string is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<&str> for ShortString {
    type Error = ShortStringTooLong;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        ShortString::from_bytes(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl TryFrom<String> for ShortString {
    type Error = ShortStringTooLong;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        ShortString::from_bytes(Bytes::from(s))
    }
}

impl std::fmt::Display for ShortString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl std::fmt::Debug for ShortString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

/// One value in a field table or field array. The variants follow RabbitMQ's type letters
/// (`rabbit_binary_parser`), not the 0-9-1 document's grammar.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// `t`: boolean.
    Bool(bool),
    /// `b`: signed 8-bit.
    I8(i8),
    /// `B`: unsigned 8-bit.
    U8(u8),
    /// `s`: signed 16-bit.
    I16(i16),
    /// `u`: unsigned 16-bit.
    U16(u16),
    /// `I`: signed 32-bit.
    I32(i32),
    /// `i`: unsigned 32-bit.
    U32(u32),
    /// `l`: signed 64-bit.
    I64(i64),
    /// `f`: 32-bit float.
    F32(f32),
    /// `d`: 64-bit float.
    F64(f64),
    /// `D`: decimal, `value` scaled down by 10^`scale`.
    Decimal { scale: u8, value: u32 },
    /// `S`: long string (octets, not necessarily UTF-8).
    LongString(Bytes),
    /// `A`: field array.
    Array(Vec<FieldValue>),
    /// `T`: timestamp, seconds since the epoch.
    Timestamp(u64),
    /// `F`: nested field table.
    Table(FieldTable),
    /// `V`: no value.
    Void,
    /// `x`: byte array.
    ByteArray(Bytes),
}

/// A field table: ordered (name, value) pairs, as received. Order and duplicates are kept so a
/// table re-encodes to the same bytes; lookups take the first entry of a name. Tables are small
/// in practice, so a vector beats a map here.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldTable(pub Vec<(ShortString, FieldValue)>);

impl FieldTable {
    /// An empty table.
    pub const fn new() -> Self {
        FieldTable(Vec::new())
    }

    /// The first value stored under `name`.
    pub fn get(&self, name: &[u8]) -> Option<&FieldValue> {
        self.0
            .iter()
            .find(|(key, _)| key.as_bytes() == name)
            .map(|(_, value)| value)
    }

    /// Replaces the value under `name`, or appends it.
    pub fn insert(&mut self, name: ShortString, value: FieldValue) {
        match self.0.iter_mut().find(|(key, _)| *key == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }

    /// Removes every entry under `name`, returning the first value removed.
    pub fn remove(&mut self, name: &[u8]) -> Option<FieldValue> {
        let mut removed = None;
        self.0.retain(|(key, value)| {
            if key.as_bytes() == name {
                if removed.is_none() {
                    removed = Some(value.clone());
                }
                false
            } else {
                true
            }
        });
        removed
    }

    /// Iterates over the entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&ShortString, &FieldValue)> {
        self.0.iter().map(|(key, value)| (key, value))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Encodes the table as on the wire: a 32-bit byte length, then name/value pairs.
    pub fn encode(&self, buf: &mut BytesMut) {
        let at = wire::begin_length(buf);
        for (name, value) in &self.0 {
            wire::put_shortstr(buf, name);
            value.encode(buf);
        }
        wire::end_length(buf, at);
    }

    /// Decodes a table as encoded by [`FieldTable::encode`]; `bytes` must hold exactly one
    /// table. Strings in the result are zero-copy slices of `bytes`.
    pub fn decode(bytes: &Bytes) -> Result<FieldTable, FieldError> {
        let mut reader = Reader::new(bytes);
        let table = decode_table(&mut reader, 0)?;
        reader.finish()?;
        Ok(table)
    }
}

impl FieldValue {
    /// RabbitMQ's name for this value's type, as it appears in its reply texts
    /// (`unsignedbyte`, `longstr`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            FieldValue::Bool(_) => "bool",
            FieldValue::I8(_) => "byte",
            FieldValue::U8(_) => "unsignedbyte",
            FieldValue::I16(_) => "short",
            FieldValue::U16(_) => "unsignedshort",
            FieldValue::I32(_) => "signedint",
            FieldValue::U32(_) => "unsignedint",
            FieldValue::I64(_) => "long",
            FieldValue::F32(_) => "float",
            FieldValue::F64(_) => "double",
            FieldValue::Decimal { .. } => "decimal",
            FieldValue::LongString(_) => "longstr",
            FieldValue::Array(_) => "array",
            FieldValue::Timestamp(_) => "timestamp",
            FieldValue::Table(_) => "table",
            FieldValue::Void => "void",
            FieldValue::ByteArray(_) => "binary",
        }
    }

    /// The RabbitMQ type letter of this value.
    pub fn type_letter(&self) -> u8 {
        match self {
            FieldValue::Bool(_) => b't',
            FieldValue::I8(_) => b'b',
            FieldValue::U8(_) => b'B',
            FieldValue::I16(_) => b's',
            FieldValue::U16(_) => b'u',
            FieldValue::I32(_) => b'I',
            FieldValue::U32(_) => b'i',
            FieldValue::I64(_) => b'l',
            FieldValue::F32(_) => b'f',
            FieldValue::F64(_) => b'd',
            FieldValue::Decimal { .. } => b'D',
            FieldValue::LongString(_) => b'S',
            FieldValue::Array(_) => b'A',
            FieldValue::Timestamp(_) => b'T',
            FieldValue::Table(_) => b'F',
            FieldValue::Void => b'V',
            FieldValue::ByteArray(_) => b'x',
        }
    }

    /// Encodes the type letter and the value.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(self.type_letter());
        match self {
            FieldValue::Bool(v) => buf.put_u8(u8::from(*v)),
            FieldValue::I8(v) => buf.put_i8(*v),
            FieldValue::U8(v) => buf.put_u8(*v),
            FieldValue::I16(v) => buf.put_i16(*v),
            FieldValue::U16(v) => buf.put_u16(*v),
            FieldValue::I32(v) => buf.put_i32(*v),
            FieldValue::U32(v) => buf.put_u32(*v),
            FieldValue::I64(v) => buf.put_i64(*v),
            FieldValue::F32(v) => buf.put_f32(*v),
            FieldValue::F64(v) => buf.put_f64(*v),
            FieldValue::Decimal { scale, value } => {
                buf.put_u8(*scale);
                buf.put_u32(*value);
            }
            FieldValue::LongString(v) | FieldValue::ByteArray(v) => wire::put_longstr(buf, v),
            FieldValue::Array(values) => {
                let at = wire::begin_length(buf);
                for value in values {
                    value.encode(buf);
                }
                wire::end_length(buf, at);
            }
            FieldValue::Timestamp(v) => buf.put_u64(*v),
            FieldValue::Table(table) => table.encode(buf),
            FieldValue::Void => {}
        }
    }
}

/// A rough entry count for a table or array of `len` bytes, to size its vector: entries take at
/// least two bytes, and the cap keeps a large declared length from reserving much up front.
#[inline]
fn capacity_hint(len: usize) -> usize {
    (len / 8).min(32)
}

/// Decodes a length-prefixed table at nesting level `depth` (0 = a method's own table).
pub(crate) fn decode_table(r: &mut Reader<'_>, depth: usize) -> Result<FieldTable, FieldError> {
    if depth > MAX_TABLE_DEPTH {
        return Err(FieldError::TooDeep);
    }
    let len = r.u32()?;
    let len = wire::len_to_usize(len, r.remaining())?;
    let mut entries = r.sub(len)?;
    let mut table = Vec::with_capacity(capacity_hint(len));
    while !entries.is_empty() {
        let name = entries.shortstr()?;
        let value = decode_value(&mut entries, depth)?;
        table.push((name, value));
    }
    Ok(FieldTable(table))
}

/// Decodes one type letter and value; nested tables and arrays go one level deeper.
fn decode_value(r: &mut Reader<'_>, depth: usize) -> Result<FieldValue, FieldError> {
    let letter = r.u8()?;
    Ok(match letter {
        // RabbitMQ reads any non-zero octet as true.
        b't' => FieldValue::Bool(r.u8()? != 0),
        b'b' => FieldValue::I8(r.u8()? as i8),
        b'B' => FieldValue::U8(r.u8()?),
        b's' => FieldValue::I16(r.u16()? as i16),
        b'u' => FieldValue::U16(r.u16()?),
        b'I' => FieldValue::I32(r.u32()? as i32),
        b'i' => FieldValue::U32(r.u32()?),
        b'l' => FieldValue::I64(r.u64()? as i64),
        // Not in RabbitMQ's table of letters, yet RabbitMQ accepts it: py-amqp (kombu, Celery)
        // writes every integer beyond 32 bits as `L`, two's complement. It reads back as a long.
        b'L' => FieldValue::I64(r.u64()? as i64),
        b'f' => FieldValue::F32(f32::from_bits(r.u32()?)),
        b'd' => FieldValue::F64(f64::from_bits(r.u64()?)),
        b'D' => FieldValue::Decimal {
            scale: r.u8()?,
            value: r.u32()?,
        },
        b'S' => FieldValue::LongString(r.longstr()?),
        b'x' => FieldValue::ByteArray(r.longstr()?),
        b'T' => FieldValue::Timestamp(r.u64()?),
        b'F' => FieldValue::Table(decode_table(r, depth + 1)?),
        b'A' => FieldValue::Array(decode_array(r, depth + 1)?),
        b'V' => FieldValue::Void,
        other => return Err(FieldError::UnknownFieldType(other)),
    })
}

/// Decodes a length-prefixed field array at nesting level `depth`.
fn decode_array(r: &mut Reader<'_>, depth: usize) -> Result<Vec<FieldValue>, FieldError> {
    if depth > MAX_TABLE_DEPTH {
        return Err(FieldError::TooDeep);
    }
    let len = r.u32()?;
    let len = wire::len_to_usize(len, r.remaining())?;
    let mut items = r.sub(len)?;
    let mut values = Vec::with_capacity(capacity_hint(len));
    while !items.is_empty() {
        values.push(decode_value(&mut items, depth)?);
    }
    Ok(values)
}
