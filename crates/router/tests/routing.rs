//! Data-driven routing cases: one `check` line per case, against what RabbitMQ 3.10 does.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap: a panic is a failed assertion.

use std::sync::Arc;

use bytes::Bytes;
use warren_codec::{FieldTable, FieldValue, ShortString};
use warren_router::{
    Binding, Declared, Destination, ExchangeDef, ExchangeKind, RouteBuf, RouteOutcome, Topology,
};

fn name(s: &str) -> ShortString {
    ShortString::try_from(s).unwrap()
}

/// Parses `"x-match=s:any,a=i:1"` into a table: `s` longstr, `x` byte array, `b` i8, `B` u8,
/// `u` u16, `i` i32, `I` u32, `l` i64, `T` timestamp, `f` f32, `d` f64, `t` bool, `v` void,
/// `D` decimal as `scale/value`. Used for binding arguments and message headers alike.
fn table(spec: &str) -> FieldTable {
    let mut table = FieldTable::new();
    for entry in spec.split(',').filter(|entry| !entry.is_empty()) {
        let (key, typed) = entry.split_once('=').unwrap();
        let (kind, value) = typed.split_once(':').unwrap();
        let value = match kind {
            "s" => FieldValue::LongString(Bytes::copy_from_slice(value.as_bytes())),
            "x" => FieldValue::ByteArray(Bytes::copy_from_slice(value.as_bytes())),
            "b" => FieldValue::I8(value.parse().unwrap()),
            "B" => FieldValue::U8(value.parse().unwrap()),
            "u" => FieldValue::U16(value.parse().unwrap()),
            "i" => FieldValue::I32(value.parse().unwrap()),
            "I" => FieldValue::U32(value.parse().unwrap()),
            "l" => FieldValue::I64(value.parse().unwrap()),
            "T" => FieldValue::Timestamp(value.parse().unwrap()),
            "f" => FieldValue::F32(value.parse().unwrap()),
            "d" => FieldValue::F64(value.parse().unwrap()),
            "t" => FieldValue::Bool(value == "true"),
            "v" => FieldValue::Void,
            "D" => {
                let (scale, v) = value.split_once('/').unwrap();
                FieldValue::Decimal {
                    scale: scale.parse().unwrap(),
                    value: v.parse().unwrap(),
                }
            }
            other => panic!("unknown type {other}"),
        };
        // Push, not insert: duplicate names are part of some cases.
        table.0.push((name(key), value));
    }
    table
}

/// A topology with one exchange `x` of `kind`, queues `q*` as needed, and `bindings` as
/// (queue, binding key, arguments spec); routes `key` with `headers` and compares the set of
/// queue names reached with `expected` (a space-separated list; each queue at most once).
fn check_full(
    kind: ExchangeKind,
    bindings: &[(&str, &str, &str)],
    key: &str,
    headers: &str,
    expected: &str,
) {
    let topology: Topology<Arc<String>> = Topology::new("/");
    topology
        .declare_exchange(ExchangeDef::new(name("x"), kind))
        .unwrap();
    for (queue, binding_key, arguments) in bindings {
        topology.add_queue(name(queue), Arc::new(queue.to_string()));
        let binding = Binding::queue(name("x"), name(queue), name(binding_key))
            .with_arguments(table(arguments));
        topology.bind(&binding).unwrap();
    }
    let headers = table(headers);
    let mut out = RouteBuf::new();
    let outcome = topology.route(b"x", &[key.as_bytes()], Some(&headers), &mut out);
    let mut got: Vec<&str> = out.queues().iter().map(|q| q.as_str()).collect();
    let n = got.len();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), n, "a queue was delivered twice: {got:?}");
    let mut want: Vec<&str> = expected.split_whitespace().collect();
    want.sort();
    assert_eq!(
        got, want,
        "{kind:?} bindings {bindings:?} key {key:?} headers {headers:?}"
    );
    let expected_outcome = if want.is_empty() {
        RouteOutcome::Unroutable
    } else {
        RouteOutcome::Routed(want.len())
    };
    assert_eq!(outcome, expected_outcome);
}

fn check(kind: ExchangeKind, bindings: &[(&str, &str)], key: &str, expected: &str) {
    let bindings: Vec<(&str, &str, &str)> = bindings.iter().map(|(q, k)| (*q, *k, "")).collect();
    check_full(kind, &bindings, key, "", expected);
}

fn check_topic(bindings: &[(&str, &str)], key: &str, expected: &str) {
    check(ExchangeKind::Topic, bindings, key, expected);
}

fn check_headers(bindings: &[(&str, &str)], headers: &str, expected: &str) {
    let bindings: Vec<(&str, &str, &str)> = bindings.iter().map(|(q, a)| (*q, "", *a)).collect();
    check_full(ExchangeKind::Headers, &bindings, "", headers, expected);
}

#[test]
fn direct() {
    use ExchangeKind::Direct;
    check(Direct, &[("q1", "a"), ("q2", "b")], "a", "q1");
    check(Direct, &[("q1", "a"), ("q2", "a")], "a", "q1 q2");
    check(Direct, &[("q1", "a"), ("q1", "b")], "a", "q1");
    check(Direct, &[("q1", "a")], "A", "");
    check(Direct, &[("q1", "a")], "a.b", "");
    check(Direct, &[("q1", "")], "", "q1");
    check(Direct, &[("q1", "*")], "a", "");
    check(Direct, &[("q1", "#")], "a", "");
    check(Direct, &[], "a", "");
}

#[test]
fn fanout() {
    use ExchangeKind::Fanout;
    check(Fanout, &[("q1", "a"), ("q2", "b")], "zzz", "q1 q2");
    check(Fanout, &[("q1", "a"), ("q1", "b")], "", "q1");
    check(Fanout, &[], "a", "");
}

#[test]
fn topic_words_and_wildcards() {
    check_topic(&[("q1", "a.b.c")], "a.b.c", "q1");
    check_topic(&[("q1", "a.b.c")], "a.b", "");
    check_topic(&[("q1", "a.*.c")], "a.b.c", "q1");
    check_topic(&[("q1", "a.*.c")], "a.c", "");
    check_topic(&[("q1", "a.*.c")], "a.b.b.c", "");
    check_topic(&[("q1", "a.#.c")], "a.c", "q1");
    check_topic(&[("q1", "a.#.c")], "a.b.c", "q1");
    check_topic(&[("q1", "a.#.c")], "a.b.b.b.c", "q1");
    check_topic(&[("q1", "a.#.c")], "a.b.b.b.d", "");
    check_topic(&[("q1", "a.#")], "a", "q1");
    check_topic(&[("q1", "a.#")], "a.b.c", "q1");
    check_topic(&[("q1", "a.#")], "b.a", "");
    check_topic(&[("q1", "#.a")], "a", "q1");
    check_topic(&[("q1", "#.a")], "x.y.a", "q1");
    check_topic(&[("q1", "*")], "a", "q1");
    check_topic(&[("q1", "*")], "a.b", "");
    check_topic(&[("q1", "*.*")], "a.b", "q1");
    check_topic(&[("q1", "a*.b")], "ab.b", "");
    check_topic(&[("q1", "a*.b")], "a*.b", "q1");
    check_topic(&[("q1", "a#")], "a.b", "");
    check_topic(&[("q1", "a.b")], "a.B", "");
}

#[test]
fn topic_hash_alone_and_combined() {
    check_topic(&[("q1", "#")], "", "q1");
    check_topic(&[("q1", "#")], "a", "q1");
    check_topic(&[("q1", "#")], "a.b.c.d", "q1");
    check_topic(&[("q1", "#")], "..", "q1");
    check_topic(&[("q1", "#.#")], "", "q1");
    check_topic(&[("q1", "#.#")], "a.b", "q1");
    check_topic(&[("q1", "#.#.#.#")], "a", "q1");
    check_topic(&[("q1", "*.#")], "", "");
    check_topic(&[("q1", "*.#")], "a", "q1");
    check_topic(&[("q1", "*.#")], "a.b.c", "q1");
    check_topic(&[("q1", "#.*")], "", "");
    check_topic(&[("q1", "#.*")], "a", "q1");
    check_topic(&[("q1", "#.*.#")], "a.b", "q1");
    check_topic(&[("q1", "*.*.#")], "a", "");
    check_topic(&[("q1", "*.*.#")], "a.b", "q1");
    check_topic(&[("q1", "a.#.#.b")], "a.b", "q1");
    check_topic(&[("q1", "a.#.#.b")], "a.x.y.b", "q1");
    check_topic(&[("q1", "a.#.b.#.c")], "a.b.c", "q1");
    check_topic(&[("q1", "a.#.b.#.c")], "a.c.b.c", "q1");
    check_topic(&[("q1", "a.#.b.#.c")], "a.c.c", "");
}

#[test]
fn topic_empty_words() {
    // The empty key has no words; "." has two empty words (RabbitMQ's split_topic_key).
    check_topic(&[("q1", "")], "", "q1");
    check_topic(&[("q1", "*")], "", "");
    check_topic(&[("q1", "")], ".", "");
    check_topic(&[("q1", "*.*")], ".", "q1");
    check_topic(&[("q1", "*")], ".", "");
    check_topic(&[("q1", "a..b")], "a..b", "q1");
    check_topic(&[("q1", "a.*.b")], "a..b", "q1");
    check_topic(&[("q1", "a.b")], "a..b", "");
    check_topic(&[("q1", "a.#.b")], "a..b", "q1");
    check_topic(&[("q1", ".a")], ".a", "q1");
    check_topic(&[("q1", "*.a")], ".a", "q1");
    check_topic(&[("q1", "a.")], "a.", "q1");
    check_topic(&[("q1", "a.*")], "a.", "q1");
    check_topic(&[("q1", "a")], "a.", "");
    check_topic(&[("q1", "a.#")], "a.", "q1");
    check_topic(&[("q1", "#.")], "a.", "q1");
    check_topic(&[("q1", "#.")], "a", "");
    check_topic(&[("q1", "#.")], "", "");
    check_topic(&[("q1", "#.")], ".", "q1");
    check_topic(&[("q1", "*.#.*")], "a", "");
    check_topic(&[("q1", "*.#.*")], "a.b", "q1");
    check_topic(&[("q1", "a.*.#")], "a", "");
    check_topic(&[("q1", "#.#.a.#")], "a", "q1");
}

#[test]
fn topic_dedup_and_several_patterns() {
    let both = [("q1", "a.*"), ("q1", "*.b"), ("q1", "#"), ("q2", "a.b")];
    check_topic(&both, "a.b", "q1 q2");
    check_topic(&both, "a.c", "q1");
    check_topic(&both, "z", "q1");
    // Patterns that normalise to the same path stay distinct bindings.
    check_topic(&[("q1", "a.#"), ("q2", "a.#.#")], "a.b", "q1 q2");
}

#[test]
fn topic_long_keys() {
    let key_255 = "a".repeat(255);
    check_topic(&[("q1", &key_255)], &key_255, "q1");
    check_topic(&[("q1", "#")], &key_255, "q1");
    let dots = ".".repeat(254); // 255 empty words
    check_topic(&[("q1", "#")], &dots, "q1");
    check_topic(&[("q1", "#.*.#")], &dots, "q1");
    let many = vec!["a"; 128].join(".");
    check_topic(&[("q1", "a.#.a.#.a.#.a.#.a.#.a.#.b")], &many, "");
    check_topic(&[("q1", "a.#.a.#.a.#.a.#.a.#.a.#.a")], &many, "q1");
}

#[test]
fn headers_all_and_any() {
    check_headers(&[("q1", "a=s:1,b=s:2")], "a=s:1,b=s:2", "q1");
    check_headers(&[("q1", "a=s:1,b=s:2")], "a=s:1", "");
    check_headers(&[("q1", "a=s:1,b=s:2")], "a=s:1,b=s:2,c=s:3", "q1");
    check_headers(&[("q1", "x-match=s:all,a=s:1")], "a=s:1", "q1");
    check_headers(&[("q1", "x-match=s:any,a=s:1,b=s:2")], "b=s:2", "q1");
    check_headers(&[("q1", "x-match=s:any,a=s:1,b=s:2")], "b=s:3", "");
    check_headers(&[("q1", "x-match=s:any,a=s:1")], "", "");
    // An `all` binding with no conditions matches every message, even without headers.
    check_headers(&[("q1", "")], "", "q1");
    check_headers(&[("q1", "x-match=s:all")], "z=s:1", "q1");
    check_headers(&[("q1", "x-match=s:any")], "z=s:1", "");
}

#[test]
fn headers_x_arguments() {
    // all/any ignore x- arguments; the -with-x modes compare them (never x-match itself).
    check_headers(&[("q1", "x-match=s:all,x-foo=s:1,a=s:1")], "a=s:1", "q1");
    check_headers(&[("q1", "x-match=s:any,x-foo=s:1")], "x-foo=s:1", "");
    check_headers(
        &[("q1", "x-match=s:all-with-x,x-foo=s:1,a=s:1")],
        "a=s:1",
        "",
    );
    check_headers(
        &[("q1", "x-match=s:all-with-x,x-foo=s:1,a=s:1")],
        "a=s:1,x-foo=s:1",
        "q1",
    );
    check_headers(
        &[("q1", "x-match=s:any-with-x,x-foo=s:1,a=s:1")],
        "x-foo=s:1",
        "q1",
    );
    check_headers(&[("q1", "x-match=s:any-with-x,x-foo=s:1")], "x-foo=s:2", "");
    check_headers(&[("q1", "x-match=s:all-with-x")], "", "q1");
}

#[test]
fn headers_value_comparison() {
    // Void in a binding means "present, any value".
    check_headers(&[("q1", "a=v:")], "a=s:anything", "q1");
    check_headers(&[("q1", "a=v:")], "b=s:1", "");
    check_headers(&[("q1", "x-match=s:any,a=v:,b=s:2")], "a=i:0", "q1");
    // Integers compare by value across widths, and with floats of the same value.
    check_headers(&[("q1", "a=b:1")], "a=l:1", "q1");
    check_headers(&[("q1", "a=I:7")], "a=T:7", "q1");
    check_headers(&[("q1", "a=i:1")], "a=d:1.0", "q1");
    check_headers(&[("q1", "a=i:1")], "a=d:1.5", "");
    check_headers(&[("q1", "a=f:0.5")], "a=d:0.5", "q1");
    // Strings and numbers never equal; long strings equal byte arrays.
    check_headers(&[("q1", "a=s:1")], "a=i:1", "");
    check_headers(&[("q1", "a=s:ab")], "a=x:ab", "q1");
    check_headers(&[("q1", "a=t:true")], "a=b:1", "");
    check_headers(&[("q1", "a=t:true")], "a=t:true", "q1");
    check_headers(&[("q1", "a=D:2/100")], "a=D:2/100", "q1");
    check_headers(&[("q1", "a=D:2/100")], "a=D:1/10", "");
    // A header void only matches a binding void.
    check_headers(&[("q1", "a=s:1")], "a=v:", "");
}

#[test]
fn headers_duplicates_and_order() {
    // Argument order does not matter; the first header of a name is the one compared.
    check_headers(&[("q1", "b=s:2,a=s:1")], "b=s:2,a=s:1", "q1");
    check_headers(&[("q1", "a=s:1")], "a=s:1,a=s:2", "q1");
    check_headers(&[("q1", "a=s:2")], "a=s:1,a=s:2", "");
    // Several rules reaching one queue deliver once.
    check_headers(
        &[("q1", "a=s:1"), ("q1", "b=s:2"), ("q2", "a=s:1")],
        "a=s:1,b=s:2",
        "q1 q2",
    );
}

// ----- topology operations -----

fn topology() -> Topology<Arc<String>> {
    Topology::new("/")
}

fn add_queues(topology: &Topology<Arc<String>>, names: &[&str]) {
    for queue in names {
        assert!(topology.add_queue(name(queue), Arc::new(queue.to_string())));
    }
}

fn routed(topology: &Topology<Arc<String>>, exchange: &str, keys: &[&str]) -> Vec<String> {
    let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    let mut out = RouteBuf::new();
    topology.route(exchange.as_bytes(), &keys, None, &mut out);
    let mut got: Vec<String> = out.queues().iter().map(|q| q.to_string()).collect();
    let n = got.len();
    got.sort();
    got.dedup();
    assert_eq!(n, got.len(), "duplicate delivery");
    got
}

fn declare(topology: &Topology<Arc<String>>, exchange: &str, kind: ExchangeKind) {
    topology
        .declare_exchange(ExchangeDef::new(name(exchange), kind))
        .unwrap();
}

fn bind_q(topology: &Topology<Arc<String>>, exchange: &str, queue: &str, key: &str) -> bool {
    topology
        .bind(&Binding::queue(name(exchange), name(queue), name(key)))
        .unwrap()
}

fn bind_x(topology: &Topology<Arc<String>>, source: &str, destination: &str, key: &str) -> bool {
    topology
        .bind(&Binding::exchange(
            name(source),
            name(destination),
            name(key),
        ))
        .unwrap()
}

#[test]
fn default_exchange_routes_by_queue_name() {
    let t = topology();
    add_queues(&t, &["q1", "q2"]);
    assert_eq!(routed(&t, "", &["q1"]), ["q1"]);
    assert_eq!(routed(&t, "", &["q3"]), Vec::<String>::new());
    // CC keys add destinations; the same queue twice is delivered once.
    assert_eq!(routed(&t, "", &["q1", "q2", "q1"]), ["q1", "q2"]);
    let mut out = RouteBuf::new();
    assert_eq!(
        t.route(b"", &[b"zz"], None, &mut out),
        RouteOutcome::Unroutable
    );
}

#[test]
fn default_exchange_cannot_be_bound_or_deleted() {
    let t = topology();
    add_queues(&t, &["q1"]);
    let err = t
        .bind(&Binding::queue(name(""), name("q1"), name("q1")))
        .unwrap_err();
    assert_eq!(err.reply_code(), 403);
    let err = t
        .unbind(&Binding::queue(name(""), name("q1"), name("q1")))
        .unwrap_err();
    assert_eq!(err.reply_code(), 403);
    assert_eq!(t.delete_exchange(b"", false).unwrap_err().reply_code(), 403);
    let err = t
        .declare_exchange(ExchangeDef::new(name(""), ExchangeKind::Direct))
        .unwrap_err();
    assert_eq!(err.reply_code(), 403);
    assert_eq!(t.exchange(b"").unwrap().kind, ExchangeKind::Direct);
}

#[test]
fn predeclared_exchanges() {
    let t = topology();
    let mut names: Vec<String> = t
        .list_exchanges()
        .iter()
        .map(|x| x.name.to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "amq.direct",
            "amq.fanout",
            "amq.headers",
            "amq.match",
            "amq.topic"
        ]
    );
    for def in t.list_exchanges() {
        assert!(def.durable && def.is_predeclared());
    }
    assert_eq!(
        t.exchange(b"amq.match").unwrap().kind,
        ExchangeKind::Headers
    );
    // Redeclaring a predeclared exchange equivalently is fine; a new amq.* name is not.
    let def = ExchangeDef::new(name("amq.topic"), ExchangeKind::Topic).durable(true);
    assert_eq!(t.declare_exchange(def), Ok(Declared::Existed));
    let err = t
        .declare_exchange(ExchangeDef::new(name("amq.mine"), ExchangeKind::Topic))
        .unwrap_err();
    assert_eq!(err.reply_code(), 403);
    assert_eq!(
        err.text(),
        "exchange name 'amq.mine' contains reserved prefix 'amq.*'"
    );
    assert_eq!(
        t.delete_exchange(b"amq.direct", false)
            .unwrap_err()
            .reply_code(),
        403
    );
}

#[test]
fn redeclare_checks_equivalence() {
    let t = topology();
    let def = ExchangeDef::new(name("x"), ExchangeKind::Direct).durable(true);
    assert_eq!(t.declare_exchange(def.clone()), Ok(Declared::Created));
    assert_eq!(t.declare_exchange(def.clone()), Ok(Declared::Existed));
    let err = t
        .declare_exchange(ExchangeDef::new(name("x"), ExchangeKind::Topic).durable(true))
        .unwrap_err();
    assert_eq!(err.reply_code(), 406);
    assert_eq!(
        err.text(),
        "inequivalent arg 'type' for exchange 'x' in vhost '/': received 'topic' but current is 'direct'"
    );
    let err = t.declare_exchange(def.clone().durable(false)).unwrap_err();
    assert_eq!(
        err.text(),
        "inequivalent arg 'durable' for exchange 'x' in vhost '/': received 'false' but current is 'true'"
    );
    assert_eq!(
        t.declare_exchange(def.clone().auto_delete(true))
            .unwrap_err()
            .reply_code(),
        406
    );
    assert_eq!(
        t.declare_exchange(def.clone().internal(true))
            .unwrap_err()
            .reply_code(),
        406
    );
    // Other arguments are not compared; alternate-exchange is.
    assert_eq!(
        t.declare_exchange(def.clone().arguments(table("x-whatever=s:1"))),
        Ok(Declared::Existed)
    );
    let err = t
        .declare_exchange(def.arguments(table("alternate-exchange=s:ae")))
        .unwrap_err();
    assert_eq!(err.reply_code(), 406);
}

#[test]
fn alternate_exchange_argument_must_be_a_long_string() {
    let t = topology();
    let def = ExchangeDef::new(name("x"), ExchangeKind::Direct)
        .arguments(table("alternate-exchange=i:1"));
    let err = t.declare_exchange(def).unwrap_err();
    assert_eq!(err.reply_code(), 406);
    assert_eq!(
        err.text(),
        "invalid type 'signedint' for arg 'alternate-exchange' in exchange 'x' in vhost '/'"
    );
}

#[test]
fn unknown_exchange_type_is_a_connection_error() {
    let err = ExchangeKind::parse(b"x-consistent-hash").unwrap_err();
    assert_eq!(err.reply_code(), 503);
    assert!(err.is_connection_error());
    assert_eq!(ExchangeKind::parse(b"headers"), Ok(ExchangeKind::Headers));
}

#[test]
fn route_reports_missing_and_internal_exchanges() {
    let t = topology();
    let mut out = RouteBuf::<Arc<String>>::new();
    assert_eq!(
        t.route(b"nope", &[b"k"], None, &mut out),
        RouteOutcome::ExchangeNotFound
    );
    t.declare_exchange(ExchangeDef::new(name("i"), ExchangeKind::Fanout).internal(true))
        .unwrap();
    add_queues(&t, &["q1"]);
    bind_q(&t, "i", "q1", "");
    assert_eq!(
        t.route(b"i", &[b"k"], None, &mut out),
        RouteOutcome::InternalExchange
    );
    // Reached through an exchange-to-exchange binding, an internal exchange routes.
    declare(&t, "front", ExchangeKind::Fanout);
    bind_x(&t, "front", "i", "");
    assert_eq!(routed(&t, "front", &["k"]), ["q1"]);
}

#[test]
fn bind_twice_is_a_no_op_and_unbind_of_nothing_is_fine() {
    let t = topology();
    add_queues(&t, &["q1"]);
    declare(&t, "x", ExchangeKind::Direct);
    assert!(bind_q(&t, "x", "q1", "k"));
    assert!(!bind_q(&t, "x", "q1", "k"));
    assert_eq!(t.list_bindings().len(), 1);
    // Different arguments make a different binding (delivery still once).
    let with_args =
        Binding::queue(name("x"), name("q1"), name("k")).with_arguments(table("a=s:1,b=s:2"));
    assert_eq!(t.bind(&with_args), Ok(true));
    let reordered =
        Binding::queue(name("x"), name("q1"), name("k")).with_arguments(table("b=s:2,a=s:1"));
    assert_eq!(t.bind(&reordered), Ok(false));
    assert_eq!(t.list_bindings().len(), 2);
    assert_eq!(routed(&t, "x", &["k"]), ["q1"]);
    // Unbinding one leaves the other routing.
    let removed = t
        .unbind(&Binding::queue(name("x"), name("q1"), name("k")))
        .unwrap();
    assert_eq!(removed.bindings.len(), 1);
    assert_eq!(routed(&t, "x", &["k"]), ["q1"]);
    let removed = t.unbind(&reordered).unwrap();
    assert_eq!(removed.bindings.len(), 1);
    assert_eq!(routed(&t, "x", &["k"]), Vec::<String>::new());
    // Not bound any more: not an error.
    let removed = t.unbind(&reordered).unwrap();
    assert!(removed.bindings.is_empty());
}

#[test]
fn bind_and_unbind_report_missing_ends() {
    let t = topology();
    add_queues(&t, &["q1"]);
    declare(&t, "x", ExchangeKind::Direct);
    let err = t
        .bind(&Binding::queue(name("nx"), name("q1"), name("k")))
        .unwrap_err();
    assert_eq!(
        (err.reply_code(), err.text()),
        (404, "no exchange 'nx' in vhost '/'")
    );
    let err = t
        .bind(&Binding::queue(name("x"), name("nq"), name("k")))
        .unwrap_err();
    assert_eq!(
        (err.reply_code(), err.text()),
        (404, "no queue 'nq' in vhost '/'")
    );
    // The source is reported first when both are missing.
    let err = t
        .bind(&Binding::queue(name("nx"), name("nq"), name("k")))
        .unwrap_err();
    assert_eq!(err.text(), "no exchange 'nx' in vhost '/'");
    let err = t
        .bind(&Binding::exchange(name("x"), name("ny"), name("k")))
        .unwrap_err();
    assert_eq!(err.text(), "no exchange 'ny' in vhost '/'");
    // Unbind with a missing end is not an error either (RabbitMQ 3.10 answers unbind-ok).
    for binding in [
        Binding::queue(name("x"), name("nq"), name("k")),
        Binding::queue(name("nx"), name("q1"), name("k")),
        Binding::exchange(name("x"), name("ny"), name("k")),
    ] {
        assert_eq!(t.unbind(&binding), Ok(Default::default()));
    }
}

#[test]
fn headers_binding_with_bad_x_match_is_refused() {
    let t = topology();
    add_queues(&t, &["q1"]);
    declare(&t, "h", ExchangeKind::Headers);
    let bad =
        Binding::queue(name("h"), name("q1"), name("")).with_arguments(table("x-match=s:some"));
    let err = t.bind(&bad).unwrap_err();
    assert_eq!(err.reply_code(), 406);
    assert_eq!(
        err.text(),
        "Invalid x-match field value <<\"some\">>; expected all, any, all-with-x, or any-with-x"
    );
    let bad = Binding::queue(name("h"), name("q1"), name("")).with_arguments(table("x-match=i:1"));
    assert_eq!(t.bind(&bad).unwrap_err().reply_code(), 406);
    // Other exchange types do not look at x-match.
    declare(&t, "d", ExchangeKind::Direct);
    let ok =
        Binding::queue(name("d"), name("q1"), name("")).with_arguments(table("x-match=s:some"));
    assert_eq!(t.bind(&ok), Ok(true));
}

#[test]
fn exchange_to_exchange_is_transitive_and_deduplicated() {
    let t = topology();
    add_queues(&t, &["q1", "q2", "q3"]);
    declare(&t, "a", ExchangeKind::Fanout);
    declare(&t, "b", ExchangeKind::Direct);
    declare(&t, "c", ExchangeKind::Topic);
    bind_x(&t, "a", "b", "");
    bind_x(&t, "b", "c", "k.1");
    bind_q(&t, "c", "q1", "k.*");
    bind_q(&t, "b", "q2", "k.1");
    // q1 is reached from a -> b -> c and also directly from a.
    bind_q(&t, "a", "q1", "");
    assert_eq!(routed(&t, "a", &["k.1"]), ["q1", "q2"]);
    assert_eq!(routed(&t, "a", &["k.2"]), ["q1"]);
    assert_eq!(routed(&t, "b", &["k.1"]), ["q1", "q2"]);
    // Several routing keys (CC) still deliver each queue once; every key travels on to the
    // next exchange, so q3 matches k.2 at c although b reached c through k.1.
    bind_q(&t, "c", "q3", "k.2");
    assert_eq!(routed(&t, "b", &["k.1", "k.2", "k.1"]), ["q1", "q2", "q3"]);
}

#[test]
fn exchange_cycles_end() {
    let t = topology();
    add_queues(&t, &["q1"]);
    declare(&t, "a", ExchangeKind::Fanout);
    declare(&t, "b", ExchangeKind::Fanout);
    declare(&t, "c", ExchangeKind::Fanout);
    bind_x(&t, "a", "b", "");
    bind_x(&t, "b", "c", "");
    bind_x(&t, "c", "a", "");
    bind_x(&t, "a", "a", "");
    assert_eq!(routed(&t, "a", &["k"]), Vec::<String>::new());
    bind_q(&t, "c", "q1", "");
    assert_eq!(routed(&t, "a", &["k"]), ["q1"]);
    assert_eq!(routed(&t, "b", &["k"]), ["q1"]);
}

#[test]
fn long_exchange_chains_route_and_delete() {
    let t = topology();
    add_queues(&t, &["end"]);
    let n = 2000;
    for i in 0..n {
        t.declare_exchange(
            ExchangeDef::new(name(&format!("x{i}")), ExchangeKind::Fanout).auto_delete(true),
        )
        .unwrap();
    }
    for i in 0..n - 1 {
        bind_x(&t, &format!("x{i}"), &format!("x{}", i + 1), "");
    }
    bind_q(&t, &format!("x{}", n - 1), "end", "");
    assert_eq!(routed(&t, "x0", &["k"]), ["end"]);
    // Deleting the queue cascades auto-delete through the whole chain.
    let removed = t.remove_queue(b"end").unwrap();
    assert_eq!(removed.exchanges.len(), n);
    assert_eq!(t.list_exchanges().len(), 5);
}

#[test]
fn alternate_exchanges() {
    let t = topology();
    add_queues(&t, &["main", "ae-q", "ae2-q"]);
    let with_ae = |n: &str, kind, ae: &str| {
        t.declare_exchange(
            ExchangeDef::new(name(n), kind).arguments(table(&format!("alternate-exchange=s:{ae}"))),
        )
        .unwrap();
    };
    with_ae("x", ExchangeKind::Direct, "ae");
    with_ae("ae", ExchangeKind::Direct, "ae2");
    declare(&t, "ae2", ExchangeKind::Fanout);
    bind_q(&t, "x", "main", "k");
    bind_q(&t, "ae", "ae-q", "special");
    bind_q(&t, "ae2", "ae2-q", "");
    assert_eq!(routed(&t, "x", &["k"]), ["main"]);
    assert_eq!(routed(&t, "x", &["special"]), ["ae-q"]);
    // Transitively: x misses, ae misses, ae2 takes it.
    assert_eq!(routed(&t, "x", &["other"]), ["ae2-q"]);
    // An alternate exchange that does not exist, or that points back, ends quietly.
    with_ae("loop1", ExchangeKind::Direct, "loop2");
    with_ae("loop2", ExchangeKind::Direct, "loop1");
    assert_eq!(routed(&t, "loop1", &["k"]), Vec::<String>::new());
    with_ae("dangling", ExchangeKind::Direct, "missing");
    let mut out = RouteBuf::new();
    assert_eq!(
        t.route(b"dangling", &[b"k"], None, &mut out),
        RouteOutcome::Unroutable
    );
}

#[test]
fn alternate_exchange_is_per_exchange() {
    // As in RabbitMQ: x routes to exchange y (so x's AE is not used), y matches nothing and
    // has its own AE.
    let t = topology();
    add_queues(&t, &["x-ae-q", "y-ae-q"]);
    let with_ae = |n: &str, ae: &str| {
        t.declare_exchange(
            ExchangeDef::new(name(n), ExchangeKind::Direct)
                .arguments(table(&format!("alternate-exchange=s:{ae}"))),
        )
        .unwrap();
    };
    with_ae("x", "x-ae");
    with_ae("y", "y-ae");
    declare(&t, "x-ae", ExchangeKind::Fanout);
    declare(&t, "y-ae", ExchangeKind::Fanout);
    bind_q(&t, "x-ae", "x-ae-q", "");
    bind_q(&t, "y-ae", "y-ae-q", "");
    bind_x(&t, "x", "y", "k");
    assert_eq!(routed(&t, "x", &["k"]), ["y-ae-q"]);
    assert_eq!(routed(&t, "x", &["nope"]), ["x-ae-q"]);
}

#[test]
fn auto_delete_exchanges() {
    let t = topology();
    add_queues(&t, &["q1", "q2"]);
    let auto = ExchangeDef::new(name("ad"), ExchangeKind::Direct).auto_delete(true);
    t.declare_exchange(auto.clone()).unwrap();
    // Created unbound: stays.
    assert!(t.exchange(b"ad").is_some());
    bind_q(&t, "ad", "q1", "a");
    bind_q(&t, "ad", "q2", "b");
    let removed = t
        .unbind(&Binding::queue(name("ad"), name("q1"), name("a")))
        .unwrap();
    assert!(removed.exchanges.is_empty());
    // Last binding as a source goes through queue deletion: the exchange goes too.
    let removed = t.remove_queue(b"q2").unwrap();
    assert_eq!(removed.bindings.len(), 1);
    assert_eq!(removed.exchanges, vec![auto.clone()]);
    assert!(t.exchange(b"ad").is_none());
    // And through unbind.
    t.declare_exchange(auto).unwrap();
    bind_q(&t, "ad", "q1", "a");
    let removed = t
        .unbind(&Binding::queue(name("ad"), name("q1"), name("a")))
        .unwrap();
    assert_eq!(removed.exchanges.len(), 1);
    assert!(t.exchange(b"ad").is_none());
    // Bindings *to* an auto-delete exchange do not keep it.
    let auto_dest = ExchangeDef::new(name("dest"), ExchangeKind::Fanout).auto_delete(true);
    t.declare_exchange(auto_dest).unwrap();
    declare(&t, "src", ExchangeKind::Fanout);
    bind_x(&t, "src", "dest", "");
    bind_q(&t, "dest", "q1", "");
    let removed = t
        .unbind(&Binding::queue(name("dest"), name("q1"), name("")))
        .unwrap();
    assert_eq!(removed.exchanges.len(), 1);
    assert!(t.list_bindings().is_empty());
}

#[test]
fn delete_exchange() {
    let t = topology();
    add_queues(&t, &["q1"]);
    declare(&t, "x", ExchangeKind::Fanout);
    declare(&t, "up", ExchangeKind::Fanout);
    bind_q(&t, "x", "q1", "");
    bind_x(&t, "up", "x", "");
    assert!(t.exchange_in_use(b"x"));
    let err = t.delete_exchange(b"x", true).unwrap_err();
    assert_eq!(
        (err.reply_code(), err.text()),
        (406, "exchange 'x' in vhost '/' in use")
    );
    // Being a destination is not "in use".
    assert!(t.exchange_in_use(b"up"));
    let removed = t.delete_exchange(b"x", false).unwrap();
    assert_eq!(removed.exchanges.len(), 1);
    assert_eq!(removed.bindings.len(), 2);
    assert!(t.list_bindings().is_empty());
    assert!(t.queue_bindings(b"q1").is_empty());
    assert!(!t.exchange_in_use(b"up"));
    // Deleting what is not there is fine (RabbitMQ answers delete-ok).
    assert_eq!(t.delete_exchange(b"x", false), Ok(Default::default()));
    // Unused: if_unused deletes.
    declare(&t, "free", ExchangeKind::Topic);
    assert_eq!(t.delete_exchange(b"free", true).unwrap().exchanges.len(), 1);
}

#[test]
fn queues_and_their_bindings() {
    let t = topology();
    add_queues(&t, &["q1"]);
    assert!(!t.add_queue(name("q1"), Arc::new("other".into())));
    assert_eq!(t.queue(b"q1").unwrap().as_str(), "q1");
    declare(&t, "x", ExchangeKind::Direct);
    bind_q(&t, "x", "q1", "a");
    bind_q(&t, "amq.topic", "q1", "b.#");
    let mut bindings = t.queue_bindings(b"q1");
    bindings.sort_by(|a, b| a.source.cmp(&b.source));
    assert_eq!(bindings.len(), 2);
    assert_eq!(bindings[0].source.as_bytes(), b"amq.topic");
    assert_eq!(bindings[0].destination, Destination::Queue(name("q1")));
    assert_eq!(bindings[1].routing_key.as_bytes(), b"a");
    assert_eq!(t.remove_queue(b"q1").unwrap().bindings.len(), 2);
    assert!(t.remove_queue(b"q1").is_none());
    assert_eq!(routed(&t, "x", &["a"]), Vec::<String>::new());
    assert_eq!(routed(&t, "", &["q1"]), Vec::<String>::new());
    // A queue of the same name declared again starts with no bindings.
    add_queues(&t, &["q1"]);
    assert_eq!(routed(&t, "x", &["a"]), Vec::<String>::new());
    assert_eq!(routed(&t, "", &["q1"]), ["q1"]);
}

#[test]
fn fanout_with_many_queues_unbinds_in_any_order() {
    let t = topology();
    declare(&t, "f", ExchangeKind::Fanout);
    let names: Vec<String> = (0..100).map(|i| format!("q{i}")).collect();
    for queue in &names {
        add_queues(&t, &[queue]);
        bind_q(&t, "f", queue, "");
    }
    assert_eq!(routed(&t, "f", &["k"]).len(), 100);
    for queue in names.iter().step_by(3) {
        t.unbind(&Binding::queue(name("f"), name(queue), name("")))
            .unwrap();
    }
    let mut want: Vec<String> = names
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(_, q)| q.clone())
        .collect();
    want.sort();
    assert_eq!(routed(&t, "f", &["k"]), want);
}

#[test]
fn route_buf_is_reused_between_messages() {
    let t = topology();
    add_queues(&t, &["q1", "q2"]);
    declare(&t, "f", ExchangeKind::Fanout);
    bind_q(&t, "f", "q1", "");
    bind_q(&t, "f", "q2", "");
    let mut out = RouteBuf::new();
    assert_eq!(
        t.route(b"f", &[b""], None, &mut out),
        RouteOutcome::Routed(2)
    );
    assert_eq!(
        t.route(b"", &[b"q1"], None, &mut out),
        RouteOutcome::Routed(1)
    );
    assert_eq!(out.queues().len(), 1);
    let drained: Vec<_> = out.drain().collect();
    assert_eq!(drained.len(), 1);
    assert!(out.is_empty());
}

#[test]
fn stored_names_do_not_pin_network_buffers() {
    // A name decoded from a frame is a slice of the read buffer; the topology keeps a copy.
    let frame = Bytes::from(vec![b'q'; 4096]);
    let queue = ShortString::from_bytes(frame.slice(0..2)).unwrap();
    let t = topology();
    t.add_queue(queue.clone(), Arc::new("qq".to_string()));
    declare(&t, "x", ExchangeKind::Direct);
    t.bind(&Binding::queue(
        name("x"),
        queue,
        ShortString::from_bytes(frame.slice(2..5)).unwrap(),
    ))
    .unwrap();
    let binding = &t.list_bindings()[0];
    let start = frame.as_ptr() as usize;
    let inside = |b: &ShortString| {
        let p = b.as_bytes().as_ptr() as usize;
        p >= start && p < start + frame.len()
    };
    assert!(!inside(&binding.routing_key));
    assert!(!inside(binding.destination.name()));
}

#[test]
fn counts_follow_every_change() {
    let t = topology();
    assert_eq!(
        (t.exchange_count(), t.queue_count(), t.binding_count()),
        (5, 0, 0)
    );
    add_queues(&t, &["q1", "q2"]);
    declare(&t, "x", ExchangeKind::Topic);
    declare(&t, "y", ExchangeKind::Fanout);
    bind_q(&t, "x", "q1", "a.*");
    bind_q(&t, "x", "q1", "a.*");
    bind_q(&t, "x", "q2", "a.*");
    bind_q(&t, "y", "q1", "");
    bind_x(&t, "x", "y", "#");
    let with_args =
        Binding::queue(name("x"), name("q1"), name("a.*")).with_arguments(table("k=s:v"));
    t.bind(&with_args).unwrap();
    assert_eq!(
        (t.exchange_count(), t.queue_count(), t.binding_count()),
        (7, 2, 5)
    );
    t.unbind(&with_args).unwrap();
    assert_eq!(t.binding_count(), 4);
    assert_eq!(t.remove_queue(b"q1").unwrap().bindings.len(), 2);
    assert_eq!(t.binding_count(), 2);
    assert_eq!(t.delete_exchange(b"y", false).unwrap().bindings.len(), 1);
    assert_eq!(
        (t.exchange_count(), t.queue_count(), t.binding_count()),
        (6, 1, 1)
    );
    assert_eq!(t.list_bindings().len(), t.binding_count());
}

#[test]
fn topology_and_route_buf_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Topology<Arc<String>>>();
    send::<RouteBuf<Arc<String>>>();
}

#[test]
fn passive_declare_and_error_texts() {
    let t = topology();
    let err = t.declare_exchange_passive(b"").unwrap_err();
    assert_eq!(
        (err.reply_code(), err.text()),
        (403, "operation not permitted on the default exchange")
    );
    assert_eq!(
        t.declare_exchange_passive(b"amq.direct").unwrap().kind,
        ExchangeKind::Direct
    );
    let err = t.declare_exchange_passive(b"router.missing").unwrap_err();
    assert_eq!(
        (err.reply_code(), err.text()),
        (404, "no exchange 'router.missing' in vhost '/'")
    );
    let err = warren_router::RouterError::internal_exchange("/", b"router.int");
    assert_eq!(
        (err.reply_code(), err.text()),
        (
            403,
            "cannot publish to internal exchange 'router.int' in vhost '/'"
        )
    );
    // exchange.bind to the default exchange as destination is refused too.
    declare(&t, "e", ExchangeKind::Fanout);
    let err = t
        .bind(&Binding::exchange(name("e"), name(""), name("")))
        .unwrap_err();
    assert_eq!(err.reply_code(), 403);
}
