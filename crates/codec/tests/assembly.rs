//! Content assembly: method, header, bodies; frames out of place; sizes.

use bytes::{Bytes, BytesMut};
use warren_codec::frame::{encode_body_frames, encode_header_frame, encode_method_frame};
use warren_codec::{
    Assembled, AssemblyError, BasicAck, BasicProperties, BasicPublish, ContentAssembly,
    ContentHeader, Frame, Method, ReplyCode, ShortString, decode_frame,
};

fn publish() -> Method {
    BasicPublish {
        routing_key: ShortString::from_static("k"),
        ..Default::default()
    }
    .into()
}

fn header(body_size: u64) -> ContentHeader {
    ContentHeader::new(body_size, BasicProperties::default())
}

fn feed(assembly: &mut ContentAssembly, frame: Frame) -> Result<Assembled, AssemblyError> {
    match frame {
        Frame::Method { method, .. } => assembly.recv_method(method),
        Frame::Header { header, .. } => assembly.recv_header(header),
        Frame::Body { payload, .. } => assembly.recv_body(payload),
        Frame::Heartbeat { .. } => Ok(Assembled::Pending),
    }
}

#[test]
fn method_without_content_passes_straight_through() {
    let mut assembly = ContentAssembly::new(1 << 20);
    let ack: Method = BasicAck {
        delivery_tag: 5,
        multiple: false,
    }
    .into();
    assert_eq!(
        assembly.recv_method(ack.clone()),
        Ok(Assembled::Method(ack))
    );
    assert!(assembly.is_idle());
}

#[test]
fn single_body_frame_is_not_copied() {
    let mut wire = BytesMut::new();
    encode_method_frame(1, &publish(), &mut wire);
    encode_header_frame(1, 60, 5, &[0, 0], &mut wire);
    encode_body_frames(1, b"hello", 4096, &mut wire);
    let body_start = wire.as_ptr() as usize + wire.len() - 6;
    let mut assembly = ContentAssembly::new(1 << 20);
    let mut result = Assembled::Pending;
    while let Some(frame) = decode_frame(&mut wire, 4096).unwrap() {
        result = feed(&mut assembly, frame).unwrap();
    }
    let Assembled::Message(message) = result else {
        panic!("{result:?}")
    };
    assert_eq!(message.method, publish());
    assert_eq!(message.body, Bytes::from_static(b"hello"));
    assert_eq!(message.body.as_ptr() as usize, body_start);
    assert!(assembly.is_idle());
}

#[test]
fn body_split_over_many_frames_is_joined() {
    let body: Vec<u8> = (0..50_000u32).map(|i| i as u8).collect();
    let mut wire = BytesMut::new();
    encode_method_frame(1, &publish(), &mut wire);
    encode_header_frame(1, 60, body.len() as u64, &[0, 0], &mut wire);
    encode_body_frames(1, &body, 4096, &mut wire);
    let mut assembly = ContentAssembly::new(1 << 20);
    let mut messages = Vec::new();
    while let Some(frame) = decode_frame(&mut wire, 4096).unwrap() {
        if let Assembled::Message(message) = feed(&mut assembly, frame).unwrap() {
            messages.push(message);
        }
    }
    assert_eq!(messages.len(), 1);
    assert_eq!(&messages[0].body[..], &body[..]);
}

#[test]
fn empty_body_completes_at_the_header() {
    let mut assembly = ContentAssembly::new(100);
    assert_eq!(assembly.recv_method(publish()), Ok(Assembled::Pending));
    let Ok(Assembled::Message(message)) = assembly.recv_header(header(0)) else {
        panic!()
    };
    assert!(message.body.is_empty());
    assert!(assembly.is_idle());
}

#[test]
fn body_before_header_and_header_before_method_are_unexpected() {
    let mut assembly = ContentAssembly::new(100);
    let error = assembly.recv_body(Bytes::from_static(b"x")).unwrap_err();
    assert_eq!(error, AssemblyError::ExpectedMethod);
    assert_eq!(error.reply_code(), ReplyCode::UnexpectedFrame);
    assert_eq!(
        assembly.recv_header(header(1)),
        Err(AssemblyError::ExpectedMethod)
    );
    assembly.recv_method(publish()).unwrap();
    assert_eq!(
        assembly.recv_body(Bytes::from_static(b"x")),
        Err(AssemblyError::ExpectedHeader { expected: 60 })
    );
}

#[test]
fn method_during_content_is_unexpected() {
    let mut assembly = ContentAssembly::new(100);
    assembly.recv_method(publish()).unwrap();
    let error = assembly.recv_method(publish()).unwrap_err();
    assert_eq!(error, AssemblyError::ExpectedHeader { expected: 60 });
    assert_eq!(
        error.to_string(),
        "expected content header for class 60, got non content header frame instead"
    );
    let mut assembly = ContentAssembly::new(100);
    assembly.recv_method(publish()).unwrap();
    assembly.recv_header(header(2)).unwrap();
    assert_eq!(
        assembly.recv_method(publish()),
        Err(AssemblyError::ExpectedBody)
    );
    assert_eq!(
        assembly.recv_header(header(2)),
        Err(AssemblyError::ExpectedBody)
    );
}

#[test]
fn header_of_another_class_is_unexpected() {
    let mut assembly = ContentAssembly::new(100);
    assembly.recv_method(publish()).unwrap();
    let mut other = header(1);
    other.class_id = 50;
    let error = assembly.recv_header(other).unwrap_err();
    assert_eq!(
        error,
        AssemblyError::WrongHeaderClass {
            expected: 60,
            got: 50
        }
    );
    assert_eq!(error.reply_code(), ReplyCode::UnexpectedFrame);
}

#[test]
fn body_longer_than_declared_is_a_frame_error() {
    let mut assembly = ContentAssembly::new(100);
    assembly.recv_method(publish()).unwrap();
    assembly.recv_header(header(2)).unwrap();
    let error = assembly.recv_body(Bytes::from_static(b"abc")).unwrap_err();
    assert_eq!(
        error,
        AssemblyError::BodyTooLong {
            declared: 2,
            received: 3
        }
    );
    assert_eq!(error.reply_code(), ReplyCode::FrameError);
}

#[test]
fn declared_size_above_the_maximum_is_refused_at_the_header() {
    let mut assembly = ContentAssembly::new(1000);
    assembly.recv_method(publish()).unwrap();
    let error = assembly.recv_header(header(u64::MAX)).unwrap_err();
    assert_eq!(
        error,
        AssemblyError::BodyTooLarge {
            size: u64::MAX,
            max: 1000
        }
    );
    assert_eq!(error.reply_code(), ReplyCode::PreconditionFailed);
    assert!(assembly.is_idle());
}

#[test]
fn reset_drops_a_partial_message() {
    let mut assembly = ContentAssembly::new(100);
    assembly.recv_method(publish()).unwrap();
    assembly.recv_header(header(10)).unwrap();
    assembly.recv_body(Bytes::from_static(b"abc")).unwrap();
    assert!(!assembly.is_idle());
    assembly.reset();
    assert!(assembly.is_idle());
    assert_eq!(
        assembly.recv_body(Bytes::from_static(b"x")),
        Err(AssemblyError::ExpectedMethod)
    );
}
