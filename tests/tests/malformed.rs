//! Bad input over raw TCP (rows of shared/REFERENCE.md): each case checks the exact close
//! frame and code, and that the broker keeps serving afterwards.

// Helpers outside #[test] functions unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use tokio::time::Instant;
use warren_tests::{Config, RawClient, TestBroker, declare_queue, frame, method, shortstr, within};

/// Opens a connection and channel 1, sends `bytes`, and returns the connection.close reply,
/// after checking that the broker still serves another client.
async fn connection_close_after(broker: &TestBroker, bytes: &[u8]) -> (u16, String) {
    let mut raw = RawClient::handshake(broker.addr(), 2047, 131072, 0).await;
    raw.open_channel(1).await;
    raw.send(bytes).await;
    let close = raw.expect_method(10, 50).await;
    still_serves(broker).await;
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
    let mut raw = RawClient::started(broker.addr()).await;
    // A start-ok of 5000 bytes: refused from its header, before the payload is read.
    let mut big = frame(1, 0, &vec![0u8; 5000]);
    big.truncate(7);
    raw.send(&big).await;
    let close = raw.expect_method(10, 50).await;
    assert_eq!(close.close_reply().unwrap().0, 501);
    still_serves(&broker).await;
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
        let mut raw = RawClient::started(broker.addr()).await;
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
    let mut weighted = publish_method(1);
    weighted.extend(header(1, 60, 1, 2));
    assert_eq!(connection_close_after(&broker, &weighted).await.0, 505);
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
    // Above RabbitMQ's hard cap of 512 MiB the same header is a connection error.
    let mut f = publish_method(1);
    f.extend(header(1, 60, 0, 600 << 20));
    let (code, text) = connection_close_after(&broker, &f).await;
    assert_eq!(code, 501, "{text}");
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

/// `connection.start-ok` asking for a mechanism the broker does not offer.
fn cram_md5_start_ok() -> Vec<u8> {
    let args = [
        vec![0, 0, 0, 0],
        shortstr("CRAM-MD5"),
        vec![0, 0, 0, 0],
        shortstr("en_US"),
    ]
    .concat();
    frame(1, 0, &method(10, 11, &args))
}

#[tokio::test]
async fn row21_unknown_mechanism_is_503_and_bad_password_403() {
    let broker = broker_with_auth_delay(Duration::from_millis(100)).await;
    let mut raw = RawClient::started(broker.addr()).await;
    raw.send(&cram_md5_start_ok()).await;
    let close = raw.expect_method(10, 50).await;
    assert_eq!(
        close.close_reply(),
        Some((
            503,
            "COMMAND_INVALID - unknown authentication mechanism 'CRAM-MD5'".into()
        ))
    );

    for response in [&b"\0guest\0wrong"[..], b"no nul bytes"] {
        let mut raw = RawClient::started(broker.addr()).await;
        raw.send_start_ok(response, true).await;
        let close = raw.expect_method(10, 50).await;
        assert_eq!(close.close_reply().unwrap().0, 403);
    }
}

#[tokio::test]
async fn row21_bad_password_without_the_capability_just_closes() {
    let broker = broker_with_auth_delay(Duration::from_millis(100)).await;
    let mut raw = RawClient::started(broker.addr()).await;
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

/// Two clients (from `first_ip` and `second_ip`) stall in the handshake; a third, from
/// `third_ip`, is closed without a word; once the first opens, a new third is served.
async fn check_unauthenticated_cap(config: Config, ips: [IpAddr; 3]) {
    let broker = TestBroker::start_with(config).await;
    let mut first = RawClient::connect_from(broker.addr(), ips[0]).await;
    first.begin().await;
    let mut second = RawClient::connect_from(broker.addr(), ips[1]).await;
    second.begin().await;
    let mut third = RawClient::connect_from(broker.addr(), ips[2]).await;
    assert!(third.closed_by_peer().await);
    // Once one of them finishes the handshake, a new client is served again.
    first.send_start_ok(b"\0guest\0guest", true).await;
    first.expect_method(10, 30).await;
    first.send_tune_ok(2047, 131072, 0).await;
    first.send_open().await;
    first.expect_method(10, 41).await;
    let mut fourth = RawClient::connect_from(broker.addr(), ips[2]).await;
    fourth.begin().await;
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

#[tokio::test]
async fn row2_unauthenticated_connections_per_address_are_capped() {
    let mut config = Config::for_tests();
    config.limits.max_unauthenticated_per_ip = 2;
    check_unauthenticated_cap(config, [loopback(1); 3]).await;
}

#[tokio::test]
async fn row2_unauthenticated_connections_from_all_addresses_are_capped() {
    let mut config = Config::for_tests();
    config.limits.max_unauthenticated_per_ip = 1;
    config.limits.max_unauthenticated = 2;
    // Three addresses, one connection each: under the per-address cap, over the total one.
    check_unauthenticated_cap(config, [loopback(2), loopback(3), loopback(4)]).await;
}

#[tokio::test]
async fn row2_header_sent_byte_by_byte_does_not_extend_the_handshake_timeout() {
    let mut config = Config::for_tests();
    config.limits.handshake_timeout = Duration::from_millis(500);
    let broker = TestBroker::start_with(config).await;
    let mut raw = RawClient::connect(broker.addr()).await;
    let start = Instant::now();
    // One byte of a start-ok every 100 ms: steady progress, never a whole frame in time.
    raw.begin().await;
    let start_ok = frame(1, 0, &method(10, 11, &[0u8; 200]));
    for byte in start_ok.iter().take(40) {
        if raw.stream.try_write(&[*byte]).is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(raw.closed_by_peer().await);
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_millis(4000),
        "closed after {elapsed:?}, not at the 500 ms deadline"
    );
    still_serves(&broker).await;
}

/// A broker whose refused logins are answered after `delay`.
async fn broker_with_auth_delay(delay: Duration) -> TestBroker {
    let mut config = Config::for_tests();
    config.limits.auth_failure_delay = delay;
    TestBroker::start_with(config).await
}

#[tokio::test]
async fn row21_refused_login_is_answered_only_after_the_delay() {
    let delay = Duration::from_millis(400);
    let broker = broker_with_auth_delay(delay).await;
    // Wrong password, from a client that wants the 403; a tune-ok pipelined behind the
    // start-ok must not be answered early either (that would give the verdict away).
    let mut raw = RawClient::started(broker.addr()).await;
    let start = Instant::now();
    raw.send_start_ok(b"\0guest\0wrong", true).await;
    raw.send_tune_ok(2047, 131072, 0).await;
    let close = raw.expect_method(10, 50).await;
    assert!(start.elapsed() >= delay, "403 after {:?}", start.elapsed());
    assert_eq!(
        close.close_reply(),
        Some((
            403,
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile.".into()
        ))
    );
    // The client answers close-ok and the socket closes.
    raw.send(&frame(1, 0, &method(10, 51, b""))).await;
    assert!(raw.closed_by_peer().await);

    // Without the capability: no frame, the socket closes after the delay.
    let mut raw = RawClient::started(broker.addr()).await;
    let start = Instant::now();
    raw.send_start_ok(b"\0guest\0wrong", false).await;
    assert_eq!(raw.read_frame().await, None, "no close frame, just EOF");
    assert!(start.elapsed() >= delay, "EOF after {:?}", start.elapsed());

    // An unknown mechanism is refused the same way.
    let mut raw = RawClient::started(broker.addr()).await;
    let start = Instant::now();
    raw.send(&cram_md5_start_ok()).await;
    let close = raw.expect_method(10, 50).await;
    assert!(start.elapsed() >= delay, "503 after {:?}", start.elapsed());
    assert_eq!(close.close_reply().unwrap().0, 503);
}

#[tokio::test]
async fn row21_refused_login_keeps_its_handshake_slot_and_others_are_served() {
    let mut config = Config::for_tests();
    let delay = Duration::from_secs(3);
    config.limits.auth_failure_delay = delay;
    config.limits.max_unauthenticated_per_ip = 1;
    let broker = TestBroker::start_with(config).await;
    let guesser = loopback(5);
    let mut raw = RawClient::connect_from(broker.addr(), guesser).await;
    raw.begin().await;
    raw.send_start_ok(b"\0guest\0wrong", true).await;
    // While the refusal waits, the guesser's address may not start another attempt ...
    let mut next_guess = RawClient::connect_from(broker.addr(), guesser).await;
    assert!(next_guess.closed_by_peer().await);
    // ... but everybody else logs in meanwhile.
    let start = Instant::now();
    still_serves(&broker).await;
    assert!(start.elapsed() < delay);
    assert_eq!(
        raw.expect_method(10, 50).await.close_reply().unwrap().0,
        403
    );
    drop(raw);
    // The slot is free again once the refused connection is gone.
    let mut later = RawClient::connect_from(broker.addr(), guesser).await;
    within(5, async {
        loop {
            later.send(b"AMQP\x00\x00\x09\x01").await;
            if later.read_frame().await.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            later = RawClient::connect_from(broker.addr(), guesser).await;
        }
    })
    .await;
}

/// Declares `queue` and publishes `count` messages of `size` bytes to it through lapin.
async fn fill_queue(broker: &TestBroker, queue: &str, count: usize, size: usize) {
    let (_conn, channel) = broker.channel().await;
    declare_queue(&channel, queue).await;
    let body = vec![b'x'; size];
    for _ in 0..count {
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body,
                lapin::BasicProperties::default(),
            )
            .await
            .unwrap();
    }
    assert_eq!(ready(broker, queue).await, count);
}

/// Messages ready in `queue`, seen from a fresh lapin connection.
async fn ready(broker: &TestBroker, queue: &str) -> usize {
    let (_conn, channel) = broker.channel().await;
    warren_tests::message_count(&channel, queue).await as usize
}

#[tokio::test]
async fn row16_consumer_that_never_reads_stops_getting_deliveries_and_is_closed() {
    let broker = TestBroker::start().await;
    let (count, size) = (600, 64 * 1024);
    fill_queue(&broker, "row16", count, size).await;
    // A consumer with heartbeats on that keeps sending its heartbeats but never reads.
    let mut raw = RawClient::connect_small_window(broker.addr()).await;
    raw.login(2047, 131072, 1).await;
    raw.open_channel(1).await;
    let consume = [
        vec![0, 0],
        shortstr("row16"),
        shortstr("stalled"),
        vec![0],
        vec![0, 0, 0, 0],
    ]
    .concat();
    raw.send(&frame(1, 1, &method(60, 20, &consume))).await;
    let mut stream = raw.stream;
    let heartbeats = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        for _ in 0..60 {
            if stream.write_all(&frame(8, 0, b"")).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        false
    });
    // Deliveries stop once the connection's output is backed up: most messages stay ready.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let waiting = ready(&broker, "row16").await;
    assert!(
        waiting > count / 2,
        "{waiting} of {count} ready: the broker kept buffering deliveries"
    );
    // Two heartbeat intervals without the socket taking any output: the broker closes the
    // connection, although the client's heartbeats keep arriving, and requeues its deliveries.
    within(10, async {
        while ready(&broker, "row16").await != count {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        within(20, heartbeats).await.unwrap(),
        "the socket was closed"
    );
}

#[tokio::test]
async fn row16_requests_whose_replies_are_never_read_stop_being_read() {
    let broker = TestBroker::start().await;
    // A long queue name makes every passive declare-ok as big as its request.
    let name = "q".repeat(255);
    let (_conn, channel) = broker.channel().await;
    declare_queue(&channel, &name).await;
    let mut raw = RawClient::connect_small_window(broker.addr()).await;
    raw.login(2047, 131072, 0).await;
    raw.open_channel(1).await;
    let passive = [vec![0, 0], shortstr(&name), vec![1], vec![0, 0, 0, 0]].concat();
    let request = frame(1, 1, &method(50, 10, &passive));
    let chunk: Vec<u8> = request.repeat((1 << 20) / request.len());
    // Write requests and read nothing, until the broker stops taking them.
    let limit = 96 << 20;
    let mut written = 0usize;
    while written < limit {
        use tokio::io::AsyncWriteExt;
        match tokio::time::timeout(Duration::from_secs(2), raw.stream.write_all(&chunk)).await {
            Ok(result) => {
                result.unwrap();
                written += chunk.len();
            }
            Err(_) => break,
        }
    }
    assert!(
        written < limit,
        "the broker read {written} bytes of requests whose replies nobody read"
    );
    still_serves(&broker).await;
}

/// A log sink shared with the test: every line the broker logs, as text.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn row24_logs_hold_no_credentials_and_client_strings_cannot_forge_lines() {
    // Everything the broker logs, down to trace, on this (current-thread) runtime.
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut config = Config::for_tests();
    config.users.push(warren_server::config::User {
        name: "alice".into(),
        password_hash: warren_server::auth::hash_password("s3cret-Pa55"),
        vhosts: Vec::new(),
    });
    let broker = TestBroker::start_with(config).await;
    // A good login and a wrong guess.
    for password in ["s3cret-Pa55", "wr0ng-Gue55"] {
        let mut raw = RawClient::started(broker.addr()).await;
        raw.send_start_ok(format!("\0alice\0{password}").as_bytes(), true)
            .await;
        raw.read_frame().await.unwrap();
    }
    // Client strings with line breaks: a queue name in an error text, and a close text.
    let mut raw = RawClient::handshake(broker.addr(), 2047, 131072, 0).await;
    raw.open_channel(1).await;
    let passive = [
        vec![0, 0],
        shortstr("q\nINFO forged: queue"),
        vec![1],
        vec![0, 0, 0, 0],
    ]
    .concat();
    raw.send(&frame(1, 1, &method(50, 10, &passive))).await;
    assert_eq!(raw.expect_channel_close(1).await.0, 404);
    let close = [
        vec![0, 200],
        shortstr("bye\nINFO forged: close"),
        vec![0, 0, 0, 0],
    ]
    .concat();
    raw.send(&frame(1, 0, &method(10, 50, &close))).await;
    raw.expect_method(10, 51).await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("login refused"),
        "the refusal is logged:\n{logs}"
    );
    assert!(logs.contains("frame"), "frames are traced:\n{logs}");
    for secret in ["s3cret-Pa55", "wr0ng-Gue55"] {
        assert!(!logs.contains(secret), "{secret} in the logs:\n{logs}");
    }
    assert!(logs.contains("forged"), "the strings are logged:\n{logs}");
    assert!(
        logs.lines().all(|line| !line.starts_with("INFO forged")),
        "a client string started a log line:\n{logs}"
    );
}

#[tokio::test]
async fn row17_names_that_are_not_utf8_are_501_as_in_rabbitmq() {
    let broker = TestBroker::start().await;
    let bad = |prefix: &[u8]| {
        let mut name = prefix.to_vec();
        name.push(0xFF);
        [vec![name.len() as u8], name].concat()
    };
    let empty_table = vec![0, 0, 0, 0];
    for payload in [
        // queue.declare, exchange.declare, basic.consume's tag, queue.bind's key, channel.close.
        method(
            50,
            10,
            &[vec![0, 0], bad(b"q"), vec![0], empty_table.clone()].concat(),
        ),
        method(
            40,
            10,
            &[
                vec![0, 0],
                bad(b"x"),
                shortstr("direct"),
                vec![0],
                empty_table.clone(),
            ]
            .concat(),
        ),
        method(
            60,
            20,
            &[
                vec![0, 0],
                shortstr("q"),
                bad(b"tag"),
                vec![0],
                empty_table.clone(),
            ]
            .concat(),
        ),
        method(
            50,
            20,
            &[
                vec![0, 0],
                shortstr("q"),
                shortstr("amq.direct"),
                bad(b"k"),
                vec![0],
                empty_table,
            ]
            .concat(),
        ),
        method(
            20,
            40,
            &[vec![0, 200], bad(b"bye"), vec![0, 0, 0, 0]].concat(),
        ),
    ] {
        let reply = connection_close_after(&broker, &frame(1, 1, &payload)).await;
        assert_eq!(
            reply,
            (501, "FRAME_ERROR - Malformed UTF-8 in shortstr".into())
        );
    }
    // A publish's routing key is not checked (RabbitMQ does not either): the connection stays.
    let mut raw = RawClient::handshake(broker.addr(), 2047, 131072, 0).await;
    raw.open_channel(1).await;
    raw.declare_queue(1, "row17").await;
    let mut key = b"no-such-queue".to_vec();
    key.push(0xFF);
    let publish = [
        vec![0, 0],
        shortstr(""),
        [vec![key.len() as u8], key].concat(),
        vec![0],
    ]
    .concat();
    let mut f = frame(1, 1, &method(60, 40, &publish));
    f.extend(header(1, 60, 0, 0));
    raw.send(&f).await;
    raw.declare_queue(1, "row17").await;
}

#[tokio::test]
async fn limits_tune_proposes_rabbitmq_defaults() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::started(broker.addr()).await;
    raw.send_start_ok(b"\0guest\0guest", true).await;
    let tune = raw.expect_method(10, 30).await;
    // channel_max 2047, frame_max 131072, heartbeat 60, as RabbitMQ 3.10 proposes.
    assert_eq!(tune.payload[4..], [0x07, 0xFF, 0, 2, 0, 0, 0, 60]);
}

#[tokio::test]
async fn limits_max_connections_leaves_more_clients_waiting_until_one_goes() {
    let mut config = Config::for_tests();
    config.limits.max_connections = 2;
    let broker = TestBroker::start_with(config).await;
    let first = RawClient::handshake(broker.addr(), 2047, 131072, 0).await;
    let _second = RawClient::handshake(broker.addr(), 2047, 131072, 0).await;
    // A third waits in the accept queue: its header gets no answer.
    let mut third = RawClient::connect(broker.addr()).await;
    third.send(b"AMQP\x00\x00\x09\x01").await;
    let early = tokio::time::timeout(Duration::from_millis(500), third.read_frame()).await;
    assert!(early.is_err(), "served beyond max_connections: {early:?}");
    drop(first);
    within(5, third.expect_method(10, 10)).await;
}

// Multi-threaded, as the binary runs: durable declares go through block_in_place there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row25_a_damaged_message_log_at_boot_keeps_the_broker_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests();
    config.ephemeral = false;
    config.data_dir = dir.path().to_path_buf();
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    {
        let broker = TestBroker::start_with(config.clone()).await;
        let (_conn, channel) = broker.channel().await;
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .unwrap();
        channel
            .queue_declare("row25".into(), durable, FieldTable::default())
            .await
            .unwrap();
        for n in 0..20u32 {
            channel
                .basic_publish(
                    "".into(),
                    "row25".into(),
                    BasicPublishOptions::default(),
                    &[n.to_be_bytes().to_vec(), vec![b'x'; 1000]].concat(),
                    lapin::BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap()
                .await
                .unwrap();
        }
        drop(channel);
        broker.broker.shutdown().await;
    }
    // Damage the middle of every message log segment: one byte flipped, then the tail cut.
    let mut damaged = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".seg") || name.starts_with("spill") {
            continue;
        }
        let mut bytes = std::fs::read(&path).unwrap();
        if bytes.len() < 10_000 {
            continue;
        }
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x5A;
        bytes.truncate(bytes.len() * 3 / 4);
        std::fs::write(&path, bytes).unwrap();
        damaged += 1;
    }
    assert!(damaged > 0, "no message log segment to damage");
    // The broker starts, keeps what came before the damage, and takes new work.
    let broker = TestBroker::start_with(config).await;
    let left = ready(&broker, "row25").await;
    assert!(
        (1..20).contains(&left),
        "{left} of 20 messages after the damage"
    );
    fill_queue(&broker, "row25-after", 3, 10).await;
}
