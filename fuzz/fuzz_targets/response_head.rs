//! Response heads from an upstream: never panic; framing follows the status and request method.
#![no_main]
use ditto_gateway::http::{BodyFraming, ResponseHead};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flag, rest)) = data.split_first() else { return };
    let head_request = flag & 1 == 1;
    if let Ok(Some((head, len))) = ResponseHead::parse(rest, head_request) {
        assert!(len <= rest.len());
        let _ = head.reason();
        if head_request || head.status == 204 || head.status == 304 || (100..200).contains(&head.status) {
            assert_eq!(head.framing, BodyFraming::Empty);
        }
        if head.framing == BodyFraming::UntilClose {
            assert!(!head.keep_alive);
        }
    }
});
