//! The command line: usage, help, startup errors that name their cause, `--dotenv`, YAML.

use serde_json::json;

use crate::harness::{echo_header, get, run_cli, single, write_file, Gateway, Mock};

#[test]
fn no_arguments_print_usage_on_stderr_and_fail() {
    let r = run_cli(&[], &[], &[]);
    assert!(!r.status.success(), "{:?}", r.status);
    assert!(
        r.stderr.contains("usage: ditto-gateway CONFIG"),
        "{}",
        r.stderr
    );
}

#[test]
fn unknown_flag_is_named_and_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_file(
        dir.path(),
        "gateway.json",
        &single("m", "http://127.0.0.1:9/v1", json!({})),
    );
    let r = run_cli(&[cfg.to_str().expect("path"), "--no-such-flag"], &[], &[]);
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("--no-such-flag"), "{}", r.stderr);
    assert!(r.stderr.contains("usage:"), "{}", r.stderr);
}

#[test]
fn help_exits_zero_with_usage() {
    let r = run_cli(&["--help"], &[], &[]);
    assert!(r.status.success(), "{:?} {}", r.status, r.stderr);
    assert!(
        r.stdout.contains("usage: ditto-gateway CONFIG"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("--listen"), "{}", r.stdout);
}

#[test]
fn missing_env_variable_stops_startup_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = single(
        "primary",
        "http://127.0.0.1:9/v1",
        json!({"headers": {"authorization": "Bearer ${DITTO_IT_MISSING_KEY}"}}),
    );
    let path = write_file(dir.path(), "gateway.json", &cfg);
    let r = run_cli(
        &[path.to_str().expect("path"), "--listen", "127.0.0.1:0"],
        &[],
        &["DITTO_IT_MISSING_KEY"],
    );
    assert!(!r.status.success(), "started without the variable");
    assert!(r.stderr.contains("DITTO_IT_MISSING_KEY"), "{}", r.stderr);
}

#[test]
fn dotenv_file_supplies_a_variable() {
    let mock = Mock::start();
    let cfg = single(
        "primary",
        &mock.v1(),
        json!({"headers": {"authorization": "Bearer ${DITTO_IT_DOTENV_KEY}"}}),
    );
    let gw = Gateway::builder(&cfg)
        .file(
            ".env",
            "# comment\nexport DITTO_IT_DOTENV_KEY=\"from-dotenv\"\n",
        )
        .args(&["--dotenv", "{dir}/.env"])
        .start();
    let echo = get(&gw.url("/v1/echo"), &[]).json();
    assert_eq!(echo_header(&echo, "authorization"), ["Bearer from-dotenv"]);
}

#[test]
fn bad_router_reference_names_the_field_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = json!({
        "backends": [{"name": "a", "base_url": "http://127.0.0.1:9/v1"}],
        "virtual_keys": [],
        "router": {"default_backends": [{"backend": "a"}], "rules": [{"model_prefix": "gpt", "backend": "nope"}]},
    });
    let path = write_file(dir.path(), "gateway.json", &cfg.to_string());
    let r = run_cli(
        &[path.to_str().expect("path"), "--listen", "127.0.0.1:0"],
        &[],
        &[],
    );
    assert!(!r.status.success());
    assert!(r.stderr.contains("router.rules[0].backend"), "{}", r.stderr);
    assert!(r.stderr.contains("nope"), "{}", r.stderr);
}

#[test]
fn yaml_config_serves_requests() {
    let mock = Mock::start();
    let yaml = format!(
        "backends:\n  - name: yml\n    base_url: {}\n    timeout_seconds: 5\nvirtual_keys: []\nrouter:\n  default_backends:\n    - backend: yml\n      weight: 1.0\n",
        mock.v1()
    );
    let gw = Gateway::builder(&yaml).ext("yaml").start();
    let r = crate::harness::post(
        &gw.url("/v1/chat/completions"),
        &crate::harness::chat("gpt-4o-mini", false),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-ditto-backend"), Some("yml"));
    assert_eq!(r.json()["object"], "chat.completion");
}

#[test]
fn upstream_flag_adds_a_backend_the_router_can_name() {
    let mock = Mock::start();
    let cfg = json!({"virtual_keys": [], "router": {"default_backend": "local"}}).to_string();
    let gw = Gateway::builder(&cfg)
        .args(&["--upstream", &format!("local={}", mock.v1())])
        .start();
    let r = crate::harness::post(
        &gw.url("/v1/chat/completions"),
        &crate::harness::chat("gpt-4o", false),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-ditto-backend"), Some("local"));
}

/// Each core logs its I/O driver, and `MONOIO_FORCE_LEGACY_DRIVER=1` (the second CI pass of
/// this suite) really gives epoll: otherwise that pass would silently test io_uring twice.
#[test]
fn each_core_logs_its_io_driver_and_the_legacy_override_is_honoured() {
    let mock = Mock::start();
    let gw = Gateway::start(&single("m", &mock.v1(), json!({})));
    let t0 = std::time::Instant::now();
    let lines = loop {
        let log = gw.log();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains("I/O driver"))
            .map(str::to_string)
            .collect();
        if lines.len() == 2 || t0.elapsed() > std::time::Duration::from_secs(5) {
            break lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(lines.len(), 2, "one line per core: {lines:?}");
    let forced = std::env::var("MONOIO_FORCE_LEGACY_DRIVER").is_ok_and(|v| v == "1");
    if forced {
        assert!(
            lines.iter().all(|l| l.contains("legacy (epoll)")),
            "{lines:?}"
        );
    }
}
