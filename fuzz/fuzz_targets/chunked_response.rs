//! The chunked decoder as the client side uses it (forwarding an upstream body verbatim, byte
//! pieces as they arrive): consumption is monotonic and bounded, data ranges lie inside the
//! consumed part, and payload length matches the ranges reported.
#![no_main]
use ditto_gateway::http::ChunkedDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, body)) = data.split_first() else { return };
    let step = (step as usize % 64) + 1;
    let mut d = ChunkedDecoder::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut payload = 0u64;
    for piece in body.chunks(step) {
        buf.extend_from_slice(piece);
        let mut ranges = Vec::new();
        let Ok(p) = d.decode(&buf, |r| ranges.push(r)) else { return };
        assert!(p.consumed <= buf.len());
        for r in &ranges {
            assert!(r.start <= r.end && r.end <= p.consumed);
            payload += r.len() as u64;
        }
        buf.drain(..p.consumed);
        if p.done {
            assert!(d.is_done());
            break;
        }
    }
    assert_eq!(payload, d.payload_len());
});
