//! Reading `output_fields` values, which Falco writes "missing" in three ways.

use serde_json::Value;

/// True for the three ways Falco writes a missing value: `null`, `"<NA>"` and `""`.
pub fn is_missing(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => {
            let s = s.trim();
            s.is_empty() || s == "<NA>" || s == "N/A"
        }
        _ => false,
    }
}

/// The value as text, or `None` when it is missing. Numbers keep their exact digits.
pub fn value_text(value: &Value) -> Option<String> {
    if is_missing(value) {
        return None;
    }
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        other => Some(other.to_string()),
    }
}

/// Turns one raw JSON value of `output_fields` into a `Value` without losing digits:
/// integers outside the signed 64-bit range become their exact decimal string,
/// because neither `f64` nor the Kubernetes API server would keep them.
pub(crate) fn exact_value(raw: &serde_json::value::RawValue) -> Value {
    let text = raw.get().trim();
    // Most values are plain strings: their text needs no parsing. The body
    // was validated as JSON, so a quoted text without escapes is the string.
    if let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"'))
        && !inner.contains('\\')
    {
        return Value::String(inner.to_string());
    }
    if is_integer_literal(text) {
        return match text.parse::<i64>() {
            Ok(i) => Value::from(i),
            Err(_) => Value::String(text.to_string()),
        };
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

fn is_integer_literal(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use serde_json::value::RawValue;

    fn exact(text: &str) -> Value {
        let raw: Box<RawValue> = serde_json::from_str(text).unwrap();
        exact_value(&raw)
    }

    #[test]
    fn the_three_missing_spellings_are_missing() {
        for v in [json!(null), json!("<NA>"), json!(""), json!("  ")] {
            assert!(is_missing(&v), "{v}");
            assert_eq!(value_text(&v), None);
        }
        assert!(!is_missing(&json!(0)));
        assert!(!is_missing(&json!("bash")));
    }

    #[test]
    fn integers_beyond_i64_keep_every_digit() {
        assert_eq!(exact("18446744073697073282"), json!("18446744073697073282"));
        assert_eq!(exact("1730000000123456789"), json!(1730000000123456789_i64));
        assert_eq!(exact("-42"), json!(-42));
        assert_eq!(
            exact("123456789012345678901234567890"),
            json!("123456789012345678901234567890")
        );
    }

    #[test]
    fn numbers_read_as_their_exact_text() {
        assert_eq!(
            value_text(&exact("18446744073697073282")).as_deref(),
            Some("18446744073697073282")
        );
        assert_eq!(value_text(&json!(403)).as_deref(), Some("403"));
        assert_eq!(value_text(&json!("403")).as_deref(), Some("403"));
    }
}
