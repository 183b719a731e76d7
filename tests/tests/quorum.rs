//! Quorum queues (`x-queue-type: quorum`) as RabbitMQ 3.10 runs them on one node, and the
//! `reject-publish-dlx` overflow: what each test asserts was observed on a real RabbitMQ 3.10.8
//! with the same client calls.

// Helpers outside #[test] functions unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::BasicProperties;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use warren_tests::{TestBroker, confirm_select, publish, within};

fn table(args: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in args {
        table.insert((*key).into(), value.clone());
    }
    table
}

/// A durable quorum queue `name` with `extra` arguments; with `dead_letters`, a fanout
/// exchange `dlx` bound to a queue `dlq` receives its dead letters.
async fn quorum(
    channel: &lapin::Channel,
    name: &str,
    extra: &[(&str, AMQPValue)],
    dead_letters: bool,
) {
    let mut args = vec![("x-queue-type", AMQPValue::LongString("quorum".into()))];
    args.extend(extra.iter().cloned());
    if dead_letters {
        dead_letter_queue(channel).await;
        args.push((
            "x-dead-letter-exchange",
            AMQPValue::LongString("dlx".into()),
        ));
    }
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            table(&args),
        )
        .await
        .unwrap();
}

async fn dead_letter_queue(channel: &lapin::Channel) {
    channel
        .exchange_declare(
            "dlx".into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_declare(
            "dlq".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            "dlq".into(),
            "dlx".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

/// The `x-delivery-count` header of a delivery, if any.
fn delivery_count(properties: &BasicProperties) -> Option<i64> {
    match properties
        .headers()
        .as_ref()?
        .inner()
        .get("x-delivery-count")?
    {
        AMQPValue::LongLongInt(n) => Some(*n),
        other => panic!("x-delivery-count is {other:?}"),
    }
}

/// `basic.get` with ack: (body, redelivered, x-delivery-count, delivery tag).
async fn get(channel: &lapin::Channel, queue: &str) -> Option<(Vec<u8>, bool, Option<i64>, u64)> {
    let message = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .unwrap()?;
    Some((
        message.delivery.data.clone(),
        message.delivery.redelivered,
        delivery_count(&message.delivery.properties),
        message.delivery.delivery_tag,
    ))
}

async fn nack(channel: &lapin::Channel, tag: u64) {
    channel
        .basic_nack(
            tag,
            BasicNackOptions {
                requeue: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
}

/// The dead letters in `dlq`: (body, x-death reason, headers).
async fn dead_letters(channel: &lapin::Channel) -> Vec<(Vec<u8>, String, FieldTable)> {
    let mut out = Vec::new();
    while let Some(message) = channel
        .basic_get("dlq".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let headers = message
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
            panic!("no x-death in {headers:?}");
        };
        let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first() else {
            panic!("empty x-death");
        };
        let Some(AMQPValue::LongString(reason)) = death.inner().get("reason") else {
            panic!("no reason in {death:?}");
        };
        out.push((
            message.delivery.data.clone(),
            reason.to_string(),
            headers.clone(),
        ));
    }
    out
}

#[tokio::test]
async fn delivery_limit_dead_letters_after_limit_plus_one_deliveries() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    quorum(
        &channel,
        "qq",
        &[("x-delivery-limit", AMQPValue::LongInt(2))],
        true,
    )
    .await;
    publish(&channel, "", "qq", b"poison").await;
    // basic.get always carries the count, from 0; each nack with requeue adds one.
    let mut seen = Vec::new();
    while let Some((body, redelivered, count, tag)) = within(5, get(&channel, "qq")).await {
        assert_eq!(body, b"poison");
        seen.push((redelivered, count));
        nack(&channel, tag).await;
    }
    assert_eq!(
        seen,
        [(false, Some(0)), (true, Some(1)), (true, Some(2))],
        "delivered limit + 1 times"
    );
    let dead = dead_letters(&channel).await;
    assert_eq!(dead.len(), 1);
    let (body, reason, headers) = &dead[0];
    assert_eq!(body, b"poison");
    assert_eq!(reason, "delivery_limit");
    // The dead letter is the message as published: no x-delivery-count.
    assert!(headers.inner().get("x-delivery-count").is_none());
    assert_eq!(
        headers.inner().get("x-first-death-reason"),
        Some(&AMQPValue::LongString("delivery_limit".into()))
    );
}

#[tokio::test]
async fn delivery_limit_without_dead_letter_exchange_drops_and_zero_or_negative_allow_one() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    for (name, limit, deliveries) in [
        ("one", AMQPValue::LongInt(1), 2),
        ("zero", AMQPValue::LongInt(0), 1),
        ("negative", AMQPValue::ShortInt(-1), 1),
    ] {
        quorum(&channel, name, &[("x-delivery-limit", limit)], false).await;
        publish(&channel, "", name, b"m").await;
        let mut n = 0;
        while let Some((_, _, _, tag)) = within(5, get(&channel, name)).await {
            n += 1;
            nack(&channel, tag).await;
        }
        assert_eq!(n, deliveries, "limit {name}");
    }
}

#[tokio::test]
async fn closing_the_channel_counts_as_a_return() {
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    let setup = conn.create_channel().await.unwrap();
    quorum(
        &setup,
        "qq",
        &[("x-delivery-limit", AMQPValue::LongInt(1))],
        true,
    )
    .await;
    publish(&setup, "", "qq", b"m").await;
    for expected in [0, 1] {
        let channel = conn.create_channel().await.unwrap();
        let (_, _, count, _) = within(5, get(&channel, "qq")).await.unwrap();
        assert_eq!(count, Some(expected));
        channel.close(200, "bye".into()).await.unwrap();
    }
    let channel = conn.create_channel().await.unwrap();
    assert!(get(&channel, "qq").await.is_none());
    let dead = dead_letters(&channel).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1, "delivery_limit");
}

#[tokio::test]
async fn consumers_see_the_count_only_on_redelivery() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    quorum(
        &channel,
        "qq",
        &[("x-delivery-limit", AMQPValue::LongInt(1))],
        true,
    )
    .await;
    publish(&channel, "", "qq", b"c0").await;
    channel
        .basic_qos(1, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            "qq".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let delivery = within(5, consumer.next()).await.unwrap().unwrap();
        seen.push((delivery.redelivered, delivery_count(&delivery.properties)));
        delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    assert_eq!(seen, [(false, None), (true, Some(1))]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(dead_letters(&channel).await.len(), 1);
}

#[tokio::test]
async fn returns_go_to_the_head_under_a_limit_and_to_the_tail_without() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    quorum(
        &channel,
        "limited",
        &[("x-delivery-limit", AMQPValue::LongInt(5))],
        false,
    )
    .await;
    quorum(&channel, "unlimited", &[], false).await;
    for queue in ["limited", "unlimited"] {
        for body in ["m0", "m1", "m2"] {
            publish(&channel, "", queue, body.as_bytes()).await;
        }
        let (_, _, _, tag) = get(&channel, queue).await.unwrap();
        nack(&channel, tag).await;
    }
    let order = |queue: &'static str| {
        let channel = channel.clone();
        async move {
            let mut bodies = Vec::new();
            while let Some((body, redelivered, count, tag)) = get(&channel, queue).await {
                bodies.push((String::from_utf8(body).unwrap(), redelivered, count));
                channel
                    .basic_ack(tag, BasicAckOptions::default())
                    .await
                    .unwrap();
            }
            bodies
        }
    };
    let s = |b: &str, r: bool, c: i64| (b.to_owned(), r, Some(c));
    assert_eq!(
        order("limited").await,
        [s("m0", true, 1), s("m1", false, 0), s("m2", false, 0)]
    );
    assert_eq!(
        order("unlimited").await,
        [s("m1", false, 0), s("m2", false, 0), s("m0", true, 1)]
    );
}

#[tokio::test]
async fn reject_publish_dlx_nacks_and_dead_letters_the_refused_message() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    dead_letter_queue(&channel).await;
    channel
        .queue_declare(
            "full".into(),
            QueueDeclareOptions::default(),
            table(&[
                ("x-max-length", AMQPValue::LongInt(1)),
                (
                    "x-overflow",
                    AMQPValue::LongString("reject-publish-dlx".into()),
                ),
                (
                    "x-dead-letter-exchange",
                    AMQPValue::LongString("dlx".into()),
                ),
            ]),
        )
        .await
        .unwrap();
    confirm_select(&channel).await;
    let mut acked = Vec::new();
    for body in ["p0", "p1", "p2"] {
        let confirm = channel
            .basic_publish(
                "".into(),
                "full".into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        acked.push(confirm.is_ack());
    }
    assert_eq!(acked, [true, false, false]);
    let dead = dead_letters(&channel).await;
    let dead: Vec<(&[u8], &str)> = dead
        .iter()
        .map(|(body, reason, _)| (body.as_slice(), reason.as_str()))
        .collect();
    assert_eq!(dead, [(&b"p1"[..], "maxlen"), (&b"p2"[..], "maxlen")]);
    let (body, _, _, _) = get(&channel, "full").await.unwrap();
    assert_eq!(body, b"p0");
}

#[tokio::test]
async fn quorum_overflow_is_as_in_rabbitmq_3_10() {
    // reject-publish-dlx acts as drop-head; reject-publish refuses once over the limit.
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    let overflow = |mode: &str| {
        vec![
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", AMQPValue::LongString(mode.into())),
        ]
    };
    quorum(&channel, "dlx-mode", &overflow("reject-publish-dlx"), true).await;
    quorum(&channel, "reject", &overflow("reject-publish"), false).await;
    confirm_select(&channel).await;
    for queue in ["dlx-mode", "reject"] {
        let mut acked = Vec::new();
        for body in ["p0", "p1", "p2"] {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    BasicProperties::default(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            acked.push(confirm.is_ack());
        }
        let expected = if queue == "reject" {
            [true, true, false]
        } else {
            [true, true, true]
        };
        assert_eq!(acked, expected, "{queue}");
    }
    let dead: Vec<Vec<u8>> = dead_letters(&channel)
        .await
        .into_iter()
        .map(|(body, _, _)| body)
        .collect();
    assert_eq!(dead, [b"p0".to_vec(), b"p1".to_vec()]);
    let (body, ..) = get(&channel, "dlx-mode").await.unwrap();
    assert_eq!(body, b"p2");
}

#[tokio::test]
async fn quorum_queue_keeps_transient_messages_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut config = warren_server::Config::for_tests();
        config.ephemeral = false;
        config.data_dir = dir.path().to_path_buf();
        config
    };
    {
        let broker = TestBroker::start_with(config()).await;
        let (_conn, channel) = broker.channel().await;
        quorum(&channel, "qq", &[], false).await;
        confirm_select(&channel).await;
        channel
            .basic_publish(
                "".into(),
                "qq".into(),
                BasicPublishOptions::default(),
                b"transient",
                BasicProperties::default().with_delivery_mode(1),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        broker.broker.shutdown().await;
    }
    let broker = TestBroker::start_with(config()).await;
    let (_conn, channel) = broker.channel().await;
    let (body, ..) = within(5, get(&channel, "qq")).await.unwrap();
    assert_eq!(body, b"transient");
}
