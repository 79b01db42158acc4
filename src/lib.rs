//! ditto-gateway: a thread-per-core, OpenAI-compatible LLM gateway on monoio.
//!
//! Data flows one way through the pipeline: accept ([`server`]) -> parse ([`http`]) ->
//! route ([`router`]) -> forward ([`upstream`], [`proxy`]) -> stream back -> account.
//!
//! - [`config`]: `gateway.json`/YAML into a validated [`config::Config`].
//! - [`cli`]: the command line of the `ditto-gateway` binary.
//! - [`http`]: our HTTP/1.1 codec (heads, chunked bodies, limits, the I/O seam).
//! - [`server`]: one pinned monoio runtime per core, listeners, connections, shutdown.
//! - [`proxy`]: the per-request pipeline and the gateway's own endpoints.
//! - [`upstream`]: backends, per-core connection pools, connect and TLS.
//! - [`router`]: model -> ordered candidate backends; breaker, balancing and retry policy.
//! - [`guardrails`]: per-key/per-rule request policy (models, tokens, phrases, PII, schema).
//! - [`limits`]: lock-free in-flight permits.
//! - [`error`]: gateway-made, OpenAI-shaped errors.
//! - [`translate`]: pure OpenAI <-> Anthropic/Gemini/Responses format translation.
//! - [`metrics`]: per-core counters summed at scrape time; Prometheus and JSON output.
//! - [`log`]: startup/error lines, the access log, its non-blocking sink, secret redaction.
//! - [`otel`]: W3C trace context and OTLP/HTTP span export off the data-plane cores.
//! - [`mock`]: the mock upstream used by tests and load tests (a test tool, not a product part).

pub mod auth;
pub mod cache;
pub mod civil;
pub mod cli;
pub mod config;
pub mod control;
pub mod error;
pub mod guardrails;
pub mod http;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod mock;
pub mod net;
pub mod otel;
pub mod pricing;
pub mod proxy;
pub mod router;
pub mod server;
pub mod translate;
pub mod upstream;
pub mod usage;
