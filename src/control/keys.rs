//! Virtual key records: the one shape a key has in config, in the admin API and in every store.
//!
//! A record holds the token only as `sha256:<hex>`; the clear token exists once, in the answer
//! to the call that created it. Parsing is shared by the config loader and the admin API, so a
//! field is accepted (or refused, with the same message naming it) whichever way a key arrives.

use crate::civil::{civil_from_days, days_from_civil};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Requests and tokens per minute; `None` means no limit, 0 blocks every request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none()
    }
}

/// When a budget starts over. The original only has lifetime budgets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    #[default]
    Lifetime,
    Daily,
    Monthly,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Lifetime => "lifetime",
            Period::Daily => "daily",
            Period::Monthly => "monthly",
        }
    }

    /// The index of the period containing `unix_secs` (UTC): 0 for lifetime, the day number,
    /// or `year * 12 + month0`.
    pub fn index_at(self, unix_secs: u64) -> u64 {
        match self {
            Period::Lifetime => 0,
            Period::Daily => unix_secs / 86_400,
            Period::Monthly => {
                let (y, m, _) = civil_from_days((unix_secs / 86_400) as i64);
                (y as u64) * 12 + (m as u64 - 1)
            }
        }
    }

    /// Unix seconds at which period `index` ends (`None` for lifetime).
    pub fn end_of(self, index: u64) -> Option<u64> {
        match self {
            Period::Lifetime => None,
            Period::Daily => Some((index + 1) * 86_400),
            Period::Monthly => {
                let next = index + 1;
                let (y, m) = ((next / 12) as i64, (next % 12) as u32 + 1);
                Some(days_from_civil(y, m, 1) as u64 * 86_400)
            }
        }
    }
}

/// A token and/or USD budget (1 USD = 1e6 micros).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_usd_micros: Option<u64>,
    #[serde(default, skip_serializing_if = "is_lifetime")]
    pub period: Period,
}

fn is_lifetime(p: &Period) -> bool {
    *p == Period::Lifetime
}

impl Budget {
    pub fn is_empty(&self) -> bool {
        self.total_tokens.is_none() && self.total_usd_micros.is_none()
    }
}

/// Limits and budget of one scope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    pub limits: Limits,
    pub budget: Budget,
}

/// A virtual key as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    /// `sha256:<64 hex>`.
    pub token_hash: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Pin to one backend (by name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub limits: Limits,
    #[serde(default, skip_serializing_if = "Budget::is_empty")]
    pub budget: Budget,
    /// Limits and budgets shared by every key of the same tenant, project or user.
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub tenant_limits: Limits,
    #[serde(default, skip_serializing_if = "Budget::is_empty")]
    pub tenant_budget: Budget,
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub project_limits: Limits,
    #[serde(default, skip_serializing_if = "Budget::is_empty")]
    pub project_budget: Budget,
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub user_limits: Limits,
    #[serde(default, skip_serializing_if = "Budget::is_empty")]
    pub user_budget: Budget,
    /// Sections kept as written for the parts that read them (guardrails, cache, models,
    /// metadata, key_alias, ...).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
    /// Where the key came from: `config` or `admin`.
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub created_at: u64,
    #[serde(default)]
    pub updated_at: u64,
}

fn yes() -> bool {
    true
}

/// A field that cannot be accepted: the path (e.g. `limits.rpm`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Fields a key object may have; others are refused by the admin API (a typo must not
/// silently drop a limit).
pub const KEY_FIELDS: &[&str] = &[
    "id",
    "token",
    "enabled",
    "tenant_id",
    "project_id",
    "user_id",
    "route",
    "limits",
    "budget",
    "tenant_limits",
    "tenant_budget",
    "project_limits",
    "project_budget",
    "user_limits",
    "user_budget",
    "guardrails",
    "cache",
    "passthrough",
    "models",
    "metadata",
    "key_alias",
];

/// Sections kept verbatim in [`KeyRecord::extra`].
const EXTRA_FIELDS: &[&str] = &[
    "guardrails",
    "cache",
    "passthrough",
    "models",
    "metadata",
    "key_alias",
];

/// The digest form of a token: `sha256:<hex>` kept as given (lower-cased), anything else
/// hashed.
pub fn token_hash(token: &str) -> Result<String, String> {
    match token.strip_prefix("sha256:") {
        Some(h) => {
            let mut d = [0u8; 32];
            hex::decode_to_slice(h, &mut d)
                .map_err(|e| format!("invalid sha256 token digest: {e}"))?;
            Ok(format!("sha256:{}", hex::encode(d)))
        }
        None => Ok(format!(
            "sha256:{}",
            hex::encode(crate::auth::digest(token.as_bytes()))
        )),
    }
}

/// The 32-byte digest of a `sha256:<hex>` hash.
pub fn hash_bytes(hash: &str) -> Option<[u8; 32]> {
    let mut d = [0u8; 32];
    hex::decode_to_slice(hash.strip_prefix("sha256:")?, &mut d).ok()?;
    Some(d)
}

/// Check a token a client will send in a header.
pub fn check_token(token: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err("must not be empty".into());
    }
    if token.trim() != token {
        return Err("must not start or end with whitespace".into());
    }
    if token.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// A whole number >= 0.
fn whole(v: &Value, field: &str) -> Result<u64, FieldError> {
    v.as_u64()
        .ok_or_else(|| FieldError::new(field, "must be a whole number >= 0"))
}

/// Parse a `*limits` object.
pub fn parse_limits(v: &Value, field: &str) -> Result<Limits, FieldError> {
    let Value::Object(m) = v else {
        return Err(FieldError::new(field, "must be an object"));
    };
    let mut out = Limits::default();
    for (k, v) in m {
        let f = format!("{field}.{k}");
        match k.as_str() {
            "rpm" => out.rpm = (!v.is_null()).then(|| whole(v, &f)).transpose()?,
            "tpm" => out.tpm = (!v.is_null()).then(|| whole(v, &f)).transpose()?,
            _ => return Err(FieldError::new(f, "unknown field (expected rpm or tpm)")),
        }
    }
    Ok(out)
}

/// Parse a `*budget` object.
pub fn parse_budget(v: &Value, field: &str) -> Result<Budget, FieldError> {
    let Value::Object(m) = v else {
        return Err(FieldError::new(field, "must be an object"));
    };
    let mut out = Budget::default();
    for (k, v) in m {
        let f = format!("{field}.{k}");
        match k.as_str() {
            "total_tokens" => {
                out.total_tokens = (!v.is_null()).then(|| whole(v, &f)).transpose()?
            }
            "total_usd_micros" => {
                out.total_usd_micros = (!v.is_null()).then(|| whole(v, &f)).transpose()?
            }
            "period" | "budget_duration" => {
                out.period = match v.as_str() {
                    Some("lifetime") | None if v.is_null() => Period::Lifetime,
                    Some("lifetime") => Period::Lifetime,
                    Some("daily" | "1d" | "24h") => Period::Daily,
                    Some("monthly" | "1mo" | "30d") => Period::Monthly,
                    _ => {
                        return Err(FieldError::new(
                            f,
                            "must be \"lifetime\", \"daily\" or \"monthly\"",
                        ))
                    }
                }
            }
            _ => {
                return Err(FieldError::new(
                    f,
                    "unknown field (expected total_tokens, total_usd_micros or period)",
                ))
            }
        }
    }
    Ok(out)
}

fn opt_string(m: &Map<String, Value>, k: &str) -> Result<Option<String>, FieldError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(_) => Err(FieldError::new(k, "must be a non-empty string")),
    }
}

/// Compile a key's (or rule's) `guardrails` object; errors name the field
/// (`guardrails.banned_regexes[0]`).
pub fn parse_guardrails(v: &Value) -> Result<crate::guardrails::Guardrails, FieldError> {
    crate::guardrails::Guardrails::from_json(v).map_err(|e| match e.split_once(": ") {
        Some((f, m)) => FieldError::new(format!("guardrails.{f}"), m),
        None => FieldError::new("guardrails", e),
    })
}

/// Check a key's `cache` section: `enabled` (bool), `ttl_seconds`, `max_body_bytes` (whole
/// numbers); `max_entries` is accepted (the cache's size is the flags'), anything else refused.
pub fn check_cache(v: &Value) -> Result<(), FieldError> {
    let Value::Object(m) = v else {
        return Err(FieldError::new("cache", "must be an object"));
    };
    for (k, v) in m {
        let f = format!("cache.{k}");
        match k.as_str() {
            "enabled" if !v.is_boolean() => {
                return Err(FieldError::new(f, "must be true or false"))
            }
            "ttl_seconds" | "max_body_bytes" | "max_entries" if !v.is_u64() => {
                return Err(FieldError::new(f, "must be a whole number >= 0"))
            }
            "enabled" | "ttl_seconds" | "max_body_bytes" | "max_entries" => {}
            _ => {
                return Err(FieldError::new(
                    f,
                    "unknown field (expected enabled, ttl_seconds, max_body_bytes or max_entries)",
                ))
            }
        }
    }
    Ok(())
}

/// What [`parse_key`] built, with the clear token when the object carried one.
pub struct ParsedKey {
    pub record: KeyRecord,
    pub clear_token: Option<String>,
}

/// Build a record from a key object. `token` may be absent only when `allow_no_token` (the
/// admin API then generates one); `strict` refuses unknown fields (the admin API does; the
/// config loader has already warned about them).
pub fn parse_key(
    v: &Value,
    allow_no_token: bool,
    strict: bool,
    now: u64,
) -> Result<ParsedKey, FieldError> {
    let Value::Object(m) = v else {
        return Err(FieldError::new("body", "must be a JSON object"));
    };
    if strict {
        if let Some(k) = m.keys().find(|k| !KEY_FIELDS.contains(&k.as_str())) {
            return Err(FieldError::new(k.as_str(), "unknown field"));
        }
    }
    let id = match m.get("id") {
        Some(Value::String(s)) if !s.is_empty() && !s.chars().any(char::is_control) => s.clone(),
        None if allow_no_token => String::new(),
        _ => return Err(FieldError::new("id", "must be a non-empty string")),
    };
    let (clear_token, token_hash) = match m.get("token") {
        Some(Value::String(t)) => {
            if !t.starts_with("sha256:") {
                check_token(t).map_err(|e| FieldError::new("token", e))?;
            }
            let h = self::token_hash(t).map_err(|e| FieldError::new("token", e))?;
            let clear = (!t.starts_with("sha256:")).then(|| t.clone());
            (clear, h)
        }
        None if allow_no_token => (None, String::new()),
        _ => return Err(FieldError::new("token", "must be a non-empty string")),
    };
    let enabled = match m.get("enabled") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(FieldError::new("enabled", "must be true or false")),
    };
    let limits = |k: &str| {
        m.get(k)
            .map_or(Ok(Limits::default()), |v| parse_limits(v, k))
    };
    let budget = |k: &str| {
        m.get(k)
            .map_or(Ok(Budget::default()), |v| parse_budget(v, k))
    };
    if let Some(g) = m.get("guardrails") {
        parse_guardrails(g)?;
    }
    if let Some(c) = m.get("cache") {
        check_cache(c)?;
    }
    let mut extra = Map::new();
    for k in EXTRA_FIELDS {
        if let Some(v) = m.get(*k) {
            extra.insert((*k).to_string(), v.clone());
        }
    }
    Ok(ParsedKey {
        record: KeyRecord {
            id,
            token_hash,
            enabled,
            tenant_id: opt_string(m, "tenant_id")?,
            project_id: opt_string(m, "project_id")?,
            user_id: opt_string(m, "user_id")?,
            route: opt_string(m, "route")?,
            limits: limits("limits")?,
            budget: budget("budget")?,
            tenant_limits: limits("tenant_limits")?,
            tenant_budget: budget("tenant_budget")?,
            project_limits: limits("project_limits")?,
            project_budget: budget("project_budget")?,
            user_limits: limits("user_limits")?,
            user_budget: budget("user_budget")?,
            extra,
            source: String::new(),
            created_at: now,
            updated_at: now,
        },
        clear_token,
    })
}

impl KeyRecord {
    /// The record as the admin API shows it: the token is never returned.
    pub fn to_public_json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.remove("token_hash");
            m.insert("token".into(), Value::String("redacted".into()));
            if let Some(Value::Object(extra)) = m.remove("extra") {
                for (k, x) in extra {
                    m.entry(k).or_insert(x);
                }
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn periods_index_and_end_in_utc() {
        // 2026-11-27T12:00:00Z
        let t = 1_795_780_800;
        assert_eq!(Period::Lifetime.index_at(t), 0);
        let d = Period::Daily.index_at(t);
        assert_eq!(Period::Daily.end_of(d), Some((t / 86_400 + 1) * 86_400));
        let m = Period::Monthly.index_at(t);
        assert_eq!(m, 2026 * 12 + 10);
        // 2026-12-01T00:00:00Z
        assert_eq!(Period::Monthly.end_of(m), Some(1_796_083_200));
    }

    #[test]
    fn keys_parse_with_fields_named_in_errors() {
        let p = parse_key(
            &json!({"id": "a", "token": "sk-1", "limits": {"rpm": 5, "tpm": 100},
                    "budget": {"total_tokens": 10, "period": "daily"},
                    "tenant_id": "t", "tenant_budget": {"total_usd_micros": 7},
                    "guardrails": {"deny_models": ["x"]}}),
            false,
            true,
            9,
        )
        .expect("valid");
        assert_eq!(p.clear_token.as_deref(), Some("sk-1"));
        assert_eq!(p.record.limits.tpm, Some(100));
        assert_eq!(p.record.budget.period, Period::Daily);
        assert_eq!(p.record.tenant_budget.total_usd_micros, Some(7));
        assert!(p.record.token_hash.starts_with("sha256:"));
        assert!(p.record.extra.contains_key("guardrails"));

        let err = |v: Value| parse_key(&v, false, true, 0).err().map(|e| e.field);
        assert_eq!(
            err(json!({"id": "a", "token": "t", "limits": {"rpm": -1}})).as_deref(),
            Some("limits.rpm")
        );
        assert_eq!(
            err(json!({"id": "a", "token": "t", "budget": {"total_usd": 1}})).as_deref(),
            Some("budget.total_usd")
        );
        assert_eq!(
            err(json!({"id": "a", "token": "t", "lmits": {}})).as_deref(),
            Some("lmits")
        );
        assert_eq!(err(json!({"id": "", "token": "t"})).as_deref(), Some("id"));
        assert_eq!(
            err(json!({"id": "a", "token": " t"})).as_deref(),
            Some("token")
        );
        assert_eq!(
            err(json!({"id": "a", "token": "t", "enabled": 1})).as_deref(),
            Some("enabled")
        );
        assert_eq!(err(json!([1])).as_deref(), Some("body"));
    }

    #[test]
    fn public_json_never_shows_the_token() {
        let p = parse_key(&json!({"id": "a", "token": "sk-secret"}), false, true, 0).expect("ok");
        let s = p.record.to_public_json().to_string();
        assert!(!s.contains("sk-secret"));
        assert!(!s.contains(&p.record.token_hash));
        assert!(s.contains("\"token\":\"redacted\""));
    }
}
