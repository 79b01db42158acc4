//! The guardrails' multipart form reader: never panic, and whatever it reads as a plain field
//! was really in the body (names and values are slices of it, not inventions).
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
        for (name, value) in &fields {
            assert!(body.contains(name.as_str()));
            assert!(body.contains(value.as_str().unwrap_or_default()));
        }
    }
});

fn memchr(b: u8, s: &[u8]) -> Option<usize> {
    s.iter().position(|&c| c == b)
}
