//! IPC frames between a client library and its local executive, over a unix stream
//! socket.
//!
//! ```text
//! request:            size: u32 | id: u32 | body       (size counts the whole frame)
//! response, callback: size: u32 | id: u32 | error: u32 | body
//! ```
//!
//! A response carries the id of the request it answers; a callback (an asynchronous
//! message for the client's dispatch) has [`CALLBACK_FLAG`] set in its id. The first
//! request of a connection is [`CONNECT_ID`] with a [`Connect`] body: it binds the
//! connection to one service and version, and the answer is a [`ConnectReply`]. Frames
//! larger than [`MAX_FRAME_LEN`] or smaller than their header are protocol errors: the
//! executive closes the connection.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::codec::{get_u16, Decode, DecodeError, Encode};
use crate::{SaError, SaVersion, ServiceId};

pub const REQUEST_HEADER_LEN: usize = 8;
pub const RESPONSE_HEADER_LEN: usize = 12;
/// Largest frame either side accepts: a maximum message (1 MiB) with room for headers.
pub const MAX_FRAME_LEN: usize = (1 << 20) + 4096;
/// The id of the first request of every connection.
pub const CONNECT_ID: u32 = 0x7FFF_FFFF;
/// Set in the id of a callback frame.
pub const CALLBACK_FLAG: u32 = 0x8000_0000;

/// A frame that cannot be: the stream is out of step and must be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The size field is below the header length.
    TooShort(u32),
    /// The size field is above [`MAX_FRAME_LEN`].
    TooLong(u32),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooShort(n) => write!(f, "frame size {n} below its header"),
            FrameError::TooLong(n) => write!(f, "frame size {n} above the maximum {MAX_FRAME_LEN}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Appends a request frame.
pub fn put_request(out: &mut BytesMut, id: u32, body: &[u8]) {
    out.reserve(REQUEST_HEADER_LEN + body.len());
    out.put_u32((REQUEST_HEADER_LEN + body.len()) as u32);
    out.put_u32(id);
    out.put_slice(body);
}

/// Appends a response or callback frame.
pub fn put_response(out: &mut BytesMut, id: u32, error: SaError, body: &[u8]) {
    out.reserve(RESPONSE_HEADER_LEN + body.len());
    out.put_u32((RESPONSE_HEADER_LEN + body.len()) as u32);
    out.put_u32(id);
    out.put_u32(error.as_u32());
    out.put_slice(body);
}

fn frame_len(buf: &BytesMut, header: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let size = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if (size as usize) < header {
        return Err(FrameError::TooShort(size));
    }
    if size as usize > MAX_FRAME_LEN {
        return Err(FrameError::TooLong(size));
    }
    Ok((buf.len() >= size as usize).then_some(size as usize))
}

/// Takes one whole request frame off the front of `buf`: `(id, body)`, or `None` until
/// the frame is complete.
pub fn take_request(buf: &mut BytesMut) -> Result<Option<(u32, Bytes)>, FrameError> {
    let Some(len) = frame_len(buf, REQUEST_HEADER_LEN)? else {
        return Ok(None);
    };
    let mut frame = buf.split_to(len).freeze();
    frame.advance(4);
    let id = frame.get_u32();
    Ok(Some((id, frame)))
}

/// A response or callback as received; `error` is the raw wire value (see
/// [`SaError::from_u32`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseFrame {
    pub id: u32,
    pub error: u32,
    pub body: Bytes,
}

impl ResponseFrame {
    pub fn is_callback(&self) -> bool {
        self.id & CALLBACK_FLAG != 0
    }

    /// The error code, or `MessageError` for a value the contract does not define.
    pub fn sa_error(&self) -> SaError {
        SaError::from_u32(self.error).unwrap_or(SaError::MessageError)
    }
}

/// Takes one whole response or callback frame off the front of `buf`.
pub fn take_response(buf: &mut BytesMut) -> Result<Option<ResponseFrame>, FrameError> {
    let Some(len) = frame_len(buf, RESPONSE_HEADER_LEN)? else {
        return Ok(None);
    };
    let mut frame = buf.split_to(len).freeze();
    frame.advance(4);
    let id = frame.get_u32();
    let error = frame.get_u32();
    Ok(Some(ResponseFrame {
        id,
        error,
        body: frame,
    }))
}

/// The body of the first request: which service this connection is for, at what version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connect {
    pub service: ServiceId,
    pub version: SaVersion,
}

impl Encode for Connect {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u16(self.service.0);
        self.version.encode(out);
    }
}

impl Decode for Connect {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(Connect {
            service: ServiceId(get_u16(buf)?),
            version: SaVersion::decode(buf)?,
        })
    }
}

/// The answer to [`Connect`]: the version the executive implements (with `Version` in
/// the header when the request could not be honoured).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectReply {
    pub version: SaVersion,
}

impl Encode for ConnectReply {
    fn encode(&self, out: &mut BytesMut) {
        self.version.encode(out);
    }
}

impl Decode for ConnectReply {
    fn decode(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(ConnectReply {
            version: SaVersion::decode(buf)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_only_when_whole() {
        let mut out = BytesMut::new();
        put_request(&mut out, 7, b"hello");
        put_request(&mut out, 8, b"");
        let mut partial = BytesMut::from(&out[..6]);
        assert_eq!(take_request(&mut partial), Ok(None));
        assert_eq!(
            take_request(&mut out),
            Ok(Some((7, Bytes::from_static(b"hello"))))
        );
        assert_eq!(take_request(&mut out), Ok(Some((8, Bytes::new()))));
        assert_eq!(take_request(&mut out), Ok(None));
    }

    #[test]
    fn bad_sizes_are_errors() {
        let mut b = BytesMut::from(&[0u8, 0, 0, 3, 0, 0, 0, 0][..]);
        assert_eq!(take_request(&mut b), Err(FrameError::TooShort(3)));
        let mut b = BytesMut::from(&[0xffu8, 0, 0, 0][..]);
        assert!(matches!(take_response(&mut b), Err(FrameError::TooLong(_))));
    }

    #[test]
    fn responses_carry_error_and_callback_flag() {
        let mut out = BytesMut::new();
        put_response(&mut out, 3 | CALLBACK_FLAG, SaError::Ok, b"x");
        put_response(&mut out, 4, SaError::TryAgain, b"");
        let cb = take_response(&mut out).unwrap().unwrap();
        assert!(cb.is_callback());
        let r = take_response(&mut out).unwrap().unwrap();
        assert!(!r.is_callback());
        assert_eq!(r.sa_error(), SaError::TryAgain);
    }
}
