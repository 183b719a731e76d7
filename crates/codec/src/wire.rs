//! Primitive reads and writes: a bounds-checked cursor over a `Bytes` payload, and the string
//! writers. Every read checks the remaining length first and returns `FieldError::Truncated`
//! instead of panicking; strings come out as zero-copy `Bytes` slices of the payload.
//!
//! This is hand-written rather than built on nom: the decoder must hand out `Bytes` slices of the
//! read buffer (nom works on `&[u8]` and would need `Bytes::slice_ref` per string), and the
//! generated method decoders read a fixed sequence of fields, for which a cursor with one length
//! check per field compiles to the fewest instructions.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::FieldError;
use crate::table::{FieldTable, ShortString};

/// A read cursor over `buf[pos..end]`.
pub(crate) struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    /// A cursor over all of `buf`.
    #[inline]
    pub(crate) fn new(buf: &'a Bytes) -> Self {
        Reader {
            buf,
            pos: 0,
            end: buf.len(),
        }
    }

    /// Bytes left to read.
    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.end - self.pos
    }

    /// Whether every byte has been read.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.end
    }

    /// Succeeds only if every byte has been read.
    #[inline]
    pub(crate) fn finish(&self) -> Result<(), FieldError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(FieldError::TrailingBytes(n)),
        }
    }

    /// Checks that `n` more bytes are there, returning the start offset and advancing past them.
    #[inline]
    fn advance(&mut self, n: usize) -> Result<usize, FieldError> {
        let remaining = self.remaining();
        if n > remaining {
            return Err(FieldError::Truncated {
                needed: n as u64,
                remaining,
            });
        }
        let start = self.pos;
        self.pos += n;
        Ok(start)
    }

    /// The next `N` bytes as an array.
    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FieldError> {
        let start = self.advance(N)?;
        let mut out = [0u8; N];
        if let Some(src) = self.buf.get(start..start + N) {
            out.copy_from_slice(src);
        }
        Ok(out)
    }

    /// Skips `n` bytes.
    #[inline]
    pub(crate) fn skip(&mut self, n: usize) -> Result<(), FieldError> {
        self.advance(n).map(|_| ())
    }

    /// The next `n` bytes as a zero-copy slice.
    #[inline]
    pub(crate) fn bytes(&mut self, n: usize) -> Result<Bytes, FieldError> {
        let start = self.advance(n)?;
        Ok(self.buf.slice(start..start + n))
    }

    /// A cursor over the next `n` bytes, advancing this one past them.
    #[inline]
    pub(crate) fn sub(&mut self, n: usize) -> Result<Reader<'a>, FieldError> {
        let start = self.advance(n)?;
        Ok(Reader {
            buf: self.buf,
            pos: start,
            end: start + n,
        })
    }

    #[inline]
    pub(crate) fn u8(&mut self) -> Result<u8, FieldError> {
        Ok(self.array::<1>()?[0])
    }

    #[inline]
    pub(crate) fn u16(&mut self) -> Result<u16, FieldError> {
        self.array().map(u16::from_be_bytes)
    }

    #[inline]
    pub(crate) fn u32(&mut self) -> Result<u32, FieldError> {
        self.array().map(u32::from_be_bytes)
    }

    #[inline]
    pub(crate) fn u64(&mut self) -> Result<u64, FieldError> {
        self.array().map(u64::from_be_bytes)
    }

    /// A `shortstr`: one length octet, then that many bytes.
    #[inline]
    pub(crate) fn shortstr(&mut self) -> Result<ShortString, FieldError> {
        let len = usize::from(self.u8()?);
        // A u8 length is at most 255, so the ShortString invariant holds by construction.
        self.bytes(len).map(ShortString::from_wire)
    }

    /// A `longstr`: a 32-bit length, checked against the remaining bytes, then the bytes.
    #[inline]
    pub(crate) fn longstr(&mut self) -> Result<Bytes, FieldError> {
        let len = self.u32()?;
        self.bytes(len_to_usize(len, self.remaining())?)
    }

    /// A field table, length-prefixed.
    #[inline]
    pub(crate) fn table(&mut self) -> Result<FieldTable, FieldError> {
        crate::table::decode_table(self, 0)
    }

    pub(crate) fn skip_shortstr(&mut self) -> Result<(), FieldError> {
        let len = usize::from(self.u8()?);
        self.skip(len)
    }

    pub(crate) fn skip_longstr(&mut self) -> Result<(), FieldError> {
        let len = self.u32()?;
        self.skip(len_to_usize(len, self.remaining())?)
    }

    #[allow(dead_code)] // The spec has no reserved table field today; kept for the generator.
    pub(crate) fn skip_table(&mut self) -> Result<(), FieldError> {
        self.table().map(|_| ())
    }
}

/// Converts a wire length to `usize`, failing (without reading or allocating) when it exceeds
/// what remains. On 32-bit targets a 4 GiB length cannot overflow the conversion either.
#[inline]
pub(crate) fn len_to_usize(len: u32, remaining: usize) -> Result<usize, FieldError> {
    match usize::try_from(len) {
        Ok(n) if n <= remaining => Ok(n),
        _ => Err(FieldError::Truncated {
            needed: u64::from(len),
            remaining,
        }),
    }
}

/// Writes a `shortstr`. `ShortString` guarantees at most 255 bytes.
#[inline]
pub(crate) fn put_shortstr(buf: &mut BytesMut, value: &ShortString) {
    let bytes = value.as_bytes();
    buf.reserve(1 + bytes.len());
    buf.put_u8(bytes.len() as u8);
    buf.put_slice(bytes);
}

/// Writes a `longstr`. Lengths above `u32::MAX` cannot occur in a frame (frames are bounded far
/// below that), so the cast only truncates for inputs no peer could receive anyway.
#[inline]
pub(crate) fn put_longstr(buf: &mut BytesMut, value: &[u8]) {
    buf.reserve(4 + value.len());
    buf.put_u32(value.len() as u32);
    buf.put_slice(value);
}

/// Starts a 32-bit length prefix; returns the offset to pass to `end_length`.
#[inline]
pub(crate) fn begin_length(buf: &mut BytesMut) -> usize {
    let at = buf.len();
    buf.put_u32(0);
    at
}

/// Fills in a length prefix started by `begin_length` with the bytes written since.
#[inline]
pub(crate) fn end_length(buf: &mut BytesMut, at: usize) {
    let len = (buf.len() - at - 4) as u32;
    if let Some(slot) = buf.get_mut(at..at + 4) {
        slot.copy_from_slice(&len.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_big_endian_integers() {
        let data = Bytes::from_static(&[1, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 4]);
        let mut r = Reader::new(&data);
        assert_eq!(r.u8().unwrap(), 1);
        assert_eq!(r.u16().unwrap(), 2);
        assert_eq!(r.u32().unwrap(), 3);
        assert_eq!(r.u64().unwrap(), 4);
        assert!(r.is_empty());
        assert_eq!(
            r.u8(),
            Err(FieldError::Truncated {
                needed: 1,
                remaining: 0
            })
        );
    }

    #[test]
    fn short_reads_fail_without_consuming() {
        let data = Bytes::from_static(&[0, 1, 2]);
        let mut r = Reader::new(&data);
        assert_eq!(
            r.u32(),
            Err(FieldError::Truncated {
                needed: 4,
                remaining: 3
            })
        );
        assert_eq!(r.remaining(), 3);
        assert_eq!(r.u16().unwrap(), 1);
    }

    #[test]
    fn shortstr_is_a_zero_copy_slice() {
        let data = Bytes::from_static(b"\x05hello!");
        let mut r = Reader::new(&data);
        let s = r.shortstr().unwrap();
        assert_eq!(s.as_bytes(), b"hello");
        assert_eq!(s.as_bytes().as_ptr(), data[1..].as_ptr());
        assert_eq!(r.remaining(), 1);
    }

    #[test]
    fn shortstr_longer_than_payload_is_truncated() {
        let data = Bytes::from_static(b"\xffab");
        let mut r = Reader::new(&data);
        assert_eq!(
            r.shortstr(),
            Err(FieldError::Truncated {
                needed: 255,
                remaining: 2
            })
        );
    }

    #[test]
    fn longstr_of_4_gib_is_refused_before_reading() {
        let data = Bytes::from_static(b"\xff\xff\xff\xffabc");
        let mut r = Reader::new(&data);
        assert_eq!(
            r.longstr(),
            Err(FieldError::Truncated {
                needed: u64::from(u32::MAX),
                remaining: 3
            })
        );
        let data = Bytes::from_static(b"\xff\xff\xff\xffabc");
        assert!(Reader::new(&data).skip_longstr().is_err());
    }

    #[test]
    fn longstr_round_trips() {
        let mut buf = BytesMut::new();
        put_longstr(&mut buf, b"body bytes");
        let data = buf.freeze();
        assert_eq!(&data[..4], &[0, 0, 0, 10]);
        let mut r = Reader::new(&data);
        assert_eq!(r.longstr().unwrap(), Bytes::from_static(b"body bytes"));
        r.finish().unwrap();
    }

    #[test]
    fn shortstr_writes_length_octet() {
        let mut buf = BytesMut::new();
        put_shortstr(&mut buf, &ShortString::from_static("amq.direct"));
        assert_eq!(&buf[..], b"\x0aamq.direct");
    }

    #[test]
    fn sub_reader_is_bounded() {
        let data = Bytes::from_static(&[0, 1, 0, 2, 9]);
        let mut r = Reader::new(&data);
        let mut sub = r.sub(4).unwrap();
        assert_eq!(sub.u16().unwrap(), 1);
        assert_eq!(sub.u16().unwrap(), 2);
        assert!(sub.u8().is_err());
        assert_eq!(r.u8().unwrap(), 9);
        assert!(Reader::new(&data).sub(6).is_err());
    }

    #[test]
    fn finish_reports_trailing_bytes() {
        let data = Bytes::from_static(&[1, 2, 3]);
        let mut r = Reader::new(&data);
        r.skip(1).unwrap();
        assert_eq!(r.finish(), Err(FieldError::TrailingBytes(2)));
    }

    #[test]
    fn length_prefix_is_patched() {
        let mut buf = BytesMut::new();
        buf.put_u8(7);
        let at = begin_length(&mut buf);
        buf.put_slice(b"abc");
        end_length(&mut buf, at);
        assert_eq!(&buf[..], &[7, 0, 0, 0, 3, b'a', b'b', b'c']);
    }
}
