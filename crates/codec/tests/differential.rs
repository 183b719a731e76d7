//! Differential test against an independent implementation, the `amq-protocol` crate (the codec
//! under lapin): every method, field table and content header encoded by one decodes to the same
//! value with the other, and both encode it to the same bytes.
//!
//! amq-protocol keeps short strings as `String` and tables as a sorted `BTreeMap`, so the
//! values compared here use UTF-8 short strings and tables with sorted, unique keys; Warren's
//! wider range (any octets, duplicate keys in wire order) is covered by `roundtrip.rs`.

// The conversions and helpers run only under #[test], where a panic is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::{self, AMQPClass};
use amq_protocol::types as amq;
use amq_protocol::types::AMQPValue;
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use warren_codec::frame::{encode_basic_header_frame, encode_method_frame};
use warren_codec::{
    BasicProperties, ContentHeader, FieldTable, FieldValue, Frame, Method, ShortString,
    decode_frame,
};

mod comparable;

use comparable::strategies::{any_method, basic_properties};

/// Any method, with the two fields amq-protocol cannot carry set to the values it sends.
fn comparable_method() -> impl Strategy<Value = Method> {
    any_method().prop_map(|mut method| {
        match &mut method {
            Method::BasicQos(qos) => qos.prefetch_size = 0,
            Method::AccessRequestOk(ok) => ok.ticket = 1,
            _ => {}
        }
        method
    })
}

/// Conversion between a Warren field type and amq-protocol's.
trait Conv: Sized {
    type Amq;
    fn to_amq(&self) -> Self::Amq;
    fn from_amq(amq: &Self::Amq) -> Self;
}

macro_rules! same_type {
    ($($t:ty),*) => {$(
        impl Conv for $t {
            type Amq = $t;
            fn to_amq(&self) -> $t { *self }
            fn from_amq(amq: &$t) -> $t { *amq }
        }
    )*};
}
same_type!(bool, u8, u16, u32, u64);

impl Conv for ShortString {
    type Amq = amq::ShortString;
    fn to_amq(&self) -> amq::ShortString {
        self.as_str().unwrap().to_owned().into()
    }
    fn from_amq(amq: &amq::ShortString) -> ShortString {
        ShortString::try_from(amq.as_str()).unwrap()
    }
}

impl Conv for Bytes {
    type Amq = amq::LongString;
    fn to_amq(&self) -> amq::LongString {
        self.to_vec().into()
    }
    fn from_amq(amq: &amq::LongString) -> Bytes {
        Bytes::copy_from_slice(amq.as_bytes())
    }
}

impl Conv for FieldValue {
    type Amq = AMQPValue;
    fn to_amq(&self) -> AMQPValue {
        match self {
            FieldValue::Bool(v) => AMQPValue::Boolean(*v),
            FieldValue::I8(v) => AMQPValue::ShortShortInt(*v),
            FieldValue::U8(v) => AMQPValue::ShortShortUInt(*v),
            FieldValue::I16(v) => AMQPValue::ShortInt(*v),
            FieldValue::U16(v) => AMQPValue::ShortUInt(*v),
            FieldValue::I32(v) => AMQPValue::LongInt(*v),
            FieldValue::U32(v) => AMQPValue::LongUInt(*v),
            FieldValue::I64(v) => AMQPValue::LongLongInt(*v),
            FieldValue::F32(v) => AMQPValue::Float(*v),
            FieldValue::F64(v) => AMQPValue::Double(*v),
            FieldValue::Decimal { scale, value } => AMQPValue::DecimalValue(amq::DecimalValue {
                scale: *scale,
                value: *value,
            }),
            FieldValue::LongString(v) => AMQPValue::LongString(v.to_amq()),
            FieldValue::Array(values) => {
                AMQPValue::FieldArray(values.iter().map(Conv::to_amq).collect::<Vec<_>>().into())
            }
            FieldValue::Timestamp(v) => AMQPValue::Timestamp(*v),
            FieldValue::Table(table) => AMQPValue::FieldTable(table.to_amq()),
            FieldValue::Void => AMQPValue::Void,
            FieldValue::ByteArray(v) => AMQPValue::ByteArray(v.to_vec().into()),
        }
    }
    fn from_amq(amq: &AMQPValue) -> FieldValue {
        match amq {
            AMQPValue::Boolean(v) => FieldValue::Bool(*v),
            AMQPValue::ShortShortInt(v) => FieldValue::I8(*v),
            AMQPValue::ShortShortUInt(v) => FieldValue::U8(*v),
            AMQPValue::ShortInt(v) => FieldValue::I16(*v),
            AMQPValue::ShortUInt(v) => FieldValue::U16(*v),
            AMQPValue::LongInt(v) => FieldValue::I32(*v),
            AMQPValue::LongUInt(v) => FieldValue::U32(*v),
            AMQPValue::LongLongInt(v) => FieldValue::I64(*v),
            AMQPValue::Float(v) => FieldValue::F32(*v),
            AMQPValue::Double(v) => FieldValue::F64(*v),
            AMQPValue::DecimalValue(v) => FieldValue::Decimal {
                scale: v.scale,
                value: v.value,
            },
            AMQPValue::LongString(v) => FieldValue::LongString(Bytes::from_amq(v)),
            AMQPValue::FieldArray(values) => {
                FieldValue::Array(values.as_slice().iter().map(Conv::from_amq).collect())
            }
            AMQPValue::Timestamp(v) => FieldValue::Timestamp(*v),
            AMQPValue::FieldTable(table) => FieldValue::Table(FieldTable::from_amq(table)),
            AMQPValue::Void => FieldValue::Void,
            AMQPValue::ByteArray(v) => FieldValue::ByteArray(Bytes::copy_from_slice(v.as_slice())),
            other => panic!("amq-protocol produced a value Warren has no type for: {other:?}"),
        }
    }
}

impl Conv for FieldTable {
    type Amq = amq::FieldTable;
    fn to_amq(&self) -> amq::FieldTable {
        let map: BTreeMap<amq::ShortString, AMQPValue> =
            self.iter().map(|(k, v)| (k.to_amq(), v.to_amq())).collect();
        map.into()
    }
    fn from_amq(amq: &amq::FieldTable) -> FieldTable {
        FieldTable(
            amq.inner()
                .iter()
                .map(|(k, v)| (ShortString::from_amq(k), FieldValue::from_amq(v)))
                .collect(),
        )
    }
}

impl Conv for BasicProperties {
    type Amq = protocol::BasicProperties;
    fn to_amq(&self) -> protocol::BasicProperties {
        let mut p = protocol::BasicProperties::default();
        macro_rules! set {
            ($($field:ident => $with:ident),*) => {$(
                if let Some(v) = &self.$field { p = p.$with(v.to_amq()); }
            )*};
        }
        set!(content_type => with_content_type, content_encoding => with_content_encoding,
            headers => with_headers, delivery_mode => with_delivery_mode,
            priority => with_priority, correlation_id => with_correlation_id,
            reply_to => with_reply_to, expiration => with_expiration,
            message_id => with_message_id, timestamp => with_timestamp, kind => with_type,
            user_id => with_user_id, app_id => with_app_id, cluster_id => with_cluster_id);
        p
    }
    fn from_amq(p: &protocol::BasicProperties) -> BasicProperties {
        macro_rules! get {
            ($($field:ident),*) => {
                BasicProperties { $($field: p.$field().as_ref().map(Conv::from_amq)),* }
            };
        }
        get!(
            content_type,
            content_encoding,
            headers,
            delivery_mode,
            priority,
            correlation_id,
            reply_to,
            expiration,
            message_id,
            timestamp,
            kind,
            user_id,
            app_id,
            cluster_id
        )
    }
}

/// One line per method: Warren's variant, amq-protocol's class and method, and the fields
/// (which both name after the spec, without the reserved ones). amq-protocol also treats
/// `basic.qos` `prefetch-size` (always 0) and `access.request-ok` `ticket` (always 1, as RabbitMQ
/// sends) as reserved. Warren keeps them, since RabbitMQ answers a non-zero prefetch-size with
/// 540, so they are `fixed` here and in the compared methods (see `comparable_method`).
macro_rules! methods {
    ($($warren:ident => $class:ident($module:ident)::$method:ident { $($field:ident),* }
        $(fixed { $($fixed:ident = $value:expr),* })?,)*) => {
        fn method_to_amq(method: &Method) -> AMQPClass {
            match method {
                $(Method::$warren(_w) => AMQPClass::$class(protocol::$module::AMQPMethod::$method(
                    protocol::$module::$method { $($field: Conv::to_amq(&_w.$field)),* }
                )),)*
            }
        }

        fn method_from_amq(class: &AMQPClass) -> Method {
            match class {
                $(AMQPClass::$class(protocol::$module::AMQPMethod::$method(_a)) => {
                    Method::$warren(warren_codec::$warren {
                        $($field: Conv::from_amq(&_a.$field),)* $($($fixed: $value,)*)?
                    })
                })*
            }
        }
    };
}

methods! {
    ConnectionStart => Connection(connection)::Start { version_major, version_minor, server_properties, mechanisms, locales },
    ConnectionStartOk => Connection(connection)::StartOk { client_properties, mechanism, response, locale },
    ConnectionSecure => Connection(connection)::Secure { challenge },
    ConnectionSecureOk => Connection(connection)::SecureOk { response },
    ConnectionTune => Connection(connection)::Tune { channel_max, frame_max, heartbeat },
    ConnectionTuneOk => Connection(connection)::TuneOk { channel_max, frame_max, heartbeat },
    ConnectionOpen => Connection(connection)::Open { virtual_host },
    ConnectionOpenOk => Connection(connection)::OpenOk {  },
    ConnectionClose => Connection(connection)::Close { reply_code, reply_text, class_id, method_id },
    ConnectionCloseOk => Connection(connection)::CloseOk {  },
    ConnectionBlocked => Connection(connection)::Blocked { reason },
    ConnectionUnblocked => Connection(connection)::Unblocked {  },
    ConnectionUpdateSecret => Connection(connection)::UpdateSecret { new_secret, reason },
    ConnectionUpdateSecretOk => Connection(connection)::UpdateSecretOk {  },
    ChannelOpen => Channel(channel)::Open {  },
    ChannelOpenOk => Channel(channel)::OpenOk {  },
    ChannelFlow => Channel(channel)::Flow { active },
    ChannelFlowOk => Channel(channel)::FlowOk { active },
    ChannelClose => Channel(channel)::Close { reply_code, reply_text, class_id, method_id },
    ChannelCloseOk => Channel(channel)::CloseOk {  },
    AccessRequest => Access(access)::Request { realm, exclusive, passive, active, write, read },
    AccessRequestOk => Access(access)::RequestOk {} fixed { ticket = 1 },
    ExchangeDeclare => Exchange(exchange)::Declare { exchange, kind, passive, durable, auto_delete, internal, nowait, arguments },
    ExchangeDeclareOk => Exchange(exchange)::DeclareOk {  },
    ExchangeDelete => Exchange(exchange)::Delete { exchange, if_unused, nowait },
    ExchangeDeleteOk => Exchange(exchange)::DeleteOk {  },
    ExchangeBind => Exchange(exchange)::Bind { destination, source, routing_key, nowait, arguments },
    ExchangeBindOk => Exchange(exchange)::BindOk {  },
    ExchangeUnbind => Exchange(exchange)::Unbind { destination, source, routing_key, nowait, arguments },
    ExchangeUnbindOk => Exchange(exchange)::UnbindOk {  },
    QueueDeclare => Queue(queue)::Declare { queue, passive, durable, exclusive, auto_delete, nowait, arguments },
    QueueDeclareOk => Queue(queue)::DeclareOk { queue, message_count, consumer_count },
    QueueBind => Queue(queue)::Bind { queue, exchange, routing_key, nowait, arguments },
    QueueBindOk => Queue(queue)::BindOk {  },
    QueuePurge => Queue(queue)::Purge { queue, nowait },
    QueuePurgeOk => Queue(queue)::PurgeOk { message_count },
    QueueDelete => Queue(queue)::Delete { queue, if_unused, if_empty, nowait },
    QueueDeleteOk => Queue(queue)::DeleteOk { message_count },
    QueueUnbind => Queue(queue)::Unbind { queue, exchange, routing_key, arguments },
    QueueUnbindOk => Queue(queue)::UnbindOk {  },
    BasicQos => Basic(basic)::Qos { prefetch_count, global } fixed { prefetch_size = 0 },
    BasicQosOk => Basic(basic)::QosOk {  },
    BasicConsume => Basic(basic)::Consume { queue, consumer_tag, no_local, no_ack, exclusive, nowait, arguments },
    BasicConsumeOk => Basic(basic)::ConsumeOk { consumer_tag },
    BasicCancel => Basic(basic)::Cancel { consumer_tag, nowait },
    BasicCancelOk => Basic(basic)::CancelOk { consumer_tag },
    BasicPublish => Basic(basic)::Publish { exchange, routing_key, mandatory, immediate },
    BasicReturn => Basic(basic)::Return { reply_code, reply_text, exchange, routing_key },
    BasicDeliver => Basic(basic)::Deliver { consumer_tag, delivery_tag, redelivered, exchange, routing_key },
    BasicGet => Basic(basic)::Get { queue, no_ack },
    BasicGetOk => Basic(basic)::GetOk { delivery_tag, redelivered, exchange, routing_key, message_count },
    BasicGetEmpty => Basic(basic)::GetEmpty {  },
    BasicAck => Basic(basic)::Ack { delivery_tag, multiple },
    BasicReject => Basic(basic)::Reject { delivery_tag, requeue },
    BasicRecoverAsync => Basic(basic)::RecoverAsync { requeue },
    BasicRecover => Basic(basic)::Recover { requeue },
    BasicRecoverOk => Basic(basic)::RecoverOk {  },
    BasicNack => Basic(basic)::Nack { delivery_tag, multiple, requeue },
    TxSelect => Tx(tx)::Select {  },
    TxSelectOk => Tx(tx)::SelectOk {  },
    TxCommit => Tx(tx)::Commit {  },
    TxCommitOk => Tx(tx)::CommitOk {  },
    TxRollback => Tx(tx)::Rollback {  },
    TxRollbackOk => Tx(tx)::RollbackOk {  },
    ConfirmSelect => Confirm(confirm)::Select { nowait },
    ConfirmSelectOk => Confirm(confirm)::SelectOk {  },
}

fn amq_encode(frame: &AMQPFrame) -> Vec<u8> {
    let context = gen_frame(frame)(WriteContext::from(Vec::new())).unwrap();
    context.write
}

fn amq_decode(bytes: &[u8]) -> AMQPFrame {
    let (rest, frame) = parse_frame(bytes).unwrap();
    assert!(rest.is_empty(), "amq-protocol left {} bytes", rest.len());
    frame
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn methods_encoded_by_warren_decode_identically_in_amq_protocol(
        method in comparable_method(),
        channel in any::<u16>(),
    ) {
        let mut buf = BytesMut::new();
        encode_method_frame(channel, &method, &mut buf);
        let AMQPFrame::Method(amq_channel, class) = amq_decode(&buf) else {
            panic!("not a method frame");
        };
        prop_assert_eq!(amq_channel, channel);
        prop_assert_eq!(&class, &method_to_amq(&method));
        prop_assert_eq!(method_from_amq(&class), method);
    }

    #[test]
    fn methods_encoded_by_amq_protocol_decode_identically_in_warren(
        method in comparable_method(),
        channel in any::<u16>(),
    ) {
        let amq_bytes = amq_encode(&AMQPFrame::Method(channel, method_to_amq(&method)));
        let mut warren_bytes = BytesMut::new();
        encode_method_frame(channel, &method, &mut warren_bytes);
        prop_assert_eq!(&amq_bytes[..], &warren_bytes[..], "{}", method.name());
        let mut buf = BytesMut::from(&amq_bytes[..]);
        prop_assert_eq!(decode_frame(&mut buf, 0).unwrap(), Some(Frame::Method { channel, method }));
    }

    #[test]
    fn content_headers_agree_both_ways(
        properties in basic_properties(),
        body_size in any::<u64>(),
        channel in any::<u16>(),
    ) {
        let mut warren_bytes = BytesMut::new();
        encode_basic_header_frame(channel, body_size, &properties, &mut warren_bytes);
        let AMQPFrame::Header(amq_channel, header) = amq_decode(&warren_bytes) else {
            panic!("not a header frame");
        };
        prop_assert_eq!(amq_channel, channel);
        prop_assert_eq!(header.class_id, 60);
        prop_assert_eq!(header.body_size, body_size);
        prop_assert_eq!(BasicProperties::from_amq(&header.properties), properties.clone());

        let amq_bytes = amq_encode(&AMQPFrame::Header(channel, AMQPContentHeader {
            class_id: 60,
            body_size,
            properties: properties.to_amq(),
        }));
        prop_assert_eq!(&amq_bytes[..], &warren_bytes[..]);
        let mut buf = BytesMut::from(&amq_bytes[..]);
        let expected = ContentHeader::new(body_size, properties);
        prop_assert_eq!(decode_frame(&mut buf, 0).unwrap(), Some(Frame::Header { channel, header: expected }));
    }

    #[test]
    fn field_tables_agree_both_ways(table in comparable::field_table()) {
        let mut warren_bytes = BytesMut::new();
        table.encode(&mut warren_bytes);
        let (rest, amq_table) = amq::parsing::parse_field_table(&warren_bytes[..]).unwrap();
        prop_assert!(rest.is_empty());
        prop_assert_eq!(&amq_table, &table.to_amq());
        prop_assert_eq!(FieldTable::from_amq(&amq_table), table.clone());

        let context = amq::generation::gen_field_table(&table.to_amq())(WriteContext::from(Vec::new())).unwrap();
        prop_assert_eq!(&context.write[..], &warren_bytes[..]);
        prop_assert_eq!(FieldTable::decode(&Bytes::from(context.write)).unwrap(), table);
    }
}

#[test]
fn rabbitmq_type_letters_agree_for_every_value_type() {
    // One table holding each type once, compared value by value in both directions.
    let table = FieldTable(vec![
        (ShortString::from_static("a"), FieldValue::Bool(true)),
        (ShortString::from_static("b"), FieldValue::I8(-1)),
        (ShortString::from_static("c"), FieldValue::U8(255)),
        (ShortString::from_static("d"), FieldValue::I16(-300)),
        (ShortString::from_static("e"), FieldValue::U16(60_000)),
        (ShortString::from_static("f"), FieldValue::I32(-70_000)),
        (
            ShortString::from_static("g"),
            FieldValue::U32(4_000_000_000),
        ),
        (
            ShortString::from_static("h"),
            FieldValue::I64(-5_000_000_000),
        ),
        (ShortString::from_static("i"), FieldValue::F32(0.5)),
        (ShortString::from_static("j"), FieldValue::F64(0.25)),
        (
            ShortString::from_static("k"),
            FieldValue::Decimal {
                scale: 3,
                value: 1234,
            },
        ),
        (
            ShortString::from_static("l"),
            FieldValue::LongString(Bytes::from_static(b"long")),
        ),
        (
            ShortString::from_static("m"),
            FieldValue::Array(vec![FieldValue::Void]),
        ),
        (
            ShortString::from_static("n"),
            FieldValue::Timestamp(1_700_000_000),
        ),
        (
            ShortString::from_static("o"),
            FieldValue::Table(FieldTable::new()),
        ),
        (ShortString::from_static("p"), FieldValue::Void),
        (
            ShortString::from_static("q"),
            FieldValue::ByteArray(Bytes::from_static(b"\x00\x01")),
        ),
    ]);
    let mut bytes = BytesMut::new();
    table.encode(&mut bytes);
    let (_, amq_table) = amq::parsing::parse_field_table(&bytes[..]).unwrap();
    assert_eq!(amq_table.inner().len(), 17);
    assert_eq!(FieldTable::from_amq(&amq_table), table);
}
