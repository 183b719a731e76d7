//! Exchanges, queues and bindings through lapin, with RabbitMQ's codes and reply texts.

// Helpers outside #[test] functions unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use warren_tests::{
    RawClient, TestBroker, amqp_error, consume, declare_queue, get_body, get_message, publish,
    within,
};

#[tokio::test]
async fn server_named_queue_and_declare_ok_counts() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    let q = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert!(q.name().as_str().starts_with("amq.gen-"));
    assert_eq!(q.name().as_str().len(), "amq.gen-".len() + 22);
    publish(&channel, "", q.name().as_str(), b"x").await;
    let _consumer = channel
        .basic_consume(
            q.name().clone(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    publish(&channel, "", q.name().as_str(), b"y").await;
    let again = channel
        .queue_declare(
            q.name().clone(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(again.consumer_count(), 1);
}

#[tokio::test]
async fn passive_declare_of_missing_queue_is_404() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    let err = channel
        .queue_declare(
            "missing".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&err),
        Some((404, "NOT_FOUND - no queue 'missing' in vhost '/'".into()))
    );
}

#[tokio::test]
async fn redeclare_with_other_properties_is_406() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    declare_queue(&channel, "q406").await;
    let err = channel
        .queue_declare(
            "q406".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&err),
        Some((406, "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q406' in vhost '/': received 'true' but current is 'false'".into()))
    );
}

#[tokio::test]
async fn amq_prefix_is_reserved_403() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    let err = channel
        .queue_declare(
            "amq.mine".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&err),
        Some((
            403,
            "ACCESS_REFUSED - queue name 'amq.mine' contains reserved prefix 'amq.*'".into()
        ))
    );
    let (_conn, channel) = broker.channel().await;
    let err = channel
        .exchange_declare(
            "amq.mine".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&err),
        Some((
            403,
            "ACCESS_REFUSED - exchange name 'amq.mine' contains reserved prefix 'amq.*'".into()
        ))
    );
}

#[tokio::test]
async fn predeclared_exchanges_exist() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    for name in [
        "amq.direct",
        "amq.fanout",
        "amq.topic",
        "amq.headers",
        "amq.match",
    ] {
        channel
            .exchange_declare(
                name.into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn exchange_redeclare_with_other_type_is_406_and_unknown_type_503() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    channel
        .exchange_declare(
            "x406".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let err = channel
        .exchange_declare(
            "x406".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&err),
        Some((406, "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'x406' in vhost '/': received 'fanout' but current is 'direct'".into()))
    );
    let (_conn, channel) = broker.channel().await;
    let err = channel
        .exchange_declare(
            "x503".into(),
            ExchangeKind::Custom("nonsense".into()),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&err),
        Some((
            503,
            "COMMAND_INVALID - unknown exchange type 'nonsense'".into()
        ))
    );
}

#[tokio::test]
async fn direct_topic_fanout_and_headers_route() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    for q in ["d", "t", "f1", "f2", "h"] {
        declare_queue(&channel, q).await;
    }
    channel
        .queue_bind(
            "d".into(),
            "amq.direct".into(),
            "key".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            "t".into(),
            "amq.topic".into(),
            "a.*.c".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            "f1".into(),
            "amq.fanout".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            "f2".into(),
            "amq.fanout".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert("x-match".into(), AMQPValue::LongString("all".into()));
    args.insert("kind".into(), AMQPValue::LongString("red".into()));
    channel
        .queue_bind(
            "h".into(),
            "amq.headers".into(),
            "".into(),
            QueueBindOptions::default(),
            args,
        )
        .await
        .unwrap();

    publish(&channel, "amq.direct", "key", b"direct").await;
    publish(&channel, "amq.direct", "other", b"nowhere").await;
    publish(&channel, "amq.topic", "a.b.c", b"topic").await;
    publish(&channel, "amq.topic", "a.b.d", b"nowhere").await;
    publish(&channel, "amq.fanout", "ignored", b"fan").await;
    let mut headers = FieldTable::default();
    headers.insert("kind".into(), AMQPValue::LongString("red".into()));
    channel
        .basic_publish(
            "amq.headers".into(),
            "".into(),
            BasicPublishOptions::default(),
            b"headers",
            BasicProperties::default().with_headers(headers),
        )
        .await
        .unwrap();

    assert_eq!(
        get_body(&channel, "d").await.as_deref(),
        Some(&b"direct"[..])
    );
    assert_eq!(get_body(&channel, "d").await, None);
    assert_eq!(
        get_body(&channel, "t").await.as_deref(),
        Some(&b"topic"[..])
    );
    assert_eq!(get_body(&channel, "t").await, None);
    assert_eq!(get_body(&channel, "f1").await.as_deref(), Some(&b"fan"[..]));
    assert_eq!(get_body(&channel, "f2").await.as_deref(), Some(&b"fan"[..]));
    assert_eq!(
        get_body(&channel, "h").await.as_deref(),
        Some(&b"headers"[..])
    );

    channel
        .queue_unbind(
            "d".into(),
            "amq.direct".into(),
            "key".into(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    publish(&channel, "amq.direct", "key", b"after unbind").await;
    assert_eq!(get_body(&channel, "d").await, None);
}

#[tokio::test]
async fn exchange_to_exchange_bindings_route() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    channel
        .exchange_declare(
            "e2e.src".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .exchange_bind(
            "amq.direct".into(),
            "e2e.src".into(),
            "".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    declare_queue(&channel, "e2e.q").await;
    channel
        .queue_bind(
            "e2e.q".into(),
            "amq.direct".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    publish(&channel, "e2e.src", "k", b"through two").await;
    assert_eq!(
        get_body(&channel, "e2e.q").await.as_deref(),
        Some(&b"through two"[..])
    );
}

#[tokio::test]
async fn publish_to_missing_exchange_is_404_and_internal_403() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::handshake(broker.addr(), 2047, 131072, 0).await;
    raw.open_channel(1).await;
    raw.publish(1, "missing", "k", &[0, 0], b"x").await;
    assert_eq!(
        raw.expect_channel_close(1).await,
        (404, "NOT_FOUND - no exchange 'missing' in vhost '/'".into())
    );
    let (_conn, channel) = broker.channel().await;
    channel
        .exchange_declare(
            "inside".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                internal: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    raw.open_channel(2).await;
    raw.publish(2, "inside", "k", &[0, 0], b"x").await;
    assert_eq!(
        raw.expect_channel_close(2).await,
        (
            403,
            "ACCESS_REFUSED - cannot publish to internal exchange 'inside' in vhost '/'".into()
        )
    );
}

#[tokio::test]
async fn exclusive_queue_is_locked_to_its_connection_and_vanishes_with_it() {
    let broker = TestBroker::start().await;
    let (owner, channel) = broker.channel().await;
    channel
        .queue_declare(
            "mine".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (_other, other_channel) = broker.channel().await;
    let err = other_channel
        .queue_declare(
            "mine".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(amqp_error(&err).map(|e| e.0), Some(405));
    owner.close(200, "bye".into()).await.unwrap();
    let (_third, third) = broker.channel().await;
    within(5, async {
        loop {
            let probe = third
                .queue_declare(
                    "mine".into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await;
            if let Err(err) = probe {
                assert_eq!(amqp_error(&err).map(|e| e.0), Some(404));
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn auto_delete_queue_goes_with_its_last_consumer() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    channel
        .queue_declare(
            "ad".into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let consumer = consume(&channel, "ad", "c", BasicConsumeOptions::default()).await;
    drop(consumer);
    channel
        .basic_cancel("c".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    let err = channel
        .queue_declare(
            "ad".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(amqp_error(&err).map(|e| e.0), Some(404));
}

#[tokio::test]
async fn delete_if_unused_if_empty_and_purge() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    declare_queue(&channel, "del").await;
    publish(&channel, "", "del", b"1").await;
    publish(&channel, "", "del", b"2").await;
    let err = channel
        .queue_delete(
            "del".into(),
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&err),
        Some((
            406,
            "PRECONDITION_FAILED - queue 'del' in vhost '/' not empty".into()
        ))
    );
    let (_conn, channel) = broker.channel().await;
    let mut consumer = consume(&channel, "del", "c", BasicConsumeOptions::default()).await;
    within(5, consumer.next()).await.unwrap().unwrap();
    let (_conn2, other) = broker.channel().await;
    let err = other
        .queue_delete(
            "del".into(),
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&err),
        Some((
            406,
            "PRECONDITION_FAILED - queue 'del' in vhost '/' in use".into()
        ))
    );
    let (_conn3, third) = broker.channel().await;
    declare_queue(&third, "purge").await;
    publish(&third, "", "purge", b"1").await;
    publish(&third, "", "purge", b"2").await;
    assert_eq!(
        third
            .queue_purge("purge".into(), QueuePurgeOptions::default())
            .await
            .unwrap(),
        2
    );
    publish(&third, "", "purge", b"3").await;
    assert_eq!(
        third
            .queue_delete("purge".into(), QueueDeleteOptions::default())
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn invalid_queue_arguments_are_406() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(-1));
    let err = channel
        .queue_declare("ttl".into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&err),
        Some((406, "PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'ttl' in vhost '/': {value_negative,-1}".into()))
    );
}

#[tokio::test]
async fn default_exchange_cannot_be_bound_or_deleted() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    declare_queue(&channel, "dq").await;
    let err = channel
        .queue_bind(
            "dq".into(),
            "".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&err),
        Some((
            403,
            "ACCESS_REFUSED - operation not permitted on the default exchange".into()
        ))
    );
}

#[tokio::test]
async fn cc_and_bcc_headers_add_routing_keys_and_bcc_is_hidden() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    for q in ["to", "cc", "bcc"] {
        declare_queue(&channel, q).await;
    }
    let mut headers = FieldTable::default();
    headers.insert(
        "CC".into(),
        AMQPValue::FieldArray(vec![AMQPValue::LongString("cc".into())].into()),
    );
    headers.insert(
        "BCC".into(),
        AMQPValue::FieldArray(vec![AMQPValue::LongString("bcc".into())].into()),
    );
    channel
        .basic_publish(
            "".into(),
            "to".into(),
            BasicPublishOptions::default(),
            b"memo",
            BasicProperties::default().with_headers(headers),
        )
        .await
        .unwrap();
    for q in ["to", "cc", "bcc"] {
        let got = get_message(&channel, q).await;
        assert_eq!(got.delivery.data, b"memo", "{q}");
        let headers = got.delivery.properties.headers().clone().unwrap();
        assert!(headers.inner().contains_key("CC"));
        assert!(
            !headers.inner().contains_key("BCC"),
            "BCC is removed before delivery"
        );
    }
}

#[tokio::test]
async fn empty_queue_name_means_the_last_declared_queue() {
    let broker = TestBroker::start().await;
    let (_conn, channel) = broker.channel().await;
    let err = channel
        .queue_purge("".into(), QueuePurgeOptions::default())
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&err),
        Some((404, "NOT_FOUND - no previously declared queue".into()))
    );
    let (_conn, channel) = broker.channel().await;
    let q = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    // Queue and routing key both empty: bound with the queue's own name as the key.
    channel
        .queue_bind(
            "".into(),
            "amq.direct".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    publish(&channel, "amq.direct", q.name().as_str(), b"x").await;
    assert_eq!(
        channel
            .queue_purge("".into(), QueuePurgeOptions::default())
            .await
            .unwrap(),
        1
    );
}
