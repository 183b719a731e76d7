//! Harness for the integration tests: starts Warren in-process on a free port, connects lapin
//! clients to it, and speaks raw AMQP frames for the malformed-input tests.

// A panic in the harness is a failed test, not a broker crash.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
pub use warren_server::{Config, RunningBroker};

/// A broker on 127.0.0.1 with a free port, stopped when dropped.
pub struct TestBroker {
    /// The running broker.
    pub broker: RunningBroker,
}

impl TestBroker {
    /// Starts a broker with the test configuration.
    pub async fn start() -> TestBroker {
        TestBroker::start_with(Config::for_tests()).await
    }

    /// Starts a broker with a custom configuration (its listeners should use port 0).
    pub async fn start_with(config: Config) -> TestBroker {
        let broker = warren_server::start(config).await.expect("broker starts");
        TestBroker { broker }
    }

    /// The listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.broker.local_addr()
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr())
    }

    /// A lapin connection as guest to vhost `/`.
    pub async fn connect(&self) -> lapin::Connection {
        lapin::Connection::connect(&self.url(), lapin::ConnectionProperties::default())
            .await
            .expect("lapin connects")
    }

    /// A lapin connection and one channel.
    pub async fn channel(&self) -> (lapin::Connection, lapin::Channel) {
        let conn = self.connect().await;
        let channel = conn.create_channel().await.expect("channel opens");
        (conn, channel)
    }
}

// ===== lapin calls with the options most tests use, unwrapped =====

/// Declares a queue with default options (non-durable, shared) and no arguments.
pub async fn declare_queue(channel: &lapin::Channel, name: &str) {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
}

/// Declares an exclusive queue with these arguments; `""` gets a server-named queue. Returns
/// the queue's name.
pub async fn declare_exclusive(
    channel: &lapin::Channel,
    name: &str,
    args: &[(&str, AMQPValue)],
) -> String {
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
        .expect("queue.declare")
        .name()
        .to_string()
}

/// Messages ready in `queue` (a passive `queue.declare`; panics if the queue is missing).
pub async fn message_count(channel: &lapin::Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare")
        .message_count()
}

/// Publishes `body` with these properties and no flags; returns the confirm to await when the
/// channel is in confirm mode.
pub async fn publish_with(
    channel: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: lapin::BasicProperties,
) -> lapin::PublisherConfirm {
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .expect("basic.publish")
}

/// Publishes `body` with no properties and no flags.
pub async fn publish(channel: &lapin::Channel, exchange: &str, routing_key: &str, body: &[u8]) {
    publish_with(
        channel,
        exchange,
        routing_key,
        body,
        lapin::BasicProperties::default(),
    )
    .await;
}

/// Consumes `queue` under `tag` with these options and no arguments.
pub async fn consume(
    channel: &lapin::Channel,
    queue: &str,
    tag: &str,
    options: BasicConsumeOptions,
) -> lapin::Consumer {
    channel
        .basic_consume(queue.into(), tag.into(), options, FieldTable::default())
        .await
        .expect("basic.consume")
}

/// The next message in `queue`, taken with `basic.get` (no ack); panics if the queue is empty.
pub async fn get_message(channel: &lapin::Channel, queue: &str) -> lapin::message::BasicGetMessage {
    channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
        .expect("a message")
}

/// Puts the channel in confirm mode.
pub async fn confirm_select(channel: &lapin::Channel) {
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
}

/// `basic.consume` options with `no_ack` set (deliveries need no ack).
pub fn no_ack() -> BasicConsumeOptions {
    BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    }
}

/// The body of the next message in `queue`, taken with `basic.get` (no ack); `None` if empty.
pub async fn get_body(channel: &lapin::Channel, queue: &str) -> Option<Vec<u8>> {
    channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
        .map(|message| message.delivery.data)
}

/// The AMQP reply code and text in a lapin error, if the broker closed with one.
pub fn amqp_error(err: &lapin::Error) -> Option<(u16, String)> {
    match err.kind() {
        lapin::ErrorKind::ProtocolError(e) => Some((e.get_id(), e.get_message().to_string())),
        _ => None,
    }
}

/// Runs a future with a timeout, so a broken broker fails a test instead of hanging it.
pub async fn within<T>(secs: u64, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .expect("timed out")
}

// ===== Raw frames, for malformed-input tests =====

/// One frame as read back from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// Frame type (1 method, 2 header, 3 body, 8 heartbeat).
    pub kind: u8,
    /// Channel number.
    pub channel: u16,
    /// Payload.
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// Class and method id of a method frame.
    pub fn method_id(&self) -> Option<(u16, u16)> {
        if self.kind != 1 || self.payload.len() < 4 {
            return None;
        }
        let class = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        let method = u16::from_be_bytes([self.payload[2], self.payload[3]]);
        Some((class, method))
    }

    /// Reply code and text of a `connection.close` or `channel.close`.
    pub fn close_reply(&self) -> Option<(u16, String)> {
        match self.method_id()? {
            (10, 50) | (20, 40) => {}
            _ => return None,
        }
        let p = &self.payload[4..];
        let code = u16::from_be_bytes([p[0], p[1]]);
        let len = p[2] as usize;
        let text = String::from_utf8_lossy(&p[3..3 + len]).into_owned();
        Some((code, text))
    }
}

/// A raw AMQP client: writes bytes, reads frames.
pub struct RawClient {
    /// The socket.
    pub stream: TcpStream,
    buf: BytesMut,
}

/// Appends a frame.
pub fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(0xCE);
    out
}

/// A method payload from class, method and already-encoded arguments.
pub fn method(class: u16, method: u16, args: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&class.to_be_bytes());
    out.extend_from_slice(&method.to_be_bytes());
    out.extend_from_slice(args);
    out
}

/// Encodes a short string.
pub fn shortstr(s: &str) -> Vec<u8> {
    let mut out = vec![s.len() as u8];
    out.extend_from_slice(s.as_bytes());
    out
}

/// Encodes a long string.
pub fn longstr(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

impl RawClient {
    /// Connects without sending anything.
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        RawClient {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Connects and sends the protocol header; returns once `connection.start` has arrived.
    pub async fn started(addr: SocketAddr) -> RawClient {
        let mut client = RawClient::connect(addr).await;
        client.begin().await;
        client
    }

    /// Sends the protocol header and waits for `connection.start`.
    pub async fn begin(&mut self) {
        self.send(b"AMQP\x00\x00\x09\x01").await;
        self.expect_method(10, 10).await;
    }

    /// Connects from another local address (any of 127.0.0.0/8 works on Linux), so that the
    /// broker sees a different peer address.
    pub async fn connect_from(addr: SocketAddr, local: std::net::IpAddr) -> RawClient {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::new(local, 0)).expect("bind");
        RawClient::connect_socket(socket, addr).await
    }

    /// Connects with a small, fixed receive buffer, so that a client that stops reading
    /// backs the broker up after a few KiB instead of the kernel's autotuned megabytes.
    pub async fn connect_small_window(addr: SocketAddr) -> RawClient {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
        RawClient::connect_socket(socket, addr).await
    }

    async fn connect_socket(socket: tokio::net::TcpSocket, addr: SocketAddr) -> RawClient {
        let stream = socket.connect(addr).await.expect("tcp connect");
        RawClient {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Sends bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads raw bytes until at least `n` are there or EOF; returns what was read.
    pub async fn read_bytes(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            let got = within(5, self.stream.read_buf(&mut self.buf))
                .await
                .expect("read");
            if got == 0 {
                break;
            }
        }
        self.buf.split().to_vec()
    }

    /// Reads the next frame; `None` at EOF.
    pub async fn read_frame(&mut self) -> Option<RawFrame> {
        loop {
            if self.buf.len() >= 7 {
                let size = u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]])
                    as usize;
                if self.buf.len() >= size + 8 {
                    let bytes = self.buf.split_to(size + 8);
                    assert_eq!(bytes[size + 7], 0xCE, "frame end");
                    return Some(RawFrame {
                        kind: bytes[0],
                        channel: u16::from_be_bytes([bytes[1], bytes[2]]),
                        payload: bytes[7..size + 7].to_vec(),
                    });
                }
            }
            let got = within(10, self.stream.read_buf(&mut self.buf)).await.ok()?;
            if got == 0 {
                return None;
            }
        }
    }

    /// Reads frames until one is a method with these ids (skipping heartbeats); panics at EOF.
    pub async fn expect_method(&mut self, class: u16, method_id: u16) -> RawFrame {
        loop {
            let frame = self.read_frame().await.unwrap_or_else(|| {
                panic!("connection closed while waiting for method {class}.{method_id}")
            });
            if frame.kind == 8 {
                continue;
            }
            assert_eq!(
                frame.method_id(),
                Some((class, method_id)),
                "unexpected frame {frame:?}"
            );
            return frame;
        }
    }

    /// Whether the broker closed the socket (EOF) within a few seconds.
    pub async fn closed_by_peer(&mut self) -> bool {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.stream.read_buf(&mut self.buf))
                .await
            {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    /// Sends the protocol header and runs the handshake as guest with these tune values,
    /// up to open-ok. Returns the tune the server proposed (channel_max, frame_max, heartbeat).
    pub async fn handshake(
        addr: SocketAddr,
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    ) -> RawClient {
        let mut client = RawClient::connect(addr).await;
        client.login(channel_max, frame_max, heartbeat).await;
        client
    }

    /// On a fresh connection: the protocol header and the handshake as guest with these tune
    /// values, up to open-ok.
    pub async fn login(&mut self, channel_max: u16, frame_max: u32, heartbeat: u16) {
        self.begin().await;
        self.send_start_ok(b"\0guest\0guest", true).await;
        self.expect_method(10, 30).await;
        self.send_tune_ok(channel_max, frame_max, heartbeat).await;
        self.send_open().await;
        self.expect_method(10, 41).await;
    }

    /// Sends `connection.open` for vhost `/`.
    pub async fn send_open(&mut self) {
        self.send(&frame(
            1,
            0,
            &method(10, 40, &[shortstr("/"), shortstr(""), vec![0]].concat()),
        ))
        .await;
    }

    /// Sends `connection.start-ok` with PLAIN and this response.
    pub async fn send_start_ok(&mut self, response: &[u8], auth_failure_close: bool) {
        let mut caps = Vec::new();
        if auth_failure_close {
            caps.extend_from_slice(&shortstr("authentication_failure_close"));
            caps.extend_from_slice(b"t\x01");
        }
        let mut props = Vec::new();
        props.extend_from_slice(&shortstr("capabilities"));
        props.push(b'F');
        props.extend_from_slice(&(caps.len() as u32).to_be_bytes());
        props.extend_from_slice(&caps);
        let mut args = BytesMut::new();
        args.put_u32(props.len() as u32);
        args.put_slice(&props);
        args.put_slice(&shortstr("PLAIN"));
        args.put_slice(&longstr(response));
        args.put_slice(&shortstr("en_US"));
        self.send(&frame(1, 0, &method(10, 11, &args))).await;
    }

    /// Sends `connection.tune-ok`.
    pub async fn send_tune_ok(&mut self, channel_max: u16, frame_max: u32, heartbeat: u16) {
        let mut args = BytesMut::new();
        args.put_u16(channel_max);
        args.put_u32(frame_max);
        args.put_u16(heartbeat);
        self.send(&frame(1, 0, &method(10, 31, &args))).await;
    }

    /// Opens channel `n` and waits for open-ok.
    pub async fn open_channel(&mut self, n: u16) {
        self.send(&frame(1, n, &method(20, 10, &shortstr(""))))
            .await;
        self.expect_method(20, 11).await;
    }
}

impl RawClient {
    /// Declares a non-durable queue on channel `n` and waits for declare-ok.
    pub async fn declare_queue(&mut self, n: u16, name: &str) {
        let args = [vec![0, 0], shortstr(name), vec![0], vec![0, 0, 0, 0]].concat();
        self.send(&frame(1, n, &method(50, 10, &args))).await;
        self.expect_method(50, 11).await;
    }

    /// Publishes `body` with raw property bytes (flags + list; `[0, 0]` for none).
    pub async fn publish(
        &mut self,
        n: u16,
        exchange: &str,
        key: &str,
        properties: &[u8],
        body: &[u8],
    ) {
        let args = [vec![0, 0], shortstr(exchange), shortstr(key), vec![0]].concat();
        let mut out = frame(1, n, &method(60, 40, &args));
        let mut header = Vec::new();
        header.extend_from_slice(&60u16.to_be_bytes());
        header.extend_from_slice(&0u16.to_be_bytes());
        header.extend_from_slice(&(body.len() as u64).to_be_bytes());
        header.extend_from_slice(properties);
        out.extend(frame(2, n, &header));
        if !body.is_empty() {
            out.extend(frame(3, n, body));
        }
        self.send(&out).await;
    }

    /// `basic.get` with acks; returns the delivery tag of get-ok (skipping its content frames).
    pub async fn get(&mut self, n: u16, queue: &str) -> u64 {
        let args = [vec![0, 0], shortstr(queue), vec![0]].concat();
        self.send(&frame(1, n, &method(60, 70, &args))).await;
        let ok = self.expect_method(60, 71).await;
        let tag = u64::from_be_bytes(ok.payload[4..12].try_into().unwrap());
        let header = self.read_frame().await.unwrap();
        let size = u64::from_be_bytes(header.payload[4..12].try_into().unwrap());
        let mut got = 0;
        while got < size {
            got += self.read_frame().await.unwrap().payload.len() as u64;
        }
        tag
    }

    /// Sends `basic.ack`.
    pub async fn ack(&mut self, n: u16, tag: u64, multiple: bool) {
        let args = [tag.to_be_bytes().to_vec(), vec![u8::from(multiple)]].concat();
        self.send(&frame(1, n, &method(60, 80, &args))).await;
    }

    /// Waits for `channel.close` on channel `n` and returns its code and text.
    pub async fn expect_channel_close(&mut self, n: u16) -> (u16, String) {
        let close = self.expect_method(20, 40).await;
        assert_eq!(close.channel, n);
        close.close_reply().unwrap()
    }
}

/// Raw property bytes with only `reply_to` set.
pub fn reply_to_properties(reply_to: &str) -> Vec<u8> {
    // reply-to is the 7th property: flag bit 15 - 6 = 9.
    let flags: u16 = 1 << 9;
    [flags.to_be_bytes().to_vec(), shortstr(reply_to)].concat()
}
