//! Decode and encode of a basic.publish + 14-property content header + 1 KiB body, and of a
//! 20-entry field table, by Warren and by amq-protocol (lapin's codec) in the same run.
//!
//! Run: `cargo bench -p warren-codec --bench codec`. Each decoder gets its input the way its API
//! takes it: Warren a `BytesMut` read buffer holding many messages (decoding splits frames off
//! it), amq-protocol a byte slice of the same bytes. Filling the buffers is not timed; dropping
//! the decoded values is, for both, since a broker drops them too.
//!
//! Times are the thread's CPU time (`iter_custom` with `cpu_time::ThreadTime`), not wall time:
//! the project's machines are shared, and wall time would count the time other processes hold
//! the core, which varies from run to run and from one side of the comparison to the other.

use std::hint::black_box;
use std::time::Duration;

use cpu_time::ThreadTime;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::{self, AMQPClass};
use amq_protocol::types as amq;
use amq_protocol::types::AMQPValue;
use bytes::{Bytes, BytesMut};
use criterion::{Criterion, criterion_group, criterion_main};
use warren_codec::frame::{encode_basic_header_frame, encode_body_frames, encode_method_frame};
use warren_codec::{
    BasicProperties, BasicPublish, FieldTable, FieldValue, Method, ShortString, decode_frame,
};

const FRAME_MAX: u32 = 131_072;

fn s(value: &'static str) -> ShortString {
    ShortString::from_static(value)
}

fn publish() -> BasicPublish {
    BasicPublish {
        exchange: s("warren.bench"),
        routing_key: s("orders.eu.created"),
        mandatory: false,
        immediate: false,
    }
}

/// All 14 properties set, with a small headers table, as a typical application sends.
fn properties() -> BasicProperties {
    BasicProperties {
        content_type: Some(s("application/json")),
        content_encoding: Some(s("utf-8")),
        headers: Some(FieldTable(vec![
            // Sorted keys, so amq-protocol (which sorts) encodes the same bytes.
            (
                s("source"),
                FieldValue::LongString(Bytes::from_static(b"billing")),
            ),
            (s("trace"), FieldValue::Bool(true)),
            (s("x-retry"), FieldValue::I32(3)),
        ])),
        delivery_mode: Some(2),
        priority: Some(5),
        correlation_id: Some(s("b1c9a0e4-5c6f-4f5e-9a55-3a1c2f0d9e11")),
        reply_to: Some(s("amq.rabbitmq.reply-to")),
        expiration: Some(s("60000")),
        message_id: Some(s("msg-000000042")),
        timestamp: Some(1_700_000_000),
        kind: Some(s("order.created")),
        user_id: Some(s("guest")),
        app_id: Some(s("billing-service")),
        cluster_id: Some(s("")),
    }
}

/// A 20-entry table mixing the value types brokers see in arguments and headers.
fn table_20() -> FieldTable {
    let mut entries = Vec::new();
    for i in 0..20 {
        let name = ShortString::try_from(format!("x-header-{i:02}")).unwrap_or_default();
        let value = match i % 5 {
            0 => FieldValue::LongString(Bytes::from(format!("value number {i}"))),
            1 => FieldValue::I64(i * 1000),
            2 => FieldValue::Bool(i % 2 == 0),
            3 => FieldValue::I32(i as i32),
            _ => FieldValue::Timestamp(1_700_000_000 + i as u64),
        };
        entries.push((name, value));
    }
    FieldTable(entries)
}

fn body() -> Vec<u8> {
    (0..1024u32).map(|i| (i % 251) as u8).collect()
}

fn warren_message_bytes() -> Bytes {
    let mut buf = BytesMut::new();
    encode_method_frame(1, &Method::BasicPublish(publish()), &mut buf);
    let body = body();
    encode_basic_header_frame(1, body.len() as u64, &properties(), &mut buf);
    encode_body_frames(1, &body, FRAME_MAX, &mut buf);
    buf.freeze()
}

fn amq_s(value: &ShortString) -> amq::ShortString {
    value.as_str().unwrap_or_default().to_owned().into()
}

fn amq_value(value: &FieldValue) -> AMQPValue {
    match value {
        FieldValue::LongString(v) => AMQPValue::LongString(v.to_vec().into()),
        FieldValue::I64(v) => AMQPValue::LongLongInt(*v),
        FieldValue::Bool(v) => AMQPValue::Boolean(*v),
        FieldValue::I32(v) => AMQPValue::LongInt(*v),
        FieldValue::Timestamp(v) => AMQPValue::Timestamp(*v),
        _ => AMQPValue::Void,
    }
}

fn amq_table(table: &FieldTable) -> amq::FieldTable {
    let mut out = amq::FieldTable::default();
    for (name, value) in table.iter() {
        out.insert(amq_s(name), amq_value(value));
    }
    out
}

fn amq_frames() -> Vec<AMQPFrame> {
    let p = properties();
    let unwrap = |v: &Option<ShortString>| amq_s(v.as_ref().unwrap_or(&ShortString::new()));
    let props = protocol::BasicProperties::default()
        .with_content_type(unwrap(&p.content_type))
        .with_content_encoding(unwrap(&p.content_encoding))
        .with_headers(amq_table(p.headers.as_ref().unwrap_or(&FieldTable::new())))
        .with_delivery_mode(2)
        .with_priority(5)
        .with_correlation_id(unwrap(&p.correlation_id))
        .with_reply_to(unwrap(&p.reply_to))
        .with_expiration(unwrap(&p.expiration))
        .with_message_id(unwrap(&p.message_id))
        .with_timestamp(1_700_000_000)
        .with_type(unwrap(&p.kind))
        .with_user_id(unwrap(&p.user_id))
        .with_app_id(unwrap(&p.app_id))
        .with_cluster_id(unwrap(&p.cluster_id));
    let publish = publish();
    vec![
        AMQPFrame::Method(
            1,
            AMQPClass::Basic(protocol::basic::AMQPMethod::Publish(
                protocol::basic::Publish {
                    exchange: amq_s(&publish.exchange),
                    routing_key: amq_s(&publish.routing_key),
                    mandatory: false,
                    immediate: false,
                },
            )),
        ),
        AMQPFrame::Header(
            1,
            AMQPContentHeader {
                class_id: 60,
                body_size: 1024,
                properties: props,
            },
        ),
        AMQPFrame::Body(1, body()),
    ]
}

fn amq_encode_into(frames: &[AMQPFrame], out: Vec<u8>) -> Vec<u8> {
    let mut out = out;
    for frame in frames {
        match gen_frame(frame)(WriteContext::from(out)) {
            Ok(context) => out = context.write,
            Err(error) => panic!("amq-protocol failed to encode: {error:?}"),
        }
    }
    out
}

/// Runs `iters` iterations in blocks of at most 1000, summing only the timed part of each, so
/// the input buffers stay small whatever iteration count criterion asks for. Thread CPU time
/// has a coarse tick on some systems; blocks of 1000 iterations keep that error small.
fn timed_in_blocks(iters: u64, mut block: impl FnMut(usize) -> Duration) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(1000);
        total += block(n as usize);
        left -= n;
    }
    total
}

fn message(c: &mut Criterion) {
    let wire = warren_message_bytes();
    let amq_wire = amq_encode_into(&amq_frames(), Vec::new());
    // Both encoders produce the same bytes, so both decoders parse the same input.
    assert!(wire[..] == amq_wire[..], "encoders disagree");

    let mut group = c.benchmark_group("publish+header+1KiB/decode");
    group.bench_function("warren", |b| {
        b.iter_custom(|iters| {
            timed_in_blocks(iters, |n| {
                // A read buffer holding `n` messages back to back, as a busy connection has.
                let mut buf = BytesMut::with_capacity(n * wire.len());
                for _ in 0..n {
                    buf.extend_from_slice(&wire);
                }
                let start = ThreadTime::now();
                for _ in 0..n * 3 {
                    match decode_frame(&mut buf, FRAME_MAX) {
                        Ok(Some(frame)) => drop(black_box(frame)),
                        other => panic!("warren failed to decode: {other:?}"),
                    }
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("amq-protocol", |b| {
        b.iter_custom(|iters| {
            timed_in_blocks(iters, |n| {
                let mut input = Vec::with_capacity(n * amq_wire.len());
                for _ in 0..n {
                    input.extend_from_slice(&amq_wire);
                }
                let start = ThreadTime::now();
                let mut rest = &input[..];
                for _ in 0..n * 3 {
                    match parse_frame(rest) {
                        Ok((remaining, frame)) => {
                            drop(black_box(frame));
                            rest = remaining;
                        }
                        Err(error) => panic!("amq-protocol failed to parse: {error:?}"),
                    }
                }
                start.elapsed()
            })
        })
    });
    group.finish();

    let mut group = c.benchmark_group("publish+header+1KiB/encode");
    let method = Method::BasicPublish(publish());
    let props = properties();
    let body = body();
    let mut buf = BytesMut::with_capacity(4096);
    group.bench_function("warren", |b| {
        b.iter_custom(|iters| {
            timed_in_blocks(iters, |n| {
                let start = ThreadTime::now();
                for _ in 0..n {
                    buf.clear();
                    encode_method_frame(1, black_box(&method), &mut buf);
                    encode_basic_header_frame(1, body.len() as u64, black_box(&props), &mut buf);
                    encode_body_frames(1, black_box(&body), FRAME_MAX, &mut buf);
                    black_box(buf.len());
                }
                start.elapsed()
            })
        })
    });
    let frames = amq_frames();
    let mut out = Vec::with_capacity(4096);
    group.bench_function("amq-protocol", |b| {
        b.iter_custom(|iters| {
            timed_in_blocks(iters, |n| {
                let start = ThreadTime::now();
                for _ in 0..n {
                    out.clear();
                    out = amq_encode_into(black_box(&frames), std::mem::take(&mut out));
                    black_box(out.len());
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

fn table(c: &mut Criterion) {
    let table = table_20();
    let mut buf = BytesMut::new();
    table.encode(&mut buf);
    let wire = buf.freeze();
    let amq = amq_table(&table);
    let amq_wire = match amq::generation::gen_field_table(&amq)(WriteContext::from(Vec::new())) {
        Ok(context) => context.write,
        Err(error) => panic!("amq-protocol failed to encode: {error:?}"),
    };
    // amq-protocol sorts keys; ours are already sorted, so the bytes agree.
    assert!(wire[..] == amq_wire[..], "encoders disagree");

    let mut group = c.benchmark_group("table-20/decode");
    group.bench_function("warren", |b| {
        b.iter_custom(|iters| {
            timed_in_blocks(iters, |n| {
                let start = ThreadTime::now();
                for _ in 0..n {
                    drop(black_box(FieldTable::decode(black_box(&wire))));
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("amq-protocol", |b| {
        b.iter_custom(|iters| {
            timed_in_blocks(iters, |n| {
                let start = ThreadTime::now();
                for _ in 0..n {
                    drop(black_box(amq::parsing::parse_field_table(black_box(
                        &amq_wire[..],
                    ))));
                }
                start.elapsed()
            })
        })
    });
    group.finish();

    let mut group = c.benchmark_group("table-20/encode");
    let mut out = BytesMut::with_capacity(2048);
    group.bench_function("warren", |b| {
        b.iter_custom(|iters| {
            timed_in_blocks(iters, |n| {
                let start = ThreadTime::now();
                for _ in 0..n {
                    out.clear();
                    black_box(&table).encode(&mut out);
                    black_box(out.len());
                }
                start.elapsed()
            })
        })
    });
    let mut amq_out = Vec::with_capacity(2048);
    group.bench_function("amq-protocol", |b| {
        b.iter_custom(|iters| {
            timed_in_blocks(iters, |n| {
                let start = ThreadTime::now();
                for _ in 0..n {
                    amq_out.clear();
                    let context = WriteContext::from(std::mem::take(&mut amq_out));
                    amq_out = match amq::generation::gen_field_table(black_box(&amq))(context) {
                        Ok(context) => context.write,
                        Err(error) => panic!("amq-protocol failed to encode: {error:?}"),
                    };
                    black_box(amq_out.len());
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

fn config() -> Criterion {
    // Short runs: the machine is shared, and the ratios settle well within these times.
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(40)
}

criterion_group! {
    name = benches;
    config = config();
    targets = message, table
}
criterion_main!(benches);
