//! The gateway config file (`gateway.json`, or `.yaml`/`.yml` with the `gateway-config-yaml`
//! feature): read it, interpolate `${ENV}` references and validate it into a [`Config`].
//!
//! Two stages, as in ripgrep's low/high args: the text is first parsed into a loose `Raw`
//! tree that keeps key order and never fails on shape, then `validate` walks that tree field by
//! field. Every error names the exact field path (`router.rules[2].backends[0].backend`) so a bad
//! config stops the gateway at startup with a message that points at the line to fix. Anything
//! accepted but not acted on (unknown fields, features not implemented yet, settings with no
//! effect) becomes a warning in [`Config::warnings`] instead of being dropped silently.
//!
//! Environment variables reach the config only through [`env::interpolate`], and only in the
//! fields that may hold secrets or endpoints: backend `base_url`, `headers` and `query_params`
//! values, every string inside `provider_config`, and `virtual_keys[].token`.

pub mod env;
mod validate;

use std::fmt;
use std::path::Path;
use std::time::Duration;

/// The validated gateway config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Upstreams, in file order, then any added by `--upstream`. Names are unique.
    pub backends: Vec<BackendConfig>,
    /// Virtual keys; empty means clients are not authenticated by the gateway (seed Mode A/B).
    pub virtual_keys: Vec<VirtualKeyConfig>,
    /// Model-to-backend routing.
    pub router: RouterConfig,
    /// Startup warnings: fields accepted but not implemented yet, unknown fields ignored, etc.
    /// Each names the field path.
    pub warnings: Vec<String>,
}

/// One upstream.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// Unique, non-empty name used by the router, `route` and the `x-ditto-backend` header.
    pub name: String,
    /// Passthrough root, usually ending in `/v1`: `http(s)://host[:port][/path]`, no query or
    /// fragment. Required unless `provider` is set and not openai-compatible.
    pub base_url: Option<String>,
    /// Per-backend cap on requests in flight (at least 1).
    pub max_in_flight: Option<usize>,
    /// Whole-request timeout in seconds (> 0).
    pub timeout_seconds: Option<f64>,
    /// Our extension: TCP (and TLS) connect timeout in seconds (> 0).
    pub connect_timeout_seconds: Option<f64>,
    /// Our extension: how long an idle pooled connection is kept, in seconds (>= 0).
    pub idle_ttl_seconds: Option<f64>,
    /// Headers injected into every request; names lower-cased, file order kept, values
    /// interpolated.
    pub headers: Vec<(String, String)>,
    /// Query parameters appended to every request, file order kept, values interpolated.
    pub query_params: Vec<(String, String)>,
    /// Rewrites of the JSON `model` field (exact match first, then `"*"`), file order kept.
    pub model_map: Vec<(String, String)>,
    /// Translation provider (`anthropic`, `google`/`gemini`, `openai-compatible`...).
    pub provider: Option<String>,
    /// Provider settings, every string inside interpolated.
    pub provider_config: Option<serde_json::Value>,
}

impl BackendConfig {
    /// A passthrough backend with no options set, as `--upstream name=url` creates.
    pub fn passthrough(name: impl Into<String>, base_url: impl Into<String>) -> Self {
        BackendConfig {
            name: name.into(),
            base_url: Some(base_url.into()),
            max_in_flight: None,
            timeout_seconds: None,
            connect_timeout_seconds: None,
            idle_ttl_seconds: None,
            headers: Vec::new(),
            query_params: Vec::new(),
            model_map: Vec::new(),
            provider: None,
            provider_config: None,
        }
    }

    /// `timeout_seconds` as a duration. Validation bounds the value, so this cannot panic.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_seconds.map(Duration::from_secs_f64)
    }

    /// `connect_timeout_seconds` as a duration.
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.connect_timeout_seconds.map(Duration::from_secs_f64)
    }

    /// `idle_ttl_seconds` as a duration.
    pub fn idle_ttl(&self) -> Option<Duration> {
        self.idle_ttl_seconds.map(Duration::from_secs_f64)
    }
}

/// One virtual key.
#[derive(Debug, Clone)]
pub struct VirtualKeyConfig {
    /// Unique, non-empty id.
    pub id: String,
    /// The bearer token clients send; unique, non-empty, interpolated.
    pub token: String,
    /// Disabled keys are refused with 401 (default true).
    pub enabled: bool,
    /// Tenant scope for shared limits and budgets.
    pub tenant_id: Option<String>,
    /// Project scope for shared limits and budgets.
    pub project_id: Option<String>,
    /// User scope for shared limits and budgets.
    pub user_id: Option<String>,
    /// Pin the key to one backend (must exist).
    pub route: Option<String>,
    /// The whole object as written (with `token` replaced by its interpolated value), for the
    /// parts implemented later: limits, budgets, cache, guardrails.
    pub raw: serde_json::Value,
}

/// Model-to-backend routing.
#[derive(Debug, Clone, Default)]
pub struct RouterConfig {
    /// Used when no rule matches. The legacy `default_backend: "x"` becomes `[{x, 1.0}]`.
    pub default_backends: Vec<WeightedBackend>,
    /// Rules in file order (the router tries exact rules first, then prefix rules).
    pub rules: Vec<RouteRule>,
    /// `strategy`: `weighted` (default), `least_in_flight` or `latency`.
    pub strategy: Option<String>,
    /// `latency_half_life_secs` of the latency estimate (default 10).
    pub latency_half_life_secs: Option<f64>,
}

/// A backend reference with a weight for the deterministic weighted choice.
#[derive(Debug, Clone)]
pub struct WeightedBackend {
    /// Name of an existing backend.
    pub backend: String,
    /// Finite; weights <= 0 are kept here (with a warning) and dropped by the router.
    pub weight: f64,
}

/// One routing rule.
#[derive(Debug, Clone)]
pub struct RouteRule {
    /// Non-empty model name or prefix (a trailing `*` is ignored by the router).
    pub model_prefix: String,
    /// Match the whole model name instead of a prefix.
    pub exact: bool,
    /// Candidates; `backend: "x"` becomes `[{x, 1.0}]`. Never empty.
    pub backends: Vec<WeightedBackend>,
    /// Guardrails that replace the key's for requests matching this rule.
    pub guardrails: Option<serde_json::Value>,
}

/// A config that cannot be used, naming the file and the field.
///
/// Displays as `<file>: <field path>: <message>`, leaving out the parts that are empty, e.g.
/// `gateway.json: router.rules[2].backends[0].backend: unknown backend "x"`.
#[derive(Debug)]
pub struct ConfigError {
    file: Option<String>,
    path: String,
    message: String,
}

impl ConfigError {
    /// An error about the field at `path` (empty for the whole document).
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: None,
            path: path.into(),
            message: message.into(),
        }
    }

    /// The config file, when the error came from [`Config::load`].
    pub fn file(&self) -> Option<&str> {
        self.file.as_deref()
    }

    /// The field path, e.g. `backends[0].base_url`; empty for whole-file errors.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Attach the file name, except to errors about `--upstream` flags, which are not in it.
    fn in_file(mut self, file: &Path) -> Self {
        if self.file.is_none() && !self.path.starts_with("--") {
            self.file = Some(file.display().to_string());
        }
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The warning shown when the config has no backend at all; [`Config::add_upstream`] removes
/// it again.
const NO_BACKENDS_WARNING: &str =
    "backends: no backends configured: every /v1 request fails until one is added (e.g. with --upstream name=url)";

impl Config {
    /// Read, interpolate and validate. `lookup` resolves env vars (the caller merges --dotenv
    /// and process env).
    pub fn load(
        path: &Path,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Self::load_with_upstreams(path, lookup, &[])
    }

    /// Like [`Config::load`], with the `--upstream name=url` backends added before backend
    /// references are checked, so `router` and `route` may name them.
    pub fn load_with_upstreams(
        path: &Path,
        lookup: &dyn Fn(&str) -> Option<String>,
        upstreams: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let format = format_of(path).map_err(|e| e.in_file(path))?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new("", format!("cannot read: {e}")).in_file(path))?;
        Self::parse(&text, format, lookup, upstreams).map_err(|e| e.in_file(path))
    }

    /// Same from text; `format` is "json" or "yaml" ("yml" is accepted too).
    pub fn from_str(
        text: &str,
        format: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Self::parse(text, format, lookup, &[])
    }

    fn parse(
        text: &str,
        format: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
        upstreams: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let raw = match format {
            "json" => Raw::from_json(text)?,
            "yaml" | "yml" => Raw::from_yaml(text)?,
            other => {
                return Err(ConfigError::new(
                    "",
                    format!("unknown config format {other:?} (expected \"json\" or \"yaml\")"),
                ))
            }
        };
        validate::build(&raw, lookup, upstreams)
    }

    /// Add a passthrough backend from `--upstream name=url` (validates url, unique name).
    pub fn add_upstream(&mut self, name: &str, base_url: &str) -> Result<(), ConfigError> {
        let backend = validate::upstream_backend(name, base_url, &self.backends)?;
        self.backends.push(backend);
        self.warnings.retain(|w| w != NO_BACKENDS_WARNING);
        Ok(())
    }

    /// Check that every backend reference (`router.default_backends`, `router.rules`,
    /// `virtual_keys[].route`) names an existing backend, e.g. after an admin change.
    pub fn check_references(&self) -> Result<(), ConfigError> {
        let exists = |name: &str| self.backends.iter().any(|b| b.name == name);
        let unknown =
            |path: String, name: &str| ConfigError::new(path, format!("unknown backend {name:?}"));
        for (i, wb) in self.router.default_backends.iter().enumerate() {
            if !exists(&wb.backend) {
                return Err(unknown(
                    format!("router.default_backends[{i}].backend"),
                    &wb.backend,
                ));
            }
        }
        for (i, rule) in self.router.rules.iter().enumerate() {
            for (j, wb) in rule.backends.iter().enumerate() {
                if !exists(&wb.backend) {
                    return Err(unknown(
                        format!("router.rules[{i}].backends[{j}].backend"),
                        &wb.backend,
                    ));
                }
            }
        }
        for (i, key) in self.virtual_keys.iter().enumerate() {
            if let Some(route) = &key.route {
                if !exists(route) {
                    return Err(unknown(format!("virtual_keys[{i}].route"), route));
                }
            }
        }
        Ok(())
    }

    /// Validate a router object (`PUT /admin/config/router`) exactly as the config file's
    /// `router` section is validated, against `backends`. Returns the router and warnings.
    pub fn parse_router(
        router: &serde_json::Value,
        backends: &[BackendConfig],
    ) -> Result<(RouterConfig, Vec<String>), ConfigError> {
        let text =
            serde_json::to_string(router).map_err(|e| ConfigError::new("router", e.to_string()))?;
        let raw = Raw::from_json(&text)?;
        validate::router_only(&raw, backends)
    }

    /// The backend called `name`.
    pub fn backend(&self, name: &str) -> Option<&BackendConfig> {
        self.backends.iter().find(|b| b.name == name)
    }
}

/// The format a config file's extension names.
fn format_of(path: &Path) -> Result<&'static str, ConfigError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("json") => Ok("json"),
        Some("yaml") | Some("yml") => Ok("yaml"),
        _ => Err(ConfigError::new(
            "",
            "unsupported config file extension (expected .json, .yaml or .yml)",
        )),
    }
}

/// A parsed but unvalidated document: JSON's data model with object keys in file order and
/// duplicates kept (the walker warns about them), and numbers as written so that YAML's
/// `.inf`/`.nan` reach the field check that names them.
#[derive(Debug, Clone, PartialEq)]
enum Raw {
    Null,
    Bool(bool),
    Num(Num),
    Str(String),
    Seq(Vec<Raw>),
    Map(Vec<(String, Raw)>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    U(u64),
    I(i64),
    F(f64),
}

impl Num {
    fn as_f64(self) -> f64 {
        match self {
            Num::U(u) => u as f64,
            Num::I(i) => i as f64,
            Num::F(f) => f,
        }
    }
}

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Num::U(u) => write!(f, "{u}"),
            Num::I(i) => write!(f, "{i}"),
            Num::F(x) => write!(f, "{x}"),
        }
    }
}

impl Raw {
    fn from_json(text: &str) -> Result<Raw, ConfigError> {
        serde_json::from_str::<Raw>(text).map_err(|e| {
            // The usual way to get here with a valid-looking file is YAML in a `.json` file.
            let first = text.trim_start().chars().next();
            let hint = if first.is_some_and(|c| c != '{' && c != '[') {
                " (this does not look like JSON; YAML configs need a .yaml or .yml file name)"
            } else {
                ""
            };
            ConfigError::new("", format!("invalid JSON: {e}{hint}"))
        })
    }

    #[cfg(feature = "gateway-config-yaml")]
    fn from_yaml(text: &str) -> Result<Raw, ConfigError> {
        let mut value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)
            .map_err(|e| ConfigError::new("", format!("invalid YAML: {e}")))?;
        // `<<: *anchor` merge keys are the usual way to share blocks between YAML backends.
        value
            .apply_merge()
            .map_err(|e| ConfigError::new("", format!("invalid YAML merge key: {e}")))?;
        Raw::from_yaml_value(value, "")
    }

    #[cfg(not(feature = "gateway-config-yaml"))]
    fn from_yaml(_text: &str) -> Result<Raw, ConfigError> {
        Err(ConfigError::new(
            "",
            "YAML configs need the cargo feature `gateway-config-yaml` \
             (rebuild with `--features gateway-config-yaml`), or use a .json config",
        ))
    }

    #[cfg(feature = "gateway-config-yaml")]
    fn from_yaml_value(value: serde_yaml_ng::Value, path: &str) -> Result<Raw, ConfigError> {
        use serde_yaml_ng::Value as Y;
        Ok(match value {
            Y::Null => Raw::Null,
            Y::Bool(b) => Raw::Bool(b),
            Y::Number(n) => Raw::Num(if let Some(u) = n.as_u64() {
                Num::U(u)
            } else if let Some(i) = n.as_i64() {
                Num::I(i)
            } else {
                Num::F(n.as_f64().unwrap_or(f64::NAN))
            }),
            Y::String(s) => Raw::Str(s),
            Y::Sequence(items) => Raw::Seq(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| Raw::from_yaml_value(v, &format!("{path}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            Y::Mapping(map) => {
                let mut entries = Vec::with_capacity(map.len());
                for (k, v) in map {
                    // JSON keys are strings; YAML scalars such as `200:` or `true:` are taken
                    // as the text JSON would need to write them.
                    let key = match k {
                        Y::String(s) => s,
                        Y::Number(n) => n.to_string(),
                        Y::Bool(b) => b.to_string(),
                        _ => {
                            return Err(ConfigError::new(path, "YAML mapping keys must be strings"))
                        }
                    };
                    let child = validate::child_path(path, &key);
                    entries.push((key, Raw::from_yaml_value(v, &child)?));
                }
                Raw::Map(entries)
            }
            Y::Tagged(t) => {
                return Err(ConfigError::new(
                    path,
                    format!("YAML tags are not supported (found {})", t.tag),
                ))
            }
        })
    }
}

impl<'de> serde::Deserialize<'de> for Raw {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Raw, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> serde::de::Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Num(if v >= 0 { Num::U(v as u64) } else { Num::I(v) }))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw::Num(Num::U(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Num(Num::F(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }

    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }

    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        serde::Deserialize::deserialize(d)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Raw>()? {
            items.push(item);
        }
        Ok(Raw::Seq(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Raw>()? {
            entries.push((k, v));
        }
        Ok(Raw::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "OPENAI_API_KEY" => Some("sk-test".to_string()),
            _ => None,
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const MODE_A: &str = r#"{
  "backends": [
    {
      "name": "primary",
      "base_url": "https://api.openai.com/v1",
      "max_in_flight": 64,
      "timeout_seconds": 60,
      "headers": { "authorization": "Bearer ${OPENAI_API_KEY}" },
      "query_params": {}
    }
  ],
  "virtual_keys": [],
  "router": { "default_backends": [{ "backend": "primary", "weight": 1.0 }], "rules": [] }
}"#;

    const MODE_B: &str = r#"{
  "backends": [
    {
      "name": "primary",
      "base_url": "https://api.openai.com/v1",
      "max_in_flight": 64,
      "timeout_seconds": 60,
      "headers": {},
      "query_params": {}
    }
  ],
  "virtual_keys": [],
  "router": { "default_backends": [{ "backend": "primary", "weight": 1.0 }], "rules": [] }
}"#;

    /// A scratch directory for file tests, removed on drop.
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "ditto-config-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn seed_mode_a_loads_verbatim() {
        let cfg = Config::from_str(MODE_A, "json", &lookup).unwrap();
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
        assert_eq!(cfg.backends.len(), 1);
        let b = &cfg.backends[0];
        assert_eq!(b.name, "primary");
        assert_eq!(b.base_url.as_deref(), Some("https://api.openai.com/v1"));
        assert_eq!(b.max_in_flight, Some(64));
        assert_eq!(b.timeout_seconds, Some(60.0));
        assert_eq!(b.timeout(), Some(Duration::from_secs(60)));
        assert_eq!(b.connect_timeout_seconds, None);
        assert_eq!(b.idle_ttl_seconds, None);
        assert_eq!(
            b.headers,
            vec![("authorization".to_string(), "Bearer sk-test".to_string())]
        );
        assert!(b.query_params.is_empty());
        assert!(b.model_map.is_empty());
        assert!(b.provider.is_none() && b.provider_config.is_none());
        assert!(cfg.virtual_keys.is_empty());
        assert_eq!(cfg.router.default_backends.len(), 1);
        assert_eq!(cfg.router.default_backends[0].backend, "primary");
        assert_eq!(cfg.router.default_backends[0].weight, 1.0);
        assert!(cfg.router.rules.is_empty());
    }

    #[test]
    fn seed_mode_a_without_the_key_fails_naming_variable_and_field() {
        let err = Config::from_str(MODE_A, "json", &no_env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "backends[0].headers.authorization: environment variable OPENAI_API_KEY is not set"
        );
        let empty = |_: &str| Some(String::new());
        let err = Config::from_str(MODE_A, "json", &empty).unwrap_err();
        assert!(err.to_string().contains("OPENAI_API_KEY is empty"), "{err}");
    }

    #[test]
    fn seed_mode_b_loads_verbatim_without_any_env() {
        let cfg = Config::from_str(MODE_B, "json", &no_env).unwrap();
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
        assert!(cfg.backends[0].headers.is_empty());
        assert_eq!(cfg.router.default_backends[0].backend, "primary");
    }

    #[test]
    fn load_reads_json_and_prefixes_errors_with_the_file() {
        let dir = TempDir::new("json");
        let path = dir.write("gateway.json", MODE_A);
        let cfg = Config::load(&path, &lookup).unwrap();
        assert_eq!(cfg.backends[0].name, "primary");

        let bad = MODE_B.replace(
            r#""backend": "primary", "weight""#,
            r#""backend": "nope", "weight""#,
        );
        let path = dir.write("bad.JSON", &bad);
        let err = Config::load(&path, &no_env).unwrap_err();
        assert_eq!(err.file(), Some(path.display().to_string().as_str()));
        assert_eq!(err.path(), "router.default_backends[0].backend");
        assert_eq!(err.message(), "unknown backend \"nope\"");
        assert_eq!(
            err.to_string(),
            format!(
                "{}: router.default_backends[0].backend: unknown backend \"nope\"",
                path.display()
            )
        );
    }

    #[test]
    fn load_rejects_unknown_extensions_and_missing_files() {
        let dir = TempDir::new("ext");
        for name in ["gateway.toml", "gateway", "gateway.json.bak"] {
            let path = dir.write(name, MODE_B);
            let err = Config::load(&path, &no_env).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "{}: unsupported config file extension (expected .json, .yaml or .yml)",
                    path.display()
                )
            );
        }
        let missing = dir.0.join("missing.json");
        let err = Config::load(&missing, &no_env).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("{}: cannot read: ", missing.display())),
            "{err}"
        );
    }

    #[test]
    fn yaml_content_in_a_json_file_is_an_error() {
        let dir = TempDir::new("yamljson");
        let path = dir.write(
            "gateway.json",
            "backends: []\nvirtual_keys: []\nrouter: {}\n",
        );
        let err = Config::load(&path, &no_env).unwrap_err().to_string();
        assert!(err.contains("invalid JSON"), "{err}");
        assert!(
            err.contains("YAML configs need a .yaml or .yml file name"),
            "{err}"
        );
    }

    #[test]
    fn invalid_json_reports_line_and_column() {
        let err = Config::from_str("{\n  \"backends\": [,]\n}", "json", &no_env).unwrap_err();
        assert_eq!(err.path(), "");
        assert!(err.message().starts_with("invalid JSON: "), "{err}");
        assert!(err.message().contains("line 2"), "{err}");
        assert!(!err.message().contains("does not look like JSON"), "{err}");
        let err = Config::from_str("", "json", &no_env).unwrap_err();
        assert!(err.message().starts_with("invalid JSON: "), "{err}");
    }

    #[test]
    fn unknown_format_is_an_error() {
        let err = Config::from_str("{}", "toml", &no_env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown config format \"toml\" (expected \"json\" or \"yaml\")"
        );
    }

    #[test]
    fn json_numbers_keep_their_kind() {
        let raw = Raw::from_json(r#"[1, -2, 1.5, 18446744073709551615, 1e400]"#);
        // 1e400 does not fit an f64; serde_json refuses it rather than making infinity.
        assert!(raw.is_err());
        let raw = Raw::from_json(r#"[1, -2, 1.5, 18446744073709551615]"#).unwrap();
        assert_eq!(
            raw,
            Raw::Seq(vec![
                Raw::Num(Num::U(1)),
                Raw::Num(Num::I(-2)),
                Raw::Num(Num::F(1.5)),
                Raw::Num(Num::U(u64::MAX)),
            ])
        );
    }

    #[test]
    fn json_object_order_and_duplicates_are_kept_for_the_walker() {
        let raw = Raw::from_json(r#"{"b": 1, "a": null, "b": "x"}"#).unwrap();
        assert_eq!(
            raw,
            Raw::Map(vec![
                ("b".to_string(), Raw::Num(Num::U(1))),
                ("a".to_string(), Raw::Null),
                ("b".to_string(), Raw::Str("x".to_string())),
            ])
        );
    }

    #[test]
    fn add_upstream_adds_a_passthrough_backend() {
        let mut cfg =
            Config::from_str(r#"{"virtual_keys": [], "router": {}}"#, "json", &no_env).unwrap();
        assert!(cfg.warnings.iter().any(|w| w == NO_BACKENDS_WARNING));
        cfg.add_upstream("local", "HTTP://127.0.0.1:9000/v1")
            .unwrap();
        let b = cfg.backend("local").unwrap();
        assert_eq!(b.base_url.as_deref(), Some("http://127.0.0.1:9000/v1"));
        assert!(b.headers.is_empty() && b.max_in_flight.is_none());
        assert!(!cfg.warnings.iter().any(|w| w == NO_BACKENDS_WARNING));
    }

    #[test]
    fn add_upstream_rejects_duplicates_and_bad_urls() {
        let mut cfg = Config::from_str(MODE_B, "json", &no_env).unwrap();
        let err = cfg.add_upstream("primary", "http://x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "--upstream primary: backend name \"primary\" is already used by backends[0]"
        );
        let err = cfg.add_upstream("other", "ftp://x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "--upstream other: base URL must start with http:// or https://"
        );
        let err = cfg.add_upstream("", "http://x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "--upstream: backend name must not be empty"
        );
        cfg.add_upstream("other", "https://example.com").unwrap();
        let err = cfg
            .add_upstream("other", "https://example.com")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "--upstream other: backend name \"other\" is already used by backends[1]"
        );
        assert_eq!(cfg.backends.len(), 2);
    }

    #[test]
    fn load_with_upstreams_lets_the_router_name_them() {
        let dir = TempDir::new("upstreams");
        let text = r#"{"virtual_keys": [{"id": "k", "token": "t", "route": "local"}],
                       "router": {"default_backend": "local"}}"#;
        let path = dir.write("gateway.json", text);
        let err = Config::load(&path, &no_env).unwrap_err();
        assert_eq!(err.path(), "router.default_backend");
        let ups = vec![("local".to_string(), "http://127.0.0.1:1/v1".to_string())];
        let cfg = Config::load_with_upstreams(&path, &no_env, &ups).unwrap();
        assert_eq!(cfg.backends.len(), 1);
        assert_eq!(cfg.router.default_backends[0].backend, "local");
        assert_eq!(cfg.virtual_keys[0].route.as_deref(), Some("local"));
        assert!(!cfg.warnings.iter().any(|w| w == NO_BACKENDS_WARNING));

        // An upstream error is about the flag, not the file.
        let bad = vec![("local".to_string(), "nope".to_string())];
        let err = Config::load_with_upstreams(&path, &no_env, &bad).unwrap_err();
        assert_eq!(err.file(), None);
        assert_eq!(
            err.to_string(),
            "--upstream local: base URL must start with http:// or https://"
        );
    }

    #[test]
    fn check_references_after_changes() {
        let mut cfg = Config::from_str(MODE_B, "json", &no_env).unwrap();
        cfg.check_references().unwrap();
        cfg.router.rules.push(RouteRule {
            model_prefix: "gpt-".to_string(),
            exact: false,
            backends: vec![WeightedBackend {
                backend: "gone".to_string(),
                weight: 1.0,
            }],
            guardrails: None,
        });
        assert_eq!(
            cfg.check_references().unwrap_err().to_string(),
            "router.rules[0].backends[0].backend: unknown backend \"gone\""
        );
        cfg.router.rules.clear();
        cfg.backends.clear();
        assert_eq!(
            cfg.check_references().unwrap_err().to_string(),
            "router.default_backends[0].backend: unknown backend \"primary\""
        );
    }

    #[test]
    fn config_error_display_leaves_out_empty_parts() {
        assert_eq!(ConfigError::new("", "boom").to_string(), "boom");
        assert_eq!(ConfigError::new("a.b", "boom").to_string(), "a.b: boom");
        let e = ConfigError::new("a.b", "boom").in_file(Path::new("g.json"));
        assert_eq!(e.to_string(), "g.json: a.b: boom");
        let e: Box<dyn std::error::Error> = Box::new(e);
        assert_eq!(e.to_string(), "g.json: a.b: boom");
    }

    #[cfg(feature = "gateway-config-yaml")]
    mod yaml {
        use super::*;

        const MODE_A_YAML: &str = "\
backends:
  - name: primary
    base_url: https://api.openai.com/v1
    max_in_flight: 64
    timeout_seconds: 60
    headers:
      authorization: Bearer ${OPENAI_API_KEY}
    query_params: {}
virtual_keys: []
router:
  default_backends:
    - backend: primary
      weight: 1.0
  rules: []
";

        fn summary(cfg: &Config) -> String {
            format!("{:?}|{:?}|{:?}", cfg.backends, cfg.router, cfg.virtual_keys)
        }

        #[test]
        fn yaml_and_json_give_the_same_config() {
            let json = Config::from_str(MODE_A, "json", &lookup).unwrap();
            let yaml = Config::from_str(MODE_A_YAML, "yaml", &lookup).unwrap();
            assert_eq!(summary(&json), summary(&yaml));
            assert_eq!(json.warnings, yaml.warnings);
        }

        #[test]
        fn yaml_files_load_by_extension() {
            let dir = TempDir::new("yaml");
            for name in ["gateway.yaml", "gateway.yml", "GATEWAY.YML"] {
                let path = dir.write(name, MODE_A_YAML);
                let cfg = Config::load(&path, &lookup).unwrap();
                assert_eq!(cfg.backends[0].headers[0].1, "Bearer sk-test");
            }
        }

        #[test]
        fn yaml_errors_name_fields_too() {
            let text = MODE_A_YAML.replace("timeout_seconds: 60", "timeout_seconds: .inf");
            let err = Config::from_str(&text, "yaml", &lookup).unwrap_err();
            assert_eq!(
                err.to_string(),
                "backends[0].timeout_seconds: must be a finite number"
            );
            let text = MODE_A_YAML.replace("weight: 1.0", "weight: .nan");
            let err = Config::from_str(&text, "yaml", &lookup).unwrap_err();
            assert_eq!(
                err.to_string(),
                "router.default_backends[0].weight: must be a finite number"
            );
            let err = Config::from_str("backends: [\n", "yaml", &lookup).unwrap_err();
            assert!(err.to_string().starts_with("invalid YAML: "), "{err}");
            let err = Config::from_str("- 1\n", "yaml", &lookup).unwrap_err();
            assert_eq!(
                err.to_string(),
                "the config must be an object at the top level, found an array"
            );
        }

        #[test]
        fn yaml_tags_and_complex_keys_are_refused() {
            let err = Config::from_str("router: !Thing {}\n", "yaml", &no_env).unwrap_err();
            assert_eq!(
                err.to_string(),
                "router: YAML tags are not supported (found !Thing)"
            );
            let err = Config::from_str("router:\n  ? [a]\n  : 1\n", "yaml", &no_env).unwrap_err();
            assert_eq!(err.to_string(), "router: YAML mapping keys must be strings");
        }

        #[test]
        fn yaml_anchors_and_merge_keys_work() {
            let text = "\
defaults: &defaults
  timeout_seconds: 30
  max_in_flight: 8
backends:
  - <<: *defaults
    name: a
    base_url: http://a.local/v1
  - <<: *defaults
    name: b
    base_url: http://b.local/v1
    timeout_seconds: 5
virtual_keys: []
router: {default_backend: a}
";
            let cfg = Config::from_str(text, "yaml", &no_env).unwrap();
            assert_eq!(cfg.backends[0].timeout_seconds, Some(30.0));
            assert_eq!(cfg.backends[1].timeout_seconds, Some(5.0));
            assert_eq!(cfg.backends[1].max_in_flight, Some(8));
            assert_eq!(
                cfg.warnings,
                vec!["defaults: unknown field, ignored".to_string()]
            );
        }

        #[test]
        fn yaml_scalar_keys_become_strings() {
            let text = "\
backends:
  - name: a
    base_url: http://a.local
    model_map: {4: gpt-4, true: yes}
virtual_keys: []
router: {default_backend: a}
";
            let cfg = Config::from_str(text, "yaml", &no_env).unwrap();
            assert_eq!(
                cfg.backends[0].model_map,
                vec![
                    ("4".to_string(), "gpt-4".to_string()),
                    ("true".to_string(), "yes".to_string())
                ]
            );
        }
    }

    #[cfg(not(feature = "gateway-config-yaml"))]
    #[test]
    fn yaml_without_the_feature_says_how_to_get_it() {
        let err = Config::from_str("router: {}", "yaml", &no_env).unwrap_err();
        assert!(err.to_string().contains("gateway-config-yaml"), "{err}");
        let dir = TempDir::new("noyaml");
        let path = dir.write("gateway.yaml", "router: {}");
        let err = Config::load(&path, &no_env).unwrap_err().to_string();
        assert!(err.contains("--features gateway-config-yaml"), "{err}");
    }
}
