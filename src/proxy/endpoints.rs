//! The gateway's own small endpoints: `/health` (liveness) and `/ready` (readiness).

use monoio::net::TcpStream;

use super::{reply_json, After, Core};
use crate::http::RequestHead;

/// `GET /health`: the process is up. No auth, no dependency checks.
pub async fn health(
    _core: &Core,
    client: &mut TcpStream,
    head: &RequestHead,
    request_id: &str,
) -> After {
    reply_json(client, head, request_id, 200, br#"{"status":"ok"}"#, false).await
}

/// `GET /ready`: 200 when this core accepts traffic and has somewhere to send it; 503 while
/// draining (so a load balancer stops sending) or with no passthrough backend.
pub async fn ready(
    core: &Core,
    client: &mut TcpStream,
    head: &RequestHead,
    request_id: &str,
) -> After {
    let draining = core.shutdown.is_fired();
    let backends = core.gw.backends.len();
    // A failing store makes the gateway not ready only where budgets fail closed; otherwise
    // it keeps serving and the check tells operators why usage is being held in memory.
    let store_ok = core.gw.control.store_ok();
    // Active health checks: names of the backends found down; none healthy = not ready.
    let live = &core.gw.live;
    let down: Vec<&str> = core
        .gw
        .backends
        .iter()
        .filter(|b| !live.breakers.is_healthy(b.index))
        .map(|b| b.name.as_str())
        .collect();
    let some_healthy = backends == 0 || down.len() < backends;
    let ok = !draining && backends > 0 && some_healthy && (store_ok || !core.gw.budget_fail_closed);
    let body = serde_json::json!({
        "status": if ok { "ready" } else { "not_ready" },
        "checks": [
            {"name": "draining", "ok": !draining},
            {"name": "backends", "ok": backends > 0, "count": backends},
            {"name": "store", "ok": store_ok, "store": core.gw.control.store_name()},
            {"name": "health", "ok": some_healthy, "enabled": live.options.health.is_some(), "down": down},
        ],
    });
    let body = serde_json::to_vec(&body).unwrap_or_default();
    reply_json(
        client,
        head,
        request_id,
        if ok { 200 } else { 503 },
        &body,
        false,
    )
    .await
}
