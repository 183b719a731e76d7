//! A lean AMQP client connection: the handshake, synchronous request/reply for setup methods,
//! and the buffers the producer and consumer loops batch their frames into.
//!
//! General-purpose clients spend far more CPU per message than a broker does; this one keeps one
//! read buffer and one write buffer per connection and writes many frames per syscall, so the
//! generator is not what limits a run.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::wire::{self, Frame, In, Out};

/// The channel every loadgen connection uses for its work.
pub const CHANNEL: u16 = 1;
/// The largest frame we ask for; RabbitMQ's default is the same.
const FRAME_MAX: u32 = 131_072;
/// How long a setup reply may take before we give up.
const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad frame from the broker: {0}")]
    Wire(#[from] wire::WireError),
    #[error("broker closed the connection: {code} {text}")]
    ConnectionClosed { code: u16, text: String },
    #[error("broker closed the channel: {code} {text}")]
    ChannelClosed { code: u16, text: String },
    #[error("unexpected {0}")]
    Unexpected(String),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("bad URI: {0}")]
    BadUri(String),
}

/// Where to connect and as whom, from an `amqp://user:pass@host:port/vhost` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: String,
    pub user: String,
    pub password: String,
    pub vhost: String,
}

impl Endpoint {
    pub fn parse(uri: &str) -> Result<Endpoint, ClientError> {
        let rest = uri
            .strip_prefix("amqp://")
            .ok_or_else(|| ClientError::BadUri(format!("{uri}: only amqp:// is supported")))?;
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, p),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (percent_decode(user), percent_decode(pass)),
                None => (percent_decode(u), String::new()),
            },
            None => ("guest".to_string(), "guest".to_string()),
        };
        let hostport = if hostport.is_empty() {
            "127.0.0.1"
        } else {
            hostport
        };
        let addr = if hostport.contains(':') {
            hostport.to_string()
        } else {
            format!("{hostport}:5672")
        };
        let vhost = if path.is_empty() {
            "/".to_string()
        } else {
            percent_decode(path)
        };
        Ok(Endpoint {
            addr,
            user,
            password,
            vhost,
        })
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(byte);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One open connection with channel 1 open.
pub struct Conn {
    pub stream: TcpStream,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
    /// The negotiated frame size limit.
    pub frame_max: u32,
}

impl Conn {
    /// Connects, authenticates with PLAIN, disables heartbeats and opens channel 1.
    pub async fn open(endpoint: &Endpoint) -> Result<Conn, ClientError> {
        let stream = TcpStream::connect(&endpoint.addr).await?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::with_capacity(64 * 1024),
            frame_max: FRAME_MAX,
        };
        conn.stream.write_all(wire::PROTOCOL_HEADER).await?;
        conn.expect("connection.start", |m| matches!(m, In::ConnectionStart))
            .await?;
        conn.send(
            0,
            &Out::StartOk {
                user: &endpoint.user,
                password: &endpoint.password,
            },
        )
        .await?;
        let tune = conn
            .expect("connection.tune", |m| {
                matches!(m, In::ConnectionTune { .. })
            })
            .await?;
        if let In::ConnectionTune {
            channel_max,
            frame_max,
            ..
        } = tune
        {
            if frame_max != 0 {
                conn.frame_max = frame_max.min(FRAME_MAX);
            }
            // Heartbeats off: the generator's connections are either busy or deliberately idle,
            // and answering heartbeats would only add noise to the idle-connection figure.
            let tune_ok = Out::TuneOk {
                channel_max: channel_max.max(1),
                frame_max: conn.frame_max,
                heartbeat: 0,
            };
            wire::put_method(&mut conn.wbuf, 0, &tune_ok);
        }
        conn.send(
            0,
            &Out::Open {
                vhost: &endpoint.vhost,
            },
        )
        .await?;
        conn.expect("connection.open-ok", |m| matches!(m, In::ConnectionOpenOk))
            .await?;
        conn.open_channel(CHANNEL).await?;
        Ok(conn)
    }

    /// Opens one more channel.
    pub async fn open_channel(&mut self, channel: u16) -> Result<(), ClientError> {
        self.call(channel, &Out::ChannelOpen, "channel.open-ok", |m| {
            matches!(m, In::ChannelOpenOk)
        })
        .await
        .map(|_| ())
    }

    /// Queues a method and writes everything buffered.
    pub async fn send(&mut self, channel: u16, method: &Out<'_>) -> Result<(), ClientError> {
        wire::put_method(&mut self.wbuf, channel, method);
        self.flush().await
    }

    /// Writes everything buffered.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.stream.write_all(&self.wbuf).await?;
        self.wbuf.clear();
        Ok(())
    }

    /// Sends a method and waits for the reply that `is_reply` accepts.
    pub async fn call(
        &mut self,
        channel: u16,
        method: &Out<'_>,
        what: &'static str,
        is_reply: impl Fn(&In) -> bool,
    ) -> Result<In, ClientError> {
        self.send(channel, method).await?;
        self.expect(what, is_reply).await
    }

    /// Reads frames until a method that `is_reply` accepts; a close from the broker is an error.
    pub async fn expect(
        &mut self,
        what: &'static str,
        is_reply: impl Fn(&In) -> bool,
    ) -> Result<In, ClientError> {
        tokio::time::timeout(RPC_TIMEOUT, async {
            loop {
                match self.read_frame().await? {
                    Frame::Method { method, .. } if is_reply(&method) => return Ok(method),
                    Frame::Method { method, channel } => {
                        self.on_unsolicited(channel, method).await?
                    }
                    // Content and heartbeats are not replies; setup ignores them.
                    _ => {}
                }
            }
        })
        .await
        .map_err(|_| ClientError::Timeout(what))?
    }

    /// Handles a method nobody asked for: a close is fatal, anything else is ignored.
    pub async fn on_unsolicited(&mut self, channel: u16, method: In) -> Result<(), ClientError> {
        match method {
            In::ConnectionClose { code, text } => {
                let _ = self.send(0, &Out::ConnectionCloseOk).await;
                Err(ClientError::ConnectionClosed { code, text })
            }
            In::ChannelClose { code, text } => {
                let _ = self.send(channel, &Out::ChannelCloseOk).await;
                Err(ClientError::ChannelClosed { code, text })
            }
            _ => Ok(()),
        }
    }

    /// Reads one frame, reading from the socket as needed.
    pub async fn read_frame(&mut self) -> Result<Frame, ClientError> {
        loop {
            if let Some(frame) = wire::decode(&mut self.rbuf)? {
                return Ok(frame);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Closes the connection politely and waits (briefly) for close-ok, so the broker has
    /// processed everything sent before.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.send(
            0,
            &Out::ConnectionClose {
                code: 200,
                text: "bye",
            },
        )
        .await?;
        let wait = async {
            loop {
                match self.read_frame().await? {
                    Frame::Method {
                        method: In::ConnectionCloseOk,
                        ..
                    } => return Ok(()),
                    Frame::Method {
                        method: In::ConnectionClose { .. },
                        ..
                    } => {
                        let _ = self.send(0, &Out::ConnectionCloseOk).await;
                        return Ok(());
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(RPC_TIMEOUT, wait)
            .await
            .map_err(|_| ClientError::Timeout("connection.close-ok"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uris() {
        let e = Endpoint::parse("amqp://u:p%40ss@10.0.0.1:5673/%2fprod").unwrap();
        assert_eq!(
            e,
            Endpoint {
                addr: "10.0.0.1:5673".into(),
                user: "u".into(),
                password: "p@ss".into(),
                vhost: "/prod".into()
            }
        );
        let e = Endpoint::parse("amqp://localhost").unwrap();
        assert_eq!(
            (e.addr.as_str(), e.user.as_str(), e.vhost.as_str()),
            ("localhost:5672", "guest", "/")
        );
        let e = Endpoint::parse("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(e.vhost, "/");
        assert!(Endpoint::parse("http://x").is_err());
        // A stray '%' at the end is kept, not a panic.
        assert_eq!(Endpoint::parse("amqp://h/a%").unwrap().vhost, "a%");
    }
}
