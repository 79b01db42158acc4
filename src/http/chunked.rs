//! A streaming decoder for `Transfer-Encoding: chunked` (RFC 9112 section 7.1).
//!
//! It never copies: fed whatever bytes have arrived, it reports where the payload bytes are
//! (ranges into the input) and how far it has consumed, and keeps its place between calls, so a
//! chunk may be split at any byte. The proxy uses it two ways: to forward an upstream's chunked
//! response verbatim while knowing exactly where it ends, and to re-frame a client's chunked
//! request body. Strictness is the point: sizes are checked for overflow, line endings must be
//! CRLF, and chunk-extension and trailer lengths are capped, so a body can neither smuggle bytes
//! past us nor make us buffer without bound.

use std::ops::Range;

use super::limits::{MAX_CHUNK_LINE_BYTES, MAX_TRAILER_BYTES};

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// A chunk size that is not hex, is empty, or overflows 64 bits.
    BadSize,
    /// A line that does not end in CRLF, or data not followed by CRLF.
    BadLineEnding,
    /// Chunk extensions or trailers longer than the limits allow.
    TooLong,
}

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChunkError::BadSize => "invalid chunk size",
            ChunkError::BadLineEnding => "invalid chunk line ending",
            ChunkError::TooLong => "chunk extension or trailer too long",
        })
    }
}

impl std::error::Error for ChunkError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of the size.
    Size,
    /// After the size: optional whitespace and `;extension` up to CR.
    Extension,
    /// Expecting LF to end the size line.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// Expecting CR after chunk data.
    DataCr,
    /// Expecting LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// Expecting LF to end a trailer line.
    TrailerLf,
    /// Expecting LF of the final empty line.
    EndLf,
    /// The body is complete.
    Done,
}

/// Result of one [`ChunkedDecoder::decode`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input that belong to this body (the rest is the next message).
    pub consumed: usize,
    /// The terminating zero chunk and trailers were all consumed.
    pub done: bool,
}

/// Incremental chunked decoder; see the module docs.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// Bytes of data left in the current chunk, or the size being accumulated.
    size: u64,
    digits: usize,
    line_len: usize,
    in_ext: bool,
    trailer_len: usize,
    /// Total payload bytes seen so far.
    payload: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::Size,
            size: 0,
            digits: 0,
            line_len: 0,
            in_ext: false,
            trailer_len: 0,
            payload: 0,
        }
    }

    /// True once the final chunk and trailers have been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Payload bytes decoded so far.
    pub fn payload_len(&self) -> u64 {
        self.payload
    }

    /// Decode as much of `input` as possible, calling `on_data` with the range of each run of
    /// payload bytes. Stops at the end of the body; bytes after it are not consumed.
    pub fn decode(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(Range<usize>),
    ) -> Result<Progress, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Size => match hex_val(b) {
                    Some(v) => {
                        // 15 hex digits keep the size far below u64::MAX and any real body.
                        if self.digits >= 15 {
                            return Err(ChunkError::BadSize);
                        }
                        self.size = (self.size << 4) | u64::from(v);
                        self.digits += 1;
                        self.line_len += 1;
                        i += 1;
                    }
                    None if self.digits == 0 => return Err(ChunkError::BadSize),
                    None => self.state = State::Extension,
                },
                State::Extension => {
                    self.line_len += 1;
                    if self.line_len > MAX_CHUNK_LINE_BYTES {
                        return Err(ChunkError::TooLong);
                    }
                    match b {
                        b'\r' => self.state = State::SizeLf,
                        b'\n' => return Err(ChunkError::BadLineEnding),
                        // After `;` anything up to CR is extension, which we ignore.
                        _ if self.in_ext => {}
                        b';' => self.in_ext = true,
                        // Only whitespace or an extension may follow the size digits.
                        b' ' | b'\t' => {}
                        _ => return Err(ChunkError::BadSize),
                    }
                    i += 1;
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnding);
                    }
                    i += 1;
                    self.line_len = 0;
                    self.digits = 0;
                    self.in_ext = false;
                    if self.size == 0 {
                        self.state = State::TrailerStart;
                    } else {
                        self.state = State::Data;
                    }
                }
                State::Data => {
                    let avail = (input.len() - i) as u64;
                    let take = avail.min(self.size) as usize;
                    on_data(i..i + take);
                    i += take;
                    self.size -= take as u64;
                    self.payload += take as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::BadLineEnding);
                    }
                    i += 1;
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnding);
                    }
                    i += 1;
                    self.state = State::Size;
                }
                State::TrailerStart => {
                    i += 1;
                    self.state = if b == b'\r' {
                        State::EndLf
                    } else if b == b'\n' {
                        return Err(ChunkError::BadLineEnding);
                    } else {
                        self.bump_trailer()?;
                        State::Trailer
                    };
                }
                State::Trailer => {
                    i += 1;
                    self.bump_trailer()?;
                    match b {
                        b'\r' => self.state = State::TrailerLf,
                        b'\n' => return Err(ChunkError::BadLineEnding),
                        _ => {}
                    }
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnding);
                    }
                    i += 1;
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnding);
                    }
                    i += 1;
                    self.state = State::Done;
                }
                State::Done => break,
            }
        }
        Ok(Progress {
            consumed: i,
            done: self.state == State::Done,
        })
    }

    fn bump_trailer(&mut self) -> Result<(), ChunkError> {
        self.trailer_len += 1;
        if self.trailer_len > MAX_TRAILER_BYTES {
            return Err(ChunkError::TooLong);
        }
        Ok(())
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Write the chunk-size line for a chunk of `len` bytes (`{len:x}\r\n`) into `out`.
pub fn write_chunk_header(out: &mut bytes::BytesMut, len: usize) {
    use std::fmt::Write;
    let _ = write!(out, "{len:x}\r\n");
}

/// The terminating zero-length chunk with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode `input` fed in pieces of `step` bytes; returns payload and total consumed.
    fn decode_steps(input: &[u8], step: usize) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let mut pos = 0;
        let mut done = false;
        while pos < input.len() && !done {
            let end = (pos + step).min(input.len());
            // Feed everything from pos to end; unconsumed bytes stay for the next call.
            let piece = &input[pos..end];
            let p = d.decode(piece, |r| out.extend_from_slice(&piece[r]))?;
            pos += p.consumed;
            done = p.done;
            if p.consumed == 0 && end == input.len() {
                break;
            }
        }
        Ok((out, pos, done))
    }

    #[test]
    fn decodes_simple_body_at_every_split() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\nNEXT";
        for step in 1..body.len() {
            let (out, consumed, done) = decode_steps(body, step).expect("valid body");
            assert_eq!(out, b"hello, world", "step {step}");
            assert!(done, "step {step}");
            assert_eq!(
                consumed,
                body.len() - 4,
                "stops before the next message, step {step}"
            );
        }
    }

    #[test]
    fn trailers_are_consumed_and_dropped() {
        let body = b"3\r\nabc\r\n0\r\nx-usage: 5\r\nother: y\r\n\r\n";
        let (out, consumed, done) = decode_steps(body, 1).expect("valid");
        assert_eq!(out, b"abc");
        assert!(done);
        assert_eq!(consumed, body.len());
    }

    #[test]
    fn uppercase_hex_and_leading_zeros() {
        let body = b"000A\r\n0123456789\r\n0\r\n\r\n";
        let (out, _, done) = decode_steps(body, 3).expect("valid");
        assert_eq!(out.len(), 10);
        assert!(done);
    }

    #[test]
    fn rejects_bad_sizes() {
        for bad in [
            &b"\r\nabc"[..],
            b"zz\r\n",
            b"-1\r\n",
            b"+5\r\nhello\r\n",
            b"0x5\r\nhello\r\n",
            b"5 5\r\nhello\r\n",
            b"ffffffffffffffffff\r\n",
        ] {
            let mut d = ChunkedDecoder::new();
            assert!(
                d.decode(bad, |_| {}).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn rejects_bare_lf_and_missing_crlf_after_data() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"0\r\n\n",
            b"0\r\nx: y\n\r\n",
        ] {
            let mut d = ChunkedDecoder::new();
            assert!(
                d.decode(bad, |_| {}).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn caps_extensions_and_trailers() {
        let mut long_ext = b"1;".to_vec();
        long_ext.extend(std::iter::repeat_n(b'a', MAX_CHUNK_LINE_BYTES + 1));
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.decode(&long_ext, |_| {}), Err(ChunkError::TooLong));

        let mut long_trailer = b"0\r\n".to_vec();
        long_trailer.extend(std::iter::repeat_n(b'a', MAX_TRAILER_BYTES + 1));
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.decode(&long_trailer, |_| {}), Err(ChunkError::TooLong));
    }

    #[test]
    fn chunk_header_writer() {
        let mut b = bytes::BytesMut::new();
        write_chunk_header(&mut b, 255);
        assert_eq!(&b[..], b"ff\r\n");
    }
}
