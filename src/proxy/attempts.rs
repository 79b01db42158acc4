//! The attempt loop's policy for one request (REFERENCE section 9): which backend to try next
//! (breaker/health filtering, load-aware order), whether a failed attempt may be sent again
//! (the retry policy and the safety guard), the backoff before it, and what every attempt is
//! reported as to the control plane. [`super::forward`] drives the I/O.
//!
//! Also here: the per-request guardrails choice (a router rule's replace the key's), the
//! `model_map` body rewrite, and the startup wiring of the routing state.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::forward::RequestBody;
use crate::auth::Admitted;
use crate::config::Config;
use crate::control::backends::{BackendsSetup, HealthTarget};
use crate::control::ControlHandle;
use crate::error::GatewayError;
use crate::guardrails::form::FormError;
use crate::guardrails::{Endpoint, Guardrails};
use crate::http::{Method, RequestHead, ResponseHead};
use crate::router::balance;
use crate::router::breaker::{Admit, Attempt, BreakerBoard, Outcome, ProbeTicket};
use crate::router::live::{Live, ResilienceOptions, RouteTable};
use crate::router::retry::{self, Decision, Failure, Jitter, Progress};
use crate::upstream::Backend;

/// Response header with the number of attempts a request took.
pub const ATTEMPTS_HEADER: &str = retry::ATTEMPTS_HEADER;

/// Append `x-ditto-attempts: N\r\n\r\n` (ends a response head) without allocating.
pub fn write_attempts_header(out: &mut bytes::BytesMut, attempts: u32) {
    out.extend_from_slice(ATTEMPTS_HEADER.as_bytes());
    out.extend_from_slice(b": ");
    let mut digits = [0u8; 10];
    let mut n = attempts;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n\r\n");
}

/// Build the routing state for the passthrough `backends`, hand the breakers and health
/// checks to the control plane, and return what the cores read.
pub fn install(
    config: &Config,
    opts: &ResilienceOptions,
    backends: &[Backend],
    control: &ControlHandle,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Arc<Live>, String> {
    let names: Vec<String> = backends.iter().map(|b| b.name.clone()).collect();
    let table = RouteTable::build(&config.router, &names)?;
    let board = BreakerBoard::new(backends.len(), opts.breaker.clone());
    let live = Arc::new(Live::new(table, board.view(), opts.clone()));
    let health_path = opts
        .health
        .as_ref()
        .map_or("/v1/models", |h| h.path.as_str());
    let targets = backends
        .iter()
        .map(|b| {
            let mut target = String::new();
            b.write_target(&mut target, health_path, None);
            HealthTarget {
                name: b.name.clone(),
                host: b.host.clone(),
                port: b.port,
                tls: b.tls,
                server_name: b.server_name.clone(),
                authority: b.authority.clone(),
                target,
                headers: b.headers.clone(),
            }
        })
        .collect();
    let configs = backends
        .iter()
        .filter_map(|b| config.backend(&b.name).cloned())
        .collect();
    control.install_backends(
        BackendsSetup {
            live: Arc::clone(&live),
            board,
            configs,
            router: config.router.clone(),
            targets,
            tls: Arc::clone(tls),
        },
        opts.health.clone(),
    );
    Ok(live)
}

/// The guardrails that apply to a request: the matching rule's, else the key's.
pub fn guardrails_for<'a>(
    routes: &'a RouteTable,
    model: Option<&str>,
    admitted: Option<&'a Admitted>,
) -> Option<&'a Arc<Guardrails>> {
    match routes.router.route(model).1 {
        Some(g) => Some(g),
        None => admitted.and_then(|a| a.key.guardrails.as_ref()),
    }
}

/// Check a request against its guardrails; the error to answer with when refused.
/// `form`: the plain fields of a multipart upload, when its form was read for them.
pub fn check_guardrails(
    g: &Guardrails,
    upstream_path: &str,
    model: Option<&str>,
    body: &RequestBody,
    form: Option<&FormFields>,
) -> Result<(), GatewayError> {
    let endpoint = Endpoint::from_path(upstream_path);
    if let Some(f) = form {
        return g.check_form(endpoint, f).map_err(|v| v.to_error());
    }
    let bytes: &[u8] = match body {
        RequestBody::Buffered(b) => b,
        RequestBody::Streaming => &[],
    };
    g.check(endpoint, model, bytes).map_err(|v| v.to_error())
}

/// An upload's plain form fields.
pub type FormFields = serde_json::Map<String, serde_json::Value>;

/// Whether this request is an upload whose form guardrails may need to read: the gateway
/// streams uploads unread, unless a key's or a rule's guardrails could apply to them.
pub fn form_policed(head: &RequestHead, routes: &RouteTable, admitted: Option<&Admitted>) -> bool {
    head.fields
        .get("content-type")
        .is_some_and(crate::guardrails::form::is_form)
        && (admitted.is_some_and(|a| a.key.guardrails.is_some())
            || routes.router.has_rule_guardrails())
}

/// Read an upload's form (its body is buffered by now); the 400 to answer when it cannot be.
pub fn read_form(head: &RequestHead, body: &RequestBody) -> Result<FormFields, GatewayError> {
    let ct = head.fields.get("content-type").unwrap_or(b"");
    let read = match body {
        RequestBody::Buffered(b) => crate::guardrails::form::text_fields(ct, b),
        RequestBody::Streaming => Err(FormError::Malformed),
    };
    read.map_err(|e| crate::guardrails::form_refusal(e).to_error())
}

/// The body with its `model` replaced by `to` (the backend's `model_map`), or `None` when it
/// is not a JSON object (then it is sent as is).
pub fn map_model(body: &RequestBody, to: &str) -> Option<RequestBody> {
    let RequestBody::Buffered(b) = body else {
        return None;
    };
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(b).ok()?;
    v.insert("model".into(), serde_json::Value::String(to.to_string()));
    serde_json::to_vec(&v)
        .ok()
        .map(|nb| RequestBody::Buffered(Bytes::from(nb)))
}

/// What an exchange error was, for the policy and the breaker.
pub fn error_kind(e: &GatewayError) -> (Failure, Attempt) {
    if e.status == 504 {
        (Failure::Timeout, Attempt::Timeout)
    } else {
        (Failure::Network, Attempt::Network)
    }
}

/// A response status as a failure, with its `Retry-After`.
pub fn status_failure(resp: &ResponseHead) -> Failure {
    let retry_after = resp
        .fields
        .get("retry-after")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| retry::parse_retry_after(v, SystemTime::now()));
    Failure::Status {
        status: resp.status,
        retry_after,
    }
}

/// One request's walk over its candidates.
pub struct Plan<'a> {
    live: &'a Live,
    list: Vec<usize>,
    /// Filtering left nothing: every backend is tried, breakers notwithstanding.
    full_list: bool,
    pos: usize,
    attempts: u32,
    limit: u32,
    method: Method,
    client_id: bool,
    replayable: bool,
    jitter: Jitter,
    delay: Duration,
}

impl<'a> Plan<'a> {
    /// Candidates for a request: a pinned backend alone, else the router's order, filtered
    /// by breakers and health and re-ranked by the table's strategy.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        live: &'a Live,
        routes: &RouteTable,
        pinned: Option<usize>,
        model: Option<&str>,
        request_id: &str,
        method: Method,
        client_id: bool,
        replayable: bool,
    ) -> Plan<'a> {
        let weighted: Vec<usize> = match pinned {
            Some(p) => vec![p],
            None => routes.router.candidates(model, request_id).collect(),
        };
        let mut list = Vec::with_capacity(weighted.len());
        let full_list = balance::order(routes.strategy, &weighted, live, &mut list);
        let limit = live.options.retry.attempt_limit(list.len());
        let seed = crate::router::fnv1a(request_id.as_bytes())
            ^ SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos() as u64);
        Plan {
            live,
            list,
            full_list,
            pos: 0,
            attempts: 0,
            limit,
            method,
            client_id,
            replayable,
            jitter: Jitter::new(seed),
            delay: Duration::ZERO,
        }
    }

    /// The next backend to try (after the backoff a retry asked for), and the half-open probe
    /// ticket it holds, if any. `None` when the candidates or attempts are used up.
    pub async fn next(&mut self) -> Option<(usize, Option<ProbeTicket>)> {
        if self.attempts >= self.limit {
            return None;
        }
        if !self.delay.is_zero() {
            monoio::time::sleep(std::mem::take(&mut self.delay)).await;
        }
        while let Some(&idx) = self.list.get(self.pos) {
            self.pos += 1;
            let probe = if self.full_list {
                None
            } else {
                match self.live.breakers.admit(idx) {
                    Admit::Pass => None,
                    Admit::Probe(t) => Some(t),
                    // Another core holds the probe, or it opened since the list was made.
                    Admit::Skip => continue,
                }
            };
            self.attempts += 1;
            return Some((idx, probe));
        }
        None
    }

    /// A candidate was not tried after all (its `max_in_flight` was full).
    pub fn not_tried(&mut self) {
        self.attempts = self.attempts.saturating_sub(1);
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Report an attempt to the control plane (breakers, latency, admin counters).
    pub fn report(
        &self,
        control: &ControlHandle,
        backend: usize,
        attempt: Attempt,
        latency: Duration,
        probe: Option<ProbeTicket>,
    ) {
        control.outcome(Outcome {
            backend,
            attempt,
            latency,
            probe,
        });
    }

    /// After a failed attempt: `true` to go on (to [`Self::next`]), `false` to stop here.
    /// `sent`: bytes of the request may have reached the backend.
    pub fn again(&mut self, failure: Failure, sent: bool) -> bool {
        let may_resend = if sent && !self.replayable {
            false
        } else {
            retry::may_resend(self.method, sent, self.client_id, false)
        };
        let has_next = self.pos < self.list.len();
        let p = Progress {
            attempts: self.attempts,
            candidates: self.list.len(),
            has_next,
            may_resend,
        };
        match self
            .live
            .options
            .retry
            .decide(&failure, p, &mut self.jitter)
        {
            Decision::Stop => false,
            Decision::Fallback => true,
            Decision::Retry {
                delay,
                same_backend,
            } => {
                self.delay = delay;
                if same_backend {
                    self.pos = self.pos.saturating_sub(1);
                }
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::breaker::BreakerConfig;
    use crate::router::retry::RetryPolicy;
    use crate::router::{Group, Router, Weighted};

    fn live(n: usize, retry: RetryPolicy) -> Live {
        let group = Group::new((0..n).map(|backend| Weighted {
            backend,
            weight: 1.0,
        }));
        let table = RouteTable {
            router: Router::new(Vec::new(), group),
            ..RouteTable::default()
        };
        let board = BreakerBoard::new(n, BreakerConfig::default());
        Live::new(
            table,
            board.view(),
            ResilienceOptions {
                retry,
                ..ResilienceOptions::default()
            },
        )
    }

    fn plan<'a>(l: &'a Live, method: Method, id: bool) -> Plan<'a> {
        let routes = l.routes();
        Plan::new(l, &routes, None, Some("m"), "rid", method, id, true)
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn network_failures_fall_back_through_every_candidate_then_stop() {
        let l = live(3, RetryPolicy::default());
        let mut p = plan(&l, Method::Post, false);
        run(async {
            let mut seen = Vec::new();
            while let Some((b, _)) = p.next().await {
                seen.push(b);
                if !p.again(Failure::Network, false) {
                    break;
                }
            }
            seen.sort();
            assert_eq!(seen, vec![0, 1, 2]);
        });
    }

    #[test]
    fn safety_guard_stops_a_post_without_request_id_after_bytes_were_sent() {
        let l = live(3, RetryPolicy::default());
        let mut p = plan(&l, Method::Post, false);
        run(async {
            assert!(p.next().await.is_some());
            assert!(!p.again(Failure::Network, true));
        });
        let mut p = plan(&l, Method::Post, true);
        run(async {
            assert!(p.next().await.is_some());
            assert!(p.again(Failure::Network, true), "x-request-id allows it");
        });
    }

    #[test]
    fn retry_on_the_only_backend_repeats_it_up_to_max_attempts() {
        let l = live(
            1,
            RetryPolicy {
                enabled: true,
                max_attempts: Some(3),
                backoff_base: Duration::from_millis(1),
                ..RetryPolicy::default()
            },
        );
        let mut p = plan(&l, Method::Get, false);
        run(async {
            let mut n = 0;
            while let Some((b, _)) = p.next().await {
                assert_eq!(b, 0);
                n += 1;
                let f = Failure::Status {
                    status: 503,
                    retry_after: None,
                };
                if !p.again(f, true) {
                    break;
                }
            }
            assert_eq!(n, 3);
            assert_eq!(p.attempts(), 3);
        });
    }
}
