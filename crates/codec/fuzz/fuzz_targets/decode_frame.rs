//! Fuzzes the frame decoder: any bytes, read in arbitrary chunks, through `decode_frame`, content
//! assembly and the protocol header check. Finds panics, hangs and large allocations (run with
//! `-malloc_limit_mb`), and checks that whatever decodes re-encodes to bytes that decode to the
//! same bytes again.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use warren_codec::frame::{
    check_protocol_header, encode_body_frames, encode_header_frame, encode_method_frame,
};
use warren_codec::{Assembled, ContentAssembly, Frame, decode_frame};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else {
        return;
    };
    let _ = check_protocol_header(data);
    // The first byte picks the negotiated frame_max and how the bytes arrive.
    let frame_max = match selector & 0x3 {
        0 => 0,
        1 => 4096,
        2 => 131_072,
        _ => 16,
    };
    let chunk = usize::from(selector >> 2).max(1);
    let mut buf = BytesMut::new();
    let mut assembly = ContentAssembly::new(1 << 20);
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decode_frame(&mut buf, frame_max) {
                Ok(Some(frame)) => {
                    check_reencodes(&frame);
                    let _ = match frame {
                        Frame::Method { method, .. } => assembly.recv_method(method),
                        Frame::Header { header, .. } => assembly.recv_header(header),
                        Frame::Body { payload, .. } => assembly.recv_body(payload),
                        Frame::Heartbeat { .. } => Ok(Assembled::Pending),
                    };
                }
                Ok(None) => break,
                Err(error) => {
                    // Every error must name a reply code a broker can close with.
                    let _ = error.reply_code();
                    return;
                }
            }
        }
    }
});

/// A decoded frame encodes to bytes that decode and encode to the same bytes again (encoding
/// normalises, e.g. any non-zero boolean octet becomes 1, so the first encoding is the fixpoint).
fn check_reencodes(frame: &Frame) {
    let first = encode(frame);
    let mut again = first.clone();
    let decoded = match decode_frame(&mut again, 0) {
        Ok(Some(decoded)) => decoded,
        other => panic!("re-encoded frame does not decode: {other:?}"),
    };
    assert!(again.is_empty(), "re-encoded frame left bytes over");
    assert_eq!(encode(&decoded), first, "encoding is not stable");
}

fn encode(frame: &Frame) -> BytesMut {
    let mut buf = BytesMut::new();
    match frame {
        Frame::Method { channel, method } => encode_method_frame(*channel, method, &mut buf),
        Frame::Header { channel, header } => encode_header_frame(
            *channel,
            header.class_id,
            header.body_size,
            &header.raw_properties,
            &mut buf,
        ),
        Frame::Body { channel, payload } => {
            if !payload.is_empty() {
                encode_body_frames(*channel, payload, 0, &mut buf)
            } else {
                // An empty body frame is legal on the wire though an encoder never writes one.
                buf.extend_from_slice(&[
                    3,
                    (*channel >> 8) as u8,
                    *channel as u8,
                    0,
                    0,
                    0,
                    0,
                    0xCE,
                ]);
            }
        }
        Frame::Heartbeat { .. } => warren_codec::frame::encode_heartbeat(&mut buf),
    }
    buf
}
