//! The AlertReport object created for a new incident. Pure.

use super::aggregate::truncate;
use super::fingerprint::{self, label_value};
use super::{FirstAlert, ReportKey};
use crate::crd::{AlertReport, AlertReportSpec, FirstEvent, Severity};
use kube::api::ObjectMeta;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Limits on the first event kept in `spec.event`, so a report stays a few KiB.
#[derive(Clone, Copy, Debug)]
pub struct EventBounds {
    pub output: usize,
    pub fields: usize,
    pub field_value: usize,
    /// Bytes of all output fields together; fields past it are left out.
    pub fields_total: usize,
}

impl Default for EventBounds {
    fn default() -> Self {
        EventBounds {
            output: 2048,
            fields: 64,
            field_value: 512,
            fields_total: 8 * 1024,
        }
    }
}

/// The report for an incident, as created by server-side apply.
pub fn report(
    key: &ReportKey,
    fingerprint: &str,
    first: &FirstAlert,
    severity: Severity,
    bounds: &EventBounds,
) -> AlertReport {
    let alert = &first.alert;
    let mut report = AlertReport::new(
        &key.name,
        AlertReportSpec {
            rule: alert.rule.clone(),
            priority: alert.priority,
            source: alert.source.clone(),
            tags: alert
                .tags
                .iter()
                .take(32)
                .map(|t| truncate(t, 128))
                .collect(),
            fingerprint: fingerprint.to_string(),
            subject: first.subject.clone(),
            event: FirstEvent {
                time: alert.time.as_deref().map(|t| truncate(t, 64)),
                output: truncate(&alert.output, bounds.output),
                output_fields: bounded_fields(&alert.output_fields, bounds),
                hostname: alert.hostname.as_deref().map(|h| truncate(h, 253)),
                uuid: alert.uuid.as_deref().map(|u| truncate(u, 64)),
            },
        },
    );
    report.metadata = ObjectMeta {
        name: Some(key.name.clone()),
        namespace: Some(key.namespace.clone()),
        labels: Some(labels(first, severity)),
        ..ObjectMeta::default()
    };
    report
}

/// Labels for selection: rule, severity, priority, source, workload and node.
pub fn labels(first: &FirstAlert, severity: Severity) -> BTreeMap<String, String> {
    let alert = &first.alert;
    let mut labels = BTreeMap::from([
        (
            fingerprint::LABEL_RULE.to_string(),
            fingerprint::slug(&alert.rule, 63),
        ),
        (
            fingerprint::LABEL_SEVERITY.to_string(),
            fingerprint::severity_label(severity).to_string(),
        ),
        (
            fingerprint::LABEL_PRIORITY.to_string(),
            alert.priority.as_str().to_string(),
        ),
        (
            fingerprint::LABEL_SOURCE.to_string(),
            label_value(&alert.source),
        ),
    ]);
    if let Some(w) = &first.subject.workload {
        labels.insert(
            fingerprint::LABEL_WORKLOAD_KIND.to_string(),
            label_value(&w.kind),
        );
        labels.insert(
            fingerprint::LABEL_WORKLOAD_NAME.to_string(),
            label_value(&w.name),
        );
    }
    if first.subject.namespace.is_none()
        && let Some(node) = &first.subject.node
    {
        labels.insert(fingerprint::LABEL_NODE.to_string(), label_value(node));
    }
    labels.retain(|_, v| !v.is_empty());
    labels
}

/// The output fields, keys exactly as sent, long values cut, within the
/// bounds on their number and total size.
pub(crate) fn bounded_fields(
    fields: &Map<String, Value>,
    bounds: &EventBounds,
) -> Map<String, Value> {
    let mut out = Map::new();
    let mut used = 0;
    for (k, v) in fields.iter().take(bounds.fields) {
        let v = match v {
            Value::String(s) => Value::String(truncate(s, bounds.field_value)),
            Value::Array(_) | Value::Object(_) => {
                Value::String(truncate(&v.to_string(), bounds.field_value))
            }
            other => other.clone(),
        };
        let k = truncate(k, 256);
        used += k.len() + json_len(&v);
        if used > bounds.fields_total {
            break;
        }
        out.insert(k, v);
    }
    out
}

/// About the length of `v` as JSON, without writing it: strings count
/// their text (already bounded above), other values their JSON.
fn json_len(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len() + 2,
        Value::Null => 4,
        Value::Bool(_) => 5,
        other => other.to_string().len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::WorkloadRef;

    #[test]
    fn the_first_event_stays_small_whatever_the_alert_carries() {
        let mut fields = serde_json::Map::new();
        for i in 0..500 {
            fields.insert(format!("f{i}"), Value::String("x".repeat(10_000)));
        }
        let body = serde_json::json!({
            "rule": "R", "priority": "Warning", "output": "o".repeat(100_000),
            "output_fields": fields,
        });
        let alert = crate::falco::parse(body.to_string().as_bytes()).unwrap();
        let first = FirstAlert {
            subject: crate::falco::subject_of(&alert),
            alert,
            pod: None,
        };
        let key = ReportKey {
            namespace: "ns".into(),
            name: "r-0123456789".into(),
        };
        let r = report(
            &key,
            "ab",
            &first,
            Severity::Medium,
            &EventBounds::default(),
        );
        let size = serde_json::to_vec(&r).unwrap().len();
        assert!(size < 12 * 1024, "{size} bytes");
    }

    #[test]
    fn labels_select_rule_severity_and_workload() {
        let alert = crate::falco::parse(
            br#"{"rule":"Terminal shell in container","priority":"Notice","output_fields":{}}"#,
        )
        .unwrap();
        let mut subject = crate::falco::subject_of(&alert);
        subject.namespace = Some("shop".into());
        subject.workload = Some(WorkloadRef {
            kind: "Deployment".into(),
            name: "web".into(),
        });
        let first = FirstAlert {
            alert,
            subject,
            pod: None,
        };
        let l = labels(&first, Severity::Low);
        assert_eq!(l["peregrine.dev/rule"], "terminal-shell-in-container");
        assert_eq!(l["peregrine.dev/severity"], "Low");
        assert_eq!(l["peregrine.dev/workload-kind"], "Deployment");
        assert_eq!(l["peregrine.dev/workload-name"], "web");
    }
}
