//! The admin API's logic, run on the control-plane thread (REFERENCE section 3).
//!
//! The HTTP side (authentication, reading the body) lives with the other endpoints in
//! [`crate::proxy::admin`]; here a call is routed and applied to the plane's state. Every
//! change follows one order: validate, write to the store, then publish the new snapshot and
//! answer. A change the store refused is not applied (503), so what the API confirmed is what
//! a restart finds.

use serde_json::{json, Map, Value};

use super::keys::{self, FieldError, KeyRecord};
use super::meter::{Kind, MeterId};
use super::plane::{random_hex, Plane};
use super::store::Write;
use super::{unix_now, AdminReply, AdminRequest, Role};
use crate::pricing::pico_to_usd_string;

/// An OpenAI-shaped error body (see [`field_error`] for `param`, the field at fault).
pub fn error_body(etype: &str, code: &str, message: &str) -> Value {
    json!({"error": {"message": message, "type": etype, "code": code}})
}

pub(super) fn reply(status: u16, body: Value) -> AdminReply {
    AdminReply { status, body }
}

/// An admin error: the status decides the error type. Shared by every admin handler.
pub(super) fn fail(status: u16, code: &str, message: impl Into<String>) -> AdminReply {
    let etype = match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        409 => "conflict_error",
        503 => "api_error",
        _ => "invalid_request_error",
    };
    reply(status, error_body(etype, code, &message.into()))
}

fn field_error(e: FieldError) -> AdminReply {
    let mut r = fail(400, "invalid_field", format!("{}: {}", e.field, e.message));
    if let Some(err) = r.body.get_mut("error").and_then(Value::as_object_mut) {
        err.insert("param".into(), Value::String(e.field));
    }
    r
}

/// Percent-decode a path segment (`%2F` and friends in key ids).
pub(super) fn decode(seg: &str) -> String {
    percent_encoding::percent_decode_str(seg)
        .decode_utf8_lossy()
        .into_owned()
}

fn query_param(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A generated token: 24 random bytes, hex.
fn new_token() -> String {
    format!("sk-ditto-{}", random_hex(24))
}

/// The editable form of a record: a key object with the token as its hash.
fn input_json(k: &KeyRecord) -> Map<String, Value> {
    let mut m = match serde_json::to_value(k) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    for f in ["token_hash", "source", "created_at", "updated_at", "extra"] {
        m.remove(f);
    }
    for (f, v) in &k.extra {
        m.insert(f.clone(), v.clone());
    }
    m.insert("token".into(), Value::String(k.token_hash.clone()));
    m
}

impl Plane {
    pub(super) fn admin(&mut self, req: AdminRequest) -> AdminReply {
        if req.method != "GET" && !req.role.can_write() {
            return fail(403, "read_only_token", "this admin token is read-only");
        }
        if let Some(r) = self.backends_admin(&req) {
            return r;
        }
        let path = req.path.trim_end_matches('/');
        let segs: Vec<&str> = path.split('/').skip(1).collect();
        let m = req.method.as_str();
        match (m, segs.as_slice()) {
            ("GET", ["admin", "keys"]) => self.list_keys(&req.role),
            ("POST", ["admin", "keys"]) => self.create_from_body(&req),
            ("GET", ["admin", "keys", id]) => self.get_key(&req.role, &decode(id)),
            ("PUT" | "PATCH", ["admin", "keys", id]) => self.update_from_body(&req, &decode(id)),
            ("DELETE", ["admin", "keys", id]) => self.delete_key(&req.role, &decode(id)),
            ("GET", ["admin", "budgets"]) => self.budgets(&req.role),
            ("GET", ["admin", "costs"]) => self.cost_report(&req),
            ("GET", ["admin", "audit"]) => self.audit_report(&req),
            ("POST", ["admin", "reservations", "reap"]) => self.reap(&req),
            ("POST", ["key", "generate"]) => self.lite_generate(&req),
            ("POST", ["key", "update"]) => self.lite_update(&req),
            ("POST", ["key", "delete"]) => self.lite_delete(&req),
            ("GET", ["key", "info"]) => self.lite_info(&req),
            ("GET", ["key", "list"]) => self.lite_list(&req),
            (_, ["admin", "keys"] | ["admin", "keys", _] | ["admin", "budgets"])
            | (_, ["admin", "costs"] | ["admin", "audit"] | ["admin", "reservations", "reap"])
            | (_, ["key", _]) => fail(
                405,
                "method_not_allowed",
                format!("{m} is not allowed on {path}"),
            ),
            _ => fail(404, "not_found", format!("no admin endpoint {m} {path}")),
        }
    }

    fn visible(role: &Role, k: &KeyRecord) -> bool {
        role.tenant()
            .is_none_or(|t| k.tenant_id.as_deref() == Some(t))
    }

    fn list_keys(&self, role: &Role) -> AdminReply {
        let data: Vec<Value> = self
            .keys
            .values()
            .filter(|k| Self::visible(role, k))
            .map(KeyRecord::to_public_json)
            .collect();
        reply(200, json!({"object": "list", "data": data}))
    }

    fn get_key(&self, role: &Role, id: &str) -> AdminReply {
        match self.keys.get(id).filter(|k| Self::visible(role, k)) {
            Some(k) => reply(200, k.to_public_json()),
            None => fail(404, "key_not_found", format!("no key with id \"{id}\"")),
        }
    }

    fn create_from_body(&mut self, req: &AdminRequest) -> AdminReply {
        let Some(body) = &req.body else {
            return fail(400, "missing_body", "a JSON key object is required");
        };
        let parsed = match keys::parse_key(body, true, true, unix_now()) {
            Ok(p) => p,
            Err(e) => return field_error(e),
        };
        if parsed.record.id.is_empty() {
            return field_error(FieldError::new("id", "must be a non-empty string"));
        }
        self.create(&req.role, parsed.record, parsed.clear_token, "key.create")
            .map_or_else(
                |e| e,
                |(rec, token)| {
                    let mut v = rec.to_public_json();
                    v["token"] = Value::String(token.unwrap_or_else(|| "redacted".into()));
                    reply(201, v)
                },
            )
    }

    /// Validate, persist and publish a new key. Returns the record and the clear token (the
    /// only time it is ever shown) when the gateway generated it or the caller gave it.
    fn create(
        &mut self,
        role: &Role,
        mut rec: KeyRecord,
        clear: Option<String>,
        action: &str,
    ) -> Result<(KeyRecord, Option<String>), AdminReply> {
        if let Some(t) = role.tenant() {
            match &rec.tenant_id {
                Some(other) if other != t => {
                    return Err(fail(
                        403,
                        "tenant_mismatch",
                        format!("a token of tenant \"{t}\" cannot create keys of another tenant"),
                    ))
                }
                _ => rec.tenant_id = Some(t.to_string()),
            }
        }
        if self.keys.contains_key(&rec.id) {
            return Err(fail(
                409,
                "duplicate_id",
                format!("a key with id \"{}\" already exists", rec.id),
            ));
        }
        let clear = match (clear, rec.token_hash.is_empty()) {
            (c, false) => c,
            (_, true) => {
                let t = new_token();
                rec.token_hash = keys::token_hash(&t).unwrap_or_default();
                Some(t)
            }
        };
        self.check(&rec, None)?;
        let now = unix_now();
        rec.source = "admin".into();
        rec.created_at = now;
        rec.updated_at = now;
        let entry = self.audit_entry(
            &role.actor(),
            action,
            Some(&rec.id),
            json!({"tenant_id": rec.tenant_id}),
        );
        self.persist(vec![
            Write::PutKey(rec.clone()),
            Write::Audit(entry.clone()),
        ])?;
        self.keys.insert(rec.id.clone(), rec.clone());
        self.publish(entry)?;
        Ok((rec, clear))
    }

    /// Checks shared by create and update: unique token, known route.
    fn check(&self, rec: &KeyRecord, replacing: Option<&str>) -> Result<(), AdminReply> {
        if self
            .keys
            .values()
            .any(|k| k.token_hash == rec.token_hash && Some(k.id.as_str()) != replacing)
        {
            return Err(fail(
                409,
                "duplicate_token",
                "another key already has this token",
            ));
        }
        if let Some(r) = &rec.route {
            if !self.opts.backends.iter().any(|b| b == r) {
                return Err(field_error(FieldError::new(
                    "route",
                    format!("backend \"{r}\" is not a passthrough backend"),
                )));
            }
        }
        Ok(())
    }

    fn persist(&mut self, batch: Vec<Write>) -> Result<(), AdminReply> {
        match self.store.write(&batch) {
            Ok(()) => {
                self.set_store_ok(None);
                Ok(())
            }
            Err(e) => {
                self.set_store_ok(Some(e.to_string()));
                Err(fail(
                    503,
                    "store_unavailable",
                    format!("the change was not applied: the store refused it: {e}"),
                ))
            }
        }
    }

    /// After a persisted change: new snapshot, audit entry, and leases recalled so new limits
    /// apply everywhere at once.
    fn publish(&mut self, entry: super::store::AuditEntry) -> Result<(), AdminReply> {
        self.remember_audit(entry);
        self.recall_leases();
        self.rebuild().map_err(|e| fail(500, "rebuild_failed", e))
    }

    fn update_from_body(&mut self, req: &AdminRequest, id: &str) -> AdminReply {
        let Some(Value::Object(patch)) = &req.body else {
            return fail(
                400,
                "missing_body",
                "a JSON object with the fields to change is required",
            );
        };
        if let Some(v) = patch.get("id") {
            if v.as_str() != Some(id) {
                return field_error(FieldError::new("id", "must match the key id in the path"));
            }
        }
        match self.update(&req.role, id, patch.clone(), "key.update") {
            Ok(rec) => reply(200, rec.to_public_json()),
            Err(e) => e,
        }
    }

    /// Overlay `patch` on a key's fields (a field given replaces the old one; `null` removes
    /// it), validate, persist and publish.
    fn update(
        &mut self,
        role: &Role,
        id: &str,
        patch: Map<String, Value>,
        action: &str,
    ) -> Result<KeyRecord, AdminReply> {
        let Some(old) = self
            .keys
            .get(id)
            .filter(|k| Self::visible(role, k))
            .cloned()
        else {
            return Err(fail(
                404,
                "key_not_found",
                format!("no key with id \"{id}\""),
            ));
        };
        if let Some(t) = role.tenant() {
            if patch
                .get("tenant_id")
                .is_some_and(|v| v.as_str() != Some(t))
            {
                return Err(fail(
                    403,
                    "tenant_mismatch",
                    "a tenant token cannot move a key to another tenant",
                ));
            }
        }
        let mut merged = input_json(&old);
        let changed: Vec<String> = patch.keys().cloned().collect();
        for (k, v) in patch {
            if v.is_null() {
                merged.remove(&k);
            } else {
                merged.insert(k, v);
            }
        }
        merged.insert("id".into(), Value::String(id.to_string()));
        let mut rec = keys::parse_key(&Value::Object(merged), false, true, unix_now())
            .map_err(field_error)?
            .record;
        self.check(&rec, Some(id))?;
        rec.source = "admin".into();
        rec.created_at = old.created_at;
        rec.updated_at = unix_now();
        // Never log a token, not even its hash.
        let fields: Vec<&str> = changed.iter().map(String::as_str).collect();
        let entry = self.audit_entry(&role.actor(), action, Some(id), json!({"fields": fields}));
        self.persist(vec![
            Write::PutKey(rec.clone()),
            Write::Audit(entry.clone()),
        ])?;
        self.keys.insert(id.to_string(), rec.clone());
        self.publish(entry)?;
        Ok(rec)
    }

    fn delete_key(&mut self, role: &Role, id: &str) -> AdminReply {
        match self.delete(role, id, "key.delete") {
            Ok(()) => reply(200, json!({"id": id, "deleted": true})),
            Err(e) => e,
        }
    }

    fn delete(&mut self, role: &Role, id: &str, action: &str) -> Result<(), AdminReply> {
        if !self.keys.get(id).is_some_and(|k| Self::visible(role, k)) {
            return Err(fail(
                404,
                "key_not_found",
                format!("no key with id \"{id}\""),
            ));
        }
        let entry = self.audit_entry(&role.actor(), action, Some(id), json!({}));
        self.persist(vec![
            Write::DeleteKey(id.to_string()),
            Write::Audit(entry.clone()),
        ])?;
        self.keys.remove(id);
        self.publish(entry)
    }

    /// Ledger names a role may see.
    fn visible_ledgers(&self, role: &Role) -> Option<ahash::AHashSet<String>> {
        let t = role.tenant()?;
        let mut out = ahash::AHashSet::new();
        out.insert(format!("tenant:{t}"));
        for k in self.keys.values().filter(|k| Self::visible(role, k)) {
            out.insert(format!("key:{}", k.id));
            if let Some(p) = &k.project_id {
                out.insert(format!("project:{p}"));
            }
            if let Some(u) = &k.user_id {
                out.insert(format!("user:{u}"));
            }
        }
        Some(out)
    }

    fn budgets(&self, role: &Role) -> AdminReply {
        let allowed = self.visible_ledgers(role);
        let now = unix_now();
        let mut data = Vec::new();
        for scope in self.scopes.iter().flatten() {
            if allowed.as_ref().is_some_and(|a| !a.contains(&scope.ledger)) {
                continue;
            }
            for kind in [Kind::Tokens, Kind::Usd] {
                let Some(limit) = scope.limit(kind) else {
                    continue;
                };
                let window = scope.window(kind, now);
                let st = self
                    .meters
                    .get(MeterId {
                        scope: scope.id,
                        kind,
                    })
                    .filter(|s| s.window == window)
                    .unwrap_or_default();
                let remaining = limit.saturating_sub(st.spent);
                let mut row = json!({
                    "scope": scope.ledger,
                    "unit": kind.unit(),
                    "period": scope.budget.period.as_str(),
                    "limit": limit,
                    "spent": st.spent,
                    "reserved": st.outstanding,
                    "remaining": remaining,
                    "resets_in_secs": scope.reset_in(kind, now),
                });
                if kind == Kind::Usd {
                    row["limit_usd"] = pico_to_usd_string(limit).into();
                    row["spent_usd"] = pico_to_usd_string(st.spent).into();
                    row["remaining_usd"] = pico_to_usd_string(remaining).into();
                }
                data.push(row);
            }
        }
        reply(200, json!({"object": "list", "data": data}))
    }

    fn cost_report(&self, req: &AdminRequest) -> AdminReply {
        let only = query_param(&req.query, "key_id");
        let mut total = 0u64;
        let data: Vec<Value> = self
            .costs
            .values()
            .filter(|c| only.as_ref().is_none_or(|k| &c.key_id == k))
            .filter(|c| {
                req.role.tenant().is_none()
                    || self
                        .keys
                        .get(&c.key_id)
                        .is_some_and(|k| Self::visible(&req.role, k))
            })
            .map(|c| {
                total = total.saturating_add(c.cost_pico);
                json!({
                    "key_id": c.key_id, "model": c.model, "requests": c.requests,
                    "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                    "cost_pico_usd": c.cost_pico, "cost_usd": pico_to_usd_string(c.cost_pico),
                })
            })
            .collect();
        reply(
            200,
            json!({"object": "list", "data": data,
                   "total_cost_pico_usd": total, "total_cost_usd": pico_to_usd_string(total)}),
        )
    }

    fn audit_report(&self, req: &AdminRequest) -> AdminReply {
        let limit = query_param(&req.query, "limit")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(100)
            .min(super::plane::AUDIT_TAIL);
        let tenant_actor = req.role.tenant().map(|t| format!("tenant:{t}"));
        let data: Vec<&super::store::AuditEntry> = self
            .audit
            .iter()
            .rev()
            .filter(|e| match &tenant_actor {
                None => true,
                Some(a) => {
                    &e.actor == a
                        || e.target.as_ref().is_some_and(|id| {
                            self.keys
                                .get(id)
                                .is_some_and(|k| Self::visible(&req.role, k))
                        })
                }
            })
            .take(limit)
            .collect();
        reply(200, json!({"object": "list", "data": data}))
    }

    fn reap(&mut self, req: &AdminRequest) -> AdminReply {
        if req.role.tenant().is_some() {
            return fail(
                403,
                "admin_only",
                "only the admin token can reap reservations",
            );
        }
        let older = match req.body.as_ref().and_then(|b| b.get("older_than_secs")) {
            None | Some(Value::Null) => 0,
            Some(v) => match v.as_u64() {
                Some(n) => n,
                None => {
                    return field_error(FieldError::new(
                        "older_than_secs",
                        "must be a whole number >= 0",
                    ))
                }
            },
        };
        let before = unix_now().saturating_sub(older);
        let entry = self.audit_entry(
            &req.role.actor(),
            "reservations.reap",
            None,
            json!({"older_than_secs": older}),
        );
        if let Err(e) = self.persist(vec![
            Write::ReapReservations {
                keep_owner: self.owner.clone(),
                before,
            },
            Write::Audit(entry.clone()),
        ]) {
            return e;
        }
        self.remember_audit(entry);
        // Our own cores give back what they hold unused; what requests in flight reserved
        // settles when they end.
        self.recall_leases();
        reply(
            200,
            json!({"reaped": true, "older_than_secs": older, "recalled_leases": true}),
        )
    }

    // ---- LiteLLM-compatible key API -------------------------------------------------

    /// Map LiteLLM's key fields onto ours.
    fn lite_fields(body: &Map<String, Value>) -> Result<Map<String, Value>, AdminReply> {
        let mut out = Map::new();
        let mut limits = Map::new();
        let mut budget = Map::new();
        for (k, v) in body {
            match k.as_str() {
                "rpm_limit" | "tpm_limit" if !v.is_null() => {
                    let n = v.as_u64().ok_or_else(|| {
                        field_error(FieldError::new(k.as_str(), "must be a whole number >= 0"))
                    })?;
                    limits.insert(k.trim_end_matches("_limit").into(), n.into());
                }
                "max_budget" if !v.is_null() => {
                    let usd = v
                        .as_f64()
                        .filter(|f| f.is_finite() && *f >= 0.0)
                        .ok_or_else(|| {
                            field_error(FieldError::new(
                                "max_budget",
                                "must be a number >= 0 (USD)",
                            ))
                        })?;
                    budget.insert(
                        "total_usd_micros".into(),
                        ((usd * 1e6).round() as u64).into(),
                    );
                }
                "budget_duration" if !v.is_null() => {
                    budget.insert("period".into(), v.clone());
                }
                "team_id" => {
                    out.insert("tenant_id".into(), v.clone());
                }
                "user_id" | "models" | "metadata" | "key_alias" | "enabled" => {
                    out.insert(k.clone(), v.clone());
                }
                "blocked" => {
                    let b = v.as_bool().ok_or_else(|| {
                        field_error(FieldError::new("blocked", "must be true or false"))
                    })?;
                    out.insert("enabled".into(), (!b).into());
                }
                // LiteLLM has many more (spend, duration, permissions...): not ours to keep.
                _ => {}
            }
        }
        if !limits.is_empty() {
            out.insert("limits".into(), Value::Object(limits));
        }
        if !budget.is_empty() {
            out.insert("budget".into(), Value::Object(budget));
        }
        Ok(out)
    }

    fn lite_view(&self, k: &KeyRecord) -> Value {
        let spend: u64 = self
            .costs
            .values()
            .filter(|c| c.key_id == k.id)
            .map(|c| c.cost_pico)
            .sum();
        json!({
            "token": k.token_hash.trim_start_matches("sha256:"),
            "key_alias": k.extra.get("key_alias").cloned().unwrap_or(Value::String(k.id.clone())),
            "key_id": k.id,
            "team_id": k.tenant_id,
            "user_id": k.user_id,
            "models": k.extra.get("models").cloned().unwrap_or(json!([])),
            "metadata": k.extra.get("metadata").cloned().unwrap_or(json!({})),
            "rpm_limit": k.limits.rpm,
            "tpm_limit": k.limits.tpm,
            "max_budget": k.budget.total_usd_micros.map(|m| m as f64 / 1e6),
            "budget_duration": (k.budget.period != keys::Period::Lifetime).then(|| k.budget.period.as_str()),
            "spend": spend as f64 / 1e12,
            "blocked": !k.enabled,
            "expires": Value::Null,
        })
    }

    /// Find a key by what LiteLLM clients send: the clear token, or its hash (hex, with or
    /// without `sha256:`).
    fn find_by_token(&self, token: &str) -> Option<&KeyRecord> {
        let hex_only = token.trim_start_matches("sha256:");
        let as_hash = (hex_only.len() == 64 && hex_only.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| format!("sha256:{}", hex_only.to_ascii_lowercase()));
        let clear = keys::token_hash(token).ok();
        self.keys.values().find(|k| {
            Some(&k.token_hash) == as_hash.as_ref() || Some(&k.token_hash) == clear.as_ref()
        })
    }

    fn lite_generate(&mut self, req: &AdminRequest) -> AdminReply {
        let body = match &req.body {
            Some(Value::Object(m)) => m.clone(),
            None => Map::new(),
            Some(_) => return fail(400, "invalid_body", "the body must be a JSON object"),
        };
        let mut obj = match Self::lite_fields(&body) {
            Ok(o) => o,
            Err(e) => return e,
        };
        let id = match body.get("key_alias").and_then(Value::as_str) {
            Some(a) if !a.is_empty() => a.to_string(),
            _ => format!("key-{}", random_hex(6)),
        };
        obj.insert("id".into(), Value::String(id));
        if let Some(k) = body.get("key") {
            obj.insert("token".into(), k.clone());
        }
        let parsed = match keys::parse_key(&Value::Object(obj), true, true, unix_now()) {
            Ok(p) => p,
            Err(e) => return field_error(e),
        };
        match self.create(&req.role, parsed.record, parsed.clear_token, "key.generate") {
            Ok((rec, token)) => {
                let token = token.unwrap_or_default();
                let mut v = self.lite_view(&rec);
                let tail: String = token
                    .chars()
                    .rev()
                    .take(4)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                v["key"] = Value::String(token);
                v["key_name"] = Value::String(format!("sk-...{tail}"));
                reply(200, v)
            }
            Err(e) => e,
        }
    }

    fn lite_target(&self, req: &AdminRequest) -> Result<String, AdminReply> {
        let token = req
            .body
            .as_ref()
            .and_then(|b| b.get("key"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| query_param(&req.query, "key"))
            .ok_or_else(|| field_error(FieldError::new("key", "the key (token) is required")))?;
        self.find_by_token(&token)
            .filter(|k| Self::visible(&req.role, k))
            .map(|k| k.id.clone())
            .ok_or_else(|| fail(404, "key_not_found", "no such key"))
    }

    fn lite_update(&mut self, req: &AdminRequest) -> AdminReply {
        let id = match self.lite_target(req) {
            Ok(id) => id,
            Err(e) => return e,
        };
        let Some(Value::Object(body)) = &req.body else {
            return fail(400, "invalid_body", "the body must be a JSON object");
        };
        let mut patch = match Self::lite_fields(body) {
            Ok(p) => p,
            Err(e) => return e,
        };
        // A LiteLLM update changes single limit fields, not the whole objects.
        if let Some(old) = self.keys.get(&id) {
            let current = [
                ("limits", serde_json::to_value(old.limits)),
                ("budget", serde_json::to_value(old.budget)),
            ];
            for (section, base) in current {
                if let (Some(Value::Object(new)), Ok(Value::Object(mut base))) =
                    (patch.get(section).cloned(), base)
                {
                    base.extend(new);
                    patch.insert(section.into(), Value::Object(base));
                }
            }
        }
        patch.remove("key_alias");
        match self.update(&req.role, &id, patch, "key.update") {
            Ok(rec) => reply(200, self.lite_view(&rec)),
            Err(e) => e,
        }
    }

    fn lite_delete(&mut self, req: &AdminRequest) -> AdminReply {
        let body = req.body.clone().unwrap_or(Value::Null);
        let list = |f: &str| -> Vec<String> {
            body.get(f)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut ids = Vec::new();
        for t in list("keys") {
            match self
                .find_by_token(&t)
                .filter(|k| Self::visible(&req.role, k))
            {
                Some(k) => ids.push(k.id.clone()),
                None => return fail(404, "key_not_found", "no such key"),
            }
        }
        for alias in list("key_aliases") {
            let found = self.keys.values().find(|k| {
                k.extra.get("key_alias").and_then(Value::as_str) == Some(alias.as_str())
                    || k.id == alias
            });
            match found.filter(|k| Self::visible(&req.role, k)) {
                Some(k) => ids.push(k.id.clone()),
                None => {
                    return fail(
                        404,
                        "key_not_found",
                        format!("no key with alias \"{alias}\""),
                    )
                }
            }
        }
        if ids.is_empty() {
            return field_error(FieldError::new("keys", "give `keys` or `key_aliases`"));
        }
        for id in &ids {
            if let Err(e) = self.delete(&req.role, id, "key.delete") {
                return e;
            }
        }
        reply(200, json!({"deleted_keys": ids}))
    }

    fn lite_info(&self, req: &AdminRequest) -> AdminReply {
        match self.lite_target(req) {
            Ok(id) => match self.keys.get(&id) {
                Some(k) => {
                    let v = self.lite_view(k);
                    reply(200, json!({"key": v["token"].clone(), "info": v}))
                }
                None => fail(404, "key_not_found", "no such key"),
            },
            Err(e) => e,
        }
    }

    fn lite_list(&self, req: &AdminRequest) -> AdminReply {
        let team = query_param(&req.query, "team_id");
        let keys: Vec<Value> = self
            .keys
            .values()
            .filter(|k| Self::visible(&req.role, k))
            .filter(|k| {
                team.as_ref()
                    .is_none_or(|t| k.tenant_id.as_ref() == Some(t))
            })
            .map(|k| Value::String(k.token_hash.trim_start_matches("sha256:").to_string()))
            .collect();
        let n = keys.len();
        reply(
            200,
            json!({"keys": keys, "total_count": n, "current_page": 1, "total_pages": 1}),
        )
    }
}
