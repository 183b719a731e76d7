//! One consumer: its own connection, reading deliveries in large reads, checking each message's
//! stamp, recording its latency, and acknowledging with `multiple` every N messages.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, watch};

use crate::check::{Checker, STAMP_LEN, Stamp};
use crate::client::{CHANNEL, ClientError, Conn, Endpoint};
use crate::stats::{Shared, new_histogram};
use crate::wire::{self, Frame, Hot, In, Out};

/// How one consumer consumes.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub id: usize,
    /// Index of the queue it reads, into the topology's queue list.
    pub queue_index: usize,
    pub queue: String,
    pub producers: usize,
    /// 0 = unlimited.
    pub prefetch: u16,
    pub autoack: bool,
    /// Acknowledge (with `multiple`) once this many messages are unacknowledged.
    pub multi_ack: u64,
}

/// What one consumer saw.
#[derive(Debug)]
pub struct ConsumerResult {
    pub queue_index: usize,
    pub consumed: u64,
    pub redelivered: u64,
    pub checker: Checker,
    pub latency: Histogram<u64>,
    /// Nanoseconds (since the shared epoch) of the last delivery, 0 if none.
    pub last_nanos: u64,
}

/// Where the consumer is within a delivery (method, header, bodies).
#[derive(Debug, Clone, Copy)]
enum Assembly {
    Idle,
    Header,
    Body {
        remaining: u64,
        stamp: [u8; STAMP_LEN],
        have: usize,
    },
}

/// Runs one consumer until `stop` turns true. `ready` fires once basic.consume-ok arrived.
pub async fn run(
    endpoint: Endpoint,
    config: ConsumerConfig,
    shared: Arc<Shared>,
    ready: oneshot::Sender<()>,
    mut stop: watch::Receiver<bool>,
) -> Result<ConsumerResult, ClientError> {
    let mut conn = Conn::open(&endpoint).await?;
    if config.prefetch > 0 {
        let qos = Out::BasicQos {
            prefetch_count: config.prefetch,
        };
        conn.call(CHANNEL, &qos, "basic.qos-ok", |m| {
            matches!(m, In::BasicQosOk)
        })
        .await?;
    }
    let tag = format!("loadgen-{}", config.id);
    let consume = Out::BasicConsume {
        queue: &config.queue,
        consumer_tag: &tag,
        no_ack: config.autoack,
    };
    conn.call(CHANNEL, &consume, "basic.consume-ok", |m| {
        matches!(m, In::BasicConsumeOk)
    })
    .await?;
    let _ = ready.send(());

    // Never let the unacknowledged count reach the prefetch limit, or the broker stops sending.
    let ack_every = match config.prefetch {
        0 => config.multi_ack.max(1),
        prefetch => config.multi_ack.clamp(1, u64::from(prefetch)),
    };
    let mut result = ConsumerResult {
        queue_index: config.queue_index,
        consumed: 0,
        redelivered: 0,
        checker: Checker::new(config.producers),
        latency: new_histogram(),
        last_nanos: 0,
    };
    let mut state = Assembly::Idle;
    let mut last_tag = 0u64;
    let mut unacked = 0u64;
    let mut batch_latencies: Vec<u64> = Vec::with_capacity(1024);

    let Conn {
        stream, rbuf, wbuf, ..
    } = &mut conn;
    loop {
        tokio::select! {
            biased;
            read = stream.read_buf(rbuf) => {
                if read? == 0 {
                    return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
            }
            _ = stop.wait_for(|s| *s) => break,
        }
        let now = shared.now_nanos();
        let mut batch = 0u64;
        while let Some(frame) = wire::decode_hot(rbuf)? {
            match frame {
                Hot::Deliver {
                    delivery_tag,
                    redelivered,
                } => {
                    last_tag = delivery_tag;
                    result.redelivered += u64::from(redelivered);
                    state = Assembly::Header;
                }
                Hot::Header { body_size } => {
                    if !matches!(state, Assembly::Header) {
                        return Err(ClientError::Unexpected(
                            "content header outside a delivery".into(),
                        ));
                    }
                    state = Assembly::Body {
                        remaining: body_size,
                        stamp: [0; STAMP_LEN],
                        have: 0,
                    };
                }
                Hot::Body {
                    len,
                    front,
                    front_len,
                } => {
                    let Assembly::Body {
                        remaining,
                        mut stamp,
                        mut have,
                    } = state
                    else {
                        return Err(ClientError::Unexpected(
                            "content body outside a delivery".into(),
                        ));
                    };
                    let take = (STAMP_LEN - have).min(front_len);
                    if take > 0 {
                        stamp[have..have + take].copy_from_slice(&front[..take]);
                        have += take;
                    }
                    let remaining = remaining.saturating_sub(len as u64);
                    state = Assembly::Body {
                        remaining,
                        stamp,
                        have,
                    };
                    if remaining == 0 {
                        state = Assembly::Idle;
                        batch += 1;
                        match Stamp::read(&stamp[..have]) {
                            Some(s) => {
                                result.checker.record(s);
                                batch_latencies.push(now.saturating_sub(s.sent_nanos) / 1000);
                            }
                            None => result.checker.malformed += 1,
                        }
                        if !config.autoack {
                            unacked += 1;
                            if unacked >= ack_every {
                                wire::put_method(
                                    wbuf,
                                    CHANNEL,
                                    &Out::BasicAck {
                                        delivery_tag: last_tag,
                                        multiple: true,
                                    },
                                );
                                unacked = 0;
                            }
                        }
                    }
                }
                Hot::Other(Frame::Method { method, .. }) => match method {
                    In::ConnectionClose { code, text } => {
                        return Err(ClientError::ConnectionClosed { code, text });
                    }
                    In::ChannelClose { code, text } => {
                        return Err(ClientError::ChannelClosed { code, text });
                    }
                    In::BasicCancel => {
                        return Err(ClientError::Unexpected(
                            "basic.cancel from the broker".into(),
                        ));
                    }
                    _ => {}
                },
                Hot::Other(_) => {}
            }
        }
        if batch > 0 {
            result.consumed += batch;
            result.last_nanos = now;
            shared.consumed.fetch_add(batch, Ordering::Relaxed);
            if let Ok(mut interval) = shared.interval.lock() {
                for &us in &batch_latencies {
                    let _ = interval.record(us.max(1));
                }
            }
            for us in batch_latencies.drain(..) {
                let _ = result.latency.record(us.max(1));
            }
        }
        if !wbuf.is_empty() {
            stream.write_all(&wbuf[..]).await?;
            wbuf.clear();
        }
    }
    if !config.autoack && unacked > 0 {
        wire::put_method(
            wbuf,
            CHANNEL,
            &Out::BasicAck {
                delivery_tag: last_tag,
                multiple: true,
            },
        );
    }
    conn.flush().await?;
    conn.close().await?;
    Ok(result)
}
