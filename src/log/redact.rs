//! Secret redaction for anything that leaves the process as text: log fields, operator lines,
//! metric label values, span attributes.
//!
//! Two helpers:
//! - [`redact_secrets`] masks what *looks like* a credential in free text: the word after
//!   `Bearer`/`Basic`/`Token`, words with well-known API key prefixes (`sk-`, `sk-ant-`, `AIza`,
//!   `ghp_`, `xoxb-`, JWTs, AWS access key ids ...), the value after a secret-sounding name
//!   (`api_key=...`, `"token": "..."`), and any long random-looking word (32+ characters mixing
//!   upper case, lower case and digits). It errs on the side of masking.
//! - [`redact_query`] additionally masks the value of every query parameter whose name sounds
//!   secret (`key`, `api_key`, `token`, `sig`, `password`, ...), whatever the value looks like.
//!
//! Both return `Cow::Borrowed` when nothing was masked, so clean text costs one scan.

use std::borrow::Cow;

/// What a masked secret is replaced with.
pub const MASK: &str = "[REDACTED]";

/// Prefixes of well-known credential formats, with the least number of characters after the
/// prefix for the word to count (so that the plain word `sk-` or `AIza` alone is left alone).
const PREFIXES: &[(&str, usize)] = &[
    ("sk-", 6),
    ("sk_", 6),
    ("pk-", 6),
    ("pk_", 6),
    ("rk_", 6),
    ("AIza", 16),
    ("ghp_", 16),
    ("gho_", 16),
    ("ghs_", 16),
    ("ghu_", 16),
    ("github_pat_", 16),
    ("glpat-", 12),
    ("xoxb-", 8),
    ("xoxp-", 8),
    ("xoxa-", 8),
    ("xai-", 12),
    ("gsk_", 12),
    ("hf_", 16),
    ("AKIA", 12),
    ("ASIA", 12),
    ("eyJ", 16),
    ("sha256:", 16),
];

/// Words after which the next word is a credential (`Authorization: Bearer <x>`).
const SCHEMES: &[&str] = &["bearer", "basic", "token", "digest"];

/// Characters of a credential-like word (base64, base64url, JWT dots, hex, dashes), as a
/// table: every byte of every logged field is looked up here.
static WORD_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'+' | b'/');
        i += 1;
    }
    t
};

fn is_word_byte(b: u8) -> bool {
    WORD_BYTES[b as usize]
}

/// Whether a parameter or field name sounds like it holds a secret. Runs for every word of
/// every logged field, so it compares in place instead of lower-casing a copy.
pub fn is_secret_name(name: &str) -> bool {
    const PARTS: &[&[u8]] = &[
        b"key",
        b"token",
        b"secret",
        b"passw",
        b"auth",
        b"sig",
        b"session",
        b"credential",
        b"cookie",
    ];
    let n = name
        .trim_matches(|c: char| c == '"' || c == '\'')
        .as_bytes();
    PARTS.iter().any(|p| contains_ignore_case(n, p))
        || [&b"pwd"[..], b"code", b"pass"]
            .iter()
            .any(|w| n.eq_ignore_ascii_case(w))
}

/// Whether `hay` contains `needle` (lower case), ignoring ASCII case.
fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.len() >= needle.len()
        && hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

fn looks_random(w: &str) -> bool {
    let b = w.as_bytes();
    b.len() >= 32
        && b.iter().any(u8::is_ascii_uppercase)
        && b.iter().any(u8::is_ascii_lowercase)
        && b.iter().any(u8::is_ascii_digit)
}

fn has_secret_prefix(w: &str) -> bool {
    // Every prefix is at least 3 bytes plus 6 more, and starts with one of these bytes: most
    // words are ruled out before any comparison.
    w.len() >= 9
        && matches!(
            w.as_bytes()[0],
            b's' | b'p' | b'r' | b'A' | b'g' | b'x' | b'h' | b'e'
        )
        && PREFIXES
            .iter()
            .any(|&(p, min)| w.len() >= p.len() + min && w.starts_with(p))
}

/// Bytes of lower-case hex and `-`: a text made only of these (after an optional `ditto-`,
/// the gateway's own request ids) is never masked. No prefix starts with them (`eyJ` needs a
/// `y`), `looks_random` needs an upper-case letter, and `-` joins it all into one word, so
/// neither a scheme nor a secret name can precede anything.
static HEX_DASH: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_digit() || matches!(b, b'a'..=b'f' | b'-');
        i += 1;
    }
    t
};

/// Whether `text` is lower-case hex and dashes after an optional `ditto-` (the shape of the
/// gateway's own request ids): never masked, and plain in JSON and logfmt alike.
pub fn is_hex_id(text: &str) -> bool {
    let rest = text.strip_prefix("ditto-").unwrap_or(text);
    rest.bytes().all(|b| HEX_DASH[b as usize])
}

/// Mask credential-looking words in free text (see the module doc).
pub fn redact_secrets(text: &str) -> Cow<'_, str> {
    if is_hex_id(text) {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut masked: Vec<(usize, usize)> = Vec::new();
    let mut prev_word: Option<(usize, usize)> = None; // (start, end) of the previous word
    let mut i = 0;
    while i < bytes.len() {
        if !is_word_byte(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_word_byte(bytes[i]) {
            i += 1;
        }
        let word = &text[start..i];
        // The cheap byte checks on the gap go first: most words follow a plain separator.
        let whole = has_secret_prefix(word)
            || looks_random(word)
            || prev_word.is_some_and(|(ps, pe)| {
                let prev = &text[ps..pe];
                let gap = &bytes[pe..start];
                let scheme = !gap.is_empty()
                    && gap.iter().all(|&b| b == b' ' || b == b'\t')
                    && SCHEMES.iter().any(|s| prev.eq_ignore_ascii_case(s));
                let assigned = gap.len() <= 4
                    && gap.iter().any(|&b| b == b'=' || b == b':')
                    && gap
                        .iter()
                        .all(|b| matches!(b, b'=' | b':' | b' ' | b'"' | b'\''))
                    && is_secret_name(prev);
                scheme || assigned
            });
        if whole {
            masked.push((start, i));
        } else if word.as_bytes().contains(&b'/') {
            // A path such as `/v1/keys/sk-...`: judge each segment on its own.
            let mut seg_start = start;
            for seg in word.split('/') {
                if has_secret_prefix(seg) || looks_random(seg) {
                    masked.push((seg_start, seg_start + seg.len()));
                }
                seg_start += seg.len() + 1;
            }
        }
        prev_word = Some((start, i));
    }
    if masked.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (a, b) in masked {
        out.push_str(&text[copied..a]);
        out.push_str(MASK);
        copied = b;
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// A request target (`/path?query`) fit for a log: secret-named query values masked, and
/// credential-looking words anywhere masked.
pub fn redact_query(target: &str) -> Cow<'_, str> {
    let (path, query) = match target.as_bytes().iter().position(|&b| b == b'?') {
        Some(i) => (&target[..i], Some(&target[i + 1..])),
        None => (target, None),
    };
    let path_clean = redact_secrets(path);
    let Some(query) = query else {
        return path_clean;
    };
    let mut changed = matches!(path_clean, Cow::Owned(_));
    let mut q = String::with_capacity(query.len());
    for (n, pair) in query.split('&').enumerate() {
        if n > 0 {
            q.push('&');
        }
        let (name, value) = match pair.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (pair, None),
        };
        let decoded_name = percent_decode_lossy(name);
        match value {
            Some(v) if is_secret_name(&decoded_name) && !v.is_empty() => {
                q.push_str(&redact_secrets(name));
                q.push('=');
                q.push_str(MASK);
                changed = true;
            }
            _ => {
                let clean = redact_secrets(pair);
                changed |= matches!(clean, Cow::Owned(_));
                q.push_str(&clean);
            }
        }
    }
    if !changed {
        return Cow::Borrowed(target);
    }
    Cow::Owned(format!("{path_clean}?{q}"))
}

/// `%XX` decoded (invalid escapes kept), for matching parameter names such as `api%5Fkey`.
fn percent_decode_lossy(s: &str) -> Cow<'_, str> {
    if !s.contains('%') && !s.contains('+') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Secrets in the shapes they take in real traffic; none may survive.
    pub(crate) const SECRETS: &[&str] = &[
        "sk-proj-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789",
        "sk-1234567890abcdef",
        "AIzaSyA1234567890abcdefghijklmnopqrstuv",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "AKIAIOSFODNN7EXAMPLE",
        "xoxb-123456789012-abcdefghijkl",
        "Zq8Xb3Lm9Tn2Vc7Rk4Hs6Jd1Pf5Gw0Ya",
    ];

    #[test]
    fn credential_looking_words_are_masked() {
        for s in SECRETS {
            for text in [
                s.to_string(),
                format!("Authorization: Bearer {s}"),
                format!("upstream rejected key {s}, retrying"),
                format!("{{\"api_key\":\"{s}\"}}"),
                format!("({s})"),
            ] {
                let r = redact_secrets(&text);
                assert!(!r.contains(s), "{s} survived in {r}");
                assert!(r.contains(MASK), "{r}");
            }
        }
    }

    #[test]
    fn scheme_and_assignment_mask_any_value() {
        for (text, secret) in [
            ("Authorization: Bearer abc", "abc"),
            ("authorization: basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
            ("api_key=hunter2 next", "hunter2"),
            ("password: 'hunter2'", "hunter2"),
            ("\"token\": \"short\"", "short"),
            ("x-api-key:abc123", "abc123"),
        ] {
            let r = redact_secrets(text);
            assert!(!r.contains(secret), "{secret} survived in {r}");
        }
    }

    #[test]
    fn the_hex_fast_path_agrees_with_the_full_scan() {
        // Every text the fast path passes must also pass the full scan unchanged.
        let alphabet = b"0123456789abcdef-";
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for n in 0..20_000 {
            let len = n % 80;
            let mut t = String::from(if n % 2 == 0 { "ditto-" } else { "" });
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                t.push(alphabet[(seed % alphabet.len() as u64) as usize] as char);
            }
            // Run the full scan by making the fast path miss: a trailing space changes no word.
            let spaced = format!("{t} ");
            assert_eq!(redact_secrets(&spaced), spaced, "{t}");
            assert!(is_hex_id(&t), "the fast path takes {t}");
        }
        assert!(matches!(
            redact_secrets("ditto-5f0c9a1b2c3d4e5f-01-000000000001"),
            Cow::Borrowed(_)
        ));
        // Anything else takes the full scan.
        assert!(redact_secrets("ditto-Zq8Xb3Lm9Tn2Vc7Rk4Hs6Jd1Pf5Gw0Ya").contains(MASK));
        assert!(redact_secrets("ditto-1 sk-abcdefghijklmnop").contains(MASK));
    }

    #[test]
    fn the_prefix_filter_covers_every_prefix() {
        for (p, min) in PREFIXES {
            assert!(p.len() + min >= 9, "{p}");
            let word = format!("{p}{}", "a".repeat(*min));
            assert!(has_secret_prefix(&word), "{p} is filtered out");
        }
    }

    #[test]
    fn ordinary_text_is_untouched() {
        for text in [
            "core 3: I/O driver io_uring, pinned to CPU 3",
            "backend \"openai\": connect to 10.0.0.1:443 failed: connection refused",
            "ditto-5f0c9a1b2c3d4e5f-01-000000000001",
            "model gpt-4o-mini-2024-07-18 routed to azure-east",
            "/v1/chat/completions",
            "550e8400-e29b-41d4-a716-446655440000",
            "sk-",
            "",
        ] {
            assert!(
                matches!(redact_secrets(text), Cow::Borrowed(_)),
                "changed: {text}"
            );
        }
    }

    #[test]
    fn query_values_with_secret_names_are_masked() {
        let cases = [
            ("/v1/models?key=AIzaXX", "/v1/models?key=[REDACTED]"),
            (
                "/v1beta/models/gemini:generateContent?alt=sse&key=abc",
                "/v1beta/models/gemini:generateContent?alt=sse&key=[REDACTED]",
            ),
            (
                "/x?api_key=1&token=2&limit=5",
                "/x?api_key=[REDACTED]&token=[REDACTED]&limit=5",
            ),
            ("/x?API%5FKEY=1", "/x?API%5FKEY=[REDACTED]"),
            (
                "/x?access_token=eyJabc&sig=zz",
                "/x?access_token=[REDACTED]&sig=[REDACTED]",
            ),
            ("/x?q=Bearer sk-abcdefghijklmnop", "/x?q=Bearer [REDACTED]"),
            ("/v1/keys/sk-abcdefghijklmnop", "/v1/keys/[REDACTED]"),
        ];
        for (input, want) in cases {
            assert_eq!(redact_query(input), want, "{input}");
        }
        assert!(matches!(
            redact_query("/v1/files?limit=10&after=file-abc"),
            Cow::Borrowed(_)
        ));
        assert!(matches!(redact_query("/x?key="), Cow::Borrowed(_)));
        assert_eq!(percent_decode_lossy("a%5"), "a%5");
        assert_eq!(percent_decode_lossy("%zz+%41"), "%zz A");
    }
}

#[cfg(test)]
mod unicode {
    use super::*;

    #[test]
    fn multibyte_text_never_panics_and_keeps_its_characters() {
        for text in [
            "ключ sk-abcdefghijklmnop конец",
            "é/sk-abcdefghijklmnop/ü?key=ñ&q=日本",
            "Bearer\u{a0}token-after-nbsp",
            "🔑=sk-abcdefghijklmnop",
            "\u{0}\u{7f}key:\u{200b}x",
        ] {
            let r = redact_secrets(text);
            let q = redact_query(text);
            assert!(!r.contains("abcdefghijklmnop") && !q.contains("abcdefghijklmnop"));
            for c in ["ключ", "конец", "日本", "🔑"] {
                if text.contains(c) {
                    assert!(q.contains(c), "{c} lost from {q}");
                }
            }
        }
    }
}
