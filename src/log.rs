//! Minimal startup and error logging to stderr. Access logs, JSON lines and metrics arrive with
//! the observability work; until then these lines are for operators reading a terminal.

/// Log an informational line.
#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { eprintln!("INFO  ditto-gateway: {}", format_args!($($t)*)) };
}

/// Log a warning line.
#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { eprintln!("WARN  ditto-gateway: {}", format_args!($($t)*)) };
}

/// Log an error line.
#[macro_export]
macro_rules! error {
    ($($t:tt)*) => { eprintln!("ERROR ditto-gateway: {}", format_args!($($t)*)) };
}
