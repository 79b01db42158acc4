//! One pass over a JSON request body that hands every *text* field to a [`Sink`], in place.
//!
//! serde_json drives a hand-written visitor, so no `Value` tree is built: strings without
//! escapes arrive as `&str` borrowed from the body, strings with escapes are unescaped once into
//! serde_json's scratch buffer, and everything that is not text (keys, `model`, tool schemas,
//! base64 images and audio, numbers outside token arrays) is skipped with [`IgnoredAny`]. That
//! is the "copy the body at most once" rule: the only copy is the unescaping of escaped strings.
//!
//! Which fields are text:
//! - top level: `messages`, `prompt`, `input`, `instructions`, `system`, `query`, `documents`,
//!   `suffix`;
//! - inside those, recursively: strings, array elements, and the values of `text`, `content`
//!   and `output` keys of objects (chat content parts, Responses input items and
//!   `function_call_output`, Anthropic-style system blocks). Other keys (`image_url`,
//!   `input_audio`, `file`, `arguments`, `type`, ...) are not text.
//!
//! Numbers inside text fields count as one token each (embeddings accept token arrays).
//! Nesting is bounded by serde_json's recursion limit (128), so a hostile body cannot overflow
//! the stack; it fails to parse instead.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Receives what the walk finds; `'de` is the body's lifetime.
pub(crate) trait Sink<'de> {
    /// A text string (borrowed from the body, or unescaped into a scratch buffer).
    fn text(&mut self, s: &str);
    /// A number inside a text field (a token id).
    fn number(&mut self);
    /// A top-level `model` string. Every occurrence is reported: with duplicate keys, serde
    /// derives and Python upstreams disagree on which one wins, so policy must see them all.
    fn model(&mut self, model: Cow<'de, str>);
}

/// The JSON type of a value, as far as schema validation cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Kind {
    /// The field was not present.
    #[default]
    Missing,
    Null,
    Bool,
    Number,
    /// A string; `true` when it has something other than whitespace.
    String(bool),
    Array,
    Object,
}

/// Why a chat message fails the schema (the first bad one is kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadMessage {
    NotObject,
    Role,
    Content,
}

/// The shape of the request, for schema validation.
#[derive(Debug, Default)]
pub(crate) struct Shape {
    /// The body is a JSON object.
    pub is_object: bool,
    pub model: Kind,
    pub messages: Kind,
    pub input: Kind,
    pub prompt: Kind,
    /// The first message that is not `{role: non-empty string, content: present}`.
    pub bad_message: Option<(usize, BadMessage)>,
}

/// Walk `body`, reporting text to `sink`. `Err` when the body is not valid JSON (or nests
/// deeper than serde_json's limit).
pub(crate) fn walk<'de, S: Sink<'de>>(body: &'de [u8], sink: &mut S) -> Result<Shape, ()> {
    let mut state = Walk {
        sink,
        shape: Shape::default(),
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let top = Node {
        ctx: Ctx::Top,
        walk: &mut state,
    }
    .deserialize(&mut de)
    .map_err(|_| ())?;
    de.end().map_err(|_| ())?;
    state.shape.is_object = top == Kind::Object;
    Ok(state.shape)
}

struct Walk<'s, S> {
    sink: &'s mut S,
    shape: Shape,
}

/// Where in the document a value sits, which decides what the visitor does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Top,
    Model,
    Messages,
    Message(usize),
    /// A string that must be non-blank (a message role): only its kind is recorded.
    Role,
    Text,
}

/// Top-level and message keys we act on; anything else is skipped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    Model,
    Messages,
    Input,
    Prompt,
    /// Other top-level text fields (`instructions`, `system`, ...).
    OtherText,
    Role,
    Content,
    /// `text` / `output` inside text objects.
    InnerText,
    Other,
}

fn key_of(k: &str) -> Key {
    match k {
        "model" => Key::Model,
        "messages" => Key::Messages,
        "input" => Key::Input,
        "prompt" => Key::Prompt,
        "instructions" | "system" | "query" | "documents" | "suffix" => Key::OtherText,
        "role" => Key::Role,
        "content" => Key::Content,
        "text" | "output" => Key::InnerText,
        _ => Key::Other,
    }
}

/// Deserializes an object key into a [`Key`] without allocating (escaped keys are unescaped by
/// serde_json into its scratch buffer, so `"mod\u0065l"` is `model`, as upstreams read it).
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(KeySeed)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(key_of(v))
    }
}

struct Node<'w, 's, S> {
    ctx: Ctx,
    walk: &'w mut Walk<'s, S>,
}

impl<'de, S: Sink<'de>> DeserializeSeed<'de> for Node<'_, '_, S> {
    type Value = Kind;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Kind, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, S: Sink<'de>> Node<'_, '_, S> {
    fn string(self, s: &str, owned: impl FnOnce() -> Cow<'de, str>) -> Kind {
        match self.ctx {
            Ctx::Text => self.walk.sink.text(s),
            Ctx::Model => self.walk.sink.model(owned()),
            _ => {}
        }
        self.scalar(Kind::String(!s.trim().is_empty()))
    }

    fn number(self) -> Kind {
        if self.ctx == Ctx::Text {
            self.walk.sink.number();
        }
        self.scalar(Kind::Number)
    }

    /// A scalar where a chat message object was expected is a bad message.
    fn scalar(self, kind: Kind) -> Kind {
        if let Ctx::Message(i) = self.ctx {
            self.walk.note_bad_message(i, BadMessage::NotObject);
        }
        kind
    }
}

impl<'de, S: Sink<'de>> Visitor<'de> for Node<'_, '_, S> {
    type Value = Kind;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Kind, E> {
        Ok(self.scalar(Kind::Bool))
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Kind, E> {
        Ok(self.number())
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Kind, E> {
        Ok(self.number())
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Kind, E> {
        Ok(self.number())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Kind, E> {
        Ok(self.scalar(Kind::Null))
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Kind, E> {
        Ok(self.scalar(Kind::Null))
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Kind, E> {
        Ok(self.string(v, || Cow::Borrowed(v)))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Kind, E> {
        // Only a `model` is kept beyond this call, so only a model is copied.
        Ok(self.string(v, || Cow::Owned(v.to_owned())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kind, A::Error> {
        let walk = self.walk;
        match self.ctx {
            Ctx::Messages => {
                let mut i = 0;
                while seq
                    .next_element_seed(Node {
                        ctx: Ctx::Message(i),
                        walk: &mut *walk,
                    })?
                    .is_some()
                {
                    i += 1;
                }
            }
            Ctx::Text => {
                while seq
                    .next_element_seed(Node {
                        ctx: Ctx::Text,
                        walk: &mut *walk,
                    })?
                    .is_some()
                {}
            }
            Ctx::Message(i) => {
                walk.note_bad_message(i, BadMessage::NotObject);
                while seq.next_element::<IgnoredAny>()?.is_some() {}
            }
            Ctx::Top | Ctx::Model | Ctx::Role => {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
            }
        }
        Ok(Kind::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
        let walk = self.walk;
        match self.ctx {
            Ctx::Top => {
                while let Some(key) = map.next_key_seed(KeySeed)? {
                    let ctx = match key {
                        Key::Model => Ctx::Model,
                        Key::Messages => Ctx::Messages,
                        Key::Input | Key::Prompt | Key::OtherText => Ctx::Text,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    let kind = map.next_value_seed(Node {
                        ctx,
                        walk: &mut *walk,
                    })?;
                    // With duplicate keys the last one wins, as in upstream parsers; the text
                    // of every occurrence has been scanned anyway.
                    match key {
                        Key::Model => walk.shape.model = kind,
                        Key::Messages => walk.shape.messages = kind,
                        Key::Input => walk.shape.input = kind,
                        Key::Prompt => walk.shape.prompt = kind,
                        _ => {}
                    }
                }
            }
            Ctx::Message(i) => {
                let (mut role, mut content) = (Kind::Missing, false);
                while let Some(key) = map.next_key_seed(KeySeed)? {
                    match key {
                        Key::Role => {
                            role = map.next_value_seed(Node {
                                ctx: Ctx::Role,
                                walk: &mut *walk,
                            })?;
                        }
                        Key::Content => {
                            content = true;
                            map.next_value_seed(Node {
                                ctx: Ctx::Text,
                                walk: &mut *walk,
                            })?;
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                if role != Kind::String(true) {
                    walk.note_bad_message(i, BadMessage::Role);
                } else if !content {
                    walk.note_bad_message(i, BadMessage::Content);
                }
            }
            Ctx::Text => {
                while let Some(key) = map.next_key_seed(KeySeed)? {
                    if matches!(key, Key::Content | Key::InnerText) {
                        map.next_value_seed(Node {
                            ctx: Ctx::Text,
                            walk: &mut *walk,
                        })?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ctx::Messages | Ctx::Model | Ctx::Role => {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            }
        }
        Ok(Kind::Object)
    }
}

impl<S> Walk<'_, S> {
    fn note_bad_message(&mut self, i: usize, why: BadMessage) {
        if self.shape.bad_message.is_none() {
            self.shape.bad_message = Some((i, why));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect<'de> {
        texts: Vec<String>,
        numbers: usize,
        models: Vec<Cow<'de, str>>,
    }

    impl<'de> Sink<'de> for Collect<'de> {
        fn text(&mut self, s: &str) {
            self.texts.push(s.to_string());
        }
        fn number(&mut self) {
            self.numbers += 1;
        }
        fn model(&mut self, model: Cow<'de, str>) {
            self.models.push(model);
        }
    }

    fn run(body: &str) -> (Collect<'_>, Shape) {
        let mut c = Collect::default();
        let shape = walk(body.as_bytes(), &mut c).expect("valid json");
        (c, shape)
    }

    #[test]
    fn chat_text_fields_only() {
        let (c, shape) = run(r#"{"model":"gpt-4o","temperature":0.2,"messages":[
                {"role":"system","content":"be nice"},
                {"role":"user","content":[{"type":"text","text":"hello \"you\""},
                    {"type":"image_url","image_url":{"url":"data:image/png;base64,QUJD"}}]},
                {"role":"assistant","content":null,"tool_calls":[{"function":{"arguments":"{\"x\":1}"}}]}
            ],"tools":[{"type":"function","function":{"description":"secret tool"}}],"user":"u-1"}"#);
        assert_eq!(c.texts, vec!["be nice", "hello \"you\""]);
        assert_eq!(c.models, vec![Cow::Borrowed("gpt-4o")]);
        assert!(
            matches!(c.models[0], Cow::Borrowed(_)),
            "no copy of the model"
        );
        assert_eq!(c.numbers, 0);
        assert!(shape.is_object);
        assert_eq!(shape.model, Kind::String(true));
        assert_eq!(shape.messages, Kind::Array);
        assert_eq!(shape.bad_message, None);
    }

    #[test]
    fn responses_and_embeddings_shapes() {
        let (c, shape) = run(r#"{"model":"m","instructions":"sys","input":[
                {"role":"user","content":[{"type":"input_text","text":"a"},{"type":"input_image","image_url":"data:x"}]},
                {"type":"function_call","name":"f","arguments":"{}"},
                {"type":"function_call_output","call_id":"c","output":"b"}]}"#);
        assert_eq!(c.texts, vec!["sys", "a", "b"]);
        assert_eq!(shape.input, Kind::Array);
        let (c, shape) = run(r#"{"model":"e","input":[[1,2,3],[4]]}"#);
        assert_eq!(c.numbers, 4);
        assert!(c.texts.is_empty());
        assert_eq!(shape.input, Kind::Array);
    }

    #[test]
    fn escaped_keys_and_duplicates_are_seen() {
        let (c, shape) = run(r#"{"mod\u0065l":"a","model":"b\u0063","prompt":"x","prompt":["y"]}"#);
        assert_eq!(c.models, vec![Cow::Borrowed("a"), Cow::Borrowed("bc")]);
        assert_eq!(c.texts, vec!["x", "y"]);
        assert_eq!(
            shape.prompt,
            Kind::Array,
            "last duplicate wins for the shape"
        );
    }

    #[test]
    fn bad_messages_are_reported_once() {
        let (_, shape) =
            run(r#"{"messages":[{"role":"user","content":"x"},{"role":" ","content":"y"},3]}"#);
        assert_eq!(shape.bad_message, Some((1, BadMessage::Role)));
        let (_, shape) = run(r#"{"messages":[{"role":"user"}]}"#);
        assert_eq!(shape.bad_message, Some((0, BadMessage::Content)));
        let (_, shape) = run(r#"{"messages":[[1]]}"#);
        assert_eq!(shape.bad_message, Some((0, BadMessage::NotObject)));
        for scalar in ["\"hi\"", "1", "true", "null"] {
            let body = format!("{{\"messages\":[{scalar}]}}");
            let (_, shape) = run(&body);
            assert_eq!(
                shape.bad_message,
                Some((0, BadMessage::NotObject)),
                "{body}"
            );
        }
        let (_, shape) = run(r#"[1,2]"#);
        assert!(!shape.is_object);
    }

    #[test]
    fn invalid_or_too_deep_json_is_an_error() {
        let mut c = Collect::default();
        assert!(walk(b"{\"a\":", &mut c).is_err());
        assert!(walk(b"{} x", &mut c).is_err());
        assert!(walk(b"", &mut c).is_err());
        let deep = format!(
            "{{\"input\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(
            walk(deep.as_bytes(), &mut c).is_err(),
            "recursion limit, no stack overflow"
        );
        assert!(
            walk(b"{\"input\":\"\\ud800\"}", &mut c).is_err(),
            "lone surrogate"
        );
    }
}
