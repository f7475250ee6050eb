//! What makes alerts one incident, and the deterministic names that follow from it.
//!
//! Every replica computes the same fingerprint and the same object name for
//! the same incident, so they all converge on one `AlertReport`.

use crate::crd::{Priority, Severity, Subject, WorkloadRef};
use crate::falco::Alert;

/// Label keys set on every report, for `kubectl get ar -l ...`.
pub const LABEL_RULE: &str = "peregrine.dev/rule";
pub const LABEL_SEVERITY: &str = "peregrine.dev/severity";
pub const LABEL_PRIORITY: &str = "peregrine.dev/priority";
pub const LABEL_SOURCE: &str = "peregrine.dev/source";
pub const LABEL_WORKLOAD_KIND: &str = "peregrine.dev/workload-kind";
pub const LABEL_WORKLOAD_NAME: &str = "peregrine.dev/workload-name";
pub const LABEL_NODE: &str = "peregrine.dev/node";

/// Where an incident happened: the part of the fingerprint beyond rule and source.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// A workload in a namespace (pods of one Deployment are one workload).
    Workload {
        namespace: String,
        workload: WorkloadRef,
    },
    /// A namespace without a known pod: Kubernetes audit events on other objects.
    Namespace {
        namespace: String,
        target: Option<String>,
    },
    /// A node, for host events and containers outside Kubernetes.
    Node {
        node: String,
        container_image: Option<String>,
    },
    /// No place in the cluster: cloud and SaaS audit sources, keyed by who acted.
    Source { actor: Option<String> },
}

impl Scope {
    /// The namespace the report lives in, when the incident belongs to one.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Scope::Workload { namespace, .. } | Scope::Namespace { namespace, .. } => {
                Some(namespace)
            }
            Scope::Node { .. } | Scope::Source { .. } => None,
        }
    }

    fn canonical(&self) -> String {
        match self {
            Scope::Workload {
                namespace,
                workload,
            } => format!(
                "workload\0{namespace}\0{}\0{}",
                workload.kind, workload.name
            ),
            Scope::Namespace { namespace, target } => format!(
                "namespace\0{namespace}\0{}",
                target.as_deref().unwrap_or_default()
            ),
            Scope::Node {
                node,
                container_image,
            } => format!(
                "node\0{node}\0{}",
                container_image.as_deref().unwrap_or_default()
            ),
            Scope::Source { actor } => {
                format!("source\0{}", actor.as_deref().unwrap_or_default())
            }
        }
    }
}

/// The scope of an alert. `workload` is the pod's owner, resolved from the
/// cluster or, for a pod no longer there, guessed from its name.
pub fn scope_of(alert: &Alert, subject: &Subject, workload: Option<&WorkloadRef>) -> Scope {
    if let Some(namespace) = subject.namespace.clone() {
        if let Some(workload) = workload.cloned() {
            return Scope::Workload {
                namespace,
                workload,
            };
        }
        if let Some(pod) = subject.pod.clone() {
            return Scope::Workload {
                namespace,
                workload: WorkloadRef {
                    kind: "Pod".into(),
                    name: pod,
                },
            };
        }
        let target = match (
            alert.field("ka.target.resource"),
            alert.field("ka.target.name"),
        ) {
            (Some(resource), Some(name)) => Some(format!("{resource}/{name}")),
            (Some(resource), None) => Some(resource),
            _ => None,
        };
        return Scope::Namespace { namespace, target };
    }
    let on_a_host = matches!(alert.source.as_str(), "syscall" | "internal")
        || alert.field("container.id").is_some();
    if on_a_host && let Some(node) = subject.node.clone().or_else(|| alert.hostname.clone()) {
        let container_image = match alert.field("container.id").as_deref() {
            None | Some("host") => None,
            Some(_) => alert
                .field("container.image.repository")
                .or_else(|| alert.field("container.name")),
        };
        return Scope::Node {
            node,
            container_image,
        };
    }
    Scope::Source {
        actor: subject.user.as_ref().and_then(|u| u.name.clone()),
    }
}

/// The hex SHA-256 of rule, source and scope: `spec.fingerprint`.
pub fn fingerprint(rule: &str, source: &str, scope: &Scope) -> String {
    let input = format!("v1\0{rule}\0{source}\0{}", scope.canonical());
    let digest = ring::digest::digest(&ring::digest::SHA256, input.as_bytes());
    crate::names::hex(digest.as_ref())
}

/// `<rule-slug>-<10 hex of the fingerprint>`: a valid DNS label of at most 63 characters.
pub fn report_name(rule: &str, fingerprint: &str) -> String {
    let hash: String = fingerprint.chars().take(10).collect();
    let slug = slug(rule, 63 - 1 - hash.len());
    format!("{slug}-{hash}")
}

pub use crate::names::label_value;

/// The rule part of a name or label: lowercase letters, digits and single
/// dashes, at most `max` characters; `alert` when nothing is left.
pub fn slug(text: &str, max: usize) -> String {
    let cut: String = crate::names::slug(text).chars().take(max).collect();
    let cut = cut.trim_end_matches('-');
    if cut.is_empty() {
        "alert".to_string()
    } else {
        cut.to_string()
    }
}

/// Severity before analysis: what the Falco priority alone says.
pub fn severity_of_priority(priority: Priority) -> Severity {
    match priority {
        Priority::Emergency | Priority::Alert | Priority::Critical => Severity::Critical,
        Priority::Error => Severity::High,
        Priority::Warning => Severity::Medium,
        Priority::Notice => Severity::Low,
        Priority::Informational | Priority::Debug => Severity::Info,
    }
}

/// The label value of a severity.
pub fn severity_label(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "Critical",
        Severity::High => "High",
        Severity::Medium => "Medium",
        Severity::Low => "Low",
        Severity::Info => "Info",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::UserInfo;

    fn alert(json: serde_json::Value) -> Alert {
        crate::falco::parse(json.to_string().as_bytes()).unwrap()
    }

    fn workload(kind: &str, name: &str) -> WorkloadRef {
        WorkloadRef {
            kind: kind.into(),
            name: name.into(),
        }
    }

    #[test]
    fn pods_of_one_workload_share_a_fingerprint_and_a_name() {
        let a = alert(
            serde_json::json!({"rule":"Terminal shell in container","priority":"Notice","output_fields":{}}),
        );
        let mut s1 = Subject {
            namespace: Some("shop".into()),
            pod: Some("web-7d9f8b6c5d-x2k4q".into()),
            workload: Some(workload("Deployment", "web")),
            ..Subject::default()
        };
        let f1 = fingerprint(&a.rule, &a.source, &scope_of(&a, &s1, s1.workload.as_ref()));
        s1.pod = Some("web-7d9f8b6c5d-abcde".into());
        let f2 = fingerprint(&a.rule, &a.source, &scope_of(&a, &s1, s1.workload.as_ref()));
        assert_eq!(f1, f2);
        assert_eq!(report_name(&a.rule, &f1), report_name(&a.rule, &f2));
        s1.workload = Some(workload("Deployment", "api"));
        assert_ne!(
            f1,
            fingerprint(&a.rule, &a.source, &scope_of(&a, &s1, s1.workload.as_ref()))
        );
    }

    #[test]
    fn host_events_are_keyed_by_node_and_have_no_namespace() {
        let a = alert(
            serde_json::json!({"rule":"Write below etc","priority":"Error","hostname":"worker-1","output_fields":{"container.id":"host"}}),
        );
        let s = Subject {
            node: Some("worker-1".into()),
            ..Subject::default()
        };
        let scope = scope_of(&a, &s, None);
        assert_eq!(
            scope,
            Scope::Node {
                node: "worker-1".into(),
                container_image: None
            }
        );
        assert_eq!(scope.namespace(), None);
    }

    #[test]
    fn cloud_events_are_keyed_by_the_actor() {
        let a = alert(
            serde_json::json!({"rule":"Console Login Without MFA","priority":"Critical","source":"aws_cloudtrail","output_fields":{"ct.user":"alice"}}),
        );
        let s = Subject {
            user: Some(UserInfo {
                name: Some("alice".into()),
                uid: None,
            }),
            ..Subject::default()
        };
        assert_eq!(
            scope_of(&a, &s, None),
            Scope::Source {
                actor: Some("alice".into())
            }
        );
    }

    #[test]
    fn report_names_are_dns_labels_for_any_rule() {
        for rule in [
            "Terminal shell in container",
            "",
            "!!!",
            "Falco internal: syscall event drop",
            &"Very long rule name ".repeat(20),
            "Règle spéciale — ünïcode",
        ] {
            let name = report_name(
                rule,
                &fingerprint(rule, "syscall", &Scope::Source { actor: None }),
            );
            assert!(name.len() <= 63, "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{name}"
            );
            assert!(!name.starts_with('-') && !name.ends_with('-'), "{name}");
        }
        assert!(
            report_name("Terminal shell in container", &"ab".repeat(32))
                .starts_with("terminal-shell-in-container-abababab")
        );
    }

    /// Strings an attacker may put in a rule name or field: random lengths
    /// and characters from ASCII, punctuation, whitespace and other scripts.
    fn hostile_strings() -> Vec<String> {
        let alphabet: Vec<char> = "aZ09 -_./:\\\"'<>|&;$()\n\t\u{0}éß漢字🙂—\u{200b}"
            .chars()
            .collect();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..2000)
            .map(|_| {
                let len = (next() % 300) as usize;
                (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect()
            })
            .collect()
    }

    #[test]
    fn names_and_labels_are_valid_for_any_input() {
        for text in hostile_strings() {
            let name = report_name(
                &text,
                &fingerprint(&text, "syscall", &Scope::Source { actor: None }),
            );
            assert!(crate::falco::is_dns_label(&name), "{name:?} from {text:?}");
            let label = label_value(&text);
            assert!(label.len() <= 63, "{label:?}");
            assert!(
                label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
                "{label:?} from {text:?}"
            );
            assert!(
                label.is_empty()
                    || (label.starts_with(|c: char| c.is_ascii_alphanumeric())
                        && label.ends_with(|c: char| c.is_ascii_alphanumeric())),
                "{label:?} from {text:?}"
            );
            let rule_label = slug(&text, 63);
            assert!(crate::falco::is_dns_label(&rule_label), "{rule_label:?}");
        }
    }

    #[test]
    fn label_values_are_valid_and_distinct_when_long() {
        let long_a = format!("{}a", "x".repeat(80));
        let long_b = format!("{}b", "x".repeat(80));
        for v in [long_a.as_str(), long_b.as_str(), "web", "-bad-", "a/b c"] {
            let l = label_value(v);
            assert!(l.len() <= 63, "{l}");
            assert!(
                l.is_empty()
                    || (l.starts_with(|c: char| c.is_ascii_alphanumeric())
                        && l.ends_with(|c: char| c.is_ascii_alphanumeric())),
                "{l}"
            );
        }
        assert_ne!(label_value(&long_a), label_value(&long_b));
        assert_eq!(label_value("web"), "web");
    }
}
