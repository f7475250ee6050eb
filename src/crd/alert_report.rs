//! `AlertReport`: one security incident, aggregated from the Falco alerts that make it up.

use super::Priority;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An incident raised by Falco: the same rule firing on the same workload.
///
/// Repeats of the incident do not make new objects: they raise `status.occurrences`.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "peregrine.dev",
    version = "v1alpha1",
    kind = "AlertReport",
    plural = "alertreports",
    shortname = "ar",
    category = "peregrine",
    namespaced,
    status = "AlertReportStatus",
    doc = "A Falco security incident: the same rule firing on the same workload, analysed and answered.",
    printcolumn(
        name = "Severity",
        type_ = "string",
        json_path = ".status.analysis.severity"
    ),
    printcolumn(name = "Rule", type_ = "string", json_path = ".spec.rule"),
    printcolumn(
        name = "Workload",
        type_ = "string",
        json_path = ".spec.subject.workload.name"
    ),
    printcolumn(
        name = "Count",
        type_ = "integer",
        json_path = ".status.occurrences.count"
    ),
    printcolumn(
        name = "Last Seen",
        type_ = "date",
        json_path = ".status.occurrences.lastSeen"
    ),
    printcolumn(
        name = "Remediation",
        type_ = "string",
        json_path = ".status.remediationSummary",
        priority = 1
    ),
    printcolumn(
        name = "Priority",
        type_ = "string",
        json_path = ".spec.priority",
        priority = 1
    ),
    printcolumn(
        name = "Pod",
        type_ = "string",
        json_path = ".spec.subject.pod",
        priority = 1
    ),
    printcolumn(
        name = "Node",
        type_ = "string",
        json_path = ".spec.subject.node",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AlertReportSpec {
    /// Name of the Falco rule that fired, exactly as Falco sent it.
    pub rule: String,
    /// Falco priority of the rule.
    pub priority: Priority,
    /// Falco event source: syscall, k8s_audit, aws_cloudtrail, gcp_auditlog, okta, github, internal, or a plugin's own.
    pub source: String,
    /// Tags of the rule, as Falco sent them (MITRE tactics, technique IDs, maturity...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Stable hash of what makes this incident one incident (rule, source, namespace and workload, or node for host events); the object name derives from it.
    pub fingerprint: String,
    /// Who and what the alert is about. A field is present only when the alert or the cluster told it.
    #[serde(default)]
    pub subject: Subject,
    /// The first alert of the incident, as it was received.
    pub event: FirstEvent,
}

/// Who and what an alert is about.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    /// Namespace of the affected pod (or of the audited object for Kubernetes audit alerts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the pod that raised the first alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Name of the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Container id as Falco reports it (12 hex characters), or `host` for host events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Container image, repository and tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Node the alert came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The workload that owns the pod, resolved through its owner chain (a Deployment rather than its ReplicaSet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadRef>,
    /// The process that triggered the rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessInfo>,
    /// The user the process ran as, or the API user for audit sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserInfo>,
}

/// A workload by kind and name, in the subject's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    /// Kind of the workload: Deployment, StatefulSet, DaemonSet, Job, CronJob, ReplicaSet, or Pod for a standalone pod.
    pub kind: String,
    /// Name of the workload.
    pub name: String,
}

/// The process behind a syscall alert.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProcessInfo {
    /// Process name (`proc.name`, cut to 15 characters by the kernel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Full path of the executable (`proc.exepath`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe_path: Option<String>,
    /// Command line (`proc.cmdline`), chosen by the workload: never run it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Name of the parent process (`proc.pname`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// The user behind an alert.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserInfo {
    /// User name (`user.name`, or the API user of an audit event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Numeric user id (`user.uid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<i64>,
}

/// The first alert of an incident, as received.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FirstEvent {
    /// When Falco saw the event (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Falco's formatted output line. Chosen in part by the watched workload: display only.
    #[serde(default)]
    pub output: String,
    /// Falco's output fields, keys exactly as sent (flat, with dots and brackets). Integers that do not fit in 64 bits signed are kept as their exact decimal string, since the API server would round them.
    #[serde(default)]
    #[schemars(schema_with = "free_form_object")]
    pub output_fields: Map<String, Value>,
    /// Falco's `hostname`: usually the node name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Event id, present when the alert came through Falcosidekick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
}

fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// What Peregrine knows about the incident now.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertReportStatus {
    /// How often and when the incident was seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurrences: Option<Occurrences>,
    /// Distinct pods, containers and nodes involved (bounded lists, most recent kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub involved: Option<Involved>,
    /// A few recent events of the incident, outputs truncated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<Sample>,
    /// What the alert means and how to respond.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
    /// Every remediation decision taken for this incident.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remediations: Vec<RemediationRecord>,
    /// One line on the remediation state, for `kubectl get` (for example `Isolate: Succeeded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation_summary: Option<String>,
    /// Standard conditions, keyed by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Count and time span of an incident.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Occurrences {
    /// Number of alerts counted for this incident.
    pub count: u64,
    /// Time of the first alert.
    pub first_seen: Time,
    /// Time of the latest alert.
    pub last_seen: Time,
}

/// Distinct places an incident was seen.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Involved {
    /// Pod names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<String>,
    /// Container ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
    /// Node names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// True when more were seen than the lists hold.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// One recent event of an incident.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    /// When Falco saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Pod, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Falco's output line, truncated.
    pub output: String,
}

/// Severity after context is taken into account.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
    Info,
}

/// Which knowledge answered an alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Basis {
    /// Knowledge written for this very rule.
    Rule,
    /// Only the rule's tags (MITRE tactics and techniques, domains) were known.
    Tags,
    /// Nothing specific was known: answered from priority and source.
    Generic,
}

/// The analysis of an incident.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    /// Two or three sentences a responder can act on.
    pub summary: String,
    /// What the rule detects.
    pub rule_description: String,
    /// Severity from the Falco priority, adjusted by context.
    pub severity: Severity,
    /// Risk from 0 to 100.
    pub risk_score: u8,
    /// Why the risk score is what it is, one entry per adjustment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub risk_factors: Vec<String>,
    /// MITRE ATT&CK techniques the behaviour maps to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mitre: Vec<MitreTechnique>,
    /// The facts that matter for this rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
    /// What an attacker does with this behaviour.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub possible_misuse: Vec<String>,
    /// Benign explanations and how to tell them apart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub false_positive_hints: Vec<String>,
    /// Ordered response steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mitigations: Vec<Mitigation>,
    /// Which knowledge answered: rule, tags or generic.
    pub basis: Basis,
    /// Other incidents on the same workload, in kill-chain order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub correlation: Vec<CorrelatedReport>,
}

/// A MITRE ATT&CK technique.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MitreTechnique {
    /// Tactic name, for example `Privilege Escalation`.
    pub tactic: String,
    /// Tactic id, for example `TA0004`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tactic_id: Option<String>,
    /// Technique id, `T####` or `T####.###`; absent when only the tactic is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub technique_id: Option<String>,
    /// Technique name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub technique_name: Option<String>,
}

/// One fact of the analysis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// What the value is.
    pub label: String,
    /// The value, from the alert's output fields or the cluster.
    pub value: String,
    /// The output field it came from, when it came from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Kind of response step.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum MitigationCategory {
    Contain,
    Investigate,
    Eradicate,
    Harden,
    Tune,
}

/// One response step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Mitigation {
    /// Contain, Investigate, Eradicate, Harden or Tune.
    pub category: MitigationCategory,
    /// Short imperative title.
    pub title: String,
    /// What to do and why.
    pub description: String,
    /// Commands for this incident, values shell-quoted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
    /// A manifest to apply (Kubernetes YAML), or a Falco rules snippet for Tune steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
}

/// Another incident on the same workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CorrelatedReport {
    /// Name of the other AlertReport.
    pub report: String,
    /// Its rule.
    pub rule: String,
    /// The kill-chain stage (MITRE tactic) it stands for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tactic: Option<String>,
    /// When it was last seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
}

/// State of one remediation decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RemediationState {
    DryRun,
    PendingApproval,
    Running,
    Succeeded,
    Failed,
    Skipped,
    Rejected,
    Reverted,
}

/// One remediation decision on an incident.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemediationRecord {
    /// The policy that decided, `namespace/name` or the name of a cluster policy.
    pub policy: String,
    /// Action type.
    pub action: String,
    /// Index of the action in the policy's list.
    pub action_index: u32,
    /// What the action is aimed at, for example `Pod/web-7d9f/abc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// DryRun, PendingApproval, Running, Succeeded, Failed, Skipped, Rejected or Reverted.
    pub state: RemediationState,
    /// Why, in words a person understands.
    pub reason: String,
    /// When the decision was first recorded.
    pub decided_at: Time,
    /// When the state last changed.
    pub updated_at: Time,
    /// When a reversible action is undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// What is needed to undo the action (for example the replica count before ScaleToZero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<String>,
}
