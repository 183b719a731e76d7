//! Declared lengths never drive allocation: decoding frames, strings and tables that declare
//! up to 4 GiB allocates nothing of that size. A counting global allocator records the largest
//! single allocation made while decoding.
//!
//! This binary has one test only, so the harness's own threads do not allocate concurrently
//! with the measured section.

// A global allocator has to be an `unsafe impl`; it only forwards to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use warren_codec::{FieldTable, Method, decode_frame};

struct Counting;

static MEASURING: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);
static TOTAL: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if MEASURING.load(Ordering::Relaxed) {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
            TOTAL.fetch_add(layout.size(), Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if MEASURING.load(Ordering::Relaxed) {
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
            TOTAL.fetch_add(new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns (largest single allocation, total bytes allocated) during it.
fn measure(f: impl FnOnce()) -> (usize, usize) {
    LARGEST.store(0, Ordering::Relaxed);
    TOTAL.store(0, Ordering::Relaxed);
    MEASURING.store(true, Ordering::SeqCst);
    f();
    MEASURING.store(false, Ordering::SeqCst);
    (
        LARGEST.load(Ordering::Relaxed),
        TOTAL.load(Ordering::Relaxed),
    )
}

fn framed(frame_type: u8, payload: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u8(frame_type);
    buf.put_u16(1);
    buf.put_u32(payload.len() as u32);
    buf.put_slice(payload);
    buf.put_u8(0xCE);
    buf
}

#[test]
fn declared_lengths_of_4_gib_allocate_nothing() {
    let huge = u32::MAX.to_be_bytes();
    // A frame header declaring a 4 GiB payload, with frame_max 0 ("no limit").
    let mut frame_header = BytesMut::from(&[3u8, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF][..]);
    // connection.start-ok whose client-properties table declares 4 GiB.
    let start_ok = framed(1, &[&[0u8, 10, 0, 11][..], &huge, b"rest"].concat());
    // connection.secure-ok whose response longstr declares 4 GiB.
    let secure_ok = framed(1, &[&[0u8, 10, 0, 21][..], &huge, b"rest"].concat());
    // A table holding a longstr, an array and a byte array each declaring 4 GiB.
    let tables: Vec<Bytes> = [b'S', b'A', b'x', b'F']
        .iter()
        .map(|letter| {
            let mut t = BytesMut::new();
            t.put_u32(7);
            t.put_slice(&[1, b'k', *letter]);
            t.put_slice(&huge);
            t.freeze()
        })
        .collect();
    // A content header whose headers table declares 4 GiB.
    let header = framed(
        2,
        &[
            &[0u8, 60, 0, 0][..],
            &u64::MAX.to_be_bytes(),
            &[0x20, 0],
            &huge,
        ]
        .concat(),
    );

    let (largest, total) = measure(|| {
        assert!(decode_frame(&mut frame_header, 0).is_err());
        assert!(decode_frame(&mut start_ok.clone(), 0).is_err());
        assert!(decode_frame(&mut secure_ok.clone(), 0).is_err());
        for table in &tables {
            assert!(FieldTable::decode(table).is_err());
        }
        assert!(decode_frame(&mut header.clone(), 0).is_err());
        let payload = start_ok.clone().split_off(7).freeze();
        assert!(Method::decode(&payload.slice(..payload.len() - 1)).is_err());
    });
    // Clones of the small inputs and error values are all the decoder may allocate.
    assert!(
        largest < 1024,
        "largest allocation while decoding was {largest} bytes"
    );
    assert!(total < 16 * 1024, "decoding allocated {total} bytes in all");
}
