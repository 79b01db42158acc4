//! The proxy cache (`--proxy-cache`, REFERENCE 8): answers repeated requests without an
//! upstream call and without charging quota.
//!
//! - **L1** is per core (a thread-local LRU: no lock, no sharing), bounded in entries and body
//!   bytes.
//! - **L2** is Redis when `--redis` is set, reached only through the cache thread ([`l2`]) by
//!   message, never from a core: a core waits at most [`l2::GET_WAIT`] for an answer, and a
//!   slow or missing Redis is a miss.
//! - **Key**: SHA-256 of the method, path and query, the virtual key (scope), the route
//!   candidates, the request headers that change the upstream's answer, and the body.
//! - Only 2xx responses that went through whole are stored; `stream=true` ones only with
//!   `--proxy-cache-streaming` (replayed as a stream). Entries carry a checksum: corrupt or
//!   oversized entries are ignored (and dropped).
//! - **Stampede**: concurrent misses of one key wait for the first one's answer instead of all
//!   going upstream: tasks of one core wait on that core's fetcher ([`Lead`]), and cores wait
//!   on the one core that fetches ([`Fills`]), and replicas on the one holding the key's fill
//!   lock in Redis ([`l2`]): one upstream call per key.

#[cfg(feature = "gateway-store-redis")]
pub mod l2;
pub mod serve;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ahash::AHashMap;
use bytes::Bytes;
use sha2::{Digest, Sha256};

/// A cache key: SHA-256 of everything that shapes the answer.
pub type Key = [u8; 32];

/// Settings (`--proxy-cache-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheOptions {
    pub ttl: Duration,
    /// Entries per core.
    pub max_entries: usize,
    /// Largest body stored.
    pub max_body_bytes: usize,
    /// Body bytes across all cores (each core gets its share).
    pub max_total_body_bytes: usize,
    /// Also cache `stream=true` (SSE) answers.
    pub streaming: bool,
    /// Redis L2: (url, key prefix).
    pub redis: Option<(String, String)>,
}

impl Default for CacheOptions {
    fn default() -> CacheOptions {
        CacheOptions {
            ttl: Duration::from_secs(300),
            max_entries: 10_000,
            max_body_bytes: 1024 * 1024,
            max_total_body_bytes: 256 * 1024 * 1024,
            streaming: false,
            redis: None,
        }
    }
}

/// One cached answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub status: u16,
    pub content_type: Bytes,
    /// The body as the upstream sent it (for SSE: the event stream).
    pub body: Bytes,
    pub sse: bool,
}

const MAGIC: &[u8; 4] = b"DTC1";

impl Entry {
    /// `DTC1 | status u16 | sse u8 | ct len u16 | ct | body len u32 | body | sha256[..8]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.body.len() + self.content_type.len() + 32);
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&self.status.to_be_bytes());
        v.push(u8::from(self.sse));
        let ct = &self.content_type[..self.content_type.len().min(u16::MAX as usize)];
        v.extend_from_slice(&(ct.len() as u16).to_be_bytes());
        v.extend_from_slice(ct);
        v.extend_from_slice(&(self.body.len() as u32).to_be_bytes());
        v.extend_from_slice(&self.body);
        let sum = Sha256::digest(&v);
        v.extend_from_slice(&sum[..8]);
        v
    }

    /// `None` for anything that is not a whole, intact entry of at most `max_body` bytes.
    pub fn decode(b: &[u8], max_body: usize) -> Option<Entry> {
        let (data, sum) = b.split_at_checked(b.len().checked_sub(8)?)?;
        if Sha256::digest(data)[..8] != *sum || !data.starts_with(MAGIC) {
            return None;
        }
        let mut rest = &data[4..];
        let mut take = |n: usize| -> Option<&[u8]> {
            let (a, b) = rest.split_at_checked(n)?;
            rest = b;
            Some(a)
        };
        let status = u16::from_be_bytes(take(2)?.try_into().ok()?);
        let sse = take(1)?[0] == 1;
        let ct_len = u16::from_be_bytes(take(2)?.try_into().ok()?) as usize;
        let ct = Bytes::copy_from_slice(take(ct_len)?);
        let body_len = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
        if body_len > max_body || !(200..300).contains(&status) {
            return None;
        }
        let body = Bytes::copy_from_slice(take(body_len)?);
        if !rest.is_empty() {
            return None;
        }
        Some(Entry {
            status,
            content_type: ct,
            body,
            sse,
        })
    }
}

/// Build a key from its parts.
pub struct KeyBuilder(Sha256);

impl KeyBuilder {
    pub fn new() -> KeyBuilder {
        let mut h = Sha256::new();
        h.update(b"ditto-proxy-cache-v1");
        KeyBuilder(h)
    }

    /// A length-prefixed field, so parts can never run into each other.
    pub fn part(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update((bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
        self
    }

    pub fn finish(self) -> Key {
        self.0.finalize().into()
    }
}

impl Default for KeyBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// The key as shown in `x-ditto-cache-key` and used in Redis.
pub fn key_hex(k: &Key) -> String {
    hex::encode(&k[..16])
}

/// What every core shares: the options, the purge epoch, and the L2 handle.
pub struct ProxyCache {
    pub opts: CacheOptions,
    /// Per-core byte budget.
    per_core_bytes: usize,
    /// Bumped by a purge; each core clears its L1 when it sees a new value.
    epoch: AtomicU64,
    /// Keys being fetched by some core, and answers for the cores that waited.
    pub fills: Arc<Fills>,
    #[cfg(feature = "gateway-store-redis")]
    pub l2: Option<l2::L2>,
}

impl ProxyCache {
    pub fn new(opts: CacheOptions, workers: usize) -> Result<ProxyCache, String> {
        #[cfg(feature = "gateway-store-redis")]
        let l2 = match &opts.redis {
            Some((url, prefix)) => Some(l2::L2::start(url, prefix, opts.max_body_bytes)?),
            None => None,
        };
        #[cfg(not(feature = "gateway-store-redis"))]
        if opts.redis.is_some() {
            return Err("the proxy cache's Redis tier needs gateway-store-redis".into());
        }
        Ok(ProxyCache {
            per_core_bytes: (opts.max_total_body_bytes / workers.max(1)).max(1),
            opts,
            epoch: AtomicU64::new(0),
            fills: Arc::new(Fills::default()),
            #[cfg(feature = "gateway-store-redis")]
            l2,
        })
    }

    /// The shared cache of `--proxy-cache`, if on.
    pub fn build(
        opts: Option<&CacheOptions>,
        workers: usize,
    ) -> Result<Option<std::sync::Arc<ProxyCache>>, String> {
        opts.map(|o| ProxyCache::new(o.clone(), workers).map(std::sync::Arc::new))
            .transpose()
    }

    /// Empty every core's L1 (each at its next access).
    pub fn purge_memory(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn with_l1<T>(&self, f: impl FnOnce(&mut L1) -> T) -> T {
        let epoch = self.epoch.load(Ordering::Acquire);
        L1_CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if c.epoch != epoch {
                c.clear();
                c.epoch = epoch;
            }
            f(&mut c)
        })
    }

    /// A fresh L1 entry.
    pub fn get_memory(&self, k: &Key) -> Option<Entry> {
        self.with_l1(|c| c.get(k))
    }

    /// Keep an entry in this core's L1 for `ttl`.
    pub fn put_memory(&self, k: Key, e: Entry, ttl: Duration) {
        let (max_entries, max_bytes) = (self.opts.max_entries, self.per_core_bytes);
        self.with_l1(|c| c.put(k, e, ttl, max_entries, max_bytes));
    }

    /// Entries in this core's L1 (tests, metrics).
    pub fn memory_len(&self) -> usize {
        self.with_l1(|c| c.map.len())
    }
}

thread_local! {
    static L1_CACHE: RefCell<L1> = RefCell::new(L1::default());
    /// Keys a task of this core is fetching from upstream (stampede guard), with the fetch's
    /// generation.
    static FETCHING: RefCell<AHashMap<Key, u64>> = RefCell::new(AHashMap::new());
    static FETCH_GENERATION: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A core's LRU: entries by key, plus recency order (tick -> key) for eviction.
#[derive(Default)]
struct L1 {
    map: AHashMap<Key, (Entry, Instant, u64)>,
    order: BTreeMap<u64, Key>,
    tick: u64,
    bytes: usize,
    epoch: u64,
}

impl L1 {
    fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
        self.bytes = 0;
    }

    fn remove(&mut self, k: &Key) {
        if let Some((e, _, t)) = self.map.remove(k) {
            self.order.remove(&t);
            self.bytes -= e.body.len();
        }
    }

    fn get(&mut self, k: &Key) -> Option<Entry> {
        let (expires, tick) = match self.map.get(k) {
            Some((_, exp, t)) => (*exp, *t),
            None => return None,
        };
        if Instant::now() >= expires {
            self.remove(k);
            return None;
        }
        self.tick += 1;
        let now = self.tick;
        self.order.remove(&tick);
        self.order.insert(now, *k);
        let slot = self.map.get_mut(k)?;
        slot.2 = now;
        Some(slot.0.clone())
    }

    fn put(&mut self, k: Key, e: Entry, ttl: Duration, max_entries: usize, max_bytes: usize) {
        if e.body.len() > max_bytes || max_entries == 0 {
            return;
        }
        self.remove(&k);
        while self.map.len() >= max_entries || self.bytes + e.body.len() > max_bytes {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some((old, _, _)) = self.map.remove(&oldest) {
                self.bytes -= old.body.len();
            }
        }
        self.tick += 1;
        self.bytes += e.body.len();
        self.order.insert(self.tick, k);
        self.map.insert(k, (e, Instant::now() + ttl, self.tick));
    }
}

/// Held by the one task of a core that fetches a key from upstream; others wait for it.
pub struct Lead(pub Key);

impl Lead {
    /// Become the fetcher of `k`, or learn which fetch (its generation) of this core to wait
    /// for: a waiter must tell "that fetch ended" from "another one started since".
    pub fn try_take(k: Key) -> Result<Lead, u64> {
        FETCHING.with(|f| {
            let mut f = f.borrow_mut();
            if let Some(g) = f.get(&k) {
                return Err(*g);
            }
            let g = FETCH_GENERATION.with(|n| {
                let g = n.get();
                n.set(g + 1);
                g
            });
            f.insert(k, g);
            Ok(Lead(k))
        })
    }

    /// The generation of this core's fetch of `k`, if one runs.
    pub fn current(k: &Key) -> Option<u64> {
        FETCHING.with(|f| f.borrow().get(k).copied())
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        FETCHING.with(|f| f.borrow_mut().remove(&self.0));
    }
}

/// Which keys some core is fetching from upstream, so that the other cores wait for its answer
/// instead of each making its own call.
///
/// A lock, on purpose, against the no-locks rule of the request path: it is taken only on a
/// cacheable miss (about to cost an upstream round trip of milliseconds), never on a hit, held
/// for one hash-map operation and never across an await, and split into shards. Only one task
/// per core (its [`Lead`]) takes it; the core's other tasks wait on that one.
#[derive(Default)]
pub struct Fills {
    shards: [Mutex<AHashMap<Key, Fill>>; 16],
    generation: AtomicU64,
}

struct Fill {
    /// Tells a waiter that its fetch ended and a new one started meanwhile.
    generation: u64,
    waiters: u32,
    /// The fetcher's answer, kept only while cores that waited for it have not taken it.
    done: Option<Entry>,
}

/// What [`Fills::claim`] gives a core: fetch the key itself, or wait for the core that does.
pub enum Claim {
    Fetch(Fetch),
    Wait(Waiting),
}

/// What a waiting core sees when it looks again.
pub enum Polled {
    Ready(Entry),
    Pending,
    /// The fetcher ended without an entry to share (an error, an uncacheable answer): go
    /// upstream uncached, all waiters at once, rather than one after another.
    Gone,
}

impl Fills {
    fn shard(&self, k: &Key) -> MutexGuard<'_, AHashMap<Key, Fill>> {
        let m = &self.shards[k[0] as usize % self.shards.len()];
        // A poisoned map holds only plain data: keep using it.
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Become the one core fetching `k`, or a core waiting for it.
    pub fn claim(self: &Arc<Self>, k: Key) -> Claim {
        let mut map = self.shard(&k);
        if let Some(f) = map.get_mut(&k) {
            f.waiters += 1;
            return Claim::Wait(Waiting {
                fills: self.clone(),
                key: k,
                generation: f.generation,
            });
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        map.insert(
            k,
            Fill {
                generation,
                waiters: 0,
                done: None,
            },
        );
        Claim::Fetch(Fetch {
            fills: self.clone(),
            key: k,
        })
    }

    /// Keys with a record (tests: nothing must outlive its fetcher and waiters).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Held by the core fetching a key; dropped without [`Fetch::fulfil`], it lets a waiter fetch.
pub struct Fetch {
    fills: Arc<Fills>,
    key: Key,
}

impl Fetch {
    /// Hand the answer to the cores that waited (if any).
    pub fn fulfil(self, entry: &Entry) {
        let mut map = self.fills.shard(&self.key);
        if let Some(f) = map.get_mut(&self.key) {
            if f.waiters > 0 {
                f.done = Some(entry.clone());
            }
        }
        // Drop keeps a record with an answer (for its waiters) and removes any other.
    }
}

impl Drop for Fetch {
    fn drop(&mut self) {
        let mut map = self.fills.shard(&self.key);
        if map.get(&self.key).is_some_and(|f| f.done.is_none()) {
            map.remove(&self.key);
        }
    }
}

/// Held by a core waiting for another core's fetch; the last waiter to go removes the answer.
pub struct Waiting {
    fills: Arc<Fills>,
    key: Key,
    generation: u64,
}

impl Waiting {
    pub fn poll(&self) -> Polled {
        match self.fills.shard(&self.key).get(&self.key) {
            Some(f) if f.generation == self.generation => match &f.done {
                Some(e) => Polled::Ready(e.clone()),
                None => Polled::Pending,
            },
            _ => Polled::Gone,
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut map = self.fills.shard(&self.key);
        let Some(f) = map.get_mut(&self.key) else {
            return;
        };
        if f.generation != self.generation {
            return;
        }
        f.waiters = f.waiters.saturating_sub(1);
        if f.waiters == 0 && f.done.is_some() {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: &str) -> Entry {
        Entry {
            status: 200,
            content_type: Bytes::from_static(b"application/json"),
            body: Bytes::copy_from_slice(body.as_bytes()),
            sse: false,
        }
    }

    #[test]
    fn entries_round_trip_and_corrupt_or_oversized_ones_are_refused() {
        let e = entry("{\"ok\":true}");
        let b = e.encode();
        assert_eq!(Entry::decode(&b, 1024), Some(e));
        assert_eq!(Entry::decode(&b, 3), None, "over the body cap");
        for i in [0, 5, b.len() / 2, b.len() - 1] {
            let mut c = b.clone();
            c[i] ^= 0x40;
            assert_eq!(Entry::decode(&c, 1024), None, "flipped byte {i}");
        }
        assert_eq!(Entry::decode(&b[..b.len() - 3], 1024), None, "truncated");
        assert_eq!(Entry::decode(b"", 1024), None);
        assert_eq!(Entry::decode(b"garbage that is long enough", 1024), None);
    }

    #[test]
    fn l1_evicts_the_least_recent_and_respects_caps_and_ttl() {
        let mut l = L1::default();
        let ttl = Duration::from_secs(60);
        l.put([1; 32], entry("a"), ttl, 2, 100);
        l.put([2; 32], entry("b"), ttl, 2, 100);
        assert!(l.get(&[1; 32]).is_some());
        l.put([3; 32], entry("c"), ttl, 2, 100);
        assert!(l.get(&[2; 32]).is_none(), "least recently used goes first");
        assert!(l.get(&[1; 32]).is_some() && l.get(&[3; 32]).is_some());
        l.put([4; 32], entry(&"x".repeat(101)), ttl, 2, 100);
        assert!(l.get(&[4; 32]).is_none(), "bigger than the byte cap");
        l.put([5; 32], entry(&"y".repeat(99)), ttl, 10, 100);
        assert_eq!(l.map.len(), 2, "byte cap evicts the oldest until it fits");
        assert_eq!(l.bytes, 100);
        l.put([6; 32], entry("z"), Duration::ZERO, 10, 1000);
        assert!(l.get(&[6; 32]).is_none(), "expired");
    }

    #[test]
    fn one_core_fetches_the_others_wait_and_nothing_outlives_them() {
        let fills = Arc::new(Fills::default());
        let k = [7; 32];
        let Claim::Fetch(fetch) = fills.claim(k) else {
            panic!("the first claim fetches");
        };
        let (Claim::Wait(a), Claim::Wait(b)) = (fills.claim(k), fills.claim(k)) else {
            panic!("later claims wait");
        };
        assert!(matches!(a.poll(), Polled::Pending));
        fetch.fulfil(&entry("x"));
        assert!(matches!(a.poll(), Polled::Ready(e) if e == entry("x")));
        drop(a);
        assert!(
            matches!(b.poll(), Polled::Ready(_)),
            "kept for the last waiter"
        );
        drop(b);
        assert!(fills.is_empty(), "the last waiter removes the answer");

        // Fulfilled with nobody waiting: nothing is kept.
        let Claim::Fetch(fetch) = fills.claim(k) else {
            panic!("fetch");
        };
        fetch.fulfil(&entry("y"));
        assert!(fills.is_empty());

        // A fetcher that fails: its waiter is told so, even once a new fetch has started, and
        // its leaving does not disturb the new fetch's count.
        let Claim::Fetch(fetch) = fills.claim(k) else {
            panic!("fetch");
        };
        let Claim::Wait(w) = fills.claim(k) else {
            panic!("wait");
        };
        drop(fetch);
        assert!(matches!(w.poll(), Polled::Gone));
        let Claim::Fetch(again) = fills.claim(k) else {
            panic!("a new fetch");
        };
        let Claim::Wait(w2) = fills.claim(k) else {
            panic!("wait");
        };
        assert!(
            matches!(w.poll(), Polled::Gone),
            "not the fetch it waited for"
        );
        drop(w);
        again.fulfil(&entry("z"));
        assert!(matches!(w2.poll(), Polled::Ready(_)), "w2 still counted");
        drop(w2);
        assert!(fills.is_empty());
    }

    #[test]
    fn one_lead_per_key_per_core_and_a_new_fetch_is_told_apart() {
        let k = [9; 32];
        let a = Lead::try_take(k).expect("first");
        let waited_for = Lead::try_take(k).err().expect("taken");
        assert_eq!(Lead::current(&k), Some(waited_for));
        drop(a);
        assert_eq!(Lead::current(&k), None);
        let b = Lead::try_take(k).expect("free again");
        assert!(
            Lead::current(&k).is_some_and(|g| g != waited_for),
            "a waiter of the first fetch sees that this one is another"
        );
        drop(b);
    }
}
