//! What the cluster adds to an alert: facts about the pod and the incident's history.
//!
//! Filled by the operator from its caches, or by `peregrine analyze --context FILE`.

use crate::crd::WorkloadRef;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Everything the analysis may use beyond the alert itself. All of it is optional:
/// an alert with no context still gets a full analysis.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Context {
    /// The affected pod, when it was found in the cluster.
    #[serde(default)]
    pub pod: Option<PodContext>,
    /// Occurrences counted so far for this incident (1 for a new one).
    #[serde(default)]
    pub occurrences: Option<u64>,
    /// Other incidents on the same workload, for correlation.
    #[serde(default)]
    pub related: Vec<RelatedIncident>,
    /// Namespaces whose incidents weigh more (control plane, security tooling).
    #[serde(default)]
    pub sensitive_namespaces: Vec<String>,
}

/// The security-relevant facts of a pod.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodContext {
    /// Labels of the pod, used to select exactly its workload in manifests.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The owning workload, resolved through the owner chain.
    #[serde(default)]
    pub workload: Option<WorkloadRef>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub service_account: Option<String>,
    /// Any container runs privileged.
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub host_pid: bool,
    #[serde(default)]
    pub host_network: bool,
    #[serde(default)]
    pub host_ipc: bool,
    /// Capabilities added to any container (`SYS_ADMIN`, `NET_RAW`...).
    #[serde(default)]
    pub added_capabilities: Vec<String>,
    /// A container may run as user 0 (runAsUser 0, or runAsNonRoot not set).
    #[serde(default)]
    pub runs_as_root: bool,
    /// A container allows privilege escalation (the Kubernetes default when unset).
    #[serde(default)]
    pub allow_privilege_escalation: bool,
    /// `hostPath` volumes mounted.
    #[serde(default)]
    pub host_path_volumes: Vec<String>,
    /// Reachable from outside the cluster (a LoadBalancer or NodePort Service, or an Ingress, selects it).
    #[serde(default)]
    pub internet_facing: bool,
}

/// Another incident on the same workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RelatedIncident {
    /// AlertReport name.
    pub report: String,
    pub rule: String,
    /// The rule's tags, to place it in the kill chain.
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub last_seen: Option<Timestamp>,
}
