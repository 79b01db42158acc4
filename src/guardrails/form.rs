//! The text fields of a `multipart/form-data` body (RFC 7578), so that guardrails police
//! uploads too: `model` and `prompt` of `/v1/audio/transcriptions`, `/v1/images/edits`, ...
//!
//! Only what policy needs: the parts without a `filename` (the form's plain fields), by name,
//! as text. File parts are skipped unread. Written here rather than taken from `multer`
//! because the body is already whole in memory, and multer is an async stream parser that
//! would add `mime` and `encoding_rs` to find a few small fields.

use memchr::memmem;
use serde_json::{Map, Value};

/// At most this many plain fields are read (a form is a handful; a hostile one is refused).
const MAX_FIELDS: usize = 256;

/// Why a form could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormError {
    NoBoundary,
    Malformed,
    TooManyFields,
}

/// The `boundary` parameter of a `multipart/form-data` content type.
pub fn boundary(content_type: &[u8]) -> Option<&[u8]> {
    let ct = content_type;
    let (kind, params) = match memchr::memchr(b';', ct) {
        Some(i) => (&ct[..i], &ct[i + 1..]),
        None => (ct, &[][..]),
    };
    if !kind
        .trim_ascii()
        .eq_ignore_ascii_case(b"multipart/form-data")
    {
        return None;
    }
    params.split(|&b| b == b';').find_map(|p| {
        let (name, value) = p.split_at(memchr::memchr(b'=', p)?);
        if !name.trim_ascii().eq_ignore_ascii_case(b"boundary") {
            return None;
        }
        let v = value[1..].trim_ascii();
        let v = v
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(v);
        // RFC 2046: 1 to 70 characters.
        (!v.is_empty() && v.len() <= 70).then_some(v)
    })
}

/// The plain (non-file) fields of a form, as a JSON object of strings. A field whose value is
/// not UTF-8 is kept lossily: policy must see its text, not skip it.
pub fn text_fields(content_type: &[u8], body: &[u8]) -> Result<Map<String, Value>, FormError> {
    let boundary = boundary(content_type).ok_or(FormError::NoBoundary)?;
    let mut delim = Vec::with_capacity(boundary.len() + 4);
    delim.extend_from_slice(b"\r\n--");
    delim.extend_from_slice(boundary);
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
        if let Some((name, is_file)) = disposition(headers) {
            if !is_file {
                if fields.len() >= MAX_FIELDS {
                    return Err(FormError::TooManyFields);
                }
                let name = String::from_utf8_lossy(name).into_owned();
                let value = String::from_utf8_lossy(content).into_owned();
                fields.insert(name, Value::String(value));
            }
        }
        at = content_start + content_len + delim.len();
    }
}

/// `Content-Disposition: form-data; name="..."[; filename="..."]` of a part's headers: the
/// name, and whether the part is a file.
fn disposition(headers: &[u8]) -> Option<(&[u8], bool)> {
    let line = headers.split(|&b| b == b'\n').find_map(|l| {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        let colon = memchr::memchr(b':', l)?;
        l[..colon]
            .trim_ascii()
            .eq_ignore_ascii_case(b"content-disposition")
            .then(|| &l[colon + 1..])
    })?;
    let mut name = None;
    let mut is_file = false;
    for p in line.split(|&b| b == b';').skip(1) {
        let Some(eq) = memchr::memchr(b'=', p) else {
            continue;
        };
        let key = p[..eq].trim_ascii();
        let v = p[eq + 1..].trim_ascii();
        let v = v
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(v);
        if key.eq_ignore_ascii_case(b"name") {
            name = Some(v);
        } else if key.eq_ignore_ascii_case(b"filename") || key.eq_ignore_ascii_case(b"filename*") {
            is_file = true;
        }
    }
    Some((name?, is_file))
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
            Some(&b"a b"[..])
        );
        assert_eq!(boundary(b"multipart/form-data"), None);
        assert_eq!(boundary(b"multipart/mixed; boundary=x"), None);
        assert_eq!(boundary(b"multipart/form-data; boundary="), None);
        assert_eq!(
            boundary(format!("multipart/form-data; boundary={}", "x".repeat(71)).as_bytes()),
            None
        );
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
