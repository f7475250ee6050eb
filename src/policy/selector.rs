//! Standard Kubernetes label selectors, evaluated without the API server.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::BTreeMap;

/// Why a selector cannot be evaluated; `field` is relative to the selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SelectorError {
    pub field: String,
    pub message: String,
}

/// Checks that every expression has a known operator and the values it needs.
pub fn validate(selector: &LabelSelector) -> Result<(), SelectorError> {
    for (i, e) in selector.match_expressions.iter().flatten().enumerate() {
        let field = format!("matchExpressions[{i}]");
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(SelectorError {
                    field: format!("{field}.values"),
                    message: format!("operator {} needs at least one value", e.operator),
                });
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(SelectorError {
                    field: format!("{field}.values"),
                    message: format!("operator {} takes no values", e.operator),
                });
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Err(SelectorError {
                    field: format!("{field}.operator"),
                    message: format!(
                        "unknown operator {other:?}: use In, NotIn, Exists or DoesNotExist"
                    ),
                });
            }
        }
        if e.key.is_empty() {
            return Err(SelectorError {
                field: format!("{field}.key"),
                message: "must not be empty".into(),
            });
        }
    }
    Ok(())
}

/// True when `labels` satisfy `selector` (an empty selector matches everything).
/// An expression with an unknown operator matches nothing.
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    labels_match
        && selector.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn match_labels_and_expressions_must_all_hold() {
        let selector = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![
                expr("tier", "In", &["front", "edge"]),
                expr("debug", "DoesNotExist", &[]),
            ]),
        };
        assert!(matches(
            &selector,
            &labels(&[("app", "web"), ("tier", "edge")])
        ));
        assert!(!matches(
            &selector,
            &labels(&[("app", "web"), ("tier", "back")])
        ));
        assert!(!matches(
            &selector,
            &labels(&[("app", "web"), ("tier", "edge"), ("debug", "1")])
        ));
        assert!(matches(&LabelSelector::default(), &labels(&[])));
    }

    #[test]
    fn bad_expressions_name_the_field_at_fault() {
        let selector = LabelSelector {
            match_expressions: Some(vec![expr("a", "Exists", &[]), expr("b", "Equals", &["x"])]),
            ..Default::default()
        };
        let err = validate(&selector).unwrap_err();
        assert_eq!(err.field, "matchExpressions[1].operator");
        let selector = LabelSelector {
            match_expressions: Some(vec![expr("a", "In", &[])]),
            ..Default::default()
        };
        assert_eq!(
            validate(&selector).unwrap_err().field,
            "matchExpressions[0].values"
        );
    }
}
