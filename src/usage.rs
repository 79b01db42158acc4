//! Token usage read from responses on the fly: from a JSON body, or from an SSE stream as its
//! events pass through (the usage chunk of `stream_options.include_usage`), without holding the
//! stream back. Budgets and rate limits settle on what this finds.
//!
//! The SSE scanner is fed the decoded payload in whatever pieces the network delivers; it keeps
//! only the unfinished last line (bounded) and parses JSON only for the rare event line that
//! contains a `"usage"` object, so the cost per streamed byte is one `memchr`-class search.

use memchr::memmem;
use serde::Deserialize;

/// Longest SSE line we are willing to hold while waiting for its end; longer lines are skipped
/// (an event that large carries content, not a usage report).
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Token counts as OpenAI reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Prompt tokens served from the provider's cache (`prompt_tokens_details.cached_tokens`).
    pub cached_tokens: u64,
    /// Prompt tokens written to the provider's cache (Anthropic's cache creation).
    pub cache_creation_tokens: u64,
}

/// Every spelling of usage we read: Chat Completions (`prompt_tokens`), Responses
/// (`input_tokens`), Anthropic (`cache_read_input_tokens`).
#[derive(Deserialize, Default)]
struct RawUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    prompt_tokens_details: Option<Details>,
    input_tokens_details: Option<Details>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct Details {
    cached_tokens: Option<u64>,
}

impl From<RawUsage> for Usage {
    fn from(r: RawUsage) -> Usage {
        let cached = r
            .prompt_tokens_details
            .or(r.input_tokens_details)
            .and_then(|d| d.cached_tokens)
            .or(r.cache_read_input_tokens)
            .unwrap_or(0);
        let created = r.cache_creation_input_tokens.unwrap_or(0);
        let prompt = match (r.prompt_tokens, r.input_tokens) {
            (Some(p), _) => p,
            // Anthropic counts cache reads and writes apart from `input_tokens`.
            (None, Some(i)) if r.cache_read_input_tokens.is_some() => i + cached + created,
            (None, Some(i)) => i,
            (None, None) => 0,
        };
        let completion = r.completion_tokens.or(r.output_tokens).unwrap_or(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: r.total_tokens.unwrap_or(prompt.saturating_add(completion)),
            cached_tokens: cached,
            cache_creation_tokens: created,
        }
    }
}

#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<RawUsage>,
    /// Responses API events carry it in `response.usage`.
    #[serde(default)]
    response: Option<Box<WithUsage>>,
}

/// The `usage` object of a JSON response body (or of a Responses API event), if any.
pub fn from_json(body: &[u8]) -> Option<Usage> {
    let w = serde_json::from_slice::<WithUsage>(body).ok()?;
    match (w.usage, w.response) {
        (Some(u), _) => Some(u.into()),
        (None, Some(r)) => r.usage.map(Usage::from),
        (None, None) => None,
    }
}

/// Incremental scanner over an SSE body.
#[derive(Debug, Default)]
pub struct SseUsageScanner {
    /// The unfinished last line.
    partial: Vec<u8>,
    /// The current line grew past [`MAX_LINE_BYTES`]: ignore it up to its end.
    skipping: bool,
    last: Option<Usage>,
}

impl SseUsageScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// The last usage seen so far.
    pub fn usage(&self) -> Option<Usage> {
        self.last
    }

    /// Feed the next piece of the (de-chunked) body.
    pub fn feed(&mut self, mut data: &[u8]) {
        // Finish the line left over from the previous piece.
        if !self.partial.is_empty() || self.skipping {
            match memchr::memchr(b'\n', data) {
                None => {
                    self.hold(data);
                    return;
                }
                Some(nl) => {
                    if !self.skipping {
                        self.partial.extend_from_slice(&data[..nl]);
                        let line = std::mem::take(&mut self.partial);
                        self.line(&line);
                    }
                    self.skipping = false;
                    data = &data[nl + 1..];
                }
            }
        }
        // Complete lines: only those containing "usage" are looked at closely.
        let end = match memchr::memrchr(b'\n', data) {
            Some(i) => i + 1,
            None => 0,
        };
        let (complete, tail) = data.split_at(end);
        let finder = memmem::Finder::new(b"\"usage\"");
        let mut from = 0;
        while let Some(i) = finder.find(&complete[from..]) {
            let at = from + i;
            // Most chunks say `"usage":null`; only an object is worth a JSON parse.
            if !object_follows(&complete[at + 7..]) {
                from = at + 7;
                continue;
            }
            let start = memchr::memrchr(b'\n', &complete[..at]).map_or(0, |p| p + 1);
            let stop = memchr::memchr(b'\n', &complete[at..]).map_or(complete.len(), |p| at + p);
            self.line(&complete[start..stop]);
            from = stop.min(complete.len());
            if from >= complete.len() {
                break;
            }
        }
        self.hold(tail);
    }

    fn hold(&mut self, piece: &[u8]) {
        if self.skipping {
            return;
        }
        if self.partial.len() + piece.len() > MAX_LINE_BYTES {
            self.partial.clear();
            self.skipping = true;
            return;
        }
        self.partial.extend_from_slice(piece);
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(json) = line.strip_prefix(b"data:") else {
            return;
        };
        let has_object =
            memmem::find_iter(json, b"\"usage\"").any(|at| object_follows(&json[at + 7..]));
        if !has_object {
            return;
        }
        if let Some(u) = from_json(json.trim_ascii()) {
            self.last = Some(u);
        }
    }
}

/// Drops the usage-only chunk (`"choices":[]` and a `usage` object) from an SSE stream, for a
/// client that did not ask for `stream_options.include_usage` but whose stream the gateway made
/// report usage (to settle a budget). Everything else passes byte for byte; only the unfinished
/// last event is held back, as the event it ends may be the one to drop.
#[derive(Debug, Default)]
pub struct SseUsageFilter {
    pending: Vec<u8>,
}

impl SseUsageFilter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed the next piece of the (de-chunked) body; what may be sent goes to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        self.pending.extend_from_slice(data);
        let mut start = 0;
        while let Some(end) = event_end(&self.pending[start..]) {
            let event = &self.pending[start..start + end];
            if !is_usage_only(event) {
                out.extend_from_slice(event);
            }
            start += end;
        }
        self.pending.drain(..start);
        // An event that never ends is content, not the small usage chunk: let it through.
        if self.pending.len() > MAX_LINE_BYTES {
            out.append(&mut self.pending);
        }
    }

    /// The stream ended: send whatever is held.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !is_usage_only(&self.pending) {
            out.append(&mut self.pending);
        }
        self.pending.clear();
    }
}

/// Length of the first complete event in `buf` (through its blank line), if any.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'\n', &buf[from..]) {
        let at = from + i;
        match buf.get(at + 1) {
            Some(b'\n') => return Some(at + 2),
            Some(b'\r') if buf.get(at + 2) == Some(&b'\n') => return Some(at + 3),
            _ => from = at + 1,
        }
    }
    None
}

fn is_usage_only(event: &[u8]) -> bool {
    let Some(at) = memmem::find(event, b"\"usage\"") else {
        return false;
    };
    if !object_follows(&event[at + 7..]) {
        return false;
    }
    event.split(|&b| b == b'\n').any(|line| {
        let Some(json) = line.strip_prefix(b"data:") else {
            return false;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(json.trim_ascii()) else {
            return false;
        };
        v.get("choices")
            .and_then(serde_json::Value::as_array)
            .is_some_and(Vec::is_empty)
            && v.get("usage").is_some_and(serde_json::Value::is_object)
    })
}

/// True when `rest` (what follows a `"usage"` key) is `:` then `{`, whitespace allowed.
fn object_follows(rest: &[u8]) -> bool {
    let mut it = rest.iter().copied().skip_while(u8::is_ascii_whitespace);
    if it.next() != Some(b':') {
        return false;
    }
    it.find(|b| !b.is_ascii_whitespace()) == Some(b'{')
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b"data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":5,\"total_tokens\":8}}\n\n\
data: [DONE]\n\n";

    #[test]
    fn finds_the_usage_chunk_at_every_split() {
        for step in 1..STREAM.len() {
            let mut s = SseUsageScanner::new();
            for piece in STREAM.chunks(step) {
                s.feed(piece);
            }
            assert_eq!(
                s.usage(),
                Some(Usage {
                    prompt_tokens: 3,
                    completion_tokens: 5,
                    total_tokens: 8,
                    ..Usage::default()
                }),
                "step {step}"
            );
        }
    }

    #[test]
    fn null_usage_and_content_mentioning_usage_are_ignored() {
        let mut s = SseUsageScanner::new();
        s.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"the \\\"usage\\\" word\"}}],\"usage\":null}\n\n");
        assert_eq!(s.usage(), None);
    }

    #[test]
    fn oversized_lines_are_skipped_not_held() {
        let mut s = SseUsageScanner::new();
        let big = vec![b'a'; MAX_LINE_BYTES + 10];
        s.feed(b"data: ");
        s.feed(&big);
        assert!(s.partial.is_empty());
        s.feed(b"\ndata: {\"usage\":{\"total_tokens\":2}}\n");
        assert_eq!(s.usage().map(|u| u.total_tokens), Some(2));
    }

    #[test]
    fn the_usage_chunk_is_hidden_at_every_split_and_the_rest_is_untouched() {
        let want = b"data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\ndata: [DONE]\n\n";
        for step in 1..STREAM.len() {
            let mut f = SseUsageFilter::new();
            let mut out = Vec::new();
            for piece in STREAM.chunks(step) {
                f.feed(piece, &mut out);
            }
            f.finish(&mut out);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(want),
                "step {step}"
            );
        }
        let mut f = SseUsageFilter::new();
        let mut out = Vec::new();
        f.feed(
            b"data: {\"choices\":[{}],\"usage\":{\"total_tokens\":1}}\r\n\r\n",
            &mut out,
        );
        assert!(!out.is_empty(), "a chunk with choices stays");
    }

    #[test]
    fn json_body_usage() {
        let u = from_json(
            br#"{"id":"x","usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
        );
        assert_eq!(u.map(|u| u.total_tokens), Some(3));
        assert_eq!(from_json(b"{}"), None);
        let u = from_json(
            br#"{"usage":{"prompt_tokens":10,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":4}}}"#,
        )
        .expect("usage");
        assert_eq!((u.cached_tokens, u.total_tokens), (4, 12));
        let u = from_json(
            br#"{"type":"response.completed","response":{"usage":{"input_tokens":7,"output_tokens":3,"total_tokens":10}}}"#,
        )
        .expect("responses usage");
        assert_eq!((u.prompt_tokens, u.completion_tokens), (7, 3));
    }
}
