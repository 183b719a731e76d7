//! Queue and consume arguments, per-message `expiration` and redeclares: every case below was
//! tried against a real RabbitMQ 3.10.8, and its reply code and text recorded here verbatim
//! (the queue was named `qargs-q` there too). Warren must answer the same.
//!
//! Deliberate differences (RabbitMQ 3.10 crashes with 541 on a bad `x-queue-master-locator` or
//! `x-max-age`; Warren has no streams) are tested at the end and listed in
//! `docs/compatibility.md`.

// Helpers outside #[test] functions unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lapin::options::*;
use lapin::types::{AMQPValue, DecimalValue, FieldArray, FieldTable};
use warren_tests::{RawClient, TestBroker, amqp_error, within};

const Q: &str = "qargs-q";

fn table(args: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in args {
        table.insert((*key).into(), value.clone());
    }
    table
}

fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

fn int(n: i32) -> AMQPValue {
    AMQPValue::LongInt(n)
}

fn long(n: i64) -> AMQPValue {
    AMQPValue::LongLongInt(n)
}

/// Flags of a declare.
#[derive(Clone, Copy, Default)]
struct Flags {
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
}

const PLAIN: Flags = Flags {
    durable: false,
    exclusive: false,
    auto_delete: false,
};
const DURABLE: Flags = Flags {
    durable: true,
    exclusive: false,
    auto_delete: false,
};

/// Declares `Q` on a fresh channel; `Ok` or the channel-close code and text. The queue is
/// deleted afterwards so the next case starts clean.
async fn declare(conn: &lapin::Connection, flags: Flags, args: FieldTable) -> Result<(), String> {
    let channel = conn.create_channel().await.unwrap();
    let outcome = channel
        .queue_declare(
            Q.into(),
            QueueDeclareOptions {
                durable: flags.durable,
                exclusive: flags.exclusive,
                auto_delete: flags.auto_delete,
                ..Default::default()
            },
            args,
        )
        .await;
    let cleanup = conn.create_channel().await.unwrap();
    cleanup
        .queue_delete(Q.into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    match outcome {
        Ok(_) => Ok(()),
        Err(e) => {
            let (code, text) = amqp_error(&e).expect("a channel close");
            Err(format!("{code} {text}"))
        }
    }
}

/// RabbitMQ 3.10.8's answers to `queue.declare` of `qargs-q`, recorded.
fn declare_cases() -> Vec<(&'static str, Flags, FieldTable, &'static str)> {
    vec![
        (
            "ttl -1",
            PLAIN,
            table(&[("x-message-ttl", int(-1))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'qargs-q' in vhost '/': {value_negative,-1}",
        ),
        ("ttl 0", PLAIN, table(&[("x-message-ttl", int(0))]), "ok"),
        (
            "ttl string",
            PLAIN,
            table(&[("x-message-ttl", long_str("abc"))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'qargs-q' in vhost '/': \"expected integer, got longstr\"",
        ),
        (
            "ttl bool",
            PLAIN,
            table(&[("x-message-ttl", AMQPValue::Boolean(true))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'qargs-q' in vhost '/': \"expected integer, got bool\"",
        ),
        (
            "ttl double",
            PLAIN,
            table(&[("x-message-ttl", AMQPValue::Double(1.5))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'qargs-q' in vhost '/': \"expected integer, got double\"",
        ),
        (
            "ttl float",
            PLAIN,
            table(&[("x-message-ttl", AMQPValue::Float(2.0))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'qargs-q' in vhost '/': \"expected integer, got float\"",
        ),
        (
            "ttl decimal",
            PLAIN,
            table(&[(
                "x-message-ttl",
                AMQPValue::DecimalValue(DecimalValue {
                    scale: 1,
                    value: 15,
                }),
            )]),
            "406 PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'qargs-q' in vhost '/': \"expected integer, got decimal\"",
        ),
        (
            "ttl too large",
            PLAIN,
            table(&[("x-message-ttl", long(4_294_967_295_000))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'qargs-q' in vhost '/': {value_too_large,4294967295000}",
        ),
        (
            "ttl ten years",
            PLAIN,
            table(&[("x-message-ttl", long(315_360_000_000))]),
            "ok",
        ),
        (
            "ttl byte -1",
            PLAIN,
            table(&[("x-message-ttl", AMQPValue::ShortShortInt(-1))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'qargs-q' in vhost '/': {value_negative,-1}",
        ),
        (
            "expires 0",
            PLAIN,
            table(&[("x-expires", int(0))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-expires' for queue 'qargs-q' in vhost '/': {value_zero,0}",
        ),
        (
            "expires -1",
            PLAIN,
            table(&[("x-expires", AMQPValue::ShortInt(-1))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-expires' for queue 'qargs-q' in vhost '/': {value_negative,-1}",
        ),
        (
            "expires timestamp",
            PLAIN,
            table(&[("x-expires", AMQPValue::Timestamp(5))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-expires' for queue 'qargs-q' in vhost '/': \"expected integer, got timestamp\"",
        ),
        (
            "expires too large",
            PLAIN,
            table(&[("x-expires", long(315_360_000_001))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-expires' for queue 'qargs-q' in vhost '/': {value_too_large,315360000001}",
        ),
        (
            "max-length -1",
            PLAIN,
            table(&[("x-max-length", long(-1))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-max-length' for queue 'qargs-q' in vhost '/': {value_negative,-1}",
        ),
        (
            "max-length void",
            PLAIN,
            table(&[("x-max-length", AMQPValue::Void)]),
            "406 PRECONDITION_FAILED - invalid arg 'x-max-length' for queue 'qargs-q' in vhost '/': \"expected integer, got void\"",
        ),
        (
            "max-length 2^40",
            PLAIN,
            table(&[("x-max-length", long(1 << 40))]),
            "ok",
        ),
        (
            "max-length-bytes table",
            PLAIN,
            table(&[(
                "x-max-length-bytes",
                AMQPValue::FieldTable(table(&[("a", int(1))])),
            )]),
            "406 PRECONDITION_FAILED - invalid arg 'x-max-length-bytes' for queue 'qargs-q' in vhost '/': \"expected integer, got table\"",
        ),
        (
            "max-length-bytes array",
            PLAIN,
            table(&[(
                "x-max-length-bytes",
                AMQPValue::FieldArray(FieldArray::from(vec![int(1)])),
            )]),
            "406 PRECONDITION_FAILED - invalid arg 'x-max-length-bytes' for queue 'qargs-q' in vhost '/': \"expected integer, got array\"",
        ),
        (
            "max-priority 256",
            PLAIN,
            table(&[("x-max-priority", AMQPValue::ShortUInt(256))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'qargs-q' in vhost '/': {max_value_exceeded,256}",
        ),
        (
            "max-priority 255",
            PLAIN,
            table(&[("x-max-priority", AMQPValue::ShortShortUInt(255))]),
            "ok",
        ),
        (
            "max-priority binary",
            PLAIN,
            table(&[("x-max-priority", AMQPValue::ByteArray(b"x".to_vec().into()))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'qargs-q' in vhost '/': \"expected integer, got binary\"",
        ),
        (
            "overflow bogus",
            PLAIN,
            table(&[("x-overflow", long_str("bogus"))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-overflow' for queue 'qargs-q' in vhost '/': invalid_overflow",
        ),
        (
            "overflow int",
            PLAIN,
            table(&[("x-overflow", int(1))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-overflow' for queue 'qargs-q' in vhost '/': {unacceptable_type,signedint}",
        ),
        (
            "overflow reject-publish-dlx",
            PLAIN,
            table(&[("x-overflow", long_str("reject-publish-dlx"))]),
            "ok",
        ),
        (
            "queue-mode bogus",
            PLAIN,
            table(&[("x-queue-mode", long_str("bogus"))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-queue-mode' for queue 'qargs-q' in vhost '/': \"unsupported queue mode 'bogus'\"",
        ),
        (
            "queue-mode lazy",
            PLAIN,
            table(&[("x-queue-mode", long_str("lazy"))]),
            "ok",
        ),
        (
            "queue-type bogus",
            PLAIN,
            table(&[("x-queue-type", long_str("bogus"))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue 'qargs-q' in vhost '/': \"unsupported queue type 'bogus'\"",
        ),
        (
            "queue-type bool",
            PLAIN,
            table(&[("x-queue-type", AMQPValue::Boolean(true))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue 'qargs-q' in vhost '/': {unacceptable_type,bool}",
        ),
        (
            "queue-type classic",
            PLAIN,
            table(&[("x-queue-type", long_str("classic"))]),
            "ok",
        ),
        (
            "quorum non-durable",
            PLAIN,
            table(&[("x-queue-type", long_str("quorum"))]),
            "406 PRECONDITION_FAILED - invalid property 'non-durable' for queue 'qargs-q' in vhost '/'",
        ),
        (
            "quorum exclusive",
            Flags {
                exclusive: true,
                ..DURABLE
            },
            table(&[("x-queue-type", long_str("quorum"))]),
            "406 PRECONDITION_FAILED - invalid property 'exclusive-owner' for queue 'qargs-q' in vhost '/'",
        ),
        (
            "quorum auto-delete, exclusive, non-durable",
            Flags {
                durable: false,
                exclusive: true,
                auto_delete: true,
            },
            table(&[("x-queue-type", long_str("quorum"))]),
            "406 PRECONDITION_FAILED - invalid property 'auto-delete' for queue 'qargs-q' in vhost '/'",
        ),
        (
            "quorum durable",
            DURABLE,
            table(&[("x-queue-type", long_str("quorum"))]),
            "ok",
        ),
        (
            "quorum non-durable, bad ttl: the ttl first",
            PLAIN,
            table(&[
                ("x-queue-type", long_str("quorum")),
                ("x-message-ttl", int(-1)),
            ]),
            "406 PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'qargs-q' in vhost '/': {value_negative,-1}",
        ),
        (
            "single-active-consumer string",
            PLAIN,
            table(&[("x-single-active-consumer", long_str("x"))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-single-active-consumer' for queue 'qargs-q' in vhost '/': {unacceptable_type,longstr}",
        ),
        (
            "dlx int",
            PLAIN,
            table(&[("x-dead-letter-exchange", int(1))]),
            "406 PRECONDITION_FAILED - invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue 'qargs-q' in vhost '/'",
        ),
        (
            "dlx missing exchange",
            PLAIN,
            table(&[("x-dead-letter-exchange", long_str("qargs-missing"))]),
            "ok",
        ),
        (
            "dlrk without dlx",
            PLAIN,
            table(&[("x-dead-letter-routing-key", long_str("k"))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-dead-letter-routing-key' for queue 'qargs-q' in vhost '/': routing_key_but_no_dlx_defined",
        ),
        (
            "dlrk int",
            PLAIN,
            table(&[("x-dead-letter-routing-key", int(1))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-dead-letter-routing-key' for queue 'qargs-q' in vhost '/': {unacceptable_type,signedint}",
        ),
        (
            "dlrk with dlx",
            PLAIN,
            table(&[
                ("x-dead-letter-routing-key", long_str("k")),
                ("x-dead-letter-exchange", long_str("e")),
            ]),
            "ok",
        ),
        (
            "classic delivery-limit",
            PLAIN,
            table(&[("x-delivery-limit", int(1))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-delivery-limit' for queue 'qargs-q' in vhost '/' of queue type rabbit_classic_queue",
        ),
        (
            "classic max-in-memory-length",
            PLAIN,
            table(&[("x-max-in-memory-length", int(1))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-max-in-memory-length' for queue 'qargs-q' in vhost '/' of queue type rabbit_classic_queue",
        ),
        (
            "classic leader-locator",
            PLAIN,
            table(&[("x-queue-leader-locator", long_str("client-local"))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-queue-leader-locator' for queue 'qargs-q' in vhost '/' of queue type rabbit_classic_queue",
        ),
        (
            "classic max-age",
            PLAIN,
            table(&[("x-max-age", long_str("1D"))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-max-age' for queue 'qargs-q' in vhost '/' of queue type rabbit_classic_queue",
        ),
        (
            "classic unknown argument",
            PLAIN,
            table(&[("x-foo", long_str("bar")), ("x-ha-policy", int(1))]),
            "ok",
        ),
        (
            "classic master-locator",
            PLAIN,
            table(&[("x-queue-master-locator", long_str("min-masters"))]),
            "ok",
        ),
        (
            "quorum max-priority",
            DURABLE,
            table(&[
                ("x-queue-type", long_str("quorum")),
                ("x-max-priority", int(10)),
            ]),
            "406 PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'qargs-q' in vhost '/' of queue type rabbit_quorum_queue",
        ),
        (
            "quorum max-priority -1: not checked, refused",
            DURABLE,
            table(&[
                ("x-queue-type", long_str("quorum")),
                ("x-max-priority", int(-1)),
            ]),
            "406 PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'qargs-q' in vhost '/' of queue type rabbit_quorum_queue",
        ),
        (
            "quorum queue-mode",
            DURABLE,
            table(&[
                ("x-queue-type", long_str("quorum")),
                ("x-queue-mode", long_str("lazy")),
            ]),
            "406 PRECONDITION_FAILED - invalid arg 'x-queue-mode' for queue 'qargs-q' in vhost '/' of queue type rabbit_quorum_queue",
        ),
        (
            "quorum master-locator",
            DURABLE,
            table(&[
                ("x-queue-type", long_str("quorum")),
                ("x-queue-master-locator", long_str("client-local")),
            ]),
            "406 PRECONDITION_FAILED - invalid arg 'x-queue-master-locator' for queue 'qargs-q' in vhost '/' of queue type rabbit_quorum_queue",
        ),
        (
            "quorum dead-letter-strategy bad",
            DURABLE,
            table(&[
                ("x-queue-type", long_str("quorum")),
                ("x-dead-letter-strategy", long_str("bad")),
            ]),
            "406 PRECONDITION_FAILED - invalid arg 'x-dead-letter-strategy' for queue 'qargs-q' in vhost '/': invalid_dlx_strategy",
        ),
        (
            "quorum dead-letter-strategy at-least-once",
            DURABLE,
            table(&[
                ("x-queue-type", long_str("quorum")),
                ("x-dead-letter-strategy", long_str("at-least-once")),
            ]),
            "ok",
        ),
        (
            "quorum initial group size 0",
            DURABLE,
            table(&[
                ("x-queue-type", long_str("quorum")),
                ("x-quorum-initial-group-size", int(0)),
            ]),
            "406 PRECONDITION_FAILED - invalid arg 'x-quorum-initial-group-size' for queue 'qargs-q' in vhost '/': {value_zero,0}",
        ),
        (
            "quorum leader-locator bad",
            DURABLE,
            table(&[
                ("x-queue-type", long_str("quorum")),
                ("x-queue-leader-locator", long_str("bad")),
            ]),
            "406 PRECONDITION_FAILED - invalid arg 'x-queue-leader-locator' for queue 'qargs-q' in vhost '/': invalid_queue_locator_arg",
        ),
        (
            "quorum leader-locator balanced",
            DURABLE,
            table(&[
                ("x-queue-type", long_str("quorum")),
                ("x-queue-leader-locator", long_str("balanced")),
            ]),
            "ok",
        ),
        (
            "quorum in-memory-length -1",
            DURABLE,
            table(&[
                ("x-queue-type", long_str("quorum")),
                ("x-max-in-memory-length", int(-1)),
            ]),
            "406 PRECONDITION_FAILED - invalid arg 'x-max-in-memory-length' for queue 'qargs-q' in vhost '/': {value_negative,-1}",
        ),
        (
            "quorum delivery-limit string: not checked",
            DURABLE,
            table(&[
                ("x-queue-type", long_str("quorum")),
                ("x-delivery-limit", long_str("abc")),
            ]),
            "ok",
        ),
        (
            "quorum reject-publish-dlx",
            DURABLE,
            table(&[
                ("x-queue-type", long_str("quorum")),
                ("x-overflow", long_str("reject-publish-dlx")),
            ]),
            "ok",
        ),
        (
            "order: x-expires before x-message-ttl",
            PLAIN,
            table(&[("x-message-ttl", int(-1)), ("x-expires", int(-1))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-expires' for queue 'qargs-q' in vhost '/': {value_negative,-1}",
        ),
        (
            "order: x-queue-type first",
            PLAIN,
            table(&[("x-queue-type", long_str("bad")), ("x-expires", int(-1))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue 'qargs-q' in vhost '/': \"unsupported queue type 'bad'\"",
        ),
        (
            "order: the dead-letter exchange's type before all",
            PLAIN,
            table(&[("x-dead-letter-exchange", int(1)), ("x-expires", int(0))]),
            "406 PRECONDITION_FAILED - invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue 'qargs-q' in vhost '/'",
        ),
        (
            "order: values before unsupported arguments",
            PLAIN,
            table(&[("x-delivery-limit", int(1)), ("x-message-ttl", int(-1))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'qargs-q' in vhost '/': {value_negative,-1}",
        ),
        (
            "order: x-max-length before x-overflow",
            PLAIN,
            table(&[("x-overflow", long_str("bad")), ("x-max-length", int(-1))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-max-length' for queue 'qargs-q' in vhost '/': {value_negative,-1}",
        ),
    ]
}

#[tokio::test]
async fn queue_declare_arguments_answer_as_rabbitmq_3_10() {
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    let mut wrong = Vec::new();
    for (name, flags, args, expected) in declare_cases() {
        let got = within(5, declare(&conn, flags, args)).await;
        let got = got.err().unwrap_or_else(|| "ok".to_owned());
        if got != expected {
            wrong.push(format!("{name}:\n  expected {expected}\n  got      {got}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Declares `Q` with `first`, then again with `second` on a fresh channel.
async fn redeclare(
    conn: &lapin::Connection,
    (first_flags, first): (Flags, FieldTable),
    (second_flags, second): (Flags, FieldTable),
) -> String {
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_declare(
            Q.into(),
            QueueDeclareOptions {
                durable: first_flags.durable,
                exclusive: first_flags.exclusive,
                auto_delete: first_flags.auto_delete,
                ..Default::default()
            },
            first,
        )
        .await
        .unwrap();
    let outcome = declare(conn, second_flags, second).await;
    outcome.err().unwrap_or_else(|| "ok".to_owned())
}

#[tokio::test]
async fn redeclare_with_other_arguments_answers_as_rabbitmq_3_10() {
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    let quorum = |extra: &[(&str, AMQPValue)]| {
        let mut args = vec![("x-queue-type", long_str("quorum"))];
        args.extend(extra.iter().cloned());
        (DURABLE, table(&args))
    };
    let plain = |args: &[(&str, AMQPValue)]| (PLAIN, table(args));
    let cases = vec![
        (
            "ttl differs",
            plain(&[("x-message-ttl", int(1000))]),
            plain(&[("x-message-ttl", int(2000))]),
            "406 PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'qargs-q' in vhost '/': received '2000' but current is '1000'",
        ),
        (
            "same ttl as another integer type",
            plain(&[("x-message-ttl", int(1000))]),
            plain(&[("x-message-ttl", AMQPValue::ShortInt(1000))]),
            "ok",
        ),
        (
            "ttl dropped",
            plain(&[("x-message-ttl", int(1000))]),
            plain(&[]),
            "406 PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'qargs-q' in vhost '/': received none but current is the value '1000' of type 'signedint'",
        ),
        (
            "ttl added, even an invalid one",
            plain(&[]),
            plain(&[("x-message-ttl", int(-1))]),
            "406 PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'qargs-q' in vhost '/': received the value '-1' of type 'signedint' but current is none",
        ),
        (
            "ttl as a string",
            plain(&[("x-message-ttl", int(1000))]),
            plain(&[("x-message-ttl", long_str("abc"))]),
            "406 PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'qargs-q' in vhost '/': received 'abc' but current is '1000'",
        ),
        (
            "ttl as a double",
            plain(&[("x-message-ttl", int(1000))]),
            plain(&[("x-message-ttl", AMQPValue::Double(1000.0))]),
            "406 PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'qargs-q' in vhost '/': received '1.0e3' but current is '1000'",
        ),
        (
            "max-length as a table",
            plain(&[("x-max-length", int(1))]),
            plain(&[(
                "x-max-length",
                AMQPValue::FieldTable(table(&[("a", int(1))])),
            )]),
            "406 PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'qargs-q' in vhost '/': received '[{<<\"a\">>,signedint,1}]' but current is '1'",
        ),
        (
            "max-length as void",
            plain(&[("x-max-length", int(1))]),
            plain(&[("x-max-length", AMQPValue::Void)]),
            "406 PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'qargs-q' in vhost '/': received none but current is '1'",
        ),
        (
            "unknown argument differs",
            plain(&[("x-foo", long_str("a"))]),
            plain(&[("x-foo", long_str("b"))]),
            "ok",
        ),
        (
            "dlx differs",
            plain(&[("x-dead-letter-exchange", long_str("a"))]),
            plain(&[("x-dead-letter-exchange", long_str("b"))]),
            "406 PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-exchange' for queue 'qargs-q' in vhost '/': received 'b' but current is 'a'",
        ),
        (
            "single active consumer dropped",
            plain(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
            plain(&[]),
            "406 PRECONDITION_FAILED - inequivalent arg 'x-single-active-consumer' for queue 'qargs-q' in vhost '/': received none but current is the value 'true' of type 'bool'",
        ),
        (
            "classic named or not",
            plain(&[("x-queue-type", long_str("classic"))]),
            plain(&[]),
            "ok",
        ),
        (
            "unnamed then classic",
            plain(&[]),
            plain(&[("x-queue-type", long_str("classic"))]),
            "ok",
        ),
        (
            "classic then quorum",
            (DURABLE, table(&[])),
            quorum(&[]),
            "406 PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'qargs-q' in vhost '/': received the value 'quorum' of type 'longstr' but current is none",
        ),
        (
            "quorum then classic",
            quorum(&[]),
            (DURABLE, table(&[("x-queue-type", long_str("classic"))])),
            "406 PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'qargs-q' in vhost '/': received 'classic' but current is 'quorum'",
        ),
        (
            "quorum then unnamed",
            quorum(&[]),
            (DURABLE, table(&[])),
            "406 PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'qargs-q' in vhost '/': received none but current is the value 'quorum' of type 'longstr'",
        ),
        (
            "quorum delivery limit differs",
            quorum(&[("x-delivery-limit", int(5))]),
            quorum(&[("x-delivery-limit", int(6))]),
            "406 PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'qargs-q' in vhost '/': received '6' but current is '5'",
        ),
        (
            "classic ignores a delivery limit on redeclare",
            plain(&[]),
            plain(&[("x-delivery-limit", int(5))]),
            "ok",
        ),
        (
            "quorum ignores x-max-priority on redeclare",
            quorum(&[]),
            quorum(&[("x-max-priority", int(5))]),
            "ok",
        ),
        (
            "quorum redeclared non-durable",
            quorum(&[]),
            (PLAIN, table(&[("x-queue-type", long_str("quorum"))])),
            "406 PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'qargs-q' in vhost '/': received 'false' but current is 'true'",
        ),
        (
            "durable before arguments",
            (DURABLE, table(&[("x-message-ttl", int(1))])),
            plain(&[("x-message-ttl", int(2))]),
            "406 PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'qargs-q' in vhost '/': received 'false' but current is 'true'",
        ),
        (
            "exclusive queues are never durable",
            (
                Flags {
                    exclusive: true,
                    ..DURABLE
                },
                table(&[]),
            ),
            (
                Flags {
                    exclusive: true,
                    ..PLAIN
                },
                table(&[]),
            ),
            "ok",
        ),
        (
            "exclusive: auto_delete still compared",
            (
                Flags {
                    exclusive: true,
                    ..DURABLE
                },
                table(&[]),
            ),
            (
                Flags {
                    exclusive: true,
                    auto_delete: true,
                    durable: true,
                },
                table(&[]),
            ),
            "406 PRECONDITION_FAILED - inequivalent arg 'auto_delete' for queue 'qargs-q' in vhost '/': received 'true' but current is 'false'",
        ),
        (
            "auto_delete differs",
            plain(&[]),
            (
                Flags {
                    auto_delete: true,
                    ..PLAIN
                },
                table(&[]),
            ),
            "406 PRECONDITION_FAILED - inequivalent arg 'auto_delete' for queue 'qargs-q' in vhost '/': received 'true' but current is 'false'",
        ),
        (
            "classic compares x-expires first",
            plain(&[
                ("x-dead-letter-exchange", long_str("a")),
                ("x-expires", int(1000)),
            ]),
            plain(&[
                ("x-expires", int(2000)),
                ("x-dead-letter-exchange", long_str("b")),
            ]),
            "406 PRECONDITION_FAILED - inequivalent arg 'x-expires' for queue 'qargs-q' in vhost '/': received '2000' but current is '1000'",
        ),
        (
            "quorum compares the dead-letter exchange first",
            quorum(&[
                ("x-dead-letter-exchange", long_str("a")),
                ("x-expires", int(1000)),
            ]),
            quorum(&[
                ("x-expires", int(2000)),
                ("x-dead-letter-exchange", long_str("b")),
            ]),
            "406 PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-exchange' for queue 'qargs-q' in vhost '/': received 'b' but current is 'a'",
        ),
        (
            "quorum compares the delivery limit before the ttl",
            quorum(&[("x-delivery-limit", int(1)), ("x-message-ttl", int(1))]),
            quorum(&[("x-delivery-limit", int(2)), ("x-message-ttl", int(2))]),
            "406 PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'qargs-q' in vhost '/': received '2' but current is '1'",
        ),
    ];
    let mut wrong = Vec::new();
    for (name, first, second, expected) in cases {
        let got = within(5, redeclare(&conn, first, second)).await;
        if got != expected {
            wrong.push(format!("{name}:\n  expected {expected}\n  got      {got}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn consume_arguments_answer_as_rabbitmq_3_10() {
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    let cases = vec![
        ("x-priority 5", table(&[("x-priority", int(5))]), "ok"),
        (
            "x-priority -2^40",
            table(&[("x-priority", long(-(1 << 40)))]),
            "ok",
        ),
        (
            "x-priority string",
            table(&[("x-priority", long_str("abc"))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-priority' for queue 'qargs-q' in vhost '/': \"expected integer, got longstr\"",
        ),
        (
            "x-priority double",
            table(&[("x-priority", AMQPValue::Double(1.5))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-priority' for queue 'qargs-q' in vhost '/': \"expected integer, got double\"",
        ),
        (
            "x-cancel-on-ha-failover string",
            table(&[("x-cancel-on-ha-failover", long_str("abc"))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-cancel-on-ha-failover' for queue 'qargs-q' in vhost '/': {unacceptable_type,longstr}",
        ),
        (
            "x-cancel-on-ha-failover true",
            table(&[("x-cancel-on-ha-failover", AMQPValue::Boolean(true))]),
            "ok",
        ),
        (
            "x-stream-offset on a classic queue",
            table(&[("x-stream-offset", long_str("first"))]),
            "406 PRECONDITION_FAILED - invalid arg 'x-stream-offset' for queue 'qargs-q' in vhost '/' of queue type rabbit_classic_queue",
        ),
    ];
    let setup = conn.create_channel().await.unwrap();
    setup
        .queue_declare(
            Q.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut wrong = Vec::new();
    for (name, args, expected) in cases {
        let channel = conn.create_channel().await.unwrap();
        let got = match channel
            .basic_consume(Q.into(), "".into(), BasicConsumeOptions::default(), args)
            .await
        {
            Ok(_) => "ok".to_owned(),
            Err(e) => {
                let (code, text) = amqp_error(&e).expect("a channel close");
                format!("{code} {text}")
            }
        };
        if got != expected {
            wrong.push(format!("{name}:\n  expected {expected}\n  got      {got}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn global_prefetch_consumer_on_a_quorum_queue_is_540() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    channel
        .queue_declare(
            Q.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            table(&[("x-queue-type", long_str("quorum"))]),
        )
        .await
        .unwrap();
    channel
        .basic_qos(5, BasicQosOptions { global: true })
        .await
        .unwrap();
    let err = channel
        .basic_consume(
            Q.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&err),
        Some((
            540,
            "NOT_IMPLEMENTED - queue 'qargs-q' in vhost '/' does not support global qos".into()
        ))
    );
}

/// Properties with only `expiration` set (flag bit 8), as raw bytes.
fn expiration_properties(expiration: &str) -> Vec<u8> {
    let mut raw = vec![0x01, 0x00, u8::try_from(expiration.len()).unwrap()];
    raw.extend_from_slice(expiration.as_bytes());
    raw
}

#[tokio::test]
async fn invalid_expiration_is_406_as_in_rabbitmq_3_10() {
    let broker = TestBroker::start().await;
    let cases = [
        ("abc", "invalid expiration 'abc': no_integer"),
        ("", "invalid expiration '': no_integer"),
        (" 1", "invalid expiration ' 1': no_integer"),
        ("-1", "invalid expiration '-1': {value_negative,-1}"),
        ("1.5", "invalid expiration '1.5': {leftover_string,\".5\"}"),
        ("1e3", "invalid expiration '1e3': {leftover_string,\"e3\"}"),
        (
            "4294967295000",
            "invalid expiration '4294967295000': {value_too_large,4294967295000}",
        ),
        (
            "315360000001",
            "invalid expiration '315360000001': {value_too_large,315360000001}",
        ),
        (
            "99999999999999999999",
            "invalid expiration '99999999999999999999': {value_too_large,\n                                            99999999999999999999}",
        ),
    ];
    let mut raw = RawClient::handshake(broker.addr(), 2047, 131072, 0).await;
    for (n, (expiration, text)) in (1u16..).zip(cases) {
        raw.open_channel(n).await;
        raw.publish(n, "", "nowhere", &expiration_properties(expiration), b"x")
            .await;
        assert_eq!(
            raw.expect_channel_close(n).await,
            (406, format!("PRECONDITION_FAILED - {text}")),
            "expiration {expiration:?}"
        );
    }
    // Accepted forms: a sign, leading zeros, "-0", and up to ten years.
    let (_conn, channel) = broker.channel().await;
    channel
        .queue_declare(
            Q.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for expiration in ["+60000", "00100000", "315360000000", "60000"] {
        channel
            .basic_publish(
                "".into(),
                Q.into(),
                BasicPublishOptions::default(),
                b"x",
                lapin::BasicProperties::default().with_expiration(expiration.into()),
            )
            .await
            .unwrap();
    }
    let count = channel
        .queue_declare(
            Q.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count();
    assert_eq!(count, 4);
}

#[tokio::test]
async fn streams_are_refused_and_bad_locators_are_406_not_541() {
    // Deliberate differences: RabbitMQ 3.10 declares the stream, and closes the connection
    // with 541 INTERNAL_ERROR on the bad master locator or max-age.
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    let stream = |extra: &[(&str, AMQPValue)]| {
        let mut args = vec![("x-queue-type", long_str("stream"))];
        args.extend(extra.iter().cloned());
        table(&args)
    };
    assert_eq!(
        declare(&conn, DURABLE, stream(&[])).await,
        Err("406 PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue 'qargs-q' in vhost '/': \"unsupported queue type 'stream'\"".into())
    );
    // Checked as RabbitMQ checks a stream before that.
    assert_eq!(
        declare(&conn, PLAIN, stream(&[])).await,
        Err(
            "406 PRECONDITION_FAILED - invalid property 'non-durable' for queue 'qargs-q' in vhost '/'"
                .into()
        )
    );
    assert_eq!(
        declare(&conn, DURABLE, stream(&[("x-message-ttl", int(5))])).await,
        Err("406 PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'qargs-q' in vhost '/' of queue type rabbit_stream_queue".into())
    );
    assert_eq!(
        declare(&conn, DURABLE, stream(&[("x-max-age", long_str("bad"))])).await,
        Err("406 PRECONDITION_FAILED - invalid arg 'x-max-age' for queue 'qargs-q' in vhost '/': invalid_max_age".into())
    );
    assert_eq!(
        declare(
            &conn,
            PLAIN,
            table(&[("x-queue-master-locator", long_str("bogus"))])
        )
        .await,
        Err("406 PRECONDITION_FAILED - invalid arg 'x-queue-master-locator' for queue 'qargs-q' in vhost '/': invalid_queue_locator_arg".into())
    );
}
