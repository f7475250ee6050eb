//! Pure reading of Pod objects: owner chain and security-relevant facts.

use crate::analysis::PodContext;
use crate::crd::WorkloadRef;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, SecurityContext};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use std::collections::BTreeSet;

fn controller_of(owners: Option<&[OwnerReference]>) -> Option<&OwnerReference> {
    let owners = owners?;
    owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first())
}

fn workload(kind: &str, name: &str) -> WorkloadRef {
    WorkloadRef {
        kind: kind.to_string(),
        name: name.to_string(),
    }
}

/// The workload a pod belongs to, following its controller owners:
/// ReplicaSet → Deployment and Job → CronJob when the middle object is known,
/// the pod itself when it has no owner.
pub fn owner_workload(
    pod: &ObjectMeta,
    replicaset_owners: impl Fn(&str) -> Option<Vec<OwnerReference>>,
    job_owners: impl Fn(&str) -> Option<Vec<OwnerReference>>,
) -> Option<WorkloadRef> {
    let Some(owner) = controller_of(pod.owner_references.as_deref()) else {
        return pod.name.as_deref().map(|name| workload("Pod", name));
    };
    let parent = match owner.kind.as_str() {
        "ReplicaSet" => replicaset_owners(&owner.name),
        "Job" => job_owners(&owner.name),
        _ => None,
    };
    let top = match (owner.kind.as_str(), controller_of(parent.as_deref())) {
        ("ReplicaSet", Some(p)) if p.kind == "Deployment" => p,
        ("Job", Some(p)) if p.kind == "CronJob" => p,
        _ => owner,
    };
    Some(workload(&top.kind, &top.name))
}

const GENERATED: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn is_generated(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(|b| GENERATED.contains(&b))
}

/// The workload a pod most likely belonged to, from its name alone: for
/// alerts about pods that are gone. `web-7d9f8b6c5d-x2k4q` is Deployment
/// `web`, `backup-29160000-abcde` CronJob `backup`; anything else the pod.
/// Used to group alerts only, never to act.
pub fn guess_workload(pod: &str) -> WorkloadRef {
    let mut parts = pod.rsplitn(3, '-');
    if let (Some(suffix), Some(middle), Some(base)) = (parts.next(), parts.next(), parts.next())
        && is_generated(suffix, 5, 5)
        && !base.is_empty()
    {
        if is_generated(middle, 6, 10) {
            return workload("Deployment", base);
        }
        if middle.len() >= 8 && middle.bytes().all(|b| b.is_ascii_digit()) {
            return workload("CronJob", base);
        }
    }
    workload("Pod", pod)
}

/// The security-relevant facts of a pod.
pub fn pod_context(pod: &Pod, workload: Option<WorkloadRef>) -> PodContext {
    // Read in place: this runs for every alert on the intake path.
    let no_spec = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&no_spec);
    let pod_security = spec.security_context.as_ref();
    let contexts: Vec<Option<&SecurityContext>> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c: &Container| c.security_context.as_ref())
        .collect();
    let privileged = contexts
        .iter()
        .any(|sc| sc.and_then(|sc| sc.privileged) == Some(true));
    let added: BTreeSet<String> = contexts
        .iter()
        .filter_map(|sc| sc.and_then(|sc| sc.capabilities.as_ref()?.add.as_ref()))
        .flatten()
        .cloned()
        .collect();
    let runs_as_root = contexts.iter().any(|sc| {
        let user = sc
            .and_then(|sc| sc.run_as_user)
            .or(pod_security.and_then(|p| p.run_as_user));
        let non_root = sc
            .and_then(|sc| sc.run_as_non_root)
            .or(pod_security.and_then(|p| p.run_as_non_root));
        user == Some(0) || (user.is_none() && non_root != Some(true))
    });
    let allow_privilege_escalation = contexts.iter().any(|sc| {
        sc.and_then(|sc| sc.privileged) == Some(true)
            || sc.and_then(|sc| sc.allow_privilege_escalation) != Some(false)
    });
    let host_path_volumes = spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.host_path.as_ref().map(|h| h.path.clone()))
        .collect();
    PodContext {
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        workload,
        node: spec.node_name.clone(),
        service_account: Some(
            spec.service_account_name
                .clone()
                .unwrap_or_else(|| "default".to_string()),
        ),
        privileged,
        host_pid: spec.host_pid == Some(true),
        host_network: spec.host_network == Some(true),
        host_ipc: spec.host_ipc == Some(true),
        added_capabilities: added.into_iter().collect(),
        runs_as_root,
        allow_privilege_escalation,
        host_path_volumes,
        internet_facing: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn owner(kind: &str, name: &str) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: "u".into(),
            controller: Some(true),
            block_owner_deletion: None,
        }
    }

    fn meta(owners: Vec<OwnerReference>) -> ObjectMeta {
        ObjectMeta {
            name: Some("p".into()),
            owner_references: Some(owners),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn a_deployment_pod_belongs_to_the_deployment() {
        let w = owner_workload(
            &meta(vec![owner("ReplicaSet", "web-7d9f8b6c5d")]),
            |rs| (rs == "web-7d9f8b6c5d").then(|| vec![owner("Deployment", "web")]),
            |_| None,
        );
        assert_eq!(w, Some(workload("Deployment", "web")));
    }

    #[test]
    fn a_cronjob_pod_belongs_to_the_cronjob() {
        let w = owner_workload(
            &meta(vec![owner("Job", "backup-29160000")]),
            |_| None,
            |_| Some(vec![owner("CronJob", "backup")]),
        );
        assert_eq!(w, Some(workload("CronJob", "backup")));
    }

    #[test]
    fn an_unknown_replicaset_and_a_bare_pod_stand_for_themselves() {
        let w = owner_workload(&meta(vec![owner("ReplicaSet", "rs")]), |_| None, |_| None);
        assert_eq!(w, Some(workload("ReplicaSet", "rs")));
        let w = owner_workload(&meta(vec![]), |_| None, |_| None);
        assert_eq!(w, Some(workload("Pod", "p")));
    }

    #[test]
    fn pod_names_hint_at_their_workload() {
        assert_eq!(
            guess_workload("web-7d9f8b6c5d-x2k4q"),
            workload("Deployment", "web")
        );
        assert_eq!(
            guess_workload("my-api-5c8d7f9b4-qwz8n"),
            workload("Deployment", "my-api")
        );
        assert_eq!(
            guess_workload("backup-29160000-bcdfg"),
            workload("CronJob", "backup")
        );
        assert_eq!(guess_workload("db-0"), workload("Pod", "db-0"));
        assert_eq!(guess_workload("-x-bcdfg"), workload("Pod", "-x-bcdfg"));
    }

    #[test]
    fn the_security_context_that_matters_is_read() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "labels": {"app": "web"}},
            "spec": {
                "nodeName": "worker-1",
                "serviceAccountName": "web",
                "hostPID": true,
                "securityContext": {"runAsNonRoot": true},
                "containers": [
                    {"name": "a", "securityContext": {"privileged": true, "capabilities": {"add": ["SYS_ADMIN"]}}},
                    {"name": "b", "securityContext": {"runAsUser": 1000, "allowPrivilegeEscalation": false, "capabilities": {"add": ["NET_RAW"]}}}
                ],
                "volumes": [{"name": "root", "hostPath": {"path": "/"}}]
            }
        }))
        .unwrap();
        let c = pod_context(&pod, None);
        assert!(c.privileged && c.host_pid && !c.host_network && !c.host_ipc);
        assert_eq!(c.added_capabilities, vec!["NET_RAW", "SYS_ADMIN"]);
        assert!(
            !c.runs_as_root,
            "runAsNonRoot on the pod covers container a"
        );
        assert!(c.allow_privilege_escalation, "privileged implies it");
        assert_eq!(c.node.as_deref(), Some("worker-1"));
        assert_eq!(c.service_account.as_deref(), Some("web"));
        assert_eq!(c.host_path_volumes, vec!["/"]);
        assert_eq!(c.labels["app"], "web");
    }

    #[test]
    fn an_unhardened_pod_may_run_as_root_and_escalate() {
        let pod: Pod =
            serde_json::from_value(json!({"spec": {"containers": [{"name": "a"}]}})).unwrap();
        let c = pod_context(&pod, None);
        assert!(c.runs_as_root && c.allow_privilege_escalation && !c.privileged);
    }
}
