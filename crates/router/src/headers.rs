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
                    erlang_type_name(other),
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

/// RabbitMQ's name for a field type, as it appears in its error texts.
pub(crate) fn erlang_type_name(value: &FieldValue) -> &'static str {
    match value {
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

/// All rules of one headers exchange; routing tests each in turn.
#[derive(Debug)]
pub(crate) struct HeadersRoutes<Q> {
    rules: Vec<Rule<Q>>,
}

impl<Q> Default for HeadersRoutes<Q> {
    fn default() -> Self {
        HeadersRoutes { rules: Vec::new() }
    }
}

impl<Q: Clone> HeadersRoutes<Q> {
    /// `arguments` must be sorted (see [`sorted_arguments`]) and validated.
    pub(crate) fn add(&mut self, arguments: &FieldTable, target: Target<Q>) {
        if let Some(rule) = self
            .rules
            .iter_mut()
            .find(|rule| rule.arguments == *arguments)
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
            .collect();
        let mut dests = DestSet::default();
        dests.add(target);
        self.rules.push(Rule {
            arguments: arguments.clone(),
            mode,
            conditions,
            dests,
        });
    }

    /// `arguments` must be sorted.
    pub(crate) fn remove(&mut self, arguments: &FieldTable, dest: &DestKey) {
        if let Some(pos) = self
            .rules
            .iter()
            .position(|rule| rule.arguments == *arguments)
            && let Some(rule) = self.rules.get_mut(pos)
        {
            rule.dests.remove(dest);
            if rule.dests.is_empty() {
                self.rules.swap_remove(pos);
            }
        }
    }

    pub(crate) fn collect(&self, headers: Option<&FieldTable>, out: &mut RouteBuf<Q>) -> bool {
        static EMPTY: FieldTable = FieldTable::new();
        let headers = headers.unwrap_or(&EMPTY);
        if !out.headers_sorted {
            let mut order = std::mem::take(&mut out.header_order);
            order.clear();
            order.extend(0..headers.0.len() as u32);
            order.sort_by(|&a, &b| {
                let name =
                    |index: u32| headers.0.get(index as usize).map(|(key, _)| key.as_bytes());
                name(a).cmp(&name(b))
            });
            out.header_order = order;
            out.headers_sorted = true;
        }
        let order = std::mem::take(&mut out.header_order);
        let mut any = false;
        for rule in &self.rules {
            if rule.matches(headers, &order) {
                any |= rule.dests.collect(out);
            }
        }
        out.header_order = order;
        any
    }
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
