//! Field tables and field values, with RabbitMQ's type letters (which differ from the
//! 0-9-1 document's in places), and the `ShortString` used for names and table keys.

use bytes::Bytes;

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
}
