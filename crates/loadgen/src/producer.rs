//! One producer: its own connection, publishing stamped messages as fast as allowed (by the rate
//! limit, the confirm window and TCP backpressure), many messages per write.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::check::{STAMP_LEN, Stamp};
use crate::client::{CHANNEL, ClientError, Conn, Endpoint};
use crate::stats::{ConfirmWindow, Shared};
use crate::wire::{self, Frame, In, Out, Table};

/// Stop filling the write buffer past this many bytes; one write then carries it all.
const WRITE_BATCH: usize = 128 * 1024;
/// At most this many messages are encoded per refill, so reads (confirms) are not starved.
const MAX_BATCH_MESSAGES: u64 = 1024;

/// How one producer publishes.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub id: u32,
    pub exchange: String,
    pub routing_key: String,
    pub headers: Option<Table>,
    pub size: usize,
    pub persistent: bool,
    /// Per-message `expiration` in ms (`None`: no expiration), message `seq` taking entry
    /// `seq % len`; empty = none at all.
    pub expirations: Vec<Option<u32>>,
    /// Messages in flight without a confirm; 0 = confirms off.
    pub confirm_window: u64,
    /// Messages per second; 0 = unlimited.
    pub rate: f64,
    /// Stop after this many messages; 0 = no limit.
    pub count: u64,
    /// Stop at this instant.
    pub deadline: Instant,
    /// How long to wait for the last confirms once done.
    pub confirm_timeout: Duration,
}

/// What one producer did.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProducerResult {
    pub published: u64,
    pub confirmed: u64,
    pub nacked: u64,
    pub returned: u64,
    /// Confirms for tags never published or confirmed twice.
    pub bogus_confirms: u64,
    /// Published messages still unconfirmed when the producer gave up waiting.
    pub unconfirmed: u64,
    /// When (nanoseconds since the shared epoch) the last message was written and, with
    /// confirms, confirmed: the end of the publishing, before the connection is closed.
    pub finished_nanos: u64,
}

/// The frames that are the same for every message: publish method, content header, and the
/// body frame's 7-byte header when the body fits in one frame.
struct Template {
    /// One per entry of `ProducerConfig::expirations` (at least one).
    prefixes: Vec<Bytes>,
    single_frame: bool,
    padding: Vec<u8>,
    frame_max: u32,
}

impl Template {
    fn new(config: &ProducerConfig, frame_max: u32) -> Template {
        let single_frame = config.size + 8 <= frame_max as usize;
        let expirations = if config.expirations.is_empty() {
            &[None][..]
        } else {
            &config.expirations[..]
        };
        let prefixes = expirations
            .iter()
            .map(|expiration| {
                let mut prefix = BytesMut::new();
                let publish = Out::BasicPublish {
                    exchange: &config.exchange,
                    routing_key: &config.routing_key,
                };
                wire::put_method(&mut prefix, CHANNEL, &publish);
                wire::put_header(
                    &mut prefix,
                    CHANNEL,
                    config.size as u64,
                    config.persistent,
                    config.headers.as_ref(),
                    *expiration,
                );
                if single_frame {
                    prefix.put_u8(3);
                    prefix.put_u16(CHANNEL);
                    prefix.put_u32(config.size as u32);
                }
                prefix.freeze()
            })
            .collect();
        Template {
            prefixes,
            single_frame,
            padding: vec![0u8; config.size.saturating_sub(STAMP_LEN)],
            frame_max,
        }
    }

    /// Appends one whole message (method, header, body) to `buf`.
    fn put(&self, buf: &mut BytesMut, stamp: Stamp) {
        let mut front = [0u8; STAMP_LEN];
        stamp.write(&mut front);
        let prefix = self
            .prefixes
            .get(stamp.seq as usize % self.prefixes.len().max(1))
            .map_or(&b""[..], |p| &p[..]);
        if self.single_frame {
            buf.put_slice(prefix);
            buf.put_slice(&front);
            buf.put_slice(&self.padding);
            buf.put_u8(0xCE);
        } else {
            buf.put_slice(prefix);
            let mut body = Vec::with_capacity(STAMP_LEN + self.padding.len());
            body.extend_from_slice(&front);
            body.extend_from_slice(&self.padding);
            wire::put_body(buf, CHANNEL, &body, self.frame_max);
        }
    }
}

/// Runs one producer to completion.
pub async fn run(
    endpoint: Endpoint,
    config: ProducerConfig,
    shared: Arc<Shared>,
) -> Result<ProducerResult, ClientError> {
    let mut conn = Conn::open(&endpoint).await?;
    if config.confirm_window > 0 {
        conn.call(CHANNEL, &Out::ConfirmSelect, "confirm.select-ok", |m| {
            matches!(m, In::ConfirmSelectOk)
        })
        .await?;
    }
    let template = Template::new(&config, conn.frame_max);
    let mut result = ProducerResult::default();
    let mut window = ConfirmWindow::default();
    let started = Instant::now();
    let mut done = false;
    let mut confirm_deadline: Option<Instant> = None;
    let mut blocked = false;

    let Conn {
        stream, rbuf, wbuf, ..
    } = &mut conn;
    let (mut reader, mut writer) = stream.split();
    loop {
        if !done
            && (Instant::now() >= config.deadline
                || (config.count > 0 && result.published >= config.count))
        {
            done = true;
        }
        // Refill the write buffer with as many messages as everything allows.
        let mut next_due: Option<Instant> = None;
        if !done && !blocked && wbuf.len() < WRITE_BATCH / 2 {
            let mut allowed = MAX_BATCH_MESSAGES;
            if config.confirm_window > 0 {
                allowed = allowed.min(config.confirm_window.saturating_sub(window.span()));
            }
            if config.count > 0 {
                allowed = allowed.min(config.count - result.published);
            }
            if config.rate > 0.0 {
                let elapsed = started.elapsed().as_secs_f64();
                let due = (elapsed * config.rate) as u64 + 1;
                let by_rate = due.saturating_sub(result.published);
                if by_rate == 0 {
                    let at =
                        started + Duration::from_secs_f64(result.published as f64 / config.rate);
                    next_due = Some(at);
                }
                allowed = allowed.min(by_rate);
            }
            if allowed > 0 {
                let sent_nanos = shared.now_nanos();
                let mut n = 0;
                while n < allowed && wbuf.len() < WRITE_BATCH {
                    let Ok(seq) = u32::try_from(result.published) else {
                        done = true;
                        break;
                    };
                    template.put(
                        wbuf,
                        Stamp {
                            producer: config.id,
                            seq,
                            sent_nanos,
                        },
                    );
                    if config.confirm_window > 0 {
                        window.publish();
                    }
                    result.published += 1;
                    n += 1;
                }
                shared.published.fetch_add(n, Ordering::Relaxed);
            }
        }
        let waiting_confirms = config.confirm_window > 0 && window.span() > 0;
        if done && wbuf.is_empty() {
            if !waiting_confirms {
                break;
            }
            let limit =
                *confirm_deadline.get_or_insert_with(|| Instant::now() + config.confirm_timeout);
            if Instant::now() >= limit {
                break;
            }
        }
        let wake_at = match (next_due, done) {
            (Some(at), false) => at.min(config.deadline),
            (None, false) => config.deadline,
            (_, true) => confirm_deadline.unwrap_or(config.deadline),
        };
        tokio::select! {
            biased;
            read = reader.read_buf(rbuf) => {
                if read? == 0 {
                    return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                while let Some(frame) = wire::decode(rbuf)? {
                    let Frame::Method { channel, method } = frame else { continue };
                    match method {
                        In::BasicAck { delivery_tag, multiple } => {
                            let s = window.settle(delivery_tag, multiple);
                            result.confirmed += s.messages;
                            result.bogus_confirms += s.bogus;
                            shared.confirmed.fetch_add(s.messages, Ordering::Relaxed);
                        }
                        In::BasicNack { delivery_tag, multiple } => {
                            let s = window.settle(delivery_tag, multiple);
                            result.nacked += s.messages;
                            result.bogus_confirms += s.bogus;
                            shared.nacked.fetch_add(s.messages, Ordering::Relaxed);
                        }
                        In::BasicReturn { .. } => {
                            result.returned += 1;
                            shared.returned.fetch_add(1, Ordering::Relaxed);
                        }
                        In::ConnectionBlocked => blocked = true,
                        In::ConnectionUnblocked => blocked = false,
                        In::ConnectionClose { code, text } => return Err(ClientError::ConnectionClosed { code, text }),
                        In::ChannelClose { code, text } => {
                            let _ = channel;
                            return Err(ClientError::ChannelClosed { code, text });
                        }
                        _ => {}
                    }
                }
            }
            written = writer.write_buf(wbuf), if !wbuf.is_empty() => {
                if written? == 0 {
                    return Err(ClientError::Io(std::io::ErrorKind::WriteZero.into()));
                }
            }
            _ = tokio::time::sleep_until(wake_at), if wbuf.is_empty() => {}
        }
    }
    result.unconfirmed = if config.confirm_window > 0 {
        window.outstanding()
    } else {
        0
    };
    writer.flush().await?;
    result.finished_nanos = shared.now_nanos();
    conn.close().await?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_codec as codec;

    fn config(size: usize) -> ProducerConfig {
        ProducerConfig {
            id: 7,
            exchange: "loadgen.x".into(),
            routing_key: "rk".into(),
            headers: None,
            size,
            persistent: true,
            expirations: Vec::new(),
            confirm_window: 0,
            rate: 0.0,
            count: 0,
            deadline: Instant::now(),
            confirm_timeout: Duration::from_secs(1),
        }
    }

    /// Decodes what the template wrote with the codec a broker would use.
    fn decode_all(mut buf: BytesMut) -> Vec<codec::Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = codec::decode_frame(&mut buf, 4096).unwrap() {
            frames.push(frame);
        }
        assert!(buf.is_empty());
        frames
    }

    #[test]
    fn a_pre_encoded_message_is_a_valid_publish() {
        let template = Template::new(&config(100), 4096);
        let mut buf = BytesMut::new();
        template.put(
            &mut buf,
            Stamp {
                producer: 7,
                seq: 42,
                sent_nanos: 99,
            },
        );
        let frames = decode_all(buf);
        let [
            codec::Frame::Method {
                method: codec::Method::BasicPublish(publish),
                ..
            },
            codec::Frame::Header { header, .. },
            codec::Frame::Body { payload, .. },
        ] = &frames[..]
        else {
            panic!("expected publish, header, body: {frames:?}");
        };
        assert_eq!(publish.exchange.as_bytes(), b"loadgen.x");
        assert_eq!(publish.routing_key.as_bytes(), b"rk");
        assert_eq!(header.body_size, 100);
        assert_eq!(header.properties.delivery_mode, Some(2));
        assert_eq!(payload.len(), 100);
        assert_eq!(
            Stamp::read(payload),
            Some(Stamp {
                producer: 7,
                seq: 42,
                sent_nanos: 99
            })
        );
    }

    #[test]
    fn expirations_cycle_by_sequence() {
        let mut config = config(16);
        config.expirations = vec![None, Some(500), Some(60_000)];
        let template = Template::new(&config, 4096);
        let expiration_of = |seq: u32| {
            let mut buf = BytesMut::new();
            let stamp = Stamp {
                producer: 7,
                seq,
                sent_nanos: 0,
            };
            template.put(&mut buf, stamp);
            match &decode_all(buf)[..] {
                [_, codec::Frame::Header { header, .. }, _] => {
                    header.properties.expiration.as_ref().map(|e| e.to_string())
                }
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(expiration_of(0), None);
        assert_eq!(expiration_of(1).as_deref(), Some("500"));
        assert_eq!(expiration_of(5).as_deref(), Some("60000"));
        assert_eq!(expiration_of(6), None);
    }

    #[test]
    fn a_body_larger_than_a_frame_is_split() {
        let template = Template::new(&config(10_000), 4096);
        let mut buf = BytesMut::new();
        template.put(
            &mut buf,
            Stamp {
                producer: 7,
                seq: 1,
                sent_nanos: 5,
            },
        );
        let frames = decode_all(buf);
        let bodies: Vec<usize> = frames
            .iter()
            .filter_map(|f| match f {
                codec::Frame::Body { payload, .. } => Some(payload.len()),
                _ => None,
            })
            .collect();
        assert_eq!(bodies, [4088, 4088, 1824]);
    }
}
