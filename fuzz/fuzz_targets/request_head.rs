//! Request heads: never panic; an accepted head is self-consistent.
#![no_main]
use ditto_gateway::http::{BodyFraming, RequestHead};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((head, len))) = RequestHead::parse(data) {
        assert!(len <= data.len());
        assert!(head.target().starts_with('/'));
        let _ = (head.path(), head.query(), head.fields.len());
        for (name, value) in head.fields.iter() {
            assert!(!name.is_empty());
            let _ = value.len();
        }
        // Framing is never ambiguous: both headers present must have been refused.
        let has_te = head.fields.get("transfer-encoding").is_some();
        let has_cl = head.fields.get("content-length").is_some();
        assert!(!(has_te && has_cl));
        if head.framing == BodyFraming::Chunked {
            assert!(has_te);
        }
    }
});
