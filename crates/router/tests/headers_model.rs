//! Property test: headers routing against RabbitMQ's merge algorithm written out clause by
//! clause (`rabbit_exchange_type_headers:headers_match/5`), under random binds and unbinds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap: a panic is a failed assertion.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use warren_codec::{FieldTable, FieldValue, ShortString};
use warren_router::{Binding, ExchangeDef, ExchangeKind, RouteBuf, Topology};

fn name(s: &str) -> ShortString {
    ShortString::try_from(s).unwrap()
}

fn long(s: &str) -> FieldValue {
    FieldValue::LongString(Bytes::copy_from_slice(s.as_bytes()))
}

/// Erlang `==` restricted to the value types generated here.
fn eq(a: &FieldValue, b: &FieldValue) -> bool {
    let int = |v: &FieldValue| match v {
        FieldValue::I32(x) => Some(i64::from(*x)),
        FieldValue::I64(x) => Some(*x),
        _ => None,
    };
    match (a, b) {
        (FieldValue::LongString(x), FieldValue::LongString(y)) => x == y,
        (FieldValue::Void, FieldValue::Void) => true,
        _ => int(a).is_some() && int(a) == int(b),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    All,
    Any,
    AllX,
    AnyX,
}

fn sorted(table: &FieldTable) -> Vec<(ShortString, FieldValue)> {
    let mut entries = table.0.clone();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
}

/// The Erlang clauses, in order, as a loop.
fn reference(arguments: &FieldTable, headers: &FieldTable) -> bool {
    let mode = match arguments.get(b"x-match") {
        Some(FieldValue::LongString(v)) if v.as_ref() == b"any" => Mode::Any,
        Some(FieldValue::LongString(v)) if v.as_ref() == b"all-with-x" => Mode::AllX,
        Some(FieldValue::LongString(v)) if v.as_ref() == b"any-with-x" => Mode::AnyX,
        _ => Mode::All,
    };
    let all_mode = matches!(mode, Mode::All | Mode::AllX);
    let pattern = sorted(arguments);
    let data = sorted(headers);
    let (mut all, mut any) = (true, false);
    let (mut p, mut d) = (0, 0);
    loop {
        if all_mode && !all {
            return false;
        }
        if !all_mode && any {
            return true;
        }
        let Some((pk, pv)) = pattern.get(p) else {
            return if all_mode { all } else { any };
        };
        if pk.as_bytes() == b"x-match" {
            p += 1;
            continue;
        }
        if pk.as_bytes().starts_with(b"x-") && matches!(mode, Mode::All | Mode::Any) {
            p += 1;
            continue;
        }
        let Some((dk, dv)) = data.get(d) else {
            all = false;
            p = pattern.len();
            continue;
        };
        if pk > dk {
            d += 1;
        } else if pk < dk {
            all = false;
            p += 1;
        } else {
            if matches!(pv, FieldValue::Void) || eq(pv, dv) {
                any = true;
            } else {
                all = false;
            }
            p += 1;
            d += 1;
        }
    }
}

fn value() -> impl Strategy<Value = FieldValue> {
    prop_oneof![
        Just(long("1")),
        Just(long("2")),
        Just(FieldValue::I32(1)),
        Just(FieldValue::I64(1)),
        Just(FieldValue::I64(2)),
        Just(FieldValue::Void),
    ]
}

fn entries() -> impl Strategy<Value = Vec<(String, FieldValue)>> {
    prop::collection::vec(
        (
            prop::sample::select(vec!["a", "b", "c", "x-k"]).prop_map(String::from),
            value(),
        ),
        0..4,
    )
}

fn binding_arguments() -> impl Strategy<Value = FieldTable> {
    (
        prop::option::of(prop::sample::select(vec![
            "all",
            "any",
            "all-with-x",
            "any-with-x",
        ])),
        entries(),
    )
        .prop_map(|(mode, entries)| {
            let mut table = FieldTable::new();
            for (key, value) in entries {
                table.0.push((name(&key), value));
            }
            if let Some(mode) = mode {
                table.0.push((name("x-match"), long(mode)));
            }
            table
        })
}

fn headers() -> impl Strategy<Value = FieldTable> {
    entries()
        .prop_map(|entries| FieldTable(entries.into_iter().map(|(k, v)| (name(&k), v)).collect()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn headers_match_like_rabbitmq(
        ops in prop::collection::vec((any::<bool>(), 0..3usize, binding_arguments()), 1..30),
        messages in prop::collection::vec(headers(), 1..8),
    ) {
        let topology: Topology<Arc<String>> = Topology::new("/");
        topology.declare_exchange(ExchangeDef::new(name("h"), ExchangeKind::Headers)).unwrap();
        for queue in 0..3 {
            topology.add_queue(name(&format!("q{queue}")), Arc::new(format!("q{queue}")));
        }
        // The model: (queue, arguments) pairs currently bound, arguments compared sorted.
        let mut model: Vec<(usize, FieldTable)> = Vec::new();
        for (bind, queue, arguments) in &ops {
            let binding = Binding::queue(name("h"), name(&format!("q{queue}")), name(""))
                .with_arguments(arguments.clone());
            let key = FieldTable(sorted(arguments));
            let pos = model.iter().position(|(q, a)| q == queue && FieldTable(sorted(a)) == key);
            if *bind {
                prop_assert_eq!(topology.bind(&binding).unwrap(), pos.is_none());
                if pos.is_none() {
                    model.push((*queue, arguments.clone()));
                }
            } else {
                let removed = topology.unbind(&binding).unwrap();
                prop_assert_eq!(removed.bindings.len() == 1, pos.is_some());
                if let Some(pos) = pos {
                    model.remove(pos);
                }
            }
        }
        let mut out = RouteBuf::new();
        for message in &messages {
            let expected: BTreeSet<String> = model
                .iter()
                .filter(|(_, arguments)| reference(arguments, message))
                .map(|(queue, _)| format!("q{queue}"))
                .collect();
            topology.route(b"h", &[b""], Some(message), &mut out);
            let got: Vec<String> = out.queues().iter().map(|q| q.to_string()).collect();
            let got_set: BTreeSet<String> = got.iter().cloned().collect();
            prop_assert_eq!(got.len(), got_set.len());
            prop_assert_eq!(got_set, expected, "headers {:?} bindings {:?}", message, model);
        }
    }
}
