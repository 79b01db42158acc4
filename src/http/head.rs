//! Request and response heads: parse with httparse, then decide framing and keep-alive.
//!
//! A parsed head keeps the raw bytes (`Bytes`) and the positions of each field in them, so
//! nothing is copied to parse; the proxy re-emits only the fields it keeps. The framing rules are
//! strict (RFC 9112 section 6) because a proxy that frames a request differently from the
//! upstream lets a client smuggle a second request past it:
//! - Transfer-Encoding together with Content-Length: 400.
//! - Several Content-Length values that differ, or one that is not plain digits: 400.
//! - Transfer-Encoding other than exactly `chunked`, or on an HTTP/1.0 request: 400 (501 for a
//!   real but unsupported coding).
//! - obs-fold, bad header names, bad versions: httparse refuses them, and so do we (400).

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use super::limits::{MAX_HEADERS, MAX_HEAD_BYTES};

/// How a message body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body at all (GET without length, HEAD responses, 204, 304, 1xx).
    Empty,
    /// Exactly this many bytes follow the head.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Response only: the body runs until the upstream closes the connection.
    UntilClose,
}

impl BodyFraming {
    /// True when at least one body byte may follow the head.
    pub fn has_body(self) -> bool {
        !matches!(self, BodyFraming::Empty | BodyFraming::Length(0))
    }
}

/// HTTP version of a message; only 1.0 and 1.1 exist for us (httparse refuses the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

impl Version {
    /// The `Connection` field line (with CRLF, or empty) a response to a request of this version
    /// needs. HTTP/1.1 persists unless told `close`; HTTP/1.0 closes unless told `keep-alive`,
    /// so a 1.0 client that asked to keep the connection must be answered so, or it waits for
    /// our close (ApacheBench `-k` does) while we wait for its next request.
    pub fn connection_field(self, close: bool) -> &'static str {
        match (close, self) {
            (true, _) => "connection: close\r\n",
            (false, Version::Http10) => "connection: keep-alive\r\n",
            (false, Version::Http11) => "",
        }
    }
}

/// The methods a gateway in front of model APIs has any use for. CONNECT and TRACE are refused
/// on purpose: tunnelling and echoing requests are attack surface, not features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Head,
    Options,
}

impl Method {
    fn parse(s: &str) -> Option<Method> {
        Some(match s {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "HEAD" => Method::Head,
            "OPTIONS" => Method::Options,
            _ => return None,
        })
    }

    /// The method's token as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Head => "HEAD",
            Method::Options => "OPTIONS",
        }
    }

    /// GET, HEAD, OPTIONS, PUT and DELETE may be repeated without changing the result.
    pub fn is_idempotent(self) -> bool {
        !matches!(self, Method::Post | Method::Patch)
    }
}

/// Why a head was refused; each maps to one status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// Head larger than [`MAX_HEAD_BYTES`] or more than [`MAX_HEADERS`] fields: 431.
    TooLarge(&'static str),
    /// Malformed or ambiguous message: 400 and close.
    Malformed(&'static str),
    /// Well-formed but asks for something we do not implement (a transfer coding, an
    /// expectation): 501 / 417.
    Unsupported(u16, &'static str),
}

impl HeadError {
    /// The status a server answers this error with.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge(_) => 431,
            HeadError::Malformed(_) => 400,
            HeadError::Unsupported(s, _) => *s,
        }
    }

    /// A short human reason for the error body.
    pub fn reason(&self) -> &'static str {
        match self {
            HeadError::TooLarge(r) | HeadError::Malformed(r) | HeadError::Unsupported(_, r) => r,
        }
    }
}

/// One header field: positions of its name and value in the head's bytes.
#[derive(Debug, Clone)]
pub struct Field {
    name: Range<u32>,
    value: Range<u32>,
}

/// Fields shared by request and response heads.
#[derive(Debug, Clone)]
pub struct Fields {
    raw: Bytes,
    fields: Vec<Field>,
}

impl Fields {
    /// Every field as (name as sent, value), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.fields.iter().map(move |f| {
            let name = &self.raw[f.name.start as usize..f.name.end as usize];
            // httparse only accepts token characters in names, so they are ASCII.
            let name = std::str::from_utf8(name).unwrap_or("");
            (
                name,
                &self.raw[f.value.start as usize..f.value.end as usize],
            )
        })
    }

    /// The first value of `name` (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        // Bytes compared in place: a lookup runs a dozen times per request over every field,
        // and turning each name into a `str` first cost more than the rest of the search.
        let want = name.as_bytes();
        self.fields
            .iter()
            .find(|f| {
                f.name.len() == want.len()
                    && self.raw[f.name.start as usize..f.name.end as usize]
                        .eq_ignore_ascii_case(want)
            })
            .map(|f| &self.raw[f.value.start as usize..f.value.end as usize])
    }

    /// The first value of `name` as a str, if it is valid UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Size of the whole head in bytes.
    pub fn raw_len(&self) -> usize {
        self.raw.len()
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// True when the head has no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// Comma-separated tokens of every field called `name`, trimmed.
fn tokens<'a>(fields: &'a [httparse::Header<'a>], name: &'a str) -> impl Iterator<Item = &'a [u8]> {
    fields
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|b| *b == b','))
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// What the Content-Length and Transfer-Encoding fields say, checked for conflicts.
enum Declared {
    None,
    Length(u64),
    Chunked,
    /// Chunked is the final coding but others come before it (`gzip, chunked`): framed, but
    /// with a coding we do not implement.
    OtherCoding,
    /// Transfer-Encoding present but chunked is not the final coding (`chunked, identity`,
    /// `xchunked`, an empty value).
    NotChunked,
}

fn declared_framing(fields: &[httparse::Header<'_>]) -> Result<Declared, HeadError> {
    // Every element of every Content-Length field must be plain digits: an empty element
    // (`Content-Length: ,`), a sign or a space inside is refused, never skipped, so that no
    // Content-Length we ignore can reach a peer that reads it differently (found by fuzzing).
    let mut length: Option<u64> = None;
    for h in fields
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        for v in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
            if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                return Err(HeadError::Malformed("invalid content-length"));
            }
            let n = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(HeadError::Malformed("invalid content-length"))?;
            match length {
                Some(prev) if prev != n => {
                    return Err(HeadError::Malformed("conflicting content-length values"))
                }
                _ => length = Some(n),
            }
        }
    }

    let has_te = fields
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    if !has_te {
        return Ok(length.map_or(Declared::None, Declared::Length));
    }
    if length.is_some() {
        return Err(HeadError::Malformed(
            "both transfer-encoding and content-length",
        ));
    }
    let codings: Vec<&[u8]> = tokens(fields, "transfer-encoding").collect();
    match codings.as_slice() {
        [only] if only.eq_ignore_ascii_case(b"chunked") => Ok(Declared::Chunked),
        [.., last] if last.eq_ignore_ascii_case(b"chunked") => Ok(Declared::OtherCoding),
        _ => Ok(Declared::NotChunked),
    }
}

/// Whether the `Connection` field lists `token`.
fn connection_has(fields: &[httparse::Header<'_>], token: &[u8]) -> bool {
    tokens(fields, "connection").any(|t| t.eq_ignore_ascii_case(token))
}

fn version_of(v: Option<u8>) -> Result<Version, HeadError> {
    match v {
        Some(0) => Ok(Version::Http10),
        Some(1) => Ok(Version::Http11),
        _ => Err(HeadError::Malformed("unsupported http version")),
    }
}

fn map_parse_error(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooLarge("too many header fields"),
        httparse::Error::Version => HeadError::Malformed("unsupported http version"),
        httparse::Error::Token => HeadError::Malformed("invalid method"),
        httparse::Error::HeaderName => HeadError::Malformed("invalid header name"),
        httparse::Error::HeaderValue => HeadError::Malformed("invalid header value"),
        httparse::Error::NewLine => HeadError::Malformed("invalid line ending"),
        httparse::Error::Status => HeadError::Malformed("invalid status"),
    }
}

/// A parsed, validated request head.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: Method,
    target: Range<u32>,
    pub version: Version,
    pub fields: Fields,
    pub framing: BodyFraming,
    /// The client allows the connection to be reused after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent: the client waits before sending the body.
    pub expect_continue: bool,
    /// Observability: the request's stopwatch and facts (inert until the server starts it).
    pub probe: crate::metrics::Probe,
}

impl RequestHead {
    /// Parse a head from the front of `buf`.
    ///
    /// `Ok(None)`: incomplete, read more (unless `buf` already exceeds the limit, which is an
    /// error). `Ok(Some((head, len)))`: the head occupies `buf[..len]`; the head keeps a copy.
    pub fn parse(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
        let Some((mut head, len)) = Self::parse_positions(buf)? else {
            return Ok(None);
        };
        head.fields.raw = Bytes::copy_from_slice(&buf[..len]);
        Ok(Some((head, len)))
    }

    /// Parse from the front of a read buffer and split the head off it without copying: the
    /// head then shares the buffer's allocation, and `buf` starts at the body.
    pub fn parse_from(buf: &mut BytesMut) -> Result<Option<RequestHead>, HeadError> {
        let Some((mut head, len)) = Self::parse_positions(buf)? else {
            return Ok(None);
        };
        head.fields.raw = buf.split_to(len).freeze();
        Ok(Some(head))
    }

    /// Parse and validate, recording field positions; `fields.raw` is left for the caller.
    fn parse_positions(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut slots);
        let len = match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEAD_BYTES {
                    return Err(HeadError::TooLarge("request head too large"));
                }
                return Ok(None);
            }
            Err(e) => return Err(map_parse_error(e)),
        };
        if len > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge("request head too large"));
        }
        let version = version_of(req.version)?;
        let method = Method::parse(req.method.unwrap_or(""))
            .ok_or(HeadError::Unsupported(501, "method not supported"))?;
        let path = req.path.unwrap_or("");
        if !path.starts_with('/') {
            return Err(HeadError::Malformed(
                "request target must be an absolute path",
            ));
        }
        let headers: &[httparse::Header<'_>] = req.headers;
        let framing = match declared_framing(headers)? {
            Declared::None => BodyFraming::Empty,
            Declared::Length(n) => BodyFraming::Length(n),
            Declared::Chunked if version == Version::Http10 => {
                return Err(HeadError::Malformed(
                    "transfer-encoding in an HTTP/1.0 request",
                ))
            }
            Declared::Chunked => BodyFraming::Chunked,
            Declared::OtherCoding => {
                return Err(HeadError::Unsupported(501, "unsupported transfer-encoding"))
            }
            // RFC 9112 6.1: a request whose final coding is not chunked has no reliable length;
            // the server MUST answer 400 and close (501 would invite a retry of the same bytes).
            Declared::NotChunked => {
                return Err(HeadError::Malformed(
                    "transfer-encoding does not end with chunked",
                ))
            }
        };
        let hosts = headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("host"))
            .count();
        if hosts > 1 || (hosts == 0 && version == Version::Http11) {
            return Err(HeadError::Malformed("missing or repeated host"));
        }
        let keep_alive = match version {
            Version::Http11 => !connection_has(headers, b"close"),
            Version::Http10 => connection_has(headers, b"keep-alive"),
        };
        let mut expect_continue = false;
        for v in tokens(headers, "expect") {
            if v.eq_ignore_ascii_case(b"100-continue") {
                // RFC 9110 10.1.1: an HTTP/1.0 client's expectation is ignored (it may take a
                // 1xx for the final response).
                expect_continue = version == Version::Http11;
            } else {
                return Err(HeadError::Unsupported(417, "unsupported expectation"));
            }
        }

        let base = buf.as_ptr() as usize;
        let t0 = (path.as_ptr() as usize - base) as u32;
        Ok(Some((
            RequestHead {
                method,
                target: t0..t0 + path.len() as u32,
                version,
                fields: Fields::positions(base, headers),
                framing,
                keep_alive,
                expect_continue,
                probe: Default::default(),
            },
            len,
        )))
    }

    /// The request target (path and query) exactly as sent.
    pub fn target(&self) -> &str {
        let r = self.target.start as usize..self.target.end as usize;
        std::str::from_utf8(&self.fields.raw[r]).unwrap_or("/")
    }

    /// The path without the query string.
    pub fn path(&self) -> &str {
        let t = self.target();
        t.split_once('?').map_or(t, |(p, _)| p)
    }

    /// The query string without `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.target().split_once('?').map(|(_, q)| q)
    }
}

/// A parsed, validated response head.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: u16,
    pub version: Version,
    reason: Range<u32>,
    pub fields: Fields,
    pub framing: BodyFraming,
    /// The upstream allows its connection to be reused after this exchange.
    pub keep_alive: bool,
}

impl ResponseHead {
    /// Parse a response head from the front of `buf`; `head_request` and the status decide
    /// whether a body follows. Same result convention as [`RequestHead::parse`].
    pub fn parse(
        buf: &[u8],
        head_request: bool,
    ) -> Result<Option<(ResponseHead, usize)>, HeadError> {
        let Some((mut head, len)) = Self::parse_positions(buf, head_request)? else {
            return Ok(None);
        };
        head.fields.raw = Bytes::copy_from_slice(&buf[..len]);
        Ok(Some((head, len)))
    }

    /// Like [`RequestHead::parse_from`]: split the head off the read buffer without copying.
    pub fn parse_from(
        buf: &mut BytesMut,
        head_request: bool,
    ) -> Result<Option<ResponseHead>, HeadError> {
        let Some((mut head, len)) = Self::parse_positions(buf, head_request)? else {
            return Ok(None);
        };
        head.fields.raw = buf.split_to(len).freeze();
        Ok(Some(head))
    }

    fn parse_positions(
        buf: &[u8],
        head_request: bool,
    ) -> Result<Option<(ResponseHead, usize)>, HeadError> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut slots);
        let len = match res.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEAD_BYTES {
                    return Err(HeadError::TooLarge("response head too large"));
                }
                return Ok(None);
            }
            Err(e) => return Err(map_parse_error(e)),
        };
        if len > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge("response head too large"));
        }
        let version = version_of(res.version)?;
        let status = res.code.ok_or(HeadError::Malformed("invalid status"))?;
        // Three digits are not enough: we re-emit the status, so it must be a real one.
        if !(100..=599).contains(&status) {
            return Err(HeadError::Malformed("invalid status"));
        }
        let headers: &[httparse::Header<'_>] = res.headers;
        let declared = declared_framing(headers)?;
        let framing =
            if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
                BodyFraming::Empty
            } else {
                match declared {
                    Declared::None => BodyFraming::UntilClose,
                    Declared::Length(n) => BodyFraming::Length(n),
                    Declared::Chunked => BodyFraming::Chunked,
                    // RFC 9112 6.3: a final coding other than chunked means "read until close".
                    Declared::NotChunked => BodyFraming::UntilClose,
                    // Chunked on top of another coding (`gzip, chunked`): chunk-delimited, but
                    // we would have to re-emit the inner coding; refuse rather than corrupt.
                    Declared::OtherCoding => {
                        return Err(HeadError::Unsupported(
                            502,
                            "transfer-encoding other than chunked",
                        ))
                    }
                }
            };
        let keep_alive = framing != BodyFraming::UntilClose
            && match version {
                Version::Http11 => !connection_has(headers, b"close"),
                Version::Http10 => connection_has(headers, b"keep-alive"),
            };
        let fields = Fields::positions(buf.as_ptr() as usize, headers);
        let reason = res.reason.unwrap_or("");
        let r0 = (reason.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize) as u32;
        let reason = if reason.is_empty() {
            0..0
        } else {
            r0..r0 + reason.len() as u32
        };
        Ok(Some((
            ResponseHead {
                status,
                version,
                reason,
                fields,
                framing,
                keep_alive,
            },
            len,
        )))
    }

    /// The reason phrase as sent (may be empty).
    pub fn reason(&self) -> &str {
        let r = self.reason.start as usize..self.reason.end as usize;
        std::str::from_utf8(&self.fields.raw[r]).unwrap_or("")
    }
}

impl Fields {
    /// Positions of the parsed fields relative to `base`, the start of the head; the caller
    /// then sets `raw` to the head's bytes (a copy, or the split-off read buffer).
    fn positions(base: usize, parsed: &[httparse::Header<'_>]) -> Fields {
        let rel = |s: &[u8]| {
            let start = (s.as_ptr() as usize - base) as u32;
            start..start + s.len() as u32
        };
        Fields {
            raw: Bytes::new(),
            fields: parsed
                .iter()
                .map(|h| Field {
                    name: rel(h.name.as_bytes()),
                    value: rel(h.value),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(raw: &[u8]) -> Result<BodyFraming, u16> {
        match RequestHead::parse(raw) {
            Ok(Some((h, _))) => Ok(h.framing),
            Ok(None) => Err(0),
            Err(e) => Err(e.status()),
        }
    }

    /// Found by the `request_head` fuzz target: a Content-Length of only commas was skipped,
    /// so Transfer-Encoding framed a request that also carried a Content-Length field.
    #[test]
    fn regression_fuzz_content_length_of_commas_with_chunked() {
        let crash = b"POST /@0/ HTTP/1.1\r\nHost: Host: h\r\nContent-Length:  ,,,,,,,,\r\nC:\xe03\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(status_of(crash), Err(400));
    }

    #[test]
    fn content_length_elements_must_all_be_digits() {
        let req = |cl: &str| format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {cl}\r\n\r\n");
        assert_eq!(status_of(req("5").as_bytes()), Ok(BodyFraming::Length(5)));
        assert_eq!(
            status_of(req("5, 5").as_bytes()),
            Ok(BodyFraming::Length(5))
        );
        for bad in [
            ",",
            "5,",
            ",5",
            "5,,5",
            "+5",
            "-1",
            "5 5",
            "0x5",
            "5, 6",
            "99999999999999999999",
        ] {
            assert_eq!(status_of(req(bad).as_bytes()), Err(400), "{bad:?}");
        }
    }

    #[test]
    fn transfer_encoding_rules() {
        let req =
            |te: &str| format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: {te}\r\n\r\n");
        assert_eq!(
            status_of(req("chunked").as_bytes()),
            Ok(BodyFraming::Chunked)
        );
        assert_eq!(status_of(req("gzip, chunked").as_bytes()), Err(501));
        assert_eq!(status_of(req("chunked, identity").as_bytes()), Err(400));
        let both = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(status_of(both), Err(400));
        let http10 = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(status_of(http10), Err(400));
    }
}
