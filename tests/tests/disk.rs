//! Disk trouble through the broker: a full disk (ENOSPC) or failing fsyncs (EIO) under the store
//! (a fault-injecting backend) nack the confirms they may have lost, block publishers, keep
//! consumers served, and the broker recovers when the disk works again; free space below
//! `disk_free_limit` raises the disk alarm as RabbitMQ does; a data folder has one broker.

// Helpers outside #[test] functions unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use futures_lite::{Stream, StreamExt};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Event};
use warren_store::{CrashMode, MemBackend};
use warren_tests::{Config, TestBroker, within};

const QUEUE: &str = "disk.q";

fn durable_config(dir: &std::path::Path) -> Config {
    let mut config = Config::for_tests();
    config.ephemeral = false;
    config.data_dir = dir.to_path_buf();
    config
}

/// A broker whose store lives in `backend`; free-space checks are off, so only the injected
/// faults raise the disk alarm.
fn config_on(backend: &MemBackend, dir: &std::path::Path) -> Config {
    let mut config = durable_config(dir);
    config.limits.disk_free_limit = 0;
    config.store_backend = Some(Arc::new(backend.clone()));
    config
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

async fn declare_durable(channel: &Channel) {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(QUEUE.into(), durable, FieldTable::default())
        .await
        .unwrap();
}

async fn publish(channel: &Channel, body: &str) -> lapin::PublisherConfirm {
    channel
        .basic_publish(
            "".into(),
            QUEUE.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            persistent(),
        )
        .await
        .unwrap()
}

/// The next `connection.blocked` or `unblocked` on a connection: `Some(reason)` or `None`.
async fn next_block_event(events: &mut (impl Stream<Item = Event> + Unpin)) -> Option<String> {
    within(5, async {
        while let Some(event) = events.next().await {
            match event {
                Event::ConnectionBlocked(reason) => return Some(reason),
                Event::ConnectionUnblocked => return None,
                _ => {}
            }
        }
        panic!("the connection's events ended");
    })
    .await
}

/// A passive declare on `channel` does not complete within 300 ms: the broker stopped reading.
async fn assert_stalled(channel: &Channel) -> impl std::future::Future<Output = u32> + use<> {
    let channel = channel.clone();
    let probe = async move {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        channel
            .queue_declare(QUEUE.into(), passive, FieldTable::default())
            .await
            .unwrap()
            .message_count()
    };
    let mut probe = Box::pin(probe);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut probe)
            .await
            .is_err(),
        "a blocked publisher's connection is still read"
    );
    probe
}

// Multi-threaded, as the binary runs: the store's syncs run on their own thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_nacks_confirms_blocks_publishers_serves_consumers_and_recovers() {
    write_failure_then_recovery(MemBackend::set_disk_full).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_fsync_io_error_nacks_confirms_blocks_publishers_serves_consumers_and_recovers() {
    write_failure_then_recovery(MemBackend::set_sync_fails).await;
}

/// The disk fails under the store (`fault(backend, true)`: ENOSPC on writes and syncs, or EIO
/// on syncs), then works again (`fault(backend, false)`).
async fn write_failure_then_recovery(fault: fn(&MemBackend, bool)) {
    let dir = tempfile::tempdir().unwrap();
    let backend = MemBackend::new();
    let broker = TestBroker::start_with(config_on(&backend, dir.path())).await;
    let (publisher_conn, publisher) = broker.channel().await;
    let mut events = Box::pin(publisher_conn.events_listener());
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare_durable(&publisher).await;
    let (consumer_conn, consumer) = broker.channel().await;
    let mut deliveries = consumer
        .basic_consume(
            QUEUE.into(),
            "disk".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let before = within(5, publish(&publisher, "before").await)
        .await
        .unwrap();
    assert!(matches!(before, Confirmation::Ack(_)), "{before:?}");

    // The disk fills up: the write of the next persistent message fails, so its confirm is a
    // nack, and the publisher is blocked, as below the free-disk limit.
    fault(&backend, true);
    let while_full = within(5, publish(&publisher, "while full").await)
        .await
        .unwrap();
    assert!(
        matches!(while_full, Confirmation::Nack(_)),
        "{while_full:?}"
    );
    assert_eq!(
        next_block_event(&mut events).await.as_deref(),
        Some("low on disk")
    );
    assert!(broker.broker.disk_alarm());
    let stalled = assert_stalled(&publisher).await;

    // Consumers keep being served meanwhile, from memory: both messages (a nacked message may
    // still be delivered, as with RabbitMQ: a nack only says the broker may have lost it), and
    // their acks are accepted.
    for expected in ["before", "while full"] {
        let delivery = within(5, deliveries.next()).await.unwrap().unwrap();
        assert_eq!(delivery.data, expected.as_bytes());
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    consumer
        .basic_cancel("disk".into(), BasicCancelOptions::default())
        .await
        .unwrap();

    // Space returns: the next sync writes what waited in memory, the alarm clears, and the
    // publisher is unblocked and confirmed again.
    fault(&backend, false);
    assert_eq!(next_block_event(&mut events).await, None);
    assert!(!broker.broker.disk_alarm());
    assert_eq!(within(5, stalled).await, 0);
    let after = within(5, publish(&publisher, "after").await).await.unwrap();
    assert!(matches!(after, Confirmation::Ack(_)), "{after:?}");

    // Nothing was corrupted: after a power loss (only synced data survives) the store opens,
    // with the confirmed message that was never consumed, and only it.
    drop((publisher_conn, consumer_conn));
    broker.broker.shutdown().await;
    backend.crash(CrashMode::LoseUnsynced);
    let broker = TestBroker::start_with(config_on(&backend, dir.path())).await;
    let (_conn, channel) = broker.channel().await;
    let mut bodies = Vec::new();
    while let Some(message) = channel
        .basic_get(QUEUE.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        bodies.push(String::from_utf8(message.delivery.data.clone()).unwrap());
    }
    assert_eq!(bodies, ["after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_space_below_the_limit_blocks_publishers_until_the_limit_is_lowered() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = durable_config(dir.path());
    // More than any disk has: the alarm is on from the start, without filling a real disk.
    config.limits.disk_free_limit = u64::MAX / 2;
    let broker = TestBroker::start_with(config).await;
    assert!(
        broker.broker.disk_alarm(),
        "checked before the first client"
    );

    // A connection that has not published is not blocked (RabbitMQ's "blocking" state).
    let (publisher_conn, publisher) = broker.channel().await;
    let mut events = Box::pin(publisher_conn.events_listener());
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare_durable(&publisher).await;

    // Its first publish blocks it: connection.blocked, then its socket is no longer read.
    let first = publish(&publisher, "first").await;
    assert_eq!(
        next_block_event(&mut events).await.as_deref(),
        Some("low on disk")
    );
    let stalled = assert_stalled(&publisher).await;

    // Consumers are not blocked: another connection gets the message.
    let (_conn, consumer) = broker.channel().await;
    let got = within(
        5,
        consumer.basic_get(QUEUE.into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .unwrap()
    .expect("the message that was published before the block");
    assert_eq!(got.delivery.data, b"first");

    // Lowering the limit at run time (rabbitmqctl set_disk_free_limit) clears the alarm at once:
    // connection.unblocked, and publishing resumes.
    broker.broker.set_disk_free_limit(0);
    assert_eq!(next_block_event(&mut events).await, None);
    assert!(!broker.broker.disk_alarm());
    assert!(matches!(
        within(5, first).await.unwrap(),
        Confirmation::Ack(_)
    ));
    assert_eq!(within(5, stalled).await, 0);
    let next = within(5, publish(&publisher, "next").await).await.unwrap();
    assert!(matches!(next, Confirmation::Ack(_)), "{next:?}");
    let got = within(
        5,
        consumer.basic_get(QUEUE.into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .unwrap()
    .expect("published after the alarm cleared");
    assert_eq!(got.delivery.data, b"next");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_broker_on_the_same_data_folder_is_refused_until_the_first_stops() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestBroker::start_with(durable_config(dir.path())).await;
    let refused = match warren_server::start(durable_config(dir.path())).await {
        Ok(_) => panic!("two brokers share one data folder"),
        Err(error) => error,
    };
    // The whole chain, as the binary prints it ("warren: {error:#}").
    let mut text = refused.to_string();
    let mut source = std::error::Error::source(&refused);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    let lock = dir.path().join("LOCK");
    assert!(
        text.contains("is in use")
            && text.contains("another Warren process holds the lock on")
            && text.contains(&lock.display().to_string()),
        "{text}"
    );
    // The first broker is unharmed, and once it has stopped the folder opens again.
    let (_conn, channel) = first.channel().await;
    declare_durable(&channel).await;
    drop((_conn, channel));
    first.broker.shutdown().await;
    let second = TestBroker::start_with(durable_config(dir.path())).await;
    let (_conn, channel) = second.channel().await;
    let passive = QueueDeclareOptions {
        passive: true,
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(QUEUE.into(), passive, FieldTable::default())
        .await
        .unwrap();
}
