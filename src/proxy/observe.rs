//! Where the pipeline meets observability: the per-request wrapper around [`super::handle`],
//! the metrics endpoints, and small helpers that keep the pipeline's own call sites one line.

use std::fmt::Write;

use bytes::{Bytes, BytesMut};
use monoio::net::TcpStream;

use super::forward::{Exchange, ExchangeError};
use super::{After, Core};
use crate::error::{ErrorType, GatewayError};
use crate::http::io::write_all_timeout;
use crate::http::limits::CLIENT_WRITE_TIMEOUT;
use crate::http::{Method, RequestHead};
use crate::metrics::{BackendOutcome, Finish};

/// Serve one request with its probe started: counted in the metrics, logged and traced when
/// it is over, however it ends (the guard finishes it on drop, a cancelled task included).
pub async fn serve_request(
    core: &Core,
    client: &mut TcpStream,
    cbuf: &mut BytesMut,
    mut head: RequestHead,
) -> After {
    let probe = core.obs.start(
        head.method.as_str(),
        head.target(),
        head.fields.get(crate::otel::TRACEPARENT),
    );
    if let crate::http::BodyFraming::Length(n) = head.framing {
        probe.request(None, None, n);
    }
    head.probe = probe.clone();
    // Decided here so that the guard can put it in the access line without a copy per step.
    let request_id = core.ids.from_client_or_new(head.fields.get("x-request-id"));
    let _finish = Finish::new(&core.obs, probe, request_id);
    super::handle(core, client, cbuf, head, request_id).await
}

/// The response to a request head that could not be parsed (400, 408, 431, ...): counted as a
/// refused request and carrying the overhead header like every other response.
pub fn head_error(core: &Core, e: GatewayError) -> Bytes {
    let request_id = core.ids.next_id();
    let probe = core.obs.start("OTHER", "", None);
    let _finish = Finish::new(&core.obs, probe.clone(), request_id);
    probe.on_error(e).to_response(&request_id, true)
}

/// Record what an upstream attempt came to (one line after `exchange(...)`).
pub fn attempt_result(head: &RequestHead, result: &Result<Exchange, ExchangeError>) {
    let outcome = match result {
        Ok(ex) => Some(BackendOutcome::Status(ex.resp.status)),
        Err(ExchangeError::NotSent(e)) if e.status == 504 => Some(BackendOutcome::Timeout),
        Err(ExchangeError::NotSent(_)) => Some(BackendOutcome::ConnectError),
        Err(ExchangeError::Failed(e)) if e.status == 504 => Some(BackendOutcome::Timeout),
        Err(ExchangeError::Failed(_)) => Some(BackendOutcome::IoError),
        Err(ExchangeError::Client(_)) => None,
    };
    head.probe.attempt_done(outcome);
}

/// `GET /metrics` (JSON counters, always served) and `GET /metrics/prometheus` (text format
/// 0.0.4, with `--prometheus-metrics`). Open like `/health`, as in the original: put the
/// gateway behind a network policy if its counters (key ids, model names) are sensitive.
pub async fn metrics(
    core: &Core,
    client: &mut TcpStream,
    head: &RequestHead,
    request_id: &str,
) -> After {
    let prometheus = head.path() == "/metrics/prometheus";
    if prometheus && !core.gw.obs.prometheus {
        let e = GatewayError::new(
            404,
            ErrorType::InvalidRequest,
            "not_found",
            "Prometheus metrics are off: start the gateway with --prometheus-metrics",
        );
        return super::reply_error(client, head, request_id, e, head.framing.has_body()).await;
    }
    // Rendering sums every core's counters: microseconds to a few milliseconds with many
    // key and model series, done on this core like any other small response.
    let (body, content_type) = if prometheus {
        (
            crate::metrics::render_prometheus(&core.gw.obs.registry),
            "text/plain; version=0.0.4; charset=utf-8",
        )
    } else {
        (
            crate::metrics::render_json(&core.gw.obs.registry),
            "application/json",
        )
    };
    let close = !head.keep_alive || head.framing.has_body();
    let mut out = BytesMut::with_capacity(256 + body.len());
    let _ = write!(
        out,
        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\ncache-control: no-store\r\nx-request-id: {request_id}\r\nx-ditto-request-id: {request_id}\r\n",
        body.len()
    );
    out.extend_from_slice(head.version.connection_field(close).as_bytes());
    let sent = if head.method == Method::Head {
        0
    } else {
        body.len()
    };
    head.probe.on_reply(200, sent, &mut out);
    out.extend_from_slice(b"\r\n");
    if head.method != Method::Head {
        out.extend_from_slice(body.as_bytes());
    }
    match write_all_timeout(client, out.freeze(), CLIENT_WRITE_TIMEOUT).await {
        Ok(()) if !close => After::KeepAlive,
        _ => After::Close,
    }
}
