//! A real `redis-server` on a loopback port, for the Redis store's tests (unit and
//! integration alike): started, killed, paused and restarted on the same port. A test tool, like
//! the rest of [`crate::mock`].
//!
//! Why not just "bind port 0, drop the listener, start Redis there"? Tests run in parallel, and
//! an ephemeral port freed that way can be handed to someone else (another test's listener or a
//! connection's source port) before Redis binds it, or, worse, while a test has Redis down on
//! purpose and means to restart it on the same port. A probe that only checks "something answers
//! on the port" then talks to another test's Redis, whose kill breaks this one (CI saw exactly
//! that: "unexpected end of file" from a Redis that had been killed by its owner). So:
//! - ports come from below the kernel's ephemeral range, where port 0 binds and outgoing
//!   connections never land, handed out by a process-wide counter seeded by the pid;
//! - readiness means *our* server answers: `CONFIG GET dbfilename` must return the unique name
//!   this server was started with, and a server that exited (port taken) is retried elsewhere.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A `redis-server` child process; killed (and its directory removed) on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// Unique per server: how the readiness probe knows it reached this one.
    dbfilename: String,
    persist: bool,
}

/// Lowest port handed out; the range ends below the ephemeral range.
const PORT_FLOOR: u32 = 12_000;

impl RedisServer {
    /// Start one; `None` (with a note on stderr) when `redis-server` is not installed.
    /// `persist`: append-only file with fsync on every write, so a SIGKILL loses nothing and a
    /// restart finds the data again.
    pub fn start(persist: bool) -> Option<RedisServer> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            eprintln!("redis-server is not installed: skipping (.ci/run installs it)");
            return None;
        }
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "ditto-redis-test-{}-{n}-{}",
            std::process::id(),
            nanos()
        ));
        std::fs::create_dir_all(&dir).expect("create the redis-server directory");
        let mut server = RedisServer {
            child: None,
            port: 0,
            dbfilename: format!("ditto-{}-{n}.rdb", std::process::id()),
            dir,
            persist,
        };
        for _ in 0..50 {
            let Some(port) = next_port() else { continue };
            server.port = port;
            if server.spawn() {
                return Some(server);
            }
        }
        panic!("redis-server could not start on any of 50 loopback ports");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's data directory (its append-only file when `persist`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("redis-server is running").id() as i32
    }

    /// SIGKILL, as a crash would: no goodbye to clients.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A paused server must be woken to die promptly.
            // SAFETY: kill(2) on the pid of a child we started and have not reaped yet.
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port and directory. Panics if the port stays taken: the ports
    /// handed out here are outside the ephemeral range, so only an outside process can hold it.
    pub fn restart(&mut self) {
        self.kill();
        let end = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(
                Instant::now() < end,
                "redis-server could not restart on port {}: taken by another process",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGSTOP: the server keeps its sockets but answers nothing (a network stall).
    pub fn pause(&self) {
        // SAFETY: kill(2) on the pid of a child we started and have not reaped yet.
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGSTOP) }, 0);
    }

    pub fn resume(&self) {
        // SAFETY: as in `pause`.
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGCONT) }, 0);
    }

    /// Run one command over RESP; the raw reply (one read, enough for test-sized answers).
    pub fn cmd(&self, args: &[&[u8]]) -> Vec<u8> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect redis");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(&resp_command(args)).expect("write redis");
        let mut buf = vec![0u8; 64 * 1024];
        let n = s.read(&mut buf).expect("read redis");
        buf.truncate(n);
        buf
    }

    /// Spawn on `self.port`; true once this very server answers, false if it exited (port taken).
    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--dbfilename", &self.dbfilename])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.persist {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let mut child = cmd.spawn().expect("spawn redis-server");
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if self.answers_as_itself() {
                self.child = Some(child);
                return true;
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-server on port {} did not start in 10 s", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers_as_itself(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(&resp_command(&[b"CONFIG", b"GET", b"dbfilename"]))
            .is_err()
        {
            return false;
        }
        let mut buf = [0u8; 512];
        let mut got = Vec::new();
        let want = self.dbfilename.as_bytes();
        // The answer is small; read until our name shows or the server stops talking.
        while let Ok(n @ 1..) = s.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
            if got.windows(want.len()).any(|w| w == want) {
                return true;
            }
            if got.len() > 4096 {
                break;
            }
        }
        false
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);
static NEXT_PORT: AtomicU32 = AtomicU32::new(0);

/// The next candidate port that is free to bind right now, or `None` to try again.
fn next_port() -> Option<u16> {
    let ceiling = ephemeral_floor().max(PORT_FLOOR + 1_000);
    let span = ceiling - PORT_FLOOR;
    // Seeded by pid so test binaries running side by side start far apart.
    let _ = NEXT_PORT.compare_exchange(
        0,
        1 + (std::process::id().wrapping_mul(7_919) % span),
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    let n = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
    let port = u16::try_from(PORT_FLOOR + n % span).ok()?;
    // Held by something else already (another service on this machine): skip it.
    TcpListener::bind(("127.0.0.1", port)).ok().map(|_| port)
}

/// The low end of the kernel's ephemeral port range (Linux default 32768).
fn ephemeral_floor() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn resp_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_servers_get_two_ports_and_each_probe_reaches_its_own() {
        let (Some(a), Some(mut b)) = (RedisServer::start(false), RedisServer::start(false)) else {
            return;
        };
        assert_ne!(a.port(), b.port());
        assert!(a.port() < ephemeral_floor() as u16);
        assert!(a.answers_as_itself() && b.answers_as_itself());
        // The same port, another server: the probe tells them apart.
        let mut impostor = RedisServer {
            child: None,
            port: a.port(),
            dir: b.dir.clone(),
            dbfilename: "someone-else.rdb".into(),
            persist: false,
        };
        assert!(
            !impostor.answers_as_itself(),
            "a's server is not impostor's"
        );
        // Its own spawn fails (port taken by a) rather than adopting a's server.
        assert!(!impostor.spawn());
        impostor.dir = PathBuf::new();
        b.restart();
        assert!(b.cmd(&[b"PING"]).starts_with(b"+PONG"));
    }
}
