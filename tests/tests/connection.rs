//! Connection lifecycle: connection.start as RabbitMQ sends it, logins, vhosts, the handshake
//! timeout, heartbeats, graceful shutdown, and memory back-pressure.

// Helpers outside #[test] functions unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use lapin::options::*;
use lapin::types::FieldTable;
use warren_server::config::User;
use warren_tests::{
    Config, RawClient, TestBroker, declare_queue, frame, get_message, longstr, method, publish,
    shortstr, within,
};

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn connection_start_announces_rabbitmq_capabilities() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connect(broker.addr()).await;
    raw.send(b"AMQP\x00\x00\x09\x01").await;
    let start = raw.expect_method(10, 10).await;
    let p = &start.payload;
    assert_eq!(&p[4..6], &[0, 9], "version 0-9");
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        let entry = [shortstr(cap), b"t\x01".to_vec()].concat();
        assert!(contains(p, &entry), "capability {cap}");
    }
    for key in [
        "cluster_name",
        "copyright",
        "information",
        "platform",
        "product",
        "version",
    ] {
        assert!(contains(p, &shortstr(key)), "property {key}");
    }
    assert!(contains(p, &longstr(b"AMQPLAIN PLAIN")));
    assert!(p.ends_with(&longstr(b"en_US")));
}

#[tokio::test]
async fn product_and_version_are_configurable() {
    let mut config = Config::for_tests();
    config.identity.product = "RabbitMQ".into();
    config.identity.version = "3.10.8".into();
    let broker = TestBroker::start_with(config).await;
    let mut raw = RawClient::connect(broker.addr()).await;
    raw.send(b"AMQP\x00\x00\x09\x01").await;
    let start = raw.expect_method(10, 10).await;
    assert!(contains(
        &start.payload,
        &[shortstr("product"), b"S".to_vec(), longstr(b"RabbitMQ")].concat()
    ));
    assert!(contains(
        &start.payload,
        &[shortstr("version"), b"S".to_vec(), longstr(b"3.10.8")].concat()
    ));
}

#[tokio::test]
async fn amqplain_login_works() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connect(broker.addr()).await;
    raw.send(b"AMQP\x00\x00\x09\x01").await;
    raw.expect_method(10, 10).await;
    let mut response = Vec::new();
    response.extend(shortstr("LOGIN"));
    response.push(b'S');
    response.extend(longstr(b"guest"));
    response.extend(shortstr("PASSWORD"));
    response.push(b'S');
    response.extend(longstr(b"guest"));
    let args = [
        vec![0, 0, 0, 0],
        shortstr("AMQPLAIN"),
        longstr(&response),
        shortstr("en_US"),
    ]
    .concat();
    raw.send(&frame(1, 0, &method(10, 11, &args))).await;
    raw.expect_method(10, 30).await;
}

#[tokio::test]
async fn unknown_vhost_is_530() {
    let broker = TestBroker::start().await;
    let url = format!("amqp://guest:guest@{}/nope", broker.addr());
    let err = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .unwrap_err();
    assert_eq!(
        warren_tests::amqp_error(&err),
        Some((530, "NOT_ALLOWED - vhost nope not found".into()))
    );
}

#[tokio::test]
async fn configured_user_is_limited_to_its_vhosts() {
    let mut config = Config::for_tests();
    config.vhosts.push("team".into());
    config.users.push(User {
        name: "alice".into(),
        password_hash: warren_server::auth::hash_password("s3cret"),
        vhosts: vec!["team".into()],
    });
    let broker = TestBroker::start_with(config).await;
    let ok = format!("amqp://alice:s3cret@{}/team", broker.addr());
    let conn = lapin::Connection::connect(&ok, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    conn.create_channel().await.unwrap();
    let refused = format!("amqp://alice:s3cret@{}/%2f", broker.addr());
    let err = lapin::Connection::connect(&refused, lapin::ConnectionProperties::default())
        .await
        .unwrap_err();
    assert_eq!(
        warren_tests::amqp_error(&err),
        Some((
            530,
            "NOT_ALLOWED - access to vhost '/' refused for user 'alice'".into()
        ))
    );
    let wrong = format!("amqp://alice:nope@{}/team", broker.addr());
    let err = lapin::Connection::connect(&wrong, lapin::ConnectionProperties::default())
        .await
        .unwrap_err();
    assert_eq!(warren_tests::amqp_error(&err).map(|e| e.0), Some(403));
}

#[tokio::test]
async fn unfinished_handshake_is_closed_after_the_timeout() {
    let mut config = Config::for_tests();
    config.limits.handshake_timeout = Duration::from_millis(200);
    let broker = TestBroker::start_with(config).await;
    // Slowloris: the header, then nothing.
    let mut raw = RawClient::connect(broker.addr()).await;
    raw.send(b"AMQP\x00\x00").await;
    assert!(raw.closed_by_peer().await);
    // Header and start, then no start-ok.
    let mut raw = RawClient::connect(broker.addr()).await;
    raw.send(b"AMQP\x00\x00\x09\x01").await;
    raw.expect_method(10, 10).await;
    assert!(raw.closed_by_peer().await);
}

#[tokio::test]
async fn heartbeats_are_sent_and_a_silent_peer_is_closed() {
    let mut config = Config::for_tests();
    config.limits.heartbeat = 1;
    let broker = TestBroker::start_with(config).await;
    let mut raw = RawClient::handshake(broker.addr(), 2047, 131072, 1).await;
    let start = tokio::time::Instant::now();
    let hb = raw.read_frame().await.unwrap();
    assert_eq!(hb.kind, 8, "a heartbeat on an idle connection");
    assert!(start.elapsed() < Duration::from_millis(2500));
    // We never send anything: two intervals later the broker gives up.
    assert!(raw.closed_by_peer().await);
    assert!(start.elapsed() < Duration::from_secs(6));
}

#[tokio::test]
async fn shutdown_sends_320_connection_forced() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::handshake(broker.addr(), 2047, 131072, 0).await;
    let stopper = tokio::spawn(async move { broker.broker.shutdown().await });
    let close = raw.expect_method(10, 50).await;
    assert_eq!(
        close.close_reply(),
        Some((
            320,
            "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'".into()
        ))
    );
    raw.send(&frame(1, 0, &method(10, 51, b""))).await;
    assert!(raw.closed_by_peer().await);
    within(10, stopper).await.unwrap();
}

#[tokio::test]
async fn client_close_gets_close_ok() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::handshake(broker.addr(), 2047, 131072, 0).await;
    let close = [vec![0, 200], shortstr("bye"), vec![0, 0, 0, 0]].concat();
    raw.send(&frame(1, 0, &method(10, 50, &close))).await;
    raw.expect_method(10, 51).await;
    assert!(raw.closed_by_peer().await);
}

#[tokio::test]
async fn memory_alarm_blocks_publishers_until_consumers_free_memory() {
    let mut config = Config::for_tests();
    config.limits.memory_high_watermark = warren_server::memory::MemoryLimit::Absolute(64 * 1024);
    let broker = TestBroker::start_with(config).await;
    let (publisher_conn, publisher) = broker.channel().await;
    let events = publisher_conn.events_listener();
    declare_queue(&publisher, "bp").await;
    let body = vec![0u8; 16 * 1024];
    for _ in 0..5 {
        publish(&publisher, "", "bp", &body).await;
    }
    // lapin advertises connection.blocked, so it is told.
    let blocked = within(5, async {
        let mut events = std::pin::pin!(events);
        while let Some(event) = futures_lite::StreamExt::next(&mut events).await {
            if let lapin::Event::ConnectionBlocked(reason) = event {
                return reason;
            }
        }
        panic!("no connection.blocked");
    })
    .await;
    assert_eq!(blocked, "low on memory");
    // The broker stops reading the publisher: a round trip on it stalls.
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let stalled = publisher.queue_declare("bp".into(), passive, FieldTable::default());
    let mut stalled = std::pin::pin!(stalled);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut stalled)
            .await
            .is_err()
    );
    // A consumer on another connection drains the queue: the alarm clears, the publisher resumes.
    let (_conn, consumer) = broker.channel().await;
    let purged = consumer
        .queue_purge("bp".into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    assert_eq!(purged, 5);
    let declared = within(5, stalled).await.unwrap();
    assert_eq!(declared.message_count(), 0);
}

#[tokio::test]
async fn unacked_delivery_past_consumer_timeout_closes_the_channel_and_requeues() {
    let mut config = Config::for_tests();
    config.limits.consumer_timeout = Some(Duration::from_millis(200));
    let broker = TestBroker::start_with(config).await;
    let mut raw = RawClient::handshake(broker.addr(), 2047, 131072, 0).await;
    raw.open_channel(1).await;
    raw.declare_queue(1, "slow").await;
    raw.publish(1, "", "slow", &[0, 0], b"job").await;
    let _tag = raw.get(1, "slow").await;
    // Never acked: the channel is closed as RabbitMQ does.
    assert_eq!(
        raw.expect_channel_close(1).await,
        (
            406,
            "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. Timeout value used: 200 ms. This timeout value can be configured, see consumers doc guide to learn more".into()
        )
    );
    // The message is back in its queue, flagged redelivered.
    let (_conn, channel) = broker.channel().await;
    let again = get_message(&channel, "slow").await;
    assert!(again.delivery.redelivered);
}
