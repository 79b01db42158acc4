//! The proxy cache's Redis tier: one thread with its own connection (short timeouts,
//! reconnect with backoff), reached by message. Cores never touch Redis: they send a request
//! and wait at most [`GET_WAIT`] for the answer, and anything slower or failing is a miss.

use std::time::{Duration, Instant};

use redis::{Client, Connection};

use super::Entry;

/// How long a core waits for an L2 answer before treating it as a miss.
pub const GET_WAIT: Duration = Duration::from_millis(250);
const IO_TIMEOUT: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Writes queued beyond this are dropped (a cache may forget).
const QUEUE: usize = 4096;

enum Msg {
    Get(String, flume::Sender<Option<Entry>>),
    Put(String, Vec<u8>, u64),
    Purge(flume::Sender<Result<u64, String>>),
}

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

    /// An entry, or `None` (absent, corrupt, oversized, Redis slow or down).
    pub async fn get(&self, key_hex: &str) -> Option<Entry> {
        let (reply, rx) = flume::bounded(1);
        self.tx
            .try_send(Msg::Get(key_hex.to_string(), reply))
            .ok()?;
        match monoio::time::timeout(GET_WAIT, rx.recv_async()).await {
            Ok(Ok(e)) => e,
            _ => None,
        }
    }

    /// Store an entry (fire and forget).
    pub fn put(&self, key_hex: &str, e: &Entry, ttl: Duration) {
        let _ = self.tx.try_send(Msg::Put(
            key_hex.to_string(),
            e.encode(),
            ttl.as_secs().max(1),
        ));
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
    for msg in rx.iter() {
        match msg {
            Msg::Get(k, reply) => {
                let key = format!("{prefix}{k}");
                let got: Option<Vec<u8>> = c
                    .with(|con| redis::cmd("GET").arg(&key).query(con))
                    .unwrap_or(None);
                let entry = got.and_then(|b| {
                    let e = Entry::decode(&b, max_body);
                    if e.is_none() {
                        // Corrupt or oversized: drop it so nobody trips on it again.
                        let _ = c.with(|con| redis::cmd("DEL").arg(&key).query::<()>(con));
                    }
                    e
                });
                let _ = reply.send(entry);
            }
            Msg::Put(k, bytes, ttl) => {
                let key = format!("{prefix}{k}");
                let _ = c.with(|con| {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(bytes)
                        .arg("EX")
                        .arg(ttl)
                        .query::<()>(con)
                });
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
