//! `ditto-gateway CONFIG [flags]`: parse the command line, load the config, start the shards,
//! wait for SIGTERM/SIGINT, drain, exit. The exit code is decided here and only here.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use ditto_gateway::cli::{self, Command};
use ditto_gateway::config::{env, Config};
#[cfg(feature = "gateway-store-sqlite")]
use ditto_gateway::control::store::sqlite::SqliteStore;
use ditto_gateway::control::store::{memory::MemoryStore, Store};
use ditto_gateway::pricing::Pricing;
use ditto_gateway::proxy::admin::AdminTokens;
use ditto_gateway::proxy::{Gateway, ProxyOptions};
use ditto_gateway::{error, info, server, upstream, warn};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = match cli::parse(std::env::args().skip(1)) {
        Ok(Command::Run(a)) => *a,
        Ok(Command::Help) => {
            println!("{}", cli::usage());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{}", cli::usage());
            return ExitCode::from(1);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: cli::Args) -> Result<(), String> {
    ditto_gateway::log::set_json(args.json_logs);
    // --dotenv is read first; the process environment wins over it, as in the original.
    let dotenv = match &args.dotenv {
        Some(p) => env::load_dotenv(p).map_err(|e| format!("--dotenv {}: {e}", p.display()))?,
        None => Vec::new(),
    };
    let lookup = |name: &str| {
        std::env::var(name).ok().or_else(|| {
            dotenv
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    };
    let config = Config::load_with_upstreams(&args.config_path, &lookup, &args.upstreams)
        .map_err(|e| e.to_string())?;
    for w in &config.warnings {
        warn!("{w}");
    }
    for flag in &args.unimplemented {
        warn!("{flag}: accepted for compatibility, not implemented yet");
    }
    let workers = args.workers.unwrap_or_else(server::default_workers);
    let mut opts = ProxyOptions::new(args.proxy_max_in_flight, args.proxy_max_body_bytes, workers);
    opts.upstream_ca_file = args.upstream_ca_file.clone();
    opts.admin = admin_tokens(&args, &lookup)?;
    if let Some(p) = &args.pricing_litellm {
        opts.pricing = Pricing::load(p)?;
        info!(
            "pricing: {} model(s) from {}",
            opts.pricing.len(),
            p.display()
        );
    }
    opts.flush_interval = Duration::from_millis(args.store_flush_ms.max(1));
    opts.audit_retention = args.audit_retention_secs.map(Duration::from_secs);
    opts.usage_max_body_bytes = args.proxy_usage_max_body_bytes;
    opts.budget_fail_closed = args.budget_fail_closed;
    opts.resilience = args.resilience.clone();
    let sinks = observability(&args, &mut opts.obs)?;
    opts.cache = proxy_cache(&args, &lookup)?;
    let store = open_store(&args, &lookup)?;
    let (gw, warnings) = Gateway::build(&config, &opts, store)?;
    for w in warnings {
        warn!("{w}");
    }
    for w in upstream::resolve::start(gw.backends.iter().map(|b| b.addrs.clone()).collect()) {
        warn!("{w}");
    }
    // Handlers go in before we listen: "listening on" tells a supervisor (or a test) that we are
    // up, and a SIGTERM sent right after it must drain, not kill the process by default action.
    let signals = install_signal_handlers()?;
    let backends = gw.backends.len();
    let control = gw.control.clone();
    let handle = server::start(
        Arc::new(gw),
        &args.listen,
        workers,
        Duration::from_secs(args.drain_timeout_secs),
    )
    .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    info!(
        "listening on http://{} with {workers} worker(s), {backends} backend(s)",
        handle.local_addr
    );
    wait_for_signal(signals, handle.stop_senders());
    info!(
        "shutting down: draining in-flight requests (up to {}s)",
        args.drain_timeout_secs
    );
    handle.join();
    // The cores have reported everything they settled; write it before exiting.
    control.flush();
    // The cores are gone: write the access log and export the spans still queued.
    sinks.close();
    info!("stopped");
    Ok(())
}

/// The access log's writer and the trace exporter, owned here and closed after the drain.
#[derive(Default)]
struct Sinks {
    log: Option<ditto_gateway::log::sink::LogSink>,
    #[cfg(feature = "gateway-otel")]
    otel: Option<ditto_gateway::otel::OtelExporter>,
}

impl Sinks {
    fn close(self) {
        if let Some(l) = self.log {
            l.close();
        }
        #[cfg(feature = "gateway-otel")]
        if let Some(o) = self.otel {
            o.close();
        }
    }
}

/// Metrics settings, the access log (`--json-logs` for JSON lines; `DITTO_ACCESS_LOG=off`,
/// `stdout` or `stderr`, default stderr) and the trace exporter (`--otel`).
fn observability(
    args: &cli::Args,
    obs: &mut ditto_gateway::metrics::ObsOptions,
) -> Result<Sinks, String> {
    use ditto_gateway::log::sink::{LogFormat, LogSink, LogTarget};
    let mut sinks = Sinks::default();
    obs.prometheus = args.prometheus_metrics;
    let [keys, models, backends, _paths] = args.prometheus_max_series;
    let d = ditto_gateway::metrics::LabelCaps::default();
    obs.caps = ditto_gateway::metrics::LabelCaps {
        keys: keys.unwrap_or(d.keys),
        models: models.unwrap_or(d.models),
        backends: backends.unwrap_or(d.backends),
        pairs: d
            .pairs
            .min(keys.unwrap_or(d.keys) * models.unwrap_or(d.models)),
    };
    let target = match std::env::var("DITTO_ACCESS_LOG").as_deref() {
        Ok("off") => None,
        Ok("stdout") => Some(LogTarget::Stdout),
        Ok("stderr") | Ok("") | Err(_) => Some(LogTarget::Stderr),
        Ok(other) => {
            return Err(format!(
                "DITTO_ACCESS_LOG={other:?}: expected off, stdout or stderr"
            ))
        }
    };
    if let Some(target) = target {
        let format = if args.json_logs {
            LogFormat::Json
        } else {
            LogFormat::Text
        };
        let sink = LogSink::start(target, format)
            .map_err(|e| format!("cannot start the access log: {e}"))?;
        obs.log = Some(sink.sender());
        obs.external.extend(sink.counters());
        sinks.log = Some(sink);
    }
    if args.otel {
        #[cfg(feature = "gateway-otel")]
        {
            let endpoint = args
                .otel_endpoint
                .as_deref()
                .unwrap_or(ditto_gateway::otel::DEFAULT_ENDPOINT);
            let exporter = ditto_gateway::otel::OtelExporter::start(endpoint, Default::default())?;
            info!(
                "otel: exporting spans to {}",
                ditto_gateway::otel::traces_url(endpoint)?
            );
            obs.spans = Some(exporter.sender());
            obs.external.extend(exporter.counters());
            sinks.otel = Some(exporter);
        }
        #[cfg(not(feature = "gateway-otel"))]
        return Err("--otel needs the gateway-otel feature".to_string());
    }
    Ok(sinks)
}

/// The store of `--sqlite` or `--redis`, else memory.
fn open_store(
    args: &cli::Args,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Box<dyn Store>, String> {
    if let Some(url) = &args.redis {
        return open_redis(&url.resolve("--redis", lookup)?, &args.redis_prefix);
    }
    match &args.sqlite {
        #[cfg(feature = "gateway-store-sqlite")]
        Some(path) => {
            let s = SqliteStore::open(path).map_err(|e| format!("--sqlite: {e}"))?;
            info!("store: sqlite {}", path.display());
            Ok(Box::new(s))
        }
        #[cfg(not(feature = "gateway-store-sqlite"))]
        Some(_) => Err("--sqlite needs the gateway-store-sqlite feature".to_string()),
        None => Ok(Box::new(MemoryStore::new())),
    }
}

/// `--proxy-cache` settings, with the Redis tier when `--redis` is set.
fn proxy_cache(
    args: &cli::Args,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ditto_gateway::cache::CacheOptions>, String> {
    let Some(mut c) = args.proxy_cache.clone() else {
        return Ok(None);
    };
    if !cfg!(feature = "gateway-proxy-cache") {
        return Err("--proxy-cache needs the gateway-proxy-cache feature".to_string());
    }
    if let Some(url) = &args.redis {
        c.redis = Some((url.resolve("--redis", lookup)?, args.redis_prefix.clone()));
    }
    info!(
        "proxy cache: ttl {}s, {} entries/core, bodies up to {} bytes{}{}",
        c.ttl.as_secs(),
        c.max_entries,
        c.max_body_bytes,
        if c.streaming { ", streams too" } else { "" },
        if c.redis.is_some() {
            ", Redis tier"
        } else {
            ""
        }
    );
    Ok(Some(c))
}

#[cfg(feature = "gateway-store-redis")]
fn open_redis(url: &str, prefix: &str) -> Result<Box<dyn Store>, String> {
    use ditto_gateway::control::store::redis::{redact_url, RedisStore};
    let s = RedisStore::open(url, prefix).map_err(|e| format!("--redis: {e}"))?;
    info!("store: redis {} (prefix {prefix})", redact_url(url));
    Ok(Box::new(s))
}

#[cfg(not(feature = "gateway-store-redis"))]
fn open_redis(_url: &str, _prefix: &str) -> Result<Box<dyn Store>, String> {
    Err("--redis needs the gateway-store-redis feature".to_string())
}

/// Resolve the admin token flags (values or environment variables).
fn admin_tokens(
    args: &cli::Args,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<AdminTokens, String> {
    let admin = match &args.admin_token {
        Some(s) => Some(s.resolve("--admin-token", lookup)?),
        None => None,
    };
    let read = match &args.admin_read_token {
        Some(s) => Some(s.resolve("--admin-read-token", lookup)?),
        None => None,
    };
    let mut tenants = Vec::new();
    for (tenant, secret, write) in &args.admin_tenant_tokens {
        let flag = if *write {
            "--admin-tenant-token"
        } else {
            "--admin-tenant-read-token"
        };
        tenants.push((tenant.clone(), secret.resolve(flag, lookup)?, *write));
    }
    Ok(AdminTokens::new(
        admin.as_deref(),
        read.as_deref(),
        &tenants,
    ))
}

/// Catch SIGTERM and SIGINT from now on (delivered through [`wait_for_signal`]).
fn install_signal_handlers() -> Result<signal_hook::iterator::Signals, String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("cannot install signal handlers: {e}"))
}

/// Block until SIGTERM or SIGINT, then tell every shard to stop.
fn wait_for_signal(mut signals: signal_hook::iterator::Signals, stops: Vec<flume::Sender<()>>) {
    if let Some(sig) = signals.forever().next() {
        info!("received signal {sig}");
    }
    for s in stops {
        let _ = s.send(());
    }
}
