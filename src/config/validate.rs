//! Walk a parsed [`Raw`] document into a [`Config`], checking every field and naming its path.
//!
//! Each section is read through an [`Obj`], which remembers the keys that were asked for, so
//! whatever is left over at the end becomes an "unknown field, ignored" warning (with a
//! suggestion when it looks like a misspelling) rather than disappearing. The first error stops
//! the walk: a config is fixed one message at a time, and later errors are often consequences of
//! the first.

use std::fmt;
use std::net::Ipv6Addr;

use super::env::interpolate;
use super::{
    BackendConfig, Config, ConfigError, Num, Raw, RouteRule, RouterConfig, VirtualKeyConfig,
    WeightedBackend, NO_BACKENDS_WARNING,
};

/// Upper bound for every `*_seconds` field: about 31 years. It keeps
/// `Duration::from_secs_f64` (which panics on overflow) safe for every accepted value.
const MAX_SECONDS: f64 = 1e9;

/// The warning text for fields that parse and are kept but have no effect yet.
const NOT_ENFORCED: &str = "accepted, not enforced yet";

/// Spellings of the OpenAI-compatible translation provider. Such a backend still needs an
/// upstream root, in `base_url` or `provider_config.base_url`.
const OPENAI_COMPATIBLE: &[&str] = &["openai", "openai-compatible", "openai_compatible"];

/// Top-level sections of the original that we accept and ignore for now.
const LATER_SECTIONS: &[&str] = &["a2a_agents", "mcp_servers", "observability"];

/// Virtual key objects that are kept in `raw` for the issues that implement them.
const KEY_SECTIONS: &[&str] = &[
    "limits",
    "budget",
    "cache",
    "guardrails",
    "passthrough",
    "tenant_budget",
    "tenant_limits",
    "project_budget",
    "project_limits",
    "user_budget",
    "user_limits",
];

/// Build a [`Config`] from a parsed document. `upstreams` (from `--upstream`) are added after
/// the file's backends and before references are checked.
pub(super) fn build(
    root: &Raw,
    lookup: &dyn Fn(&str) -> Option<String>,
    upstreams: &[(String, String)],
) -> Result<Config, ConfigError> {
    let mut w = Walker {
        lookup,
        warnings: Vec::new(),
    };
    if !matches!(root, Raw::Map(_)) {
        return Err(ConfigError::new(
            "",
            format!(
                "the config must be an object at the top level, found {}",
                kind(root)
            ),
        ));
    }
    let mut top = Obj::new(root, "", &mut w)?;

    let mut backends: Vec<BackendConfig> = Vec::new();
    if let Some(raw) = top.get("backends") {
        for (i, item) in array(raw, "backends")?.iter().enumerate() {
            let path = format!("backends[{i}]");
            let b = backend(item, &path, &mut w)?;
            if let Some(j) = backends.iter().position(|x| x.name == b.name) {
                return Err(ConfigError::new(
                    format!("{path}.name"),
                    format!("duplicate backend name {:?} (also backends[{j}])", b.name),
                ));
            }
            backends.push(b);
        }
    }
    for (name, url) in upstreams {
        let b = upstream_backend(name, url, &backends)?;
        backends.push(b);
    }
    if backends.is_empty() {
        w.warnings.push(NO_BACKENDS_WARNING.to_string());
    }

    let router = match top.get("router") {
        Some(raw) => router(raw, "router", &backends, &mut w)?,
        None => return Err(missing("router", "use {} for no routing rules")),
    };
    let virtual_keys = match top.get("virtual_keys") {
        Some(raw) => virtual_keys(raw, "virtual_keys", &backends, &mut w)?,
        None => return Err(missing("virtual_keys", "use [] for no keys")),
    };
    for section in LATER_SECTIONS {
        if top.get(section).is_some() {
            w.warn(section, "accepted, not implemented yet; ignored");
        }
    }
    top.finish(&mut w);

    Ok(Config {
        backends,
        virtual_keys,
        router,
        warnings: w.warnings,
    })
}

/// A router object alone (the admin API's router change), validated like the file's.
pub(super) fn router_only(
    raw: &Raw,
    backends: &[BackendConfig],
) -> Result<(RouterConfig, Vec<String>), ConfigError> {
    let lookup = |_: &str| None;
    let mut w = Walker {
        lookup: &lookup,
        warnings: Vec::new(),
    };
    let r = router(raw, "router", backends, &mut w)?;
    crate::router::live::RouteTable::build(
        &r,
        &backends.iter().map(|b| b.name.clone()).collect::<Vec<_>>(),
    )
    .map_err(|e| ConfigError::new("", e))?;
    Ok((r, w.warnings))
}

/// The backend `--upstream name=url` adds: a passthrough with no options. Errors are about the
/// flag, with path `--upstream NAME`.
pub(super) fn upstream_backend(
    name: &str,
    url: &str,
    existing: &[BackendConfig],
) -> Result<BackendConfig, ConfigError> {
    let path = if name.is_empty() {
        "--upstream".to_string()
    } else {
        format!("--upstream {name}")
    };
    check_name(name).map_err(|m| ConfigError::new(&path, format!("backend name {m}")))?;
    if let Some(j) = existing.iter().position(|b| b.name == name) {
        return Err(ConfigError::new(
            path,
            format!("backend name {name:?} is already used by backends[{j}]"),
        ));
    }
    let url = check_base_url(url).map_err(|m| ConfigError::new(&path, format!("base URL {m}")))?;
    Ok(BackendConfig::passthrough(name, url))
}

/// `path.key`, or `path["key"]` when the key is not a plain word (so paths stay unambiguous
/// for header names with dots or spaces).
pub(super) fn child_path(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (plain, path.is_empty()) {
        (true, true) => key.to_string(),
        (true, false) => format!("{path}.{key}"),
        (false, _) => format!(
            "{path}[{}]",
            serde_json::to_string(key).unwrap_or_else(|_| format!("{key:?}"))
        ),
    }
}

/// Shared state of one walk.
struct Walker<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    warnings: Vec<String>,
}

impl Walker<'_> {
    /// Record a warning once (a duplicate key can be seen by two readers).
    fn warn(&mut self, path: &str, message: impl fmt::Display) {
        let warning = if path.is_empty() {
            message.to_string()
        } else {
            format!("{path}: {message}")
        };
        if !self.warnings.contains(&warning) {
            self.warnings.push(warning);
        }
    }

    fn interpolate(&self, s: &str, path: &str) -> Result<String, ConfigError> {
        interpolate(s, self.lookup).map_err(|m| ConfigError::new(path, m))
    }
}

/// An object being read: its entries (duplicates resolved, last wins), which were read, and
/// which keys were asked for.
struct Obj<'r> {
    path: String,
    entries: Vec<(&'r str, &'r Raw)>,
    used: Vec<bool>,
    asked: Vec<&'static str>,
}

impl<'r> Obj<'r> {
    fn new(raw: &'r Raw, path: &str, w: &mut Walker) -> Result<Obj<'r>, ConfigError> {
        let Raw::Map(map) = raw else {
            return Err(type_error(path, "an object", raw));
        };
        let mut entries: Vec<(&str, &Raw)> = Vec::with_capacity(map.len());
        for (k, v) in map {
            // serde_json keeps the last of duplicate keys, and so did the original; say so.
            if let Some(pos) = entries.iter().position(|(ek, _)| *ek == k) {
                w.warn(
                    &child_path(path, k),
                    "duplicate key; the last value is used",
                );
                entries.remove(pos);
            }
            entries.push((k.as_str(), v));
        }
        Ok(Obj {
            path: path.to_string(),
            used: vec![false; entries.len()],
            entries,
            asked: Vec::new(),
        })
    }

    /// The value of `key`; `null` counts as absent, as with serde's `Option` fields.
    fn get(&mut self, key: &'static str) -> Option<&'r Raw> {
        self.asked.push(key);
        let pos = self.entries.iter().position(|(k, _)| *k == key)?;
        self.used[pos] = true;
        match self.entries[pos].1 {
            Raw::Null => None,
            raw => Some(raw),
        }
    }

    fn required(&mut self, key: &'static str) -> Result<&'r Raw, ConfigError> {
        self.get(key)
            .ok_or_else(|| ConfigError::new(self.at(key), "missing required field"))
    }

    fn at(&self, key: &str) -> String {
        child_path(&self.path, key)
    }

    /// Warn about every key that was not read.
    fn finish(self, w: &mut Walker) {
        for (i, (key, _)) in self.entries.iter().enumerate() {
            if self.used[i] {
                continue;
            }
            let path = child_path(&self.path, key);
            match self.asked.iter().find(|known| looks_like(key, known)) {
                Some(known) => w.warn(
                    &path,
                    format_args!("unknown field, ignored (did you mean `{known}`?)"),
                ),
                None => w.warn(&path, "unknown field, ignored"),
            }
        }
    }
}

/// Whether an unknown key is probably a misspelling of `known`: same letters up to case,
/// `-` versus `_`, or a trailing `s`.
fn looks_like(key: &str, known: &str) -> bool {
    let norm = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let (k, n) = (norm(key), norm(known));
    k == n || format!("{k}s") == n || k == format!("{n}s")
}

fn kind(raw: &Raw) -> &'static str {
    match raw {
        Raw::Null => "null",
        Raw::Bool(_) => "a boolean",
        Raw::Num(_) => "a number",
        Raw::Str(_) => "a string",
        Raw::Seq(_) => "an array",
        Raw::Map(_) => "an object",
    }
}

fn type_error(path: &str, expected: &str, raw: &Raw) -> ConfigError {
    ConfigError::new(path, format!("expected {expected}, found {}", kind(raw)))
}

fn missing(path: &str, hint: &str) -> ConfigError {
    ConfigError::new(path, format!("missing required field ({hint})"))
}

fn string<'r>(raw: &'r Raw, path: &str) -> Result<&'r str, ConfigError> {
    match raw {
        Raw::Str(s) => Ok(s),
        other => Err(type_error(path, "a string", other)),
    }
}

fn non_empty(raw: &Raw, path: &str) -> Result<String, ConfigError> {
    let s = string(raw, path)?;
    if s.trim().is_empty() {
        return Err(ConfigError::new(path, "must not be empty"));
    }
    Ok(s.to_string())
}

fn boolean(raw: &Raw, path: &str) -> Result<bool, ConfigError> {
    match raw {
        Raw::Bool(b) => Ok(*b),
        other => Err(type_error(path, "a boolean (true or false)", other)),
    }
}

fn array<'r>(raw: &'r Raw, path: &str) -> Result<&'r [Raw], ConfigError> {
    match raw {
        Raw::Seq(items) => Ok(items),
        other => Err(type_error(path, "an array", other)),
    }
}

fn number(raw: &Raw, path: &str) -> Result<f64, ConfigError> {
    match raw {
        Raw::Num(n) => {
            let v = n.as_f64();
            if v.is_finite() {
                Ok(v)
            } else {
                Err(ConfigError::new(path, "must be a finite number"))
            }
        }
        other => Err(type_error(path, "a number", other)),
    }
}

/// A whole number >= 0 (`8` or `8.0`).
fn whole(raw: &Raw, path: &str) -> Result<u64, ConfigError> {
    let bad = |n: &Num| {
        ConfigError::new(
            path,
            format!("expected a non-negative whole number, found {n}"),
        )
    };
    match raw {
        Raw::Num(Num::U(u)) => Ok(*u),
        // 2^64 itself is not a u64, hence the strict bound.
        Raw::Num(Num::F(f))
            if f.fract() == 0.0 && *f >= 0.0 && *f < 18_446_744_073_709_551_616.0 =>
        {
            Ok(*f as u64)
        }
        Raw::Num(n) => Err(bad(n)),
        other => Err(type_error(path, "a number", other)),
    }
}

/// A duration field in seconds: finite, > 0 (or >= 0 with `allow_zero`), at most MAX_SECONDS.
fn seconds(raw: &Raw, path: &str, allow_zero: bool) -> Result<f64, ConfigError> {
    let v = number(raw, path)?;
    if allow_zero && v < 0.0 {
        return Err(ConfigError::new(path, "must be 0 or more"));
    }
    if !allow_zero && v <= 0.0 {
        return Err(ConfigError::new(path, "must be greater than 0"));
    }
    if v > MAX_SECONDS {
        return Err(ConfigError::new(
            path,
            format!("must be at most {MAX_SECONDS} seconds"),
        ));
    }
    Ok(v)
}

/// Names (of backends and keys) end up in headers, logs and admin URLs.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.trim().is_empty() {
        return Err("must not be empty");
    }
    if name.trim() != name {
        return Err("must not start or end with whitespace");
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    Ok(())
}

fn name(raw: &Raw, path: &str) -> Result<String, ConfigError> {
    let s = string(raw, path)?;
    check_name(s).map_err(|m| ConfigError::new(path, m))?;
    Ok(s.to_string())
}

/// Validate a base URL: `http(s)://host[:port][/path]`, no credentials, query or fragment.
/// Returns it with the scheme lower-cased. Messages do not quote the URL, which may hold an
/// interpolated secret.
pub(super) fn check_base_url(url: &str) -> Result<String, String> {
    if url.is_empty() {
        return Err("must not be empty".to_string());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".to_string());
    }
    let scheme_error = || "must start with http:// or https://".to_string();
    let (scheme, rest) = url.split_once("://").ok_or_else(scheme_error)?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(scheme_error());
    }
    if rest.contains(['?', '#']) {
        return Err(
            "must not contain a query (?...) or fragment (#...); put query parameters in query_params"
                .to_string(),
        );
    }
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        return Err(
            "must not contain credentials (user:password@); send them in headers instead"
                .to_string(),
        );
    }
    let port = match authority.strip_prefix('[') {
        Some(after) => {
            let (ip, tail) = after
                .split_once(']')
                .ok_or_else(|| "has an unclosed `[` in its host".to_string())?;
            if ip.parse::<Ipv6Addr>().is_err() {
                return Err(format!("has an invalid IPv6 address {ip:?}"));
            }
            match tail {
                "" => None,
                t => Some(
                    t.strip_prefix(':')
                        .ok_or_else(|| "has unexpected text after its IPv6 address".to_string())?,
                ),
            }
        }
        None => {
            let (host, port) = match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            };
            if host.is_empty() {
                return Err("has no host".to_string());
            }
            if !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            {
                let hint = if host.is_ascii() {
                    ""
                } else {
                    " (use the punycode form of international names)"
                };
                return Err(format!("has an invalid host {host:?}{hint}"));
            }
            port
        }
    };
    if let Some(p) = port {
        let ok = !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok_and(|n| n != 0);
        if !ok {
            return Err(format!("has an invalid port {p:?} (expected 1-65535)"));
        }
    }
    Ok(format!("{scheme}://{rest}"))
}

/// RFC 9110 token characters, the only ones a header name may have.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// Control characters (tab aside) in a header value would let a config value split the request
/// head; checked after interpolation, since env values are where stray newlines come from.
fn has_control(s: &str) -> bool {
    s.chars().any(|c| c.is_control() && c != '\t')
}

fn backend(raw: &Raw, path: &str, w: &mut Walker) -> Result<BackendConfig, ConfigError> {
    let mut o = Obj::new(raw, path, w)?;
    let name = name(o.required("name")?, &o.at("name"))?;

    let provider = match o.get("provider") {
        Some(r) => {
            let p = non_empty(r, &o.at("provider"))?;
            crate::upstream::provider::parse_provider(Some(&p))
                .map_err(|m| ConfigError::new(o.at("provider"), m))?;
            Some(p)
        }
        None => None,
    };
    let provider_config = match o.get("provider_config") {
        Some(r) => {
            let p = o.at("provider_config");
            if !matches!(r, Raw::Map(_)) {
                return Err(type_error(&p, "an object", r));
            }
            Some(to_json(r, &p, w, true)?)
        }
        None => None,
    };

    let url_path = o.at("base_url");
    let base_url = match o.get("base_url") {
        // The original writes `"base_url": ""` for provider backends; that means "none".
        Some(Raw::Str(s)) if s.is_empty() && provider.is_some() => None,
        Some(r) => {
            let s = w.interpolate(string(r, &url_path)?, &url_path)?;
            Some(check_base_url(&s).map_err(|m| ConfigError::new(&url_path, m))?)
        }
        None => None,
    };
    if base_url.is_none() {
        match provider.as_deref() {
            None => {
                return Err(missing(
                    &url_path,
                    "the upstream root, e.g. \"https://api.openai.com/v1\"",
                ))
            }
            Some(p) if OPENAI_COMPATIBLE.contains(&p.to_ascii_lowercase().as_str()) => {
                let in_config = provider_config
                    .as_ref()
                    .and_then(|c| c.get("base_url"))
                    .is_some_and(|v| v.as_str().is_some_and(|s| !s.is_empty()));
                if !in_config {
                    return Err(ConfigError::new(
                        &url_path,
                        format!("required for provider {p:?} (or set provider_config.base_url)"),
                    ));
                }
            }
            Some(_) => {}
        }
    }

    let max_in_flight = match o.get("max_in_flight") {
        Some(r) => {
            let p = o.at("max_in_flight");
            let n = whole(r, &p)?;
            if n == 0 {
                return Err(ConfigError::new(p, "must be at least 1"));
            }
            Some(usize::try_from(n).unwrap_or(usize::MAX))
        }
        None => None,
    };
    let timeout_seconds = match o.get("timeout_seconds") {
        Some(r) => Some(seconds(r, &o.at("timeout_seconds"), false)?),
        None => None,
    };
    let connect_timeout_seconds = match o.get("connect_timeout_seconds") {
        Some(r) => Some(seconds(r, &o.at("connect_timeout_seconds"), false)?),
        None => None,
    };
    let idle_ttl_seconds = match o.get("idle_ttl_seconds") {
        Some(r) => Some(seconds(r, &o.at("idle_ttl_seconds"), true)?),
        None => None,
    };

    let mut headers: Vec<(String, String)> = Vec::new();
    if let Some(r) = o.get("headers") {
        let hp = o.at("headers");
        let map = Obj::new(r, &hp, w)?;
        for &(key, value) in &map.entries {
            let vp = child_path(&hp, key);
            if !is_header_name(key) {
                return Err(ConfigError::new(
                    vp,
                    "invalid header name (allowed: letters, digits and !#$%&'*+-.^_`|~)",
                ));
            }
            let lower = key.to_ascii_lowercase();
            // Connection and framing headers are the gateway's to set; injecting them from
            // config would corrupt framing or keep-alive handling.
            if crate::proxy::headers::HOP_BY_HOP.contains(&lower.as_str()) {
                return Err(ConfigError::new(
                    vp,
                    "the gateway manages this connection/framing header; it cannot be set here",
                ));
            }
            if headers.iter().any(|(n, _)| *n == lower) {
                return Err(ConfigError::new(
                    vp,
                    "duplicate header (header names are case-insensitive)",
                ));
            }
            let v = w.interpolate(string(value, &vp)?, &vp)?;
            if has_control(&v) {
                return Err(ConfigError::new(
                    vp,
                    "header value must not contain control characters such as CR or LF",
                ));
            }
            headers.push((lower, v));
        }
    }

    let mut query_params: Vec<(String, String)> = Vec::new();
    if let Some(r) = o.get("query_params") {
        let qp = o.at("query_params");
        let map = Obj::new(r, &qp, w)?;
        for &(key, value) in &map.entries {
            let vp = child_path(&qp, key);
            if key.is_empty() || key.chars().any(char::is_control) {
                return Err(ConfigError::new(
                    vp,
                    "query parameter names must be non-empty, without control characters",
                ));
            }
            let v = w.interpolate(string(value, &vp)?, &vp)?;
            if v.chars().any(char::is_control) {
                return Err(ConfigError::new(
                    vp,
                    "query parameter value must not contain control characters",
                ));
            }
            query_params.push((key.to_string(), v));
        }
    }

    let mut model_map: Vec<(String, String)> = Vec::new();
    if let Some(r) = o.get("model_map") {
        let mp = o.at("model_map");
        let map = Obj::new(r, &mp, w)?;
        for &(key, value) in &map.entries {
            let vp = child_path(&mp, key);
            if key.is_empty() {
                return Err(ConfigError::new(vp, "model names must not be empty"));
            }
            model_map.push((key.to_string(), non_empty(value, &vp)?));
        }
    }
    o.finish(w);

    Ok(BackendConfig {
        name,
        base_url,
        max_in_flight,
        timeout_seconds,
        connect_timeout_seconds,
        idle_ttl_seconds,
        headers,
        query_params,
        model_map,
        provider,
        provider_config,
    })
}

fn check_ref(name: &str, path: &str, backends: &[BackendConfig]) -> Result<(), ConfigError> {
    if backends.iter().any(|b| b.name == name) {
        Ok(())
    } else {
        Err(ConfigError::new(path, format!("unknown backend {name:?}")))
    }
}

fn router(
    raw: &Raw,
    path: &str,
    backends: &[BackendConfig],
    w: &mut Walker,
) -> Result<RouterConfig, ConfigError> {
    let mut o = Obj::new(raw, path, w)?;
    let mut default_backends = match o.get("default_backends") {
        Some(r) => weighted_list(r, &o.at("default_backends"), backends, w)?,
        None => Vec::new(),
    };
    // The original ignores a blank legacy `default_backend` (its serializer writes one).
    let legacy_path = o.at("default_backend");
    let legacy = match o.get("default_backend") {
        Some(r) => Some(string(r, &legacy_path)?).filter(|s| !s.trim().is_empty()),
        None => None,
    };
    if let Some(name) = legacy {
        if !default_backends.is_empty() {
            return Err(ConfigError::new(
                legacy_path,
                "cannot be combined with default_backends (default_backend is the legacy \
                 form; use default_backends only)",
            ));
        }
        check_ref(name, &legacy_path, backends)?;
        default_backends.push(WeightedBackend {
            backend: name.to_string(),
            weight: 1.0,
        });
    }

    let mut rules: Vec<RouteRule> = Vec::new();
    if let Some(r) = o.get("rules") {
        let rp = o.at("rules");
        for (i, item) in array(r, &rp)?.iter().enumerate() {
            let path = format!("{rp}[{i}]");
            let rule = rule(item, &path, backends, w)?;
            if let Some(j) = shadowing_rule(&rules, &rule) {
                w.warn(
                    &path,
                    format_args!(
                        "never matches: {rp}[{j}] comes first and matches every model this rule does"
                    ),
                );
            }
            rules.push(rule);
        }
    }
    if default_backends.is_empty() && !backends.is_empty() {
        w.warn(
            &o.at("default_backends"),
            "none set: requests whose model matches no rule go to every backend, in file order",
        );
    }
    let strategy = match o.get("strategy") {
        Some(r) => {
            let sp = o.at("strategy");
            let s = string(r, &sp)?;
            crate::router::balance::Strategy::parse(s).map_err(|e| ConfigError::new(sp, e))?;
            Some(s.to_string())
        }
        None => None,
    };
    let latency_half_life_secs = match o.get("latency_half_life_secs") {
        Some(r) => Some(seconds(r, &o.at("latency_half_life_secs"), true)?),
        None => None,
    };
    o.finish(w);
    Ok(RouterConfig {
        default_backends,
        rules,
        strategy,
        latency_half_life_secs,
    })
}

/// An earlier rule that matches every model `rule` matches, given that the router tries exact
/// rules first and then prefix rules, each in file order.
fn shadowing_rule(earlier: &[RouteRule], rule: &RouteRule) -> Option<usize> {
    let prefix = |r: &RouteRule| {
        r.model_prefix
            .strip_suffix('*')
            .unwrap_or(&r.model_prefix)
            .to_string()
    };
    earlier.iter().position(|e| {
        if rule.exact {
            e.exact && e.model_prefix == rule.model_prefix
        } else {
            !e.exact && prefix(rule).starts_with(&prefix(e))
        }
    })
}

fn rule(
    raw: &Raw,
    path: &str,
    backends: &[BackendConfig],
    w: &mut Walker,
) -> Result<RouteRule, ConfigError> {
    let mut o = Obj::new(raw, path, w)?;
    let model_prefix = non_empty(o.required("model_prefix")?, &o.at("model_prefix"))?;
    let exact = match o.get("exact") {
        Some(r) => boolean(r, &o.at("exact"))?,
        None => false,
    };
    let single_path = o.at("backend");
    // The original serializes an unused `backend` as "" and unused `backends` as []: absent.
    let single = match o.get("backend") {
        Some(r) => Some(string(r, &single_path)?).filter(|s| !s.trim().is_empty()),
        None => None,
    };
    let list = match o.get("backends") {
        Some(r) => weighted_list(r, &o.at("backends"), backends, w)?,
        None => Vec::new(),
    };
    let candidates = match (single, list.is_empty()) {
        (Some(_), false) => {
            return Err(ConfigError::new(
                path,
                "set either backend or backends, not both",
            ))
        }
        (None, true) => {
            return Err(ConfigError::new(
                path,
                "needs backend or a non-empty backends list",
            ))
        }
        (Some(name), true) => {
            check_ref(name, &single_path, backends)?;
            vec![WeightedBackend {
                backend: name.to_string(),
                weight: 1.0,
            }]
        }
        (None, false) => list,
    };
    let guardrails = match o.get("guardrails") {
        Some(r) => {
            let gp = o.at("guardrails");
            if !matches!(r, Raw::Map(_)) {
                return Err(type_error(&gp, "an object", r));
            }
            let value = to_json(r, &gp, w, false)?;
            crate::guardrails::Guardrails::from_json(&value).map_err(|e| {
                match e.split_once(": ") {
                    Some((f, m)) => ConfigError::new(format!("{gp}.{f}"), m),
                    None => ConfigError::new(&gp, e),
                }
            })?;
            warn_unknown_guardrails(&value, &gp, w);
            Some(value)
        }
        None => None,
    };
    if exact && model_prefix.ends_with('*') {
        w.warn(
            &o.at("model_prefix"),
            "an exact rule matches `*` literally; drop `exact` for a prefix match",
        );
    }
    o.finish(w);
    Ok(RouteRule {
        model_prefix,
        exact,
        backends: candidates,
        guardrails,
    })
}

fn weighted_list(
    raw: &Raw,
    path: &str,
    backends: &[BackendConfig],
    w: &mut Walker,
) -> Result<Vec<WeightedBackend>, ConfigError> {
    let mut out: Vec<WeightedBackend> = Vec::new();
    for (i, item) in array(raw, path)?.iter().enumerate() {
        let mut o = Obj::new(item, &format!("{path}[{i}]"), w)?;
        let bp = o.at("backend");
        let backend = non_empty(o.required("backend")?, &bp)?;
        check_ref(&backend, &bp, backends)?;
        let weight = match o.get("weight") {
            Some(r) => number(r, &o.at("weight"))?,
            None => 1.0,
        };
        if weight <= 0.0 {
            w.warn(
                &o.at("weight"),
                format_args!("{weight} is not positive: the router never picks {backend:?} here"),
            );
        }
        if out.iter().any(|x| x.backend == backend) {
            w.warn(&bp, format_args!("{backend:?} is listed more than once"));
        }
        o.finish(w);
        out.push(WeightedBackend { backend, weight });
    }
    if !out.is_empty() && out.iter().all(|x| x.weight <= 0.0) {
        w.warn(
            path,
            "no backend has a positive weight: the router skips this list",
        );
    }
    Ok(out)
}

fn virtual_keys(
    raw: &Raw,
    path: &str,
    backends: &[BackendConfig],
    w: &mut Walker,
) -> Result<Vec<VirtualKeyConfig>, ConfigError> {
    let mut out: Vec<VirtualKeyConfig> = Vec::new();
    for (i, item) in array(raw, path)?.iter().enumerate() {
        let kp = format!("{path}[{i}]");
        let key = virtual_key(item, &kp, backends, w)?;
        if let Some(j) = out.iter().position(|k| k.id == key.id) {
            return Err(ConfigError::new(
                format!("{kp}.id"),
                format!("duplicate id {:?} (also {path}[{j}])", key.id),
            ));
        }
        // Never echo a token: say which key holds the same one.
        if let Some(j) = out.iter().position(|k| k.token == key.token) {
            return Err(ConfigError::new(
                format!("{kp}.token"),
                format!("duplicate token (same as {path}[{j}])"),
            ));
        }
        out.push(key);
    }
    Ok(out)
}

fn virtual_key(
    raw: &Raw,
    path: &str,
    backends: &[BackendConfig],
    w: &mut Walker,
) -> Result<VirtualKeyConfig, ConfigError> {
    let mut o = Obj::new(raw, path, w)?;
    let id = name(o.required("id")?, &o.at("id"))?;

    let tp = o.at("token");
    let token = w.interpolate(string(o.required("token")?, &tp)?, &tp)?;
    if token.is_empty() {
        return Err(ConfigError::new(tp, "must not be empty"));
    }
    // Clients send the token in a header, which can never carry these; such a key could
    // never be used.
    if token.trim() != token {
        return Err(ConfigError::new(
            tp,
            "must not start or end with whitespace",
        ));
    }
    if token.chars().any(char::is_control) {
        return Err(ConfigError::new(tp, "must not contain control characters"));
    }

    let enabled = match o.get("enabled") {
        Some(r) => boolean(r, &o.at("enabled"))?,
        None => true,
    };
    let mut scope = |key: &'static str| -> Result<Option<String>, ConfigError> {
        match o.get(key) {
            Some(r) => Ok(Some(non_empty(r, &o.at(key))?)),
            None => Ok(None),
        }
    };
    let tenant_id = scope("tenant_id")?;
    let project_id = scope("project_id")?;
    let user_id = scope("user_id")?;
    let route = match o.get("route") {
        Some(r) => {
            let rp = o.at("route");
            let route = non_empty(r, &rp)?;
            check_ref(&route, &rp, backends)?;
            Some(route)
        }
        None => None,
    };
    for section in KEY_SECTIONS {
        if let Some(r) = o.get(section) {
            let sp = o.at(section);
            let Raw::Map(_) = r else {
                return Err(type_error(&sp, "an object", r));
            };
            // Limits and budgets are enforced: checked by the parser the admin API uses too,
            // so a key is accepted or refused the same way whichever way it arrives.
            let check = if section.ends_with("limits") {
                crate::control::keys::parse_limits(&to_json(r, &sp, w, false)?, section).map(|_| ())
            } else if section.ends_with("budget") {
                crate::control::keys::parse_budget(&to_json(r, &sp, w, false)?, section).map(|_| ())
            } else if *section == "cache" {
                crate::control::keys::check_cache(&to_json(r, &sp, w, false)?)
            } else if *section == "guardrails" {
                let value = to_json(r, &sp, w, false)?;
                warn_unknown_guardrails(&value, &sp, w);
                crate::control::keys::parse_guardrails(&value).map(|_| ())
            } else {
                w.warn(&sp, NOT_ENFORCED);
                Ok(())
            };
            if let Err(e) = check {
                return Err(ConfigError::new(format!("{path}.{}", e.field), e.message));
            }
        }
    }

    let mut json = to_json(raw, path, w, false)?;
    if let serde_json::Value::Object(map) = &mut json {
        map.insert(
            "token".to_string(),
            serde_json::Value::String(token.clone()),
        );
    }
    o.finish(w);

    Ok(VirtualKeyConfig {
        id,
        token,
        enabled,
        tenant_id,
        project_id,
        user_id,
        route,
        raw: json,
    })
}

/// Warn about keys of a `guardrails` object that no rule reads.
fn warn_unknown_guardrails(v: &serde_json::Value, path: &str, w: &mut Walker) {
    if let serde_json::Value::Object(m) = v {
        for k in m.keys() {
            if !crate::guardrails::FIELDS.contains(&k.as_str()) {
                w.warn(&child_path(path, k), "unknown guardrails field; ignored");
            }
        }
    }
}

/// Convert a raw subtree to JSON, interpolating every string when `interpolate_strings` is set.
fn to_json(
    raw: &Raw,
    path: &str,
    w: &mut Walker,
    interpolate_strings: bool,
) -> Result<serde_json::Value, ConfigError> {
    use serde_json::Value as J;
    Ok(match raw {
        Raw::Null => J::Null,
        Raw::Bool(b) => J::Bool(*b),
        Raw::Num(Num::U(u)) => J::from(*u),
        Raw::Num(Num::I(i)) => J::from(*i),
        Raw::Num(Num::F(f)) => serde_json::Number::from_f64(*f)
            .map(J::Number)
            .ok_or_else(|| ConfigError::new(path, "must be a finite number"))?,
        Raw::Str(s) if interpolate_strings => J::String(w.interpolate(s, path)?),
        Raw::Str(s) => J::String(s.clone()),
        Raw::Seq(items) => J::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| to_json(v, &format!("{path}[{i}]"), w, interpolate_strings))
                .collect::<Result<_, _>>()?,
        ),
        Raw::Map(entries) => {
            let mut map = serde_json::Map::new();
            for (k, v) in entries {
                let child = child_path(path, k);
                let value = to_json(v, &child, w, interpolate_strings)?;
                if map.insert(k.clone(), value).is_some() {
                    w.warn(&child, "duplicate key; the last value is used");
                }
            }
            J::Object(map)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("sk-1".to_string()),
            "HOST" => Some("up.example".to_string()),
            "NL" => Some("a\r\nx-evil: 1".to_string()),
            "PAD" => Some(" tok ".to_string()),
            _ => None,
        }
    }

    /// A document with the given sections (raw JSON text each).
    fn doc(backends: &str, keys: &str, router: &str) -> String {
        format!(r#"{{"backends": {backends}, "virtual_keys": {keys}, "router": {router}}}"#)
    }

    const ONE: &str = r#"[{"name": "a", "base_url": "http://a.local/v1"}]"#;
    const TWO: &str = r#"[{"name": "a", "base_url": "http://a.local/v1"},
                          {"name": "b", "base_url": "https://b.local"}]"#;
    const DEF_A: &str = r#"{"default_backend": "a"}"#;

    fn ok(text: &str) -> Config {
        Config::from_str(text, "json", &lookup).unwrap_or_else(|e| panic!("{e}"))
    }

    fn err(text: &str) -> String {
        match Config::from_str(text, "json", &lookup) {
            Ok(cfg) => panic!("expected an error, got {cfg:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn backend_err(fields: &str) -> String {
        err(&doc(
            &format!(r#"[{{"name": "a", {fields}}}]"#),
            "[]",
            DEF_A,
        ))
    }

    fn backend_ok(fields: &str) -> BackendConfig {
        ok(&doc(
            &format!(r#"[{{"name": "a", {fields}}}]"#),
            "[]",
            DEF_A,
        ))
        .backends
        .remove(0)
    }

    fn key_err(fields: &str) -> String {
        err(&doc(ONE, &format!("[{{{fields}}}]"), DEF_A))
    }

    // ---- top level ----

    #[test]
    fn minimal_config_with_no_backends_is_valid_with_a_warning() {
        let cfg = ok(r#"{"virtual_keys": [], "router": {}}"#);
        assert!(cfg.backends.is_empty() && cfg.virtual_keys.is_empty());
        assert!(cfg.router.default_backends.is_empty() && cfg.router.rules.is_empty());
        assert_eq!(cfg.warnings, vec![NO_BACKENDS_WARNING.to_string()]);
    }

    #[test]
    fn required_sections() {
        assert_eq!(
            err(r#"{"virtual_keys": []}"#),
            "router: missing required field (use {} for no routing rules)"
        );
        assert_eq!(
            err(r#"{"router": {}}"#),
            "virtual_keys: missing required field (use [] for no keys)"
        );
        assert_eq!(
            err(r#"{"router": {}, "virtual_keys": null}"#),
            "virtual_keys: missing required field (use [] for no keys)"
        );
        assert_eq!(
            err(r#"[1]"#),
            "the config must be an object at the top level, found an array"
        );
    }

    #[test]
    fn wrong_section_types() {
        assert_eq!(
            err(r#"{"backends": {}, "virtual_keys": [], "router": {}}"#),
            "backends: expected an array, found an object"
        );
        assert_eq!(
            err(r#"{"virtual_keys": {}, "router": {}}"#),
            "virtual_keys: expected an array, found an object"
        );
        assert_eq!(
            err(r#"{"virtual_keys": [], "router": []}"#),
            "router: expected an object, found an array"
        );
        assert_eq!(
            err(r#"{"backends": ["a"], "virtual_keys": [], "router": {}}"#),
            "backends[0]: expected an object, found a string"
        );
    }

    #[test]
    fn later_sections_and_unknown_fields_warn() {
        let cfg = ok(r#"{"virtual_keys": [], "router": {}, "mcp_servers": [],
                        "a2a_agents": [], "observability": {}, "extra": 1, "Backend": []}"#);
        assert_eq!(
            cfg.warnings,
            vec![
                NO_BACKENDS_WARNING.to_string(),
                "a2a_agents: accepted, not implemented yet; ignored".to_string(),
                "mcp_servers: accepted, not implemented yet; ignored".to_string(),
                "observability: accepted, not implemented yet; ignored".to_string(),
                "extra: unknown field, ignored".to_string(),
                "Backend: unknown field, ignored (did you mean `backends`?)".to_string(),
            ]
        );
    }

    #[test]
    fn duplicate_keys_warn_and_the_last_wins() {
        let cfg = ok(
            r#"{"virtual_keys": [], "router": {}, "router": {"default_backend": "a"},
                        "backends": [{"name": "a", "base_url": "http://x", "timeout_seconds": 1,
                                      "timeout_seconds": 2}]}"#,
        );
        assert_eq!(cfg.router.default_backends[0].backend, "a");
        assert_eq!(cfg.backends[0].timeout_seconds, Some(2.0));
        assert_eq!(
            cfg.warnings,
            vec![
                "router: duplicate key; the last value is used".to_string(),
                "backends[0].timeout_seconds: duplicate key; the last value is used".to_string(),
            ]
        );
    }

    // ---- backends ----

    #[test]
    fn backend_name_errors() {
        assert_eq!(
            err(&doc(r#"[{"base_url": "http://x"}]"#, "[]", "{}")),
            "backends[0].name: missing required field"
        );
        assert_eq!(
            err(&doc(
                r#"[{"name": "", "base_url": "http://x"}]"#,
                "[]",
                "{}"
            )),
            "backends[0].name: must not be empty"
        );
        assert_eq!(
            err(&doc(
                r#"[{"name": " a", "base_url": "http://x"}]"#,
                "[]",
                "{}"
            )),
            "backends[0].name: must not start or end with whitespace"
        );
        assert_eq!(
            err(&doc(r#"[{"name": 7, "base_url": "http://x"}]"#, "[]", "{}")),
            "backends[0].name: expected a string, found a number"
        );
        assert_eq!(
            err(&doc(
                r#"[{"name": "a", "base_url": "http://x"}, {"name": "b", "base_url": "http://y"},
                    {"name": "a", "base_url": "http://z"}]"#,
                "[]",
                "{}"
            )),
            "backends[2].name: duplicate backend name \"a\" (also backends[0])"
        );
    }

    #[test]
    fn base_url_errors() {
        let cases = [
            (
                r#""base_url": "api.openai.com/v1""#,
                "must start with http:// or https://",
            ),
            (
                r#""base_url": "ftp://x/v1""#,
                "must start with http:// or https://",
            ),
            (r#""base_url": "http:///v1""#, "has no host"),
            (r#""base_url": "http://""#, "has no host"),
            (r#""base_url": "http://:80/v1""#, "has no host"),
            (
                r#""base_url": "http://h/v1?k=1""#,
                "must not contain a query (?...) or fragment (#...); put query parameters in query_params",
            ),
            (
                r#""base_url": "http://h/v1#x""#,
                "must not contain a query (?...) or fragment (#...); put query parameters in query_params",
            ),
            (
                r#""base_url": "http://u:p@h/v1""#,
                "must not contain credentials (user:password@); send them in headers instead",
            ),
            (
                r#""base_url": "http://h:0""#,
                "has an invalid port \"0\" (expected 1-65535)",
            ),
            (
                r#""base_url": "http://h:65536""#,
                "has an invalid port \"65536\" (expected 1-65535)",
            ),
            (
                r#""base_url": "http://h:""#,
                "has an invalid port \"\" (expected 1-65535)",
            ),
            (
                r#""base_url": "http://h:+80""#,
                "has an invalid port \"+80\" (expected 1-65535)",
            ),
            (
                r#""base_url": "http://h:1:2""#,
                "has an invalid port \"1:2\" (expected 1-65535)",
            ),
            (
                r#""base_url": "http://h st/v1""#,
                "must not contain whitespace or control characters",
            ),
            (
                r#""base_url": " http://h/v1""#,
                "must not contain whitespace or control characters",
            ),
            (
                r#""base_url": "http://h%41/v1""#,
                "has an invalid host \"h%41\"",
            ),
            (
                r#""base_url": "http://bücher.de/v1""#,
                "has an invalid host \"bücher.de\" (use the punycode form of international names)",
            ),
            (
                r#""base_url": "http://[::1/v1""#,
                "has an unclosed `[` in its host",
            ),
            (
                r#""base_url": "http://[zz::1]/v1""#,
                "has an invalid IPv6 address \"zz::1\"",
            ),
            (
                r#""base_url": "http://[::1]x/v1""#,
                "has unexpected text after its IPv6 address",
            ),
            (r#""base_url": """#, "must not be empty"),
            (r#""base_url": 1"#, "expected a string, found a number"),
        ];
        for (fields, message) in cases {
            assert_eq!(
                backend_err(fields),
                format!("backends[0].base_url: {message}"),
                "{fields}"
            );
        }
        assert_eq!(
            backend_err(r#""timeout_seconds": 1"#),
            "backends[0].base_url: missing required field (the upstream root, e.g. \"https://api.openai.com/v1\")"
        );
    }

    #[test]
    fn base_url_accepted_forms() {
        for (given, stored) in [
            ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
            ("HTTPS://Api.OpenAI.com/v1/", "https://Api.OpenAI.com/v1/"),
            ("http://[::1]:9/v1", "http://[::1]:9/v1"),
            ("http://[::1]", "http://[::1]"),
            ("http://my_service:80", "http://my_service:80"),
            (
                "https://h/openai/deployments/x%20y",
                "https://h/openai/deployments/x%20y",
            ),
            ("https://${HOST}/v1", "https://up.example/v1"),
            ("os.environ/HOST", ""),
        ] {
            if given.starts_with("os.environ") {
                // A bare host from the environment is not a URL.
                assert!(backend_err(&format!(r#""base_url": "{given}""#))
                    .ends_with("must start with http:// or https://"));
                continue;
            }
            let b = backend_ok(&format!(r#""base_url": "{given}""#));
            assert_eq!(b.base_url.as_deref(), Some(stored), "{given}");
        }
    }

    #[test]
    fn base_url_interpolation_errors_name_field_and_variable() {
        assert_eq!(
            backend_err(r#""base_url": "https://${MISSING_HOST}/v1""#),
            "backends[0].base_url: environment variable MISSING_HOST is not set"
        );
        assert_eq!(
            backend_err(r#""base_url": "https://${HOST/v1""#),
            "backends[0].base_url: unterminated `${` (no closing `}`) in \"${HOST/v1\""
        );
    }

    #[test]
    fn numeric_backend_fields() {
        let b = backend_ok(
            r#""base_url": "http://h", "max_in_flight": 8.0, "timeout_seconds": 0.5,
               "connect_timeout_seconds": 2, "idle_ttl_seconds": 0"#,
        );
        assert_eq!(b.max_in_flight, Some(8));
        assert_eq!(b.timeout(), Some(std::time::Duration::from_millis(500)));
        assert_eq!(b.connect_timeout(), Some(std::time::Duration::from_secs(2)));
        assert_eq!(b.idle_ttl(), Some(std::time::Duration::ZERO));

        let cases = [
            (r#""max_in_flight": 0"#, "max_in_flight: must be at least 1"),
            (
                r#""max_in_flight": -1"#,
                "max_in_flight: expected a non-negative whole number, found -1",
            ),
            (
                r#""max_in_flight": 1.5"#,
                "max_in_flight: expected a non-negative whole number, found 1.5",
            ),
            (
                r#""max_in_flight": "8""#,
                "max_in_flight: expected a number, found a string",
            ),
            (
                r#""timeout_seconds": 0"#,
                "timeout_seconds: must be greater than 0",
            ),
            (
                r#""timeout_seconds": -3"#,
                "timeout_seconds: must be greater than 0",
            ),
            (
                r#""timeout_seconds": 1e12"#,
                "timeout_seconds: must be at most 1000000000 seconds",
            ),
            (
                r#""timeout_seconds": "60""#,
                "timeout_seconds: expected a number, found a string",
            ),
            (
                r#""connect_timeout_seconds": 0"#,
                "connect_timeout_seconds: must be greater than 0",
            ),
            (
                r#""idle_ttl_seconds": -1"#,
                "idle_ttl_seconds: must be 0 or more",
            ),
        ];
        for (fields, message) in cases {
            assert_eq!(
                backend_err(&format!(r#""base_url": "http://h", {fields}"#)),
                format!("backends[0].{message}"),
                "{fields}"
            );
        }
        // null means "not set", as with serde's Option.
        let b = backend_ok(r#""base_url": "http://h", "timeout_seconds": null"#);
        assert_eq!(b.timeout_seconds, None);
    }

    #[test]
    fn headers_are_lowercased_ordered_and_interpolated() {
        let b = backend_ok(
            r#""base_url": "http://h", "headers": {"X-Zeta": "1", "Authorization": "Bearer ${KEY}",
               "api-key": "os.environ/KEY", "x-empty": ""}"#,
        );
        assert_eq!(
            b.headers,
            vec![
                ("x-zeta".to_string(), "1".to_string()),
                ("authorization".to_string(), "Bearer sk-1".to_string()),
                ("api-key".to_string(), "sk-1".to_string()),
                ("x-empty".to_string(), String::new()),
            ]
        );
    }

    #[test]
    fn header_errors() {
        let cases = [
            (
                r#"{"authorization": "Bearer ${NOPE}"}"#,
                "headers.authorization: environment variable NOPE is not set",
            ),
            (
                r#"{"x-a": 1}"#,
                "headers.x-a: expected a string, found a number",
            ),
            (
                r#"{"x-a": null}"#,
                "headers.x-a: expected a string, found null",
            ),
            (
                r#"{"bad name": "v"}"#,
                "headers[\"bad name\"]: invalid header name (allowed: letters, digits and !#$%&'*+-.^_`|~)",
            ),
            (
                r#"{"": "v"}"#,
                "headers[\"\"]: invalid header name (allowed: letters, digits and !#$%&'*+-.^_`|~)",
            ),
            (
                r#"{"X-A": "1", "x-a": "2"}"#,
                "headers.x-a: duplicate header (header names are case-insensitive)",
            ),
            (
                r#"{"Content-Length": "5"}"#,
                "headers.Content-Length: the gateway manages this connection/framing header; it cannot be set here",
            ),
            (
                r#"{"transfer-encoding": "chunked"}"#,
                "headers.transfer-encoding: the gateway manages this connection/framing header; it cannot be set here",
            ),
            (
                r#"{"x-a": "${NL}"}"#,
                "headers.x-a: header value must not contain control characters such as CR or LF",
            ),
            ("[]", "headers: expected an object, found an array"),
        ];
        for (headers, message) in cases {
            assert_eq!(
                backend_err(&format!(r#""base_url": "http://h", "headers": {headers}"#)),
                format!("backends[0].{message}"),
                "{headers}"
            );
        }
    }

    #[test]
    fn query_params() {
        let b = backend_ok(
            r#""base_url": "http://h", "query_params": {"api-version": "2024-01-01", "key": "${KEY}"}"#,
        );
        assert_eq!(
            b.query_params,
            vec![
                ("api-version".to_string(), "2024-01-01".to_string()),
                ("key".to_string(), "sk-1".to_string()),
            ]
        );
        assert_eq!(
            backend_err(r#""base_url": "http://h", "query_params": {"k": "${NOPE}"}"#),
            "backends[0].query_params.k: environment variable NOPE is not set"
        );
        assert_eq!(
            backend_err(r#""base_url": "http://h", "query_params": {"": "v"}"#),
            "backends[0].query_params[\"\"]: query parameter names must be non-empty, without control characters"
        );
        assert_eq!(
            backend_err(r#""base_url": "http://h", "query_params": {"k": 1}"#),
            "backends[0].query_params.k: expected a string, found a number"
        );
    }

    #[test]
    fn unimplemented_backend_fields_are_kept_with_one_warning_each() {
        let cfg = ok(&doc(
            r#"[{"name": "a", "base_url": "http://h", "model_map": {"gpt-4": "gpt-4o", "*": "x"},
                 "provider": "anthropic", "provider_config": {"api_key": "${KEY}",
                 "nested": [{"h": "Bearer ${KEY}"}, 1, null]}}]"#,
            "[]",
            DEF_A,
        ));
        let b = &cfg.backends[0];
        assert_eq!(
            b.model_map,
            vec![
                ("gpt-4".to_string(), "gpt-4o".to_string()),
                ("*".to_string(), "x".to_string())
            ]
        );
        assert_eq!(b.provider.as_deref(), Some("anthropic"));
        assert_eq!(
            b.provider_config,
            Some(serde_json::json!({"api_key": "sk-1", "nested": [{"h": "Bearer sk-1"}, 1, null]}))
        );
        // A translation backend applies model_map and its provider settings: no warnings.
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
        // A passthrough backend rewrites the model too: model_map is enforced everywhere.
        let cfg = ok(&doc(
            r#"[{"name": "a", "base_url": "http://h", "model_map": {"gpt-4": "gpt-4o"}}]"#,
            "[]",
            DEF_A,
        ));
        assert_eq!(cfg.warnings, Vec::<String>::new());
        // An empty model_map changes nothing and needs no warning.
        let cfg = ok(&doc(
            r#"[{"name": "a", "base_url": "http://h", "model_map": {}}]"#,
            "[]",
            DEF_A,
        ));
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    }

    #[test]
    fn provider_backends_and_base_url() {
        // A native provider needs no base_url; the original's `"base_url": ""` means none.
        for fields in [
            r#""provider": "anthropic""#,
            r#""provider": "gemini", "base_url": """#,
            r#""provider": "openai-compatible", "provider_config": {"base_url": "${HOST}"}"#,
        ] {
            assert_eq!(backend_ok(fields).base_url, None, "{fields}");
        }
        assert_eq!(
            backend_err(r#""provider": "openai-compatible""#),
            "backends[0].base_url: required for provider \"openai-compatible\" (or set provider_config.base_url)"
        );
        assert_eq!(
            backend_err(r#""provider": "anthropic", "provider_config": {"api_key": "${NOPE}"}"#),
            "backends[0].provider_config.api_key: environment variable NOPE is not set"
        );
        assert_eq!(
            backend_err(r#""provider": "anthropic", "provider_config": "x""#),
            "backends[0].provider_config: expected an object, found a string"
        );
        assert_eq!(
            backend_err(r#""provider": "cohere", "base_url": "http://h""#),
            "backends[0].provider: unknown provider \"cohere\" (expected one of: anthropic, google, gemini, openai, openai-compatible, openai_compatible)"
        );
        assert_eq!(
            backend_err(r#""provider": "", "base_url": "http://h""#),
            "backends[0].provider: must not be empty"
        );
        assert_eq!(
            backend_err(r#""base_url": "http://h", "model_map": {"a": ""}"#),
            "backends[0].model_map.a: must not be empty"
        );
    }

    #[test]
    fn unknown_backend_fields_warn_with_suggestions() {
        let cfg = ok(&doc(
            r#"[{"name": "a", "base_url": "http://h", "header": {}, "timeout-seconds": 3,
                 "weight": 2}]"#,
            "[]",
            DEF_A,
        ));
        assert_eq!(
            cfg.warnings,
            vec![
                "backends[0].header: unknown field, ignored (did you mean `headers`?)".to_string(),
                "backends[0].timeout-seconds: unknown field, ignored (did you mean `timeout_seconds`?)"
                    .to_string(),
                "backends[0].weight: unknown field, ignored".to_string(),
            ]
        );
    }

    // ---- router ----

    #[test]
    fn legacy_default_backend() {
        let cfg = ok(&doc(TWO, "[]", r#"{"default_backend": "b"}"#));
        assert_eq!(cfg.router.default_backends.len(), 1);
        assert_eq!(cfg.router.default_backends[0].backend, "b");
        assert_eq!(cfg.router.default_backends[0].weight, 1.0);
        // Blank legacy field next to the new one: the original's own serialized form.
        let cfg = ok(&doc(
            TWO,
            "[]",
            r#"{"default_backend": "", "default_backends": [{"backend": "a"}]}"#,
        ));
        assert_eq!(cfg.router.default_backends[0].backend, "a");
        // An empty new list next to a legacy value is fine too.
        let cfg = ok(&doc(
            TWO,
            "[]",
            r#"{"default_backend": "b", "default_backends": []}"#,
        ));
        assert_eq!(cfg.router.default_backends[0].backend, "b");
        assert_eq!(
            err(&doc(
                TWO,
                "[]",
                r#"{"default_backend": "b", "default_backends": [{"backend": "a"}]}"#
            )),
            "router.default_backend: cannot be combined with default_backends (default_backend is the legacy form; use default_backends only)"
        );
        assert_eq!(
            err(&doc(TWO, "[]", r#"{"default_backend": "c"}"#)),
            "router.default_backend: unknown backend \"c\""
        );
        assert_eq!(
            err(&doc(TWO, "[]", r#"{"default_backend": ["a"]}"#)),
            "router.default_backend: expected a string, found an array"
        );
    }

    #[test]
    fn weighted_lists() {
        let cfg = ok(&doc(
            TWO,
            "[]",
            r#"{"default_backends": [{"backend": "a", "weight": 3}, {"backend": "b"}]}"#,
        ));
        let d = &cfg.router.default_backends;
        assert_eq!((d[0].backend.as_str(), d[0].weight), ("a", 3.0));
        assert_eq!((d[1].backend.as_str(), d[1].weight), ("b", 1.0));
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);

        let cases = [
            (
                r#"[{"backend": "x"}]"#,
                "router.default_backends[0].backend: unknown backend \"x\"",
            ),
            (
                r#"[{"weight": 1}]"#,
                "router.default_backends[0].backend: missing required field",
            ),
            (
                r#"[{"backend": ""}]"#,
                "router.default_backends[0].backend: must not be empty",
            ),
            (
                r#"[{"backend": "a", "weight": "1"}]"#,
                "router.default_backends[0].weight: expected a number, found a string",
            ),
            (
                r#"["a"]"#,
                "router.default_backends[0]: expected an object, found a string",
            ),
            (
                r#"{"backend": "a"}"#,
                "router.default_backends: expected an array, found an object",
            ),
        ];
        for (list, message) in cases {
            assert_eq!(
                err(&doc(
                    TWO,
                    "[]",
                    &format!(r#"{{"default_backends": {list}}}"#)
                )),
                message,
                "{list}"
            );
        }
    }

    #[test]
    fn non_positive_weights_are_kept_with_warnings() {
        let cfg = ok(&doc(
            TWO,
            "[]",
            r#"{"default_backends": [{"backend": "a", "weight": 0}, {"backend": "b", "weight": -1},
                                     {"backend": "a", "weight": 1, "wieght": 2}]}"#,
        ));
        assert_eq!(cfg.router.default_backends.len(), 3);
        assert_eq!(cfg.router.default_backends[1].weight, -1.0);
        assert_eq!(
            cfg.warnings,
            vec![
                "router.default_backends[0].weight: 0 is not positive: the router never picks \"a\" here"
                    .to_string(),
                "router.default_backends[1].weight: -1 is not positive: the router never picks \"b\" here"
                    .to_string(),
                "router.default_backends[2].backend: \"a\" is listed more than once".to_string(),
                "router.default_backends[2].wieght: unknown field, ignored".to_string(),
            ]
        );
        let cfg = ok(&doc(
            TWO,
            "[]",
            r#"{"default_backends": [{"backend": "a", "weight": 0}]}"#,
        ));
        assert!(cfg.warnings.contains(
            &"router.default_backends: no backend has a positive weight: the router skips this list"
                .to_string()
        ));
    }

    #[test]
    fn rules() {
        let cfg = ok(&doc(
            TWO,
            "[]",
            r#"{"default_backend": "a", "rules": [
                {"model_prefix": "gpt-4o-mini", "exact": true, "backend": "b"},
                {"model_prefix": "claude-*", "backends": [{"backend": "a", "weight": 2}, {"backend": "b"}]},
                {"model_prefix": "o1", "backend": "", "backends": [{"backend": "b"}]},
                {"model_prefix": "o3", "backend": "a", "backends": []}
            ]}"#,
        ));
        let r = &cfg.router.rules;
        assert_eq!(r.len(), 4);
        assert!(r[0].exact);
        assert_eq!(r[0].model_prefix, "gpt-4o-mini");
        assert_eq!(r[0].backends.len(), 1);
        assert_eq!(
            (r[0].backends[0].backend.as_str(), r[0].backends[0].weight),
            ("b", 1.0)
        );
        assert!(!r[1].exact);
        assert_eq!(r[1].backends.len(), 2);
        assert_eq!(r[1].backends[0].weight, 2.0);
        assert_eq!(r[2].backends[0].backend, "b");
        assert_eq!(r[3].backends[0].backend, "a");
        assert!(r.iter().all(|x| x.guardrails.is_none()));
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    }

    #[test]
    fn rule_errors() {
        let cases = [
            (
                r#"{"backend": "a"}"#,
                "router.rules[1].model_prefix: missing required field",
            ),
            (
                r#"{"model_prefix": "", "backend": "a"}"#,
                "router.rules[1].model_prefix: must not be empty",
            ),
            (
                r#"{"model_prefix": "m", "exact": "yes", "backend": "a"}"#,
                "router.rules[1].exact: expected a boolean (true or false), found a string",
            ),
            (
                r#"{"model_prefix": "m"}"#,
                "router.rules[1]: needs backend or a non-empty backends list",
            ),
            (
                r#"{"model_prefix": "m", "backends": []}"#,
                "router.rules[1]: needs backend or a non-empty backends list",
            ),
            (
                r#"{"model_prefix": "m", "backend": "a", "backends": [{"backend": "b"}]}"#,
                "router.rules[1]: set either backend or backends, not both",
            ),
            (
                r#"{"model_prefix": "m", "backend": "x"}"#,
                "router.rules[1].backend: unknown backend \"x\"",
            ),
            (
                r#"{"model_prefix": "m", "backends": [{"backend": "a"}, {"backend": "x"}]}"#,
                "router.rules[1].backends[1].backend: unknown backend \"x\"",
            ),
            (
                r#"{"model_prefix": "m", "backend": "a", "guardrails": []}"#,
                "router.rules[1].guardrails: expected an object, found an array",
            ),
        ];
        for (rule, message) in cases {
            let router = format!(
                r#"{{"default_backend": "a", "rules": [{{"model_prefix": "ok", "backend": "a"}}, {rule}]}}"#
            );
            assert_eq!(err(&doc(TWO, "[]", &router)), message, "{rule}");
        }
        assert_eq!(
            err(&doc(TWO, "[]", r#"{"rules": {}}"#)),
            "router.rules: expected an array, found an object"
        );
    }

    #[test]
    fn rule_guardrails_and_shadowing_warn() {
        let cfg = ok(&doc(
            TWO,
            "[]",
            r#"{"default_backend": "a", "rules": [
                {"model_prefix": "gpt-", "backend": "a", "guardrails": {"deny_models": ["x"]}},
                {"model_prefix": "gpt-4*", "backend": "b"},
                {"model_prefix": "gpt-4o", "exact": true, "backend": "b"},
                {"model_prefix": "gpt-4o", "exact": true, "backend": "a"},
                {"model_prefix": "o1*", "exact": true, "backend": "a"}
            ]}"#,
        ));
        assert_eq!(
            cfg.router.rules[0].guardrails,
            Some(serde_json::json!({"deny_models": ["x"]}))
        );
        assert_eq!(
            cfg.warnings,
            vec![
                "router.rules[1]: never matches: router.rules[0] comes first and matches every model this rule does"
                    .to_string(),
                "router.rules[3]: never matches: router.rules[2] comes first and matches every model this rule does"
                    .to_string(),
                "router.rules[4].model_prefix: an exact rule matches `*` literally; drop `exact` for a prefix match"
                    .to_string(),
            ]
        );
    }

    #[test]
    fn router_without_defaults_warns_when_there_are_backends() {
        let cfg = ok(&doc(
            ONE,
            "[]",
            r#"{"rules": [{"model_prefix": "m", "backend": "a"}], "extra": true}"#,
        ));
        assert_eq!(
            cfg.warnings,
            vec![
                "router.default_backends: none set: requests whose model matches no rule go to every backend, in file order"
                    .to_string(),
                "router.extra: unknown field, ignored".to_string(),
            ]
        );
    }

    // ---- virtual keys ----

    #[test]
    fn virtual_keys_parse_with_defaults_and_raw() {
        let cfg = ok(&doc(
            TWO,
            r#"[{"id": "k1", "token": "${KEY}"},
                {"id": "k2", "token": "literal", "enabled": false, "tenant_id": "t",
                 "project_id": "p", "user_id": "u", "route": "b"}]"#,
            DEF_A,
        ));
        let k = &cfg.virtual_keys;
        assert_eq!(k[0].id, "k1");
        assert_eq!(k[0].token, "sk-1");
        assert!(k[0].enabled);
        assert_eq!(k[0].tenant_id, None);
        assert_eq!(k[0].route, None);
        assert_eq!(k[0].raw, serde_json::json!({"id": "k1", "token": "sk-1"}));
        assert!(!k[1].enabled);
        assert_eq!(k[1].tenant_id.as_deref(), Some("t"));
        assert_eq!(k[1].project_id.as_deref(), Some("p"));
        assert_eq!(k[1].user_id.as_deref(), Some("u"));
        assert_eq!(k[1].route.as_deref(), Some("b"));
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    }

    #[test]
    fn virtual_key_sections_are_kept_in_raw_with_warnings() {
        let cfg = ok(&doc(
            ONE,
            r#"[{"id": "k", "token": "t", "limits": {"rpm": 0}, "budget": {"total_tokens": 10},
                 "cache": {"enabled": true}, "guardrails": {"block_pii": true},
                 "tenant_id": "t1", "tenant_budget": {"total_usd_micros": 5},
                 "project_limits": {"tpm": 1}, "passthrough": {}, "nickname": "x"}]"#,
            DEF_A,
        ));
        let raw = &cfg.virtual_keys[0].raw;
        assert_eq!(raw["limits"]["rpm"], 0);
        assert_eq!(raw["tenant_budget"]["total_usd_micros"], 5);
        assert_eq!(raw["nickname"], "x");
        assert_eq!(
            cfg.warnings,
            vec![
                "virtual_keys[0].passthrough: accepted, not enforced yet".to_string(),
                "virtual_keys[0].nickname: unknown field, ignored".to_string(),
            ]
        );
    }

    #[test]
    fn limits_and_budgets_are_checked_naming_the_field() {
        let e = err(&doc(
            ONE,
            r#"[{"id": "k", "token": "t", "limits": {"tpm": -1}}]"#,
            DEF_A,
        ));
        assert!(e.starts_with("virtual_keys[0].limits.tpm: "), "{e}");
        let e = err(&doc(
            ONE,
            r#"[{"id": "k", "token": "t", "user_budget": {"period": "weekly"}}]"#,
            DEF_A,
        ));
        assert!(e.starts_with("virtual_keys[0].user_budget.period: "), "{e}");
        let e = err(&doc(
            ONE,
            r#"[{"id": "k", "token": "t", "budget": {"usd": 1}}]"#,
            DEF_A,
        ));
        assert!(e.contains("budget.usd"), "{e}");
    }

    #[test]
    fn virtual_key_errors() {
        let cases = [
            (
                r#""token": "t""#,
                "virtual_keys[0].id: missing required field",
            ),
            (
                r#""id": "", "token": "t""#,
                "virtual_keys[0].id: must not be empty",
            ),
            (
                r#""id": "k""#,
                "virtual_keys[0].token: missing required field",
            ),
            (
                r#""id": "k", "token": """#,
                "virtual_keys[0].token: must not be empty",
            ),
            (
                r#""id": "k", "token": "${NOPE}""#,
                "virtual_keys[0].token: environment variable NOPE is not set",
            ),
            (
                r#""id": "k", "token": "${PAD}""#,
                "virtual_keys[0].token: must not start or end with whitespace",
            ),
            (
                r#""id": "k", "token": "a\nb""#,
                "virtual_keys[0].token: must not contain control characters",
            ),
            (
                r#""id": "k", "token": 5"#,
                "virtual_keys[0].token: expected a string, found a number",
            ),
            (
                r#""id": "k", "token": "t", "enabled": "true""#,
                "virtual_keys[0].enabled: expected a boolean (true or false), found a string",
            ),
            (
                r#""id": "k", "token": "t", "route": "x""#,
                "virtual_keys[0].route: unknown backend \"x\"",
            ),
            (
                r#""id": "k", "token": "t", "route": """#,
                "virtual_keys[0].route: must not be empty",
            ),
            (
                r#""id": "k", "token": "t", "tenant_id": """#,
                "virtual_keys[0].tenant_id: must not be empty",
            ),
            (
                r#""id": "k", "token": "t", "user_id": 3"#,
                "virtual_keys[0].user_id: expected a string, found a number",
            ),
            (
                r#""id": "k", "token": "t", "limits": []"#,
                "virtual_keys[0].limits: expected an object, found an array",
            ),
        ];
        for (fields, message) in cases {
            assert_eq!(key_err(fields), message, "{fields}");
        }
    }

    #[test]
    fn virtual_key_duplicates() {
        assert_eq!(
            err(&doc(
                ONE,
                r#"[{"id": "k", "token": "t1"}, {"id": "j", "token": "t2"}, {"id": "k", "token": "t3"}]"#,
                DEF_A
            )),
            "virtual_keys[2].id: duplicate id \"k\" (also virtual_keys[0])"
        );
        // Tokens are compared after interpolation, and never printed.
        let msg = err(&doc(
            ONE,
            r#"[{"id": "k", "token": "sk-1"}, {"id": "j", "token": "${KEY}"}]"#,
            DEF_A,
        ));
        assert_eq!(
            msg,
            "virtual_keys[1].token: duplicate token (same as virtual_keys[0])"
        );
        assert!(!msg.contains("sk-1"));
    }

    #[test]
    fn child_paths() {
        assert_eq!(child_path("", "backends"), "backends");
        assert_eq!(child_path("a", "x-api-key"), "a.x-api-key");
        assert_eq!(child_path("a", "x.y"), "a[\"x.y\"]");
        assert_eq!(child_path("a", ""), "a[\"\"]");
        assert_eq!(child_path("a", "q\""), "a[\"q\\\"\"]");
    }
}
