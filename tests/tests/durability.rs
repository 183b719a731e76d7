//! Durable exchanges, queues, bindings and persistent messages survive a restart on the same
//! data folder; transient ones do not; confirms of persisted messages come after the sync.

// Helpers outside #[test] functions unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, ExchangeKind};
use warren_tests::{
    Config, TestBroker, amqp_error, confirm_select, declare_queue, publish, within,
};

fn durable_config(dir: &std::path::Path) -> Config {
    let mut config = Config::for_tests();
    config.ephemeral = false;
    config.data_dir = dir.to_path_buf();
    config
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

// Multi-threaded, as the binary runs: durable declares go through block_in_place there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_topology_and_persistent_messages_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let broker = TestBroker::start_with(durable_config(dir.path())).await;
        let (_conn, channel) = broker.channel().await;
        confirm_select(&channel).await;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare("keep".into(), durable, FieldTable::default())
            .await
            .unwrap();
        declare_queue(&channel, "transient").await;
        channel
            .exchange_declare(
                "jobs".into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                "keep".into(),
                "jobs".into(),
                "job.*".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        for (key, body, props) in [
            ("job.a", &b"persistent"[..], persistent()),
            ("job.b", b"transient message", BasicProperties::default()),
            ("job.c", b"persistent too", persistent()),
        ] {
            let confirm = channel
                .basic_publish(
                    "jobs".into(),
                    key.into(),
                    BasicPublishOptions::default(),
                    body,
                    props,
                )
                .await
                .unwrap();
            assert_eq!(within(5, confirm).await.unwrap(), Confirmation::Ack(None));
        }
        broker.broker.shutdown().await;
    }
    let broker = TestBroker::start_with(durable_config(dir.path())).await;
    let (_conn, channel) = broker.channel().await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let keep = channel
        .queue_declare("keep".into(), passive, FieldTable::default())
        .await
        .unwrap();
    assert_eq!(
        keep.message_count(),
        2,
        "the two persistent messages, not the transient one"
    );
    // The binding survived too: routing through the recovered exchange still works.
    publish(&channel, "jobs", "job.d", b"after restart").await;
    let mut bodies = Vec::new();
    while let Some(m) = channel
        .basic_get("keep".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        bodies.push(m.delivery.data);
    }
    assert_eq!(
        bodies,
        vec![
            b"persistent".to_vec(),
            b"persistent too".to_vec(),
            b"after restart".to_vec()
        ]
    );
    let err = channel
        .queue_declare("transient".into(), passive, FieldTable::default())
        .await
        .unwrap_err();
    assert_eq!(amqp_error(&err).map(|e| e.0), Some(404));
}

#[tokio::test]
async fn unacked_persistent_message_comes_back_redelivered_and_deleted_queue_stays_deleted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let broker = TestBroker::start_with(durable_config(dir.path())).await;
        let (_conn, channel) = broker.channel().await;
        confirm_select(&channel).await;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare("work".into(), durable, FieldTable::default())
            .await
            .unwrap();
        channel
            .queue_declare("gone".into(), durable, FieldTable::default())
            .await
            .unwrap();
        for queue in ["work", "gone"] {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    b"m",
                    persistent(),
                )
                .await
                .unwrap();
            within(5, confirm).await.unwrap();
        }
        // Taken but never acked when the broker stops.
        let got = channel
            .basic_get("work".into(), BasicGetOptions::default())
            .await
            .unwrap()
            .unwrap();
        assert!(!got.delivery.redelivered);
        channel
            .queue_delete("gone".into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        broker.broker.shutdown().await;
    }
    let broker = TestBroker::start_with(durable_config(dir.path())).await;
    let (_conn, channel) = broker.channel().await;
    let again = channel
        .basic_get("work".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.delivery.data, b"m");
    assert!(again.delivery.redelivered);
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let err = channel
        .queue_declare("gone".into(), passive, FieldTable::default())
        .await
        .unwrap_err();
    assert_eq!(amqp_error(&err).map(|e| e.0), Some(404));
}

#[tokio::test]
async fn ephemeral_mode_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = durable_config(dir.path());
    config.ephemeral = true;
    let broker = TestBroker::start_with(config).await;
    let (_conn, channel) = broker.channel().await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare("d".into(), durable, FieldTable::default())
        .await
        .unwrap();
    channel
        .basic_publish(
            "".into(),
            "d".into(),
            BasicPublishOptions::default(),
            b"m",
            persistent(),
        )
        .await
        .unwrap();
    broker.broker.shutdown().await;
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn committed_transaction_of_persistent_messages_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let broker = TestBroker::start_with(durable_config(dir.path())).await;
        let (_conn, channel) = broker.channel().await;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare("txq".into(), durable, FieldTable::default())
            .await
            .unwrap();
        channel.tx_select().await.unwrap();
        for body in [&b"a"[..], b"b"] {
            channel
                .basic_publish(
                    "".into(),
                    "txq".into(),
                    BasicPublishOptions::default(),
                    body,
                    persistent(),
                )
                .await
                .unwrap();
        }
        // commit-ok comes once both are on disk.
        within(5, channel.tx_commit()).await.unwrap();
        broker.broker.shutdown().await;
    }
    let broker = TestBroker::start_with(durable_config(dir.path())).await;
    let (_conn, channel) = broker.channel().await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    assert_eq!(
        channel
            .queue_declare("txq".into(), passive, FieldTable::default())
            .await
            .unwrap()
            .message_count(),
        2
    );
}

#[tokio::test]
async fn message_deadlines_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let broker = TestBroker::start_with(durable_config(dir.path())).await;
        let (_conn, channel) = broker.channel().await;
        let mut args = FieldTable::default();
        args.insert(
            "x-message-ttl".into(),
            lapin::types::AMQPValue::LongInt(300),
        );
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare("ttl.d".into(), durable, args)
            .await
            .unwrap();
        confirm_select(&channel).await;
        let confirm = channel
            .basic_publish(
                "".into(),
                "ttl.d".into(),
                BasicPublishOptions::default(),
                b"m",
                persistent(),
            )
            .await
            .unwrap();
        within(5, confirm).await.unwrap();
        broker.broker.shutdown().await;
    }
    let broker = TestBroker::start_with(durable_config(dir.path())).await;
    let (_conn, channel) = broker.channel().await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    assert_eq!(
        channel
            .queue_declare("ttl.d".into(), passive, FieldTable::default())
            .await
            .unwrap()
            .message_count(),
        0
    );
}

/// Publishes persistent messages with these priorities to `queue`, waiting for each confirm.
async fn publish_prioritized(
    channel: &lapin::Channel,
    queue: &str,
    messages: &[(&str, Option<u8>)],
) {
    for (body, priority) in messages {
        let mut props = persistent();
        if let Some(p) = priority {
            props = props.with_priority(*p);
        }
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                props,
            )
            .await
            .unwrap();
        assert_eq!(within(5, confirm).await.unwrap(), Confirmation::Ack(None));
    }
}

/// Reads the queue empty with basic.get: (body, redelivered).
async fn get_all(channel: &lapin::Channel, queue: &str) -> Vec<(String, bool)> {
    let mut got = Vec::new();
    while let Some(m) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        got.push((
            String::from_utf8(m.delivery.data).unwrap(),
            m.delivery.redelivered,
        ));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_priority_queue_keeps_its_order_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-max-priority".into(),
        lapin::types::AMQPValue::ShortShortUInt(5),
    );
    {
        let broker = TestBroker::start_with(durable_config(dir.path())).await;
        let (_conn, channel) = broker.channel().await;
        confirm_select(&channel).await;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare("prio.d".into(), durable, args.clone())
            .await
            .unwrap();
        publish_prioritized(
            &channel,
            "prio.d",
            &[
                ("none-1", None),
                ("three-1", Some(3)),
                ("five-1", Some(5)),
                ("one-1", Some(1)),
                ("capped", Some(200)),
                ("three-2", Some(3)),
                ("none-2", Some(0)),
                ("five-2", Some(5)),
            ],
        )
        .await;
        // Before the restart the order is already by priority ("capped" has priority 5):
        // "five-1" is taken and not acked, "capped" is taken and acked.
        let taken = channel
            .basic_get("prio.d".into(), BasicGetOptions::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(taken.delivery.data, b"five-1");
        let acked = channel
            .basic_get("prio.d".into(), BasicGetOptions::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(acked.delivery.data, b"capped");
        channel
            .basic_ack(acked.delivery.delivery_tag, BasicAckOptions::default())
            .await
            .unwrap();
        // A round trip, so the ack is handled before the broker stops.
        channel
            .queue_declare(
                "prio.d".into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        broker.broker.shutdown().await;
    }
    let broker = TestBroker::start_with(durable_config(dir.path())).await;
    let (_conn, channel) = broker.channel().await;
    confirm_select(&channel).await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = channel
        .queue_declare("prio.d".into(), passive, FieldTable::default())
        .await
        .unwrap();
    assert_eq!(declared.message_count(), 7);
    // New messages take their place among the recovered ones.
    publish_prioritized(&channel, "prio.d", &[("four", Some(4)), ("none-3", None)]).await;
    assert_eq!(
        get_all(&channel, "prio.d").await,
        [
            ("five-1".to_string(), true),
            ("five-2".to_string(), false),
            ("four".to_string(), false),
            ("three-1".to_string(), false),
            ("three-2".to_string(), false),
            ("one-1".to_string(), false),
            ("none-1".to_string(), false),
            ("none-2".to_string(), false),
            ("none-3".to_string(), false),
        ]
    );
}
