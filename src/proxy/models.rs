//! `GET /v1/models`: ask every passthrough backend at once and merge their `data[]` by id.
//!
//! The requests run concurrently on this core; one slow or failing backend does not hide the
//! others' models. 502 only when every backend failed.

use bytes::{Bytes, BytesMut};
use futures_util::future::join_all;
use monoio::net::TcpStream;

use super::forward::{send_buffered, Exchange, ExchangeError};
use super::headers::{self, OutFraming};
use super::{reply_error, reply_json, After, Core};
use crate::auth::Admitted;
use crate::error::GatewayError;
use crate::http::io::read_append;
use crate::http::{BodyFraming, ChunkedDecoder, RequestHead};
use crate::upstream::Backend;

/// Largest models list we read from one backend.
const MAX_MODELS_BODY: usize = 8 * 1024 * 1024;

/// Serve the aggregated list.
pub async fn list(
    core: &Core,
    client: &mut TcpStream,
    head: &RequestHead,
    request_id: &str,
    admitted: Option<&Admitted>,
) -> After {
    // A key pinned to one backend sees that backend's models only.
    let all = &core.gw.backends;
    let backends = match admitted.and_then(|a| a.key.route) {
        Some(i) => &all[i..=i],
        None => &all[..],
    };
    let strip = admitted.and_then(|_| crate::auth::presented(&head.fields).map(|(token, _)| token));
    if backends.is_empty() {
        return reply_error(
            client,
            head,
            request_id,
            GatewayError::bad_gateway("no passthrough backend is configured"),
            false,
        )
        .await;
    }
    let results = join_all(
        backends
            .iter()
            .map(|b| fetch(core, head, b, request_id, strip, backends.len() > 1)),
    )
    .await;
    let mut seen = ahash::AHashSet::new();
    let mut data = Vec::new();
    let mut last_error = None;
    for (b, r) in backends.iter().zip(results) {
        match r {
            Ok(models) => {
                for m in models {
                    let id = m.get("id").and_then(|v| v.as_str()).map(str::to_string);
                    if let Some(id) = id {
                        if seen.insert(id) {
                            data.push(m);
                        }
                    }
                }
            }
            Err(e) => {
                crate::warn!("models from backend \"{}\": {e}", b.name);
                last_error = Some(GatewayError::bad_gateway(e).with_backend(&b.name));
            }
        }
    }
    if let (true, Some(e)) = (seen.is_empty() && data.is_empty(), last_error) {
        return reply_error(client, head, request_id, e, false).await;
    }
    let body = serde_json::json!({"object": "list", "data": data});
    let body = serde_json::to_vec(&body).unwrap_or_default();
    reply_json(client, head, request_id, 200, &body, false).await
}

async fn fetch(
    core: &Core,
    head: &RequestHead,
    backend: &Backend,
    request_id: &str,
    strip: Option<&[u8]>,
    fan_out: bool,
) -> Result<Vec<serde_json::Value>, String> {
    // A translation backend has no models endpoint to ask: its list is configured.
    if let Some(models) = super::translate::static_models(backend) {
        return Ok(models);
    }
    // A backend at its max_in_flight is skipped like any full candidate.
    let _permit = match &backend.inflight {
        Some(l) => Some(l.try_acquire().ok_or("at its max_in_flight limit")?),
        None => None,
    };
    let mut req = BytesMut::with_capacity(512);
    if fan_out {
        // Asking several backends: the client's headers (its provider credential in Mode B,
        // cookies, organisation ids) belong to at most one of them, so send none.
        headers::own_request(&mut req, backend, "/v1/models", request_id);
    } else {
        headers::upstream_request(
            &mut req,
            head,
            backend,
            "/v1/models",
            request_id,
            strip,
            OutFraming::None,
        );
    }
    let ex = match send_buffered(core, backend, req.freeze(), Bytes::new(), false, None).await {
        Ok(ex) => ex,
        Err(ExchangeError::NotSent(e) | ExchangeError::Failed(e)) => return Err(e.message),
        Err(ExchangeError::Client(_)) => return Err("unexpected client error".into()),
    };
    let status = ex.resp.status;
    let body = read_to_end(core, backend, ex).await?;
    if !(200..300).contains(&status) {
        return Err(format!("status {status}"));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("invalid models JSON: {e}"))?;
    match v.get("data") {
        Some(serde_json::Value::Array(a)) => Ok(a.clone()),
        _ => Err("models response has no data[]".into()),
    }
}

/// Read a whole (bounded) response body; pools the connection when it ended cleanly.
async fn read_to_end(core: &Core, backend: &Backend, ex: Exchange) -> Result<Bytes, String> {
    let Exchange {
        mut conn,
        resp,
        leftover,
        ..
    } = ex;
    let mut buf = leftover;
    let mut body = BytesMut::new();
    let mut decoder = ChunkedDecoder::new();
    loop {
        let done = match resp.framing {
            BodyFraming::Empty => true,
            BodyFraming::Length(n) => buf.len() as u64 >= n,
            BodyFraming::Chunked => {
                let p = decoder
                    .decode(&buf, |r| body.extend_from_slice(&buf[r]))
                    .map_err(|e| e.to_string())?;
                let _ = buf.split_to(p.consumed);
                p.done
            }
            BodyFraming::UntilClose => false,
        };
        if done {
            if let BodyFraming::Length(n) = resp.framing {
                body = buf.split_to(n as usize);
            }
            if resp.keep_alive && buf.is_empty() {
                core.pool.checkin(backend, conn);
            }
            return Ok(body.freeze());
        }
        if buf.len() + body.len() > MAX_MODELS_BODY {
            return Err("models response too large".into());
        }
        match monoio::time::timeout(
            backend.timeout,
            read_append(&mut conn.stream, &mut buf, 16 * 1024),
        )
        .await
        {
            Ok(Ok(0)) if resp.framing == BodyFraming::UntilClose => return Ok(buf.freeze()),
            Ok(Ok(0)) => return Err("connection closed mid-body".into()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("timed out reading the body".into()),
        }
    }
}
