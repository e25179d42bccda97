//! Encoding and decoding of contract messages: big-endian integers, length-prefixed byte
//! strings with explicit bounds, and the [`Encode`]/[`Decode`] pair every message
//! implements.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Why a message was refused. The executive closes the connection that sent it; the
/// library reports [`crate::SaError::MessageError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than a field needs.
    Truncated,
    /// A length or count above its bound.
    TooLong,
    /// A value outside its defined set (an enum, a flag, a bool).
    BadValue,
    /// Bytes left over after the last field.
    TrailingBytes,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DecodeError::Truncated => "message truncated",
            DecodeError::TooLong => "length over its bound",
            DecodeError::BadValue => "value out of range",
            DecodeError::TrailingBytes => "trailing bytes",
        })
    }
}

impl std::error::Error for DecodeError {}

pub trait Encode {
    /// Appends the encoding to `out`.
    fn encode(&self, out: &mut BytesMut);

    /// About how many bytes `encode` appends (a capacity hint, so that encoding a
    /// message does not grow its buffer step by step; 0 when unknown).
    fn size_hint(&self) -> usize {
        0
    }

    fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.size_hint());
        self.encode(&mut out);
        out.freeze()
    }
}

pub trait Decode: Sized {
    /// Reads one value from the front of `buf`, advancing it.
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError>;

    /// Decodes a whole message: `data` must hold exactly one value.
    fn decode_exact(mut data: Bytes) -> Result<Self, DecodeError> {
        let v = Self::decode(&mut data)?;
        if data.has_remaining() {
            return Err(DecodeError::TrailingBytes);
        }
        Ok(v)
    }
}

fn need(buf: &Bytes, n: usize) -> Result<(), DecodeError> {
    if buf.remaining() < n {
        Err(DecodeError::Truncated)
    } else {
        Ok(())
    }
}

pub fn get_u8(buf: &mut Bytes) -> Result<u8, DecodeError> {
    need(buf, 1)?;
    Ok(buf.get_u8())
}

pub fn get_u16(buf: &mut Bytes) -> Result<u16, DecodeError> {
    need(buf, 2)?;
    Ok(buf.get_u16())
}

pub fn get_u32(buf: &mut Bytes) -> Result<u32, DecodeError> {
    need(buf, 4)?;
    Ok(buf.get_u32())
}

pub fn get_u64(buf: &mut Bytes) -> Result<u64, DecodeError> {
    need(buf, 8)?;
    Ok(buf.get_u64())
}

pub fn get_bool(buf: &mut Bytes) -> Result<bool, DecodeError> {
    match get_u8(buf)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::BadValue),
    }
}

/// A `u32`-length-prefixed byte string of at most `max` bytes, as a zero-copy slice.
pub fn get_bytes(buf: &mut Bytes, max: usize) -> Result<Bytes, DecodeError> {
    let len = get_u32(buf)? as usize;
    if len > max {
        return Err(DecodeError::TooLong);
    }
    need(buf, len)?;
    Ok(buf.split_to(len))
}

pub fn put_bytes(out: &mut BytesMut, data: &[u8]) {
    out.put_u32(u32::try_from(data.len()).unwrap_or(u32::MAX));
    out.put_slice(data);
}

/// A `u32` count of items of at least `min_item_len` bytes each, checked against `max`
/// and against what is left, so that a bogus count cannot make us allocate.
pub fn get_count(buf: &mut Bytes, max: usize, min_item_len: usize) -> Result<usize, DecodeError> {
    let n = get_u32(buf)? as usize;
    if n > max {
        return Err(DecodeError::TooLong);
    }
    need(buf, n.saturating_mul(min_item_len))?;
    Ok(n)
}

pub fn put_count(out: &mut BytesMut, n: usize) {
    out.put_u32(u32::try_from(n).unwrap_or(u32::MAX));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_reads_refuse_before_allocating() {
        let mut b = Bytes::from_static(&[0, 0, 0, 9, 1, 2]);
        assert_eq!(get_bytes(&mut b, 100), Err(DecodeError::Truncated));
        let mut b = Bytes::from_static(&[0, 0, 0, 9, 1, 2]);
        assert_eq!(get_bytes(&mut b, 4), Err(DecodeError::TooLong));
        let mut b = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(get_count(&mut b, 1000, 4), Err(DecodeError::TooLong));
        let mut b = Bytes::from_static(&[0, 0, 0, 3, 0]);
        assert_eq!(get_count(&mut b, 1000, 4), Err(DecodeError::Truncated));
        let mut b = Bytes::from_static(&[2]);
        assert_eq!(get_bool(&mut b), Err(DecodeError::BadValue));
    }
}
