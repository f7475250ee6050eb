//! One Falco alert, parsed from the JSON body of an `http_output` or webhook POST.

use super::fields::{exact_value, value_text};
use crate::crd::Priority;
use indexmap::IndexMap;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

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
    let text = String::from_utf8_lossy(body);
    let top: IndexMap<String, Box<RawValue>> = match serde_json::from_str(&text) {
        Ok(top) => top,
        Err(e) if e.is_data() => return Err(ParseError::NotAnObject),
        Err(e) => return Err(ParseError::NotJson(e)),
    };

    let mut missing = Vec::new();
    let rule = string_field(&top, "rule")?;
    if rule.is_none() {
        missing.push("rule");
    }
    let priority = priority_field(&top)?;
    if priority.is_none() {
        missing.push("priority");
    }
    let output_fields = output_fields(&top)?;
    if output_fields.is_none() {
        missing.push("output_fields");
    }
    let (Some(rule), Some(priority), Some(output_fields)) = (rule, priority, output_fields) else {
        return Err(ParseError::Missing(missing.join(", ")));
    };

    let time = string_field(&top, "time")?;
    let timestamp = time.as_deref().and_then(|t| t.trim().parse().ok());
    Ok(Alert {
        timestamp,
        time,
        rule,
        priority,
        source: string_field(&top, "source")?.unwrap_or_else(|| "syscall".to_string()),
        hostname: string_field(&top, "hostname")?,
        output: string_field(&top, "output")?.unwrap_or_default(),
        output_fields,
        tags: tags(&top)?,
        uuid: string_field(&top, "uuid")?,
    })
}

/// True when objects and lists (outside strings) nest deeper than `max`. One
/// pass, no allocation: JSON that is invalid in other ways is left to the parser.
fn depth_exceeds(body: &[u8], max: usize) -> bool {
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

fn value_of(top: &IndexMap<String, Box<RawValue>>, key: &str) -> Option<Value> {
    top.get(key)
        .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
}

/// A top-level string; `null`, `""` and `"<NA>"` are absent. Numbers are taken as text.
fn string_field(
    top: &IndexMap<String, Box<RawValue>>,
    key: &'static str,
) -> Result<Option<String>, ParseError> {
    match value_of(top, key) {
        None => Ok(None),
        Some(v @ (Value::String(_) | Value::Null | Value::Number(_))) => Ok(value_text(&v)),
        Some(_) => Err(ParseError::WrongType {
            field: key,
            expected: "a string",
        }),
    }
}

fn priority_field(top: &IndexMap<String, Box<RawValue>>) -> Result<Option<Priority>, ParseError> {
    match value_of(top, "priority") {
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

fn output_fields(
    top: &IndexMap<String, Box<RawValue>>,
) -> Result<Option<Map<String, Value>>, ParseError> {
    let Some(raw) = top.get("output_fields") else {
        return Ok(None);
    };
    if raw.get().trim() == "null" {
        return Ok(None);
    }
    let fields: IndexMap<String, Box<RawValue>> =
        serde_json::from_str(raw.get()).map_err(|_| ParseError::WrongType {
            field: "output_fields",
            expected: "an object",
        })?;
    Ok(Some(
        fields
            .into_iter()
            .map(|(k, v)| (k, exact_value(&v)))
            .collect(),
    ))
}

fn tags(top: &IndexMap<String, Box<RawValue>>) -> Result<Vec<String>, ParseError> {
    match value_of(top, "tags") {
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

    #[test]
    fn brackets_inside_strings_do_not_count() {
        let body = nested(
            1,
            &format!("\"{}\\\"{}\"", "[".repeat(500), "{".repeat(500)),
        );
        assert!(parse(body.as_bytes()).is_ok(), "{body}");
    }
}
