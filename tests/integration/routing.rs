//! Routing: exact rules before prefix rules before the default group; weighted choice is
//! deterministic per request id.

use std::collections::HashSet;

use serde_json::json;

use crate::harness::{agent, config, post_with, Gateway, Mock};

#[test]
fn exact_then_prefix_then_default_choose_the_backend() {
    let mock = Mock::start();
    let cfg = config(
        &[
            ("default", &mock.v1(), json!({})),
            ("prefix", &mock.v1(), json!({})),
            ("exact", &mock.v1(), json!({})),
            ("star", &mock.v1(), json!({})),
        ],
        json!({
            "default_backends": [{"backend": "default"}],
            "rules": [
                {"model_prefix": "gpt-4", "backend": "prefix"},
                {"model_prefix": "gpt-4o", "exact": true, "backend": "exact"},
                {"model_prefix": "claude*", "backend": "star"},
            ],
        }),
    );
    let gw = Gateway::start(&cfg);
    let a = agent();
    for (model, want) in [
        ("gpt-4o", "exact"),
        ("gpt-4o-mini", "prefix"),
        ("gpt-4", "prefix"),
        ("claude-3", "star"),
        ("llama", "default"),
    ] {
        let r = post_with(
            &a,
            &gw.url("/v1/chat/completions"),
            &json!({"model": model}),
            &[],
        );
        assert_eq!(r.status, 200, "{model}");
        assert_eq!(r.header("x-ditto-backend"), Some(want), "{model}");
        assert_eq!(r.json()["model"], model);
    }
    // GET /v1/models/{id} routes by the model in the path.
    let r = crate::harness::get_with(&a, &gw.url("/v1/models/gpt-4o"), &[]);
    assert_eq!(r.header("x-ditto-backend"), Some("exact"));
}

#[test]
fn weighted_choice_is_deterministic_per_request_id() {
    let mock = Mock::start();
    let cfg = config(
        &[
            ("a", &mock.v1(), json!({})),
            ("b", &mock.v1(), json!({})),
            ("off", &mock.v1(), json!({})),
        ],
        json!({"default_backends": [{"backend": "a", "weight": 1.0}, {"backend": "b", "weight": 1.0}, {"backend": "off", "weight": 0.0}]}),
    );
    let gw = Gateway::start(&cfg);
    let a = agent();
    let mut seen = HashSet::new();
    for i in 0..24 {
        let id = format!("route-{i}");
        let pick = |_: ()| {
            let r = post_with(
                &a,
                &gw.url("/v1/chat/completions"),
                &json!({"model": "m"}),
                &[("x-request-id", id.as_str())],
            );
            assert_eq!(r.status, 200);
            r.header("x-ditto-backend").expect("backend").to_string()
        };
        let first = pick(());
        assert_eq!(pick(()), first, "{id} moved between backends");
        assert_eq!(pick(()), first, "{id} moved between backends");
        seen.insert(first);
    }
    let mut seen: Vec<_> = seen.into_iter().collect();
    seen.sort();
    assert_eq!(
        seen,
        ["a", "b"],
        "both weighted backends are used, the zero-weight one never"
    );
}
