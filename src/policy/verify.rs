//! Is the object an action would touch really the one the alert is about?
//!
//! Targets come from the alert's structured fields (`k8s.ns.name`,
//! `k8s.pod.name`, `k8s.pod.uid`, `container.id`, `hostname`), never from its
//! `output` text, and are checked against the live object: a forged or stale
//! alert must never touch the wrong pod.

use crate::crd::AlertReport;
use crate::falco::value_text;
use k8s_openapi::api::core::v1::Pod;

/// A pod the alert is proven to be about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: Option<String>,
    /// Kind and name of the pod's controller owner, `None` for a standalone pod.
    pub owner: Option<(String, String)>,
}

/// The outcome of checking a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict<T> {
    Verified(T),
    /// Refused: the alert does not describe this object (forged, stale, wrong).
    Rejected(String),
    /// Not acted on by rule (protected namespace, no pod in the alert...).
    Skipped(String),
}

/// The pod an alert names: namespace and name from its fields.
pub fn named_pod(report: &AlertReport) -> Option<(String, String)> {
    let s = &report.spec.subject;
    Some((s.namespace.clone()?, s.pod.clone()?))
}

fn field(report: &AlertReport, key: &str) -> Option<String> {
    report
        .spec
        .event
        .output_fields
        .get(key)
        .and_then(value_text)
}

/// Checks the pod of the alert: not in a protected namespace, exists (`pod`
/// is what the API server returned for the named pod), UID equal to
/// `k8s.pod.uid`, node equal to `hostname` when `hostname_is_node`, and one
/// of its containers with the alert's `container.id`.
pub fn verify_pod(
    report: &AlertReport,
    protected: &[String],
    pod: Option<&Pod>,
    hostname_is_node: bool,
) -> Verdict<VerifiedPod> {
    let Some((namespace, name)) = named_pod(report) else {
        return Verdict::Skipped("the alert names no pod (no k8s.ns.name and k8s.pod.name)".into());
    };
    if protected.contains(&namespace) {
        return Verdict::Skipped(format!(
            "namespace {namespace} is protected: Peregrine never acts there (see --protected-namespaces)"
        ));
    }
    let Some(pod) = pod else {
        return Verdict::Rejected(format!(
            "pod {namespace}/{name} does not exist: the alert is stale or forged, nothing was touched"
        ));
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let alert_uid = field(report, "k8s.pod.uid");
    if let Some(expected) = &alert_uid
        && *expected != uid
    {
        return Verdict::Rejected(format!(
            "pod {namespace}/{name} has UID {uid}, the alert says k8s.pod.uid {expected}: it is another pod of the same name, nothing was touched"
        ));
    }
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    if hostname_is_node
        && let Some(host) = &report.spec.event.hostname
        && node.as_deref() != Some(host.as_str())
    {
        return Verdict::Rejected(format!(
            "pod {namespace}/{name} runs on node {}, the alert came from node {host}: nothing was touched",
            node.as_deref().unwrap_or("(none)")
        ));
    }
    let container = field(report, "container.id").filter(|c| c != "host");
    match &container {
        Some(id) => {
            let ids = container_ids(pod);
            if !ids.iter().any(|full| same_container(full, id)) {
                return Verdict::Rejected(format!(
                    "no container of pod {namespace}/{name} has the alert's container.id {id}: nothing was touched"
                ));
            }
        }
        None if alert_uid.is_none() => {
            return Verdict::Rejected(format!(
                "the alert carries neither k8s.pod.uid nor container.id, so it cannot be proven to be about pod {namespace}/{name}: nothing was touched"
            ));
        }
        None => {}
    }
    let owner = pod
        .metadata
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| (o.kind.clone(), o.name.clone()));
    Verdict::Verified(VerifiedPod {
        namespace,
        name,
        uid,
        node,
        owner,
    })
}

/// Container ids of a pod's containers, without the `runtime://` prefix.
fn container_ids(pod: &Pod) -> Vec<String> {
    let status = pod.status.as_ref();
    [
        status.and_then(|s| s.container_statuses.as_ref()),
        status.and_then(|s| s.init_container_statuses.as_ref()),
        status.and_then(|s| s.ephemeral_container_statuses.as_ref()),
    ]
    .into_iter()
    .flatten()
    .flatten()
    .filter_map(|c| c.container_id.as_deref())
    .map(|id| id.rsplit_once("://").map_or(id, |(_, id)| id).to_string())
    .collect()
}

/// Falco reports the first 12 hex digits of the id; the kubelet the whole id.
fn same_container(full: &str, alert: &str) -> bool {
    alert.len() >= 12 && full.starts_with(alert)
}

/// Why DeletePod or ScaleToZero leaves this pod alone, unless `includeUnmanaged`.
pub fn unmanaged_reason(pod: &VerifiedPod) -> Option<String> {
    match pod.owner.as_ref().map(|(k, _)| k.as_str()) {
        Some("ReplicaSet") | Some("Job") => None,
        Some(kind @ ("DaemonSet" | "StatefulSet")) => Some(format!(
            "pod {}/{} belongs to {kind} {}: set includeUnmanaged: true on the action to act on it",
            pod.namespace,
            pod.name,
            pod.owner.as_ref().map_or("", |(_, n)| n.as_str())
        )),
        Some(other) => Some(format!(
            "pod {}/{} is owned by a {other}, which Peregrine does not manage: set includeUnmanaged: true to act on it",
            pod.namespace, pod.name
        )),
        None => Some(format!(
            "pod {}/{} is standalone (no controller would recreate it): set includeUnmanaged: true to act on it",
            pod.namespace, pod.name
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AlertReportSpec, FirstEvent, Priority, Subject};
    use serde_json::json;

    fn report(fields: serde_json::Value, hostname: &str) -> AlertReport {
        AlertReport::new(
            "r",
            AlertReportSpec {
                rule: "Terminal shell in container".into(),
                priority: Priority::Notice,
                source: "syscall".into(),
                tags: vec![],
                fingerprint: "f".into(),
                subject: Subject {
                    namespace: Some("shop".into()),
                    pod: Some("web-1".into()),
                    ..Default::default()
                },
                event: FirstEvent {
                    output: "container_id=ffffffffffff k8s_pod_name=other".into(),
                    output_fields: fields.as_object().cloned().unwrap(),
                    hostname: Some(hostname.into()),
                    ..Default::default()
                },
            },
        )
    }

    fn pod(uid: &str, node: &str, container: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": uid,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f", "uid": "x", "controller": true}]},
            "spec": {"nodeName": node, "containers": [{"name": "web"}]},
            "status": {"containerStatuses": [{"name": "web", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                "containerID": format!("containerd://{container}")}]}
        }))
        .unwrap()
    }

    const CID: &str = "3f2a9c1b7d4e00000000000000000000000000000000000000000000000000aa";

    fn alert_fields() -> serde_json::Value {
        json!({"k8s.ns.name": "shop", "k8s.pod.name": "web-1", "k8s.pod.uid": "u-1", "container.id": "3f2a9c1b7d4e"})
    }

    #[test]
    fn the_pod_the_alert_describes_is_verified() {
        let r = report(alert_fields(), "node-a");
        let p = pod("u-1", "node-a", CID);
        let Verdict::Verified(v) = verify_pod(&r, &[], Some(&p), true) else {
            panic!("not verified")
        };
        assert_eq!(v.owner, Some(("ReplicaSet".into(), "web-7d9f".into())));
        assert_eq!(unmanaged_reason(&v), None);
    }

    #[test]
    fn forged_alerts_are_rejected_with_the_mismatch() {
        let r = report(alert_fields(), "node-a");
        let rejected = |p: Option<&Pod>, is_node| match verify_pod(&r, &[], p, is_node) {
            Verdict::Rejected(reason) => reason,
            other => panic!("expected a rejection, got {other:?}"),
        };
        assert!(rejected(Some(&pod("u-2", "node-a", CID)), true).contains("UID u-2"));
        assert!(rejected(Some(&pod("u-1", "node-b", CID)), true).contains("node node-b"));
        assert!(
            rejected(Some(&pod("u-1", "node-a", &"ab".repeat(32))), true).contains("container.id")
        );
        assert!(rejected(None, true).contains("does not exist"));
        // A hostname that is not a node's name is not compared.
        assert!(matches!(
            verify_pod(&r, &[], Some(&pod("u-1", "node-b", CID)), false),
            Verdict::Verified(_)
        ));
    }

    #[test]
    fn protected_namespaces_are_skipped_before_anything_is_read() {
        let r = report(alert_fields(), "node-a");
        let Verdict::Skipped(reason) = verify_pod(&r, &["shop".into()], None, true) else {
            panic!("not skipped")
        };
        assert!(reason.contains("protected"));
    }

    #[test]
    fn daemonset_and_standalone_pods_are_unmanaged() {
        let mut v = VerifiedPod {
            namespace: "shop".into(),
            name: "agent-x".into(),
            uid: "u".into(),
            node: None,
            owner: Some(("DaemonSet".into(), "agent".into())),
        };
        assert!(unmanaged_reason(&v).unwrap().contains("DaemonSet agent"));
        v.owner = None;
        assert!(unmanaged_reason(&v).unwrap().contains("standalone"));
    }
}
