//! Who and what an alert is about, read from its output fields only.

use super::Alert;
use crate::crd::{ProcessInfo, Subject, UserInfo};

/// The subject as the alert alone tells it; the cluster may add to it later
/// (workload, node) when the pod is known.
pub fn subject_of(alert: &Alert) -> Subject {
    match alert.source.as_str() {
        "k8s_audit" | "k8saudit" | "k8saudit-eks" | "k8saudit-gke" | "k8saudit-aks" => {
            audit_subject(alert)
        }
        _ => runtime_subject(alert),
    }
}

fn runtime_subject(alert: &Alert) -> Subject {
    let image = match (
        alert.field("container.image.repository"),
        alert.field("container.image.tag"),
    ) {
        (Some(repo), Some(tag)) => Some(format!("{repo}:{tag}")),
        (Some(repo), None) => Some(repo),
        _ => alert.field("container.image"),
    };
    let process = ProcessInfo {
        name: alert.field("proc.name"),
        exe_path: alert.first_field(&["proc.exepath", "proc.exe"]),
        cmdline: alert.field("proc.cmdline"),
        parent: alert.field("proc.pname"),
    };
    let user = UserInfo {
        name: alert.first_field(&[
            "user.name",
            "ct.user",
            "gcp.user",
            "okta.actor.name",
            "github.user",
        ]),
        uid: alert.field("user.uid").and_then(|u| u.parse().ok()),
    };
    let namespace = alert.field("k8s.ns.name");
    Subject {
        pod: alert.field("k8s.pod.name").filter(|_| namespace.is_some()),
        namespace,
        container: alert.field("container.name"),
        container_id: alert.field("container.id"),
        image,
        // Cloud and SaaS plugins run beside Falco, whose hostname is then no node of theirs.
        node: alert
            .hostname
            .clone()
            .filter(|h| is_dns_subdomain(h) && runs_on_a_node(alert)),
        workload: None,
        process: (process != ProcessInfo::default()).then_some(process),
        user: (user != UserInfo::default()).then_some(user),
    }
}

/// Syscall alerts, Falco's own events, and anything carrying a container id
/// come from the node Falco runs on.
fn runs_on_a_node(alert: &Alert) -> bool {
    matches!(alert.source.as_str(), "syscall" | "internal") || alert.field("container.id").is_some()
}

fn audit_subject(alert: &Alert) -> Subject {
    let resource = alert.field("ka.target.resource");
    let pod = match resource.as_deref() {
        Some("pods") => alert.field("ka.target.name"),
        _ => None,
    };
    let user = UserInfo {
        name: alert.field("ka.user.name"),
        uid: None,
    };
    Subject {
        namespace: alert.field("ka.target.namespace"),
        pod,
        user: user.name.is_some().then_some(user),
        ..Subject::default()
    }
}

/// RFC 1123 subdomain: what a Node name must be. Falco's `hostname` is
/// sometimes a container id or a placeholder, which this does not rule out,
/// so the node is confirmed against the cluster before anything acts on it.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// RFC 1123 label: what most Kubernetes object names must be.
pub fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && !s.contains('.') && is_dns_subdomain(s)
}
