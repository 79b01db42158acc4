//! Model prices from a LiteLLM-format JSON (`--pricing-litellm PATH`), and the cost of a
//! request.
//!
//! Prices are kept in pico-USD per token (1e-12 USD) as integers: LiteLLM's cheapest prices
//! are around 1e-8 USD per token, which the original gateway's micro-dollar arithmetic rounds
//! to zero; at pico resolution a token of any listed model costs a whole, exact number.

use ahash::AHashMap;
use serde_json::Value;

use crate::usage::Usage;

/// Prices of one model, pico-USD per token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Price {
    pub input: u64,
    pub output: u64,
    /// Cached input tokens (`cache_read_input_token_cost`); falls back to `input`.
    pub cache_read: Option<u64>,
    /// Input tokens written to a cache (`cache_creation_input_token_cost`).
    pub cache_creation: Option<u64>,
    /// `service_tier` variants (`flex`, `priority`): (input, output).
    pub flex: Option<(u64, u64)>,
    pub priority: Option<(u64, u64)>,
}

/// Every priced model.
#[derive(Debug, Default, Clone)]
pub struct Pricing {
    models: AHashMap<String, Price>,
}

/// USD per token as a JSON number -> pico-USD per token.
fn pico(v: Option<&Value>) -> Option<u64> {
    let usd = v?.as_f64()?;
    (usd.is_finite() && usd >= 0.0).then(|| (usd * 1e12).round() as u64)
}

impl Pricing {
    /// Parse a LiteLLM `model_prices_and_context_window.json`. Entries without token prices
    /// (image models, `sample_spec`) are skipped.
    pub fn from_json(text: &str) -> Result<Pricing, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let Value::Object(map) = v else {
            return Err("expected a JSON object of model -> prices".into());
        };
        let mut models = AHashMap::with_capacity(map.len());
        for (name, entry) in &map {
            if name == "sample_spec" {
                continue;
            }
            let (Some(input), Some(output)) = (
                pico(entry.get("input_cost_per_token")),
                pico(entry.get("output_cost_per_token")),
            ) else {
                continue;
            };
            let tier = |t: &str| {
                Some((
                    pico(entry.get(format!("input_cost_per_token_{t}")))?,
                    pico(entry.get(format!("output_cost_per_token_{t}")))?,
                ))
            };
            models.insert(
                name.clone(),
                Price {
                    input,
                    output,
                    cache_read: pico(entry.get("cache_read_input_token_cost")),
                    cache_creation: pico(entry.get("cache_creation_input_token_cost")),
                    flex: tier("flex"),
                    priority: tier("priority"),
                },
            );
        }
        Ok(Pricing { models })
    }

    /// Load `--pricing-litellm PATH`.
    pub fn load(path: &std::path::Path) -> Result<Pricing, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--pricing-litellm {}: {e}", path.display()))?;
        Pricing::from_json(&text).map_err(|e| format!("--pricing-litellm {}: {e}", path.display()))
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// The price of `model`: exact name, else without a `provider/` prefix.
    pub fn price(&self, model: &str) -> Option<&Price> {
        self.models.get(model).or_else(|| {
            model
                .rsplit_once('/')
                .and_then(|(_, bare)| self.models.get(bare))
        })
    }

    /// Cost in pico-USD of `usage` on `model` (0 for an unpriced model).
    pub fn cost(&self, model: &str, usage: &Usage, service_tier: Option<&str>) -> u64 {
        let Some(p) = self.price(model) else { return 0 };
        let (input, output) = match service_tier {
            Some("flex") => p.flex.unwrap_or((p.input, p.output)),
            Some("priority") => p.priority.unwrap_or((p.input, p.output)),
            _ => (p.input, p.output),
        };
        let cached = usage.cached_tokens.min(usage.prompt_tokens);
        let created = usage
            .cache_creation_tokens
            .min(usage.prompt_tokens - cached);
        let plain = usage.prompt_tokens - cached - created;
        let total = u128::from(plain) * u128::from(input)
            + u128::from(cached) * u128::from(p.cache_read.unwrap_or(input))
            + u128::from(created) * u128::from(p.cache_creation.unwrap_or(input))
            + u128::from(usage.completion_tokens) * u128::from(output);
        u64::try_from(total).unwrap_or(u64::MAX)
    }

    /// Worst-case cost of a request before it runs: `input` prompt tokens and up to `output`
    /// completion tokens at the model's full prices.
    pub fn estimate(&self, model: &str, input: u64, output: u64) -> u64 {
        let usage = Usage {
            prompt_tokens: input,
            completion_tokens: output,
            total_tokens: input.saturating_add(output),
            ..Usage::default()
        };
        self.cost(model, &usage, None)
    }
}

/// Pico-USD as a decimal USD string with 12 places, for the admin API.
pub fn pico_to_usd_string(pico: u64) -> String {
    format!(
        "{}.{:012}",
        pico / 1_000_000_000_000,
        pico % 1_000_000_000_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRICES: &str = r#"{
        "sample_spec": {"input_cost_per_token": 0},
        "gpt-4o": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
                   "cache_read_input_token_cost": 1.25e-06, "litellm_provider": "openai"},
        "text-embedding-3-small": {"input_cost_per_token": 2e-08, "output_cost_per_token": 0.0},
        "o4-mini": {"input_cost_per_token": 1.1e-06, "output_cost_per_token": 4.4e-06,
                    "input_cost_per_token_flex": 5.5e-07, "output_cost_per_token_flex": 2.2e-06},
        "dall-e-3": {"output_cost_per_image": 0.04}
    }"#;

    #[test]
    fn prices_parse_at_pico_precision() {
        let p = Pricing::from_json(PRICES).expect("valid");
        assert_eq!(p.len(), 3, "entries without token prices are skipped");
        let u = Usage {
            prompt_tokens: 1,
            ..Usage::default()
        };
        // 2e-8 USD: the original's micro-dollars would make this 0.
        assert_eq!(p.cost("text-embedding-3-small", &u, None), 20_000);
        assert_eq!(p.cost("openai/gpt-4o", &u, None), 2_500_000);
        assert_eq!(p.cost("unknown", &u, None), 0);
    }

    #[test]
    fn cached_tokens_and_service_tiers_use_their_prices() {
        let p = Pricing::from_json(PRICES).expect("valid");
        let u = Usage {
            prompt_tokens: 100,
            completion_tokens: 10,
            total_tokens: 110,
            cached_tokens: 40,
            cache_creation_tokens: 0,
        };
        assert_eq!(
            p.cost("gpt-4o", &u, None),
            60 * 2_500_000 + 40 * 1_250_000 + 10 * 10_000_000
        );
        assert_eq!(
            p.cost("o4-mini", &u, Some("flex")),
            100 * 550_000 + 10 * 2_200_000
        );
        assert_eq!(pico_to_usd_string(1_500_000_000_001), "1.500000000001");
    }

    #[test]
    fn bad_files_are_refused() {
        assert!(Pricing::from_json("[]").is_err());
        assert!(Pricing::from_json("{").is_err());
    }
}
