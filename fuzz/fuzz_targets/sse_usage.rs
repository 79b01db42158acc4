//! The SSE usage scanner: never panic, and the usage found does not depend on how the stream
//! was cut into pieces.
#![no_main]
use ditto_gateway::usage::SseUsageScanner;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, body)) = data.split_first() else { return };
    let step = (step as usize % 97) + 1;
    let mut whole = SseUsageScanner::new();
    whole.feed(body);
    let mut split = SseUsageScanner::new();
    for piece in body.chunks(step) {
        split.feed(piece);
    }
    assert_eq!(whole.usage(), split.usage());
});
