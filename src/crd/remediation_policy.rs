//! `RemediationPolicy` and `ClusterRemediationPolicy`: which alerts trigger which actions.

use super::Priority;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Answers matching AlertReports in the policy's own namespace.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "peregrine.dev",
    version = "v1alpha1",
    kind = "RemediationPolicy",
    plural = "remediationpolicies",
    shortname = "rp",
    category = "peregrine",
    namespaced,
    status = "RemediationPolicyStatus",
    doc = "Declares how Peregrine answers AlertReports in this namespace: which incidents trigger which actions.",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Matched",
        type_ = "integer",
        json_path = ".status.matchedReports"
    ),
    printcolumn(
        name = "Actions",
        type_ = "integer",
        json_path = ".status.actionsTaken"
    ),
    printcolumn(
        name = "Last Triggered",
        type_ = "date",
        json_path = ".status.lastTriggered"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RemediationPolicySpec {
    #[serde(flatten)]
    pub common: PolicyCommon,
}

/// Answers matching AlertReports in any namespace the selectors allow.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "peregrine.dev",
    version = "v1alpha1",
    kind = "ClusterRemediationPolicy",
    plural = "clusterremediationpolicies",
    shortname = "crp",
    category = "peregrine",
    status = "RemediationPolicyStatus",
    doc = "Declares how Peregrine answers AlertReports across namespaces: which incidents trigger which actions.",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Matched",
        type_ = "integer",
        json_path = ".status.matchedReports"
    ),
    printcolumn(
        name = "Actions",
        type_ = "integer",
        json_path = ".status.actionsTaken"
    ),
    printcolumn(
        name = "Last Triggered",
        type_ = "date",
        json_path = ".status.lastTriggered"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRemediationPolicySpec {
    /// Namespaces whose labels match this selector are in scope (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Namespaces in scope by name (all when empty). Combined with `namespaceSelector` by AND.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(flatten)]
    pub common: PolicyCommon,
}

/// What both policy kinds declare.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyCommon {
    /// `DryRun` (the default) decides and records but changes nothing; `Enforce` acts.
    #[serde(default)]
    pub mode: PolicyMode,
    /// Which incidents the policy answers. All given conditions must hold.
    #[serde(default, rename = "match")]
    pub match_: PolicyMatch,
    /// Actions, run in order.
    pub actions: Vec<Action>,
    /// `Required` holds the actions as PendingApproval until the report is annotated `peregrine.dev/approve=true`.
    #[serde(default)]
    pub approval: Approval,
    /// At most this many actions per period, for this policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Minimum time between two triggers on the same workload, as a duration like `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<String>,
}

/// Whether a policy acts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PolicyMode {
    #[default]
    DryRun,
    Enforce,
}

/// Whether a person must approve the actions first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Approval {
    #[default]
    None,
    Required,
}

/// Conditions an incident must meet.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyMatch {
    /// Rule names or glob patterns (`*`, `?`); any may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
    /// Least severe Falco priority that matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_priority: Option<Priority>,
    /// Event sources; any may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// Tags that must all be present on the rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Label selector on the affected pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Conditions on the alert's output fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_fields: Vec<FieldRequirement>,
    /// Act only once the incident has counted at least this many alerts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_count: Option<u64>,
}

/// A condition on one output field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FieldRequirement {
    /// Output field name exactly as Falco sends it, for example `proc.name` or `proc.aname[2]`.
    pub field: String,
    /// In, NotIn, Exists or DoesNotExist.
    pub operator: FieldOperator,
    /// Values for In and NotIn.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// How a field requirement compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FieldOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// A rate limit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Actions allowed per period.
    pub max_actions: u32,
    /// The period, as a duration like `1m` or `1h`.
    pub per: String,
}

/// One action of a policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    /// Label, Annotate, Isolate, DeletePod, ScaleToZero, CordonNode or Notify.
    #[serde(rename = "type")]
    pub type_: ActionType,
    /// For Label and Annotate: `Pod` (the default) or `Node`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<ActionTarget>,
    /// For Label: labels to set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// For Annotate: annotations to set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// For Isolate: deny ingress (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<bool>,
    /// For Isolate: deny egress (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<bool>,
    /// For Isolate: still allow DNS egress (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "allowDNS")]
    pub allow_dns: Option<bool>,
    /// For DeletePod: grace period in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period_seconds: Option<i64>,
    /// For DeletePod and ScaleToZero: also act on pods of DaemonSets, StatefulSets and standalone pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_unmanaged: Option<bool>,
    /// For Notify: the Secret (in the policy's namespace, or the operator's for cluster policies) whose key holds the webhook URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// For Notify: `Json` (the default) or `Slack`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<NotifyFormat>,
    /// For reversible actions: undo after this duration, like `30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_after: Option<String>,
}

/// Action types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ActionType {
    Label,
    Annotate,
    Isolate,
    DeletePod,
    ScaleToZero,
    CordonNode,
    Notify,
}

/// What Label and Annotate act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ActionTarget {
    Pod,
    Node,
}

/// Message format of Notify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum NotifyFormat {
    Json,
    Slack,
}

/// A key of a Secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    pub name: String,
    /// Key holding the URL (default `url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// What a policy has done.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemediationPolicyStatus {
    /// `Ready`, or `Invalid` with a message naming the bad field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Reports the policy matched.
    #[serde(default)]
    pub matched_reports: u64,
    /// Actions taken (not counting dry runs).
    #[serde(default)]
    pub actions_taken: u64,
    /// When the policy last matched a report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_triggered: Option<Time>,
}
