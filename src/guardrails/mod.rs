//! Guardrails: what a virtual key (or a router rule, whose guardrails replace the key's) may
//! send, checked before a request is forwarded or charged (REFERENCE section 5).
//!
//! [`Guardrails::from_json`] compiles a `guardrails` object once, at startup or on an admin
//! change: model lists into exact/prefix tables, banned phrases into one Aho-Corasick automaton
//! (SIMD-prefiltered, case-insensitive), banned regexes into one combined regex. An invalid
//! regex is an error naming its index and pattern, so a bad config never starts.
//!
//! [`Guardrails::check`] then costs one pass over the body: `walk` parses it with serde_json
//! into borrowed strings and hands each *text* field to the scanners in place (see `walk.rs`
//! for which fields are text). Model names, keys, tool schemas and base64 images are never
//! scanned, so an image cannot trip the card detector and a model called `gpt-4-ssn` is not
//! PII.
//!
//! Rules and their answers (a [`Violation`] names the rule in `reason`):
//!
//! | rule | status | reason |
//! |---|---|---|
//! | `deny_models` (checked first) | 403 | `deny_model:<pattern>` |
//! | `allow_models` (when non-empty) | 403 | `model_not_allowed:<model>` |
//! | `validate_schema` | 400 | `schema:<what is missing>` |
//! | `max_input_tokens` | 403 | `max_input_tokens:<estimate>><limit>` |
//! | `banned_phrases` | 403 | `banned_phrase:<phrase>` |
//! | `banned_regexes` | 403 | `banned_regex:<pattern>` |
//! | `block_pii` | 403 | `pii:email`, `pii:ssn`, `pii:card` |
//!
//! Fail-closed: when a policy needs the body of a JSON endpoint and the body is not valid JSON
//! (including what serde_json refuses and a Python upstream would accept, such as lone
//! surrogates), the request is refused with 400 `schema:invalid_json` rather than forwarded
//! unchecked.
//!
//! `Guardrails` is immutable, `Send + Sync` and cheap to clone. Give each core its own clone:
//! a cloned `regex` gets its own match-cache pool, so cores never contend on one.

pub mod form;
mod pii;
mod walk;

use std::borrow::Cow;

use aho_corasick::{AhoCorasick, MatchKind};
use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

use crate::error::{ErrorType, GatewayError};

pub use pii::{find_pii, Pii};
use walk::{BadMessage, Kind, Shape, Sink};

/// The keys a `guardrails` object may have; the config layer warns about any other.
pub const FIELDS: &[&str] = &[
    "allow_models",
    "deny_models",
    "max_input_tokens",
    "banned_phrases",
    "banned_regexes",
    "block_pii",
    "validate_schema",
];

/// Longest model name echoed back in a reason; a client's 1 MiB "model" is not repeated.
const MAX_REASON_MODEL: usize = 128;

/// Which API a request is for; decides schema rules and whether a body must be JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`
    Chat,
    /// `POST /v1/embeddings`
    Embeddings,
    /// `POST /v1/responses`
    Responses,
    /// `POST /v1/completions`
    Completions,
    /// Anything else: its JSON body (if it has one) is still scanned for text fields.
    Other,
}

impl Endpoint {
    /// The endpoint for a request path (`/v1/...`, query string allowed).
    pub fn from_path(path: &str) -> Endpoint {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        match path.trim_end_matches('/') {
            "/v1/chat/completions" => Endpoint::Chat,
            "/v1/embeddings" => Endpoint::Embeddings,
            "/v1/responses" => Endpoint::Responses,
            "/v1/completions" => Endpoint::Completions,
            _ => Endpoint::Other,
        }
    }

    /// Endpoints whose requests name a model and carry a JSON body.
    fn is_model_api(self) -> bool {
        !matches!(self, Endpoint::Other)
    }
}

/// A request the guardrails refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// 403 for policy, 400 for a malformed request (`validate_schema`, invalid JSON).
    pub status: u16,
    /// `policy_error` for 403, `invalid_request_error` for 400.
    pub etype: ErrorType,
    /// Machine-readable rule name: `deny_model`, `model_not_allowed`, `invalid_schema`,
    /// `invalid_json`, `max_input_tokens`, `banned_phrase`, `banned_regex`, `pii`.
    pub code: &'static str,
    /// Which rule and what tripped it, e.g. `banned_phrase:secret`, `pii:ssn`.
    pub reason: String,
}

/// The answer to an upload whose form could not be read while guardrails apply: 400, never
/// waved through (what the gateway cannot read, the upstream might read differently).
pub fn form_refusal(e: form::FormError) -> Violation {
    Violation::schema("invalid_multipart", format!("multipart:{e:?}"))
}

impl Violation {
    fn policy(code: &'static str, reason: String) -> Violation {
        Violation {
            status: 403,
            etype: ErrorType::Policy,
            code,
            reason,
        }
    }

    fn schema(code: &'static str, what: impl std::fmt::Display) -> Violation {
        Violation {
            status: 400,
            etype: ErrorType::InvalidRequest,
            code,
            reason: format!("schema:{what}"),
        }
    }

    /// The gateway error to answer with (message `guardrail rejected: <reason>`).
    pub fn to_error(&self) -> GatewayError {
        GatewayError::new(
            self.status,
            self.etype,
            self.code,
            format!("guardrail rejected: {}", self.reason),
        )
    }
}

/// Model names matched exactly or by prefix (`gpt-4*`; `*` alone matches every model).
#[derive(Debug, Clone, Default)]
struct ModelList {
    /// Patterns as written, for reasons.
    patterns: Vec<String>,
}

impl ModelList {
    fn parse(v: Option<&serde_json::Value>, field: &str) -> Result<ModelList, String> {
        let patterns = string_list(v, field)?
            .into_iter()
            .map(|p| p.trim().to_string())
            // An empty pattern matches nothing (as in the original); dropping it keeps `*`
            // the only way to say "every model".
            .filter(|p| !p.is_empty())
            .collect();
        Ok(ModelList { patterns })
    }

    /// The first pattern matching `model`.
    fn find(&self, model: &str) -> Option<&str> {
        self.patterns
            .iter()
            .find(|p| match p.strip_suffix('*') {
                Some(prefix) => model.starts_with(prefix),
                None => model == p.as_str(),
            })
            .map(String::as_str)
    }
}

/// Banned phrases.
///
/// ASCII phrases go into one case-*sensitive* Aho-Corasick automaton over their lower-case
/// forms, and the text is folded to lower case through a fixed 8 KiB stack window (with an
/// overlap of the longest phrase, so a phrase across two windows is found). That is not a copy
/// of the body (nothing is allocated, the window is overwritten) and it buys the automaton's
/// SIMD (Teddy) prefilter, which aho-corasick turns off for `ascii_case_insensitive`: measured
/// here on 1 MiB of prose with 21 phrases, 2.0 GiB/s instead of 0.58 GiB/s. Phrases with
/// non-ASCII letters go into a `RegexSet` of escaped literals, so `É` also matches `é` (Unicode
/// simple case folding).
#[derive(Debug, Clone)]
struct Phrases {
    ascii: Option<AhoCorasick>,
    /// Automaton pattern id -> index into `phrases`.
    ascii_ids: Vec<usize>,
    /// Length of the longest ASCII phrase (the window overlap).
    longest: usize,
    unicode: Option<RegexSet>,
    unicode_ids: Vec<usize>,
    phrases: Vec<String>,
}

/// The lower-casing window of [`Phrases::find`]. Phrases longer than half of it are searched
/// directly with a case-insensitive automaton instead.
const FOLD_WINDOW: usize = 8192;

impl Phrases {
    fn build(phrases: Vec<String>) -> Result<Option<Phrases>, String> {
        let phrases: Vec<String> = phrases
            .into_iter()
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        if phrases.is_empty() {
            return Ok(None);
        }
        let (ascii_ids, unicode_ids): (Vec<usize>, Vec<usize>) =
            (0..phrases.len()).partition(|&i| phrases[i].is_ascii());
        let longest = ascii_ids
            .iter()
            .map(|&i| phrases[i].len())
            .max()
            .unwrap_or(0);
        let ascii = if ascii_ids.is_empty() {
            None
        } else {
            let windowed = longest <= FOLD_WINDOW / 2;
            Some(
                AhoCorasick::builder()
                    // Without the window the automaton folds case itself (slower, but any
                    // phrase length works).
                    .ascii_case_insensitive(!windowed)
                    .match_kind(MatchKind::LeftmostFirst)
                    .build(ascii_ids.iter().map(|&i| phrases[i].to_ascii_lowercase()))
                    .map_err(|e| format!("banned_phrases: {e}"))?,
            )
        };
        let unicode = if unicode_ids.is_empty() {
            None
        } else {
            Some(
                RegexSetBuilder::new(unicode_ids.iter().map(|&i| regex::escape(&phrases[i])))
                    .case_insensitive(true)
                    .build()
                    .map_err(|e| format!("banned_phrases: {}", one_line(&e)))?,
            )
        };
        Ok(Some(Phrases {
            ascii,
            ascii_ids,
            longest,
            unicode,
            unicode_ids,
            phrases,
        }))
    }

    fn find(&self, text: &str) -> Option<&str> {
        if let Some(ac) = &self.ascii {
            let id = if self.longest <= FOLD_WINDOW / 2 {
                find_folded(ac, text.as_bytes(), self.longest)
            } else {
                ac.find(text).map(|m| m.pattern().as_usize())
            };
            if let Some(id) = id {
                return Some(&self.phrases[self.ascii_ids[id]]);
            }
        }
        if let Some(set) = &self.unicode {
            if let Some(i) = set.matches(text).iter().next() {
                return Some(&self.phrases[self.unicode_ids[i]]);
            }
        }
        None
    }
}

/// Search lower-case patterns in `text` folded to ASCII lower case window by window.
fn find_folded(ac: &AhoCorasick, text: &[u8], longest: usize) -> Option<usize> {
    // Most texts are short chat turns: a small window avoids zeroing 8 KiB of stack for each.
    if text.len() <= SMALL_WINDOW {
        let mut window = [0u8; SMALL_WINDOW];
        return find_folded_in(ac, text, longest, &mut window);
    }
    let mut window = [0u8; FOLD_WINDOW];
    find_folded_in(ac, text, longest, &mut window)
}

/// Window for texts that fit in it whole.
const SMALL_WINDOW: usize = 512;

fn find_folded_in(
    ac: &AhoCorasick,
    text: &[u8],
    longest: usize,
    window: &mut [u8],
) -> Option<usize> {
    let size = window.len();
    let mut pos = 0;
    loop {
        let end = (pos + size).min(text.len());
        let chunk = &text[pos..end];
        let folded = &mut window[..chunk.len()];
        for (o, c) in folded.iter_mut().zip(chunk) {
            *o = c.to_ascii_lowercase();
        }
        if let Some(m) = ac.find(&*folded) {
            return Some(m.pattern().as_usize());
        }
        if end == text.len() {
            return None;
        }
        // Step back by the longest phrase minus one, so that a phrase cut by the window's
        // end is whole in the next one. Only the large window is ever stepped (a small one
        // holds its whole text), and `longest <= FOLD_WINDOW / 2` guarantees progress.
        pos = end - (longest - 1);
    }
}

/// Banned regexes, matched case-insensitively (as the original does; `(?-i)` opts out).
///
/// One combined regex `(?:p0)|(?:p1)|...` answers "does anything match" in one pass with the
/// literal prefilters of every branch (a `RegexSet` cannot use them: 0.58 GiB/s against 10
/// GiB/s measured on 1 MiB for two typical patterns); only on a hit are the patterns tried
/// one by one to name the culprit. A pattern with a `#` stays out of the combination: under
/// `(?x)` a comment would run to the end of the line and swallow the branches after it.
#[derive(Debug, Clone)]
struct Regexes {
    /// The combination of the patterns without `#`, if any.
    any: Option<Regex>,
    /// Patterns with `#`, always tried alone.
    alone: Vec<usize>,
    each: Vec<Regex>,
}

impl Regexes {
    fn build(patterns: Vec<String>) -> Result<Option<Regexes>, String> {
        let mut each = Vec::new();
        for (i, raw) in patterns.iter().enumerate() {
            let p = raw.trim();
            if p.is_empty() {
                continue;
            }
            let re = RegexBuilder::new(p)
                .case_insensitive(true)
                .build()
                .map_err(|e| {
                    format!("banned_regexes[{i}]: invalid regex {p:?}: {}", one_line(&e))
                })?;
            each.push(re);
        }
        if each.is_empty() {
            return Ok(None);
        }
        let (alone, combinable): (Vec<usize>, Vec<usize>) =
            (0..each.len()).partition(|&i| each[i].as_str().contains('#'));
        let any = if combinable.is_empty() {
            None
        } else {
            let combined = combinable
                .iter()
                .map(|&i| format!("(?:{})", each[i].as_str()))
                .collect::<Vec<_>>()
                .join("|");
            Some(
                RegexBuilder::new(&combined)
                    .case_insensitive(true)
                    .build()
                    .map_err(|e| format!("banned_regexes: {}", one_line(&e)))?,
            )
        };
        Ok(Some(Regexes { any, alone, each }))
    }

    fn find(&self, text: &str) -> Option<&str> {
        let hit = self.any.as_ref().is_some_and(|r| r.is_match(text))
            || self.alone.iter().any(|&i| self.each[i].is_match(text));
        if !hit {
            return None;
        }
        self.each
            .iter()
            .find(|r| r.is_match(text))
            .map(Regex::as_str)
    }
}

/// regex errors are multi-line (pattern, caret, message); a config error is one line.
fn one_line(e: &regex::Error) -> String {
    let s = e.to_string();
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map_or(s.clone(), |l| {
            l.trim().trim_start_matches("error: ").to_string()
        })
}

/// Compiled guardrails for one key or router rule.
#[derive(Debug, Clone, Default)]
pub struct Guardrails {
    allow: ModelList,
    deny: ModelList,
    max_input_tokens: Option<u64>,
    phrases: Option<Phrases>,
    regexes: Option<Regexes>,
    block_pii: bool,
    validate_schema: bool,
}

impl Guardrails {
    /// Compile a `guardrails` object. `null` means none. Wrong types, invalid regexes and
    /// phrase sets too large to compile are errors (`<field>: <problem>`, relative to the
    /// `guardrails` object); keys not in [`FIELDS`] are ignored here and left to the config
    /// layer to warn about.
    pub fn from_json(v: &serde_json::Value) -> Result<Guardrails, String> {
        let obj = match v {
            serde_json::Value::Null => return Ok(Guardrails::default()),
            serde_json::Value::Object(o) => o,
            other => return Err(format!("expected an object, found {}", type_name(other))),
        };
        let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
        let max_input_tokens = match get("max_input_tokens") {
            None => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                format!(
                    "max_input_tokens: expected a non-negative integer, found {}",
                    type_name(v)
                )
            })?),
        };
        Ok(Guardrails {
            allow: ModelList::parse(get("allow_models"), "allow_models")?,
            deny: ModelList::parse(get("deny_models"), "deny_models")?,
            max_input_tokens,
            phrases: Phrases::build(string_list(get("banned_phrases"), "banned_phrases")?)?,
            regexes: Regexes::build(string_list(get("banned_regexes"), "banned_regexes")?)?,
            block_pii: bool_field(get("block_pii"), "block_pii")?,
            validate_schema: bool_field(get("validate_schema"), "validate_schema")?,
        })
    }

    /// True when no rule is configured (checking is free then).
    pub fn is_empty(&self) -> bool {
        self.allow.patterns.is_empty()
            && self.deny.patterns.is_empty()
            && self.max_input_tokens.is_none()
            && !self.scans_text()
            && !self.validate_schema
    }

    fn scans_text(&self) -> bool {
        self.phrases.is_some() || self.regexes.is_some() || self.block_pii
    }

    /// Check one request. `model` is the model the pipeline routes on (from its own probe of
    /// the body, or from the path); every `model` in the body is checked as well. `body` is the
    /// whole request body. Never panics, whatever the body.
    pub fn check(
        &self,
        endpoint: Endpoint,
        model: Option<&str>,
        body: &[u8],
    ) -> Result<(), Violation> {
        if let Some(m) = model {
            self.check_model(m)?;
        }
        let has_model_lists = !self.allow.patterns.is_empty() || !self.deny.patterns.is_empty();
        let needs_body = self.scans_text()
            || self.max_input_tokens.is_some()
            || (self.validate_schema && endpoint.is_model_api())
            || has_model_lists;
        if !needs_body {
            return Ok(());
        }
        if !endpoint.is_model_api() && !looks_like_json(body) {
            // Multipart uploads, binary audio, bodiless GETs: no JSON text fields to police.
            return Ok(());
        }
        let mut scan = Scan {
            g: self,
            count_tokens: self.max_input_tokens.is_some(),
            counts: TokenCounts::default(),
            hit: None,
            model_hit: None,
            models_seen: 0,
        };
        let shape = match walk::walk(body, &mut scan) {
            Ok(shape) => shape,
            Err(()) => return Err(Violation::schema("invalid_json", "invalid_json")),
        };
        if let Some(v) = scan.model_hit {
            return Err(v);
        }
        if model.is_none()
            && scan.models_seen == 0
            && endpoint.is_model_api()
            && !self.allow.patterns.is_empty()
        {
            return Err(Violation::policy(
                "model_not_allowed",
                "model_not_allowed:(none)".to_string(),
            ));
        }
        if self.validate_schema {
            schema(endpoint, &shape)?;
        }
        if let Some(limit) = self.max_input_tokens {
            let estimate = scan.counts.estimate();
            if estimate > limit {
                return Err(Violation::policy(
                    "max_input_tokens",
                    format!("max_input_tokens:{estimate}>{limit}"),
                ));
            }
        }
        match scan.hit {
            Some(v) => Err(v),
            None => Ok(()),
        }
    }

    /// Check a `multipart/form-data` upload (audio, image edits) by its plain fields
    /// ([`form::text_fields`]: `model`, `prompt`, ...), as the JSON body they stand for; file
    /// parts are not text. (A form that could not be read is refused before: [`form_refusal`].)
    pub fn check_form(
        &self,
        endpoint: Endpoint,
        fields: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), Violation> {
        let model = fields.get("model").and_then(|m| m.as_str());
        let json = serde_json::to_vec(fields)
            .map_err(|_| Violation::schema("invalid_multipart", "multipart"))?;
        self.check(endpoint, model, &json)
    }

    fn check_model(&self, model: &str) -> Result<(), Violation> {
        let model = model.trim();
        if model.is_empty() {
            return Ok(());
        }
        if let Some(p) = self.deny.find(model) {
            return Err(Violation::policy("deny_model", format!("deny_model:{p}")));
        }
        if !self.allow.patterns.is_empty() && self.allow.find(model).is_none() {
            return Err(Violation::policy(
                "model_not_allowed",
                format!("model_not_allowed:{}", truncate(model, MAX_REASON_MODEL)),
            ));
        }
        Ok(())
    }

    /// Scan one text: banned phrases, then regexes, then personal data.
    fn scan_text(&self, text: &str) -> Option<Violation> {
        if let Some(p) = self.phrases.as_ref().and_then(|p| p.find(text)) {
            return Some(Violation::policy(
                "banned_phrase",
                format!("banned_phrase:{p}"),
            ));
        }
        if let Some(p) = self.regexes.as_ref().and_then(|r| r.find(text)) {
            return Some(Violation::policy(
                "banned_regex",
                format!("banned_regex:{p}"),
            ));
        }
        if self.block_pii {
            if let Some(kind) = find_pii(text) {
                return Some(Violation::policy("pii", format!("pii:{}", kind.as_str())));
            }
        }
        None
    }
}

/// The estimated input tokens of a JSON request body (the same estimate `max_input_tokens`
/// uses), or `None` when the body is not valid JSON. Handy for charging tokens-per-minute.
pub fn estimate_input_tokens(body: &[u8]) -> Option<u64> {
    struct Count(TokenCounts);
    impl Sink<'_> for Count {
        fn text(&mut self, s: &str) {
            self.0.add(s);
        }
        fn number(&mut self) {
            self.0.numbers += 1;
        }
        fn model(&mut self, _: Cow<'_, str>) {}
    }
    let mut c = Count(TokenCounts::default());
    walk::walk(body, &mut c).ok()?;
    Some(c.0.estimate())
}

/// Raw counts behind the token estimate.
///
/// The estimate is the usual "4 characters per token" for ASCII (English prose and code run at
/// 3.5-4.5 bytes per token in the cl100k/o200k vocabularies), refined for other scripts, where
/// counting bytes would be badly wrong: 2-byte UTF-8 letters (Latin accents, Greek, Cyrillic,
/// Arabic, Hebrew) at 2 per token, 3-byte characters (CJK, Thai, Devanagari) at 1 token each,
/// 4-byte characters (emoji) at 2 tokens each; plus one token per number in a token array and
/// one per text field for the framing the model sees around it. It errs on the high side for
/// non-Latin scripts, the safe side for a limit. It costs one byte-classifying pass over each
/// text, which the compiler vectorizes for ASCII.
#[derive(Debug, Default, Clone, Copy)]
struct TokenCounts {
    ascii: u64,
    two: u64,
    three: u64,
    four: u64,
    numbers: u64,
    texts: u64,
}

impl TokenCounts {
    fn add(&mut self, s: &str) {
        let b = s.as_bytes();
        let ascii = b.iter().filter(|&&c| c < 0x80).count() as u64;
        self.ascii += ascii;
        self.texts += 1;
        if ascii as usize == b.len() {
            return;
        }
        for &c in b {
            match c {
                0xF0..=0xFF => self.four += 1,
                0xE0..=0xEF => self.three += 1,
                0xC0..=0xDF => self.two += 1,
                _ => {}
            }
        }
    }

    fn estimate(&self) -> u64 {
        self.ascii.div_ceil(4)
            + self.two.div_ceil(2)
            + self.three
            + 2 * self.four
            + self.numbers
            + self.texts
    }
}

/// The walk's sink during [`Guardrails::check`].
struct Scan<'g> {
    g: &'g Guardrails,
    count_tokens: bool,
    counts: TokenCounts,
    /// The first text violation; later texts are only counted.
    hit: Option<Violation>,
    /// The first model in the body that the model lists refuse.
    model_hit: Option<Violation>,
    models_seen: usize,
}

impl<'de> Sink<'de> for Scan<'_> {
    fn text(&mut self, s: &str) {
        if self.count_tokens {
            self.counts.add(s);
        }
        if self.hit.is_none() {
            self.hit = self.g.scan_text(s);
        }
    }

    fn number(&mut self) {
        self.counts.numbers += 1;
    }

    fn model(&mut self, model: Cow<'de, str>) {
        self.models_seen += 1;
        if self.model_hit.is_none() {
            self.model_hit = self.g.check_model(&model).err();
        }
    }
}

fn schema(endpoint: Endpoint, shape: &Shape) -> Result<(), Violation> {
    if !endpoint.is_model_api() {
        return Ok(());
    }
    if !shape.is_object {
        return Err(Violation::schema("invalid_schema", "body_not_object"));
    }
    if shape.model != Kind::String(true) {
        return Err(Violation::schema("invalid_schema", "model"));
    }
    let text_like = |k: Kind| matches!(k, Kind::String(_) | Kind::Array);
    match endpoint {
        Endpoint::Chat => {
            if shape.messages != Kind::Array {
                return Err(Violation::schema("invalid_schema", "messages"));
            }
            if let Some((i, why)) = shape.bad_message {
                let what = match why {
                    BadMessage::NotObject => format!("messages[{i}]"),
                    BadMessage::Role => format!("messages[{i}].role"),
                    BadMessage::Content => format!("messages[{i}].content"),
                };
                return Err(Violation::schema("invalid_schema", what));
            }
        }
        Endpoint::Embeddings if !text_like(shape.input) => {
            return Err(Violation::schema("invalid_schema", "input"));
        }
        Endpoint::Responses if !(text_like(shape.input) || shape.input == Kind::Object) => {
            return Err(Violation::schema("invalid_schema", "input"));
        }
        Endpoint::Completions if !text_like(shape.prompt) => {
            return Err(Violation::schema("invalid_schema", "prompt"));
        }
        _ => {}
    }
    Ok(())
}

fn looks_like_json(body: &[u8]) -> bool {
    matches!(
        body.iter().find(|c| !c.is_ascii_whitespace()),
        Some(b'{' | b'[')
    )
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn type_name(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn string_list(v: Option<&serde_json::Value>, field: &str) -> Result<Vec<String>, String> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    let arr = v.as_array().ok_or_else(|| {
        format!(
            "{field}: expected an array of strings, found {}",
            type_name(v)
        )
    })?;
    arr.iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_str().map(str::to_string).ok_or_else(|| {
                format!("{field}[{i}]: expected a string, found {}", type_name(item))
            })
        })
        .collect()
}

fn bool_field(v: Option<&serde_json::Value>, field: &str) -> Result<bool, String> {
    match v {
        None => Ok(false),
        Some(serde_json::Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!(
            "{field}: expected true or false, found {}",
            type_name(other)
        )),
    }
}

#[cfg(test)]
mod tests;
