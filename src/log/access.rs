//! The access log record: one per request, written by the log sink's thread as a JSON line
//! (`--json-logs`) or a logfmt text line.
//!
//! Fields that come from clients (request id, path, model, error text) are redacted when the
//! line is formatted ([`super::redact`]), so a record may be built from raw request data and
//! still never print a secret. The key field is the virtual key's configured *id*, never its
//! token: the pipeline must never put a token in any field.

use std::fmt::Write;

use super::redact::{redact_query, redact_secrets};

/// Everything the access log (and a trace span) says about one request. Build it when the
/// request is over; `Default` leaves unknown fields empty (they are omitted from the line).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessRecord {
    /// When the request head was received, Unix epoch nanoseconds ([`unix_nanos_now`]).
    pub start_unix_nanos: u64,
    /// `x-request-id` (the client's, or the one the gateway made).
    pub request_id: String,
    /// W3C trace id when tracing is on, so log lines can be joined to traces.
    pub trace_id: Option<[u8; 16]>,
    /// Virtual key id (never the token); `None` without virtual keys.
    pub key_id: Option<String>,
    /// Model asked for (or as routed/mapped).
    pub model: Option<String>,
    /// Backend that served the request (the last one tried).
    pub backend: Option<String>,
    /// Request method.
    pub method: String,
    /// Request target as received, query included (secret query values are masked on output).
    pub path: String,
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
    pub error: Option<String>,
}

impl AccessRecord {
    /// The record as one JSON object line, `\n` included.
    pub fn to_json_line(&self) -> String {
        let mut s = String::with_capacity(384);
        self.write_json_line(&mut s);
        s
    }

    /// Append the JSON line to `out` (the sink reuses one buffer).
    pub fn write_json_line(&self, out: &mut String) {
        out.push_str("{\"ts\":\"");
        write_rfc3339(out, self.start_unix_nanos);
        out.push_str("\",\"kind\":\"access\",\"request_id\":");
        write_json_str(out, &redact_secrets(&self.request_id));
        if let Some(t) = &self.trace_id {
            out.push_str(",\"trace_id\":\"");
            push_hex(out, t);
            out.push('"');
        }
        let mut field = |name: &str, v: &Option<String>| {
            if let Some(v) = v {
                out.push_str(",\"");
                out.push_str(name);
                out.push_str("\":");
                write_json_str(out, &redact_secrets(v));
            }
        };
        field("key_id", &self.key_id);
        field("model", &self.model);
        field("backend", &self.backend);
        out.push_str(",\"method\":");
        write_json_str(out, &redact_secrets(&self.method));
        out.push_str(",\"path\":");
        write_json_str(out, &redact_query(&self.path));
        let _ = write!(
            out,
            ",\"status\":{},\"stream\":{},\"bytes_in\":{},\"bytes_out\":{},\"duration_us\":{}",
            self.status, self.stream, self.bytes_in, self.bytes_out, self.duration_us
        );
        let mut num = |name: &str, v: Option<u64>| {
            if let Some(v) = v {
                let _ = write!(out, ",\"{name}\":{v}");
            }
        };
        num("ttfb_us", self.ttfb_us);
        num("overhead_us", Some(self.overhead_us));
        num("prompt_tokens", self.prompt_tokens);
        num("completion_tokens", self.completion_tokens);
        if let Some(c) = self.cost_pico_usd {
            out.push_str(",\"cost_usd\":");
            write_usd(out, c);
        }
        if let Some(e) = &self.error {
            out.push_str(",\"error\":");
            write_json_str(out, &redact_secrets(e));
        }
        out.push_str("}\n");
    }

    /// The record as one logfmt line (`key=value ...`), `\n` included.
    pub fn to_text_line(&self) -> String {
        let mut s = String::with_capacity(320);
        self.write_text_line(&mut s);
        s
    }

    /// Append the logfmt line to `out`.
    pub fn write_text_line(&self, out: &mut String) {
        out.push_str("ts=");
        write_rfc3339(out, self.start_unix_nanos);
        out.push_str(" kind=access request_id=");
        write_logfmt(out, &redact_secrets(&self.request_id));
        if let Some(t) = &self.trace_id {
            out.push_str(" trace_id=");
            push_hex(out, t);
        }
        for (name, v) in [
            ("key_id", &self.key_id),
            ("model", &self.model),
            ("backend", &self.backend),
        ] {
            if let Some(v) = v {
                out.push(' ');
                out.push_str(name);
                out.push('=');
                write_logfmt(out, &redact_secrets(v));
            }
        }
        out.push_str(" method=");
        write_logfmt(out, &redact_secrets(&self.method));
        out.push_str(" path=");
        write_logfmt(out, &redact_query(&self.path));
        let _ = write!(
            out,
            " status={} stream={} bytes_in={} bytes_out={} duration_us={}",
            self.status, self.stream, self.bytes_in, self.bytes_out, self.duration_us
        );
        for (name, v) in [
            ("ttfb_us", self.ttfb_us),
            ("overhead_us", Some(self.overhead_us)),
            ("prompt_tokens", self.prompt_tokens),
            ("completion_tokens", self.completion_tokens),
        ] {
            if let Some(v) = v {
                let _ = write!(out, " {name}={v}");
            }
        }
        if let Some(c) = self.cost_pico_usd {
            out.push_str(" cost_usd=");
            write_usd(out, c);
        }
        if let Some(e) = &self.error {
            out.push_str(" error=");
            write_logfmt(out, &redact_secrets(e));
        }
        out.push('\n');
    }
}

/// Nanoseconds since the Unix epoch now (0 if the clock is before 1970).
pub fn unix_nanos_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// `2024-05-01T12:34:56.789Z` (UTC, milliseconds) for Unix epoch nanoseconds.
pub fn write_rfc3339(out: &mut String, unix_nanos: u64) {
    let secs = unix_nanos / 1_000_000_000;
    let millis = (unix_nanos % 1_000_000_000) / 1_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    );
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A JSON string literal (quotes included) with the escapes RFC 8259 requires.
pub fn write_json_str(out: &mut String, s: &str) {
    out.push('"');
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

/// A logfmt value: bare when safe, else quoted with `"`, `\` and control characters escaped.
fn write_logfmt(out: &mut String, s: &str) {
    let bare = !s.is_empty()
        && s.bytes()
            .all(|b| b > b' ' && b != b'"' && b != b'=' && b != b'\\' && b != 0x7f);
    if bare {
        out.push_str(s);
    } else {
        write_json_str(out, s);
    }
}

/// Exact decimal USD from pico-USD: `0.000123`, `12.5`, `0`.
pub fn write_usd(out: &mut String, pico: u64) {
    let whole = pico / 1_000_000_000_000;
    let frac = pico % 1_000_000_000_000;
    let _ = write!(out, "{whole}");
    if frac > 0 {
        let digits = format!("{frac:012}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
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
