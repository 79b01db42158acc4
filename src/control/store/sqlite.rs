//! The SQLite store (`--sqlite PATH`): one file on one node keeps keys, ledgers, cost totals,
//! reservations and the audit log across restarts.
//!
//! # Choices
//!
//! * **WAL journal** (`journal_mode=WAL`). A write appends to `PATH-wal` instead of rewriting
//!   pages in place, so readers (an operator running `sqlite3 PATH` for a report, `/ready`'s
//!   ping) never block the control plane's writes and the writes never block them. The store
//!   needs `PATH-wal` and `PATH-shm` next to the file, so the *directory* must be writable.
//! * **`synchronous=NORMAL`**. A commit writes the transaction to the WAL but does not `fsync`
//!   it; the WAL is synced at checkpoints. What that means:
//!   - a process killed at any point (`kill -9`, a panic, the OOM killer) loses **nothing** that
//!     was committed: the WAL is in the OS page cache, the next open replays it. What the plane
//!     had not yet handed to [`Store::write`] (at most one flush interval of settled usage) is
//!     lost, and that bound is the plane's, not this store's;
//!   - a power loss or kernel crash may roll back the last transactions committed since the WAL
//!     was last synced, but never corrupts the file: after reboot it opens in the state of some
//!     earlier commit, every batch whole or absent.
//!
//!   `FULL` would close that window at the price of an `fsync` per batch; ledgers are written as
//!   absolute totals in batches, so losing a few of the last ones under a power cut costs at most
//!   that much of usage accounting, which we judge acceptable for the throughput.
//! * **One transaction per batch** (`BEGIN IMMEDIATE`): [`Store::write`] applies all of a batch
//!   or none of it, with cached prepared statements.
//! * **Busy timeout** (2 s by default, [`SqliteStore::open_with`] to change it): a file briefly
//!   locked by another process (a backup, an operator's `sqlite3` session) is waited for; after
//!   the timeout the write fails with `database is locked by another process: PATH`, and the
//!   plane keeps the batch to retry (writes are absolute, so a retry is harmless).
//! * **Schema version** in `PRAGMA user_version` (currently 2: version 1 had no `settings`
//!   table; opening such a file adds it). A file with a newer version, written by a later
//!   gateway, is refused rather than misread.
//! * **Settings**: one row per name in `settings`; `router` holds the router JSON of the last
//!   `PUT /admin/config/router`.
//! * **Integers.** SQLite integers are signed 64-bit. Every `u64` (ledger totals, token counts,
//!   pico-USD costs, timestamps, audit ids) is stored as `i64`; a value above `i64::MAX`
//!   (9.2e18, i.e. 9.2 million USD in pico-USD, or 9.2e18 tokens) is **saturated** to `i64::MAX`
//!   rather than wrapped. Reading a negative value back is a corrupt row.
//! * **Keys** are stored as their [`KeyRecord`] in JSON plus the `id` and `token_hash` columns
//!   that index it; `token_hash` is `UNIQUE`, the last line of defence against two keys with one
//!   token (the plane checks first). Only the hash of a token is ever stored.
//! * **Corrupt rows** (a wrong type, a negative count, a record that is not valid JSON) make
//!   [`Store::load`] fail with an error naming the table and the row; nothing read from the
//!   file is unwrapped.
//!
//! Semantics of every [`Write`] are those of [`super::memory::MemoryStore`] (the tests compare
//! the two), with two refinements a table with a primary key brings: an [`Write::Audit`] entry
//! with an id already present replaces it (so a retried batch does not duplicate it), and rows
//! of a [`Write::Reservations`] that share an `(owner, scope, unit, period)` keep the last one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OpenFlags, Row, TransactionBehavior};

use super::{AuditEntry, CostRow, LedgerRow, Persisted, ReservationRow, Store, StoreError, Write};
use crate::control::keys::KeyRecord;

/// The schema version this build writes and reads (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 2;

/// How long a locked database is waited for by [`SqliteStore::open`].
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(2);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    token_hash TEXT UNIQUE NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ledgers (
    scope TEXT NOT NULL,
    unit TEXT NOT NULL,
    period INTEGER NOT NULL,
    spent INTEGER NOT NULL,
    PRIMARY KEY (scope, unit, period)
);
CREATE TABLE IF NOT EXISTS costs (
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_pico INTEGER NOT NULL,
    PRIMARY KEY (key_id, model)
);
CREATE TABLE IF NOT EXISTS reservations (
    owner TEXT NOT NULL,
    scope TEXT NOT NULL,
    unit TEXT NOT NULL,
    period INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (owner, scope, unit, period)
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_ts_ms ON audit (ts_ms);
CREATE TABLE IF NOT EXISTS settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// A [`Store`] in one SQLite file (WAL mode). Open it with [`SqliteStore::open`].
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    busy_timeout: Duration,
}

impl SqliteStore {
    /// Open (creating it if missing) the store at `path`, waiting up to
    /// [`DEFAULT_BUSY_TIMEOUT`] for a lock held by another process.
    ///
    /// The parent directory must exist and be writable (WAL needs `PATH-wal` and `PATH-shm`
    /// beside the file). Errors name the path and the cause: a directory, a file that is not a
    /// SQLite database, a read-only file or directory, a schema newer than this build, a lock.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(path, DEFAULT_BUSY_TIMEOUT)
    }

    /// [`SqliteStore::open`] with the time a locked database is waited for, at open and on
    /// every [`Store::write`], before failing with `database is locked by another process`.
    pub fn open_with(path: &Path, busy_timeout: Duration) -> Result<SqliteStore, StoreError> {
        if path.is_dir() {
            return Err(StoreError(format!(
                "cannot open SQLite store {}: it is a directory, not a file",
                path.display()
            )));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, &e))?;
        let mut store = SqliteStore {
            conn,
            path: path.to_path_buf(),
            busy_timeout,
        };
        store.init().map_err(|e| match e {
            // A raw SQLite error from the first accesses: explain it with the path and a hint.
            InitError::Sqlite(e) => store.open_error_late(&e),
            InitError::Store(e) => e,
        })?;
        Ok(store)
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn init(&mut self) -> Result<(), InitError> {
        self.conn.busy_timeout(self.busy_timeout)?;
        // Reading the header is the first access to the file: a file that is not a database
        // fails here with `NotADatabase`.
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if self.conn.is_readonly(rusqlite::DatabaseName::Main)? {
            return Err(InitError::Store(StoreError(format!(
                "cannot open SQLite store {}: the file is read-only (the store must write to it)",
                self.path.display()
            ))));
        }
        if version > SCHEMA_VERSION {
            return Err(InitError::Store(StoreError(format!(
                "cannot open SQLite store {}: schema version {version} is newer than this \
                 gateway supports ({SCHEMA_VERSION}); upgrade the gateway or use another file",
                self.path.display()
            ))));
        }
        let mode: String = self
            .conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(InitError::Store(StoreError(format!(
                "cannot open SQLite store {}: WAL journal mode refused (journal_mode is {mode:?}); \
                 is it on a file system without shared memory support?",
                self.path.display()
            ))));
        }
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        if version < SCHEMA_VERSION {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Checked again under the write lock: another process may have created it.
            let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if version < SCHEMA_VERSION {
                tx.execute_batch(SCHEMA)?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            }
            tx.commit()?;
        }
        Ok(())
    }

    /// An error from the first accesses to the file, with the hints of [`open_error`].
    fn open_error_late(&self, e: &rusqlite::Error) -> StoreError {
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => self.err("open", e),
            Some(ErrorCode::NotADatabase) => StoreError(format!(
                "cannot open SQLite store {}: the file is not a SQLite database ({e})",
                self.path.display()
            )),
            _ => open_error(&self.path, e),
        }
    }

    /// Map a SQLite error from `what` (an operation) to a [`StoreError`] naming the path.
    fn err(&self, what: &str, e: &rusqlite::Error) -> StoreError {
        explain(&self.path, self.busy_timeout, what, e)
    }

    fn apply(&mut self, batch: &[Write]) -> rusqlite::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for w in batch {
            match w {
                Write::PutKey(k) => {
                    let record = serde_json::to_string(k)
                        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                    tx.prepare_cached(
                        "INSERT INTO keys (id, token_hash, record) VALUES (?1, ?2, ?3)
                         ON CONFLICT (id) DO UPDATE
                         SET token_hash = excluded.token_hash, record = excluded.record",
                    )?
                    .execute(params![k.id, k.token_hash, record])?;
                }
                Write::DeleteKey(id) => {
                    tx.prepare_cached("DELETE FROM keys WHERE id = ?1")?
                        .execute(params![id])?;
                }
                Write::Ledger(l) => {
                    tx.prepare_cached(
                        "INSERT INTO ledgers (scope, unit, period, spent) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (scope, unit, period) DO UPDATE SET spent = excluded.spent",
                    )?
                    .execute(params![
                        l.scope,
                        l.unit,
                        sat(l.period),
                        sat(l.spent)
                    ])?;
                }
                Write::Cost(c) => {
                    tx.prepare_cached(
                        "INSERT INTO costs
                         (key_id, model, requests, prompt_tokens, completion_tokens, cost_pico)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT (key_id, model) DO UPDATE SET
                         requests = excluded.requests, prompt_tokens = excluded.prompt_tokens,
                         completion_tokens = excluded.completion_tokens,
                         cost_pico = excluded.cost_pico",
                    )?
                    .execute(params![
                        c.key_id,
                        c.model,
                        sat(c.requests),
                        sat(c.prompt_tokens),
                        sat(c.completion_tokens),
                        sat(c.cost_pico)
                    ])?;
                }
                Write::Reservations { owner, rows } => {
                    tx.prepare_cached("DELETE FROM reservations WHERE owner = ?1")?
                        .execute(params![owner])?;
                    let mut insert = tx.prepare_cached(
                        "INSERT OR REPLACE INTO reservations
                         (owner, scope, unit, period, amount, updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?;
                    for r in rows {
                        insert.execute(params![
                            r.owner,
                            r.scope,
                            r.unit,
                            sat(r.period),
                            sat(r.amount),
                            sat(r.updated_at)
                        ])?;
                    }
                }
                Write::ReapReservations { keep_owner, before } => {
                    tx.prepare_cached(
                        "DELETE FROM reservations WHERE owner <> ?1 AND updated_at < ?2",
                    )?
                    .execute(params![keep_owner, sat(*before)])?;
                }
                Write::Audit(a) => {
                    let detail = serde_json::to_string(&a.detail)
                        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO audit (id, ts_ms, actor, action, target, detail)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![
                        sat(a.id),
                        sat(a.ts_ms),
                        a.actor,
                        a.action,
                        a.target,
                        detail
                    ])?;
                }
                Write::PruneAudit { before_ts_ms } => {
                    tx.prepare_cached("DELETE FROM audit WHERE ts_ms < ?1")?
                        .execute(params![sat(*before_ts_ms)])?;
                }
            }
        }
        tx.commit()
    }

    fn read_all(&mut self, audit_tail: usize) -> Result<Persisted, StoreError> {
        let path = self.path.clone();
        let busy = self.busy_timeout;
        let sql = |what: &str, e: rusqlite::Error| explain(&path, busy, what, &e);
        // One read transaction: a consistent snapshot even if another process writes.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .map_err(|e| sql("load", e))?;
        let mut out = Persisted::default();

        {
            let mut stmt = tx
                .prepare_cached("SELECT rowid, id, token_hash, record FROM keys ORDER BY id")
                .map_err(|e| sql("load keys", e))?;
            let mut rows = stmt.query([]).map_err(|e| sql("load keys", e))?;
            while let Some(row) = rows.next().map_err(|e| sql("load keys", e))? {
                let r = Cells::new(row, "keys")?;
                let id = r.text(1, "id")?;
                let token_hash = r.text(2, "token_hash")?;
                let record = r.text(3, "record")?;
                let key: KeyRecord = serde_json::from_str(&record).map_err(|e| {
                    StoreError(format!(
                        "corrupt row in table keys (id {id:?}): record is not a valid key: {e}"
                    ))
                })?;
                if key.id != id || key.token_hash != token_hash {
                    return Err(StoreError(format!(
                        "corrupt row in table keys (id {id:?}): the record's id or token_hash \
                         does not match the row's columns"
                    )));
                }
                out.keys.push(key);
            }
        }
        {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT rowid, scope, unit, period, spent FROM ledgers
                     ORDER BY scope, unit, period",
                )
                .map_err(|e| sql("load ledgers", e))?;
            let mut rows = stmt.query([]).map_err(|e| sql("load ledgers", e))?;
            while let Some(row) = rows.next().map_err(|e| sql("load ledgers", e))? {
                let r = Cells::new(row, "ledgers")?;
                out.ledgers.push(LedgerRow {
                    scope: r.text(1, "scope")?,
                    unit: r.text(2, "unit")?,
                    period: r.uint(3, "period")?,
                    spent: r.uint(4, "spent")?,
                });
            }
        }
        {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT rowid, key_id, model, requests, prompt_tokens, completion_tokens,
                     cost_pico FROM costs ORDER BY key_id, model",
                )
                .map_err(|e| sql("load costs", e))?;
            let mut rows = stmt.query([]).map_err(|e| sql("load costs", e))?;
            while let Some(row) = rows.next().map_err(|e| sql("load costs", e))? {
                let r = Cells::new(row, "costs")?;
                out.costs.push(CostRow {
                    key_id: r.text(1, "key_id")?,
                    model: r.text(2, "model")?,
                    requests: r.uint(3, "requests")?,
                    prompt_tokens: r.uint(4, "prompt_tokens")?,
                    completion_tokens: r.uint(5, "completion_tokens")?,
                    cost_pico: r.uint(6, "cost_pico")?,
                });
            }
        }
        {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT rowid, owner, scope, unit, period, amount, updated_at
                     FROM reservations ORDER BY owner, scope, unit, period",
                )
                .map_err(|e| sql("load reservations", e))?;
            let mut rows = stmt.query([]).map_err(|e| sql("load reservations", e))?;
            while let Some(row) = rows.next().map_err(|e| sql("load reservations", e))? {
                let r = Cells::new(row, "reservations")?;
                out.reservations.push(ReservationRow {
                    owner: r.text(1, "owner")?,
                    scope: r.text(2, "scope")?,
                    unit: r.text(3, "unit")?,
                    period: r.uint(4, "period")?,
                    amount: r.uint(5, "amount")?,
                    updated_at: r.uint(6, "updated_at")?,
                });
            }
        }
        {
            // The newest `audit_tail` entries, returned oldest first.
            let mut stmt = tx
                .prepare_cached(
                    "SELECT rowid, id, ts_ms, actor, action, target, detail FROM
                     (SELECT rowid, * FROM audit ORDER BY id DESC LIMIT ?1) ORDER BY id ASC",
                )
                .map_err(|e| sql("load audit", e))?;
            let tail = i64::try_from(audit_tail).unwrap_or(i64::MAX);
            let mut rows = stmt.query([tail]).map_err(|e| sql("load audit", e))?;
            while let Some(row) = rows.next().map_err(|e| sql("load audit", e))? {
                let r = Cells::new(row, "audit")?;
                let detail = r.text(6, "detail")?;
                out.audit.push(AuditEntry {
                    id: r.uint(1, "id")?,
                    ts_ms: r.uint(2, "ts_ms")?,
                    actor: r.text(3, "actor")?,
                    action: r.text(4, "action")?,
                    target: r.opt_text(5, "target")?,
                    detail: serde_json::from_str(&detail).map_err(|e| r.bad("detail", &e))?,
                });
            }
        }
        tx.commit().map_err(|e| sql("load", e))?;
        Ok(out)
    }
}

/// Why `init` failed: a SQLite error to be explained, or an explanation already.
enum InitError {
    Sqlite(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for InitError {
    fn from(e: rusqlite::Error) -> InitError {
        InitError::Sqlite(e)
    }
}

/// Map a SQLite error from `what` (an operation) to a [`StoreError`] naming the path.
fn explain(path: &Path, busy_timeout: Duration, what: &str, e: &rusqlite::Error) -> StoreError {
    let path = path.display();
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError(format!(
            "database is locked by another process: {path} ({what}: gave up after waiting {} ms)",
            busy_timeout.as_millis()
        )),
        Some(ErrorCode::ConstraintViolation) if e.to_string().contains("keys.token_hash") => {
            StoreError(format!(
                "sqlite store {path}: {what}: token already belongs to another key \
                     (keys.token_hash must be unique)"
            ))
        }
        Some(ErrorCode::ReadOnly) => StoreError(format!(
            "sqlite store {path}: {what}: the database is read-only ({e})"
        )),
        Some(ErrorCode::DiskFull) => {
            StoreError(format!("sqlite store {path}: {what}: disk full ({e})"))
        }
        Some(ErrorCode::NotADatabase) => StoreError(format!(
            "sqlite store {path}: {what}: the file is not a SQLite database ({e})"
        )),
        _ => StoreError(format!("sqlite store {path}: {what}: {e}")),
    }
}

/// Explain why the file at `path` could not be opened or created.
fn open_error(path: &Path, e: &rusqlite::Error) -> StoreError {
    let shown = path.display();
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let hint = if !parent.is_dir() {
        format!("directory {} does not exist", parent.display())
    } else if path.exists() {
        match std::fs::metadata(path) {
            Ok(m) if m.permissions().readonly() => "the file is read-only".to_string(),
            _ => format!(
                "check the permissions of the file and of directory {} (WAL needs to create \
                 {shown}-wal and {shown}-shm there)",
                parent.display()
            ),
        }
    } else {
        format!(
            "cannot create the file: is directory {} writable?",
            parent.display()
        )
    };
    StoreError(format!("cannot open SQLite store {shown}: {hint} ({e})"))
}

/// Store a `u64` in a SQLite integer: values above `i64::MAX` saturate.
fn sat(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The cells of one row being loaded, read without trusting their types.
struct Cells<'a, 'b> {
    row: &'a Row<'b>,
    table: &'static str,
    rowid: i64,
}

impl<'a, 'b> Cells<'a, 'b> {
    fn new(row: &'a Row<'b>, table: &'static str) -> Result<Cells<'a, 'b>, StoreError> {
        let rowid = row.get::<_, i64>(0).map_err(|e| {
            StoreError(format!(
                "corrupt row in table {table}: unreadable rowid: {e}"
            ))
        })?;
        Ok(Cells { row, table, rowid })
    }

    fn bad(&self, col: &str, why: &dyn std::fmt::Display) -> StoreError {
        StoreError(format!(
            "corrupt row in table {} (rowid {}): column {col}: {why}",
            self.table, self.rowid
        ))
    }

    fn text(&self, idx: usize, col: &str) -> Result<String, StoreError> {
        self.row.get(idx).map_err(|e| self.bad(col, &e))
    }

    fn opt_text(&self, idx: usize, col: &str) -> Result<Option<String>, StoreError> {
        self.row.get(idx).map_err(|e| self.bad(col, &e))
    }

    fn uint(&self, idx: usize, col: &str) -> Result<u64, StoreError> {
        let v: i64 = self.row.get(idx).map_err(|e| self.bad(col, &e))?;
        u64::try_from(v).map_err(|_| self.bad(col, &format!("negative value {v}")))
    }
}

impl Store for SqliteStore {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn load(&mut self, audit_tail: usize) -> Result<Persisted, StoreError> {
        self.read_all(audit_tail)
    }

    fn write(&mut self, batch: &[Write]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.apply(batch)
            .map_err(|e| self.err(&format!("write of {} changes", batch.len()), &e))
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        // Reads the file header: fails if the file became unreadable.
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
            .map(|_| ())
            .map_err(|e| self.err("ping", &e))
    }

    fn put_router(&mut self, json: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO settings (name, value) VALUES ('router', ?1) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                params![json],
            )
            .map(|_| ())
            .map_err(|e| self.err("write of the router", &e))
    }

    fn get_router(&mut self) -> Result<Option<String>, StoreError> {
        use rusqlite::OptionalExtension;
        self.conn
            .query_row(
                "SELECT value FROM settings WHERE name = 'router'",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map_err(|e| self.err("read of the router", &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::store::memory::MemoryStore;
    use serde_json::json;
    use std::time::Instant;

    fn key(id: &str, n: u8) -> KeyRecord {
        serde_json::from_value(json!({
            "id": id,
            "token_hash": format!("sha256:{}", format!("{n:02x}").repeat(32)),
        }))
        .unwrap()
    }

    /// A key using every field, so the JSON record round-trip is exercised.
    fn rich_key(id: &str, n: u8) -> KeyRecord {
        serde_json::from_value(json!({
            "id": id,
            "token_hash": format!("sha256:{}", format!("{n:02x}").repeat(32)),
            "enabled": false,
            "tenant_id": "acme",
            "project_id": "p1",
            "user_id": "u1",
            "route": "openai-east",
            "limits": {"rpm": 60, "tpm": 100000},
            "budget": {"total_tokens": 1000000, "total_usd_micros": 5000000, "period": "monthly"},
            "tenant_limits": {"rpm": 600},
            "tenant_budget": {"total_usd_micros": 90000000, "period": "daily"},
            "project_limits": {"tpm": 5},
            "project_budget": {"total_tokens": 7},
            "user_limits": {"rpm": 0},
            "user_budget": {"total_tokens": 0},
            "extra": {"models": ["gpt-4o"], "metadata": {"team": "x", "n": 1.5}},
            "source": "admin",
            "created_at": 1_700_000_000u64,
            "updated_at": 1_700_000_100u64,
        }))
        .unwrap()
    }

    fn ledger(scope: &str, unit: &str, period: u64, spent: u64) -> Write {
        Write::Ledger(LedgerRow {
            scope: scope.into(),
            unit: unit.into(),
            period,
            spent,
        })
    }

    fn cost(key_id: &str, model: &str, n: u64) -> Write {
        Write::Cost(CostRow {
            key_id: key_id.into(),
            model: model.into(),
            requests: n,
            prompt_tokens: n * 10,
            completion_tokens: n * 20,
            cost_pico: n * 1_000_000,
        })
    }

    fn res(owner: &str, scope: &str, amount: u64, updated_at: u64) -> ReservationRow {
        ReservationRow {
            owner: owner.into(),
            scope: scope.into(),
            unit: "tokens".into(),
            period: 0,
            amount,
            updated_at,
        }
    }

    fn audit(id: u64, ts_ms: u64) -> Write {
        Write::Audit(AuditEntry {
            id,
            ts_ms,
            actor: "admin".into(),
            action: "key.create".into(),
            target: if id.is_multiple_of(2) {
                Some(format!("k{id}"))
            } else {
                None
            },
            detail: json!({"id": id, "nested": {"a": [1, 2, null]}}),
        })
    }

    fn temp_store(dir: &tempfile::TempDir) -> SqliteStore {
        SqliteStore::open(&dir.path().join("store.db")).unwrap()
    }

    /// `load` of both stores, normalised to one order where `MemoryStore` keeps insertion
    /// order (audit entries are compared in the order returned: oldest first in both).
    fn assert_same(sql: &mut SqliteStore, mem: &mut MemoryStore) {
        for tail in [0, 1, 3, usize::MAX] {
            let a = sql.load(tail).unwrap();
            let mut b = mem.load(tail).unwrap();
            b.keys.sort_by(|x, y| x.id.cmp(&y.id));
            b.ledgers
                .sort_by(|x, y| (&x.scope, &x.unit, x.period).cmp(&(&y.scope, &y.unit, y.period)));
            b.costs
                .sort_by(|x, y| (&x.key_id, &x.model).cmp(&(&y.key_id, &y.model)));
            b.reservations.sort_by(|x, y| {
                (&x.owner, &x.scope, &x.unit, x.period)
                    .cmp(&(&y.owner, &y.scope, &y.unit, y.period))
            });
            assert_eq!(a.keys, b.keys, "keys (tail {tail})");
            assert_eq!(a.ledgers, b.ledgers, "ledgers (tail {tail})");
            assert_eq!(a.costs, b.costs, "costs (tail {tail})");
            assert_eq!(a.reservations, b.reservations, "reservations (tail {tail})");
            assert_eq!(a.audit, b.audit, "audit (tail {tail})");
        }
    }

    /// Apply `batch` to both stores and compare what they hold afterwards.
    fn apply_both(sql: &mut SqliteStore, mem: &mut MemoryStore, batch: &[Write]) {
        sql.write(batch).unwrap();
        mem.write(batch).unwrap();
        assert_same(sql, mem);
    }

    /// Batches using every kind of write, in an order that updates, deletes, replaces and
    /// reaps what earlier batches wrote.
    fn scenario() -> Vec<Vec<Write>> {
        vec![
            vec![
                Write::PutKey(key("a", 1)),
                Write::PutKey(rich_key("b", 2)),
                ledger("key:a", "tokens", 0, 100),
                ledger("key:a", "usd_pico", 0, 5),
                ledger("tenant:acme", "tokens", 20_000, 7),
                cost("a", "gpt-4o", 1),
                cost("a", "gpt-4o-mini", 2),
                cost("b", "gpt-4o", 3),
                Write::Reservations {
                    owner: "p1".into(),
                    rows: vec![res("p1", "key:a", 10, 100), res("p1", "key:b", 20, 100)],
                },
                Write::Reservations {
                    owner: "p2".into(),
                    rows: vec![res("p2", "key:a", 30, 50)],
                },
                Write::Reservations {
                    owner: "p3".into(),
                    rows: vec![res("p3", "key:a", 40, 500)],
                },
                audit(1, 1000),
                audit(2, 2000),
                audit(3, 3000),
            ],
            vec![
                // Update a key (new token, new fields), delete one, delete a missing one.
                Write::PutKey(rich_key("a", 3)),
                Write::DeleteKey("b".into()),
                Write::DeleteKey("missing".into()),
                // Absolute totals: the new value replaces the old.
                ledger("key:a", "tokens", 0, 250),
                ledger("key:a", "tokens", 1, 1),
                cost("a", "gpt-4o", 9),
                // Replace p1's rows; clear p3's; reap stale rows of others.
                Write::Reservations {
                    owner: "p1".into(),
                    rows: vec![res("p1", "key:c", 5, 400)],
                },
                Write::ReapReservations {
                    keep_owner: "p1".into(),
                    before: 200,
                },
                audit(4, 4000),
                audit(5, 5000),
                Write::PruneAudit { before_ts_ms: 3000 },
            ],
            vec![
                // The token of a deleted key may be reused by another id.
                Write::PutKey(key("c", 2)),
                Write::Reservations {
                    owner: "p3".into(),
                    rows: vec![],
                },
                Write::Reservations {
                    owner: "p2".into(),
                    rows: vec![res("p2", "key:z", 1, 900)],
                },
                ledger("key:c", "usd_pico", 3, i64::MAX as u64),
                audit(6, 6000),
            ],
            vec![],
        ]
    }

    #[test]
    fn every_write_kind_matches_memory_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut sql = temp_store(&dir);
        let mut mem = MemoryStore::new();
        assert_same(&mut sql, &mut mem);
        for batch in scenario() {
            apply_both(&mut sql, &mut mem, &batch);
        }
        let p = sql.load(usize::MAX).unwrap();
        assert_eq!(p.keys.len(), 2);
        assert_eq!(
            p.audit.iter().map(|a| a.id).collect::<Vec<_>>(),
            [3, 4, 5, 6]
        );
        assert_eq!(sql.name(), "sqlite");
        assert_eq!(sql.path(), dir.path().join("store.db"));
        sql.ping().unwrap();
    }

    #[test]
    fn a_batch_written_twice_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let mut sql = temp_store(&dir);
        let batch = scenario().remove(0);
        sql.write(&batch).unwrap();
        let once = sql.load(100).unwrap();
        sql.write(&batch).unwrap();
        let twice = sql.load(100).unwrap();
        assert_eq!(once.keys, twice.keys);
        assert_eq!(once.ledgers, twice.ledgers);
        assert_eq!(once.costs, twice.costs);
        assert_eq!(once.reservations, twice.reservations);
        assert_eq!(once.audit, twice.audit);
    }

    #[test]
    fn audit_tail_is_the_newest_entries_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut sql = temp_store(&dir);
        let batch: Vec<Write> = [7, 3, 10, 1, 5].iter().map(|&i| audit(i, i * 10)).collect();
        sql.write(&batch).unwrap();
        let ids = |p: Persisted| p.audit.iter().map(|a| a.id).collect::<Vec<_>>();
        assert_eq!(ids(sql.load(3).unwrap()), [5, 7, 10]);
        assert_eq!(ids(sql.load(0).unwrap()), Vec::<u64>::new());
        assert_eq!(ids(sql.load(100).unwrap()), [1, 3, 5, 7, 10]);
    }

    #[test]
    fn values_above_i64_max_saturate() {
        let dir = tempfile::tempdir().unwrap();
        let mut sql = temp_store(&dir);
        sql.write(&[ledger("s", "tokens", u64::MAX, u64::MAX)])
            .unwrap();
        let p = sql.load(0).unwrap();
        assert_eq!(p.ledgers[0].period, i64::MAX as u64);
        assert_eq!(p.ledgers[0].spent, i64::MAX as u64);
    }

    #[test]
    fn reopen_after_drop_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let mut mem = MemoryStore::new();
        for batch in scenario() {
            let mut sql = temp_store(&dir);
            apply_both(&mut sql, &mut mem, &batch);
            drop(sql);
            let mut sql = temp_store(&dir);
            assert_same(&mut sql, &mut mem);
        }
    }

    #[test]
    fn the_router_survives_a_reopen_and_a_version_1_file_gains_the_settings_table() {
        let dir = tempfile::tempdir().unwrap();
        let mut sql = temp_store(&dir);
        assert_eq!(sql.get_router().unwrap(), None);
        sql.put_router(r#"{"default_backends":[]}"#).unwrap();
        sql.put_router(r#"{"strategy":"latency"}"#).unwrap();
        drop(sql);
        let mut sql = temp_store(&dir);
        assert_eq!(
            sql.get_router().unwrap().as_deref(),
            Some(r#"{"strategy":"latency"}"#)
        );
        // A file written by a build with schema version 1 (no `settings` table).
        sql.conn
            .execute_batch("DROP TABLE settings; PRAGMA user_version = 1;")
            .unwrap();
        drop(sql);
        let mut sql = temp_store(&dir);
        assert_eq!(sql.get_router().unwrap(), None);
        sql.put_router("{}").unwrap();
        assert_eq!(sql.get_router().unwrap().as_deref(), Some("{}"));
    }

    #[test]
    fn wal_mode_and_normal_sync_are_on() {
        let dir = tempfile::tempdir().unwrap();
        let sql = temp_store(&dir);
        let mode: String = sql
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = sql
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 1, "synchronous=NORMAL");
        let version: i64 = sql
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        // Persisted in the file: a plain connection sees WAL too.
        drop(sql);
        let conn = Connection::open(dir.path().join("store.db")).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    fn open_err(path: &Path) -> String {
        match SqliteStore::open(path) {
            Ok(_) => panic!("opening {} should fail", path.display()),
            Err(e) => e.to_string(),
        }
    }

    /// Whether permissions apply here (they do not for root).
    fn can_create_in(dir: &Path) -> bool {
        let probe = dir.join("probe");
        let ok = std::fs::File::create(&probe).is_ok();
        let _ = std::fs::remove_file(&probe);
        ok
    }

    #[test]
    fn unwritable_directory_is_a_clear_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let locked = dir.path().join("ro");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).unwrap();
        let path = locked.join("store.db");
        if can_create_in(&locked) {
            eprintln!("skipped: permissions do not apply (running as root?)");
        } else {
            let e = open_err(&path);
            assert!(e.contains(&path.display().to_string()), "{e}");
            assert!(e.contains("writable"), "{e}");
        }
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn existing_file_in_an_unwritable_directory_is_a_clear_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("ro");
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("store.db");
        drop(SqliteStore::open(&path).unwrap());
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o500)).unwrap();
        if can_create_in(&sub) {
            eprintln!("skipped: permissions do not apply (running as root?)");
        } else {
            let e = open_err(&path);
            assert!(e.contains(&path.display().to_string()), "{e}");
            assert!(e.contains("-wal"), "{e}");
        }
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn read_only_file_is_a_clear_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        drop(SqliteStore::open(&path).unwrap());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        if std::fs::OpenOptions::new().write(true).open(&path).is_ok() {
            eprintln!("skipped: permissions do not apply (running as root?)");
        } else {
            let e = open_err(&path);
            assert!(e.contains(&path.display().to_string()), "{e}");
            assert!(e.contains("read-only"), "{e}");
        }
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope").join("store.db");
        let e = open_err(&path);
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn a_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = open_err(dir.path());
        assert!(e.contains(&dir.path().display().to_string()), "{e}");
        assert!(e.contains("is a directory"), "{e}");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(
            &path,
            "these are not the pages you are looking for\n".repeat(100),
        )
        .unwrap();
        let e = open_err(&path);
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("not a SQLite database"), "{e}");
        // Left as it was.
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .starts_with("these are"));
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        drop(SqliteStore::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let e = open_err(&path);
        assert!(e.contains("schema version 99"), "{e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
    }

    #[test]
    fn a_locked_database_fails_after_the_busy_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let timeout = Duration::from_millis(150);
        let mut sql = SqliteStore::open_with(&path, timeout).unwrap();
        sql.write(&[ledger("s", "tokens", 0, 1)]).unwrap();

        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let start = Instant::now();
        let e = sql
            .write(&[ledger("s", "tokens", 0, 2)])
            .unwrap_err()
            .to_string();
        assert!(
            start.elapsed() >= timeout,
            "gave up after {:?}",
            start.elapsed()
        );
        assert!(e.contains("database is locked by another process"), "{e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
        // Readers are not blocked in WAL mode; the failed write left nothing.
        assert_eq!(sql.load(0).unwrap().ledgers[0].spent, 1);
        sql.ping().unwrap();

        other.execute_batch("ROLLBACK").unwrap();
        sql.write(&[ledger("s", "tokens", 0, 2)]).unwrap();
        assert_eq!(sql.load(0).unwrap().ledgers[0].spent, 2);
    }

    #[test]
    fn a_failed_batch_leaves_nothing_applied() {
        let dir = tempfile::tempdir().unwrap();
        let mut sql = temp_store(&dir);
        let mut mem = MemoryStore::new();
        let first = scenario().remove(0);
        apply_both(&mut sql, &mut mem, &first);

        // Key "x" with the token of key "a": refused by the unique index, after other
        // changes of the same batch were already executed inside the transaction.
        let bad = vec![
            ledger("key:a", "tokens", 0, 999),
            Write::DeleteKey("b".into()),
            Write::Reservations {
                owner: "p1".into(),
                rows: vec![],
            },
            audit(50, 50_000),
            Write::PutKey(key("x", 1)),
            cost("x", "m", 1),
        ];
        let e = sql.write(&bad).unwrap_err().to_string();
        assert!(e.contains("token"), "{e}");
        assert!(e.contains(&sql.path().display().to_string()), "{e}");
        assert_same(&mut sql, &mut mem);

        // The store is usable afterwards.
        apply_both(&mut sql, &mut mem, &[ledger("key:a", "tokens", 0, 1000)]);
    }

    #[test]
    fn corrupt_rows_are_errors_naming_the_table() {
        let cases: &[(&str, &str)] = &[
            (
                "INSERT INTO ledgers VALUES ('s', 'tokens', 0, -5)",
                "table ledgers (rowid 1): column spent: negative value -5",
            ),
            (
                "INSERT INTO costs VALUES ('k', 'm', 'many', 0, 0, 0)",
                "table costs (rowid 1): column requests",
            ),
            (
                "INSERT INTO reservations VALUES (X'00ff', 's', 'tokens', 0, 1, 1)",
                "table reservations (rowid 1): column owner",
            ),
            (
                "INSERT INTO keys VALUES ('k', 'h', '{not json')",
                "table keys (id \"k\"): record is not a valid key",
            ),
            (
                "INSERT INTO keys VALUES ('k', 'h', '{\"id\":\"other\",\"token_hash\":\"h\"}')",
                "table keys (id \"k\")",
            ),
            (
                "INSERT INTO audit VALUES (1, 1, 'admin', 'x', NULL, '{oops')",
                "table audit (rowid 1): column detail",
            ),
            (
                "INSERT INTO audit VALUES (1, 1, 'admin', 'x', X'01', 'null')",
                "table audit (rowid 1): column target",
            ),
        ];
        for (insert, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            let mut sql = temp_store(&dir);
            sql.conn.execute_batch(insert).unwrap();
            let e = sql.load(10).unwrap_err().to_string();
            assert!(e.contains(want), "{insert}: {e}");
        }
    }
}
