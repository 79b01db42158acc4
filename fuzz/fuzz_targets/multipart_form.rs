//! The guardrails' multipart form reader: never panic, and whatever it reads as a plain field
//! was really in the body (values are slices of it, names its quoted strings unescaped).
#![no_main]
use ditto_gateway::guardrails::form::text_fields;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First line: the content type; the rest: the body.
    let (ct, body) = match memchr(b'\n', data) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"multipart/form-data; boundary=XyZ"[..], data),
    };
    if let Ok(fields) = text_fields(ct, body) {
        let body = String::from_utf8_lossy(body);
        // Names may be quoted strings with `\` escapes: compare without backslashes (and skip
        // names whose unescaping joined bytes into other UTF-8 than the body shows).
        let unescaped = body.replace('\\', "");
        for (name, value) in &fields {
            if !name.contains('\u{FFFD}') {
                assert!(unescaped.contains(&name.replace('\\', "")), "{name:?}");
            }
            assert!(body.contains(value.as_str().unwrap_or_default()));
        }
    }
});

fn memchr(b: u8, s: &[u8]) -> Option<usize> {
    s.iter().position(|&c| c == b)
}
