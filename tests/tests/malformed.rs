//! Bad input over raw TCP (rows of shared/REFERENCE.md): each case checks the exact close
//! frame and code, and that the broker keeps serving afterwards.

// Helpers outside #[test] functions unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use warren_tests::{RawClient, TestBroker, frame, method, shortstr};

/// Opens a connection and channel 1, sends `bytes`, and returns the connection.close reply.
async fn connection_close_after(broker: &TestBroker, bytes: &[u8]) -> (u16, String) {
    let mut raw = RawClient::handshake(broker.addr(), 2047, 131072, 0).await;
    raw.open_channel(1).await;
    raw.send(bytes).await;
    let close = raw.expect_method(10, 50).await;
    close.close_reply().unwrap()
}

fn publish_method(channel: u16) -> Vec<u8> {
    let args = [vec![0, 0], shortstr(""), shortstr("q"), vec![0]].concat();
    frame(1, channel, &method(60, 40, &args))
}

fn header(channel: u16, class: u16, weight: u16, body_size: u64) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&class.to_be_bytes());
    p.extend_from_slice(&weight.to_be_bytes());
    p.extend_from_slice(&body_size.to_be_bytes());
    p.extend_from_slice(&0u16.to_be_bytes());
    frame(2, channel, &p)
}

async fn still_serves(broker: &TestBroker) {
    let (_conn, channel) = broker.channel().await;
    assert!(channel.status().connected());
}

#[tokio::test]
async fn row1_non_amqp_bytes_get_our_header_and_a_close() {
    let broker = TestBroker::start().await;
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"AMQP\x00\x00\x09\x02",
        b"AMQP\x01\x01\x00\x0a",
    ] {
        let mut raw = RawClient::connect(broker.addr()).await;
        raw.send(junk).await;
        let answer = raw.read_bytes(8).await;
        assert_eq!(answer, b"AMQP\x00\x00\x09\x01", "for {junk:?}");
        assert!(raw.closed_by_peer().await);
    }
    still_serves(&broker).await;
}

#[tokio::test]
async fn row3_frame_larger_than_4096_before_tune_is_501() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connect(broker.addr()).await;
    raw.send(b"AMQP\x00\x00\x09\x01").await;
    raw.expect_method(10, 10).await;
    // A start-ok of 5000 bytes: refused from its header, before the payload is read.
    let mut big = frame(1, 0, &vec![0u8; 5000]);
    big.truncate(7);
    raw.send(&big).await;
    let close = raw.expect_method(10, 50).await;
    assert_eq!(close.close_reply().unwrap().0, 501);
}

#[tokio::test]
async fn row4_huge_declared_frame_size_is_501_without_buffering() {
    let broker = TestBroker::start().await;
    let (code, text) = connection_close_after(&broker, &[1, 0, 1, 0xFF, 0xFF, 0xFF, 0x00]).await;
    assert_eq!(code, 501, "{text}");
    still_serves(&broker).await;
}

#[tokio::test]
async fn row4_payload_above_negotiated_frame_max_is_501() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::handshake(broker.addr(), 2047, 4096, 0).await;
    raw.open_channel(1).await;
    let mut f = publish_method(1);
    f.extend(header(1, 60, 0, 5000));
    f.extend(frame(3, 1, &vec![b'x'; 5000]));
    raw.send(&f).await;
    let close = raw.expect_method(10, 50).await;
    assert_eq!(close.close_reply().unwrap().0, 501);
}

#[tokio::test]
async fn row5_bad_frame_end_and_unknown_type_are_501() {
    let broker = TestBroker::start().await;
    let mut bad_end = frame(1, 1, &method(20, 10, &shortstr("")));
    *bad_end.last_mut().unwrap() = 0xFF;
    assert_eq!(connection_close_after(&broker, &bad_end).await.0, 501);
    assert_eq!(
        connection_close_after(&broker, &frame(9, 0, b"abc"))
            .await
            .0,
        501
    );
    still_serves(&broker).await;
}

#[tokio::test]
async fn row6_frames_shorter_than_their_fixed_fields_are_501() {
    let broker = TestBroker::start().await;
    assert_eq!(
        connection_close_after(&broker, &frame(1, 1, b"\x00"))
            .await
            .0,
        501
    );
    assert_eq!(
        connection_close_after(&broker, &frame(2, 1, b"\x00\x3c"))
            .await
            .0,
        501
    );
}

#[tokio::test]
async fn row7_heartbeat_on_a_channel_is_505() {
    let broker = TestBroker::start().await;
    let reply = connection_close_after(&broker, &frame(8, 1, b"")).await;
    assert_eq!(
        reply,
        (505, "UNEXPECTED_FRAME - type 8, all octets = <<>>".into())
    );
}

#[tokio::test]
async fn row8_method_on_unopened_channel_is_504() {
    let broker = TestBroker::start().await;
    let declare = [vec![0, 0], shortstr("q"), vec![0], vec![0, 0, 0, 0]].concat();
    let reply = connection_close_after(&broker, &frame(1, 2, &method(50, 10, &declare))).await;
    assert_eq!(
        reply,
        (504, "CHANNEL_ERROR - expected 'channel.open'".into())
    );
}

#[tokio::test]
async fn row8_reopening_an_open_channel_is_504() {
    let broker = TestBroker::start().await;
    let reply = connection_close_after(&broker, &frame(1, 1, &method(20, 10, &shortstr("")))).await;
    assert_eq!(
        reply,
        (504, "CHANNEL_ERROR - second 'channel.open' seen".into())
    );
}

#[tokio::test]
async fn row8_channel_above_channel_max_is_530() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::handshake(broker.addr(), 10, 131072, 0).await;
    raw.send(&frame(1, 11, &method(20, 10, &shortstr(""))))
        .await;
    let close = raw.expect_method(10, 50).await;
    assert_eq!(close.close_reply().unwrap().0, 530);
}

#[tokio::test]
async fn row9_many_channels_open_and_close() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::handshake(broker.addr(), 2047, 131072, 0).await;
    for n in 1..=2047u16 {
        raw.send(&frame(1, n, &method(20, 10, &shortstr("")))).await;
    }
    for _ in 1..=2047u16 {
        raw.expect_method(20, 11).await;
    }
    for n in 1..=2047u16 {
        let close = [vec![0, 200], shortstr("bye"), vec![0, 0, 0, 0]].concat();
        raw.send(&frame(1, n, &method(20, 40, &close))).await;
    }
    for _ in 1..=2047u16 {
        raw.expect_method(20, 41).await;
    }
}

#[tokio::test]
async fn row10_tune_ok_outside_the_proposal_is_530() {
    let broker = TestBroker::start().await;
    for (channel_max, frame_max, text) in [
        (
            2047,
            1000,
            "NOT_ALLOWED - negotiated frame_max = 1000 is lower than the minimum allowed value (4096)",
        ),
        (
            2047,
            200_000,
            "NOT_ALLOWED - negotiated frame_max = 200000 is higher than the maximum allowed value (131072)",
        ),
        (
            3000,
            131072,
            "NOT_ALLOWED - negotiated channel_max = 3000 is higher than the maximum allowed value (2047)",
        ),
    ] {
        let mut raw = RawClient::connect(broker.addr()).await;
        raw.send(b"AMQP\x00\x00\x09\x01").await;
        raw.expect_method(10, 10).await;
        raw.send_start_ok(b"\0guest\0guest", true).await;
        raw.expect_method(10, 30).await;
        raw.send_tune_ok(channel_max, frame_max, 0).await;
        let close = raw.expect_method(10, 50).await;
        assert_eq!(close.close_reply(), Some((530, text.to_string())));
    }
}

#[tokio::test]
async fn row11_unknown_method_and_truncated_fields_close_the_connection() {
    let broker = TestBroker::start().await;
    assert_eq!(
        connection_close_after(&broker, &frame(1, 1, &method(99, 99, b"")))
            .await
            .0,
        540
    );
    assert_eq!(
        connection_close_after(&broker, &frame(1, 1, &method(50, 10, b"\x00")))
            .await
            .0,
        501
    );
    still_serves(&broker).await;
}

#[tokio::test]
async fn row12_bad_field_table_is_a_typed_error() {
    let broker = TestBroker::start().await;
    // queue.declare whose arguments table claims more bytes than the frame has.
    let args = [
        vec![0, 0],
        shortstr("q"),
        vec![0],
        vec![0, 0, 0, 50],
        b"\x01kZ".to_vec(),
    ]
    .concat();
    let reply = connection_close_after(&broker, &frame(1, 1, &method(50, 10, &args))).await;
    assert_eq!(reply.0, 501);
}

#[tokio::test]
async fn row13_content_frames_out_of_place_are_505() {
    let broker = TestBroker::start().await;
    let body_first = frame(3, 1, b"xx");
    assert_eq!(
        connection_close_after(&broker, &body_first).await,
        (
            505,
            "UNEXPECTED_FRAME - expected method frame, got non method frame instead".into()
        )
    );
    let mut method_in_content = publish_method(1);
    method_in_content.extend(publish_method(1));
    assert_eq!(
        connection_close_after(&broker, &method_in_content).await,
        (505, "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead".into())
    );
    let mut other_class = publish_method(1);
    other_class.extend(header(1, 50, 0, 2));
    assert_eq!(
        connection_close_after(&broker, &other_class).await,
        (
            505,
            "UNEXPECTED_FRAME - expected content header for class 60, got one for class 50 instead"
                .into()
        )
    );
    let mut too_long = publish_method(1);
    too_long.extend(header(1, 60, 0, 2));
    too_long.extend(frame(3, 1, b"xxx"));
    assert_eq!(connection_close_after(&broker, &too_long).await.0, 501);
}

#[tokio::test]
async fn row14_declared_body_above_max_message_size_is_406_at_header_time() {
    let mut config = warren_tests::Config::for_tests();
    config.limits.max_message_size = 1000;
    let broker = TestBroker::start_with(config).await;
    let mut raw = RawClient::handshake(broker.addr(), 2047, 131072, 0).await;
    raw.open_channel(1).await;
    let mut f = publish_method(1);
    f.extend(header(1, 60, 0, 1001));
    raw.send(&f).await;
    // No body was sent: the answer comes from the header alone.
    let close = raw.expect_method(20, 40).await;
    assert_eq!(
        close.close_reply(),
        Some((
            406,
            "PRECONDITION_FAILED - message size 1001 is larger than configured max size 1000"
                .into()
        ))
    );
}

#[tokio::test]
async fn row15_body_in_one_byte_frames_is_accepted() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::handshake(broker.addr(), 2047, 131072, 0).await;
    raw.open_channel(1).await;
    let declare = [vec![0, 0], shortstr("row15"), vec![0], vec![0, 0, 0, 0]].concat();
    raw.send(&frame(1, 1, &method(50, 10, &declare))).await;
    raw.expect_method(50, 11).await;
    let body = b"one byte at a time";
    let publish = [vec![0, 0], shortstr(""), shortstr("row15"), vec![0]].concat();
    let mut f = frame(1, 1, &method(60, 40, &publish));
    f.extend(header(1, 60, 0, body.len() as u64));
    for b in body {
        f.extend(frame(3, 1, &[*b]));
    }
    raw.send(&f).await;
    let get = [vec![0, 0], shortstr("row15"), vec![1]].concat();
    raw.send(&frame(1, 1, &method(60, 70, &get))).await;
    raw.expect_method(60, 71).await;
    let header = raw.read_frame().await.unwrap();
    assert_eq!(header.kind, 2);
    let body_frame = raw.read_frame().await.unwrap();
    assert_eq!(body_frame.payload, body);
}

#[tokio::test]
async fn row21_unknown_mechanism_is_503_and_bad_password_403() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connect(broker.addr()).await;
    raw.send(b"AMQP\x00\x00\x09\x01").await;
    raw.expect_method(10, 10).await;
    let args = [
        vec![0, 0, 0, 0],
        shortstr("CRAM-MD5"),
        vec![0, 0, 0, 0],
        shortstr("en_US"),
    ]
    .concat();
    raw.send(&frame(1, 0, &method(10, 11, &args))).await;
    let close = raw.expect_method(10, 50).await;
    assert_eq!(
        close.close_reply(),
        Some((
            503,
            "COMMAND_INVALID - unknown authentication mechanism 'CRAM-MD5'".into()
        ))
    );

    for response in [&b"\0guest\0wrong"[..], b"no nul bytes"] {
        let mut raw = RawClient::connect(broker.addr()).await;
        raw.send(b"AMQP\x00\x00\x09\x01").await;
        raw.expect_method(10, 10).await;
        raw.send_start_ok(response, true).await;
        let close = raw.expect_method(10, 50).await;
        assert_eq!(close.close_reply().unwrap().0, 403);
    }
}

#[tokio::test]
async fn row21_bad_password_without_the_capability_just_closes() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connect(broker.addr()).await;
    raw.send(b"AMQP\x00\x00\x09\x01").await;
    raw.expect_method(10, 10).await;
    raw.send_start_ok(b"\0guest\0wrong", false).await;
    assert_eq!(raw.read_frame().await, None, "no close frame, just EOF");
}

#[tokio::test]
async fn row1_amqp_0_9_header_is_served_as_0_9_1() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connect(broker.addr()).await;
    raw.send(b"AMQP\x01\x01\x00\x09").await;
    raw.expect_method(10, 10).await;
}

#[tokio::test]
async fn row2_unauthenticated_connections_per_address_are_capped() {
    let mut config = warren_tests::Config::for_tests();
    config.limits.max_unauthenticated_per_ip = 2;
    let broker = TestBroker::start_with(config).await;
    // Two clients stall in the handshake.
    let mut first = RawClient::connect(broker.addr()).await;
    first.send(b"AMQP\x00\x00\x09\x01").await;
    first.expect_method(10, 10).await;
    let mut second = RawClient::connect(broker.addr()).await;
    second.send(b"AMQP\x00\x00\x09\x01").await;
    second.expect_method(10, 10).await;
    // A third from the same address is closed without a word.
    let mut third = RawClient::connect(broker.addr()).await;
    assert!(third.closed_by_peer().await);
    // Once one of them finishes the handshake, a new client is served again.
    first.send_start_ok(b"\0guest\0guest", true).await;
    first.expect_method(10, 30).await;
    first.send_tune_ok(2047, 131072, 0).await;
    first
        .send(&frame(
            1,
            0,
            &method(10, 40, &[shortstr("/"), shortstr(""), vec![0]].concat()),
        ))
        .await;
    first.expect_method(10, 41).await;
    let mut fourth = RawClient::connect(broker.addr()).await;
    fourth.send(b"AMQP\x00\x00\x09\x01").await;
    fourth.expect_method(10, 10).await;
}
