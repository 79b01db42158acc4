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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
}

#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<Usage>,
}

/// The `usage` object of a JSON response body, if any.
pub fn from_json(body: &[u8]) -> Option<Usage> {
    serde_json::from_slice::<WithUsage>(body).ok()?.usage
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
                    total_tokens: 8
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
    fn json_body_usage() {
        let u = from_json(
            br#"{"id":"x","usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
        );
        assert_eq!(u.map(|u| u.total_tokens), Some(3));
        assert_eq!(from_json(b"{}"), None);
    }
}
