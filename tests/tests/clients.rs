//! A second client library (amqprs) and a second listener family (IPv6), so that Warren is
//! not only tested against lapin's habits and IPv4.

// Helpers outside #[test] functions unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use amqprs::BasicProperties;
use amqprs::channel::{BasicGetArguments, BasicPublishArguments, QueueDeclareArguments};
use amqprs::connection::{Connection, OpenConnectionArguments};
use warren_tests::{Config, TestBroker};

#[tokio::test]
async fn amqprs_declares_publishes_and_gets() {
    let broker = TestBroker::start().await;
    let addr = broker.addr();
    let conn = Connection::open(&OpenConnectionArguments::new(
        &addr.ip().to_string(),
        addr.port(),
        "guest",
        "guest",
    ))
    .await
    .unwrap();
    let channel = conn.open_channel(None).await.unwrap();
    let (queue, _, _) = channel
        .queue_declare(QueueDeclareArguments::new("amqprs.q"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(queue, "amqprs.q");
    let mut props = BasicProperties::default();
    props
        .with_content_type("application/json")
        .with_message_id("m-1");
    channel
        .basic_publish(
            props,
            b"{\"n\":1}".to_vec(),
            BasicPublishArguments::new("", "amqprs.q"),
        )
        .await
        .unwrap();
    let got = loop {
        let mut args = BasicGetArguments::new("amqprs.q");
        args.no_ack(true);
        if let Some(message) = channel.basic_get(args).await.unwrap() {
            break message;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    let (get_ok, properties, body) = got;
    assert_eq!(body, b"{\"n\":1}");
    assert_eq!(
        properties.content_type().map(String::as_str),
        Some("application/json")
    );
    assert_eq!(properties.message_id().map(String::as_str), Some("m-1"));
    assert!(!get_ok.redelivered());
    conn.close().await.unwrap();
}

#[tokio::test]
async fn listens_on_ipv6_and_several_addresses() {
    let mut config = Config::for_tests();
    config.listeners = vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()];
    let broker = TestBroker::start_with(config).await;
    let addrs = broker.broker.local_addrs().to_vec();
    assert_eq!(addrs.len(), 2);
    assert!(addrs[1].is_ipv6());
    // lapin's URI parser does not take IPv6 literals: go through the raw client, which runs
    // the whole handshake (guest is allowed: ::1 is loopback).
    for addr in addrs {
        let mut raw = warren_tests::RawClient::handshake(addr, 2047, 131072, 0).await;
        raw.open_channel(1).await;
    }
}
