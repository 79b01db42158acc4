//! What a backend speaks: plain OpenAI passthrough, or a native provider API the gateway
//! translates to (`provider: "anthropic" | "google" | "gemini"`), plus the provider options
//! read from `provider_config` (REFERENCE section 7, issue 6).
//!
//! OpenAI-compatible aliases (`openai`, `openai-compatible`, `openai_compatible`) are plain
//! passthrough backends whose root may come from `provider_config.base_url` and whose key from
//! `provider_config.api_key` (sent as `Authorization: Bearer`).

use crate::config::BackendConfig;

/// The native API of a translation backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Anthropic Messages (`POST /v1/messages`).
    Anthropic,
    /// Gemini `generateContent` / `streamGenerateContent?alt=sse`.
    Gemini,
}

impl Kind {
    /// The provider's public API root, used when the config gives none.
    pub fn default_base_url(self) -> &'static str {
        match self {
            Kind::Anthropic => "https://api.anthropic.com",
            Kind::Gemini => "https://generativelanguage.googleapis.com",
        }
    }

    /// Name used in `/v1/models` `owned_by` and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Anthropic => "anthropic",
            Kind::Gemini => "google",
        }
    }
}

/// Accepted `provider` spellings (case-insensitive), for validation messages.
pub const PROVIDERS: &[&str] = &[
    "anthropic",
    "google",
    "gemini",
    "openai",
    "openai-compatible",
    "openai_compatible",
];

/// How a `provider` value is served: `Ok(Some(kind))` translated, `Ok(None)` passthrough
/// (no provider, or an OpenAI-compatible alias), `Err` unknown.
pub fn parse_provider(p: Option<&str>) -> Result<Option<Kind>, String> {
    let Some(p) = p else { return Ok(None) };
    match p.to_ascii_lowercase().as_str() {
        "anthropic" => Ok(Some(Kind::Anthropic)),
        "google" | "gemini" => Ok(Some(Kind::Gemini)),
        "openai" | "openai-compatible" | "openai_compatible" => Ok(None),
        _ => Err(format!(
            "unknown provider {p:?} (expected one of: {})",
            PROVIDERS.join(", ")
        )),
    }
}

/// Provider settings compiled from a backend's config; the default is a plain passthrough.
#[derive(Debug, Clone, Default)]
pub struct Native {
    /// `Some` for a translation backend.
    pub kind: Option<Kind>,
    /// `provider_config.api_key`, sent as `x-api-key` (Anthropic) or `x-goog-api-key`
    /// (Gemini). Already env-interpolated by the config layer.
    pub api_key: Option<String>,
    /// Models `/v1/models` lists for a translation backend: `provider_config.models` plus the
    /// exact router rules that point at the backend (filled in by the gateway build).
    pub models: Vec<String>,
    /// `model_map` (exact first, then `"*"`): applied to translated requests.
    pub model_map: Vec<(String, String)>,
    /// `provider_config.responses_shim: "always"`: serve `/v1/responses` through
    /// `/v1/chat/completions` without trying the upstream's own endpoint first.
    pub responses_shim_always: bool,
}

impl Native {
    /// Read the provider settings of `c`; errors name the field.
    pub fn from_config(c: &BackendConfig) -> Result<Native, String> {
        let kind = parse_provider(c.provider.as_deref())
            .map_err(|e| format!("backend \"{}\": provider: {e}", c.name))?;
        let pc = c.provider_config.as_ref();
        let str_of = |k: &str| {
            pc.and_then(|v| v.get(k))
                .and_then(serde_json::Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let models = pc
            .and_then(|v| v.get("models"))
            .and_then(serde_json::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.as_str().or_else(|| m.get("id")?.as_str()))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let responses_shim_always = match str_of("responses_shim").as_deref() {
            None | Some("auto") => false,
            Some("always") => true,
            Some(other) => {
                return Err(format!(
                    "backend \"{}\": provider_config.responses_shim: {other:?} (expected \"auto\" or \"always\")",
                    c.name
                ))
            }
        };
        Ok(Native {
            kind,
            api_key: str_of("api_key"),
            models,
            model_map: c.model_map.clone(),
            responses_shim_always,
        })
    }

    /// The API root to connect to: `provider_config.base_url`, else `base_url`, else the
    /// provider's public default. `None` for a passthrough backend with neither.
    pub fn base_url(c: &BackendConfig) -> Option<String> {
        let from_pc = c
            .provider_config
            .as_ref()
            .and_then(|v| v.get("base_url"))
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        from_pc.or_else(|| c.base_url.clone()).or_else(|| {
            parse_provider(c.provider.as_deref())
                .ok()
                .flatten()
                .map(|k| k.default_base_url().to_string())
        })
    }

    /// The model sent upstream for the client's `model`: `model_map` exact match, then `"*"`.
    pub fn map_model<'a>(&'a self, model: &'a str) -> &'a str {
        self.model_map
            .iter()
            .find(|(k, _)| k == model)
            .or_else(|| self.model_map.iter().find(|(k, _)| k == "*"))
            .map_or(model, |(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_parse_and_unknown_ones_are_named() {
        assert_eq!(parse_provider(Some("Anthropic")), Ok(Some(Kind::Anthropic)));
        assert_eq!(parse_provider(Some("gemini")), Ok(Some(Kind::Gemini)));
        assert_eq!(parse_provider(Some("google")), Ok(Some(Kind::Gemini)));
        assert_eq!(parse_provider(Some("openai-compatible")), Ok(None));
        assert_eq!(parse_provider(None), Ok(None));
        let e = parse_provider(Some("cohere")).expect_err("unknown");
        assert!(e.contains("\"cohere\"") && e.contains("anthropic"), "{e}");
    }

    #[test]
    fn model_map_exact_then_star() {
        let n = Native {
            model_map: vec![("a".into(), "b".into()), ("*".into(), "z".into())],
            ..Native::default()
        };
        assert_eq!(n.map_model("a"), "b");
        assert_eq!(n.map_model("q"), "z");
        assert_eq!(Native::default().map_model("q"), "q");
    }
}
