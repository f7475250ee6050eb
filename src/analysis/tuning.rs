//! The Falco exception that silences exactly this incident's benign case.

use crate::falco::value_text;
use serde::Serialize;
use serde_json::{Map, Value};

/// Comparisons whose value is a list in Falco's exception syntax.
const LIST_COMPS: &[&str] = &["in", "intersects", "pmatch"];

/// A rules-file snippet appending one exception to `rule`.
#[derive(Debug, Serialize)]
struct RuleOverride<'a> {
    rule: &'a str,
    exceptions: Vec<Exception<'a>>,
    #[serde(rename = "override")]
    override_: Override,
}

#[derive(Debug, Serialize)]
struct Exception<'a> {
    name: &'a str,
    fields: Vec<&'a str>,
    comps: Vec<&'a str>,
    values: Vec<Vec<Value>>,
}

#[derive(Debug, Serialize)]
struct Override {
    exceptions: &'static str,
}

/// The exception, and the fields left out because this alert had no value for them.
pub struct Tuning {
    pub yaml: String,
    pub left_out: Vec<String>,
}

/// Builds the snippet from the fields and comparisons the knowledge chose,
/// with this alert's values. Fields with no value in the alert are left out,
/// so `fields`, `comps` and each row of `values` always have the same length.
pub fn exception(
    rule: &str,
    name: &str,
    fields_and_comps: &[(&str, &str)],
    output_fields: &Map<String, Value>,
) -> Option<Tuning> {
    let mut fields = Vec::new();
    let mut comps = Vec::new();
    let mut row = Vec::new();
    let mut left_out = Vec::new();
    for (field, comp) in fields_and_comps {
        match output_fields.get(*field).and_then(value_text) {
            Some(value) => {
                fields.push(*field);
                comps.push(*comp);
                row.push(if LIST_COMPS.contains(comp) {
                    Value::Array(vec![Value::String(value)])
                } else {
                    Value::String(value)
                });
            }
            None => left_out.push((*field).to_string()),
        }
    }
    if fields.is_empty() {
        return None;
    }
    let snippet = [RuleOverride {
        rule,
        exceptions: vec![Exception {
            name,
            fields,
            comps,
            values: vec![row],
        }],
        override_: Override {
            exceptions: "append",
        },
    }];
    let yaml = serde_saphyr::to_string(&snippet).ok()?;
    Some(Tuning { yaml, left_out })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields() -> Map<String, Value> {
        [
            ("proc.name", json!("gdb")),
            ("k8s.ns.name", json!(null)),
            ("container.image.repository", json!("ghcr.io/acme/api")),
            ("proc.cmdline", json!("sh -c \"x: y\" # 'z'\n- evil")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    #[test]
    fn the_snippet_is_valid_falco_yaml_with_matching_arity() {
        let t = exception(
            "PTRACE attached to process",
            "known_debuggers",
            &[
                ("container.image.repository", "="),
                ("proc.name", "in"),
                ("k8s.ns.name", "="),
            ],
            &fields(),
        )
        .unwrap();
        assert_eq!(t.left_out, ["k8s.ns.name"]);
        let doc: serde_json::Value = serde_saphyr::from_str(&t.yaml).unwrap();
        let item = &doc[0];
        assert_eq!(item["rule"], "PTRACE attached to process");
        assert_eq!(item["override"]["exceptions"], "append");
        let exc = &item["exceptions"][0];
        assert_eq!(
            exc["fields"],
            json!(["container.image.repository", "proc.name"])
        );
        assert_eq!(exc["comps"], json!(["=", "in"]));
        assert_eq!(exc["values"], json!([["ghcr.io/acme/api", ["gdb"]]]));
    }

    #[test]
    fn hostile_values_stay_strings() {
        let t = exception("R", "n", &[("proc.cmdline", "=")], &fields()).unwrap();
        let doc: serde_json::Value = serde_saphyr::from_str(&t.yaml).unwrap();
        assert_eq!(
            doc[0]["exceptions"][0]["values"][0][0],
            json!("sh -c \"x: y\" # 'z'\n- evil")
        );
        assert_eq!(doc.as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn no_values_no_snippet() {
        assert!(exception("R", "n", &[("k8s.ns.name", "=")], &fields()).is_none());
    }
}
