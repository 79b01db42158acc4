//! The proxy cache's Redis tier: one thread with its own connection (short timeouts,
//! reconnect with backoff), reached by message. Cores never touch Redis: they send a request
//! and wait at most [`GET_WAIT`] for the answer, and anything slower or failing is a miss.
//!
//! It also keeps a stampede on one key to one upstream call across replicas: the replica that
//! misses first takes a fill lock next to the entry (`SET NX PX`, in the same script as the
//! lookup, so one round trip), the others poll for the entry while the lock stands, and the
//! lock is released (compare-and-delete) after the entry is written. If Redis is slow or down,
//! each replica fetches on its own: coordination must never cost availability.

use std::time::{Duration, Instant};

use redis::{Client, Connection};

use super::Entry;

/// How long a core waits for an L2 answer before treating it as a miss.
pub const GET_WAIT: Duration = Duration::from_millis(250);
const IO_TIMEOUT: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Writes queued beyond this are dropped (a cache may forget).
const QUEUE: usize = 4096;

/// How long a fill lock stands if its holder never releases it (a replica that died).
pub const FILL_LOCK: Duration = Duration::from_secs(30);

enum Msg {
    /// Store an entry; with an owner, release that fill lock in the same script.
    Put(String, Vec<u8>, u64, Option<String>),
    Purge(flume::Sender<Result<u64, String>>),
    /// Look the entry up; with `claim`, take the fill lock when it is absent and free.
    Fill {
        key: String,
        owner: String,
        claim: bool,
        reply: flume::Sender<Fill>,
    },
    Release(String, String),
}

/// The entry, or who fills it.
enum Fill {
    Hit(Entry),
    /// This replica took the fill lock.
    Claimed,
    /// Another replica holds the fill lock (its owner).
    Busy(Vec<u8>),
    /// No entry and no lock: the other replica's fetch ended without an entry.
    Gone,
    /// Redis failed (or an entry was corrupt twice).
    Down,
}

/// What a core learns from [`L2::claim`] or [`L2::peek`].
pub enum FillState {
    Hit(Entry),
    /// Fetch it; dropping the lock releases it (after the entry's write, which is queued first).
    Claimed(FillLock),
    /// Another replica's fetch runs (the lock's owner: a waiter must tell a new fetch apart).
    Busy(Vec<u8>),
    Gone,
    /// Redis did not answer in time: fetch without coordinating.
    Unavailable,
}

/// The fill lock this replica holds for a key; released on drop, or together with the
/// entry's write by [`L2::put`].
pub struct FillLock {
    tx: flume::Sender<Msg>,
    key: String,
    /// Taken by the put that releases it.
    owner: Option<String>,
}

impl Drop for FillLock {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.take() {
            // If the queue is full the lock expires by itself (FILL_LOCK).
            let _ = self
                .tx
                .try_send(Msg::Release(std::mem::take(&mut self.key), owner));
        }
    }
}

/// Look up the entry, else take the fill lock if free. Returns {1, entry} | {2} claimed |
/// {3} busy | {4} gone (no entry, no lock).
const FILL_LUA: &str = r#"
local e = redis.call('GET', KEYS[1])
if e then return {1, e} end
if ARGV[1] == 'claim' then
  if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return {2} end
end
local owner = redis.call('GET', KEYS[2])
if owner then return {3, owner} end
return {4}
"#;

/// Write the entry and, in the same step, release our fill lock: a lock must never outlive a
/// written entry because a second command failed.
const PUT_LUA: &str = r#"
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1
"#;

/// Delete the fill lock only if it is still ours (it may have expired and been retaken).
const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// A handle to the cache thread.
pub struct L2 {
    tx: flume::Sender<Msg>,
}

impl L2 {
    /// Start the thread; Redis need not be up yet (a miss until it is).
    pub fn start(url: &str, prefix: &str, max_body: usize) -> Result<L2, String> {
        let client = Client::open(url).map_err(|e| {
            format!(
                "proxy cache: invalid redis url {}: {e}",
                crate::control::store::redis::redact_url(url)
            )
        })?;
        let (tx, rx) = flume::bounded(QUEUE);
        let prefix = format!("{prefix}:cache:");
        std::thread::Builder::new()
            .name("ditto-cache-l2".into())
            .spawn(move || run(client, prefix, max_body, rx))
            .map_err(|e| format!("cannot start the proxy cache thread: {e}"))?;
        Ok(L2 { tx })
    }

    /// Store an entry (fire and forget), releasing `lock` (this key's) in the same script.
    pub fn put(&self, key_hex: &str, e: &Entry, ttl: Duration, lock: Option<&mut FillLock>) {
        let owner = lock.and_then(|l| l.owner.take());
        let msg = Msg::Put(key_hex.to_string(), e.encode(), ttl.as_secs().max(1), owner);
        if let Err(flume::TrySendError::Full(Msg::Put(key, _, _, Some(owner)))) =
            self.tx.try_send(msg)
        {
            // No room for the entry: at least free the lock (if full too, it expires).
            let _ = self.tx.try_send(Msg::Release(key, owner));
        }
    }

    /// The entry, or the fill lock for this replica (`owner` names the fetch), or who has it.
    pub async fn claim(&self, key_hex: &str, owner: &str) -> FillState {
        self.fill(key_hex, owner, true).await
    }

    /// While another replica fills: the entry, or whether its lock still stands.
    pub async fn peek(&self, key_hex: &str) -> FillState {
        self.fill(key_hex, "", false).await
    }

    async fn fill(&self, key_hex: &str, owner: &str, claim: bool) -> FillState {
        let (reply, rx) = flume::bounded(1);
        let msg = Msg::Fill {
            key: key_hex.to_string(),
            owner: owner.to_string(),
            claim,
            reply,
        };
        if self.tx.try_send(msg).is_err() {
            return FillState::Unavailable;
        }
        match monoio::time::timeout(GET_WAIT, rx.recv_async()).await {
            Ok(Ok(Fill::Hit(e))) => FillState::Hit(e),
            Ok(Ok(Fill::Claimed)) => FillState::Claimed(FillLock {
                tx: self.tx.clone(),
                key: key_hex.to_string(),
                owner: Some(owner.to_string()),
            }),
            Ok(Ok(Fill::Busy(o))) => FillState::Busy(o),
            Ok(Ok(Fill::Gone)) => FillState::Gone,
            Ok(Ok(Fill::Down) | Err(_)) => FillState::Unavailable,
            Err(_) => {
                if claim {
                    // The answer may yet be "claimed": release whatever we might hold (owners
                    // are unique, so this never frees another fetch's lock).
                    let _ = self
                        .tx
                        .try_send(Msg::Release(key_hex.to_string(), owner.to_string()));
                }
                FillState::Unavailable
            }
        }
    }

    /// Delete every entry; the number deleted.
    pub async fn purge(&self) -> Result<u64, String> {
        let (reply, rx) = flume::bounded(1);
        self.tx
            .send_async(Msg::Purge(reply))
            .await
            .map_err(|_| "the proxy cache thread is gone".to_string())?;
        match monoio::time::timeout(Duration::from_secs(5), rx.recv_async()).await {
            Ok(Ok(r)) => r,
            _ => Err("redis did not answer in time".to_string()),
        }
    }
}

struct Conn {
    client: Client,
    con: Option<Connection>,
    next_try: Instant,
    backoff: Duration,
}

impl Conn {
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, String> {
        if self.con.is_none() {
            if Instant::now() < self.next_try {
                return Err("redis unreachable".into());
            }
            let c = self
                .client
                .get_connection_with_timeout(IO_TIMEOUT)
                .and_then(|c| {
                    c.set_read_timeout(Some(IO_TIMEOUT))?;
                    c.set_write_timeout(Some(IO_TIMEOUT))?;
                    Ok(c)
                });
            match c {
                Ok(c) => self.con = Some(c),
                Err(e) => {
                    self.fail();
                    return Err(e.to_string());
                }
            }
        }
        let Some(con) = self.con.as_mut() else {
            return Err("no connection".into());
        };
        match f(con) {
            Ok(v) => {
                self.backoff = Duration::from_millis(100);
                Ok(v)
            }
            Err(e) => {
                self.fail();
                Err(e.to_string())
            }
        }
    }

    /// Like [`Conn::with`], but a failure (or a backoff) gets one immediate reconnect: for a
    /// lock release that other replicas are waiting on.
    fn urgently<T>(
        &mut self,
        f: impl Fn(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, String> {
        self.with(&f).or_else(|_| {
            self.next_try = Instant::now();
            self.with(&f)
        })
    }

    fn fail(&mut self) {
        self.con = None;
        self.next_try = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }
}

fn run(client: Client, prefix: String, max_body: usize, rx: flume::Receiver<Msg>) {
    let mut c = Conn {
        client,
        con: None,
        next_try: Instant::now(),
        backoff: Duration::from_millis(100),
    };
    let fill_script = redis::Script::new(FILL_LUA);
    let release_script = redis::Script::new(RELEASE_LUA);
    let put_script = redis::Script::new(PUT_LUA);
    for msg in rx.iter() {
        match msg {
            Msg::Fill {
                key,
                owner,
                claim,
                reply,
            } => {
                let entry_key = format!("{prefix}{key}");
                let lock_key = format!("{entry_key}:fill");
                let run_fill = |c: &mut Conn| {
                    c.with(|con| {
                        fill_script
                            .key(&entry_key)
                            .key(&lock_key)
                            .arg(if claim { "claim" } else { "peek" })
                            .arg(&owner)
                            .arg(FILL_LOCK.as_millis() as u64)
                            .invoke::<Vec<redis::Value>>(con)
                    })
                };
                let state = match classify(run_fill(&mut c), max_body) {
                    Some(state) => state,
                    None => {
                        // Corrupt or oversized: drop it and look again (then claim).
                        let _ = c.with(|con| redis::cmd("DEL").arg(&entry_key).query::<()>(con));
                        classify(run_fill(&mut c), max_body).unwrap_or(Fill::Down)
                    }
                };
                let claimed = matches!(state, Fill::Claimed);
                if reply.send(state).is_err() && claimed {
                    // The core gave up waiting and fetches on its own: free the lock at once
                    // rather than leave other replicas waiting on a fetch nobody announced.
                    let _ =
                        c.with(|con| release_script.key(&lock_key).arg(&owner).invoke::<i64>(con));
                }
            }
            Msg::Release(key, owner) => {
                let lock_key = format!("{prefix}{key}:fill");
                // Other replicas wait on this lock: try now, past any backoff.
                let _ =
                    c.urgently(|con| release_script.key(&lock_key).arg(&owner).invoke::<i64>(con));
            }
            Msg::Put(k, bytes, ttl, owner) => {
                let key = format!("{prefix}{k}");
                let lock_key = format!("{key}:fill");
                let put = |con: &mut Connection| {
                    put_script
                        .key(&key)
                        .key(&lock_key)
                        .arg(&bytes)
                        .arg(ttl)
                        .arg(owner.as_deref().unwrap_or(""))
                        .invoke::<i64>(con)
                };
                if c.with(put).is_err() {
                    if let Some(owner) = &owner {
                        let _ = c.urgently(|con| {
                            release_script.key(&lock_key).arg(owner).invoke::<i64>(con)
                        });
                    }
                }
            }
            Msg::Purge(reply) => {
                let pattern = format!("{prefix}*");
                let r = c.with(|con| {
                    let mut cursor: u64 = 0;
                    let mut n = 0u64;
                    loop {
                        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(1000)
                            .query(con)?;
                        if !keys.is_empty() {
                            n += redis::cmd("DEL").arg(&keys).query::<u64>(con)?;
                        }
                        if next == 0 {
                            return Ok(n);
                        }
                        cursor = next;
                    }
                });
                let _ = reply.send(r);
            }
        }
    }
}

/// The fill script's answer; `None` for an entry that is corrupt or oversized.
fn classify(got: Result<Vec<redis::Value>, String>, max_body: usize) -> Option<Fill> {
    Some(match got.as_deref() {
        Ok([redis::Value::Int(1), redis::Value::BulkString(b)]) => {
            return Entry::decode(b, max_body).map(Fill::Hit)
        }
        Ok([redis::Value::Int(2)]) => Fill::Claimed,
        Ok([redis::Value::Int(3), redis::Value::BulkString(o)]) => Fill::Busy(o.clone()),
        Ok([redis::Value::Int(4)]) => Fill::Gone,
        _ => Fill::Down,
    })
}
