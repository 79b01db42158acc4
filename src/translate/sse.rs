//! The one SSE splitter every stream converter uses, and the writers of the frames they emit.
//!
//! It follows the WHATWG event-stream rules: lines end with `\r\n`, `\n` or `\r` (a `\r\n`
//! split across two pieces counts once); `event:` sets the type, `data:` lines accumulate
//! (joined with `\n`), `id:`/`retry:` and `:` comments are ignored, one space after the colon
//! is dropped, and a blank line dispatches. It holds only the unfinished line and the event
//! being assembled, both bounded by [`MAX_EVENT_BYTES`], so a hostile upstream cannot make it
//! grow without end.

use serde_json::Value;

/// Largest event (its data lines together, plus the unfinished line) the splitter holds.
pub const MAX_EVENT_BYTES: usize = 4 << 20;

/// The OpenAI stream terminator.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; empty when the event had none (the spec's "message").
    pub event: String,
    /// The data lines, joined with `\n` (invalid UTF-8 replaced).
    pub data: String,
}

/// The stream broke the size bound: the converter must fail the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTooLarge;

/// Incremental splitter; feed it the decoded body in any pieces.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    event: String,
    data: Vec<u8>,
    has_data: bool,
    /// The last piece ended with `\r`: a `\n` starting the next one belongs to it.
    after_cr: bool,
    failed: bool,
}

impl SseParser {
    /// An empty splitter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Split `input`, appending every event it completes to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<SseEvent>) -> Result<(), EventTooLarge> {
        if self.failed {
            return Err(EventTooLarge);
        }
        let mut rest = input;
        if self.after_cr {
            self.after_cr = false;
            if let Some(r) = rest.strip_prefix(b"\n") {
                rest = r;
            }
        }
        while let Some(i) = memchr::memchr2(b'\n', b'\r', rest) {
            if self.line.is_empty() {
                self.process_line(&rest[..i], out);
            } else {
                self.line.extend_from_slice(&rest[..i]);
                let line = std::mem::take(&mut self.line);
                self.process_line(&line, out);
                // Keep the buffer's capacity for the next long line.
                self.line = line;
                self.line.clear();
            }
            if rest[i] == b'\r' {
                match rest.get(i + 1) {
                    Some(b'\n') => rest = &rest[i + 2..],
                    Some(_) => rest = &rest[i + 1..],
                    None => {
                        self.after_cr = true;
                        rest = &[];
                    }
                }
            } else {
                rest = &rest[i + 1..];
            }
            if self.data.len() > MAX_EVENT_BYTES {
                return self.fail();
            }
        }
        if self.line.len() + rest.len() + self.data.len() > MAX_EVENT_BYTES {
            return self.fail();
        }
        self.line.extend_from_slice(rest);
        Ok(())
    }

    /// The stream ended: an unfinished line counts as finished and a pending event is
    /// dispatched (lenient: some servers omit the last blank line).
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) {
        if self.failed {
            return;
        }
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, out);
        }
        self.dispatch(out);
    }

    fn fail(&mut self) -> Result<(), EventTooLarge> {
        self.failed = true;
        self.line = Vec::new();
        self.data = Vec::new();
        Err(EventTooLarge)
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => self.event = String::from_utf8_lossy(value).into_owned(),
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        if self.has_data {
            out.push(SseEvent {
                event: std::mem::take(&mut self.event),
                data: String::from_utf8_lossy(&self.data).into_owned(),
            });
        } else {
            self.event.clear();
        }
        self.data.clear();
        self.has_data = false;
    }
}

/// The input side every stream converter shares: the splitter and the buffer its events go
/// to (kept between pieces for its capacity).
#[derive(Debug, Default)]
pub(crate) struct SseInput {
    parser: SseParser,
    events: Vec<SseEvent>,
}

/// A converter of one SSE stream into another, driven by [`feed`] and [`finish`]: they own the
/// splitting and the rule that nothing is said once the stream ended; the converter says what
/// each event becomes and how a broken or cut stream ends.
pub(crate) trait Convert {
    /// The converter's splitter.
    fn input(&mut self) -> &mut SseInput;
    /// True once the output stream ended (a final event or an error went out).
    fn done(&self) -> bool;
    /// One upstream event.
    fn on_event(&mut self, ev: &SseEvent, out: &mut Vec<u8>);
    /// An upstream event broke [`MAX_EVENT_BYTES`]: the stream must fail.
    fn too_large(&mut self, out: &mut Vec<u8>);
    /// The upstream body ended and no event ended the output stream.
    fn ended(&mut self, out: &mut Vec<u8>);
}

/// Feed the next piece of the upstream body to `c`; returns the bytes it produced.
pub(crate) fn feed<C: Convert>(c: &mut C, input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if c.done() {
        return out;
    }
    let sse = c.input();
    if sse.parser.feed(input, &mut sse.events).is_err() {
        // Events completed before the oversized one are dropped with the stream.
        sse.events.clear();
        c.too_large(&mut out);
        return out;
    }
    drain(c, &mut out);
    out
}

/// The upstream body ended: a pending event is dispatched, then [`Convert::ended`] if the
/// stream is still open.
pub(crate) fn finish<C: Convert>(c: &mut C) -> Vec<u8> {
    let mut out = Vec::new();
    if c.done() {
        return out;
    }
    let sse = c.input();
    sse.parser.finish(&mut sse.events);
    drain(c, &mut out);
    if !c.done() {
        c.ended(&mut out);
    }
    out
}

fn drain<C: Convert>(c: &mut C, out: &mut Vec<u8>) {
    let events = std::mem::take(&mut c.input().events);
    for ev in &events {
        if c.done() {
            break;
        }
        c.on_event(ev, out);
    }
    // Hand the (now empty) buffer back to keep its capacity.
    let buf = &mut c.input().events;
    *buf = events;
    buf.clear();
}

/// Append `data: <json>\n\n`.
pub fn write_data(out: &mut Vec<u8>, json: &Value) {
    out.extend_from_slice(b"data: ");
    // Serializing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, json);
    out.extend_from_slice(b"\n\n");
}

/// Append `event: <name>\ndata: <json>\n\n`.
pub fn write_event(out: &mut Vec<u8>, name: &str, json: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    write_data(out, json);
}

/// Test helper: the `data:` payloads of converter output, checking the framing.
#[cfg(test)]
pub(crate) fn data_payloads(out: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(out).expect("utf8");
    assert!(text.is_empty() || text.ends_with("\n\n"), "{text}");
    text.split_terminator("\n\n")
        .map(|e| e.strip_prefix("data: ").expect("data frame").to_string())
        .collect()
}

/// Test helper: the (event name, payload) pairs of converter output in `event:`/`data:`
/// frames (Responses, Anthropic), checking the framing and that each payload's `type` is its
/// event name.
#[cfg(test)]
pub(crate) fn named_events(out: &[u8]) -> Vec<(String, Value)> {
    let text = std::str::from_utf8(out).expect("utf8");
    assert!(text.is_empty() || text.ends_with("\n\n"), "{text}");
    text.split_terminator("\n\n")
        .map(|e| {
            let (ev, data) = e.split_once('\n').expect("two lines");
            let name = ev.strip_prefix("event: ").expect("event line").to_string();
            let v: Value =
                serde_json::from_str(data.strip_prefix("data: ").expect("data")).expect("json");
            assert_eq!(v["type"], name.as_str());
            (name, v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(input: &[u8], step: usize) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            p.feed(piece, &mut out).expect("within bounds");
        }
        p.finish(&mut out);
        out
    }

    #[test]
    fn events_survive_every_split_point_with_crlf_and_lf() {
        let input = b"event: message_start\r\ndata: {\"a\":1}\r\n\r\n: comment\n\
data: line1\ndata:line2\nid: 7\nretry: 5\n\nevent: x\rdata: y\r\r";
        for step in 1..input.len() {
            let ev = split_all(input, step);
            assert_eq!(ev.len(), 3, "step {step}: {ev:?}");
            assert_eq!(ev[0].event, "message_start");
            assert_eq!(ev[0].data, "{\"a\":1}");
            assert_eq!(ev[1].event, "");
            assert_eq!(ev[1].data, "line1\nline2");
            assert_eq!(ev[2].event, "x");
            assert_eq!(ev[2].data, "y");
        }
    }

    #[test]
    fn event_without_data_is_not_dispatched_and_resets_the_type() {
        let ev = split_all(b"event: ping\n\ndata: z\n\n", 3);
        assert_eq!(
            ev,
            vec![SseEvent {
                event: String::new(),
                data: "z".into()
            }]
        );
    }

    #[test]
    fn missing_final_blank_line_still_dispatches_at_finish() {
        let ev = split_all(b"data: {\"end\":true}", 4);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].data, "{\"end\":true}");
    }

    #[test]
    fn oversized_line_fails_instead_of_growing() {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        let big = vec![b'a'; MAX_EVENT_BYTES / 2 + 1];
        p.feed(b"data: ", &mut out).expect("small");
        p.feed(&big, &mut out).expect("half");
        assert_eq!(p.feed(&big, &mut out), Err(EventTooLarge));
        assert_eq!(p.feed(b"\n\n", &mut out), Err(EventTooLarge));
        assert!(out.is_empty());
    }

    #[test]
    fn frames_are_written_in_sse_syntax() {
        let mut out = Vec::new();
        write_event(&mut out, "ping", &serde_json::json!({"type": "ping"}));
        write_data(&mut out, &serde_json::json!(1));
        assert_eq!(
            out,
            b"event: ping\ndata: {\"type\":\"ping\"}\n\ndata: 1\n\n"
        );
    }
}
