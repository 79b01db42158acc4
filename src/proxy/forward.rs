//! Passthrough: pick a backend, send the request, get the response head; then hand over to
//! [`super::relay`] for the body.
//!
//! Which failures move on to the next candidate, and which are retried on the same backend, is
//! decided by what may have reached the upstream:
//! - connect failed (nothing sent): next candidate;
//! - a *reused* pooled connection failed before any response byte, and the body is in memory:
//!   the server most likely closed it while idle; retry once on a fresh connection;
//! - anything after that: answer 502/504; the request may have been processed.

use std::io;

use bytes::{Bytes, BytesMut};
use futures_util::future::{select, Either};
use monoio::net::TcpStream;

use super::body::{self, BodyError, PumpError};
use super::headers::{self, OutFraming};
use super::json::{self, RequestFacts};
use super::relay::{self, Permits};
use super::{body_too_large, reply_error, After, Core};
use crate::auth::Admitted;
use crate::error::{ErrorType, GatewayError};
use crate::http::io::{read_append, write_all_timeout};
use crate::http::{BodyFraming, HeadError, Method, RequestHead, ResponseHead};
use crate::limits::quota::{Actual, Estimate, Reservation};
use crate::router::breaker::Attempt;
use crate::upstream::connector::connect;
use crate::upstream::{Backend, UpConn};

/// Bodies up to this size are sent in the same buffer and write as the request head.
const COALESCE_BODY_BYTES: usize = 16 * 1024;
/// Room for what the gateway adds to a request head (host, injected headers, request id).
const HEAD_ESTIMATE: usize = 512;

/// Room reserved for reading a response head (most heads and small bodies fit in one read).
const RESPONSE_READ_BYTES: usize = 16 * 1024;

/// A request body as the forwarder sees it.
pub enum RequestBody {
    /// Read whole: may be replayed on a fresh connection or another backend.
    Buffered(Bytes),
    /// Still on the client socket; forwarded as it arrives, so never replayed.
    Streaming,
}

/// A response head from the upstream, with the connection and the body bytes read with it.
pub struct Exchange {
    pub conn: UpConn,
    pub resp: ResponseHead,
    pub leftover: BytesMut,
    /// Attempts the request took (`x-ditto-attempts`).
    pub attempts: u32,
}

/// How an exchange failed.
pub enum ExchangeError {
    /// Nothing reached the backend: the next candidate may be tried.
    NotSent(GatewayError),
    /// The backend may have seen the request: answer with this error.
    Failed(GatewayError),
    /// The client's body could not be read while streaming it: answer this (or just close).
    Client(BodyError),
}

/// Serve a passthrough request (`upstream_path` already starts with `/v1`).
pub async fn passthrough(
    core: &Core,
    client: &mut TcpStream,
    cbuf: &mut BytesMut,
    head: &RequestHead,
    upstream_path: &str,
    request_id: super::request_id::RequestId,
    admitted: Option<Admitted>,
) -> After {
    let gw = &core.gw;
    // The presented key, to keep it out of every header sent upstream.
    let strip = admitted
        .as_ref()
        .and_then(|_| crate::auth::presented(&head.fields).map(|(token, _)| token));
    let routes = gw.live.routes();
    // Uploads are streamed unread, unless guardrails may need their form (`model`, `prompt`);
    // asked only of uploads, so a JSON request pays no second content-type lookup.
    let buffer = body::should_buffer(head);
    let form_policed = !buffer && super::attempts::form_policed(head, &routes, admitted.as_ref());
    let body = if buffer || form_policed {
        match body::read_whole(client, cbuf, head, gw.max_body_bytes).await {
            Ok(b) => RequestBody::Buffered(b),
            Err(e) => {
                return reply_body_error(client, head, &request_id, e, gw.max_body_bytes).await
            }
        }
    } else {
        if let BodyFraming::Length(n) = head.framing {
            if n > gw.max_body_bytes as u64 {
                return reply_body_error(
                    client,
                    head,
                    &request_id,
                    BodyError::TooLarge,
                    gw.max_body_bytes,
                )
                .await;
            }
        }
        RequestBody::Streaming
    };
    let unread_body = matches!(body, RequestBody::Streaming) && head.framing.has_body();

    let facts = match &body {
        RequestBody::Buffered(b) if !b.is_empty() => json::probe(b),
        _ => RequestFacts::default(),
    };
    // Anthropic's count_tokens is answered by the gateway, whatever the backend (issue 6).
    let dialect = super::translate::Dialect::of(head.method, upstream_path);
    if dialect == super::translate::Dialect::CountTokens {
        return super::translate::count_tokens(client, head, &request_id, &body).await;
    }
    // `GET /v1/models/{id}` routes by the model in the path.
    let model = facts.model.as_deref().or_else(|| {
        (head.method == Method::Get)
            .then(|| upstream_path.strip_prefix("/v1/models/"))
            .flatten()
    });

    // Guardrails: after auth, before anything is reserved, so a refusal costs no quota. An
    // upload is policed by its form's model (routing does not read forms).
    let form = match form_policed.then(|| super::attempts::read_form(head, &body)) {
        None => None,
        Some(Ok(f)) => Some(f),
        // Refused whichever guardrails end up applying: without its model, no rule matches.
        Some(Err(e)) => return reply_error(client, head, &request_id, e, unread_body).await,
    };
    let form_model = form
        .as_ref()
        .and_then(|f| f.get("model"))
        .and_then(|m| m.as_str());
    let policed_model = model.or(form_model);
    if let Some(g) = super::attempts::guardrails_for(&routes, policed_model, admitted.as_ref()) {
        let checked = super::attempts::check_guardrails(
            g,
            upstream_path,
            policed_model,
            &body,
            form.as_ref(),
        );
        if let Err(e) = checked {
            return reply_error(client, head, &request_id, e, unread_body).await;
        }
    }
    // Proxy cache: a hit is answered here, before any quota or permit is taken.
    let miss = match crate::cache::serve::lookup(
        core,
        client,
        head,
        upstream_path,
        &body,
        admitted.as_ref(),
        model,
        facts.stream,
        &request_id,
    )
    .await
    {
        Ok(m) => m,
        Err(served) => return served,
    };

    let Some(global) = gw.inflight.try_acquire() else {
        let e = super::inflight_error(gw);
        return reply_error(client, head, &request_id, e, unread_body).await;
    };

    // Rate limits and budgets of the key and its tenant/project/user, from this core's
    // leases. Reserved after the cheap local refusals; given back if nothing is forwarded.
    let key = admitted.as_ref().map(|a| &a.key);
    let scopes = key.map_or(&[][..], |k| &k.scopes[..]);
    let counts_tokens = scopes
        .iter()
        .any(|s| s.limits.tpm.is_some() || !s.budget.is_empty());
    if gw.budget_fail_closed
        && !gw.control.store_ok()
        && scopes.iter().any(|s| !s.budget.is_empty())
    {
        let e = GatewayError::new(
            503,
            ErrorType::Api,
            "store_unavailable",
            "budgets cannot be recorded right now (the store is failing) and --budget-fail-closed is set",
        );
        return reply_error(client, head, &request_id, e, unread_body).await;
    }
    let body_len = match &body {
        RequestBody::Buffered(b) => b.len() as u64,
        RequestBody::Streaming => 0,
    };
    head.probe
        .request(key.map(|k| k.id.as_str()), model, body_len);
    let input_estimate = estimate_input_tokens(body_len);
    let output_estimate = facts.max_output.unwrap_or(0);
    let est = Estimate {
        tokens: input_estimate.saturating_add(output_estimate),
        cost_pico: match model {
            Some(m) if counts_tokens => gw.pricing.estimate(m, input_estimate, output_estimate),
            _ => 0,
        },
        requests_only: false,
    };
    let reservation = if scopes.is_empty() {
        Reservation::default()
    } else {
        match core.quota.reserve(scopes, est).await {
            Ok(r) => r,
            Err(e) => return reply_error(client, head, &request_id, e, unread_body).await,
        }
    };
    // A stream whose tokens count must report usage even if the client did not ask: ask for
    // it upstream, and hide the extra chunk from the client.
    let mut hide_usage = false;
    let rewritten = match &body {
        RequestBody::Buffered(b)
            if counts_tokens && facts.stream && facts.include_usage != Some(true) =>
        {
            match json::with_include_usage(b) {
                Some(nb) => {
                    hide_usage = true;
                    Some(RequestBody::Buffered(nb))
                }
                None => None,
            }
        }
        _ => None,
    };
    let send_body = rewritten.as_ref().unwrap_or(&body);
    let mut tap = key.map(|_| relay::Tap::new(hide_usage, gw.usage_max_body_bytes));
    crate::cache::serve::arm(miss.as_ref(), &mut tap, core);

    let mut last_error: Option<GatewayError> = None;
    let mut saw_candidate = false;
    let mut saw_free = false;
    // A key pinned to a backend (`route`) goes there and nowhere else.
    let pinned = admitted.as_ref().and_then(|a| a.key.route);
    let mut plan = super::attempts::Plan::new(
        &gw.live,
        &routes,
        pinned,
        model,
        &request_id,
        head.method,
        head.fields.get("x-request-id").is_some(),
        matches!(body, RequestBody::Buffered(_)),
    );
    while let Some((idx, probe)) = plan.next().await {
        saw_candidate = true;
        let backend = &gw.backends[idx];
        let backend_permit = match &backend.inflight {
            Some(limiter) => match limiter.try_acquire() {
                Some(p) => Some(p),
                None => {
                    plan.not_tried();
                    continue;
                }
            },
            None => None,
        };
        saw_free = true;
        head.probe.attempt(idx);
        // `model_map`: this backend's name for the model (one copy of the body, only when
        // the name changes).
        let mapped = model.and_then(|m| backend.map_model(m));
        let mapped_body = mapped.and_then(|to| super::attempts::map_model(send_body, to));
        let attempt_body = mapped_body.as_ref().unwrap_or(send_body);
        let _load = gw.live.enter(idx);
        let started = std::time::Instant::now();
        // Translation backends, Anthropic inbound and the Responses shim (issue 6) take the
        // converting path; it settles through the same `account` as passthrough.
        let mode = super::translate::mode(backend, dialect);
        if mode == super::translate::Mode::Translate {
            let out = super::translate::serve(
                core,
                client,
                head,
                backend,
                &request_id,
                strip,
                &body,
                dialect,
            )
            .await;
            match out {
                super::translate::Outcome::NotSent(e) => {
                    let (failure, attempt) = super::attempts::error_kind(&e);
                    plan.report(&gw.control, idx, attempt, started.elapsed(), probe);
                    last_error = Some(e.with_backend(&backend.name));
                    if !plan.again(failure, false) {
                        break;
                    }
                    continue;
                }
                super::translate::Outcome::Done(d) => {
                    plan.report(
                        &gw.control,
                        idx,
                        Attempt::Status(d.status),
                        started.elapsed(),
                        probe,
                    );
                    settle_translated(core, key, model, &facts, reservation, &d, &head.probe);
                    return d.after;
                }
            }
        }
        let result = exchange(
            core,
            client,
            cbuf,
            head,
            backend,
            upstream_path,
            &request_id,
            strip,
            attempt_body,
        )
        .await;
        super::observe::attempt_result(head, &result);
        match result {
            Ok(ex)
                if mode == super::translate::Mode::PassThenShim
                    && super::translate::shim_on(ex.resp.status) =>
            {
                // No Responses API upstream: drop that answer (its connection with it) and
                // ask the same backend again as chat completions.
                let status = ex.resp.status;
                drop(ex);
                plan.report(
                    &gw.control,
                    idx,
                    Attempt::Status(status),
                    started.elapsed(),
                    probe,
                );
                let out = super::translate::serve(
                    core,
                    client,
                    head,
                    backend,
                    &request_id,
                    strip,
                    &body,
                    dialect,
                )
                .await;
                match out {
                    super::translate::Outcome::NotSent(e) => {
                        last_error = Some(e.with_backend(&backend.name));
                    }
                    super::translate::Outcome::Done(d) => {
                        settle_translated(core, key, model, &facts, reservation, &d, &head.probe);
                        return d.after;
                    }
                }
            }
            Ok(mut ex) => {
                let status = ex.resp.status;
                plan.report(
                    &gw.control,
                    idx,
                    Attempt::Status(status),
                    started.elapsed(),
                    probe,
                );
                if status >= 400 && plan.again(super::attempts::status_failure(&ex.resp), true) {
                    // Not relayed: the next attempt answers instead.
                    last_error = Some(
                        GatewayError::bad_gateway(format!(
                            "backend \"{}\" answered HTTP {status}",
                            backend.name
                        ))
                        .with_backend(&backend.name),
                    );
                    continue;
                }
                ex.attempts = plan.attempts();
                let permits = Permits {
                    _global: global,
                    _backend: backend_permit,
                };
                let after = relay::respond(
                    core,
                    client,
                    head,
                    backend,
                    ex,
                    &request_id,
                    permits,
                    tap.as_mut(),
                )
                .await;
                crate::cache::serve::store(core, miss, tap.as_ref());
                if let (Some(k), Some(t)) = (key, &tap) {
                    account(
                        core,
                        k,
                        mapped.or(model),
                        facts.service_tier.as_deref(),
                        reservation,
                        t.status,
                        t.usage(),
                        &head.probe,
                    );
                }
                return after;
            }
            Err(ExchangeError::NotSent(e)) => {
                let (failure, attempt) = super::attempts::error_kind(&e);
                plan.report(&gw.control, idx, attempt, started.elapsed(), probe);
                last_error = Some(e.with_backend(&backend.name));
                if !plan.again(failure, false) {
                    break;
                }
            }
            Err(ExchangeError::Failed(e)) => {
                let (failure, attempt) = super::attempts::error_kind(&e);
                plan.report(&gw.control, idx, attempt, started.elapsed(), probe);
                let e = e.with_backend(&backend.name);
                if plan.again(failure, true) {
                    last_error = Some(e);
                    continue;
                }
                // The backend may have seen it: the request counts, its tokens do not.
                core.quota.settle(reservation, Actual::NOTHING);
                let e = e.with_header(
                    super::attempts::ATTEMPTS_HEADER,
                    plan.attempts().to_string(),
                );
                return reply_error(client, head, &request_id, e, true).await;
            }
            Err(ExchangeError::Client(e)) => {
                core.quota.cancel(reservation);
                return reply_body_error(client, head, &request_id, e, gw.max_body_bytes).await;
            }
        }
    }
    let e = match (saw_candidate, saw_free, last_error) {
        (false, _, _) => GatewayError::bad_gateway(match model {
            Some(m) => format!("no backend is configured for model \"{m}\""),
            None => "no backend is configured".to_string(),
        }),
        (true, false, _) => GatewayError::new(
            429,
            ErrorType::RateLimit,
            "inflight_limit_backend",
            "every candidate backend is at its max_in_flight limit",
        ),
        (_, _, Some(e)) => e.with_header(
            super::attempts::ATTEMPTS_HEADER,
            plan.attempts().to_string(),
        ),
        (_, _, None) => GatewayError::bad_gateway("no backend could be reached"),
    };
    // Nothing reached an upstream: a refused request consumes no quota (REFERENCE 4).
    core.quota.cancel(reservation);
    reply_error(client, head, &request_id, e, unread_body).await
}

/// Prompt tokens estimated from a body's size: about 4 bytes per token for English text,
/// and a JSON body's field names and punctuation make that an over-estimate for most.
pub fn estimate_input_tokens(body_bytes: u64) -> u64 {
    body_bytes.div_ceil(4)
}

/// Settle a relayed request's reservation to the usage its response reported, and add it to
/// the key's cost totals. An error status refunds tokens; a response whose usage never came
/// (a stream cut short, an upstream that does not report it) keeps what was reserved.
#[allow(clippy::too_many_arguments)]
fn account(
    core: &Core,
    key: &crate::auth::VirtualKey,
    model: Option<&str>,
    service_tier: Option<&str>,
    reservation: Reservation,
    status: u16,
    usage: Option<crate::usage::Usage>,
    probe: &crate::metrics::Probe,
) {
    let ok = (200..300).contains(&status);
    let model = model.unwrap_or("");
    let cost = usage.map(|u| core.gw.pricing.cost(model, &u, service_tier));
    if let Some(u) = &usage {
        probe.usage(u.prompt_tokens, u.completion_tokens, cost);
    }
    let actual = if ok {
        Actual {
            tokens: usage.map(|u| u.total_tokens),
            cost_pico: cost,
        }
    } else {
        Actual::NOTHING
    };
    core.quota.settle(reservation, actual);
    if ok || usage.is_some() {
        let u = usage.unwrap_or_default();
        core.quota.record_usage(
            &key.id,
            model,
            u.prompt_tokens,
            u.completion_tokens,
            cost.unwrap_or(0),
        );
    }
}

/// [`account`] for a request served by [`super::translate::serve`]: a request refused before
/// reaching the upstream consumes no quota.
#[allow(clippy::too_many_arguments)]
fn settle_translated(
    core: &Core,
    key: Option<&std::sync::Arc<crate::auth::VirtualKey>>,
    model: Option<&str>,
    facts: &RequestFacts<'_>,
    reservation: Reservation,
    d: &super::translate::Done,
    probe: &crate::metrics::Probe,
) {
    match key {
        Some(k) if d.sent => account(
            core,
            k,
            model,
            facts.service_tier.as_deref(),
            reservation,
            d.status,
            d.usage,
            probe,
        ),
        _ => core.quota.cancel(reservation),
    }
}

async fn reply_body_error(
    client: &mut TcpStream,
    head: &RequestHead,
    request_id: &str,
    e: BodyError,
    max: usize,
) -> After {
    let e = match e {
        BodyError::Closed => return After::Close,
        BodyError::TooLarge => body_too_large(max),
        BodyError::Timeout => GatewayError::new(
            408,
            ErrorType::InvalidRequest,
            "request_timeout",
            "timed out reading the request body",
        ),
        BodyError::Malformed(m) => GatewayError::bad_request("invalid_request", m),
    };
    reply_error(client, head, request_id, e, true).await
}

/// One request/response-head exchange with `backend`, with the fresh-connection retry.
#[allow(clippy::too_many_arguments)]
async fn exchange(
    core: &Core,
    client: &mut TcpStream,
    cbuf: &mut BytesMut,
    head: &RequestHead,
    backend: &Backend,
    upstream_path: &str,
    request_id: &str,
    strip: Option<&[u8]>,
    body: &RequestBody,
) -> Result<Exchange, ExchangeError> {
    let framing = match body {
        RequestBody::Buffered(b)
            if b.is_empty() && !head.framing.has_body() && !needs_length(head.method) =>
        {
            OutFraming::None
        }
        RequestBody::Buffered(b) => OutFraming::Length(b.len() as u64),
        RequestBody::Streaming => match head.framing {
            BodyFraming::Length(n) => OutFraming::Length(n),
            BodyFraming::Chunked => OutFraming::Chunked,
            _ => OutFraming::None,
        },
    };
    // A small body rides in the head's buffer: one allocation and one write for both.
    let inline = match body {
        RequestBody::Buffered(b) if b.len() <= COALESCE_BODY_BYTES => b.len(),
        _ => 0,
    };
    let mut req = BytesMut::with_capacity(HEAD_ESTIMATE + head.fields.raw_len() + inline);
    headers::upstream_request(
        &mut req,
        head,
        backend,
        upstream_path,
        request_id,
        strip,
        framing,
    );

    match body {
        RequestBody::Buffered(b) => {
            let head_request = head.method == Method::Head;
            let rest = if inline == b.len() {
                req.extend_from_slice(b);
                Bytes::new()
            } else {
                b.clone()
            };
            send_buffered(
                core,
                backend,
                req.freeze(),
                rest,
                head_request,
                Some(&*client),
            )
            .await
        }
        RequestBody::Streaming => {
            let req = req.freeze();
            let mut conn = checkout_or_connect(core, backend).await?;
            if let Err(e) = write_all_timeout(&mut conn.stream, req.clone(), backend.timeout).await
            {
                // No body byte has been taken from the client yet, so a pooled connection the
                // server closed meanwhile can still be swapped for a fresh one.
                if !conn.reused {
                    return Err(ExchangeError::Failed(send_failed(backend, &e)));
                }
                conn = connect(backend, &core.gw.tls)
                    .await
                    .map_err(connect_error)?;
                write_all_timeout(&mut conn.stream, req, backend.timeout)
                    .await
                    .map_err(|e| ExchangeError::Failed(send_failed(backend, &e)))?;
            }
            if let Err(e) = body::send_continue(client, head).await {
                return Err(ExchangeError::Client(e));
            }
            match body::pump(
                client,
                cbuf,
                head,
                core.gw.max_body_bytes,
                &mut conn,
                backend.timeout,
            )
            .await
            {
                Ok(()) => {}
                Err(PumpError::Client(e)) => return Err(ExchangeError::Client(e)),
                Err(PumpError::Upstream(e)) => {
                    return Err(ExchangeError::Failed(send_failed(backend, &e)))
                }
            }
            read_response_head(
                core,
                conn,
                backend,
                head.method == Method::Head,
                Some(&*client),
            )
            .await
            .map_err(HeadFailure::into_exchange_error)
        }
    }
}

/// POST/PUT/PATCH always carry a length, even an empty one (some servers insist).
fn needs_length(m: Method) -> bool {
    matches!(m, Method::Post | Method::Put | Method::Patch)
}

/// Send a request whose body is in memory and read the response head; retries once on a fresh
/// connection when a reused one turns out dead. Shared by passthrough and `/v1/models`. With
/// `watch`, the wait for the head ends as soon as that client closes its connection.
pub async fn send_buffered(
    core: &Core,
    backend: &Backend,
    req: Bytes,
    body: Bytes,
    head_request: bool,
    watch: Option<&TcpStream>,
) -> Result<Exchange, ExchangeError> {
    let (first, second) = (req, body);
    let mut fresh_only = false;
    loop {
        let mut conn = if fresh_only {
            connect(backend, &core.gw.tls)
                .await
                .map_err(connect_error)?
        } else {
            checkout_or_connect(core, backend).await?
        };
        let reused = conn.reused;
        let sent = async {
            // A backend that stops reading must not hold the permits forever.
            write_all_timeout(&mut conn.stream, first.clone(), backend.timeout).await?;
            write_all_timeout(&mut conn.stream, second.clone(), backend.timeout).await
        }
        .await;
        if let Err(e) = sent {
            if reused {
                fresh_only = true;
                continue;
            }
            return Err(ExchangeError::Failed(send_failed(backend, &e)));
        }
        match read_response_head(core, conn, backend, head_request, watch).await {
            Ok(ex) => return Ok(ex),
            Err(HeadFailure::Upstream(_, true)) if reused => fresh_only = true,
            Err(f) => return Err(f.into_exchange_error()),
        }
    }
}

async fn checkout_or_connect(core: &Core, backend: &Backend) -> Result<UpConn, ExchangeError> {
    match core.pool.checkout(backend) {
        Some(c) => Ok(c),
        None => connect(backend, &core.gw.tls).await.map_err(connect_error),
    }
}

fn connect_error(e: crate::upstream::connector::ConnectError) -> ExchangeError {
    ExchangeError::NotSent(if e.timed_out {
        GatewayError::timeout(e.message)
    } else {
        GatewayError::bad_gateway(e.message)
    })
}

fn send_failed(backend: &Backend, e: &io::Error) -> GatewayError {
    GatewayError::bad_gateway(format!(
        "sending the request to backend \"{}\" failed: {e}",
        backend.name
    ))
}

/// Why no response head was read.
enum HeadFailure {
    /// The upstream failed; the flag tells whether the connection died before sending a single
    /// byte (a reused connection's tell-tale of an idle close, worth one retry).
    Upstream(GatewayError, bool),
    /// The client closed its connection while we waited: nobody to answer.
    ClientGone,
}

impl HeadFailure {
    fn into_exchange_error(self) -> ExchangeError {
        match self {
            HeadFailure::Upstream(e, _) => ExchangeError::Failed(e),
            HeadFailure::ClientGone => ExchangeError::Client(BodyError::Closed),
        }
    }
}

/// Read the response head within the backend's timeout, skipping interim 1xx responses.
///
/// With `watch`, a client that closes its connection meanwhile ends the wait at once: a
/// non-streamed completion can take minutes before its head, and the upstream request (its
/// connection, dropped here and never pooled) and the permits must not outlive the client.
async fn read_response_head(
    core: &Core,
    mut conn: UpConn,
    backend: &Backend,
    head_request: bool,
    watch: Option<&TcpStream>,
) -> Result<Exchange, HeadFailure> {
    let deadline = monoio::time::Instant::now() + backend.timeout;
    let mut buf = core.bufs.take(RESPONSE_READ_BYTES);
    let mut got_any = false;
    let mut client_gone = std::pin::pin!(async {
        match watch {
            Some(client) => relay::client_closed_after(client, relay::WATCH_CLIENT_AFTER).await,
            None => std::future::pending().await,
        }
    });
    loop {
        match ResponseHead::parse_from(&mut buf, head_request) {
            Ok(Some(resp)) => {
                if resp.status == 101 {
                    return Err(HeadFailure::Upstream(
                        GatewayError::bad_gateway(format!(
                            "backend \"{}\" tried to switch protocols",
                            backend.name
                        )),
                        false,
                    ));
                }
                if (100..200).contains(&resp.status) {
                    continue;
                }
                return Ok(Exchange {
                    conn,
                    resp,
                    leftover: buf,
                    attempts: 1,
                });
            }
            Ok(None) => {}
            Err(e) => return Err(HeadFailure::Upstream(bad_response(backend, &e), false)),
        }
        let read = std::pin::pin!(monoio::time::timeout_at(
            deadline,
            read_append(&mut conn.stream, &mut buf, RESPONSE_READ_BYTES),
        ));
        let read = match select(read, client_gone.as_mut()).await {
            Either::Left((r, _)) => r,
            Either::Right(_) => return Err(HeadFailure::ClientGone),
        };
        let fail = |e: GatewayError, before_any: bool| Err(HeadFailure::Upstream(e, before_any));
        match read {
            Err(_) => {
                return fail(
                    GatewayError::timeout(format!(
                        "backend \"{}\" sent no response within {:?}",
                        backend.name, backend.timeout
                    )),
                    false,
                )
            }
            Ok(Ok(0)) => {
                return fail(
                    GatewayError::bad_gateway(format!(
                        "backend \"{}\" closed the connection before responding",
                        backend.name
                    )),
                    !got_any,
                )
            }
            Ok(Ok(_)) => got_any = true,
            Ok(Err(e)) => {
                return fail(
                    GatewayError::bad_gateway(format!(
                        "reading the response of backend \"{}\" failed: {e}",
                        backend.name
                    )),
                    !got_any,
                )
            }
        }
    }
}

fn bad_response(backend: &Backend, e: &HeadError) -> GatewayError {
    GatewayError::bad_gateway(format!(
        "backend \"{}\" sent an invalid response: {}",
        backend.name,
        e.reason()
    ))
}
