//! Does a policy answer an incident?

use super::{glob, selector};
use crate::crd::{AlertReport, FieldOperator, PolicyMatch, Priority};
use crate::falco::{Alert, value_text};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// What matching looks at in an incident.
#[derive(Clone, Copy, Debug)]
pub struct Incident<'a> {
    pub rule: &'a str,
    pub priority: Priority,
    pub source: &'a str,
    pub tags: &'a [String],
    /// The first alert's output fields.
    pub fields: &'a Map<String, Value>,
    /// Alerts counted so far.
    pub count: u64,
    /// Labels of the affected pod, when it exists.
    pub pod_labels: Option<&'a BTreeMap<String, String>>,
}

impl<'a> Incident<'a> {
    pub fn of_report(
        report: &'a AlertReport,
        pod_labels: Option<&'a BTreeMap<String, String>>,
    ) -> Incident<'a> {
        Incident {
            rule: &report.spec.rule,
            priority: report.spec.priority,
            source: &report.spec.source,
            tags: &report.spec.tags,
            fields: &report.spec.event.output_fields,
            count: report
                .status
                .as_ref()
                .and_then(|s| s.occurrences.as_ref())
                .map_or(1, |o| o.count),
            pod_labels,
        }
    }
}

/// Which condition of `spec.match` did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoMatch {
    Rule,
    Priority,
    Source,
    Tags,
    /// The pod's labels are not known (no pod), so `podSelector` cannot hold.
    PodUnknown,
    PodSelector,
    OutputField(String),
    /// Not yet: the incident has fewer alerts than `minCount`.
    Count {
        have: u64,
        need: u64,
    },
}

/// Checks every condition of `m` against the incident.
pub fn match_incident(m: &PolicyMatch, i: &Incident<'_>) -> Result<(), NoMatch> {
    match_alert_facts(m, i.rule, i.priority, i.source, i.tags, i.fields)?;
    if let Some(sel) = &m.pod_selector {
        let labels = i.pod_labels.ok_or(NoMatch::PodUnknown)?;
        if !selector::matches(sel, labels) {
            return Err(NoMatch::PodSelector);
        }
    }
    if let Some(need) = m.min_count
        && i.count < need
    {
        return Err(NoMatch::Count {
            have: i.count,
            need,
        });
    }
    Ok(())
}

/// True when a policy with `m` may act on the incident this alert belongs to:
/// everything but `podSelector` and `minCount` (which need the cluster and the
/// count) holds. Used to keep such alerts from being shed.
pub fn may_match_alert(m: &PolicyMatch, alert: &Alert) -> bool {
    match_alert_facts(
        m,
        &alert.rule,
        alert.priority,
        &alert.source,
        &alert.tags,
        &alert.output_fields,
    )
    .is_ok()
}

fn match_alert_facts(
    m: &PolicyMatch,
    rule: &str,
    priority: Priority,
    source: &str,
    tags: &[String],
    fields: &Map<String, Value>,
) -> Result<(), NoMatch> {
    if !m.rules.is_empty() && !m.rules.iter().any(|p| glob::glob_match(p, rule)) {
        return Err(NoMatch::Rule);
    }
    if let Some(min) = m.min_priority
        && !priority.at_least(min)
    {
        return Err(NoMatch::Priority);
    }
    if !m.sources.is_empty() && !m.sources.iter().any(|s| s == source) {
        return Err(NoMatch::Source);
    }
    if !m.tags.iter().all(|t| tags.contains(t)) {
        return Err(NoMatch::Tags);
    }
    for req in &m.output_fields {
        let value = fields.get(&req.field).and_then(value_text);
        let holds = match req.operator {
            FieldOperator::In => value.is_some_and(|v| req.values.contains(&v)),
            FieldOperator::NotIn => value.is_none_or(|v| !req.values.contains(&v)),
            FieldOperator::Exists => value.is_some(),
            FieldOperator::DoesNotExist => value.is_none(),
        };
        if !holds {
            return Err(NoMatch::OutputField(req.field.clone()));
        }
    }
    Ok(())
}

/// Which namespaces a policy answers.
#[derive(Clone, Debug, PartialEq)]
pub enum Scope {
    /// A RemediationPolicy: its own namespace only.
    Namespace(String),
    /// A ClusterRemediationPolicy: `namespaces` (all when empty) AND `selector`.
    Cluster {
        namespaces: Vec<String>,
        selector: Option<LabelSelector>,
    },
}

impl Scope {
    /// True when reports in `namespace` (labelled `labels`, when known) are in scope.
    pub fn contains(&self, namespace: &str, labels: Option<&BTreeMap<String, String>>) -> bool {
        match self {
            Scope::Namespace(ns) => ns == namespace,
            Scope::Cluster {
                namespaces,
                selector,
            } => {
                (namespaces.is_empty() || namespaces.iter().any(|n| n == namespace))
                    && selector
                        .as_ref()
                        .is_none_or(|s| labels.is_some_and(|l| selector::matches(s, l)))
            }
        }
    }

    /// True when deciding needs the namespace's labels.
    pub fn needs_namespace_labels(&self) -> bool {
        matches!(
            self,
            Scope::Cluster {
                selector: Some(_),
                ..
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::FieldRequirement;
    use serde_json::json;

    fn fields() -> Map<String, Value> {
        json!({"proc.name": "bash", "container.id": "3f2a9c1b7d4e", "proc.tty": 0, "fd.name": "<NA>"})
            .as_object()
            .cloned()
            .unwrap()
    }

    fn incident<'a>(
        fields: &'a Map<String, Value>,
        tags: &'a [String],
        labels: Option<&'a BTreeMap<String, String>>,
    ) -> Incident<'a> {
        Incident {
            rule: "Terminal shell in container",
            priority: Priority::Notice,
            source: "syscall",
            tags,
            fields,
            count: 3,
            pod_labels: labels,
        }
    }

    fn req(field: &str, operator: FieldOperator, values: &[&str]) -> FieldRequirement {
        FieldRequirement {
            field: field.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn an_empty_match_answers_every_incident() {
        let f = fields();
        assert_eq!(
            match_incident(&PolicyMatch::default(), &incident(&f, &[], None)),
            Ok(())
        );
    }

    #[test]
    fn each_condition_can_refuse() {
        let f = fields();
        let tags = vec!["container".to_string(), "shell".to_string()];
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let i = incident(&f, &tags, Some(&labels));
        let check = |m: PolicyMatch| match_incident(&m, &i);
        assert_eq!(
            check(PolicyMatch {
                rules: vec!["Write below*".into(), "Terminal shell*".into()],
                ..Default::default()
            }),
            Ok(())
        );
        assert_eq!(
            check(PolicyMatch {
                rules: vec!["Write below*".into()],
                ..Default::default()
            }),
            Err(NoMatch::Rule)
        );
        assert_eq!(
            check(PolicyMatch {
                min_priority: Some(Priority::Warning),
                ..Default::default()
            }),
            Err(NoMatch::Priority)
        );
        assert_eq!(
            check(PolicyMatch {
                min_priority: Some(Priority::Notice),
                sources: vec!["k8s_audit".into()],
                ..Default::default()
            }),
            Err(NoMatch::Source)
        );
        assert_eq!(
            check(PolicyMatch {
                tags: vec!["shell".into(), "mitre_execution".into()],
                ..Default::default()
            }),
            Err(NoMatch::Tags)
        );
        assert_eq!(
            check(PolicyMatch {
                min_count: Some(5),
                ..Default::default()
            }),
            Err(NoMatch::Count { have: 3, need: 5 })
        );
        let selector = |app: &str| LabelSelector {
            match_labels: Some(BTreeMap::from([("app".to_string(), app.to_string())])),
            ..Default::default()
        };
        assert_eq!(
            check(PolicyMatch {
                pod_selector: Some(selector("web")),
                ..Default::default()
            }),
            Ok(())
        );
        assert_eq!(
            check(PolicyMatch {
                pod_selector: Some(selector("db")),
                ..Default::default()
            }),
            Err(NoMatch::PodSelector)
        );
        let no_pod = incident(&f, &tags, None);
        assert_eq!(
            match_incident(
                &PolicyMatch {
                    pod_selector: Some(selector("web")),
                    ..Default::default()
                },
                &no_pod
            ),
            Err(NoMatch::PodUnknown)
        );
    }

    #[test]
    fn output_field_operators_treat_falco_missing_values_as_absent() {
        let f = fields();
        let i = incident(&f, &[], None);
        let check = |r: FieldRequirement| {
            match_incident(
                &PolicyMatch {
                    output_fields: vec![r],
                    ..Default::default()
                },
                &i,
            )
            .is_ok()
        };
        assert!(check(req("proc.name", FieldOperator::In, &["bash", "sh"])));
        assert!(!check(req("proc.name", FieldOperator::NotIn, &["bash"])));
        assert!(check(req("proc.tty", FieldOperator::In, &["0"])));
        assert!(check(req("fd.name", FieldOperator::DoesNotExist, &[])));
        assert!(!check(req("fd.name", FieldOperator::Exists, &[])));
        assert!(check(req("user.name", FieldOperator::NotIn, &["root"])));
        assert!(!check(req("user.name", FieldOperator::In, &["root"])));
    }

    #[test]
    fn cluster_scope_combines_names_and_selector() {
        let prod = BTreeMap::from([("env".to_string(), "prod".to_string())]);
        let scope = Scope::Cluster {
            namespaces: vec!["shop".into()],
            selector: Some(LabelSelector {
                match_labels: Some(prod.clone()),
                ..Default::default()
            }),
        };
        assert!(scope.contains("shop", Some(&prod)));
        assert!(!scope.contains("shop", None));
        assert!(!scope.contains("billing", Some(&prod)));
        assert!(Scope::Namespace("shop".into()).contains("shop", None));
        assert!(!Scope::Namespace("shop".into()).contains("billing", None));
    }
}
