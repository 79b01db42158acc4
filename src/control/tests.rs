//! The control plane without a network: admin calls, leases and settlements, restarts.

use std::time::Duration;

use serde_json::{json, Value};

use super::keys::parse_key;
use super::meter::{Kind, MeterId};
use super::store::memory::MemoryStore;
use super::*;

fn opts() -> PlaneOptions {
    PlaneOptions {
        cores: 2,
        flush_interval: Duration::from_millis(50),
        audit_retention: None,
        backends: vec!["openai".into()],
    }
}

fn config_key(v: Value) -> KeyRecord {
    let mut r = parse_key(&v, false, false, 0).expect("key").record;
    r.source = "config".into();
    r
}

fn call(
    h: &ControlHandle,
    role: Role,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> AdminReply {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    h.admin_blocking(AdminRequest {
        method: method.into(),
        path: path.into(),
        query: query.into(),
        body,
        role,
    })
    .expect("plane alive")
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("runtime");
    rt.block_on(f)
}

#[test]
fn admin_key_lifecycle_is_live_in_the_snapshot() {
    let (h, _) = ControlHandle::start(opts(), Box::new(MemoryStore::new()), vec![]).expect("start");
    assert!(h.snapshot().keys.is_empty());
    let v0 = h.version();
    let r = call(
        &h,
        Role::Admin,
        "POST",
        "/admin/keys",
        Some(json!({"id": "a", "limits": {"rpm": 5}})),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    let token = r.body["token"]
        .as_str()
        .expect("generated token")
        .to_string();
    assert!(token.starts_with("sk-ditto-"));
    assert!(h.version() > v0, "published before the answer");
    assert_eq!(h.snapshot().keys.len(), 1);

    // Never shown again.
    let r = call(&h, Role::Admin, "GET", "/admin/keys/a", None);
    assert_eq!(r.body["token"], "redacted");
    assert!(!r.body.to_string().contains(&token));

    let r = call(
        &h,
        Role::Admin,
        "PUT",
        "/admin/keys/a",
        Some(json!({"enabled": false})),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["limits"]["rpm"], 5, "fields not given are kept");
    assert_eq!(r.body["enabled"], false);

    let r = call(&h, Role::Admin, "DELETE", "/admin/keys/a", None);
    assert_eq!(r.status, 200);
    assert!(h.snapshot().keys.is_empty());
    let r = call(&h, Role::Admin, "GET", "/admin/audit", None);
    let actions: Vec<&str> = r.body["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions, ["key.delete", "key.update", "key.create"]);
    assert!(
        !r.body.to_string().contains(&token),
        "the audit log has no tokens"
    );
}

#[test]
fn admin_errors_name_the_field_and_conflicts_are_409() {
    let (h, _) = ControlHandle::start(
        opts(),
        Box::new(MemoryStore::new()),
        vec![config_key(json!({"id": "cfg", "token": "sk-cfg"}))],
    )
    .expect("start");
    let post = |b: Value| call(&h, Role::Admin, "POST", "/admin/keys", Some(b));
    let r = post(json!({"id": "x", "limits": {"rpm": "ten"}}));
    assert_eq!(
        (r.status, r.body["error"]["param"].as_str()),
        (400, Some("limits.rpm"))
    );
    let r = post(json!({"id": "x", "route": "nowhere"}));
    assert_eq!(
        (r.status, r.body["error"]["param"].as_str()),
        (400, Some("route"))
    );
    let r = post(json!({"id": "x", "tokn": "a"}));
    assert_eq!(r.body["error"]["param"], "tokn");
    assert_eq!(post(json!({"id": "cfg"})).status, 409, "duplicate id");
    let r = post(json!({"id": "y", "token": "sk-cfg"}));
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (409, Some("duplicate_token"))
    );
    assert_eq!(
        call(&h, Role::Admin, "POST", "/admin/keys", None).status,
        400
    );
    assert_eq!(
        call(&h, Role::Admin, "GET", "/admin/nothing", None).status,
        404
    );
    assert_eq!(
        call(&h, Role::Admin, "PATCH", "/admin/budgets", None).status,
        405
    );
}

#[test]
fn read_and_tenant_tokens_see_and_change_only_what_they_may() {
    let (h, _) = ControlHandle::start(
        opts(),
        Box::new(MemoryStore::new()),
        vec![
            config_key(json!({"id": "acme-1", "token": "t1", "tenant_id": "acme"})),
            config_key(json!({"id": "beta-1", "token": "t2", "tenant_id": "beta"})),
        ],
    )
    .expect("start");
    let acme = Role::Tenant {
        tenant: "acme".into(),
        write: true,
    };
    let r = call(
        &h,
        Role::Read,
        "POST",
        "/admin/keys",
        Some(json!({"id": "z"})),
    );
    assert_eq!(r.status, 403);
    assert_eq!(
        call(&h, Role::Read, "GET", "/admin/keys", None).body["data"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let r = call(&h, acme.clone(), "GET", "/admin/keys", None);
    let ids: Vec<&str> = r.body["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|k| k["id"].as_str())
        .collect();
    assert_eq!(ids, ["acme-1"]);
    assert_eq!(
        call(&h, acme.clone(), "GET", "/admin/keys/beta-1", None).status,
        404
    );
    assert_eq!(
        call(&h, acme.clone(), "DELETE", "/admin/keys/beta-1", None).status,
        404
    );
    let r = call(
        &h,
        acme.clone(),
        "POST",
        "/admin/keys",
        Some(json!({"id": "acme-2", "tenant_id": "beta"})),
    );
    assert_eq!(r.status, 403);
    let r = call(
        &h,
        acme.clone(),
        "POST",
        "/admin/keys",
        Some(json!({"id": "acme-2"})),
    );
    assert_eq!(
        (r.status, r.body["tenant_id"].as_str()),
        (201, Some("acme"))
    );
    assert_eq!(
        call(&h, acme, "POST", "/admin/reservations/reap", None).status,
        403
    );
}

#[test]
fn litellm_key_api_round_trip() {
    let (h, _) = ControlHandle::start(opts(), Box::new(MemoryStore::new()), vec![]).expect("start");
    let r = call(
        &h,
        Role::Admin,
        "POST",
        "/key/generate",
        Some(
            json!({"key_alias": "svc", "max_budget": 1.5, "rpm_limit": 10, "team_id": "t", "models": ["gpt-4o"]}),
        ),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    let key = r.body["key"].as_str().expect("key").to_string();
    assert_eq!(r.body["max_budget"], 1.5);
    let r = call(
        &h,
        Role::Admin,
        "GET",
        &format!("/key/info?key={key}"),
        None,
    );
    assert_eq!(r.body["info"]["rpm_limit"], 10);
    assert_eq!(r.body["info"]["team_id"], "t");
    let r = call(
        &h,
        Role::Admin,
        "POST",
        "/key/update",
        Some(json!({"key": key, "tpm_limit": 100})),
    );
    assert_eq!(
        (r.body["tpm_limit"].as_u64(), r.body["rpm_limit"].as_u64()),
        (Some(100), Some(10))
    );
    let r = call(&h, Role::Admin, "GET", "/key/list", None);
    assert_eq!(r.body["total_count"], 1);
    assert!(
        !r.body.to_string().contains(&key),
        "list shows hashes, not tokens"
    );
    let r = call(
        &h,
        Role::Admin,
        "POST",
        "/key/delete",
        Some(json!({"keys": [key]})),
    );
    assert_eq!(r.body["deleted_keys"], json!(["svc"]));
    assert!(h.snapshot().keys.is_empty());
}

#[test]
fn budget_leases_across_threads_never_exceed_the_budget() {
    let (h, _) = ControlHandle::start(
        opts(),
        Box::new(MemoryStore::new()),
        vec![config_key(
            json!({"id": "k", "token": "t", "budget": {"total_tokens": 1000}}),
        )],
    )
    .expect("start");
    let scope = h.snapshot().keys.key_for_token("t").expect("key").scopes[0].id;
    let meter = MeterId {
        scope,
        kind: Kind::Tokens,
    };
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let h = h.clone();
            std::thread::spawn(move || {
                block_on(async {
                    let mut got = 0;
                    for _ in 0..100 {
                        got += h.lease(meter, 7, true).await.map_or(0, |g| g.granted);
                    }
                    got
                })
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().expect("thread")).sum();
    assert!(total <= 1000, "granted {total}");
    assert!(
        total > 1000 - 4 * 7,
        "refused only when a request no longer fit: {total}"
    );
}

#[cfg(feature = "gateway-store-sqlite")]
#[test]
fn a_restart_keeps_keys_ledgers_costs_and_reaps_reservations() {
    use super::store::sqlite::SqliteStore;
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("gw.db");
    let open = || Box::new(SqliteStore::open(&path).expect("open"));
    let cfg = || {
        vec![config_key(
            json!({"id": "k", "token": "t", "budget": {"total_tokens": 100}}),
        )]
    };
    {
        let (h, _) = ControlHandle::start(opts(), open(), cfg()).expect("start");
        let r = call(
            &h,
            Role::Admin,
            "POST",
            "/admin/keys",
            Some(json!({"id": "new", "token": "sk-new"})),
        );
        assert_eq!(r.status, 201);
        let scope = h.snapshot().keys.key_for_token("t").expect("key").scopes[0].id;
        let meter = MeterId {
            scope,
            kind: Kind::Tokens,
        };
        let g = block_on(h.lease(meter, 30, false)).expect("grant");
        assert_eq!(g.granted, 30);
        h.settle(
            vec![Settlement {
                meter,
                window: g.window,
                spent: 25,
                released: 25,
            }],
            vec![UsageDelta {
                key_id: "k".into(),
                model: "m".into(),
                requests: 1,
                prompt_tokens: 20,
                completion_tokens: 5,
                cost_pico: 7,
            }],
        );
        // 5 units stay reserved (outstanding) when the process "dies" after the flush.
        h.flush();
    }
    let (h, notes) = ControlHandle::start(opts(), open(), cfg()).expect("restart");
    assert!(
        notes.iter().any(|n| n.contains("reaped 1 reservation")),
        "{notes:?}"
    );
    assert_eq!(h.snapshot().keys.len(), 2, "the admin-made key survived");
    let r = call(&h, Role::Admin, "GET", "/admin/budgets", None);
    let row = &r.body["data"][0];
    assert_eq!(
        (row["spent"].as_u64(), row["reserved"].as_u64()),
        (Some(25), Some(0)),
        "{row}"
    );
    let r = call(&h, Role::Admin, "GET", "/admin/costs", None);
    assert_eq!(r.body["data"][0]["cost_pico_usd"], 7);
}
