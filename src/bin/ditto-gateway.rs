//! `ditto-gateway CONFIG [flags]`: parse the command line, load the config, start the shards,
//! wait for SIGTERM/SIGINT, drain, exit. The exit code is decided here and only here.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use ditto_gateway::cli::{self, Command};
use ditto_gateway::config::{env, Config};
use ditto_gateway::proxy::{Gateway, ProxyOptions};
use ditto_gateway::{error, info, server, upstream, warn};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = match cli::parse(std::env::args().skip(1)) {
        Ok(Command::Run(a)) => a,
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
    let opts = ProxyOptions {
        max_in_flight: args.proxy_max_in_flight,
        max_body_bytes: args.proxy_max_body_bytes,
        upstream_ca_file: args.upstream_ca_file.clone(),
        workers,
    };
    let (gw, warnings) = Gateway::build(&config, &opts)?;
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
    info!("stopped");
    Ok(())
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
