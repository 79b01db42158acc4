//! Config loading with `${VAR}` interpolation, JSON and YAML: never panic, whatever the text.
#![no_main]
use ditto_gateway::config::Config;
use libfuzzer_sys::fuzz_target;

fn lookup(name: &str) -> Option<String> {
    match name {
        "OPENAI_API_KEY" => Some("sk-test".into()),
        "EMPTY" => Some("   ".into()),
        "URL" => Some("http://127.0.0.1:9/v1".into()),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flag, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let format = if flag & 1 == 0 { "json" } else { "yaml" };
    if let Ok(cfg) = Config::from_str(text, format, &lookup) {
        // A config that loads names only backends that exist.
        for d in &cfg.router.default_backends {
            assert!(cfg.backends.iter().any(|b| b.name == d.backend));
        }
    }
});
