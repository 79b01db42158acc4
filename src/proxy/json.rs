//! What the pipeline needs from a JSON request body: `model` and `stream`, nothing else.
//!
//! serde_json into a two-field struct skips every other field without building it; the choice
//! between this, simd-json and lazy extractors is settled by the criterion benches.

use std::borrow::Cow;

use serde::Deserialize;

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
}

/// The request's `model` and `stream` fields, if the body is a JSON object.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestFacts<'a> {
    /// Borrowed from the body unless it had to be unescaped.
    pub model: Option<Cow<'a, str>>,
    pub stream: bool,
    /// The body parsed as a JSON object.
    pub is_json: bool,
}

/// Extract [`RequestFacts`] from a body; a body that is not a JSON object gives the default.
pub fn probe(body: &[u8]) -> RequestFacts<'_> {
    match serde_json::from_slice::<Probe<'_>>(body) {
        Ok(p) => RequestFacts {
            model: p.model,
            stream: p.stream.unwrap_or(false),
            is_json: true,
        },
        Err(_) => RequestFacts::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_model_and_stream() {
        let f = probe(br#"{"messages":[{"role":"user","content":"hi \"x\""}],"model":"gpt-4o","stream":true}"#);
        assert_eq!(f.model.as_deref(), Some("gpt-4o"));
        assert!(f.stream);
        let f = probe(br#"{"model":"a\u00e9b"}"#);
        assert_eq!(f.model.as_deref(), Some("a\u{e9}b"));
        assert!(!f.stream);
    }

    #[test]
    fn non_json_or_wrong_types_give_defaults() {
        assert_eq!(probe(b"not json"), RequestFacts::default());
        assert_eq!(probe(b"[1,2]"), RequestFacts::default());
        assert!(!probe(br#"{"model":5}"#).is_json);
        assert!(probe(b"{}").is_json);
    }
}
