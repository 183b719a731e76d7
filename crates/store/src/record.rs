//! Checksummed record framing shared by the message log and the definitions file.
//!
//! A record on disk is `len: u32 LE | crc: u32 LE | payload[len]`, where `crc` is the CRC-32C of
//! the four `len` bytes followed by the payload. A torn write (some bytes missing at the end) or a
//! flipped bit fails the length check or the checksum; nothing past a bad record is trusted.

/// Bytes before a record's payload.
pub(crate) const FRAME_HEADER: usize = 8;

/// The largest payload accepted; a length above it is corruption. Bodies are far smaller (the
/// broker caps them), so this only guards against allocating on garbage.
pub(crate) const MAX_PAYLOAD: usize = 1 << 30;

/// Starts a record in `buf`; write the payload, then call [`finish`] with the returned mark.
pub(crate) fn begin(buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME_HEADER]);
    start
}

/// Fills in the length and checksum of the record started at `start`.
pub(crate) fn finish(buf: &mut [u8], start: usize) {
    let payload_len = buf.len() - start - FRAME_HEADER;
    // Payloads are built from bounded fields; saturate rather than wrap if one were not.
    let len = u32::try_from(payload_len).unwrap_or(u32::MAX).to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len), &buf[start + FRAME_HEADER..]);
    buf[start..start + 4].copy_from_slice(&len);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The result of reading the record at a position.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next<'a> {
    /// A good record: its payload, and the position after it.
    Record(&'a [u8], usize),
    /// No bytes left: a clean end.
    End,
    /// The bytes at this position are not a whole, valid record.
    Bad(&'static str),
}

/// Reads the record starting at `pos` in `data`.
pub(crate) fn next(data: &[u8], pos: usize) -> Next<'_> {
    let Some(rest) = data.get(pos..) else {
        return Next::Bad("position past the end");
    };
    if rest.is_empty() {
        return Next::End;
    }
    let (Some(len_bytes), Some(crc_bytes)) = (rest.get(0..4), rest.get(4..8)) else {
        return Next::Bad("truncated record header");
    };
    let len = u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
    let crc = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
    if len > MAX_PAYLOAD {
        return Next::Bad("record length out of range");
    }
    let Some(payload) = rest.get(FRAME_HEADER..FRAME_HEADER + len) else {
        return Next::Bad("truncated record");
    };
    if crc32c::crc32c_append(crc32c::crc32c(len_bytes), payload) != crc {
        return Next::Bad("checksum mismatch");
    }
    Next::Record(payload, pos + FRAME_HEADER + len)
}

/// Appends a `u64`, little-endian.
pub(crate) fn put_u64(buf: &mut Vec<u8>, value: u64) {
    buf.extend_from_slice(&value.to_le_bytes());
}

/// Appends up to 255 bytes with a one-byte length (longer input is cut; callers pass shortstrs).
pub(crate) fn put_short(buf: &mut Vec<u8>, bytes: &[u8]) {
    let bytes = &bytes[..bytes.len().min(255)];
    buf.push(bytes.len() as u8);
    buf.extend_from_slice(bytes);
}

/// Appends bytes with a four-byte length.
pub(crate) fn put_long(buf: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&bytes[..len as usize]);
}

/// Reads fields from a payload; every getter returns `None` past the end instead of panicking.
#[derive(Debug)]
pub(crate) struct Fields<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Fields<'a> {
        Fields { data, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let bytes = self.data.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(bytes)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|bytes| bytes[0])
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        let bytes = self.take(8)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(bytes);
        Some(u64::from_le_bytes(array))
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        let bytes = self.take(4)?;
        Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    pub(crate) fn short(&mut self) -> Option<&'a [u8]> {
        let len = self.u8()? as usize;
        self.take(len)
    }

    pub(crate) fn long(&mut self) -> Option<&'a [u8]> {
        let bytes = self.take(4)?;
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        self.take(len)
    }

    /// How many bytes were read so far.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Whether every byte was read: trailing bytes mean a record this build does not know.
    pub(crate) fn is_done(&self) -> bool {
        self.pos == self.data.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        let mark = begin(&mut buf);
        buf.extend_from_slice(payload);
        finish(&mut buf, mark);
        buf
    }

    #[test]
    fn round_trip_and_end() {
        let mut data = framed(b"one");
        data.extend(framed(b""));
        let Next::Record(first, pos) = next(&data, 0) else {
            panic!("first record")
        };
        assert_eq!(first, b"one");
        let Next::Record(second, pos) = next(&data, pos) else {
            panic!("second record")
        };
        assert_eq!(second, b"");
        assert_eq!(next(&data, pos), Next::End);
    }

    #[test]
    fn every_truncation_and_every_bit_flip_is_detected() {
        let data = framed(b"payload bytes");
        for cut in 1..data.len() {
            assert!(
                matches!(next(&data[..cut], 0), Next::Bad(_)),
                "cut at {cut}"
            );
        }
        for bit in 0..data.len() * 8 {
            let mut flipped = data.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(matches!(next(&flipped, 0), Next::Bad(_)), "bit {bit}");
        }
    }

    #[test]
    fn fields_never_read_past_the_end() {
        let mut buf = Vec::new();
        put_u64(&mut buf, 7);
        put_short(&mut buf, b"ab");
        put_long(&mut buf, b"cde");
        let mut fields = Fields::new(&buf);
        assert_eq!(fields.u64(), Some(7));
        assert_eq!(fields.short(), Some(&b"ab"[..]));
        assert_eq!(fields.long(), Some(&b"cde"[..]));
        assert!(fields.is_done());
        assert_eq!(fields.u8(), None);
        let mut short = Fields::new(&[5, 1, 2]);
        assert_eq!(short.short(), None);
        let mut long = Fields::new(&[255, 255, 255, 255]);
        assert_eq!(long.long(), None);
    }
}
