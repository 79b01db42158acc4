//! Command line: `ditto-gateway CONFIG [flags]`.
//!
//! Hand-written so that the original's interface keeps working verbatim: the config path is the
//! first argument, flags take their value as `--flag VALUE` or `--flag=VALUE`, and every flag of
//! the original is accepted. Flags we do not implement yet are checked like the real thing (a
//! bad number still fails here) and listed in [`Args::unimplemented`] so that startup can warn
//! about them instead of silently ignoring them. `--help` works anywhere, unlike the original.
//!
//! The flag table `FLAGS` is the single source of truth: the parser looks flags up in it and
//! [`usage`] prints it, so the two cannot drift apart.

use std::fmt;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Default listen address, as in the original.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default global cap on proxied requests in flight.
pub const DEFAULT_PROXY_MAX_IN_FLIGHT: usize = 256;
/// Default largest request body: 64 MiB.
pub const DEFAULT_PROXY_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Default time given to requests in flight at shutdown.
pub const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 30;

/// Default largest JSON response read for its `usage`: 1 MiB.
pub const DEFAULT_USAGE_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default interval between store writes of settled usage.
pub const DEFAULT_STORE_FLUSH_MS: u64 = 500;

/// A secret given on the command line, or the name of the variable holding it (read at
/// startup, after `--dotenv`).
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Value(String),
    Env(String),
}

impl fmt::Debug for Secret {
    // Never print a token, not even in a debug dump of the arguments.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Value(_) => f.write_str("Secret(redacted)"),
            Secret::Env(v) => write!(f, "Secret(env {v})"),
        }
    }
}

impl Secret {
    /// The secret's value; `lookup` reads variables. Errors name the flag and variable.
    pub fn resolve(
        &self,
        flag: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<String, String> {
        match self {
            Secret::Value(v) => Ok(v.clone()),
            Secret::Env(var) => match lookup(var) {
                Some(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
                _ => Err(format!(
                    "{flag}: environment variable {var} is not set or empty"
                )),
            },
        }
    }
}

/// Parsed arguments for a run.
#[derive(Debug, Clone)]
pub struct Args {
    /// The config file (first argument).
    pub config_path: PathBuf,
    /// `--listen` / `--addr HOST:PORT`, default `127.0.0.1:8080`.
    pub listen: String,
    /// `--dotenv PATH`: variables for `${NAME}` in the config.
    pub dotenv: Option<PathBuf>,
    /// `--workers N` (>= 1); `None` means one per available core.
    pub workers: Option<usize>,
    /// `--proxy-max-in-flight N`, default 256 (>= 1).
    pub proxy_max_in_flight: usize,
    /// `--proxy-max-body-bytes N`, default 64 MiB (>= 1).
    pub proxy_max_body_bytes: usize,
    /// `--upstream name=base_url` (repeatable), in order; the URL is validated by the config.
    pub upstreams: Vec<(String, String)>,
    /// `--upstream-ca-file PEM`: extra trusted roots for HTTPS backends.
    pub upstream_ca_file: Option<PathBuf>,
    /// `--drain-timeout-secs N`, default 30.
    pub drain_timeout_secs: u64,
    /// `--json-logs`.
    pub json_logs: bool,
    /// `--admin-token[-env]`.
    pub admin_token: Option<Secret>,
    /// `--admin-read-token[-env]`.
    pub admin_read_token: Option<Secret>,
    /// `--admin-tenant-token[-env]` and `--admin-tenant-read-token[-env]`: (tenant, token,
    /// may write), in order.
    pub admin_tenant_tokens: Vec<(String, Secret, bool)>,
    /// `--sqlite PATH`.
    pub sqlite: Option<PathBuf>,
    /// `--redis URL` | `--redis-env VAR`.
    pub redis: Option<Secret>,
    /// `--redis-prefix P` (default `ditto`).
    pub redis_prefix: String,
    /// `--proxy-cache` and its settings (`None` when off).
    pub proxy_cache: Option<crate::cache::CacheOptions>,
    /// `--pricing-litellm PATH`.
    pub pricing_litellm: Option<PathBuf>,
    /// `--audit-retention-secs N`.
    pub audit_retention_secs: Option<u64>,
    /// `--proxy-usage-max-body-bytes N` (default 1 MiB).
    pub proxy_usage_max_body_bytes: usize,
    /// `--budget-fail-closed`.
    pub budget_fail_closed: bool,
    /// `--store-flush-ms N` (default 500).
    pub store_flush_ms: u64,
    /// `--proxy-retry*`, `--proxy-cb-*`, `--proxy-health-check*`.
    pub resilience: crate::router::live::ResilienceOptions,
    /// `--prometheus-metrics`: serve `GET /metrics/prometheus`.
    pub prometheus_metrics: bool,
    /// `--prometheus-max-{key,model,backend,path}-series N`, in that order.
    pub prometheus_max_series: [Option<usize>; 4],
    /// `--otel` (also implied by `--otel-endpoint`).
    pub otel: bool,
    /// `--otel-endpoint URL`.
    pub otel_endpoint: Option<String>,
    /// Flags of the original that we accept but do not implement yet, as given (e.g.
    /// "--sqlite"), for startup warnings. Names only (values may be secrets), each once.
    pub unimplemented: Vec<String>,
}

impl Args {
    /// The defaults for `config_path`, as if no flag were given.
    pub fn new(config_path: impl Into<PathBuf>) -> Args {
        Args {
            config_path: config_path.into(),
            listen: DEFAULT_LISTEN.to_string(),
            dotenv: None,
            workers: None,
            proxy_max_in_flight: DEFAULT_PROXY_MAX_IN_FLIGHT,
            proxy_max_body_bytes: DEFAULT_PROXY_MAX_BODY_BYTES,
            upstreams: Vec::new(),
            upstream_ca_file: None,
            drain_timeout_secs: DEFAULT_DRAIN_TIMEOUT_SECS,
            json_logs: false,
            admin_token: None,
            admin_read_token: None,
            admin_tenant_tokens: Vec::new(),
            sqlite: None,
            redis: None,
            redis_prefix: "ditto".to_string(),
            proxy_cache: None,
            pricing_litellm: None,
            audit_retention_secs: None,
            proxy_usage_max_body_bytes: DEFAULT_USAGE_MAX_BODY_BYTES,
            budget_fail_closed: false,
            store_flush_ms: DEFAULT_STORE_FLUSH_MS,
            resilience: Default::default(),
            prometheus_metrics: false,
            prometheus_max_series: [None; 4],
            otel: false,
            otel_endpoint: None,
            unimplemented: Vec::new(),
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone)]
pub enum Command {
    /// Start the gateway.
    Run(Box<Args>),
    /// Print [`usage`] and exit 0.
    Help,
}

/// A command line that cannot be used. Display = message; the binary prints it plus
/// [`usage`] and exits 1.
#[derive(Debug)]
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

/// How a flag's value is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value {
    /// A switch: no value.
    None,
    /// Any non-empty text.
    Text,
    /// A whole number (u64).
    Number,
    /// Comma-separated HTTP status codes.
    StatusCodes,
    /// `none`, `fallback` or `retry`.
    ErrorAction,
    /// `KEY=VALUE` with both parts non-empty.
    Pair,
}

/// One flag: its name, the placeholder for its value in [`usage`], how the value is checked,
/// whether we implement it, and one line of help.
struct Flag {
    name: &'static str,
    alias: Option<&'static str>,
    meta: &'static str,
    value: Value,
    implemented: bool,
    help: &'static str,
}

const fn flag(name: &'static str, meta: &'static str, value: Value, help: &'static str) -> Flag {
    Flag {
        name,
        alias: None,
        meta,
        value,
        implemented: true,
        help,
    }
}

/// A flag of the original that we accept and ignore for now.
const fn later(name: &'static str, meta: &'static str, value: Value, help: &'static str) -> Flag {
    Flag {
        name,
        alias: None,
        meta,
        value,
        implemented: false,
        help,
    }
}

/// Every flag, in the order [`usage`] lists them.
#[rustfmt::skip]
const FLAGS: &[Flag] = &[
    Flag {
        name: "--listen",
        alias: Some("--addr"),
        meta: "HOST:PORT",
        value: Value::Text,
        implemented: true,
        help: "address to listen on (alias --addr; default 127.0.0.1:8080)",
    },
    flag("--dotenv", "PATH", Value::Text, "read variables for ${NAME} in the config from a .env file"),
    flag("--workers", "N", Value::Number, "worker threads, one core each (default: one per available core)"),
    flag("--upstream", "NAME=BASE_URL", Value::Pair, "add a passthrough backend (repeatable)"),
    flag("--upstream-ca-file", "PEM", Value::Text, "extra trusted root certificates for HTTPS backends"),
    flag("--proxy-max-in-flight", "N", Value::Number, "global cap on proxied requests in flight (default 256)"),
    flag("--proxy-max-body-bytes", "N", Value::Number, "largest request body accepted (default 67108864, 64 MiB)"),
    flag("--drain-timeout-secs", "SECS", Value::Number, "at shutdown, wait this long for requests in flight (default 30)"),
    flag("--json-logs", "", Value::None, "log JSON lines"),
    flag("--admin-token", "TOKEN", Value::Text, "admin API token"),
    flag("--admin-token-env", "VAR", Value::Text, "admin API token from an environment variable"),
    flag("--admin-read-token", "TOKEN", Value::Text, "read-only admin API token"),
    flag("--admin-read-token-env", "VAR", Value::Text, "read-only admin API token from an environment variable"),
    flag("--admin-tenant-token", "TENANT=TOKEN", Value::Pair, "admin token limited to one tenant (repeatable)"),
    flag("--admin-tenant-token-env", "TENANT=VAR", Value::Pair, "tenant admin token from an environment variable (repeatable)"),
    flag("--admin-tenant-read-token", "TENANT=TOKEN", Value::Pair, "read-only tenant admin token (repeatable)"),
    flag("--admin-tenant-read-token-env", "TENANT=VAR", Value::Pair, "read-only tenant admin token from an environment variable (repeatable)"),
    later("--state", "PATH", Value::Text, "keep virtual keys in a JSON state file (one store only)"),
    flag("--sqlite", "PATH", Value::Text, "SQLite store (one store only)"),
    flag("--redis", "URL", Value::Text, "Redis store, shared by replicas (one store only)"),
    flag("--redis-env", "VAR", Value::Text, "Redis URL from an environment variable"),
    flag("--redis-prefix", "PREFIX", Value::Text, "Redis key prefix (default ditto)"),
    later("--pg", "URL", Value::Text, "PostgreSQL store (one store only)"),
    later("--mysql", "URL", Value::Text, "MySQL store (one store only)"),
    flag("--audit-retention-secs", "SECS", Value::Number, "delete audit records older than this"),
    flag("--store-flush-ms", "MS", Value::Number, "write settled usage to the store this often (default 500)"),
    flag("--budget-fail-closed", "", Value::None, "refuse budgeted requests (503) while the store is failing"),
    later("--backend", "NAME=URL", Value::Pair, "add a non-proxy HTTP backend (repeatable)"),
    flag("--proxy-usage-max-body-bytes", "N", Value::Number, "largest response body scanned for usage"),
    flag("--proxy-cache", "", Value::None, "cache upstream responses (memory per core, plus Redis with --redis)"),
    flag("--proxy-cache-ttl", "SECS", Value::Number, "proxy cache entry lifetime (default 300)"),
    flag("--proxy-cache-max-entries", "N", Value::Number, "proxy cache entries per core (default 10000)"),
    flag("--proxy-cache-max-body-bytes", "N", Value::Number, "largest cached response body (default 1048576)"),
    flag("--proxy-cache-max-total-body-bytes", "N", Value::Number, "proxy cache body bytes, all cores (default 268435456)"),
    flag("--proxy-cache-streaming", "", Value::None, "also cache streamed (stream=true) responses"),
    flag("--proxy-retry", "", Value::None, "retry failed requests on the next backend"),
    flag("--proxy-retry-status-codes", "CODES", Value::StatusCodes, "statuses to retry (default 429,500,502,503,504)"),
    flag("--proxy-fallback-status-codes", "CODES", Value::StatusCodes, "statuses that fall back to the next backend"),
    flag("--proxy-network-error-action", "ACTION", Value::ErrorAction, "on network errors: none, fallback or retry"),
    flag("--proxy-timeout-error-action", "ACTION", Value::ErrorAction, "on timeouts: none, fallback or retry"),
    flag("--proxy-retry-max-attempts", "N", Value::Number, "most attempts per request"),
    flag("--proxy-circuit-breaker", "", Value::None, "skip backends after repeated failures"),
    flag("--proxy-cb-failure-threshold", "N", Value::Number, "failures in a row that open the breaker (default 3)"),
    flag("--proxy-cb-cooldown-secs", "SECS", Value::Number, "how long an open breaker skips a backend (default 30)"),
    flag("--proxy-cb-status-codes", "CODES", Value::StatusCodes, "statuses the breaker counts as failures, besides network errors and timeouts (default 500-599)"),
    flag("--proxy-health-checks", "", Value::None, "probe backends in the background"),
    flag("--proxy-health-check-path", "PATH", Value::Text, "health probe path (default /v1/models)"),
    flag("--proxy-health-check-interval-secs", "SECS", Value::Number, "health probe interval (default 10)"),
    flag("--proxy-health-check-timeout-secs", "SECS", Value::Number, "health probe timeout (default 2)"),
    flag("--pricing-litellm", "PATH", Value::Text, "LiteLLM price JSON for cost budgets"),
    flag("--prometheus-metrics", "", Value::None, "serve /metrics/prometheus"),
    flag("--prometheus-max-key-series", "N", Value::Number, "cap on per-key metric series (default 1000)"),
    flag("--prometheus-max-model-series", "N", Value::Number, "cap on per-model metric series (default 200)"),
    flag("--prometheus-max-backend-series", "N", Value::Number, "cap on per-backend metric series (default 100)"),
    flag("--prometheus-max-path-series", "N", Value::Number, "cap on per-path metric series (paths are labelled by a fixed endpoint class)"),
    flag("--otel", "", Value::None, "export OpenTelemetry traces (OTLP/HTTP)"),
    flag("--otel-endpoint", "URL", Value::Text, "OTLP/HTTP collector endpoint (default http://127.0.0.1:4318; implies --otel)"),
    later("--otel-json", "", Value::None, "OpenTelemetry JSON log output"),
    later("--devtools", "PATH", Value::Text, "devtools event log"),
];

/// Store flags: the original allows one store, and says so at startup.
const STORE_FLAGS: &[(&str, &str)] = &[
    ("--state", "state"),
    ("--sqlite", "sqlite"),
    ("--redis", "redis"),
    ("--redis-env", "redis"),
    ("--pg", "pg"),
    ("--mysql", "mysql"),
];

/// Parse the command line, without `argv[0]`.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, CliError> {
    let args: Vec<String> = args.into_iter().collect();
    // Help wins over everything else, even a broken command line: that is when it is needed.
    if args.iter().any(|a| a == "--help" || a == "-h") {
        return Ok(Command::Help);
    }
    let mut it = args.into_iter();
    let config = match it.next() {
        None => return Err(err("missing CONFIG path")),
        Some(a) if a.starts_with('-') => {
            return Err(err(format!(
                "the first argument must be the CONFIG path, found {a:?}"
            )))
        }
        Some(a) if a.is_empty() => return Err(err("the CONFIG path must not be empty")),
        Some(a) => a,
    };
    let mut out = Args::new(config);
    let mut store: Option<&'static str> = None;

    while let Some(arg) = it.next() {
        if !arg.starts_with("--") {
            return Err(err(if arg.starts_with('-') {
                format!("unknown flag {arg}")
            } else {
                format!("unexpected argument {arg:?} (only the CONFIG path is positional, and it comes first)")
            }));
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        let spec = FLAGS
            .iter()
            .find(|f| f.name == name || f.alias == Some(name))
            .ok_or_else(|| err(format!("unknown flag {name}")))?;
        let value = if spec.value == Value::None {
            if inline.is_some() {
                return Err(err(format!("{name} takes no value")));
            }
            String::new()
        } else {
            let v = match inline {
                Some(v) => v,
                // A following flag is a forgotten value, not a value: `--dotenv --json-logs`.
                None => match it.next() {
                    Some(v) if !v.starts_with("--") => v,
                    _ => return Err(err(format!("missing value for {name}"))),
                },
            };
            if v.is_empty() {
                return Err(err(format!("empty value for {name}")));
            }
            check(spec, name, &v)?;
            v
        };

        if let Some(&(_, kind)) = STORE_FLAGS.iter().find(|(f, _)| *f == spec.name) {
            match store {
                Some(other) if other != kind => {
                    return Err(err(format!(
                        "only one store can be used, found both {other} and {kind} flags"
                    )))
                }
                _ => store = Some(kind),
            }
        }
        if spec.implemented {
            apply(&mut out, spec.name, name, value)?;
        } else if !out.unimplemented.iter().any(|u| u == spec.name) {
            out.unimplemented.push(spec.name.to_string());
        }
    }
    Ok(Command::Run(Box::new(out)))
}

fn err(message: impl Into<String>) -> CliError {
    CliError(message.into())
}

fn invalid(name: &str, value: &str, expected: &str) -> CliError {
    err(format!(
        "invalid value {value:?} for {name}: expected {expected}"
    ))
}

/// Check a value's shape, for implemented and not-yet-implemented flags alike.
fn check(spec: &Flag, name: &str, value: &str) -> Result<(), CliError> {
    match spec.value {
        Value::None | Value::Text => Ok(()),
        Value::Number => number(name, value).map(|_| ()),
        Value::StatusCodes => match crate::router::retry::StatusSet::parse_csv(value) {
            Ok(_) => Ok(()),
            Err(_) => Err(invalid(
                name,
                value,
                "comma-separated HTTP status codes, e.g. 429,500,502 (ranges 500-504 and 5xx too)",
            )),
        },
        Value::ErrorAction => match value {
            "none" | "fallback" | "retry" => Ok(()),
            _ => Err(invalid(name, value, "none, fallback or retry")),
        },
        Value::Pair => match value.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok(()),
            _ => Err(invalid(
                name,
                value,
                &format!("{} (both parts non-empty)", spec.meta),
            )),
        },
    }
}

fn number(name: &str, value: &str) -> Result<u64, CliError> {
    // Digits only: `u64::from_str` would also take a leading `+`.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(name, value, "a whole number"));
    }
    value
        .parse::<u64>()
        .map_err(|_| invalid(name, value, "a whole number"))
}

/// A count that must be at least 1 and fit a usize.
fn count(name: &str, value: &str) -> Result<usize, CliError> {
    let n = number(name, value)?;
    if n == 0 {
        return Err(invalid(name, value, "a number of at least 1"));
    }
    usize::try_from(n).map_err(|_| invalid(name, value, "a smaller number"))
}

/// Store the value of an implemented flag. `canonical` is the table name, `given` what the user
/// typed (for messages, so `--addr` errors say `--addr`).
fn apply(out: &mut Args, canonical: &str, given: &str, value: String) -> Result<(), CliError> {
    match canonical {
        "--listen" => {
            if !is_listen_addr(&value) {
                return Err(invalid(
                    given,
                    &value,
                    "HOST:PORT, e.g. 127.0.0.1:8080 or [::]:8080",
                ));
            }
            out.listen = value;
        }
        "--dotenv" => out.dotenv = Some(PathBuf::from(value)),
        "--workers" => out.workers = Some(count(given, &value)?),
        "--upstream" => {
            // `check` has already made sure both halves are there.
            let (name, url) = value.split_once('=').unwrap_or((&value, ""));
            out.upstreams.push((name.to_string(), url.to_string()));
        }
        "--upstream-ca-file" => out.upstream_ca_file = Some(PathBuf::from(value)),
        "--proxy-max-in-flight" => out.proxy_max_in_flight = count(given, &value)?,
        "--proxy-max-body-bytes" => out.proxy_max_body_bytes = count(given, &value)?,
        "--drain-timeout-secs" => out.drain_timeout_secs = number(given, &value)?,
        "--json-logs" => out.json_logs = true,
        "--admin-token" => out.admin_token = Some(Secret::Value(value)),
        "--admin-token-env" => out.admin_token = Some(Secret::Env(value)),
        "--admin-read-token" => out.admin_read_token = Some(Secret::Value(value)),
        "--admin-read-token-env" => out.admin_read_token = Some(Secret::Env(value)),
        "--admin-tenant-token"
        | "--admin-tenant-token-env"
        | "--admin-tenant-read-token"
        | "--admin-tenant-read-token-env" => {
            let (tenant, v) = value.split_once('=').unwrap_or((&value, ""));
            let secret = if canonical.ends_with("-env") {
                Secret::Env(v.to_string())
            } else {
                Secret::Value(v.to_string())
            };
            let write = !canonical.contains("-read-");
            out.admin_tenant_tokens
                .push((tenant.to_string(), secret, write));
        }
        "--sqlite" => out.sqlite = Some(PathBuf::from(value)),
        "--redis" => out.redis = Some(Secret::Value(value)),
        "--redis-env" => out.redis = Some(Secret::Env(value)),
        "--redis-prefix" => out.redis_prefix = value,
        "--proxy-cache" => {
            cache(out);
        }
        "--proxy-cache-ttl" => {
            cache(out).ttl = std::time::Duration::from_secs(count(given, &value)? as u64)
        }
        "--proxy-cache-max-entries" => cache(out).max_entries = count(given, &value)?,
        "--proxy-cache-max-body-bytes" => cache(out).max_body_bytes = count(given, &value)?,
        "--proxy-cache-max-total-body-bytes" => {
            cache(out).max_total_body_bytes = count(given, &value)?
        }
        "--proxy-cache-streaming" => cache(out).streaming = true,
        "--pricing-litellm" => out.pricing_litellm = Some(PathBuf::from(value)),
        "--audit-retention-secs" => out.audit_retention_secs = Some(number(given, &value)?),
        "--proxy-usage-max-body-bytes" => out.proxy_usage_max_body_bytes = count(given, &value)?,
        "--budget-fail-closed" => out.budget_fail_closed = true,
        "--store-flush-ms" => out.store_flush_ms = count(given, &value)? as u64,
        c if c.starts_with("--proxy-retry")
            || c.starts_with("--proxy-fallback")
            || c.starts_with("--proxy-network")
            || c.starts_with("--proxy-timeout")
            || c.starts_with("--proxy-c")
            || c.starts_with("--proxy-health") =>
        {
            resilience_flag(&mut out.resilience, c, given, &value)?
        }
        "--prometheus-metrics" => out.prometheus_metrics = true,
        "--prometheus-max-key-series" => out.prometheus_max_series[0] = Some(count(given, &value)?),
        "--prometheus-max-model-series" => {
            out.prometheus_max_series[1] = Some(count(given, &value)?)
        }
        "--prometheus-max-backend-series" => {
            out.prometheus_max_series[2] = Some(count(given, &value)?)
        }
        "--prometheus-max-path-series" => {
            out.prometheus_max_series[3] = Some(count(given, &value)?)
        }
        "--otel" => out.otel = true,
        "--otel-endpoint" => {
            out.otel = true;
            out.otel_endpoint = Some(value);
        }
        // Every implemented flag in FLAGS has an arm above; the test
        // `every_implemented_flag_is_applied` keeps it that way.
        other => return Err(err(format!("flag {other} is not handled"))),
    }
    Ok(())
}

/// Store a retry, circuit breaker or health check flag.
fn resilience_flag(
    r: &mut crate::router::live::ResilienceOptions,
    canonical: &str,
    given: &str,
    value: &str,
) -> Result<(), CliError> {
    use crate::router::retry::{ErrorAction, RetryPolicy, StatusSet};
    let bad = |e: String| invalid(given, value, &e);
    let secs = |v: &str| -> Result<std::time::Duration, CliError> {
        Ok(std::time::Duration::from_secs(count(given, v)? as u64))
    };
    match canonical {
        "--proxy-retry" => r.retry.enabled = true,
        "--proxy-retry-status-codes" => {
            r.retry.retry_statuses = StatusSet::parse_csv(value).map_err(bad)?
        }
        "--proxy-fallback-status-codes" => {
            r.retry.fallback_statuses = StatusSet::parse_csv(value).map_err(bad)?
        }
        "--proxy-network-error-action" => {
            r.retry.network_action = ErrorAction::parse(value).map_err(bad)?
        }
        "--proxy-timeout-error-action" => {
            r.retry.timeout_action = ErrorAction::parse(value).map_err(bad)?
        }
        "--proxy-retry-max-attempts" => {
            r.retry.max_attempts = Some(RetryPolicy::parse_max_attempts(value).map_err(bad)?)
        }
        "--proxy-circuit-breaker" => r.breaker.enabled = true,
        "--proxy-cb-failure-threshold" => r.breaker.failure_threshold = count(given, value)? as u32,
        "--proxy-cb-status-codes" => {
            r.breaker.counted_statuses = StatusSet::parse_csv(value).map_err(bad)?
        }
        "--proxy-cb-cooldown-secs" => {
            r.breaker.cooldown_ms = number(given, value)?.saturating_mul(1000)
        }
        "--proxy-health-checks" => {
            r.health.get_or_insert_with(Default::default);
        }
        "--proxy-health-check-path" => {
            if !value.starts_with('/') {
                return Err(invalid(given, value, "a path starting with /"));
            }
            r.health.get_or_insert_with(Default::default).path = value.to_string();
        }
        "--proxy-health-check-interval-secs" => {
            r.health.get_or_insert_with(Default::default).interval = secs(value)?
        }
        "--proxy-health-check-timeout-secs" => {
            r.health.get_or_insert_with(Default::default).timeout = secs(value)?
        }
        other => return Err(err(format!("flag {other} is not handled"))),
    }
    Ok(())
}

/// The cache settings a `--proxy-cache-*` flag changes (they imply `--proxy-cache`).
fn cache(out: &mut Args) -> &mut crate::cache::CacheOptions {
    out.proxy_cache.get_or_insert_with(Default::default)
}

/// `HOST:PORT` where HOST is a name, an IPv4 address or a bracketed IPv6 address. Port 0 asks
/// the OS for a free port (useful in tests).
fn is_listen_addr(value: &str) -> bool {
    let Some((host, port)) = value.rsplit_once(':') else {
        return false;
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err()
    {
        return false;
    }
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(ip) => ip.parse::<Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        }
    }
}

/// The help text: every flag with one line each, marking the ones not implemented yet.
pub fn usage() -> &'static str {
    static USAGE: OnceLock<String> = OnceLock::new();
    USAGE.get_or_init(build_usage)
}

fn build_usage() -> String {
    let config = if cfg!(feature = "gateway-config-yaml") {
        "gateway config file (.json, .yaml or .yml)"
    } else {
        "gateway config file (.json; .yaml/.yml needs the gateway-config-yaml feature)"
    };
    let left = |f: &Flag| {
        if f.meta.is_empty() {
            f.name.to_string()
        } else {
            format!("{} {}", f.name, f.meta)
        }
    };
    let width = FLAGS.iter().map(|f| left(f).len()).max().unwrap_or(0);
    let mut s = format!(
        "usage: ditto-gateway CONFIG [FLAGS]\n\n\
         CONFIG  {config}; it must be the first argument.\n\
         Flags take values as `--flag VALUE` or `--flag=VALUE`.\n\nFlags:\n"
    );
    for f in FLAGS {
        let mark = if f.implemented {
            ""
        } else {
            " [not implemented yet]"
        };
        s.push_str(&format!(
            "  {:width$}  {}{mark}\n",
            left(f),
            f.help,
            width = width
        ));
    }
    s.push_str(&format!(
        "  {:width$}  print this help\n\n\
         Flags marked [not implemented yet] are accepted for compatibility with the original \
         ditto-gateway; they have no effect and are reported at startup.\n",
        "-h, --help",
        width = width
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Args {
        match parse(args.iter().map(|s| s.to_string())) {
            Ok(Command::Run(a)) => *a,
            Ok(Command::Help) => panic!("unexpected help for {args:?}"),
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    fn fail(args: &[&str]) -> String {
        match parse(args.iter().map(|s| s.to_string())) {
            Ok(c) => panic!("expected an error for {args:?}, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults() {
        let a = run(&["gateway.json"]);
        assert_eq!(a.config_path, PathBuf::from("gateway.json"));
        assert_eq!(a.listen, "127.0.0.1:8080");
        assert_eq!(a.dotenv, None);
        assert_eq!(a.workers, None);
        assert_eq!(a.proxy_max_in_flight, 256);
        assert_eq!(a.proxy_max_body_bytes, 64 * 1024 * 1024);
        assert!(a.upstreams.is_empty());
        assert_eq!(a.upstream_ca_file, None);
        assert_eq!(a.drain_timeout_secs, 30);
        assert!(!a.json_logs);
        assert!(a.unimplemented.is_empty());
    }

    #[test]
    fn seed_commands_parse() {
        let a = run(&["./gateway.json", "--listen", "0.0.0.0:8080"]);
        assert_eq!(a.listen, "0.0.0.0:8080");
        let a = run(&[
            "./gateway.json",
            "--dotenv",
            ".env",
            "--listen",
            "0.0.0.0:8080",
        ]);
        assert_eq!(a.dotenv, Some(PathBuf::from(".env")));
        assert_eq!(a.listen, "0.0.0.0:8080");
    }

    #[test]
    fn implemented_flags_in_both_forms() {
        let a = run(&[
            "g.yaml",
            "--addr=[::1]:9000",
            "--dotenv=.env.local",
            "--workers",
            "4",
            "--proxy-max-in-flight=10",
            "--proxy-max-body-bytes",
            "1024",
            "--upstream",
            "a=http://a.local/v1",
            "--upstream=b=https://b.local/v1?x=1",
            "--upstream-ca-file",
            "ca.pem",
            "--drain-timeout-secs=0",
            "--json-logs",
        ]);
        assert_eq!(a.listen, "[::1]:9000");
        assert_eq!(a.dotenv, Some(PathBuf::from(".env.local")));
        assert_eq!(a.workers, Some(4));
        assert_eq!(a.proxy_max_in_flight, 10);
        assert_eq!(a.proxy_max_body_bytes, 1024);
        assert_eq!(
            a.upstreams,
            vec![
                ("a".to_string(), "http://a.local/v1".to_string()),
                ("b".to_string(), "https://b.local/v1?x=1".to_string()),
            ]
        );
        assert_eq!(a.upstream_ca_file, Some(PathBuf::from("ca.pem")));
        assert_eq!(a.drain_timeout_secs, 0);
        assert!(a.json_logs);
        assert!(a.unimplemented.is_empty());
    }

    #[test]
    fn later_flags_win() {
        let a = run(&["g.json", "--listen", "a:1", "--addr", "b:2"]);
        assert_eq!(a.listen, "b:2");
    }

    #[test]
    fn help_anywhere() {
        for args in [
            vec!["--help"],
            vec!["-h"],
            vec!["g.json", "--help"],
            vec!["g.json", "--bogus", "-h"],
            vec!["--listen", "--help"],
        ] {
            let parsed = parse(args.iter().map(|s| s.to_string()));
            assert!(matches!(parsed, Ok(Command::Help)), "{args:?}");
        }
    }

    #[test]
    fn config_path_errors() {
        assert_eq!(fail(&[]), "missing CONFIG path");
        assert_eq!(
            fail(&["--listen", "0.0.0.0:1", "g.json"]),
            "the first argument must be the CONFIG path, found \"--listen\""
        );
        assert_eq!(
            fail(&["-x"]),
            "the first argument must be the CONFIG path, found \"-x\""
        );
        assert_eq!(fail(&[""]), "the CONFIG path must not be empty");
        assert_eq!(
            fail(&["g.json", "other.json"]),
            "unexpected argument \"other.json\" (only the CONFIG path is positional, and it comes first)"
        );
    }

    #[test]
    fn unknown_flags() {
        assert_eq!(fail(&["g.json", "--foo"]), "unknown flag --foo");
        assert_eq!(fail(&["g.json", "--foo=1"]), "unknown flag --foo");
        assert_eq!(fail(&["g.json", "-v"]), "unknown flag -v");
        assert_eq!(fail(&["g.json", "--"]), "unknown flag --");
    }

    #[test]
    fn missing_and_empty_values() {
        assert_eq!(fail(&["g.json", "--listen"]), "missing value for --listen");
        assert_eq!(fail(&["g.json", "--addr"]), "missing value for --addr");
        assert_eq!(
            fail(&["g.json", "--dotenv", "--json-logs"]),
            "missing value for --dotenv"
        );
        assert_eq!(fail(&["g.json", "--sqlite"]), "missing value for --sqlite");
        assert_eq!(fail(&["g.json", "--dotenv="]), "empty value for --dotenv");
        // A value that merely starts with one dash is a value.
        assert_eq!(
            fail(&["g.json", "--workers", "-1"]),
            "invalid value \"-1\" for --workers: expected a whole number"
        );
    }

    #[test]
    fn switches_take_no_value() {
        assert_eq!(
            fail(&["g.json", "--json-logs=true"]),
            "--json-logs takes no value"
        );
        // The next word after a switch is not swallowed as its value.
        assert!(fail(&["g.json", "--json-logs", "true"]).starts_with("unexpected argument"));
    }

    #[test]
    fn bad_numbers_name_flag_and_value() {
        let cases = [
            (
                vec!["--workers", "0"],
                "invalid value \"0\" for --workers: expected a number of at least 1",
            ),
            (
                vec!["--workers", "four"],
                "invalid value \"four\" for --workers: expected a whole number",
            ),
            (
                vec!["--proxy-max-in-flight=0"],
                "invalid value \"0\" for --proxy-max-in-flight: expected a number of at least 1",
            ),
            (
                vec!["--proxy-max-body-bytes", "64MiB"],
                "invalid value \"64MiB\" for --proxy-max-body-bytes: expected a whole number",
            ),
            (
                vec!["--drain-timeout-secs", "+5"],
                "invalid value \"+5\" for --drain-timeout-secs: expected a whole number",
            ),
            (
                vec!["--drain-timeout-secs", "99999999999999999999"],
                "invalid value \"99999999999999999999\" for --drain-timeout-secs: expected a whole number",
            ),
            (
                vec!["--proxy-cb-cooldown-secs", "1.5"],
                "invalid value \"1.5\" for --proxy-cb-cooldown-secs: expected a whole number",
            ),
        ];
        for (args, message) in cases {
            let mut full = vec!["g.json"];
            full.extend(args.iter());
            assert_eq!(fail(&full), message, "{args:?}");
        }
    }

    #[test]
    fn listen_values() {
        for ok in [
            "127.0.0.1:8080",
            "0.0.0.0:0",
            "localhost:80",
            "[::]:8080",
            "my_host:1",
        ] {
            assert_eq!(run(&["g.json", "--listen", ok]).listen, ok);
        }
        for bad in [
            "8080", ":8080", "h:", "h:x", "h:70000", "::1:80", "[zz]:80", "a b:1",
        ] {
            assert_eq!(
                fail(&["g.json", "--listen", bad]),
                format!(
                    "invalid value {bad:?} for --listen: expected HOST:PORT, e.g. 127.0.0.1:8080 or [::]:8080"
                )
            );
        }
        assert!(fail(&["g.json", "--addr", "x"]).contains("for --addr:"));
    }

    #[test]
    fn upstream_values() {
        for bad in ["noequals", "=http://x", "name="] {
            assert_eq!(
                fail(&["g.json", "--upstream", bad]),
                format!(
                    "invalid value {bad:?} for --upstream: expected NAME=BASE_URL (both parts non-empty)"
                )
            );
        }
    }

    #[test]
    fn unimplemented_flags_are_accepted_and_reported_once() {
        let a = run(&[
            "g.json",
            "--admin-token",
            "secret",
            "--sqlite=gw.db",
            "--proxy-cache",
            "--proxy-cache-ttl",
            "60",
            "--proxy-retry-status-codes",
            "429, 500,502",
            "--proxy-network-error-action",
            "fallback",
            "--admin-tenant-token",
            "t1=tok",
            "--admin-tenant-token=t2=tok2",
            "--otel",
            "--otel-endpoint",
            "http://collector:4317",
            "--json-logs",
        ]);
        assert!(a.unimplemented.is_empty(), "{:?}", a.unimplemented);
        assert!(a.json_logs);
        assert!(a.otel);
        assert_eq!(a.otel_endpoint.as_deref(), Some("http://collector:4317"));
        assert_eq!(a.sqlite.as_deref(), Some(std::path::Path::new("gw.db")));
        assert_eq!(a.admin_token, Some(Secret::Value("secret".into())));
        assert_eq!(
            a.admin_tenant_tokens,
            vec![
                ("t1".to_string(), Secret::Value("tok".into()), true),
                ("t2".to_string(), Secret::Value("tok2".into()), true),
            ]
        );
        // Values are never recorded: they may be secrets.
        assert!(!format!("{a:?}").contains("secret"));
    }

    #[test]
    fn every_flag_of_the_reference_is_accepted() {
        let valued = [
            ("--admin-token", "t"),
            ("--admin-token-env", "V"),
            ("--admin-read-token", "t"),
            ("--admin-read-token-env", "V"),
            ("--admin-tenant-token", "a=t"),
            ("--admin-tenant-token-env", "a=V"),
            ("--admin-tenant-read-token", "a=t"),
            ("--admin-tenant-read-token-env", "a=V"),
            ("--redis-prefix", "ditto"),
            ("--audit-retention-secs", "3600"),
            ("--backend", "x=http://h"),
            ("--proxy-usage-max-body-bytes", "1"),
            ("--proxy-cache-ttl", "1"),
            ("--proxy-cache-max-entries", "1"),
            ("--proxy-cache-max-body-bytes", "1"),
            ("--proxy-cache-max-total-body-bytes", "1"),
            ("--proxy-retry-status-codes", "429,500,502,503,504"),
            ("--proxy-fallback-status-codes", "500"),
            ("--proxy-network-error-action", "none"),
            ("--proxy-timeout-error-action", "retry"),
            ("--proxy-retry-max-attempts", "3"),
            ("--proxy-cb-failure-threshold", "3"),
            ("--proxy-cb-cooldown-secs", "30"),
            ("--proxy-health-check-path", "/v1/models"),
            ("--proxy-health-check-interval-secs", "10"),
            ("--proxy-health-check-timeout-secs", "2"),
            ("--pricing-litellm", "prices.json"),
            ("--prometheus-max-key-series", "1"),
            ("--prometheus-max-model-series", "1"),
            ("--prometheus-max-backend-series", "1"),
            ("--prometheus-max-path-series", "1"),
            ("--otel-endpoint", "http://c"),
            ("--devtools", "log.jsonl"),
        ];
        let switches = [
            "--proxy-cache",
            "--proxy-cache-streaming",
            "--proxy-retry",
            "--proxy-circuit-breaker",
            "--proxy-health-checks",
            "--prometheus-metrics",
            "--otel",
            "--otel-json",
        ];
        let mut args = vec!["g.json"];
        for (f, v) in &valued {
            args.push(f);
            args.push(v);
        }
        args.extend(switches.iter());
        let a = run(&args);
        let implemented = valued
            .iter()
            .filter(|(f, _)| FLAGS.iter().any(|x| x.name == *f && x.implemented))
            .count();
        assert_eq!(
            implemented, 31,
            "admin tokens, redis prefix, proxy cache, pricing, audit, usage body, retry, breaker, health checks, prometheus caps, otel endpoint"
        );
        let implemented_switches = switches
            .iter()
            .filter(|f| FLAGS.iter().any(|x| x.name == **f && x.implemented))
            .count();
        assert_eq!(
            implemented_switches, 7,
            "proxy cache, cache streaming, retry, breaker, health checks, prometheus, otel"
        );
        assert_eq!(
            a.unimplemented.len(),
            valued.len() - implemented + switches.len() - implemented_switches
        );
        for store in ["--state", "--pg", "--mysql"] {
            let a = run(&["g.json", store, "x"]);
            assert_eq!(a.unimplemented, vec![store.to_string()]);
        }
    }

    #[test]
    fn breaker_status_codes_replace_the_default() {
        let a = run(&["g.json", "--proxy-cb-status-codes", "429,503"]);
        let counted = a.resilience.breaker.counted_statuses;
        assert!(counted.contains(429) && counted.contains(503));
        assert!(!counted.contains(500));
        assert!(fail(&["g.json", "--proxy-cb-status-codes", "abc"]).contains("status codes"));
    }

    #[test]
    fn only_one_store() {
        assert_eq!(
            fail(&["g.json", "--sqlite", "a.db", "--redis", "redis://h"]),
            "only one store can be used, found both sqlite and redis flags"
        );
        // Two spellings of the same store are fine (the last one wins).
        let a = run(&["g.json", "--redis", "redis://h", "--redis-env", "REDIS_URL"]);
        assert!(a.unimplemented.is_empty());
        assert_eq!(a.redis, Some(Secret::Env("REDIS_URL".into())));
        assert_eq!(a.redis_prefix, "ditto");
    }

    #[test]
    fn checked_values_of_unimplemented_flags() {
        assert_eq!(
            fail(&["g.json", "--proxy-retry-status-codes", "429,abc"]),
            "invalid value \"429,abc\" for --proxy-retry-status-codes: expected comma-separated HTTP status codes, e.g. 429,500,502 (ranges 500-504 and 5xx too)"
        );
        assert!(fail(&["g.json", "--proxy-fallback-status-codes", "99"]).contains("status codes"));
        assert_eq!(
            fail(&["g.json", "--proxy-timeout-error-action", "panic"]),
            "invalid value \"panic\" for --proxy-timeout-error-action: expected none, fallback or retry"
        );
        assert_eq!(
            fail(&["g.json", "--admin-tenant-token", "tok"]),
            "invalid value \"tok\" for --admin-tenant-token: expected TENANT=TOKEN (both parts non-empty)"
        );
    }

    #[test]
    fn every_implemented_flag_is_applied() {
        for f in FLAGS.iter().filter(|f| f.implemented) {
            let value = match (f.name, f.value) {
                (_, Value::None) => None,
                ("--listen", _) => Some("h:1"),
                (_, Value::Pair) => Some("a=b"),
                (_, Value::Number) => Some("1"),
                (_, Value::StatusCodes) => Some("500"),
                (_, Value::ErrorAction) => Some("retry"),
                ("--proxy-health-check-path", _) => Some("/health"),
                _ => Some("x"),
            };
            let mut args = vec!["g.json".to_string(), f.name.to_string()];
            args.extend(value.map(str::to_string));
            assert!(parse(args).is_ok(), "{}", f.name);
        }
    }

    #[test]
    fn usage_lists_every_flag_on_its_own_line() {
        let text = usage();
        assert!(text.starts_with("usage: ditto-gateway CONFIG [FLAGS]"));
        for f in FLAGS {
            let line = text
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{} ", f.name)) || l.trim() == f.name)
                .unwrap_or_else(|| panic!("{} missing from usage", f.name));
            assert_eq!(
                line.ends_with("[not implemented yet]"),
                !f.implemented,
                "{line}"
            );
        }
        assert!(text.contains("--addr"));
        assert!(text.contains("-h, --help"));
        // Flag names are unique.
        for (i, f) in FLAGS.iter().enumerate() {
            assert!(
                FLAGS[i + 1..].iter().all(|g| g.name != f.name),
                "{}",
                f.name
            );
        }
    }

    #[test]
    fn cli_error_displays_its_message() {
        let e = CliError("unknown flag --foo".to_string());
        assert_eq!(e.to_string(), "unknown flag --foo");
    }
}
