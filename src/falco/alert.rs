//! One Falco alert, parsed from the JSON body of an `http_output` or webhook POST.

use super::fields::{exact_value, value_text};
use crate::crd::Priority;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::fmt;

/// A Falco alert, with every field Falco may omit made optional.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    /// The `time` string as sent.
    pub time: Option<String>,
    /// `time` parsed; `None` when absent or unreadable.
    pub timestamp: Option<jiff::Timestamp>,
    pub rule: String,
    pub priority: Priority,
    /// `syscall` when Falco did not say (old payloads have no `source`).
    pub source: String,
    pub hostname: Option<String>,
    pub output: String,
    /// Keys exactly as sent, in the order sent; values exact (see [`super::fields`]).
    pub output_fields: Map<String, Value>,
    pub tags: Vec<String>,
    /// Set by Falcosidekick only.
    pub uuid: Option<String>,
}

/// Why a request body is not a Falco alert. Messages go back to the sender.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error(
        "the request body is not valid JSON ({0}): send one alert per request with json_output: true in falco.yaml"
    )]
    NotJson(#[source] serde_json::Error),
    #[error(
        "the request body is JSON but not an object: send one Falco alert (a JSON object) per request"
    )]
    NotAnObject,
    #[error("not a Falco alert: missing {0}")]
    Missing(String),
    #[error("not a Falco alert: field {field} must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("not a Falco alert: {0}")]
    BadPriority(#[from] crate::crd::UnknownPriority),
    #[error(
        "the request body nests more than {MAX_DEPTH} levels of objects and lists: a Falco alert is an object of output fields, send one alert per request"
    )]
    TooDeep,
}

/// Deepest nesting of objects and lists accepted. A Falco alert nests three
/// levels (the alert, `output_fields`, a list value); anything far deeper is
/// refused before it is parsed.
pub const MAX_DEPTH: usize = 32;

impl ParseError {
    /// A short, bounded reason for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ParseError::NotJson(_) => "not_json",
            ParseError::NotAnObject => "not_an_object",
            ParseError::Missing(_) => "missing_field",
            ParseError::WrongType { .. } => "wrong_type",
            ParseError::BadPriority(_) => "bad_priority",
            ParseError::TooDeep => "too_deep",
        }
    }
}

/// Parses one alert. Invalid UTF-8 is replaced by U+FFFD, as recent Falco does itself.
pub fn parse(body: &[u8]) -> Result<Alert, ParseError> {
    if depth_exceeds(body, MAX_DEPTH) {
        return Err(ParseError::TooDeep);
    }
    // Valid UTF-8 (nearly every alert) is checked by the fast path and borrowed.
    let text = match std::str::from_utf8(body) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(body),
    };
    let top: Top<'_> = match serde_json::from_str(&text) {
        Ok(top) => top,
        Err(e) if e.is_data() => return Err(ParseError::NotAnObject),
        Err(e) => return Err(ParseError::NotJson(e)),
    };

    let mut missing = Vec::new();
    let rule = string_field(top.rule, "rule")?;
    if rule.is_none() {
        missing.push("rule");
    }
    let priority = priority_field(top.priority)?;
    if priority.is_none() {
        missing.push("priority");
    }
    let output_fields = output_fields(top.output_fields)?;
    if output_fields.is_none() {
        missing.push("output_fields");
    }
    let (Some(rule), Some(priority), Some(output_fields)) = (rule, priority, output_fields) else {
        return Err(ParseError::Missing(missing.join(", ")));
    };

    let time = string_field(top.time, "time")?;
    let timestamp = time.as_deref().and_then(|t| t.trim().parse().ok());
    Ok(Alert {
        timestamp,
        time,
        rule,
        priority,
        source: string_field(top.source, "source")?.unwrap_or_else(|| "syscall".to_string()),
        hostname: string_field(top.hostname, "hostname")?,
        output: string_field(top.output, "output")?.unwrap_or_default(),
        output_fields,
        tags: tags(top.tags)?,
        uuid: string_field(top.uuid, "uuid")?,
    })
}

/// The top-level keys an alert is read from, borrowed from the body in one
/// pass; any other key is skipped. A repeated key counts once, the last.
#[derive(Default)]
struct Top<'a> {
    rule: Option<&'a RawValue>,
    priority: Option<&'a RawValue>,
    output_fields: Option<&'a RawValue>,
    time: Option<&'a RawValue>,
    source: Option<&'a RawValue>,
    hostname: Option<&'a RawValue>,
    output: Option<&'a RawValue>,
    tags: Option<&'a RawValue>,
    uuid: Option<&'a RawValue>,
}

enum TopKey {
    Rule,
    Priority,
    OutputFields,
    Time,
    Source,
    Hostname,
    Output,
    Tags,
    Uuid,
    Other,
}

impl<'de> Deserialize<'de> for TopKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<TopKey, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = TopKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<TopKey, E> {
                Ok(match key {
                    "rule" => TopKey::Rule,
                    "priority" => TopKey::Priority,
                    "output_fields" => TopKey::OutputFields,
                    "time" => TopKey::Time,
                    "source" => TopKey::Source,
                    "hostname" => TopKey::Hostname,
                    "output" => TopKey::Output,
                    "tags" => TopKey::Tags,
                    "uuid" => TopKey::Uuid,
                    _ => TopKey::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Top<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Top<'de>, D::Error> {
        struct TopVisitor;
        impl<'de> Visitor<'de> for TopVisitor {
            type Value = Top<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a Falco alert (a JSON object)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
                let mut top = Top::default();
                while let Some(key) = map.next_key::<TopKey>()? {
                    let slot = match key {
                        TopKey::Rule => &mut top.rule,
                        TopKey::Priority => &mut top.priority,
                        TopKey::OutputFields => &mut top.output_fields,
                        TopKey::Time => &mut top.time,
                        TopKey::Source => &mut top.source,
                        TopKey::Hostname => &mut top.hostname,
                        TopKey::Output => &mut top.output,
                        TopKey::Tags => &mut top.tags,
                        TopKey::Uuid => &mut top.uuid,
                        TopKey::Other => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(map.next_value()?);
                }
                Ok(top)
            }
        }
        deserializer.deserialize_map(TopVisitor)
    }
}

/// `output_fields`, each value read exactly (see [`exact_value`]), in the
/// order sent; a repeated key keeps its first place and its last value.
struct ExactFields(Map<String, Value>);

impl<'de> Deserialize<'de> for ExactFields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ExactFields, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = ExactFields;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ExactFields, A::Error> {
                let mut fields = Map::new();
                while let Some((key, raw)) = map.next_entry::<String, &'de RawValue>()? {
                    fields.insert(key, exact_value(raw));
                }
                Ok(ExactFields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// True when objects and lists (outside strings) nest deeper than `max`. One
/// pass, no allocation: JSON that is invalid in other ways is left to the parser.
fn depth_exceeds(body: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'"' => {
                // Skip the string: to its closing quote, past escaped characters.
                i += 1;
                loop {
                    let rest = body.get(i..).unwrap_or_default();
                    let Some(at) = memchr::memchr2(b'"', b'\\', rest) else {
                        // Unterminated: the parser says what is wrong.
                        return false;
                    };
                    i += at;
                    if body[i] == b'"' {
                        break;
                    }
                    i += 2;
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}

fn value_of(raw: Option<&RawValue>) -> Option<Value> {
    raw.map(exact_value)
}

/// A top-level string; `null`, `""` and `"<NA>"` are absent. Numbers are taken as text.
fn string_field(raw: Option<&RawValue>, key: &'static str) -> Result<Option<String>, ParseError> {
    match value_of(raw) {
        None => Ok(None),
        Some(v @ (Value::String(_) | Value::Null | Value::Number(_))) => Ok(value_text(&v)),
        Some(_) => Err(ParseError::WrongType {
            field: key,
            expected: "a string",
        }),
    }
}

fn priority_field(raw: Option<&RawValue>) -> Result<Option<Priority>, ParseError> {
    match value_of(raw) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.parse()?)),
        Some(Value::Number(n)) => {
            n.as_i64()
                .and_then(Priority::from_level)
                .map(Some)
                .ok_or(ParseError::WrongType {
                    field: "priority",
                    expected: "a priority name or a number from 0 (Emergency) to 7 (Debug)",
                })
        }
        Some(_) => Err(ParseError::WrongType {
            field: "priority",
            expected: "a priority name such as Warning",
        }),
    }
}

fn output_fields(raw: Option<&RawValue>) -> Result<Option<Map<String, Value>>, ParseError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    if raw.get().trim() == "null" {
        return Ok(None);
    }
    let ExactFields(fields) =
        serde_json::from_str(raw.get()).map_err(|_| ParseError::WrongType {
            field: "output_fields",
            expected: "an object",
        })?;
    Ok(Some(fields))
}

fn tags(raw: Option<&RawValue>) -> Result<Vec<String>, ParseError> {
    match value_of(raw) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(items.iter().filter_map(value_text).collect()),
        Some(_) => Err(ParseError::WrongType {
            field: "tags",
            expected: "a list of strings",
        }),
    }
}

impl Alert {
    /// The text of an output field, or `None` when it is absent or written as missing.
    pub fn field(&self, key: &str) -> Option<String> {
        self.output_fields.get(key).and_then(value_text)
    }

    /// The first of `keys` that has a value.
    pub fn first_field(&self, keys: &[&str]) -> Option<String> {
        keys.iter().find_map(|k| self.field(k))
    }

    /// True for Falco's own events (`Falco internal: ...`), which follow no rule file.
    pub fn is_internal(&self) -> bool {
        self.source == "internal" || self.rule.starts_with("Falco internal")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize, inner: &str) -> String {
        format!(
            r#"{{"rule":"r","priority":"Notice","output_fields":{{"a":{}{inner}{}}}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        )
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        // The alert and output_fields are two levels already.
        assert!(parse(nested(MAX_DEPTH - 2, "1").as_bytes()).is_ok());
        let err = parse(nested(MAX_DEPTH - 1, "1").as_bytes()).unwrap_err();
        assert_eq!(err.reason(), "too_deep");
        assert!(err.to_string().contains("one alert per request"), "{err}");
        assert!(matches!(
            parse(nested(100_000, "").as_bytes()),
            Err(ParseError::TooDeep)
        ));
    }

    /// The byte-by-byte definition the fast scan must agree with.
    fn depth_reference(body: &[u8], max: usize) -> bool {
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        for &b in body {
            if in_string {
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => {
                    depth += 1;
                    if depth > max {
                        return true;
                    }
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        false
    }

    proptest::proptest! {
        #[test]
        fn the_depth_scan_agrees_with_its_definition(
            body in proptest::collection::vec(
                proptest::sample::select(b"{}[]\"\\a:,".to_vec()),
                0..200,
            ),
            max in 0usize..6,
        ) {
            proptest::prop_assert_eq!(depth_exceeds(&body, max), depth_reference(&body, max));
        }
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        let body = nested(
            1,
            &format!("\"{}\\\"{}\"", "[".repeat(500), "{".repeat(500)),
        );
        assert!(parse(body.as_bytes()).is_ok(), "{body}");
    }
}
