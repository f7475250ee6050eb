//! Executing one action on a verified target, and undoing it.

use crate::analysis::manifests::{Inputs, isolation_policy};
use crate::crd::{Action, ActionTarget, ActionType, AlertReport, NotifyFormat};
use crate::policy::verify::VerifiedPod;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client, Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// What an action is aimed at, once verified.
#[derive(Clone, Debug)]
pub enum Target {
    Pod(VerifiedPod),
    Node(String),
    /// Notify: nothing in the cluster.
    Webhook,
}

impl Target {
    pub fn describe(&self) -> String {
        match self {
            Target::Pod(p) => format!("Pod/{}/{}", p.namespace, p.name),
            Target::Node(n) => format!("Node/{n}"),
            Target::Webhook => "Webhook".to_string(),
        }
    }
}

/// How to undo an action, kept in the record's `undo` as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Undo {
    /// Restore these labels or annotations (null: remove).
    PodMetadata {
        namespace: String,
        name: String,
        field: String,
        previous: BTreeMap<String, Option<String>>,
    },
    NodeMetadata {
        name: String,
        field: String,
        previous: BTreeMap<String, Option<String>>,
    },
    NetworkPolicy {
        namespace: String,
        name: String,
        /// A quarantine label put on the pod so the NetworkPolicy could select it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quarantined_pod: Option<String>,
    },
    Scale {
        workload: String,
        namespace: String,
        name: String,
        replicas: i32,
    },
    Uncordon {
        name: String,
        was_unschedulable: bool,
    },
}

/// Why an action or its undo failed. The record says so; nothing is retried
/// unless said.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("the API server refused {what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "the operator may not {what}: grant it in the operator's ClusterRole (see the chart's RBAC for remediation actions)"
    )]
    Forbidden { what: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("the webhook of Secret {secret}: {message}")]
    Webhook { secret: String, message: String },
}

fn api_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ActionError {
    let what = what.into();
    move |source| match &source {
        kube::Error::Api(s) if s.is_forbidden() => ActionError::Forbidden { what },
        _ => ActionError::Api { what, source },
    }
}

/// What a successful action did.
#[derive(Clone, Debug)]
pub struct Done {
    pub reason: String,
    pub target: String,
    pub undo: Option<Undo>,
}

fn apply() -> PatchParams {
    PatchParams::apply(crate::FIELD_MANAGER).force()
}

/// An owner reference making `report` the owner of what an action creates.
pub fn owned_by(report: &AlertReport) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: AlertReport::api_version(&()).to_string(),
        kind: AlertReport::kind(&()).to_string(),
        name: report.metadata.name.clone()?,
        uid: report.metadata.uid.clone()?,
        controller: Some(false),
        block_owner_deletion: None,
    })
}

/// Runs `action` against `target`.
pub async fn execute(
    client: &Client,
    action: &Action,
    report: &AlertReport,
    target: &Target,
    pod: Option<&Pod>,
    policy: &str,
    secret_namespace: &str,
) -> Result<Done, ActionError> {
    match (action.type_, target) {
        (ActionType::Label | ActionType::Annotate, Target::Pod(p)) => {
            let (field, values) = metadata_of(action);
            let api: Api<Pod> = Api::namespaced(client.clone(), &p.namespace);
            let current = pod.map(|pod| current_values(pod.meta(), field, &values));
            let previous = current.unwrap_or_default();
            api.patch(
                &p.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {field: values}})),
            )
            .await
            .map_err(api_error(format!("patch pod {}/{}", p.namespace, p.name)))?;
            Ok(Done {
                reason: format!("set {field} {} on the pod", pairs(&values)),
                target: target.describe(),
                undo: Some(Undo::PodMetadata {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    field: field.to_string(),
                    previous,
                }),
            })
        }
        (ActionType::Label | ActionType::Annotate | ActionType::CordonNode, Target::Node(n)) => {
            let api: Api<Node> = Api::all(client.clone());
            let node = api
                .get(n)
                .await
                .map_err(api_error(format!("read node {n}")))?;
            if action.type_ == ActionType::CordonNode {
                let was = node
                    .spec
                    .as_ref()
                    .and_then(|s| s.unschedulable)
                    .unwrap_or(false);
                api.patch(
                    n,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"unschedulable": true}})),
                )
                .await
                .map_err(api_error(format!("cordon node {n}")))?;
                return Ok(Done {
                    reason: if was {
                        format!("node {n} was already cordoned")
                    } else {
                        format!("cordoned node {n}: no new pods are scheduled there")
                    },
                    target: target.describe(),
                    undo: Some(Undo::Uncordon {
                        name: n.clone(),
                        was_unschedulable: was,
                    }),
                });
            }
            let (field, values) = metadata_of(action);
            let previous = current_values(node.meta(), field, &values);
            api.patch(
                n,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {field: values}})),
            )
            .await
            .map_err(api_error(format!("patch node {n}")))?;
            Ok(Done {
                reason: format!("set {field} {} on node {n}", pairs(&values)),
                target: target.describe(),
                undo: Some(Undo::NodeMetadata {
                    name: n.clone(),
                    field: field.to_string(),
                    previous,
                }),
            })
        }
        (ActionType::Isolate, Target::Pod(p)) => isolate(client, action, report, p, pod).await,
        (ActionType::DeletePod, Target::Pod(p)) => {
            let api: Api<Pod> = Api::namespaced(client.clone(), &p.namespace);
            let params = DeleteParams {
                grace_period_seconds: action
                    .grace_period_seconds
                    .and_then(|g| u32::try_from(g).ok()),
                preconditions: Some(Preconditions {
                    uid: Some(p.uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            api.delete(&p.name, &params)
                .await
                .map_err(api_error(format!("delete pod {}/{}", p.namespace, p.name)))?;
            Ok(Done {
                reason: format!(
                    "deleted pod {}/{} (UID {}); its controller replaces it",
                    p.namespace, p.name, p.uid
                ),
                target: target.describe(),
                undo: None,
            })
        }
        (ActionType::ScaleToZero, Target::Pod(p)) => scale_to_zero(client, p).await,
        (ActionType::Notify, _) => {
            super::notify::send(client, action, report, policy, secret_namespace).await
        }
        (t, target) => Err(ActionError::Unsupported(format!(
            "{t:?} cannot act on {}",
            target.describe()
        ))),
    }
}

fn metadata_of(action: &Action) -> (&'static str, BTreeMap<String, String>) {
    if action.type_ == ActionType::Label {
        ("labels", action.labels.clone())
    } else {
        ("annotations", action.annotations.clone())
    }
}

fn current_values(
    meta: &kube::api::ObjectMeta,
    field: &str,
    values: &BTreeMap<String, String>,
) -> BTreeMap<String, Option<String>> {
    let current = if field == "labels" {
        meta.labels.as_ref()
    } else {
        meta.annotations.as_ref()
    };
    values
        .keys()
        .map(|k| (k.clone(), current.and_then(|c| c.get(k).cloned())))
        .collect()
}

fn pairs(values: &BTreeMap<String, String>) -> String {
    values
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// True when `action` acts on the pod's node rather than the pod.
pub fn on_node(action: &Action) -> bool {
    action.type_ == ActionType::CordonNode || action.target == Some(ActionTarget::Node)
}

async fn isolate(
    client: &Client,
    action: &Action,
    report: &AlertReport,
    p: &VerifiedPod,
    pod: Option<&Pod>,
) -> Result<Done, ActionError> {
    let context =
        pod.map(|pod| crate::cluster::pod_context(pod, report.spec.subject.workload.clone()));
    let inputs = Inputs {
        subject: &report.spec.subject,
        pod: context.as_ref(),
        fields: &report.spec.event.output_fields,
    };
    let (mut policy, quarantine) = isolation_policy(
        &inputs,
        action.ingress.unwrap_or(true),
        action.egress.unwrap_or(true),
        action.allow_dns.unwrap_or(false),
    )
    .ok_or_else(|| ActionError::Unsupported("the alert names no namespace to isolate in".into()))?;
    if let Some((key, value)) = &quarantine {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &p.namespace);
        pods.patch(
            &p.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {key: value}}})),
        )
        .await
        .map_err(api_error(format!("label pod {}/{}", p.namespace, p.name)))?;
    }
    policy.metadata.owner_references = owned_by(report).map(|o| vec![o]);
    let name = policy.name_any();
    let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &p.namespace);
    api.patch(&name, &apply(), &Patch::Apply(&policy))
        .await
        .map_err(api_error(format!(
            "apply NetworkPolicy {}/{name}",
            p.namespace
        )))?;
    let selector = policy
        .spec
        .as_ref()
        .and_then(|s| s.pod_selector.as_ref())
        .and_then(|s| s.match_labels.as_ref())
        .map(pairs)
        .unwrap_or_default();
    Ok(Done {
        reason: format!(
            "NetworkPolicy {}/{name} isolates the pods selected by {selector}",
            p.namespace
        ),
        target: format!("NetworkPolicy/{}/{name}", p.namespace),
        undo: Some(Undo::NetworkPolicy {
            namespace: p.namespace.clone(),
            name,
            quarantined_pod: quarantine.map(|_| p.name.clone()),
        }),
    })
}

/// The Deployment, StatefulSet or ReplicaSet that runs the pod.
async fn scalable_owner(
    client: &Client,
    p: &VerifiedPod,
) -> Result<(&'static str, String), ActionError> {
    match p.owner.as_ref().map(|(k, n)| (k.as_str(), n.clone())) {
        Some(("ReplicaSet", rs)) => {
            let api: Api<ReplicaSet> = Api::namespaced(client.clone(), &p.namespace);
            let set = api
                .get(&rs)
                .await
                .map_err(api_error(format!("read ReplicaSet {}/{rs}", p.namespace)))?;
            let deployment = set
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true) && o.kind == "Deployment")
                .map(|o| o.name.clone());
            Ok(match deployment {
                Some(d) => ("Deployment", d),
                None => ("ReplicaSet", rs),
            })
        }
        Some(("StatefulSet", s)) => Ok(("StatefulSet", s)),
        other => Err(ActionError::Unsupported(format!(
            "pod {}/{} has no Deployment, StatefulSet or ReplicaSet to scale (owner: {})",
            p.namespace,
            p.name,
            other.map_or("none".to_string(), |(k, n)| format!("{k} {n}"))
        ))),
    }
}

async fn scale_to_zero(client: &Client, p: &VerifiedPod) -> Result<Done, ActionError> {
    let (kind, name) = scalable_owner(client, p).await?;
    let ns = &p.namespace;
    let what = format!("scale {kind} {ns}/{name}");
    let zero = Patch::Merge(json!({"spec": {"replicas": 0}}));
    let pp = PatchParams::default();
    let replicas = match kind {
        "Deployment" => {
            let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
            let before = api
                .get_scale(&name)
                .await
                .map_err(api_error(what.clone()))?;
            api.patch_scale(&name, &pp, &zero)
                .await
                .map_err(api_error(what))?;
            before.spec.and_then(|s| s.replicas)
        }
        "StatefulSet" => {
            let api: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
            let before = api
                .get_scale(&name)
                .await
                .map_err(api_error(what.clone()))?;
            api.patch_scale(&name, &pp, &zero)
                .await
                .map_err(api_error(what))?;
            before.spec.and_then(|s| s.replicas)
        }
        _ => {
            let api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
            let before = api
                .get_scale(&name)
                .await
                .map_err(api_error(what.clone()))?;
            api.patch_scale(&name, &pp, &zero)
                .await
                .map_err(api_error(what))?;
            before.spec.and_then(|s| s.replicas)
        }
    }
    .unwrap_or(1);
    Ok(Done {
        reason: format!("scaled {kind} {ns}/{name} from {replicas} replicas to 0"),
        target: format!("{kind}/{ns}/{name}"),
        undo: Some(Undo::Scale {
            workload: kind.to_string(),
            namespace: ns.clone(),
            name,
            replicas,
        }),
    })
}

/// Undoes an action; returns what was done.
pub async fn revert(client: &Client, undo: &Undo) -> Result<String, ActionError> {
    let restore = |field: &str, previous: &BTreeMap<String, Option<String>>| {
        let values: serde_json::Map<String, Value> = previous
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().map_or(Value::Null, Value::String)))
            .collect();
        Patch::Merge(json!({"metadata": {field: values}}))
    };
    match undo {
        Undo::PodMetadata {
            namespace,
            name,
            field,
            previous,
        } => {
            let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
            match api
                .patch(name, &PatchParams::default(), &restore(field, previous))
                .await
            {
                Ok(_) => Ok(format!("restored the pod's {field}")),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(format!(
                    "pod {namespace}/{name} is gone: nothing to restore"
                )),
                Err(e) => Err(api_error(format!("patch pod {namespace}/{name}"))(e)),
            }
        }
        Undo::NodeMetadata {
            name,
            field,
            previous,
        } => {
            let api: Api<Node> = Api::all(client.clone());
            api.patch(name, &PatchParams::default(), &restore(field, previous))
                .await
                .map_err(api_error(format!("patch node {name}")))?;
            Ok(format!("restored the {field} of node {name}"))
        }
        Undo::NetworkPolicy {
            namespace,
            name,
            quarantined_pod,
        } => {
            let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), namespace);
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    return Err(api_error(format!(
                        "delete NetworkPolicy {namespace}/{name}"
                    ))(e));
                }
            }
            if let Some(pod) = quarantined_pod {
                let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
                let remove = Patch::Merge(
                    json!({"metadata": {"labels": {crate::analysis::manifests::QUARANTINE_LABEL: null}}}),
                );
                if let Err(error) = pods.patch(pod, &PatchParams::default(), &remove).await {
                    tracing::debug!(%error, pod, "the quarantine label could not be removed");
                }
            }
            Ok(format!("deleted NetworkPolicy {namespace}/{name}"))
        }
        Undo::Scale {
            workload,
            namespace,
            name,
            replicas,
        } => {
            let what = format!("scale {workload} {namespace}/{name}");
            let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
            let pp = PatchParams::default();
            match workload.as_str() {
                "Deployment" => {
                    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
                    api.patch_scale(name, &pp, &patch).await.map(|_| ())
                }
                "StatefulSet" => {
                    let api: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
                    api.patch_scale(name, &pp, &patch).await.map(|_| ())
                }
                _ => {
                    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
                    api.patch_scale(name, &pp, &patch).await.map(|_| ())
                }
            }
            .map_err(api_error(what))?;
            Ok(format!(
                "restored {workload} {namespace}/{name} to {replicas} replicas"
            ))
        }
        Undo::Uncordon {
            name,
            was_unschedulable,
        } => {
            if *was_unschedulable {
                return Ok(format!("node {name} was cordoned before: left cordoned"));
            }
            let api: Api<Node> = Api::all(client.clone());
            api.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"unschedulable": null}})),
            )
            .await
            .map_err(api_error(format!("uncordon node {name}")))?;
            Ok(format!("uncordoned node {name}"))
        }
    }
}

/// Reads the webhook URL of a Notify action.
pub async fn webhook_url(
    client: &Client,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<String, ActionError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = api
        .get(name)
        .await
        .map_err(api_error(format!("read Secret {namespace}/{name}")))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.clone().into_bytes())
        })
        .ok_or_else(|| ActionError::Webhook {
            secret: format!("{namespace}/{name}"),
            message: format!("it has no key {key:?}: put the webhook URL under that key"),
        })?;
    Ok(String::from_utf8_lossy(&bytes).trim().to_string())
}

/// The `format` of a Notify action.
pub fn notify_format(action: &Action) -> NotifyFormat {
    action.format.unwrap_or(NotifyFormat::Json)
}
