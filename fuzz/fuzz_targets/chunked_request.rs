//! The chunked decoder as the server side uses it (collecting a request body): decoding the
//! input whole and decoding it split at an arbitrary point must agree exactly.
#![no_main]
use ditto_gateway::http::ChunkedDecoder;
use libfuzzer_sys::fuzz_target;

fn decode_all(pieces: &[&[u8]]) -> Result<(Vec<u8>, usize, bool), ()> {
    let mut d = ChunkedDecoder::new();
    let mut out = Vec::new();
    let mut consumed = 0;
    let mut carry: Vec<u8> = Vec::new();
    for p in pieces {
        carry.extend_from_slice(p);
        let r = d.decode(&carry, |range| out.extend_from_slice(&carry[range])).map_err(|_| ())?;
        consumed += r.consumed;
        carry.drain(..r.consumed);
        if r.done {
            return Ok((out, consumed, true));
        }
    }
    Ok((out, consumed, false))
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, body)) = data.split_first() else { return };
    let at = (split as usize).min(body.len());
    let whole = decode_all(&[body]);
    let split = decode_all(&[&body[..at], &body[at..]]);
    match (whole, split) {
        (Ok(a), Ok(b)) => {
            // A split can only delay the end, never change the payload seen so far.
            if a.2 && b.2 {
                assert_eq!(a, b);
            }
            assert!(a.1 <= body.len());
        }
        (Err(()), Err(())) => {}
        // An error found whole must also be found split (and vice versa) unless the split
        // input was not complete enough to reach the bad byte.
        (Ok(a), Err(())) => assert!(!a.2 || a.1 < body.len()),
        (Err(()), Ok(b)) => assert!(!b.2),
    }
});
