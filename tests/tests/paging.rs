//! Backlogs beyond the memory budget: with a small budget, a backlog several times larger is
//! held with its bodies paged out (to the message log or the spill log), the memory account
//! stays within the budget, and every message comes back in order and intact: persistent and
//! transient messages, durable and transient queues, and after a restart for durable ones.

// Helpers outside #[test] functions unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, ExchangeKind};
use warren_server::memory::{MemoryLimit, MemoryReport};
use warren_tests::{Config, TestBroker, within};

/// The budget: 2 MiB, so paging starts at 1 MiB.
const BUDGET: u64 = 2 << 20;
/// Messages in each backlog: 6 MiB of bodies, three times the budget.
const BACKLOG: u64 = 6000;
const BODY: usize = 1024;

fn paging_config(dir: &std::path::Path) -> Config {
    let mut config = Config::for_tests();
    config.ephemeral = false;
    config.data_dir = dir.to_path_buf();
    config.limits.memory_high_watermark = MemoryLimit::Absolute(BUDGET);
    config.limits.memory_paging_ratio = 0.5;
    config
}

/// Message `n`: its number, then bytes that depend on it, so a mixed-up or damaged body shows.
fn body(n: u64) -> Vec<u8> {
    let mut body = n.to_be_bytes().to_vec();
    body.extend((0..BODY - 8).map(|i| (n as usize * 31 + i) as u8));
    body
}

fn number(body: &[u8]) -> u64 {
    u64::from_be_bytes(body[..8].try_into().unwrap())
}

fn properties(persistent: bool) -> BasicProperties {
    BasicProperties::default().with_delivery_mode(if persistent { 2 } else { 1 })
}

/// Publishes the messages `numbers` with confirms (a window of 500), each persistent or not
/// as `persistent` says.
async fn publish(
    channel: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    numbers: impl Iterator<Item = u64>,
    persistent: impl Fn(u64) -> bool,
) {
    let mut pending = Vec::new();
    for n in numbers {
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                &body(n),
                properties(persistent(n)),
            )
            .await
            .unwrap();
        pending.push(confirm);
        if pending.len() == 500 {
            for confirm in pending.drain(..) {
                assert_eq!(within(30, confirm).await.unwrap(), Confirmation::Ack(None));
            }
        }
    }
    for confirm in pending {
        assert_eq!(within(30, confirm).await.unwrap(), Confirmation::Ack(None));
    }
}

/// Waits until the pager has paged out all but at most `resident` of `backlog` messages and
/// the account is back under the paging threshold, then checks the account against the budget.
async fn wait_until_paged(broker: &TestBroker, backlog: u64, resident: u64) -> MemoryReport {
    let report = within(60, async {
        loop {
            let report = broker.broker.memory_report();
            if report.paged_messages as u64 + resident >= backlog
                && report.used <= report.paging_threshold
            {
                return report;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(report.limit as u64, BUDGET);
    assert_eq!(report.paging_threshold as u64, BUDGET / 2);
    assert!(!report.alarm);
    // Bodies held in memory: only the windows at the queues' heads.
    let resident_bodies = report.body_bytes - report.paged_bytes;
    assert!(
        resident_bodies as u64 <= resident * BODY as u64,
        "{report:?}"
    );
    assert!(
        report.body_bytes as u64 >= backlog * BODY as u64,
        "every body still counted: {report:?}"
    );
    report
}

/// Consumes `expected` from `queue` (manual acks, prefetch 200, or no-ack) and checks each
/// message: order, body, persistence, not redelivered.
async fn consume_in_order(
    channel: &lapin::Channel,
    queue: &str,
    expected: &[u64],
    persistent: impl Fn(u64) -> bool,
    no_ack: bool,
) {
    channel
        .basic_qos(200, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    for &n in expected {
        let delivery = within(30, consumer.next()).await.unwrap().unwrap();
        assert_eq!(number(&delivery.data), n, "order in {queue}");
        assert!(delivery.data == body(n), "body of message {n} in {queue}");
        assert_eq!(
            delivery.properties.delivery_mode(),
            &Some(if persistent(n) { 2 } else { 1 }),
            "delivery mode of message {n}"
        );
        assert!(!delivery.redelivered, "message {n} in {queue}");
        if !no_ack {
            delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
    }
    channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await
        .unwrap();
}

async fn declare(channel: &lapin::Channel, queue: &str, durable: bool) {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
}

/// Waits until the queues hold nothing any more, in memory or on disk.
async fn wait_until_empty(broker: &TestBroker) {
    within(30, async {
        loop {
            let report = broker.broker.memory_report();
            if report.body_bytes == 0 && report.paged_messages == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// One backlog three times the budget on one queue, paged, then drained in order.
async fn backlog_round_trip(durable: bool, persistent: bool, no_ack: bool) {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_with(paging_config(dir.path())).await;
    let (_conn, channel) = broker.channel().await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare(&channel, "backlog", durable).await;
    publish(&channel, "", "backlog", 0..BACKLOG, |_| persistent).await;
    // The window is a quarter of the paging threshold: about 190 messages of 1 KiB; allow a
    // tick's worth of slack on top.
    let report = wait_until_paged(&broker, BACKLOG, 512).await;
    assert!(report.used as u64 <= BUDGET / 2, "{report:?}");
    let all: Vec<u64> = (0..BACKLOG).collect();
    consume_in_order(&channel, "backlog", &all, |_| persistent, no_ack).await;
    wait_until_empty(&broker).await;
    broker.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_messages_on_a_durable_queue_page_to_the_log() {
    backlog_round_trip(true, true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_messages_on_a_durable_queue_spill() {
    backlog_round_trip(true, false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_messages_on_a_transient_queue_spill() {
    backlog_round_trip(false, true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_messages_on_a_transient_queue_spill_and_drain_with_no_ack() {
    backlog_round_trip(false, false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fanned_out_backlog_pages_out_of_every_queue() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_with(paging_config(dir.path())).await;
    let (_conn, channel) = broker.channel().await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
        .exchange_declare(
            "paging.fan".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // One durable and one transient queue share each body.
    for (queue, durable) in [("fan.durable", true), ("fan.transient", false)] {
        declare(&channel, queue, durable).await;
        channel
            .queue_bind(
                queue.into(),
                "paging.fan".into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    let half = BACKLOG / 2;
    let persistent = |n: u64| n.is_multiple_of(2);
    publish(&channel, "paging.fan", "", 0..half, persistent).await;
    wait_until_paged(&broker, 2 * half, 1024).await;
    let all: Vec<u64> = (0..half).collect();
    for queue in ["fan.durable", "fan.transient"] {
        consume_in_order(&channel, queue, &all, persistent, false).await;
    }
    wait_until_empty(&broker).await;
    broker.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paged_backlog_survives_a_restart_with_its_persistent_messages_in_order() {
    let dir = tempfile::tempdir().unwrap();
    // Every third message is transient: it spills while the broker runs and is gone after the
    // restart; the persistent ones come back in order.
    let persistent = |n: u64| !n.is_multiple_of(3);
    {
        let broker = TestBroker::start_with(paging_config(dir.path())).await;
        let (_conn, channel) = broker.channel().await;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        declare(&channel, "kept", true).await;
        publish(&channel, "", "kept", 0..BACKLOG, persistent).await;
        wait_until_paged(&broker, BACKLOG, 512).await;
        // Take the first 100 out before the restart (one by one, so that no other message is
        // delivered and comes back flagged redelivered): they must not come back.
        for n in 0..100 {
            let message = channel
                .basic_get("kept".into(), BasicGetOptions::default())
                .await
                .unwrap()
                .unwrap();
            assert!(message.delivery.data == body(n), "message {n}");
            message
                .delivery
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
        }
        broker.broker.shutdown().await;
    }
    let broker = TestBroker::start_with(paging_config(dir.path())).await;
    let kept: Vec<u64> = (100..BACKLOG).filter(|&n| persistent(n)).collect();
    // Recovery loads the first bodies; the pager pages them out again.
    wait_until_paged(&broker, kept.len() as u64, 512).await;
    let (_conn, channel) = broker.channel().await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = channel
        .queue_declare("kept".into(), passive, FieldTable::default())
        .await
        .unwrap();
    assert_eq!(u64::from(declared.message_count()), kept.len() as u64);
    consume_in_order(&channel, "kept", &kept, |_| true, false).await;
    wait_until_empty(&broker).await;
    broker.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priority_queue_pages_every_level_and_delivers_highest_first() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_with(paging_config(dir.path())).await;
    let (_conn, channel) = broker.channel().await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-max-priority".into(),
        lapin::types::AMQPValue::ShortInt(2),
    );
    channel
        .queue_declare(
            "prio".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .unwrap();
    let mut pending = Vec::new();
    for n in 0..BACKLOG {
        let priority = (n % 3) as u8;
        let confirm = channel
            .basic_publish(
                "".into(),
                "prio".into(),
                BasicPublishOptions::default(),
                &body(n),
                properties(true).with_priority(priority),
            )
            .await
            .unwrap();
        pending.push(confirm);
    }
    for confirm in pending {
        assert_eq!(within(30, confirm).await.unwrap(), Confirmation::Ack(None));
    }
    wait_until_paged(&broker, BACKLOG, 1024).await;
    let mut expected: Vec<u64> = Vec::new();
    for priority in [2, 1, 0] {
        expected.extend((0..BACKLOG).filter(|n| n % 3 == priority));
    }
    consume_in_order(&channel, "prio", &expected, |_| true, false).await;
    wait_until_empty(&broker).await;
    broker.broker.shutdown().await;
}
