//! Message TTL (per queue and per message) and dead-lettering, with RabbitMQ's x-death.

// Helpers outside #[test] functions unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::BasicProperties;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use warren_tests::{
    TestBroker, consume, declare_exclusive, get_message, message_count, no_ack, publish,
    publish_with, within,
};

/// The first message `queue` holds within 5 s (taken with no-ack).
async fn get_within_5s(channel: &lapin::Channel, queue: &str) -> lapin::message::BasicGetMessage {
    within(5, async {
        loop {
            if let Some(m) = channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

fn death(headers: &FieldTable) -> (String, String, i64) {
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        panic!("no x-death in {headers:?}");
    };
    let Some(AMQPValue::FieldTable(first)) = deaths.as_slice().first() else {
        panic!("empty x-death");
    };
    let text = |key: &str| match first.inner().get(key) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("{key}: {other:?}"),
    };
    let count = match first.inner().get("count") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        other => panic!("count: {other:?}"),
    };
    (text("reason"), text("queue"), count)
}

#[tokio::test]
async fn queue_ttl_expires_messages_nobody_consumed() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    declare_exclusive(
        &channel,
        "ttl",
        &[("x-message-ttl", AMQPValue::LongInt(500))],
    )
    .await;
    publish(&channel, "", "ttl", b"short-lived").await;
    assert_eq!(message_count(&channel, "ttl").await, 1);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(message_count(&channel, "ttl").await, 0);
    assert!(
        channel
            .basic_get("ttl".into(), BasicGetOptions::default())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn per_message_expiration_is_honoured() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    declare_exclusive(&channel, "plain", &[]).await;
    for (body, expiration) in [(&b"expires"[..], Some("30")), (b"stays", None)] {
        let mut props = BasicProperties::default();
        if let Some(e) = expiration {
            props = props.with_expiration(e.into());
        }
        channel
            .basic_publish(
                "".into(),
                "plain".into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(120)).await;
    let got = get_message(&channel, "plain").await;
    assert_eq!(got.delivery.data, b"stays");
    assert_eq!(got.message_count, 0);
}

#[tokio::test]
async fn rejected_message_is_dead_lettered_with_x_death() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    declare_exclusive(&channel, "dead", &[]).await;
    declare_exclusive(
        &channel,
        "work",
        &[
            ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
            (
                "x-dead-letter-routing-key",
                AMQPValue::LongString("dead".into()),
            ),
        ],
    )
    .await;
    publish(&channel, "", "work", b"bad job").await;
    let got = channel
        .basic_get("work".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .unwrap();
    channel
        .basic_reject(
            got.delivery.delivery_tag,
            BasicRejectOptions { requeue: false },
        )
        .await
        .unwrap();
    let dead = get_within_5s(&channel, "dead").await;
    assert_eq!(dead.delivery.data, b"bad job");
    assert_eq!(dead.delivery.routing_key.as_str(), "dead");
    let headers = dead.delivery.properties.headers().clone().unwrap();
    assert_eq!(death(&headers), ("rejected".into(), "work".into(), 1));
    assert_eq!(
        headers.inner().get("x-first-death-reason"),
        Some(&AMQPValue::LongString("rejected".into()))
    );
}

#[tokio::test]
async fn ttl_with_dead_letter_exchange_delays_delivery() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    declare_exclusive(&channel, "target", &[]).await;
    declare_exclusive(
        &channel,
        "delay",
        &[
            ("x-message-ttl", AMQPValue::LongInt(100)),
            ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
            (
                "x-dead-letter-routing-key",
                AMQPValue::LongString("target".into()),
            ),
        ],
    )
    .await;
    let mut consumer = consume(&channel, "target", "c", no_ack()).await;
    let sent = tokio::time::Instant::now();
    publish(&channel, "", "delay", b"later").await;
    // Nobody consumes "delay": the message expires there and moves on by itself.
    let delivery = within(5, consumer.next()).await.unwrap().unwrap();
    assert!(sent.elapsed() >= Duration::from_millis(100));
    assert_eq!(delivery.data, b"later");
    let headers = delivery.properties.headers().clone().unwrap();
    assert_eq!(death(&headers), ("expired".into(), "delay".into(), 1));
}

#[tokio::test]
async fn dropped_head_is_dead_lettered_as_maxlen() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    declare_exclusive(&channel, "overflow", &[]).await;
    declare_exclusive(
        &channel,
        "small",
        &[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
            (
                "x-dead-letter-routing-key",
                AMQPValue::LongString("overflow".into()),
            ),
        ],
    )
    .await;
    for body in [&b"old"[..], b"new"] {
        publish(&channel, "", "small", body).await;
    }
    let dead = get_within_5s(&channel, "overflow").await;
    assert_eq!(dead.delivery.data, b"old");
    assert_eq!(
        death(&dead.delivery.properties.headers().clone().unwrap()).0,
        "maxlen"
    );
}

#[tokio::test]
async fn unused_queue_expires_with_x_expires() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongInt(100));
    channel
        .queue_declare("idle".into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    // Looking at the queue counts as using it, so wait well past x-expires before looking.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let err = channel
        .queue_declare(
            "idle".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(warren_tests::amqp_error(&err).map(|e| e.0), Some(404));
}

async fn publish_with_expiration(
    channel: &lapin::Channel,
    queue: &str,
    body: &str,
    ttl: Option<u32>,
) {
    let mut props = BasicProperties::default();
    if let Some(ttl) = ttl {
        props = props.with_expiration(ttl.to_string().into());
    }
    publish_with(channel, "", queue, body.as_bytes(), props).await;
}

fn dead_lettered_to(target: &str) -> [(&'static str, AMQPValue); 2] {
    [
        ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
        (
            "x-dead-letter-routing-key",
            AMQPValue::LongString(target.into()),
        ),
    ]
}

// Warren goes further than RabbitMQ here: RabbitMQ expires only at the head of a queue, so these
// messages would wait behind the ones that do not expire (docs/compatibility.md).
#[tokio::test]
async fn messages_expire_wherever_they_sit_in_deadline_order() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    declare_exclusive(&channel, "mixed.dead", &[]).await;
    declare_exclusive(&channel, "mixed", &dead_lettered_to("mixed.dead")).await;
    let mut dead = consume(&channel, "mixed.dead", "dead", no_ack()).await;
    let sent = tokio::time::Instant::now();
    for (body, ttl) in [
        ("a-none", None),
        ("b-900", Some(900)),
        ("c-300", Some(300)),
        ("d-none", None),
        ("e-600", Some(600)),
        ("f-300", Some(300)),
        ("g-long", Some(60_000)),
    ] {
        publish_with_expiration(&channel, "mixed", body, ttl).await;
    }
    assert_eq!(message_count(&channel, "mixed").await, 7);
    let mut order = Vec::new();
    for _ in 0..4 {
        let delivery = within(5, dead.next()).await.unwrap().unwrap();
        let headers = delivery.properties.headers().clone().unwrap();
        assert_eq!(death(&headers), ("expired".into(), "mixed".into(), 1));
        order.push(String::from_utf8(delivery.data).unwrap());
        if order.len() == 2 {
            // The two 300 ms messages died by themselves, behind "a-none", and the queue's
            // count says so.
            assert!(sent.elapsed() >= std::time::Duration::from_millis(300));
            assert!(message_count(&channel, "mixed").await <= 5);
        }
    }
    assert_eq!(order, ["c-300", "f-300", "e-600", "b-900"]);
    assert_eq!(message_count(&channel, "mixed").await, 3);
    let mut left = Vec::new();
    while let Some(m) = channel
        .basic_get("mixed".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        left.push(String::from_utf8(m.delivery.data).unwrap());
    }
    assert_eq!(left, ["a-none", "d-none", "g-long"]);
}

#[tokio::test]
async fn an_expired_message_never_reaches_a_consumer_or_basic_get() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    declare_exclusive(&channel, "held", &[]).await;
    for (body, ttl) in [("hold", None), ("x-200", Some(200)), ("y", None)] {
        publish_with_expiration(&channel, "held", body, ttl).await;
    }
    channel
        .basic_qos(1, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = consume(&channel, "held", "c", BasicConsumeOptions::default()).await;
    let hold = within(5, consumer.next()).await.unwrap().unwrap();
    assert_eq!(hold.data, b"hold");
    // "x-200" expires while the consumer has no credit left.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(message_count(&channel, "held").await, 1, "only y is left");
    hold.ack(BasicAckOptions::default()).await.unwrap();
    let next = within(5, consumer.next()).await.unwrap().unwrap();
    assert_eq!(next.data, b"y");
    next.ack(BasicAckOptions::default()).await.unwrap();

    // basic.get: a short-lived message behind a long-lived one is gone when its turn comes.
    declare_exclusive(&channel, "polled", &[]).await;
    for (body, ttl) in [("long", Some(60_000)), ("short", Some(100)), ("none", None)] {
        publish_with_expiration(&channel, "polled", body, ttl).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut got = Vec::new();
    while let Some(m) = channel
        .basic_get("polled".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        got.push((String::from_utf8(m.delivery.data).unwrap(), m.message_count));
    }
    assert_eq!(got, [("long".to_string(), 1), ("none".to_string(), 0)]);
}

#[tokio::test]
async fn a_low_priority_message_expires_behind_higher_priorities() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    declare_exclusive(&channel, "prio.dead", &[]).await;
    let [dlx, key] = dead_lettered_to("prio.dead");
    declare_exclusive(
        &channel,
        "prio.ttl",
        &[dlx, key, ("x-max-priority", AMQPValue::ShortShortUInt(3))],
    )
    .await;
    for (body, priority, ttl) in [
        ("high", 3u8, None),
        ("low-short", 0, Some(150u32)),
        ("mid", 2, None),
    ] {
        let props = BasicProperties::default()
            .with_priority(priority)
            .with_expiration(ttl.map_or("600000".to_string(), |t| t.to_string()).into());
        channel
            .basic_publish(
                "".into(),
                "prio.ttl".into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                props,
            )
            .await
            .unwrap();
    }
    let dead = get_within_5s(&channel, "prio.dead").await;
    assert_eq!(dead.delivery.data, b"low-short");
    assert_eq!(message_count(&channel, "prio.ttl").await, 2);
}
