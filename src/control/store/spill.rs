//! The Redis store's files for usage Redis has not confirmed yet, so that it outlives the
//! process: a replica stopped (or killed) while Redis is down leaves them behind, and the next
//! replica started for the same Redis and prefix on this machine adopts and replays them.
//!
//! Two files per process, named `ditto-redis-spill-<key>-<pid>-<tag>` plus:
//! - `.jsonl`: queued settlements, appended and fsync'd at every failed flush (one JSON array
//!   per line: ledger, kind, window, spent, released). Lines for the same meter are summed on
//!   reading. Files adopted from dead processes become `.jsonl.<n>` of the adopter.
//! - `.inflight`: batches sent to Redis without an answer, with their ids (one JSON object
//!   per line), rewritten whenever that set changes. Replayed under the same id, a batch that
//!   did land is not counted again.
//!
//! `<key>` is a hash of the Redis URL (password removed) and the prefix: only the files of the
//! same shared state are ever adopted. A process is gone when `/proc/<pid>` is, or when the
//! pid is this process's own under another tag (an earlier run with the same pid).

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use super::MeterKey;
use crate::control::meter::Kind;

/// A settlement batch under its id (the `applied:` key the script sets).
pub type Batch = (String, Vec<(MeterKey, (u64, u64))>);

/// Add a settlement to per-meter sums (the store's queue, a compacted file).
pub fn add(sums: &mut HashMap<MeterKey, (u64, u64)>, meter: MeterKey, spent: u64, released: u64) {
    let e = sums.entry(meter).or_default();
    e.0 = e.0.saturating_add(spent);
    e.1 = e.1.saturating_add(released);
}

/// The own queue file is rewritten coalesced once it grows past this.
const COMPACT_BYTES: u64 = 4 << 20;

pub struct Spill {
    dir: PathBuf,
    /// `ditto-redis-spill-<key>-`.
    stem: String,
    /// `<stem><pid>-<tag>`: this process's names.
    own: String,
    pid: u32,
    /// Adopted queue files so far (for their `.jsonl.<n>` names).
    adopted: u32,
}

impl Spill {
    /// The files of this process for the Redis at `shown_url` (password removed) under
    /// `prefix`, in `dir`.
    pub fn new(dir: &Path, shown_url: &str, prefix: &str, tag: &str) -> Spill {
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            format!("{shown_url}\n{prefix}").as_bytes(),
        );
        let key: String = digest.as_ref()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let stem = format!("ditto-redis-spill-{key}-");
        let pid = std::process::id();
        Spill {
            dir: dir.to_path_buf(),
            own: format!("{stem}{pid}-{tag}"),
            stem,
            pid,
            adopted: 0,
        }
    }

    /// Where queued settlements go.
    pub fn queue_path(&self) -> PathBuf {
        self.dir.join(format!("{}.jsonl", self.own))
    }

    fn in_flight_path(&self) -> PathBuf {
        self.dir.join(format!("{}.inflight", self.own))
    }

    /// This process's queue files: its own and the adopted ones.
    fn queue_files(&self) -> Vec<PathBuf> {
        let own = format!("{}.jsonl", self.own);
        self.list()
            .into_iter()
            .filter(|(name, _)| *name == own || name.starts_with(&format!("{own}.")))
            .map(|(_, p)| p)
            .collect()
    }

    /// Every file of this Redis and prefix in the directory: (file name, path).
    fn list(&self) -> Vec<(String, PathBuf)> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.starts_with(&self.stem).then(|| (name, e.path()))
            })
            .collect()
    }

    /// Whether any queued usage is on disk.
    pub fn has_queue(&self) -> bool {
        !self.queue_files().is_empty()
    }

    /// Append settlements to the queue file, on disk before returning.
    pub fn append<'a>(
        &self,
        items: impl Iterator<Item = (&'a MeterKey, &'a (u64, u64))>,
    ) -> io::Result<()> {
        let mut text = String::new();
        for (m, v) in items {
            text.push_str(&line(m, *v).to_string());
            text.push('\n');
        }
        if text.is_empty() {
            return Ok(());
        }
        let path = self.queue_path();
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        f.write_all(text.as_bytes())?;
        f.sync_data()?;
        if f.metadata()?.len() > COMPACT_BYTES {
            self.compact(&path)?;
        }
        Ok(())
    }

    /// Rewrite the own queue file with one line per meter (a long outage appends the same
    /// meters at every flush). Written aside, then renamed over it: never half a file.
    fn compact(&self, path: &Path) -> io::Result<()> {
        let mut sums = HashMap::new();
        for (m, (s, r)) in read_queue(path)? {
            add(&mut sums, m, s, r);
        }
        let tmp = path.with_extension("compact");
        let mut f = fs::File::create(&tmp)?;
        for (m, v) in &sums {
            writeln!(f, "{}", line(m, *v))?;
        }
        f.sync_data()?;
        fs::rename(&tmp, path)
    }

    /// Everything queued on disk, each file removed as it is read; a file that cannot be
    /// removed keeps its usage for the next call (never returned twice).
    pub fn take(&mut self) -> Vec<(MeterKey, (u64, u64))> {
        let mut out = Vec::new();
        for path in self.queue_files() {
            let items = match read_queue(&path) {
                Ok(items) => items,
                Err(e) => {
                    crate::warn!("redis store: cannot read {}: {e}", path.display());
                    continue;
                }
            };
            match fs::remove_file(&path) {
                Ok(()) => out.extend(items),
                Err(e) => crate::warn!("redis store: cannot remove {}: {e}", path.display()),
            }
        }
        out
    }

    /// Record the batches whose answer is unknown (the file goes when there are none).
    pub fn write_in_flight(&self, batches: &[Batch]) -> io::Result<()> {
        let path = self.in_flight_path();
        if batches.is_empty() {
            return match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let tmp = path.with_extension("inflight-new");
        let mut f = fs::File::create(&tmp)?;
        for (id, items) in batches {
            let items: Vec<_> = items.iter().map(|(m, v)| line(m, *v)).collect();
            writeln!(f, "{}", json!({"id": id, "items": items}))?;
        }
        f.sync_data()?;
        fs::rename(&tmp, &path)
    }

    /// At start: take over what processes that are gone left behind. Their queue files are
    /// renamed to this process's (a rename moves each exactly once); their unanswered batches
    /// are returned, after being recorded as this process's own.
    pub fn adopt_orphans(&mut self) -> Vec<Batch> {
        let mut batches = Vec::new();
        let mut done = Vec::new();
        for (name, path) in self.list() {
            let Some(pid) = name[self.stem.len()..]
                .split('-')
                .next()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            // Ours, or a live process's. Our own pid under another tag is an earlier run of
            // this one (a container restarts its gateway as pid 1 every time).
            if name.starts_with(&self.own)
                || (pid != self.pid && Path::new(&format!("/proc/{pid}")).exists())
            {
                continue;
            }
            if name.ends_with(".inflight") {
                match read_in_flight(&path) {
                    Ok(b) => {
                        batches.extend(b);
                        done.push(path);
                    }
                    Err(e) => crate::warn!("redis store: cannot read {}: {e}", path.display()),
                }
            } else if name.contains(".jsonl") && !name.ends_with(".compact") {
                self.adopted += 1;
                let to = self
                    .dir
                    .join(format!("{}.jsonl.{}", self.own, self.adopted));
                if let Err(e) = fs::rename(&path, &to) {
                    crate::warn!("redis store: cannot adopt {}: {e}", path.display());
                } else {
                    crate::info!(
                        "redis store: adopted usage a stopped replica left in {}",
                        path.display()
                    );
                }
            }
        }
        if !batches.is_empty() {
            // Ours first, theirs removed after: a crash in between replays a batch under the
            // same id, which Redis applies once.
            if let Err(e) = self.write_in_flight(&batches) {
                crate::warn!("redis store: cannot record adopted batches: {e}");
                return batches;
            }
            for path in done {
                let _ = fs::remove_file(path);
            }
        }
        batches
    }

    #[cfg(test)]
    pub fn set_pid_for_test(&mut self, pid: u32, tag: &str) {
        self.pid = pid;
        self.own = format!("{}{pid}-{tag}", self.stem);
    }
}

/// A meter kind's name in Redis keys and in these files.
pub fn kind_tag(kind: Kind) -> &'static str {
    match kind {
        Kind::Rpm => "rpm",
        Kind::Tpm => "tpm",
        Kind::Tokens => "budget_tokens",
        Kind::Usd => "budget_usd",
    }
}

fn line(m: &MeterKey, (spent, released): (u64, u64)) -> serde_json::Value {
    json!([m.ledger, kind_tag(m.kind), m.window, spent, released])
}

fn parse_item(v: &serde_json::Value) -> Option<(MeterKey, (u64, u64))> {
    let (ledger, tag, window, spent, released) =
        <(String, String, u64, u64, u64) as serde::Deserialize>::deserialize(v).ok()?;
    let kind = match tag.as_str() {
        "rpm" => Kind::Rpm,
        "tpm" => Kind::Tpm,
        "budget_tokens" => Kind::Tokens,
        "budget_usd" => Kind::Usd,
        _ => return None,
    };
    Some((
        MeterKey {
            ledger,
            kind,
            window,
        },
        (spent, released),
    ))
}

/// A queue file's settlements; a torn last line (a crash mid-append) is skipped.
fn read_queue(path: &Path) -> io::Result<Vec<(MeterKey, (u64, u64))>> {
    let f = fs::File::open(path)?;
    Ok(io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .filter_map(|v| parse_item(&v))
        .collect())
}

fn read_in_flight(path: &Path) -> io::Result<Vec<Batch>> {
    let f = fs::File::open(path)?;
    Ok(io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .filter_map(|v| {
            let id = v["id"].as_str()?.to_string();
            let items = v["items"]
                .as_array()?
                .iter()
                .filter_map(parse_item)
                .collect();
            Some((id, items))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter(i: u32) -> MeterKey {
        MeterKey {
            ledger: format!("key:k{i}"),
            kind: Kind::Tokens,
            window: 0,
        }
    }

    /// A pid that belonged to a process that has exited.
    fn dead_pid() -> u32 {
        let mut c = std::process::Command::new("true").spawn().expect("spawn");
        let pid = c.id();
        c.wait().expect("wait");
        pid
    }

    #[test]
    fn a_dead_process_files_are_adopted_once_and_a_live_one_is_left_alone() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut dead = Spill::new(dir.path(), "redis://h:1", "p", "aa");
        dead.set_pid_for_test(dead_pid(), "aa");
        dead.append([(&meter(1), &(10, 0)), (&meter(1), &(5, 1))].into_iter())
            .expect("append");
        let batch: Batch = ("p:applied:o:aa:7".into(), vec![(meter(2), (3, 0))]);
        dead.write_in_flight(std::slice::from_ref(&batch))
            .expect("in flight");
        // Another Redis or prefix is never adopted; a live process is never adopted.
        let other = Spill::new(dir.path(), "redis://h:1", "q", "bb");
        other
            .append([(&meter(9), &(1, 0))].into_iter())
            .expect("append");
        let mut alive = Spill::new(dir.path(), "redis://h:1", "p", "cc");
        alive
            .append([(&meter(8), &(1, 0))].into_iter())
            .expect("append");

        let mut next = Spill::new(dir.path(), "redis://h:1", "p", "dd");
        next.set_pid_for_test(dead_pid().wrapping_add(1_000_000), "dd");
        let adopted = next.adopt_orphans();
        assert_eq!(adopted, vec![batch.clone()]);
        let mut got = next.take();
        got.sort_by(|a, b| a.0.ledger.cmp(&b.0.ledger));
        assert_eq!(got, vec![(meter(1), (10, 0)), (meter(1), (5, 1))]);
        assert!(next.take().is_empty(), "taken once");
        // The dead process's files are gone (its batch is now the adopter's); the others stay.
        let names: Vec<String> = fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        assert!(names.iter().all(|n| !n.contains("-aa.")), "{names:?}");
        assert_eq!(
            read_in_flight(&next.in_flight_path()).expect("ours"),
            vec![batch]
        );
        assert!(alive.has_queue() && other.has_queue());
        assert_eq!(alive.take(), vec![(meter(8), (1, 0))]);
    }

    #[test]
    fn an_earlier_run_under_the_same_pid_is_adopted() {
        let dir = tempfile::tempdir().expect("tmp");
        let before = Spill::new(dir.path(), "redis://h:1", "p", "run1");
        before
            .append([(&meter(1), &(7, 0))].into_iter())
            .expect("append");
        let mut now = Spill::new(dir.path(), "redis://h:1", "p", "run2");
        assert!(now.adopt_orphans().is_empty());
        assert_eq!(now.take(), vec![(meter(1), (7, 0))]);
        assert!(!before.has_queue());
    }

    #[test]
    fn a_long_outage_is_compacted_to_one_line_per_meter() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Spill::new(dir.path(), "redis://h:1", "p", "aa");
        let path = s.queue_path();
        s.append([(&meter(1), &(1, 0))].into_iter())
            .expect("append");
        s.compact(&path).expect("compact");
        let big: Vec<(MeterKey, (u64, u64))> = (0..3).map(|i| (meter(i), (2, 1))).collect();
        for _ in 0..4 {
            s.append(big.iter().map(|(m, v)| (m, v))).expect("append");
        }
        s.compact(&path).expect("compact");
        let mut got = read_queue(&path).expect("read");
        got.sort_by(|a, b| a.0.ledger.cmp(&b.0.ledger));
        assert_eq!(
            got,
            vec![(meter(0), (8, 4)), (meter(1), (9, 4)), (meter(2), (8, 4))]
        );
    }
}
