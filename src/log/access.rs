//! The access log record: one per request, written by the log sink's thread as a JSON line
//! (`--json-logs`) or a logfmt text line.
//!
//! Fields that come from clients (request id, path, model, error text) are redacted when the
//! line is formatted ([`super::redact`]), so a record may be built from raw request data and
//! still never print a secret. The key field is the virtual key's configured *id*, never its
//! token: the pipeline must never put a token in any field.

use std::fmt::Write;

use std::borrow::Cow;

use super::redact::{is_hex_id, redact_query, redact_secrets};

/// Everything the access log (and a trace span) says about one request. Build it when the
/// request is over; `Default` leaves unknown fields empty (they are omitted from the line).
///
/// `S` is the text type: a core formats a line from a borrowed `AccessRecord<&str>` made of
/// the request's own strings (no copy); a trace span, which outlives the request, holds an
/// owned `AccessRecord` (`String`, the default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessRecord<S = String> {
    /// When the request head was received, Unix epoch nanoseconds ([`unix_nanos_now`]).
    pub start_unix_nanos: u64,
    /// `x-request-id` (the client's, or the one the gateway made).
    pub request_id: S,
    /// W3C trace id when tracing is on, so log lines can be joined to traces.
    pub trace_id: Option<[u8; 16]>,
    /// Virtual key id (never the token); `None` without virtual keys.
    pub key_id: Option<S>,
    /// Model asked for (or as routed/mapped).
    pub model: Option<S>,
    /// Backend that served the request (the last one tried).
    pub backend: Option<S>,
    /// Request method.
    pub method: S,
    /// Request target as received, query included (secret query values are masked on output).
    pub path: S,
    /// Status sent to the client (499 when the client left before the response head).
    pub status: u16,
    /// Whether the response was streamed (SSE or chunked relay).
    pub stream: bool,
    /// Request body bytes read.
    pub bytes_in: u64,
    /// Response body bytes written.
    pub bytes_out: u64,
    /// Request head received -> last response byte written.
    pub duration_us: u64,
    /// Request head received -> first response body byte written.
    pub ttfb_us: Option<u64>,
    /// Time inside the gateway, upstream waits excluded.
    pub overhead_us: u64,
    /// Prompt tokens from the upstream's `usage`.
    pub prompt_tokens: Option<u64>,
    /// Completion tokens from the upstream's `usage`.
    pub completion_tokens: Option<u64>,
    /// Cost in pico-USD (10^-12 USD) when pricing is known.
    pub cost_pico_usd: Option<u64>,
    /// Gateway error code (`rate_limit_exceeded`, `backend_timeout`, ...) when the gateway made
    /// the error, or a short reason for an aborted stream (`client_gone`).
    pub error: Option<S>,
}

impl AccessRecord<&str> {
    /// An owned copy, for a consumer that outlives the request (a trace span).
    pub fn to_owned_record(&self) -> AccessRecord {
        let own = |v: &Option<&str>| v.map(str::to_string);
        AccessRecord {
            start_unix_nanos: self.start_unix_nanos,
            request_id: self.request_id.to_string(),
            trace_id: self.trace_id,
            key_id: own(&self.key_id),
            model: own(&self.model),
            backend: own(&self.backend),
            method: self.method.to_string(),
            path: self.path.to_string(),
            status: self.status,
            stream: self.stream,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            duration_us: self.duration_us,
            ttfb_us: self.ttfb_us,
            overhead_us: self.overhead_us,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            cost_pico_usd: self.cost_pico_usd,
            error: own(&self.error),
        }
    }
}

impl<S: AsRef<str>> AccessRecord<S> {
    /// The record as one JSON object line, `\n` included.
    pub fn to_json_line(&self) -> String {
        let mut s = String::with_capacity(384);
        self.write_json_line(&mut s, &mut LineCache::default());
        s
    }

    /// The record as one logfmt line (`key=value ...`), `\n` included.
    pub fn to_text_line(&self) -> String {
        let mut s = String::with_capacity(320);
        self.write_text_line(&mut s, &mut LineCache::default());
        s
    }

    /// Append the line in `format` to `out`.
    pub fn write_line(&self, format: super::sink::LogFormat, out: &mut String, c: &mut LineCache) {
        match format {
            super::sink::LogFormat::Json => self.write_json_line(out, c),
            super::sink::LogFormat::Text => self.write_text_line(out, c),
        }
    }

    fn opt(v: &Option<S>) -> Option<&str> {
        v.as_ref().map(AsRef::as_ref)
    }

    /// The numeric fields after `duration_us`, in line order.
    fn numbers(&self) -> [(&'static str, Option<u64>); 4] {
        [
            ("ttfb_us", self.ttfb_us),
            ("overhead_us", Some(self.overhead_us)),
            ("prompt_tokens", self.prompt_tokens),
            ("completion_tokens", self.completion_tokens),
        ]
    }

    /// Append the JSON line to `out`.
    pub fn write_json_line(&self, out: &mut String, c: &mut LineCache) {
        out.push_str("{\"ts\":\"");
        c.clock.write(out, self.start_unix_nanos);
        out.push_str("\",\"kind\":\"access\",\"request_id\":");
        c.json(out, self.request_id.as_ref(), false);
        if let Some(t) = &self.trace_id {
            out.push_str(",\"trace_id\":\"");
            push_hex(out, t);
            out.push('"');
        }
        for (name, v) in [
            ("key_id", Self::opt(&self.key_id)),
            ("model", Self::opt(&self.model)),
            ("backend", Self::opt(&self.backend)),
        ] {
            if let Some(v) = v {
                out.push_str(",\"");
                out.push_str(name);
                out.push_str("\":");
                c.json(out, v, false);
            }
        }
        out.push_str(",\"method\":");
        c.json(out, self.method.as_ref(), false);
        out.push_str(",\"path\":");
        c.json(out, self.path.as_ref(), true);
        out.push_str(",\"status\":");
        push_u64(out, self.status.into());
        out.push_str(if self.stream {
            ",\"stream\":true,\"bytes_in\":"
        } else {
            ",\"stream\":false,\"bytes_in\":"
        });
        push_u64(out, self.bytes_in);
        out.push_str(",\"bytes_out\":");
        push_u64(out, self.bytes_out);
        out.push_str(",\"duration_us\":");
        push_u64(out, self.duration_us);
        for (name, v) in self.numbers() {
            if let Some(v) = v {
                out.push_str(",\"");
                out.push_str(name);
                out.push_str("\":");
                push_u64(out, v);
            }
        }
        if let Some(c) = self.cost_pico_usd {
            out.push_str(",\"cost_usd\":");
            write_usd(out, c);
        }
        if let Some(e) = Self::opt(&self.error) {
            out.push_str(",\"error\":");
            c.json(out, e, false);
        }
        out.push_str("}\n");
    }

    /// Append the logfmt line to `out`.
    pub fn write_text_line(&self, out: &mut String, c: &mut LineCache) {
        out.push_str("ts=");
        c.clock.write(out, self.start_unix_nanos);
        out.push_str(" kind=access request_id=");
        c.logfmt(out, self.request_id.as_ref(), false);
        if let Some(t) = &self.trace_id {
            out.push_str(" trace_id=");
            push_hex(out, t);
        }
        for (name, v) in [
            ("key_id", Self::opt(&self.key_id)),
            ("model", Self::opt(&self.model)),
            ("backend", Self::opt(&self.backend)),
        ] {
            if let Some(v) = v {
                out.push(' ');
                out.push_str(name);
                out.push('=');
                c.logfmt(out, v, false);
            }
        }
        out.push_str(" method=");
        c.logfmt(out, self.method.as_ref(), false);
        out.push_str(" path=");
        c.logfmt(out, self.path.as_ref(), true);
        out.push_str(" status=");
        push_u64(out, self.status.into());
        out.push_str(if self.stream {
            " stream=true bytes_in="
        } else {
            " stream=false bytes_in="
        });
        push_u64(out, self.bytes_in);
        out.push_str(" bytes_out=");
        push_u64(out, self.bytes_out);
        out.push_str(" duration_us=");
        push_u64(out, self.duration_us);
        for (name, v) in self.numbers() {
            if let Some(v) = v {
                out.push(' ');
                out.push_str(name);
                out.push('=');
                push_u64(out, v);
            }
        }
        if let Some(c) = self.cost_pico_usd {
            out.push_str(" cost_usd=");
            write_usd(out, c);
        }
        if let Some(e) = Self::opt(&self.error) {
            out.push_str(" error=");
            c.logfmt(out, e, false);
        }
        out.push('\n');
    }
}

/// What a core keeps between its lines: the current second's timestamp, and a small
/// direct-mapped set of texts already found free of secrets. Most fields repeat from line to
/// line (method, path, model, backend, key id, error code), so most fields cost a hash and a
/// compare instead of a redaction scan and an escape scan. Redaction is a pure function of
/// the text, so a text found clean once is clean every time.
pub struct LineCache {
    clock: Clock,
    clean: Box<[Option<Clean>]>,
}

/// A text known to need no masking, and whether it needs no quoting either.
#[derive(Clone)]
struct Clean {
    /// A request target (which also gets the query rules) or free text.
    target: bool,
    text: Box<str>,
    plain: Plain,
}

/// Whether a clean text goes out as it is: in a JSON string, as a logfmt value.
#[derive(Clone, Copy)]
struct Plain {
    json_plain: bool,
    logfmt_bare: bool,
}

/// Slots of [`LineCache::clean`] (a power of two), and the longest text kept in one.
const CLEAN_SLOTS: usize = 64;
const CLEAN_MAX_LEN: usize = 96;

impl Default for LineCache {
    fn default() -> LineCache {
        LineCache {
            clock: Clock::default(),
            clean: vec![None; CLEAN_SLOTS].into_boxed_slice(),
        }
    }
}

impl LineCache {
    /// Write `text` as a JSON string, redacted ([`redact_query`] when `target`, else
    /// [`redact_secrets`]).
    pub fn json(&mut self, out: &mut String, text: &str, target: bool) {
        match self.lookup(text, target) {
            Some(c) if c.json_plain => {
                out.push('"');
                out.push_str(text);
                out.push('"');
            }
            Some(_) => write_json_str(out, text),
            None => write_json_str(out, &self.redact(text, target)),
        }
    }

    /// Write `text` as a logfmt value, redacted as in [`Self::json`].
    pub fn logfmt(&mut self, out: &mut String, text: &str, target: bool) {
        match self.lookup(text, target) {
            Some(c) if c.logfmt_bare => out.push_str(text),
            Some(_) => write_logfmt(out, text),
            None => write_logfmt(out, &self.redact(text, target)),
        }
    }

    /// The cached verdict on a clean `text`, if any. The gateway's own request ids (never
    /// masked, never quoted, never repeated) pass without taking a slot.
    fn lookup(&self, text: &str, target: bool) -> Option<Plain> {
        if !text.is_empty() && is_hex_id(text) {
            return Some(Plain {
                json_plain: true,
                logfmt_bare: true,
            });
        }
        match &self.clean[slot(text, target)] {
            Some(c) if c.target == target && *c.text == *text => Some(c.plain),
            _ => None,
        }
    }

    fn redact<'a>(&mut self, text: &'a str, target: bool) -> Cow<'a, str> {
        let r = if target {
            redact_query(text)
        } else {
            redact_secrets(text)
        };
        if matches!(r, Cow::Borrowed(_)) && text.len() <= CLEAN_MAX_LEN {
            self.clean[slot(text, target)] = Some(Clean {
                target,
                text: text.into(),
                plain: Plain {
                    json_plain: !text.bytes().any(|b| JSON_ESCAPED[b as usize]),
                    logfmt_bare: is_logfmt_bare(text),
                },
            });
        }
        r
    }
}

/// A cheap hash of a short text (its length and its first and last 8 bytes) to a slot.
fn slot(text: &str, target: bool) -> usize {
    let b = text.as_bytes();
    let n = b.len();
    let load = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap_or([0; 8]));
    let (head, tail) = if n >= 8 {
        (load(&b[..8]), load(&b[n - 8..]))
    } else {
        (b.iter().fold(0u64, |w, &x| (w << 8) | u64::from(x)), 0)
    };
    let h = (head ^ tail.rotate_left(29) ^ ((n as u64) << 1) ^ u64::from(target))
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> 58) as usize & (CLEAN_SLOTS - 1)
}

/// The `YYYY-MM-DDTHH:MM:SS.` of the last second formatted: the lines of one second (all but
/// one of them, under load) reuse it and only append their milliseconds.
#[derive(Debug, Default)]
pub struct Clock {
    sec: u64,
    prefix: String,
}

impl Clock {
    /// Append `2024-05-01T12:34:56.789Z` (UTC, milliseconds) for Unix epoch nanoseconds.
    pub fn write(&mut self, out: &mut String, unix_nanos: u64) {
        let secs = unix_nanos / 1_000_000_000;
        if self.prefix.is_empty() || secs != self.sec {
            self.sec = secs;
            self.prefix.clear();
            write_second(&mut self.prefix, secs);
        }
        out.push_str(&self.prefix);
        push_padded(out, (unix_nanos % 1_000_000_000) / 1_000_000, 3);
        out.push('Z');
    }
}

/// `2024-05-01T12:34:56.789Z` (UTC, milliseconds) for Unix epoch nanoseconds.
pub fn write_rfc3339(out: &mut String, unix_nanos: u64) {
    Clock::default().write(out, unix_nanos);
}

/// `YYYY-MM-DDTHH:MM:SS.` for Unix epoch seconds.
fn write_second(out: &mut String, secs: u64) {
    let (y, m, d) = crate::civil::civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    push_padded(out, y.max(0) as u64, 4);
    out.push('-');
    push_padded(out, m.into(), 2);
    out.push('-');
    push_padded(out, d.into(), 2);
    out.push('T');
    push_padded(out, rem / 3600, 2);
    out.push(':');
    push_padded(out, (rem / 60) % 60, 2);
    out.push(':');
    push_padded(out, rem % 60, 2);
    out.push('.');
}

/// A decimal number without `core::fmt` (which costs several times more per number).
fn push_u64(out: &mut String, v: u64) {
    out.push_str(itoa::Buffer::new().format(v));
}

/// `v` in decimal, left-padded with zeros to `width` digits.
fn push_padded(out: &mut String, v: u64, width: usize) {
    let mut b = itoa::Buffer::new();
    let digits = b.format(v);
    for _ in digits.len()..width {
        out.push('0');
    }
    out.push_str(digits);
}

/// Nanoseconds since the Unix epoch now (0 if the clock is before 1970).
pub fn unix_nanos_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Bytes a JSON string must escape (RFC 8259; DEL too, to keep lines printable).
static JSON_ESCAPED: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i < 0x20 || i == b'"' as usize || i == b'\\' as usize || i == 0x7f;
        i += 1;
    }
    t
};

/// A JSON string literal (quotes included) with the escapes RFC 8259 requires.
pub fn write_json_str(out: &mut String, s: &str) {
    out.push('"');
    // Almost every value needs no escape: one scan, one copy.
    if !s.bytes().any(|b| JSON_ESCAPED[b as usize]) {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f | 0x7f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Whether a logfmt value can go unquoted.
fn is_logfmt_bare(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b > b' ' && b != b'"' && b != b'=' && b != b'\\' && b != 0x7f)
}

/// A logfmt value: bare when safe, else quoted with `"`, `\` and control characters escaped.
fn write_logfmt(out: &mut String, s: &str) {
    if is_logfmt_bare(s) {
        out.push_str(s);
    } else {
        write_json_str(out, s);
    }
}

/// Exact decimal USD from pico-USD: `0.000123`, `12.5`, `0`.
pub fn write_usd(out: &mut String, pico: u64) {
    push_u64(out, pico / 1_000_000_000_000);
    let frac = pico % 1_000_000_000_000;
    if frac > 0 {
        out.push('.');
        let start = out.len();
        push_padded(out, frac, 12);
        let digits = out[start..].trim_end_matches('0').len();
        out.truncate(start + digits);
    }
}

/// Lower-case hex of `bytes`.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> AccessRecord {
        AccessRecord {
            start_unix_nanos: 1_714_566_896_789_000_000,
            request_id: "ditto-5f0c9a1b2c3d4e5f-01-000000000001".into(),
            trace_id: Some([0xab; 16]),
            key_id: Some("team-a".into()),
            model: Some("gpt-4o-mini".into()),
            backend: Some("openai".into()),
            method: "POST".into(),
            path: "/v1/chat/completions?api_key=sk-live-secretsecret&x=1".into(),
            status: 200,
            stream: true,
            bytes_in: 95,
            bytes_out: 4096,
            duration_us: 812_345,
            ttfb_us: Some(120_000),
            overhead_us: 42,
            prompt_tokens: Some(12),
            completion_tokens: Some(34),
            cost_pico_usd: Some(123_450_000),
            error: None,
        }
    }

    #[test]
    fn json_line_has_every_field_and_parses() {
        let line = sample().to_json_line();
        assert!(line.ends_with("}\n") && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["ts"], "2024-05-01T12:34:56.789Z");
        assert_eq!(v["kind"], "access");
        assert_eq!(v["key_id"], "team-a");
        assert_eq!(v["trace_id"], "ab".repeat(16));
        assert_eq!(v["path"], "/v1/chat/completions?api_key=[REDACTED]&x=1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["stream"], true);
        assert_eq!(v["duration_us"], 812_345);
        assert_eq!(v["ttfb_us"], 120_000);
        assert_eq!(v["overhead_us"], 42);
        assert_eq!(v["prompt_tokens"], 12);
        assert_eq!(v["completion_tokens"], 34);
        assert_eq!(v["cost_usd"].as_f64(), Some(0.00012345));
        assert!(v.get("error").is_none());
    }

    #[test]
    fn text_line_is_logfmt() {
        let mut r = sample();
        r.error = Some("upstream said: bad \"thing\"".into());
        r.model = Some(String::new());
        let line = r.to_text_line();
        assert!(line.starts_with("ts=2024-05-01T12:34:56.789Z kind=access request_id=ditto-"));
        assert!(
            line.contains(" path=\"/v1/chat/completions?api_key=[REDACTED]&x=1\" "),
            "{line}"
        );
        assert!(line.contains(" model=\"\" "), "{line}");
        assert!(
            line.contains(" status=200 stream=true bytes_in=95 bytes_out=4096 duration_us=812345")
        );
        assert!(line.contains(" cost_usd=0.00012345"));
        assert!(
            line.ends_with(" error=\"upstream said: bad \\\"thing\\\"\"\n"),
            "{line}"
        );
    }

    #[test]
    fn no_secret_survives_in_any_field() {
        for secret in crate::log::redact::tests::SECRETS {
            let r = AccessRecord {
                request_id: (*secret).into(),
                key_id: Some(format!("Bearer {secret}")),
                model: Some((*secret).into()),
                backend: Some(format!("token={secret}")),
                method: (*secret).into(),
                path: format!("/v1/x/{secret}?key=abc&q={secret}"),
                error: Some(format!("upstream 401: invalid api key {secret}")),
                ..sample()
            };
            for line in [r.to_json_line(), r.to_text_line()] {
                assert!(!line.contains(secret), "{secret} leaked: {line}");
                assert!(!line.contains("key=abc"), "{line}");
            }
        }
    }

    #[test]
    fn the_line_cache_writes_what_a_fresh_redaction_writes() {
        let mut texts: Vec<String> = [
            "POST",
            "gpt-4o-mini",
            "/v1/chat/completions",
            "/v1/models?key=abc",
            "a b",
            "",
            "a\"b=c",
            "ключ",
            "ditto-5f0c9a1b2c3d4e5f-01-000000000001",
            "ditto-Zq8Xb3Lm9Tn2Vc7Rk4Hs6Jd1Pf5Gw0Ya",
            "Bearer abc",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        texts.extend(
            crate::log::redact::tests::SECRETS
                .iter()
                .map(|s| s.to_string()),
        );
        // Enough distinct texts to make slots collide.
        texts.extend((0..300).map(|i| format!("model-{i}")));
        texts.extend((0..50).map(|i| format!("/x?token=t{i}")));
        let mut c = LineCache::default();
        for _ in 0..3 {
            for t in &texts {
                for target in [false, true] {
                    let fresh = if target {
                        redact_query(t)
                    } else {
                        redact_secrets(t)
                    };
                    let (mut got, mut want) = (String::new(), String::new());
                    c.json(&mut got, t, target);
                    write_json_str(&mut want, &fresh);
                    assert_eq!(got, want, "{t}");
                    let (mut got, mut want) = (String::new(), String::new());
                    c.logfmt(&mut got, t, target);
                    write_logfmt(&mut want, &fresh);
                    assert_eq!(got, want, "{t}");
                }
            }
        }
    }

    #[test]
    fn json_escapes_controls_and_quotes() {
        let mut s = String::new();
        write_json_str(&mut s, "a\"b\\c\nd\u{1}e\u{7f}é");
        assert_eq!(s, "\"a\\\"b\\\\c\\nd\\u0001e\\u007fé\"");
        let v: String = serde_json::from_str(&s).expect("round trip");
        assert_eq!(v, "a\"b\\c\nd\u{1}e\u{7f}é");
    }

    #[test]
    fn dates_and_money() {
        let mut s = String::new();
        write_rfc3339(&mut s, 0);
        assert_eq!(s, "1970-01-01T00:00:00.000Z");
        s.clear();
        write_rfc3339(&mut s, 951_782_400_000_000_000); // leap day 2000
        assert_eq!(s, "2000-02-29T00:00:00.000Z");
        s.clear();
        write_rfc3339(&mut s, 4_102_444_799_999_000_000);
        assert_eq!(s, "2099-12-31T23:59:59.999Z");
        for (p, want) in [
            (0, "0"),
            (1, "0.000000000001"),
            (12_500_000_000_000, "12.5"),
            (1_000_000_000_000, "1"),
        ] {
            s.clear();
            write_usd(&mut s, p);
            assert_eq!(s, want);
        }
    }
}
