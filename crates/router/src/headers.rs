//! Headers exchanges: binding arguments matched against message headers, as RabbitMQ 3.10 does.
//!
//! RabbitMQ (`rabbit_exchange_type_headers`) sorts both the binding arguments and the message
//! headers by name and walks them like a merge: `x-match` itself is never a condition; other
//! `x-` arguments are skipped by `all`/`any` and compared by `all-with-x`/`any-with-x`; a
//! binding argument of type void only requires the header to be present; other values compare
//! with Erlang's `==`, by value across types: integers of any width (and timestamps) are equal
//! when their values are, an integer equals a float of the same value, long strings equal
//! byte arrays of the same bytes, while decimals, tables and arrays compare element by element
//! with their type tags. With duplicate names, each argument consumes the next header of that
//! name, which is what the merge does.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};

use smallvec::SmallVec;

use warren_codec::{FieldTable, FieldValue, ShortString};

use crate::dest::{DestKey, DestSet, Target};
use crate::error::RouterError;
use crate::route::RouteBuf;

/// The `x-match` argument's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XMatch {
    /// Every condition must hold; `x-` arguments are not conditions. The default.
    All,
    /// At least one condition must hold; `x-` arguments are not conditions.
    Any,
    /// As `All`, with `x-` arguments (other than `x-match`) as conditions too.
    AllWithX,
    /// As `Any`, with `x-` arguments (other than `x-match`) as conditions too.
    AnyWithX,
}

impl XMatch {
    /// Reads `x-match` from binding arguments, refusing what RabbitMQ refuses (406).
    pub fn from_arguments(arguments: &FieldTable) -> Result<XMatch, RouterError> {
        match arguments.get(b"x-match") {
            None => Ok(XMatch::All),
            Some(FieldValue::LongString(value)) => match value.as_ref() {
                b"all" => Ok(XMatch::All),
                b"any" => Ok(XMatch::Any),
                b"all-with-x" => Ok(XMatch::AllWithX),
                b"any-with-x" => Ok(XMatch::AnyWithX),
                other => Err(RouterError::PreconditionFailed {
                    text: format!(
                        "Invalid x-match field value <<\"{}\">>; expected all, any, all-with-x, or any-with-x",
                        String::from_utf8_lossy(other)
                    ),
                }),
            },
            Some(other) => Err(RouterError::PreconditionFailed {
                text: format!(
                    "Invalid x-match field type {} (value {}); expected longstr",
                    other.type_name(),
                    erlang_value_text(other)
                ),
            }),
        }
    }

    fn with_x(self) -> bool {
        matches!(self, XMatch::AllWithX | XMatch::AnyWithX)
    }

    fn is_all(self) -> bool {
        matches!(self, XMatch::All | XMatch::AllWithX)
    }
}

fn erlang_value_text(value: &FieldValue) -> String {
    match value {
        FieldValue::Bool(b) => b.to_string(),
        FieldValue::I8(v) => v.to_string(),
        FieldValue::U8(v) => v.to_string(),
        FieldValue::I16(v) => v.to_string(),
        FieldValue::U16(v) => v.to_string(),
        FieldValue::I32(v) => v.to_string(),
        FieldValue::U32(v) => v.to_string(),
        FieldValue::I64(v) => v.to_string(),
        FieldValue::Timestamp(v) => v.to_string(),
        FieldValue::Void => "undefined".to_string(),
        other => format!("{other:?}"),
    }
}

/// A value as Erlang sees it after RabbitMQ decodes it, for `==`.
enum Term<'a> {
    Int(i128),
    Float(f64),
    Binary(&'a [u8]),
    Bool(bool),
    Undefined,
    Decimal(u8, u32),
    Array(&'a [FieldValue]),
    Table(&'a FieldTable),
}

fn term(value: &FieldValue) -> Term<'_> {
    match value {
        FieldValue::Bool(b) => Term::Bool(*b),
        FieldValue::I8(v) => Term::Int(i128::from(*v)),
        FieldValue::U8(v) => Term::Int(i128::from(*v)),
        FieldValue::I16(v) => Term::Int(i128::from(*v)),
        FieldValue::U16(v) => Term::Int(i128::from(*v)),
        FieldValue::I32(v) => Term::Int(i128::from(*v)),
        FieldValue::U32(v) => Term::Int(i128::from(*v)),
        FieldValue::I64(v) => Term::Int(i128::from(*v)),
        FieldValue::Timestamp(v) => Term::Int(i128::from(*v)),
        FieldValue::F32(v) => Term::Float(f64::from(*v)),
        FieldValue::F64(v) => Term::Float(*v),
        FieldValue::Decimal { scale, value } => Term::Decimal(*scale, *value),
        FieldValue::LongString(bytes) | FieldValue::ByteArray(bytes) => Term::Binary(bytes),
        FieldValue::Array(items) => Term::Array(items),
        FieldValue::Table(table) => Term::Table(table),
        FieldValue::Void => Term::Undefined,
    }
}

/// Erlang's `==` between an integer and a float: equal when the float is exactly that integer.
fn int_eq_float(int: i128, float: f64) -> bool {
    float.is_finite() && float.fract() == 0.0 && float.abs() < 1.7e38 && float as i128 == int
}

/// Erlang's `==` on the decoded values (types are not compared at the top level).
fn erlang_eq(a: &FieldValue, b: &FieldValue) -> bool {
    match (term(a), term(b)) {
        (Term::Int(x), Term::Int(y)) => x == y,
        (Term::Float(x), Term::Float(y)) => x == y,
        (Term::Int(x), Term::Float(y)) | (Term::Float(y), Term::Int(x)) => int_eq_float(x, y),
        (Term::Binary(x), Term::Binary(y)) => x == y,
        (Term::Bool(x), Term::Bool(y)) => x == y,
        (Term::Undefined, Term::Undefined) => true,
        (Term::Decimal(s1, v1), Term::Decimal(s2, v2)) => s1 == s2 && v1 == v2,
        (Term::Array(x), Term::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| typed_eq(a, b))
        }
        (Term::Table(x), Term::Table(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y.iter())
                    .all(|((ka, va), (kb, vb))| ka == kb && typed_eq(va, vb))
        }
        _ => false,
    }
}

/// Inside arrays and tables each value is an Erlang `{Type, Value}` pair, so the type tag
/// must be the same too.
fn typed_eq(a: &FieldValue, b: &FieldValue) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b) && erlang_eq(a, b)
}

/// One distinct set of binding arguments and the destinations bound with it.
#[derive(Debug)]
struct Rule<Q> {
    /// The arguments as bound, sorted by name (stable); the rule's identity.
    arguments: FieldTable,
    /// `hash_table` of `arguments`, to find its index entry when another rule moves.
    hash: u64,
    mode: XMatch,
    /// The conditions: sorted arguments without `x-match`, and without other `x-` arguments
    /// unless the mode is a `-with-x` one.
    conditions: Vec<(ShortString, FieldValue)>,
    dests: DestSet<Q>,
}

impl<Q> Rule<Q> {
    fn matches(&self, headers: &FieldTable, order: &[u32]) -> bool {
        let all = self.mode.is_all();
        let header_name = |pos: usize| {
            order
                .get(pos)
                .and_then(|&index| headers.0.get(index as usize))
        };
        let mut cursor = 0usize;
        let mut all_matched = true;
        let mut any_matched = false;
        for (name, expected) in &self.conditions {
            // Skip headers sorting before this condition's name (the merge's "PK > DK" step).
            let rest = order.get(cursor..).unwrap_or(&[]);
            cursor += rest.partition_point(|&index| {
                headers
                    .0
                    .get(index as usize)
                    .is_some_and(|(key, _)| key.as_bytes().cmp(name.as_bytes()) == Ordering::Less)
            });
            match header_name(cursor) {
                Some((key, actual)) if key == name => {
                    cursor += 1;
                    if matches!(expected, FieldValue::Void) || erlang_eq(expected, actual) {
                        any_matched = true;
                    } else {
                        all_matched = false;
                    }
                }
                _ => all_matched = false,
            }
            if all && !all_matched {
                return false;
            }
            if !all && any_matched {
                return true;
            }
        }
        if all { all_matched } else { any_matched }
    }
}

/// Binding arguments sorted by name, stably, as RabbitMQ stores them; two bindings whose
/// arguments differ only in order are the same binding.
pub(crate) fn sorted_arguments(arguments: &FieldTable) -> FieldTable {
    let mut entries = arguments.0.clone();
    entries.sort_by(|(a, _), (b, _)| a.as_bytes().cmp(b.as_bytes()));
    FieldTable(entries)
}

/// Feeds a table into a hasher consistently with `FieldTable`'s `==`: equal tables hash
/// equally (`-0.0` is hashed as `0.0`, since the two compare equal).
fn hash_table(table: &FieldTable, state: &mut impl Hasher) {
    state.write_usize(table.len());
    for (name, value) in table.iter() {
        state.write(name.as_bytes());
        hash_value(value, state);
    }
}

fn hash_value(value: &FieldValue, state: &mut impl Hasher) {
    std::mem::discriminant(value).hash(state);
    match value {
        FieldValue::Bool(v) => v.hash(state),
        FieldValue::I8(v) => v.hash(state),
        FieldValue::U8(v) => v.hash(state),
        FieldValue::I16(v) => v.hash(state),
        FieldValue::U16(v) => v.hash(state),
        FieldValue::I32(v) => v.hash(state),
        FieldValue::U32(v) => v.hash(state),
        FieldValue::I64(v) => v.hash(state),
        FieldValue::Timestamp(v) => v.hash(state),
        FieldValue::F32(v) => (if *v == 0.0 { 0.0f32 } else { *v }).to_bits().hash(state),
        FieldValue::F64(v) => (if *v == 0.0 { 0.0f64 } else { *v }).to_bits().hash(state),
        FieldValue::Decimal { scale, value } => (scale, value).hash(state),
        FieldValue::LongString(bytes) | FieldValue::ByteArray(bytes) => bytes.hash(state),
        FieldValue::Array(items) => {
            state.write_usize(items.len());
            for item in items {
                hash_value(item, state);
            }
        }
        FieldValue::Table(table) => hash_table(table, state),
        FieldValue::Void => {}
    }
}

/// A value reduced to what Erlang's `==` distinguishes, for hashing: values that compare
/// equal reduce to the same thing. Decimals, arrays and tables are not reduced (`None`).
fn reduced(value: &FieldValue) -> Option<(u8, u128)> {
    let int = |v: i128| Some((0, v as u128));
    match term(value) {
        Term::Int(v) => int(v),
        Term::Float(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1.7e38 => int(f as i128),
        Term::Float(f) => Some((1, u128::from(f.to_bits()))),
        Term::Bool(b) => Some((2, u128::from(b))),
        Term::Undefined => Some((3, 0)),
        // Bytes are hashed separately; the tag says so.
        Term::Binary(_) => Some((4, 0)),
        Term::Decimal(..) | Term::Array(_) | Term::Table(_) => None,
    }
}

/// A 256-bit set of hashed names and (name, value) pairs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Mask([u64; 4]);

impl Mask {
    fn from_hash(hash: u64) -> Mask {
        let mut mask = Mask::default();
        if let Some(word) = mask.0.get_mut(((hash >> 6) & 3) as usize) {
            *word = 1u64 << (hash & 63);
        }
        mask
    }

    fn union(self, other: Mask) -> Mask {
        let mut words = self.0;
        for (word, other) in words.iter_mut().zip(other.0) {
            *word |= other;
        }
        Mask(words)
    }

    fn is_subset_of(&self, other: &Mask) -> bool {
        self.0
            .iter()
            .zip(other.0)
            .all(|(word, other)| word & !other == 0)
    }

    fn intersects(&self, other: &Mask) -> bool {
        self.0
            .iter()
            .zip(other.0)
            .any(|(word, other)| word & other != 0)
    }
}

/// A quick necessary condition for a rule, so routing skips most rules without reading them:
/// one bit per (name) and per (name, value) in a 256-bit mask. An `all` rule can only match
/// a message whose mask has all of the rule's bits; an `any` rule one that has at least one.
#[derive(Debug, Clone, Copy)]
struct Filter {
    mask: Mask,
    all: bool,
}

/// All rules of one headers exchange; routing tests each in turn.
#[derive(Debug)]
pub(crate) struct HeadersRoutes<Q> {
    rules: Vec<Rule<Q>>,
    /// One filter per rule, same order: a dense array that routing scans first.
    filters: Vec<Filter>,
    /// Hash of a rule's arguments -> its positions in `rules`, so that bind and unbind find a
    /// rule without comparing with every other one (a flood of bindings stays linear).
    by_hash: HashMap<u64, SmallVec<[u32; 1]>, foldhash::fast::RandomState>,
    hasher: foldhash::fast::RandomState,
}

impl<Q> Default for HeadersRoutes<Q> {
    fn default() -> Self {
        HeadersRoutes {
            rules: Vec::new(),
            filters: Vec::new(),
            by_hash: HashMap::default(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl<Q: Clone> HeadersRoutes<Q> {
    fn hash_of(&self, arguments: &FieldTable) -> u64 {
        let mut state = self.hasher.build_hasher();
        hash_table(arguments, &mut state);
        state.finish()
    }

    /// The filter bit of a header name (`value` None) or of a name with a value. Equal values
    /// (in Erlang's sense) give equal bits.
    fn bit(&self, name: &[u8], value: Option<&FieldValue>) -> Mask {
        let mut state = self.hasher.build_hasher();
        state.write(name);
        if let Some(value) = value {
            match reduced(value) {
                Some((tag, bits)) => {
                    state.write_u8(tag + 1);
                    state.write_u128(bits);
                    if let FieldValue::LongString(bytes) | FieldValue::ByteArray(bytes) = value {
                        state.write(bytes);
                    }
                }
                None => state.write_u8(0),
            }
        }
        Mask::from_hash(state.finish())
    }

    /// A condition needs its name, and its value unless it is void (presence only) or a value
    /// that is not reduced (then only the name is required of the message).
    fn condition_bit(&self, name: &[u8], expected: &FieldValue) -> Mask {
        if matches!(expected, FieldValue::Void) || reduced(expected).is_none() {
            self.bit(name, None)
        } else {
            self.bit(name, Some(expected))
        }
    }

    /// Every header contributes its name bit and, when reduced, its (name, value) bit.
    fn message_mask(&self, headers: &FieldTable) -> Mask {
        headers.iter().fold(Mask::default(), |mask, (name, value)| {
            let value_bit = if reduced(value).is_some() {
                self.bit(name.as_bytes(), Some(value))
            } else {
                Mask::default()
            };
            mask.union(self.bit(name.as_bytes(), None)).union(value_bit)
        })
    }

    fn find(&self, arguments: &FieldTable, hash: u64) -> Option<usize> {
        self.by_hash
            .get(&hash)?
            .iter()
            .map(|&pos| pos as usize)
            .find(|&pos| {
                self.rules
                    .get(pos)
                    .is_some_and(|rule| rule.arguments == *arguments)
            })
    }

    /// `arguments` must be sorted (see [`sorted_arguments`]) and validated.
    pub(crate) fn add(&mut self, arguments: &FieldTable, target: Target<Q>) {
        let hash = self.hash_of(arguments);
        if let Some(rule) = self
            .find(arguments, hash)
            .and_then(|pos| self.rules.get_mut(pos))
        {
            rule.dests.add(target);
            return;
        }
        let mode = XMatch::from_arguments(arguments).unwrap_or(XMatch::All);
        let conditions = arguments
            .0
            .iter()
            .filter(|(name, _)| {
                let name = name.as_bytes();
                name != b"x-match" && (mode.with_x() || !name.starts_with(b"x-"))
            })
            .cloned()
            .collect::<Vec<_>>();
        let filter = Filter {
            mask: conditions
                .iter()
                .fold(Mask::default(), |mask, (name, expected)| {
                    mask.union(self.condition_bit(name.as_bytes(), expected))
                }),
            all: mode.is_all(),
        };
        let mut dests = DestSet::default();
        dests.add(target);
        self.by_hash
            .entry(hash)
            .or_default()
            .push(self.rules.len() as u32);
        self.filters.push(filter);
        self.rules.push(Rule {
            arguments: arguments.clone(),
            hash,
            mode,
            conditions,
            dests,
        });
    }

    /// `arguments` must be sorted.
    pub(crate) fn remove(&mut self, arguments: &FieldTable, dest: &DestKey) {
        let hash = self.hash_of(arguments);
        let Some(pos) = self.find(arguments, hash) else {
            return;
        };
        let Some(rule) = self.rules.get_mut(pos) else {
            return;
        };
        rule.dests.remove(dest);
        if !rule.dests.is_empty() {
            return;
        }
        self.unindex(hash, pos);
        let last = self.rules.len() - 1;
        if pos != last {
            // The last rule moves into `pos`: repoint its index entry.
            let moved_hash = self.rules.get(last).map(|rule| rule.hash);
            if let Some(positions) = moved_hash.and_then(|h| self.by_hash.get_mut(&h)) {
                for slot in positions.iter_mut() {
                    if *slot as usize == last {
                        *slot = pos as u32;
                    }
                }
            }
        }
        self.rules.swap_remove(pos);
        self.filters.swap_remove(pos);
    }

    fn unindex(&mut self, hash: u64, pos: usize) {
        if let Some(positions) = self.by_hash.get_mut(&hash) {
            positions.retain(|slot| *slot as usize != pos);
            if positions.is_empty() {
                self.by_hash.remove(&hash);
            }
        }
    }

    pub(crate) fn collect(&self, headers: Option<&FieldTable>, out: &mut RouteBuf<Q>) -> bool {
        static EMPTY: FieldTable = FieldTable::new();
        let headers = headers.unwrap_or(&EMPTY);
        let message_mask = self.message_mask(headers);
        let mut any = false;
        for (pos, filter) in self.filters.iter().enumerate() {
            let candidate = if filter.all {
                filter.mask.is_subset_of(&message_mask)
            } else {
                filter.mask.intersects(&message_mask)
            };
            if !candidate {
                continue;
            }
            if !out.headers_sorted {
                sort_headers(headers, out);
            }
            if let Some(rule) = self.rules.get(pos)
                && rule.matches(headers, &out.header_order)
            {
                any |= rule.dests.collect(out);
            }
        }
        any
    }
}

/// Builds the message's header order (indices sorted by name, stably) once per message.
fn sort_headers<Q>(headers: &FieldTable, out: &mut RouteBuf<Q>) {
    let order = &mut out.header_order;
    order.clear();
    order.extend(0..headers.0.len() as u32);
    order.sort_by(|&a, &b| {
        let name = |index: u32| headers.0.get(index as usize).map(|(key, _)| key.as_bytes());
        name(a).cmp(&name(b))
    });
    out.headers_sorted = true;
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn erlang_equality_crosses_integer_widths_and_floats() {
        assert!(erlang_eq(&FieldValue::I8(1), &FieldValue::I64(1)));
        assert!(erlang_eq(&FieldValue::U32(7), &FieldValue::Timestamp(7)));
        assert!(erlang_eq(&FieldValue::I32(1), &FieldValue::F64(1.0)));
        assert!(!erlang_eq(&FieldValue::I32(1), &FieldValue::F64(1.5)));
        assert!(erlang_eq(&FieldValue::F32(0.5), &FieldValue::F64(0.5)));
        assert!(erlang_eq(
            &FieldValue::LongString(Bytes::from_static(b"a")),
            &FieldValue::ByteArray(Bytes::from_static(b"a"))
        ));
        assert!(!erlang_eq(
            &FieldValue::LongString(Bytes::from_static(b"1")),
            &FieldValue::I32(1)
        ));
        assert!(!erlang_eq(&FieldValue::Bool(true), &FieldValue::I8(1)));
        assert!(!erlang_eq(
            &FieldValue::Array(vec![FieldValue::I8(1)]),
            &FieldValue::Array(vec![FieldValue::I64(1)])
        ));
        assert!(erlang_eq(
            &FieldValue::Array(vec![FieldValue::I8(1)]),
            &FieldValue::Array(vec![FieldValue::I8(1)])
        ));
    }
}
