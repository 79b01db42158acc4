//! Logging: operator lines (`info!`, `warn!`, `error!`), the per-request access log, and the
//! secret redaction both go through.
//!
//! - Operator lines are rare (startup, errors) and written straight to stderr, one locked write
//!   per line, as text (`INFO  ditto-gateway: ...`) or, after [`set_json`], as JSON lines.
//!   Their message is passed through [`redact::redact_secrets`] first, so an error that quotes a
//!   header or a URL cannot leak a token.
//! - Access lines ([`access::AccessRecord`]) never touch stderr from a data-plane core: each
//!   core formats its lines into its own buffer ([`sink::CoreLog`]) and hands whole buffers
//!   through a bounded queue to one writer thread ([`sink::LogSink`]); a full queue drops the
//!   buffer's lines and counts them.

pub mod access;
pub mod redact;
pub mod sink;

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static JSON: AtomicBool = AtomicBool::new(false);

/// Write operator lines as JSON from now on (`--json-logs`). Call once at startup.
pub fn set_json(on: bool) {
    JSON.store(on, Ordering::Relaxed);
}

/// Whether operator lines are JSON.
pub fn json_enabled() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// Severity of an operator line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }

    fn text_tag(self) -> &'static str {
        match self {
            Level::Info => "INFO ",
            Level::Warn => "WARN ",
            Level::Error => "ERROR",
        }
    }
}

/// Format one operator line (redacted) in the current format, newline included.
pub fn format_line(level: Level, args: fmt::Arguments<'_>, json: bool) -> String {
    let msg = args.to_string();
    let msg = redact::redact_secrets(&msg);
    if json {
        let mut line = String::with_capacity(msg.len() + 80);
        line.push_str("{\"ts\":\"");
        access::write_rfc3339(&mut line, access::unix_nanos_now());
        line.push_str("\",\"level\":\"");
        line.push_str(level.as_str());
        line.push_str("\",\"target\":\"ditto-gateway\",\"msg\":");
        access::write_json_str(&mut line, &msg);
        line.push_str("}\n");
        line
    } else {
        format!("{} ditto-gateway: {}\n", level.text_tag(), msg)
    }
}

/// Write one operator line to stderr (the macros call this). Blocking, so not for per-request
/// use on a data-plane core: that is what the access log's sink is for.
#[doc(hidden)]
pub fn emit(level: Level, args: fmt::Arguments<'_>) {
    let line = format_line(level, args, json_enabled());
    // One write under the stderr lock, so lines from different threads never interleave.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Log an informational line.
#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::log::emit($crate::log::Level::Info, format_args!($($t)*)) };
}

/// Log a warning line.
#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { $crate::log::emit($crate::log::Level::Warn, format_args!($($t)*)) };
}

/// Log an error line.
#[macro_export]
macro_rules! error {
    ($($t:tt)*) => { $crate::log::emit($crate::log::Level::Error, format_args!($($t)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lines_keep_their_historic_shape() {
        let l = format_line(Level::Info, format_args!("core {}: ready", 3), false);
        assert_eq!(l, "INFO  ditto-gateway: core 3: ready\n");
        let l = format_line(Level::Error, format_args!("x"), false);
        assert_eq!(l, "ERROR ditto-gateway: x\n");
    }

    #[test]
    fn json_lines_parse_and_are_redacted() {
        let l = format_line(
            Level::Warn,
            format_args!("upstream said \"no\" to Bearer sk-abcdefghijklmnopqrstuvwx"),
            true,
        );
        let v: serde_json::Value = serde_json::from_str(l.trim_end()).expect("json line");
        assert_eq!(v["level"], "warn");
        let msg = v["msg"].as_str().expect("msg");
        assert!(msg.starts_with("upstream said \"no\""), "{msg}");
        assert!(!l.contains("abcdefghijklmnop"), "{l}");
        assert!(v["ts"].as_str().is_some_and(|t| t.ends_with('Z')));
    }

    #[test]
    fn macros_still_work() {
        crate::info!("test line {}", 1);
        crate::warn!("test line {}", 2);
        crate::error!("test line {}", 3);
    }
}
