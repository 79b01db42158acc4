//! The Redis store (`--redis URL`, feature `gateway-store-redis`): what several gateway
//! replicas share. Used only from control-plane threads (the plane and its subscriber thread),
//! with the synchronous client and connect/read/write timeouts, so a stalled Redis gives
//! errors, never a hang.
//!
//! Layout, every key under the prefix `P` (`--redis-prefix`, default `ditto`):
//!
//! | key                         | type   | what                                             |
//! |-----------------------------|--------|--------------------------------------------------|
//! | `P:keys`                    | hash   | key id -> key record (JSON, token hashed)         |
//! | `P:keys:version`            | string | bumped on every key change                        |
//! | `P:router`                  | string | router JSON of the last `PUT /admin/config/router` |
//! | `P:changes`                 | pubsub | a message after every key or router change        |
//! | `P:meter:KIND:WINDOW:SCOPE` | hash   | `spent`, `out` (leased, all replicas), `o:OWNER`  |
//! | `P:ledgers`                 | set    | budget meter keys (for loading ledgers)           |
//! | `P:owner:OWNER`             | set    | meter keys a process holds leases on              |
//! | `P:owners`                  | zset   | process -> last heartbeat (unix ms)               |
//! | `P:applied:OWNER:TAG:N`     | string | settlement batch N applied (retries are no-ops)   |
//! | `P:applied:costs:TAG:N`     | string | cost increments batch N applied (the same)        |
//! | `P:costs:FIELD`             | hash   | `["key","model"]` -> requests / tokens / pico-USD |
//! | `P:audit`                   | list   | audit entries (JSON), oldest first                |
//!
//! Rate windows (rpm/tpm) expire on their own (TTL); budget meters stay.
//!
//! Leases, settlements and reaping run as Lua scripts (EVALSHA), so each is atomic across
//! replicas: a lease is granted only from `limit - spent - outstanding` of the global
//! counters. Settled usage is queued here and pushed in batches at every flush. A flush that
//! fails writes what Redis has not confirmed to disk (`spill.rs`), where it outlives this
//! process, and it is replayed when Redis returns, by this process or, if it stopped first,
//! by the next one started here. Every batch carries an id that the script records, and a
//! batch whose answer was lost (a timeout, Redis killed after it ran the script) is resent
//! with the same id, so it is never counted twice.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use redis::{Client, Connection, RedisError, Script};

use super::spill::{add, kind_tag, Batch, Spill};
use super::{
    AuditEntry, CostRow, Global, GlobalGrant, LedgerRow, MeterKey, MeterTotals, Persisted,
    ReservationRow, Store, StoreError, Write,
};
use crate::control::keys::KeyRecord;
use crate::control::meter::Kind;
use crate::control::{unix_now, unix_now_ms};

/// Connect, read and write timeout of every Redis call.
pub const IO_TIMEOUT: Duration = Duration::from_millis(500);
/// Reconnect backoff: first wait, and the most.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Distinct meters queued in memory before the queue spills to disk.
pub const QUEUE_MAX: usize = 10_000;
/// A process whose heartbeat is older than this is presumed dead (its leases may be reaped).
pub const STALE_MS: u64 = 3_000;
/// Settlements per script call.
const BATCH: usize = 256;
/// Rate windows live this long after their last use (a window is 60 s).
const RATE_TTL_SECS: u64 = 150;
/// Full key resync interval (the safety net under pub/sub).
pub const RESYNC: Duration = Duration::from_secs(10);

const LEASE_LUA: &str = r#"
local k = KEYS[1]
local spent = tonumber(redis.call('HGET', k, 'spent') or '0')
local out = tonumber(redis.call('HGET', k, 'out') or '0')
local limit = tonumber(ARGV[2])
local need = math.max(tonumber(ARGV[3]), 1)
local cores = math.max(tonumber(ARGV[4]), 1)
local rem = limit - spent - out
if rem < 0 then rem = 0 end
if rem < need then return {0, rem, spent, out} end
local share = math.floor((rem - need) / (cores * 16))
if ARGV[5] == '1' and share > 63 then share = 63 end
local g = need + share
redis.call('HINCRBY', k, 'out', g)
redis.call('HINCRBY', k, 'o:' .. ARGV[1], g)
redis.call('SADD', KEYS[2], k)
redis.call('ZADD', KEYS[4], ARGV[10], ARGV[1])
local ttl = tonumber(ARGV[6])
if ttl > 0 then redis.call('EXPIRE', k, ttl) end
if ARGV[7] ~= '' then
  redis.call('HSETNX', k, 'scope', ARGV[8])
  redis.call('HSETNX', k, 'unit', ARGV[7])
  redis.call('HSETNX', k, 'period', ARGV[9])
  redis.call('SADD', KEYS[3], k)
end
return {g, rem - g, spent, out + g}
"#;

const SETTLE_LUA: &str = r#"
local owner = ARGV[1]
local fresh = redis.call('SET', KEYS[1], '1', 'NX', 'EX', 3600)
local res = {}
for i = 3, #KEYS do
  local k = KEYS[i]
  local b = 2 + (i - 3) * 6
  local spent = tonumber(ARGV[b])
  local rel = tonumber(ARGV[b + 1])
  local ttl = tonumber(ARGV[b + 2])
  if fresh then
    if spent > 0 then redis.call('HINCRBY', k, 'spent', spent) end
    if rel > 0 then
      local mine = tonumber(redis.call('HGET', k, 'o:' .. owner) or '0')
      local d = math.min(rel, mine)
      if d > 0 then
        redis.call('HINCRBY', k, 'o:' .. owner, -d)
        local out = tonumber(redis.call('HGET', k, 'out') or '0')
        redis.call('HSET', k, 'out', math.max(out - d, 0))
      end
    end
    if ARGV[b + 3] ~= '' then
      redis.call('HSETNX', k, 'scope', ARGV[b + 4])
      redis.call('HSETNX', k, 'unit', ARGV[b + 3])
      redis.call('HSETNX', k, 'period', ARGV[b + 5])
      redis.call('SADD', KEYS[2], k)
    end
    if ttl > 0 and redis.call('EXISTS', k) == 1 then redis.call('EXPIRE', k, ttl) end
  end
  res[#res + 1] = tonumber(redis.call('HGET', k, 'spent') or '0')
  res[#res + 1] = tonumber(redis.call('HGET', k, 'out') or '0')
end
return res
"#;

/// Cost increments, applied once per batch id (a resent batch is a no-op).
const COSTS_LUA: &str = r#"
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', 3600) then return 0 end
for i = 1, #ARGV, 3 do
  redis.call('HINCRBY', ARGV[i], ARGV[i + 1], ARGV[i + 2])
end
return 1
"#;

const REAP_LUA: &str = r#"
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
local n, units = 0, 0
for _, o in ipairs(stale) do
  if o ~= ARGV[2] then
    local set = ARGV[1] .. ':owner:' .. o
    for _, k in ipairs(redis.call('SMEMBERS', set)) do
      if redis.call('EXISTS', k) == 1 then
        local v = tonumber(redis.call('HGET', k, 'o:' .. o) or '0')
        if v > 0 then
          local out = tonumber(redis.call('HGET', k, 'out') or '0')
          redis.call('HSET', k, 'out', math.max(out - v, 0))
          units = units + v
          n = n + 1
        end
        redis.call('HDEL', k, 'o:' .. o)
      end
    end
    redis.call('DEL', set)
    redis.call('ZREM', KEYS[1], o)
  end
end
return {n, units}
"#;

const PRUNE_AUDIT_LUA: &str = r#"
local n = 0
while true do
  local first = redis.call('LINDEX', KEYS[1], 0)
  if not first then break end
  local ok, e = pcall(cjson.decode, first)
  if ok and type(e) == 'table' and tonumber(e['ts_ms'] or 0) < tonumber(ARGV[1]) then
    redis.call('LPOP', KEYS[1])
    n = n + 1
  else
    break
  end
end
return n
"#;

/// The cost totals kept as one hash per field.
const COST_FIELDS: [&str; 4] = [
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cost_pico",
];

/// `redis://user:secret@host:6379/0` -> `redis://user@host:6379/0`: for messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(None);
            }
            u.to_string()
        }
        Err(_) => "<unparsable redis url>".to_string(),
    }
}

/// Queued settlements per meter: (spent, released).
type Queue = HashMap<MeterKey, (u64, u64)>;

pub struct RedisStore {
    client: Client,
    shown: String,
    prefix: String,
    con: Option<Connection>,
    backoff: Duration,
    next_try: Instant,
    lease: Script,
    settle: Script,
    costs: Script,
    reap: Script,
    prune: Script,
    /// Cost rows as last written (the plane's rows are absolute; Redis gets increments).
    cost_base: HashMap<(String, String), CostRow>,
    /// Settlements not yet in Redis, coalesced per meter: (spent, released).
    queue: Queue,
    /// The files usage goes to when Redis has not confirmed it (see `spill.rs`): the queue
    /// at every failed flush and when it holds more than [`QUEUE_MAX`] meters.
    spill: Spill,
    /// Whether queued usage is on disk (ours or adopted from a stopped replica).
    spilled: bool,
    /// [`QUEUE_MAX`], lowered by tests.
    queue_max: usize,
    /// A batch sent but not known to be applied: resent as it is, with its id, before
    /// anything else. A new id for it would count it twice if the first send did land.
    in_flight: Vec<Batch>,
    /// Whether `in_flight` is recorded on disk (after a failed send).
    in_flight_on_disk: bool,
    /// The same for cost increments: (id, the rows they bring Redis to).
    costs_in_flight: Option<(String, Vec<CostRow>)>,
    batch_seq: u64,
    batch_tag: String,
    last_resync: Instant,
}

impl RedisStore {
    /// Connect and check that Redis answers; the error names the URL (never its password).
    pub fn open(url: &str, prefix: &str) -> Result<RedisStore, StoreError> {
        let shown = redact_url(url);
        let client =
            Client::open(url).map_err(|e| StoreError(format!("invalid redis url {shown}: {e}")))?;
        let tag = crate::control::plane::random_hex(6);
        let mut s = RedisStore {
            client,
            shown: shown.clone(),
            prefix: prefix.to_string(),
            con: None,
            backoff: BACKOFF_MIN,
            next_try: Instant::now(),
            lease: Script::new(LEASE_LUA),
            settle: Script::new(SETTLE_LUA),
            costs: Script::new(COSTS_LUA),
            reap: Script::new(REAP_LUA),
            prune: Script::new(PRUNE_AUDIT_LUA),
            cost_base: HashMap::new(),
            queue: HashMap::new(),
            spill: Spill::new(&std::env::temp_dir(), &shown, prefix, &tag),
            spilled: false,
            queue_max: QUEUE_MAX,
            in_flight: Vec::new(),
            in_flight_on_disk: false,
            costs_in_flight: None,
            batch_seq: 0,
            batch_tag: tag,
            last_resync: Instant::now(),
        };
        // What replicas stopped while Redis was down left here goes out with the first flush.
        s.in_flight = s.spill.adopt_orphans();
        s.in_flight_on_disk = !s.in_flight.is_empty();
        s.spilled = s.spill.has_queue();
        s.ping()
            .map_err(|e| StoreError(format!("cannot reach {e}")))?;
        Ok(s)
    }

    fn k(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }

    fn meter_key(&self, m: &MeterKey) -> String {
        format!(
            "{}:meter:{}:{}:{}",
            self.prefix,
            kind_tag(m.kind),
            m.window,
            m.ledger
        )
    }

    fn connect(&self) -> Result<Connection, RedisError> {
        let con = self.client.get_connection_with_timeout(IO_TIMEOUT)?;
        con.set_read_timeout(Some(IO_TIMEOUT))?;
        con.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(con)
    }

    /// Run `f` on the connection, (re)connecting with backoff. Any error drops the
    /// connection: the next call reconnects (after the backoff), so a stalled or restarted
    /// Redis never leaves a half-read reply behind.
    fn run<T>(
        &mut self,
        f: impl FnOnce(&mut Connection, &Self) -> Result<T, RedisError>,
    ) -> Result<T, StoreError> {
        if self.con.is_none() {
            let now = Instant::now();
            if now < self.next_try {
                return Err(StoreError(format!(
                    "redis at {} is unreachable (reconnecting in {} ms)",
                    self.shown,
                    self.next_try.duration_since(now).as_millis()
                )));
            }
            match self.connect() {
                Ok(c) => self.con = Some(c),
                Err(e) => {
                    self.fail();
                    return Err(StoreError(format!("redis at {}: {e}", self.shown)));
                }
            }
        }
        let Some(mut con) = self.con.take() else {
            return Err(StoreError(format!(
                "redis at {}: no connection",
                self.shown
            )));
        };
        match f(&mut con, self) {
            Ok(v) => {
                self.con = Some(con);
                self.backoff = BACKOFF_MIN;
                Ok(v)
            }
            Err(e) => {
                self.fail();
                Err(StoreError(format!("redis at {}: {e}", self.shown)))
            }
        }
    }

    fn fail(&mut self) {
        self.con = None;
        self.next_try = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// Rows of processes whose heartbeat is older than `cutoff_ms` (at startup: presumed dead).
    fn stale_reservations(
        con: &mut Connection,
        s: &Self,
        cutoff_ms: u64,
    ) -> Result<Vec<ReservationRow>, RedisError> {
        let owners: Vec<(String, u64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(s.k("owners"))
            .arg("-inf")
            .arg(format!("({cutoff_ms}"))
            .arg("WITHSCORES")
            .query(con)?;
        let mut rows = Vec::new();
        for (owner, seen) in owners {
            let metas: Vec<String> = redis::cmd("SMEMBERS")
                .arg(s.k(&format!("owner:{owner}")))
                .query(con)?;
            for key in metas {
                let (amount, scope, unit, period): (
                    Option<u64>,
                    Option<String>,
                    Option<String>,
                    Option<u64>,
                ) = redis::cmd("HMGET")
                    .arg(&key)
                    .arg(format!("o:{owner}"))
                    .arg("scope")
                    .arg("unit")
                    .arg("period")
                    .query(con)?;
                let amount = amount.unwrap_or(0);
                if amount == 0 {
                    continue;
                }
                rows.push(ReservationRow {
                    owner: owner.clone(),
                    scope: scope.unwrap_or_else(|| key.clone()),
                    unit: unit.unwrap_or_default(),
                    period: period.unwrap_or(0),
                    amount,
                    updated_at: seen / 1000,
                });
            }
        }
        Ok(rows)
    }

    fn load_all(
        con: &mut Connection,
        s: &Self,
        audit_tail: usize,
    ) -> Result<Result<Persisted, String>, RedisError> {
        let mut p = Persisted::default();
        let keys: BTreeMap<String, String> = redis::cmd("HGETALL").arg(s.k("keys")).query(con)?;
        for (id, json) in keys {
            match serde_json::from_str::<KeyRecord>(&json) {
                Ok(k) => p.keys.push(k),
                Err(e) => return Ok(Err(format!("key \"{id}\" in {}: {e}", s.k("keys")))),
            }
        }
        let ledgers: Vec<String> = redis::cmd("SMEMBERS").arg(s.k("ledgers")).query(con)?;
        for key in ledgers {
            let (scope, unit, period, spent): (
                Option<String>,
                Option<String>,
                Option<u64>,
                Option<u64>,
            ) = redis::cmd("HMGET")
                .arg(&key)
                .arg("scope")
                .arg("unit")
                .arg("period")
                .arg("spent")
                .query(con)?;
            match (scope, unit, period) {
                (Some(scope), Some(unit), Some(period)) => p.ledgers.push(LedgerRow {
                    scope,
                    unit,
                    period,
                    spent: spent.unwrap_or(0),
                }),
                _ => {
                    // Gone (or never complete): drop it from the index.
                    redis::cmd("SREM")
                        .arg(s.k("ledgers"))
                        .arg(&key)
                        .query::<()>(con)?;
                }
            }
        }
        p.costs = Self::load_costs(con, s)?;
        let cutoff = unix_now_ms().saturating_sub(STALE_MS);
        p.reservations = Self::stale_reservations(con, s, cutoff)?;
        if audit_tail > 0 {
            let tail: Vec<String> = redis::cmd("LRANGE")
                .arg(s.k("audit"))
                .arg(-(audit_tail as i64))
                .arg(-1)
                .query(con)?;
            for a in tail {
                if let Ok(e) = serde_json::from_str::<AuditEntry>(&a) {
                    p.audit.push(e);
                }
            }
        }
        Ok(Ok(p))
    }

    fn load_costs(con: &mut Connection, s: &Self) -> Result<Vec<CostRow>, RedisError> {
        let mut costs: BTreeMap<String, CostRow> = BTreeMap::new();
        for field in COST_FIELDS {
            let h: HashMap<String, u64> = redis::cmd("HGETALL")
                .arg(s.k(&format!("costs:{field}")))
                .query(con)?;
            for (who, v) in h {
                let Ok((key_id, model)) = serde_json::from_str::<(String, String)>(&who) else {
                    continue;
                };
                let row = costs.entry(who).or_insert_with(|| CostRow {
                    key_id,
                    model,
                    ..CostRow::default()
                });
                match field {
                    "requests" => row.requests = v,
                    "prompt_tokens" => row.prompt_tokens = v,
                    "completion_tokens" => row.completion_tokens = v,
                    _ => row.cost_pico = v,
                }
            }
        }
        Ok(costs.into_values().collect())
    }

    /// Move the in-memory queue to disk (kept in memory if the disk fails).
    fn spill_queue(&mut self) -> bool {
        if self.queue.is_empty() {
            return true;
        }
        match self.spill.append(self.queue.iter()) {
            Ok(()) => {
                self.queue.clear();
                self.spilled = true;
                true
            }
            Err(e) => {
                crate::error!(
                    "redis store: cannot write queued usage to {}: {e}; keeping it in memory",
                    self.spill.queue_path().display()
                );
                false
            }
        }
    }

    /// A flush failed: what Redis has not confirmed goes to disk now, so it outlives this
    /// process if it stops before Redis is back (the next replica started here replays it).
    fn persist(&mut self) {
        self.spill_queue();
        if !self.in_flight.is_empty() || self.in_flight_on_disk {
            match self.spill.write_in_flight(&self.in_flight) {
                Ok(()) => self.in_flight_on_disk = !self.in_flight.is_empty(),
                Err(e) => crate::error!("redis store: cannot record unanswered batches: {e}"),
            }
        }
    }

    /// Cost rows are absolute; Redis gets the increments since `cost_base`, applied once per
    /// id. Increments whose answer was lost go again first, under their old id.
    fn push_costs(&mut self, rows: Vec<CostRow>) -> Result<(), StoreError> {
        self.push_costs_in_flight()?;
        if rows.is_empty() {
            return Ok(());
        }
        self.batch_seq += 1;
        let id = self.k(&format!(
            "applied:costs:{}:{}",
            self.batch_tag, self.batch_seq
        ));
        self.costs_in_flight = Some((id, rows));
        self.push_costs_in_flight()
    }

    fn push_costs_in_flight(&mut self) -> Result<(), StoreError> {
        let Some((id, rows)) = self.costs_in_flight.take() else {
            return Ok(());
        };
        let mut args: Vec<String> = Vec::new();
        for c in &rows {
            let base = self
                .cost_base
                .get(&(c.key_id.clone(), c.model.clone()))
                .cloned()
                .unwrap_or_default();
            let field = serde_json::json!([c.key_id, c.model]).to_string();
            let deltas = [
                c.requests.saturating_sub(base.requests),
                c.prompt_tokens.saturating_sub(base.prompt_tokens),
                c.completion_tokens.saturating_sub(base.completion_tokens),
                c.cost_pico.saturating_sub(base.cost_pico),
            ];
            for (name, d) in COST_FIELDS.iter().zip(deltas) {
                if d > 0 {
                    args.extend([
                        self.k(&format!("costs:{name}")),
                        field.clone(),
                        d.to_string(),
                    ]);
                }
            }
        }
        if !args.is_empty() {
            let sent = self.run(|con, s| s.costs.key(&id).arg(&args).invoke::<i64>(con));
            if let Err(e) = sent {
                self.costs_in_flight = Some((id, rows));
                return Err(e);
            }
        }
        for c in rows {
            self.cost_base
                .insert((c.key_id.clone(), c.model.clone()), c);
        }
        Ok(())
    }

    /// Send the unanswered batches, oldest first, each forgotten once Redis answers.
    fn push_in_flight(&mut self, owner: &str) -> Result<Vec<(MeterKey, MeterTotals)>, StoreError> {
        let mut totals = Vec::new();
        while let Some((applied, items)) = self.in_flight.first().cloned() {
            totals.extend(self.push_batch(owner, &applied, &items)?);
            self.in_flight.remove(0);
        }
        if self.in_flight_on_disk {
            match self.spill.write_in_flight(&[]) {
                Ok(()) => self.in_flight_on_disk = false,
                Err(e) => crate::warn!("redis store: cannot clear unanswered batches: {e}"),
            }
        }
        Ok(totals)
    }

    /// Move up to [`BATCH`] queued settlements into a new unanswered batch with a fresh id.
    fn next_batch(&mut self, owner: &str) {
        let take: Vec<MeterKey> = self.queue.keys().take(BATCH).cloned().collect();
        let items: Vec<(MeterKey, (u64, u64))> = take
            .into_iter()
            .filter_map(|m| self.queue.remove_entry(&m))
            .collect();
        self.batch_seq += 1;
        let applied = self.k(&format!(
            "applied:{owner}:{}:{}",
            self.batch_tag, self.batch_seq
        ));
        self.in_flight.push((applied, items));
    }

    /// Everything [`Store::sync`] sends, in order; on an error the caller persists the rest.
    fn push_all(&mut self, owner: &str) -> Result<Vec<(MeterKey, MeterTotals)>, StoreError> {
        let owners = self.k("owners");
        self.run(|con, _| {
            redis::cmd("ZADD")
                .arg(&owners)
                .arg(unix_now_ms())
                .arg(owner)
                .query::<()>(con)
        })?;
        // Batches whose answer was lost first, under their old ids.
        let mut totals = self.push_in_flight(owner)?;
        if self.spilled {
            // Back into the queue (summed per meter); each file goes as it is read, so what
            // follows cannot replay it twice.
            for (m, (spent, released)) in self.spill.take() {
                add(&mut self.queue, m, spent, released);
            }
            // A file that could not be removed kept its usage: try it again next time.
            self.spilled = self.spill.has_queue();
        }
        // Rate windows long gone need no settling (their keys have expired).
        let now_min = unix_now() / 60;
        self.queue
            .retain(|m, _| m.kind.is_budget() || m.window + 2 >= now_min);
        while !self.queue.is_empty() {
            self.next_batch(owner);
            totals.extend(self.push_in_flight(owner)?);
        }
        Ok(totals)
    }

    fn push_batch(
        &mut self,
        owner: &str,
        applied: &str,
        items: &[(MeterKey, (u64, u64))],
    ) -> Result<Vec<(MeterKey, MeterTotals)>, StoreError> {
        let keys: Vec<String> = items.iter().map(|(m, _)| self.meter_key(m)).collect();
        let ledgers = self.k("ledgers");
        let res: Vec<i64> = self.run(|con, s| {
            let mut inv = s.settle.key(applied);
            inv.key(&ledgers);
            for k in &keys {
                inv.key(k);
            }
            inv.arg(owner);
            for (m, (spent, released)) in items {
                let budget = m.kind.is_budget();
                inv.arg(*spent)
                    .arg(*released)
                    .arg(if budget { 0 } else { RATE_TTL_SECS })
                    .arg(if budget { m.kind.unit() } else { "" })
                    .arg(&m.ledger)
                    .arg(m.window);
            }
            inv.invoke(con)
        })?;
        Ok(items
            .iter()
            .enumerate()
            .map(|(i, (m, _))| {
                let spent = res.get(2 * i).copied().unwrap_or(0).max(0) as u64;
                let outstanding = res.get(2 * i + 1).copied().unwrap_or(0).max(0) as u64;
                (m.clone(), MeterTotals { spent, outstanding })
            })
            .collect())
    }
}

impl Store for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn load(&mut self, audit_tail: usize) -> Result<Persisted, StoreError> {
        let p = self
            .run(|con, s| Self::load_all(con, s, audit_tail))?
            .map_err(StoreError)?;
        self.cost_base = p
            .costs
            .iter()
            .map(|c| ((c.key_id.clone(), c.model.clone()), c.clone()))
            .collect();
        Ok(p)
    }

    fn write(&mut self, batch: &[Write]) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut commands = 0;
        let mut keys_changed = false;
        let mut reap: Option<(String, u64)> = None;
        let mut prune: Option<u64> = None;
        let mut costs = Vec::new();
        for w in batch {
            match w {
                Write::PutKey(k) => {
                    let json = serde_json::to_string(k)
                        .map_err(|e| StoreError(format!("key \"{}\": {e}", k.id)))?;
                    pipe.hset(self.k("keys"), &k.id, json).ignore();
                    keys_changed = true;
                    commands += 1;
                }
                Write::DeleteKey(id) => {
                    pipe.hdel(self.k("keys"), id).ignore();
                    keys_changed = true;
                    commands += 1;
                }
                // Ledgers and reservations are kept by the metering scripts themselves.
                Write::Ledger(_) | Write::Reservations { .. } => {}
                Write::Cost(c) => costs.push(c.clone()),
                Write::ReapReservations { keep_owner, before } => {
                    let cutoff = before
                        .saturating_mul(1000)
                        .min(unix_now_ms().saturating_sub(STALE_MS));
                    reap = Some((keep_owner.clone(), cutoff));
                }
                Write::Audit(a) => {
                    let json = serde_json::to_string(a)
                        .map_err(|e| StoreError(format!("audit entry: {e}")))?;
                    pipe.rpush(self.k("audit"), json).ignore();
                    commands += 1;
                }
                Write::PruneAudit { before_ts_ms } => prune = Some(*before_ts_ms),
            }
        }
        if keys_changed {
            pipe.incr(self.k("keys:version"), 1).ignore();
            pipe.publish(self.k("changes"), "keys").ignore();
        }
        if commands > 0 {
            self.run(|con, _| pipe.query::<()>(con))?;
        }
        self.push_costs(costs)?;
        if let Some((keep, cutoff)) = reap {
            let owners = self.k("owners");
            let prefix = self.prefix.clone();
            let (rows, units): (u64, u64) = self.run(|con, s| {
                s.reap
                    .key(&owners)
                    .arg(&prefix)
                    .arg(&keep)
                    .arg(cutoff)
                    .invoke(con)
            })?;
            if rows > 0 {
                crate::info!(
                    "redis store: reaped {rows} reservation(s) of dead processes ({units} units)"
                );
            }
        }
        if let Some(before) = prune {
            let audit = self.k("audit");
            self.run(|con, s| s.prune.key(&audit).arg(before).invoke::<i64>(con))?;
        }
        Ok(())
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        self.run(|con, _| redis::cmd("PING").query::<String>(con))
            .map(|_| ())
    }

    fn global(&mut self) -> Option<&mut dyn Global> {
        Some(self)
    }

    fn put_router(&mut self, json: &str) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .set(self.k("router"), json)
            .ignore()
            .publish(self.k("changes"), "router")
            .ignore();
        self.run(|con, _| pipe.query::<()>(con))
    }

    fn get_router(&mut self) -> Result<Option<String>, StoreError> {
        self.run(|con, s| {
            redis::cmd("GET")
                .arg(s.k("router"))
                .query::<Option<String>>(con)
        })
    }
}

impl Global for RedisStore {
    fn lease(
        &mut self,
        owner: &str,
        meter: &MeterKey,
        limit: u64,
        need: u64,
        cores: u64,
    ) -> Result<GlobalGrant, StoreError> {
        let key = self.meter_key(meter);
        let owner_set = self.k(&format!("owner:{owner}"));
        let ledgers = self.k("ledgers");
        let owners = self.k("owners");
        let budget = meter.kind.is_budget();
        let r: Vec<i64> = self.run(|con, s| {
            s.lease
                .key(&key)
                .key(&owner_set)
                .key(&ledgers)
                .key(&owners)
                .arg(owner)
                .arg(limit)
                .arg(need)
                .arg(cores)
                .arg(if meter.kind == Kind::Rpm { "1" } else { "0" })
                .arg(if budget { 0 } else { RATE_TTL_SECS })
                .arg(if budget { meter.kind.unit() } else { "" })
                .arg(&meter.ledger)
                .arg(meter.window)
                .arg(unix_now_ms())
                .invoke(con)
        })?;
        let at = |i: usize| r.get(i).copied().unwrap_or(0).max(0) as u64;
        Ok(GlobalGrant {
            granted: at(0),
            remaining: at(1),
            totals: MeterTotals {
                spent: at(2),
                outstanding: at(3),
            },
        })
    }

    fn settle(&mut self, meter: MeterKey, spent: u64, released: u64) {
        if spent == 0 && released == 0 {
            return;
        }
        add(&mut self.queue, meter, spent, released);
        if self.queue.len() > self.queue_max && self.spill_queue() {
            crate::warn!(
                "redis store: queued usage spilled to {}",
                self.spill.queue_path().display()
            );
        }
    }

    fn sync(&mut self, owner: &str) -> Result<Vec<(MeterKey, MeterTotals)>, StoreError> {
        let r = self.push_all(owner);
        if r.is_err() {
            self.persist();
        }
        r
    }

    fn totals(&mut self, meters: &[MeterKey]) -> Result<Vec<MeterTotals>, StoreError> {
        if meters.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = meters.iter().map(|m| self.meter_key(m)).collect();
        let r: Vec<(Option<u64>, Option<u64>)> = self.run(|con, _| {
            let mut p = redis::pipe();
            for k in &keys {
                p.cmd("HMGET").arg(k).arg("spent").arg("out");
            }
            p.query(con)
        })?;
        Ok(r.into_iter()
            .map(|(s, o)| MeterTotals {
                spent: s.unwrap_or(0),
                outstanding: o.unwrap_or(0),
            })
            .collect())
    }

    fn load_keys(&mut self) -> Result<Option<Vec<KeyRecord>>, StoreError> {
        self.last_resync = Instant::now();
        let (version, map): (Option<u64>, BTreeMap<String, String>) = self.run(|con, s| {
            redis::pipe()
                .get(s.k("keys:version"))
                .hgetall(s.k("keys"))
                .query(con)
        })?;
        if version.is_none() && map.is_empty() {
            // Every key write bumps the version: none at all means the data is gone.
            return Ok(None);
        }
        let mut out = Vec::with_capacity(map.len());
        for (id, json) in map {
            match serde_json::from_str::<KeyRecord>(&json) {
                Ok(k) => out.push(k),
                Err(e) => return Err(StoreError(format!("stored key \"{id}\": {e}"))),
            }
        }
        Ok(Some(out))
    }

    fn costs(&mut self) -> Result<Vec<CostRow>, StoreError> {
        // Increments not known to be applied first: the base below must include them.
        self.push_costs_in_flight()?;
        let rows = self.run(Self::load_costs)?;
        // These are now what this process's rows are measured against.
        self.cost_base = rows
            .iter()
            .map(|c| ((c.key_id.clone(), c.model.clone()), c.clone()))
            .collect();
        Ok(rows)
    }

    fn resync_due(&mut self) -> bool {
        self.last_resync.elapsed() >= RESYNC
    }

    fn watch(&mut self, notify: Box<dyn FnMut(bool) -> bool + Send>) {
        let client = self.client.clone();
        let channel = self.k("changes");
        let spawned = std::thread::Builder::new()
            .name("ditto-redis-sub".into())
            .spawn(move || subscriber(client, channel, notify));
        if let Err(e) = spawned {
            crate::error!(
                "redis store: cannot start the change subscriber: {e}; keys resync every {}s only",
                RESYNC.as_secs()
            );
        }
    }
}

/// The subscriber thread: on every message, and after every (re)subscription, it tells the
/// plane to reload keys and the router. Ends when the plane is gone.
fn subscriber(client: Client, channel: String, mut notify: Box<dyn FnMut(bool) -> bool + Send>) {
    let mut backoff = BACKOFF_MIN;
    while notify(false) {
        let mut con = match client.get_connection_with_timeout(IO_TIMEOUT) {
            Ok(c) => c,
            Err(_) => {
                // The plane logs the outage (its own calls fail too); just retry.
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let _ = con.set_write_timeout(Some(IO_TIMEOUT));
        let mut ps = con.as_pubsub();
        if ps.set_read_timeout(Some(Duration::from_secs(1))).is_err()
            || ps.subscribe(&channel).is_err()
        {
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        }
        backoff = BACKOFF_MIN;
        // Reload once subscribed, the first time too: a change published between the plane's
        // load at startup (or the last message before a reconnect) and this subscription
        // reached nobody here, and would otherwise wait for the periodic resync.
        if !notify(true) {
            return;
        }
        loop {
            match ps.get_message() {
                Ok(_) => {
                    if !notify(true) {
                        return;
                    }
                }
                Err(e) if e.is_timeout() => {
                    if !notify(false) {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::redis_server::RedisServer;
    use std::process::Command;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(
            redact_url("redis://user:hunter2@h:6380/1"),
            "redis://user@h:6380/1"
        );
        assert_eq!(redact_url("redis://h"), "redis://h");
        assert!(!redact_url("not a url hunter2").contains("hunter2"));
    }

    #[test]
    fn usage_queued_while_redis_is_down_spills_to_disk_and_is_replayed() {
        let Some(mut server) = RedisServer::start(false) else {
            return;
        };
        let url = server.url();
        let mut s = RedisStore::open(&url, "u1").expect("open");
        s.queue_max = 5;
        let meters: Vec<MeterKey> = (0..20)
            .map(|i| MeterKey {
                ledger: format!("key:k{i}"),
                kind: Kind::Tokens,
                window: 0,
            })
            .collect();
        server.kill();
        for m in &meters {
            s.settle(m.clone(), 10, 0);
            s.settle(m.clone(), 5, 0);
        }
        assert!(
            s.spilled && s.spill.queue_path().exists(),
            "the queue spilled to disk"
        );
        assert!(s.sync("owner").is_err(), "redis is down");
        server.restart();
        let end = Instant::now() + Duration::from_secs(15);
        while s.sync("owner").is_err() {
            assert!(Instant::now() < end, "never reconnected");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            !s.spill.queue_path().exists(),
            "the spill file is gone once replayed"
        );
        let totals = s.totals(&meters).expect("totals");
        assert!(totals.iter().all(|t| t.spent == 15), "{totals:?}");
        // The ledgers are indexed for the next start.
        let p = s.load(0).expect("load");
        assert_eq!(p.ledgers.len(), 20);
    }

    /// A relay to Redis that, once armed, forwards the next EVALSHA but closes the connection
    /// instead of passing Redis's answer back: a reply lost after the script ran.
    fn lossy_relay(port: u16, armed: Arc<AtomicBool>) -> u16 {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let relay = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                    continue;
                };
                let lose = Arc::new(AtomicBool::new(false));
                let (mut c_in, mut s_out) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let (armed, lose_up) = (armed.clone(), lose.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n @ 1..) = c_in.read(&mut buf) {
                        let evalsha = buf[..n].windows(7).any(|w| w == b"EVALSHA");
                        if evalsha && armed.swap(false, Ordering::SeqCst) {
                            lose_up.store(true, Ordering::SeqCst);
                        }
                        if s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
                let (mut s_in, mut c_out) = (server, client);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n @ 1..) = s_in.read(&mut buf) {
                        if lose.load(Ordering::SeqCst) || c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c_out.shutdown(std::net::Shutdown::Both);
                    let _ = s_in.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        relay
    }

    #[test]
    fn a_batch_whose_answer_was_lost_is_resent_under_its_id_and_counted_once() {
        let Some(server) = RedisServer::start(false) else {
            return;
        };
        let port = server.port();
        let armed = Arc::new(AtomicBool::new(false));
        let relay = lossy_relay(port, armed.clone());
        let mut s = RedisStore::open(&format!("redis://127.0.0.1:{relay}"), "u3").expect("open");
        let mut direct =
            RedisStore::open(&format!("redis://127.0.0.1:{port}"), "u3").expect("open");
        let m = MeterKey {
            ledger: "key:lost".into(),
            kind: Kind::Tokens,
            window: 0,
        };
        // One clean round loads the script, so the armed send runs it (no NOSCRIPT).
        s.settle(m.clone(), 1, 0);
        s.sync("o").expect("sync");
        s.settle(m.clone(), 10, 0);
        armed.store(true, Ordering::SeqCst);
        assert!(s.sync("o").is_err(), "the answer was lost");
        let spent =
            |d: &mut RedisStore| d.totals(std::slice::from_ref(&m)).expect("totals")[0].spent;
        assert_eq!(spent(&mut direct), 11, "Redis did run the batch");
        // More usage arrives meanwhile; the resend must not count the lost batch again.
        s.settle(m.clone(), 100, 0);
        let end = Instant::now() + Duration::from_secs(10);
        while s.sync("o").is_err() {
            assert!(Instant::now() < end, "never reconnected");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(spent(&mut direct), 111);
        assert!(s.in_flight.is_empty() && s.queue.is_empty());
    }

    #[test]
    fn usage_a_replica_left_while_redis_was_down_is_replayed_once_by_the_next() {
        let Some(mut server) = RedisServer::start(true) else {
            return;
        };
        let port = server.port();
        let armed = Arc::new(AtomicBool::new(false));
        let url = format!("redis://127.0.0.1:{}", lossy_relay(port, armed.clone()));
        let mut a = RedisStore::open(&url, "u5").expect("open");
        // `a` plays a replica that has since exited: its files are orphans.
        let dead = {
            let mut c = Command::new("true").spawn().expect("spawn");
            let pid = c.id();
            c.wait().expect("wait");
            pid
        };
        a.spill.set_pid_for_test(dead, "aa");
        let m = MeterKey {
            ledger: "key:left".into(),
            kind: Kind::Tokens,
            window: 0,
        };
        a.settle(m.clone(), 1, 0);
        a.sync("a").expect("sync");
        // A batch whose answer is lost (Redis did apply it), then Redis goes away.
        a.settle(m.clone(), 10, 0);
        armed.store(true, Ordering::SeqCst);
        assert!(a.sync("a").is_err());
        server.kill();
        a.settle(m.clone(), 100, 0);
        assert!(a.sync("a").is_err(), "redis is down");
        assert!(
            a.queue.is_empty(),
            "the usage went to disk at the failed flush"
        );
        drop(a);

        server.restart();
        let mut b = RedisStore::open(&url, "u5").expect("open");
        let end = Instant::now() + Duration::from_secs(10);
        while b.sync("b").is_err() {
            assert!(Instant::now() < end, "never reconnected");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut direct =
            RedisStore::open(&format!("redis://127.0.0.1:{port}"), "u5").expect("open");
        let spent = direct.totals(std::slice::from_ref(&m)).expect("totals")[0].spent;
        assert_eq!(
            spent, 111,
            "every unit once: the lost batch under its old id, the queue"
        );
        assert!(!b.spilled && b.in_flight.is_empty());
    }

    #[test]
    fn the_subscriber_asks_for_a_reload_as_soon_as_it_is_subscribed() {
        let Some(server) = RedisServer::start(false) else {
            return;
        };
        let port = server.port();
        let client = Client::open(format!("redis://127.0.0.1:{port}")).expect("client");
        let (tx, rx) = flume::unbounded();
        let sub = std::thread::spawn(move || {
            // Runs until the notify callback says the plane is gone.
            subscriber(
                client,
                "u6:changes".into(),
                Box::new(move |fire| {
                    if fire {
                        // The plane asked to reload: report it, then end the thread.
                        let _ = tx.send(());
                        return false;
                    }
                    true
                }),
            )
        });
        // No message was published: the first reload comes from subscribing itself.
        rx.recv_timeout(Duration::from_secs(10))
            .expect("a reload right after subscribing");
        sub.join().expect("subscriber");
    }

    #[test]
    fn cost_increments_whose_answer_was_lost_are_counted_once() {
        let Some(server) = RedisServer::start(false) else {
            return;
        };
        let port = server.port();
        let armed = Arc::new(AtomicBool::new(false));
        let relay = lossy_relay(port, armed.clone());
        let mut s = RedisStore::open(&format!("redis://127.0.0.1:{relay}"), "u4").expect("open");
        let mut direct =
            RedisStore::open(&format!("redis://127.0.0.1:{port}"), "u4").expect("open");
        let row = |requests: u64| CostRow {
            key_id: "k".into(),
            model: "gpt-4o".into(),
            requests,
            prompt_tokens: requests * 10,
            completion_tokens: requests,
            cost_pico: requests * 1_000,
        };
        s.write(&[Write::Cost(row(1))]).expect("write");
        armed.store(true, Ordering::SeqCst);
        assert!(
            s.write(&[Write::Cost(row(3))]).is_err(),
            "the answer was lost"
        );
        let requests = |d: &mut RedisStore| d.costs().expect("costs")[0].requests;
        assert_eq!(requests(&mut direct), 3, "Redis did apply the increments");
        let end = Instant::now() + Duration::from_secs(10);
        while s.write(&[Write::Cost(row(4))]).is_err() {
            assert!(Instant::now() < end, "never reconnected");
            std::thread::sleep(Duration::from_millis(50));
        }
        let got = direct.costs().expect("costs");
        assert_eq!(got, vec![row(4)]);
    }

    #[test]
    fn leases_from_two_processes_never_exceed_the_limit() {
        let Some(server) = RedisServer::start(false) else {
            return;
        };
        let port = server.port();
        let url = format!("redis://127.0.0.1:{port}");
        let mut a = RedisStore::open(&url, "u2").expect("open");
        let mut b = RedisStore::open(&url, "u2").expect("open");
        let m = MeterKey {
            ledger: "key:x".into(),
            kind: Kind::Tokens,
            window: 0,
        };
        let mut granted = [0u64; 2];
        for i in 0.. {
            let s = if i % 2 == 0 { &mut a } else { &mut b };
            let g = s
                .lease(&format!("o{}", i % 2), &m, 1000, 7, 4)
                .expect("lease");
            if g.granted == 0 {
                break;
            }
            granted[i % 2] += g.granted;
        }
        let total = granted[0] + granted[1];
        assert!(total <= 1000 && total > 990, "{total}");
        let reap = |a: &mut RedisStore| {
            a.write(&[Write::ReapReservations {
                keep_owner: "o0".into(),
                before: u64::MAX,
            }])
            .expect("reap");
            a.totals(std::slice::from_ref(&m)).expect("totals")[0]
        };
        // Both owners are alive (fresh heartbeats): nothing is reaped.
        assert_eq!(reap(&mut a).outstanding, total);
        // o1 falls silent: its leases go back, o0's stay.
        a.run(|con, s| {
            redis::cmd("ZADD")
                .arg(s.k("owners"))
                .arg(0)
                .arg("o1")
                .query::<()>(con)
        })
        .expect("zadd");
        assert_eq!(reap(&mut a).outstanding, granted[0]);
    }
}
