//! The text fields of a `multipart/form-data` body (RFC 7578), so that guardrails police
//! uploads too: `model` and `prompt` of `/v1/audio/transcriptions`, `/v1/images/edits`, ...
//!
//! Only what policy needs: the parts without a file name (the form's plain fields), by name,
//! as text. File parts are skipped unread. Written here rather than taken from `multer`
//! because the body is already whole in memory, and multer is an async stream parser that
//! would add `mime` and `encoding_rs` to find a few small fields.
//!
//! **Strict on purpose.** Policy is only as good as the agreement between what the gateway
//! reads and what the upstream reads: if a form can be written so that the gateway sees no
//! `model` (or another one) while a Go, Python or Node parser sees `model=forbidden`, the
//! allow-list is bypassed. So everything that parsers resolve differently is refused instead
//! of guessed: folded or repeated `Content-Disposition` headers, a part without a name,
//! `name*=` (RFC 2231) names, parameter syntax that is neither a token nor a quoted string, a
//! field name sent twice (Go and Werkzeug keep the first, others the last), and bare-LF line
//! ends. A part with an empty `filename=""` is a plain field, as Go reads it.

use std::borrow::Cow;

use memchr::memmem;
use serde_json::{Map, Value};

/// At most this many plain fields are read (a form is a handful; a hostile one is refused).
const MAX_FIELDS: usize = 256;
/// RFC 2046 allows 70; clients that send more exist, a kilobyte is only hostile.
const MAX_BOUNDARY: usize = 200;

/// Why a form could not be read (each is a 400: the gateway will not guess).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormError {
    NoBoundary,
    Malformed,
    /// A header or parameter that parsers disagree on.
    Ambiguous,
    DuplicateField,
    TooManyFields,
}

/// Whether a content type is `multipart/form-data` (whatever its parameters).
pub fn is_form(content_type: &[u8]) -> bool {
    let kind = match memchr::memchr(b';', content_type) {
        Some(i) => &content_type[..i],
        None => content_type,
    };
    kind.trim_ascii()
        .eq_ignore_ascii_case(b"multipart/form-data")
}

/// The `boundary` parameter of a `multipart/form-data` content type.
pub fn boundary(content_type: &[u8]) -> Result<Vec<u8>, FormError> {
    if !is_form(content_type) {
        return Err(FormError::NoBoundary);
    }
    let i = memchr::memchr(b';', content_type).ok_or(FormError::NoBoundary)?;
    let mut found = None;
    for (name, value) in params(&content_type[i..])? {
        if name.eq_ignore_ascii_case(b"boundary") {
            if found.is_some() {
                return Err(FormError::Ambiguous);
            }
            found = Some(value.into_owned());
        }
    }
    match found {
        Some(b) if !b.is_empty() && b.len() <= MAX_BOUNDARY => Ok(b),
        _ => Err(FormError::NoBoundary),
    }
}

/// The plain (non-file) fields of a form, as a JSON object of strings. A field whose value is
/// not UTF-8 is kept lossily: policy must see its text, not skip it.
pub fn text_fields(content_type: &[u8], body: &[u8]) -> Result<Map<String, Value>, FormError> {
    let boundary = boundary(content_type)?;
    let mut delim = Vec::with_capacity(boundary.len() + 4);
    delim.extend_from_slice(b"\r\n--");
    delim.extend_from_slice(&boundary);
    let finder = memmem::Finder::new(&delim);
    // The first delimiter may open the body without the CRLF before it.
    let mut at = if body.starts_with(&delim[2..]) {
        delim.len() - 2
    } else {
        finder.find(body).ok_or(FormError::Malformed)? + delim.len()
    };
    let mut fields = Map::new();
    loop {
        let rest = &body[at..];
        if rest.starts_with(b"--") {
            return Ok(fields);
        }
        // Transport padding after the delimiter, then CRLF.
        let line_end = memmem::find(rest, b"\r\n").ok_or(FormError::Malformed)?;
        if !rest[..line_end].iter().all(|b| *b == b' ' || *b == b'\t') {
            return Err(FormError::Malformed);
        }
        let part_start = at + line_end + 2;
        let part = &body[part_start..];
        let head_end = if part.starts_with(b"\r\n") {
            0
        } else {
            memmem::find(part, b"\r\n\r\n").ok_or(FormError::Malformed)? + 2
        };
        let headers = &part[..head_end];
        let content_start = part_start + head_end + 2;
        let content_len = finder
            .find(&body[content_start..])
            .ok_or(FormError::Malformed)?;
        let content = &body[content_start..content_start + content_len];
        if let Some(name) = disposition(headers)? {
            if fields.len() >= MAX_FIELDS {
                return Err(FormError::TooManyFields);
            }
            let name = String::from_utf8_lossy(&name).into_owned();
            let value = String::from_utf8_lossy(content).into_owned();
            if fields.insert(name, Value::String(value)).is_some() {
                return Err(FormError::DuplicateField);
            }
        }
        at = content_start + content_len + delim.len();
    }
}

/// A part's headers (each line ending in CRLF): the field name of a plain part, `None` for a
/// file part.
fn disposition(headers: &[u8]) -> Result<Option<Vec<u8>>, FormError> {
    let mut found = None;
    let mut lines = headers;
    while !lines.is_empty() {
        let end = memmem::find(lines, b"\r\n").ok_or(FormError::Malformed)?;
        let line = &lines[..end];
        lines = &lines[end + 2..];
        // Folding (obsolete, but Go unfolds it) and bare LFs read differently elsewhere.
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') || line.contains(&b'\n') {
            return Err(FormError::Ambiguous);
        }
        let colon = memchr::memchr(b':', line).ok_or(FormError::Malformed)?;
        if !line[..colon]
            .trim_ascii()
            .eq_ignore_ascii_case(b"content-disposition")
        {
            continue;
        }
        if found.is_some() {
            return Err(FormError::Ambiguous);
        }
        found = Some(&line[colon + 1..]);
    }
    let value = found.ok_or(FormError::Ambiguous)?;
    let (kind, rest) = match memchr::memchr(b';', value) {
        Some(i) => (&value[..i], &value[i..]),
        None => (value, &b""[..]),
    };
    if !kind.trim_ascii().eq_ignore_ascii_case(b"form-data") {
        return Err(FormError::Ambiguous);
    }
    let (mut name, mut filename) = (None, None);
    for (key, v) in params(rest)? {
        let slot = if key.eq_ignore_ascii_case(b"name") {
            &mut name
        } else if key.eq_ignore_ascii_case(b"filename") || key.eq_ignore_ascii_case(b"filename*") {
            &mut filename
        } else if key.eq_ignore_ascii_case(b"name*") {
            // RFC 2231 names: decoded by some parsers, ignored by others.
            return Err(FormError::Ambiguous);
        } else {
            continue;
        };
        if slot.replace(v).is_some() {
            return Err(FormError::Ambiguous);
        }
    }
    let name = name.filter(|n| !n.is_empty()).ok_or(FormError::Ambiguous)?;
    // Go reads a part with an empty file name as a plain value.
    Ok(match filename {
        Some(f) if !f.is_empty() => None,
        _ => Some(name.into_owned()),
    })
}

/// A parameter's name, and its value (unquoted, unescaped).
type Param<'a> = (&'a [u8], Cow<'a, [u8]>);

/// `; key=value` parameters (RFC 2045: a token or a quoted string with `\` escapes), or
/// `Ambiguous` for anything else.
fn params(mut s: &[u8]) -> Result<Vec<Param<'_>>, FormError> {
    let is_token = |b: u8| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b);
    let mut out = Vec::new();
    loop {
        s = s.trim_ascii_start();
        match s.split_first() {
            None => return Ok(out),
            Some((b';', rest)) => s = rest.trim_ascii_start(),
            _ => return Err(FormError::Ambiguous),
        }
        if s.is_empty() {
            // A trailing `;` is harmless.
            return Ok(out);
        }
        let key_len = s.iter().take_while(|b| is_token(**b)).count();
        let (key, rest) = s.split_at(key_len);
        let rest = rest.trim_ascii_start();
        let Some((b'=', rest)) = rest.split_first() else {
            return Err(FormError::Ambiguous);
        };
        let rest = rest.trim_ascii_start();
        if key.is_empty() {
            return Err(FormError::Ambiguous);
        }
        let (value, rest) = if let Some(quoted) = rest.strip_prefix(b"\"") {
            let mut v = Vec::new();
            let mut escaped = false;
            let mut end = None;
            for (i, &b) in quoted.iter().enumerate() {
                match (escaped, b) {
                    (false, b'\\') => escaped = true,
                    (false, b'"') => {
                        end = Some(i);
                        break;
                    }
                    _ => {
                        v.push(b);
                        escaped = false;
                    }
                }
            }
            let end = end.ok_or(FormError::Ambiguous)?;
            (Cow::Owned(v), &quoted[end + 1..])
        } else {
            let n = rest.iter().take_while(|b| is_token(**b)).count();
            (Cow::Borrowed(&rest[..n]), &rest[n..])
        };
        out.push((key, value));
        s = rest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CT: &[u8] = b"multipart/form-data; boundary=XyZ";

    fn form(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut b = Vec::new();
        for (name, file, content) in parts {
            b.extend_from_slice(b"--XyZ\r\n");
            match file {
                Some(f) => b.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: audio/mpeg\r\n\r\n"
                    )
                    .as_bytes(),
                ),
                None => b.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
                ),
            }
            b.extend_from_slice(content);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"--XyZ--\r\n");
        b
    }

    #[test]
    fn plain_fields_are_read_and_files_skipped() {
        // The file holds bytes that look like a boundary without the CRLF, and a field name.
        let audio: &[u8] = b"\x00\xffID3 --XyZ name=\"model\" \r\n-- junk";
        let body = form(&[
            ("file", Some("a.mp3"), audio),
            ("model", None, b"whisper-1"),
            ("prompt", None, b"two\r\nlines"),
        ]);
        let f = text_fields(CT, &body).expect("form");
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f["model"], "whisper-1");
        assert_eq!(f["prompt"], "two\r\nlines");
    }

    #[test]
    fn boundaries_are_found_quoted_and_among_other_parameters() {
        assert_eq!(
            boundary(b"Multipart/Form-Data; charset=utf-8; boundary=\"a b\""),
            Ok(b"a b".to_vec())
        );
        assert_eq!(boundary(b"multipart/form-data"), Err(FormError::NoBoundary));
        assert_eq!(
            boundary(b"multipart/mixed; boundary=x"),
            Err(FormError::NoBoundary)
        );
        assert_eq!(
            boundary(b"multipart/form-data; boundary="),
            Err(FormError::NoBoundary)
        );
        let long = format!("multipart/form-data; boundary={}", "x".repeat(150));
        assert_eq!(boundary(long.as_bytes()).map(|b| b.len()), Ok(150));
        let huge = format!("multipart/form-data; boundary={}", "x".repeat(201));
        assert_eq!(boundary(huge.as_bytes()), Err(FormError::NoBoundary));
        assert_eq!(
            boundary(b"multipart/form-data; boundary=a; boundary=b"),
            Err(FormError::Ambiguous)
        );
        assert!(is_form(b" multipart/form-data ; boundary=x") && !is_form(b"text/plain"));
    }

    fn one_part(headers: &str) -> Result<Map<String, Value>, FormError> {
        let body = format!("--XyZ\r\n{headers}\r\n\r\nwhisper-1\r\n--XyZ--\r\n");
        text_fields(CT, body.as_bytes())
    }

    #[test]
    fn what_parsers_read_differently_is_refused() {
        // A `;` inside quotes is part of the value, not a new parameter.
        assert_eq!(
            one_part("Content-Disposition: form-data; name=\"model\"; x=\"1;name=zzz\"")
                .expect("form")["model"],
            "whisper-1"
        );
        // Backslash escapes are decoded as Go does.
        assert!(one_part("Content-Disposition: form-data; name=\"mod\\el\"")
            .expect("form")
            .contains_key("model"));
        for (headers, why) in [
            ("Content-Disposition: form-data; name*=UTF-8''model", "RFC 2231 name"),
            ("Content-Disposition: form-data;\r\n\tname=\"model\"", "folded"),
            (
                "Content-Disposition: form-data; name=\"a\"\r\nContent-Disposition: form-data; name=\"model\"",
                "two dispositions",
            ),
            ("Content-Type: text/plain", "no name"),
            ("Content-Disposition: form-data; name=\"\"", "empty name"),
            ("Content-Disposition: form-data; name=\"a\"; name=\"model\"", "two names"),
            ("Content-Disposition: form-data; name=mo del", "junk after a token"),
            ("Content-Disposition: form-data; name=\"model", "unterminated quote"),
            ("Content-Disposition: attachment; name=\"model\"", "not form-data"),
        ] {
            assert_eq!(one_part(headers), Err(FormError::Ambiguous), "{why}");
        }
        // An empty file name is a plain value (Go), a real one a file.
        assert_eq!(
            one_part("Content-Disposition: form-data; name=\"model\"; filename=\"\"")
                .expect("form")["model"],
            "whisper-1"
        );
        assert!(
            one_part("Content-Disposition: form-data; name=\"model\"; filename=\"m.txt\"")
                .expect("form")
                .is_empty()
        );
        // The same field twice: Go keeps the first, others the last.
        let twice = form(&[("model", None, b"allowed"), ("model", None, b"forbidden")]);
        assert_eq!(text_fields(CT, &twice), Err(FormError::DuplicateField));
        // Bare LF line ends are not read at all.
        let lf = b"--XyZ\nContent-Disposition: form-data; name=\"model\"\n\nm\n--XyZ--\n";
        assert!(text_fields(CT, lf).is_err());
    }

    #[test]
    fn malformed_forms_are_refused_not_guessed() {
        let body = form(&[("model", None, b"gpt-4o")]);
        // Cut before the closing delimiter.
        let cut = &body[..body.len() - 12];
        assert_eq!(text_fields(CT, cut), Err(FormError::Malformed));
        assert_eq!(
            text_fields(CT, b"no delimiter here"),
            Err(FormError::Malformed)
        );
        assert_eq!(text_fields(CT, b""), Err(FormError::Malformed));
        assert_eq!(
            text_fields(b"multipart/form-data", &body),
            Err(FormError::NoBoundary)
        );
        // Headers never end.
        assert_eq!(
            text_fields(CT, b"--XyZ\r\nContent-Disposition: form-data; name=\"a\""),
            Err(FormError::Malformed)
        );
        let many: Vec<(String, Option<&str>, &[u8])> = (0..300)
            .map(|i| (format!("f{i}"), None, &b"v"[..]))
            .collect();
        let refs: Vec<(&str, Option<&str>, &[u8])> =
            many.iter().map(|(n, f, c)| (n.as_str(), *f, *c)).collect();
        assert_eq!(text_fields(CT, &form(&refs)), Err(FormError::TooManyFields));
    }

    #[test]
    fn a_preamble_and_an_empty_form_are_fine() {
        let mut body = b"preamble text\r\n".to_vec();
        body.extend_from_slice(&form(&[("model", None, b"m")]));
        assert_eq!(text_fields(CT, &body).expect("form")["model"], "m");
        assert!(text_fields(CT, b"--XyZ--\r\n").expect("empty").is_empty());
    }
}
