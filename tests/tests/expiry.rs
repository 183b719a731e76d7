//! Message TTL (per queue and per message) and dead-lettering, with RabbitMQ's x-death.

// Helpers outside #[test] functions unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::BasicProperties;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use warren_tests::{TestBroker, within};

async fn declare(channel: &lapin::Channel, name: &str, args: &[(&str, AMQPValue)]) {
    let mut table = FieldTable::default();
    for (key, value) in args {
        table.insert((*key).into(), value.clone());
    }
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            table,
        )
        .await
        .unwrap();
}

async fn count(channel: &lapin::Channel, name: &str) -> u32 {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count()
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
    declare(
        &channel,
        "ttl",
        &[("x-message-ttl", AMQPValue::LongInt(500))],
    )
    .await;
    channel
        .basic_publish(
            "".into(),
            "ttl".into(),
            BasicPublishOptions::default(),
            b"short-lived",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    assert_eq!(count(&channel, "ttl").await, 1);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(count(&channel, "ttl").await, 0);
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
    declare(&channel, "plain", &[]).await;
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
    let got = channel
        .basic_get("plain".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.delivery.data, b"stays");
    assert_eq!(got.message_count, 0);
}

#[tokio::test]
async fn rejected_message_is_dead_lettered_with_x_death() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    declare(&channel, "dead", &[]).await;
    declare(
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
    channel
        .basic_publish(
            "".into(),
            "work".into(),
            BasicPublishOptions::default(),
            b"bad job",
            BasicProperties::default(),
        )
        .await
        .unwrap();
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
    let dead = within(5, async {
        loop {
            if let Some(m) = channel
                .basic_get("dead".into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
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
    declare(&channel, "target", &[]).await;
    declare(
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
    let mut consumer = channel
        .basic_consume(
            "target".into(),
            "c".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let sent = tokio::time::Instant::now();
    channel
        .basic_publish(
            "".into(),
            "delay".into(),
            BasicPublishOptions::default(),
            b"later",
            BasicProperties::default(),
        )
        .await
        .unwrap();
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
    declare(&channel, "overflow", &[]).await;
    declare(
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
        channel
            .basic_publish(
                "".into(),
                "small".into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            )
            .await
            .unwrap();
    }
    let dead = within(5, async {
        loop {
            if let Some(m) = channel
                .basic_get("overflow".into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
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
