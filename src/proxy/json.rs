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
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(borrow, default)]
    service_tier: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// The request's `model` and `stream` fields, if the body is a JSON object.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestFacts<'a> {
    /// Borrowed from the body unless it had to be unescaped.
    pub model: Option<Cow<'a, str>>,
    pub stream: bool,
    /// The body parsed as a JSON object.
    pub is_json: bool,
    /// The output cap the client set (`max_tokens`, `max_completion_tokens` or
    /// `max_output_tokens`), the output part of the token estimate.
    pub max_output: Option<u64>,
    /// `stream_options.include_usage` as sent, if present.
    pub include_usage: Option<bool>,
    /// `service_tier` (`flex`, `priority`), for pricing.
    pub service_tier: Option<Cow<'a, str>>,
}

/// Extract [`RequestFacts`] from a body; a body that is not a JSON object gives the default.
pub fn probe(body: &[u8]) -> RequestFacts<'_> {
    match serde_json::from_slice::<Probe<'_>>(body) {
        Ok(p) => RequestFacts {
            model: p.model,
            stream: p.stream.unwrap_or(false),
            is_json: true,
            max_output: p
                .max_tokens
                .or(p.max_completion_tokens)
                .or(p.max_output_tokens),
            include_usage: p.stream_options.and_then(|o| o.include_usage),
            service_tier: p.service_tier,
        },
        Err(_) => RequestFacts::default(),
    }
}

/// The body with `stream_options.include_usage` set to true, so a stream reports its usage
/// (for budgets). `None` when the body is not a JSON object.
pub fn with_include_usage(body: &[u8]) -> Option<bytes::Bytes> {
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    let opts = v
        .entry("stream_options")
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    if !opts.is_object() {
        *opts = serde_json::Value::Object(Default::default());
    }
    if let Some(o) = opts.as_object_mut() {
        o.insert("include_usage".into(), serde_json::Value::Bool(true));
    }
    serde_json::to_vec(&v).ok().map(bytes::Bytes::from)
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
    fn output_caps_and_stream_options() {
        let f = probe(br#"{"model":"m","max_completion_tokens":50,"stream":true,"stream_options":{"include_usage":true},"service_tier":"flex"}"#);
        assert_eq!(f.max_output, Some(50));
        assert_eq!(f.include_usage, Some(true));
        assert_eq!(f.service_tier.as_deref(), Some("flex"));
        assert_eq!(probe(br#"{"max_tokens":7}"#).max_output, Some(7));
    }

    /// Add `stream_options.include_usage: true` to a JSON object body, keeping the rest.
    #[test]
    fn include_usage_is_added_once() {
        let b = with_include_usage(br#"{"model":"m","stream":true}"#).expect("object");
        let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "m");
        let b = with_include_usage(
            br#"{"stream_options":{"include_usage":false,"x":1},"stream":true}"#,
        )
        .expect("object");
        let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"include_usage": true, "x": 1})
        );
        assert!(with_include_usage(b"[1]").is_none());
    }

    #[test]
    fn non_json_or_wrong_types_give_defaults() {
        assert_eq!(probe(b"not json"), RequestFacts::default());
        assert_eq!(probe(b"[1,2]"), RequestFacts::default());
        assert!(!probe(br#"{"model":5}"#).is_json);
        assert!(probe(b"{}").is_json);
    }
}
