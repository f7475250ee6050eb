//! Kubernetes manifests generated for one incident, built from the typed API
//! objects so that what we print is what the API server accepts.

use super::context::PodContext;
use crate::crd::Subject;
use crate::falco::is_dns_label;
use crate::knowledge::ManifestKind;
use crate::names::{label_value, object_name};
use k8s_openapi::api::admissionregistration::v1 as admission;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject as RbacSubject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Label put on a pod by hand when its workload's labels are not known, so
/// that a policy can select exactly that pod.
pub const QUARANTINE_LABEL: &str = "peregrine.dev/quarantine";

/// Labels that differ between pods of one workload, or between its revisions:
/// selecting on them would miss the workload's other pods.
const PER_POD_LABELS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "batch.kubernetes.io/job-completion-index",
];

/// A generated manifest, and the command that must run first (labelling the
/// pod) when the workload's labels were not known.
pub struct Generated {
    pub yaml: String,
    pub prerequisite: Option<String>,
}

/// Everything a generator may use.
pub struct Inputs<'a> {
    pub subject: &'a Subject,
    pub pod: Option<&'a PodContext>,
    pub fields: &'a Map<String, Value>,
}

/// Builds the manifest, or `None` when the alert does not say enough
/// (no namespace for a namespaced object, no user for a Role binding).
pub fn generate(kind: ManifestKind, inputs: &Inputs<'_>) -> Option<Generated> {
    match kind {
        ManifestKind::IsolateWorkload => network_policy(inputs, Isolation::All),
        ManifestKind::DenyEgress => network_policy(inputs, Isolation::EgressExceptDns),
        ManifestKind::PodSecurityRestricted => pod_security(inputs),
        ManifestKind::DenyPrivilegedPods => deny_privileged(inputs),
        ManifestKind::AuditReadonlyRole => readonly_role(inputs),
    }
}

enum Isolation {
    All,
    EgressExceptDns,
}

/// The selector of the workload's pods, and a labelling command when we have to make one.
fn workload_selector(inputs: &Inputs<'_>) -> Option<(BTreeMap<String, String>, Option<String>)> {
    let labels: BTreeMap<String, String> = inputs
        .pod
        .map(|p| {
            p.labels
                .iter()
                .filter(|(k, _)| !PER_POD_LABELS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    if !labels.is_empty() {
        return Some((labels, None));
    }
    let namespace = subject_namespace(inputs)?;
    let pod = inputs.subject.pod.as_deref()?;
    let value = label_value(pod);
    let command = format!(
        "kubectl -n {} label pod {} {QUARANTINE_LABEL}={}",
        super::render::quote(namespace),
        super::render::quote(pod),
        super::render::quote(&value),
    );
    Some((
        BTreeMap::from([(QUARANTINE_LABEL.to_string(), value)]),
        Some(command),
    ))
}

fn network_policy(inputs: &Inputs<'_>, isolation: Isolation) -> Option<Generated> {
    let namespace = subject_namespace(inputs)?.to_string();
    let (match_labels, prerequisite) = workload_selector(inputs)?;
    let base = workload_name(inputs).unwrap_or("pod");
    let (suffix, spec) = match isolation {
        Isolation::All => (
            "isolate",
            NetworkPolicySpec {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(match_labels),
                    ..Default::default()
                }),
                policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
                ingress: Some(vec![]),
                egress: Some(vec![]),
            },
        ),
        Isolation::EgressExceptDns => (
            "deny-egress",
            NetworkPolicySpec {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(match_labels),
                    ..Default::default()
                }),
                policy_types: Some(vec!["Egress".into()]),
                egress: Some(vec![NetworkPolicyEgressRule {
                    ports: Some(
                        ["UDP", "TCP"]
                            .iter()
                            .map(|proto| NetworkPolicyPort {
                                port: Some(IntOrString::Int(53)),
                                protocol: Some((*proto).into()),
                                ..Default::default()
                            })
                            .collect(),
                    ),
                    to: None,
                }]),
                ingress: None,
            },
        ),
    };
    let policy = NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(object_name(&format!("peregrine-{suffix}"), base)),
            namespace: Some(namespace),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "peregrine".to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(spec),
    };
    Some(Generated {
        yaml: to_yaml(&[&policy])?,
        prerequisite,
    })
}

/// The NetworkPolicy that isolates the incident's workload, as an object:
/// what the `Isolate` remediation applies. It selects the workload's pods by
/// their shared labels (the per-pod ones left out); the second value is the
/// quarantine label to put on the pod first when it has no labels.
pub fn isolation_policy(
    inputs: &Inputs<'_>,
    ingress: bool,
    egress: bool,
    allow_dns: bool,
) -> Option<(NetworkPolicy, Option<(String, String)>)> {
    let namespace = subject_namespace(inputs)?.to_string();
    let (match_labels, prerequisite) = workload_selector(inputs)?;
    let quarantine = prerequisite.and_then(|_| {
        match_labels
            .get(QUARANTINE_LABEL)
            .map(|v| (QUARANTINE_LABEL.to_string(), v.clone()))
    });
    let base = workload_name(inputs).unwrap_or("pod");
    let mut types = Vec::new();
    if ingress {
        types.push("Ingress".to_string());
    }
    if egress {
        types.push("Egress".to_string());
    }
    let dns = NetworkPolicyEgressRule {
        ports: Some(
            ["UDP", "TCP"]
                .iter()
                .map(|proto| NetworkPolicyPort {
                    port: Some(IntOrString::Int(53)),
                    protocol: Some((*proto).into()),
                    ..Default::default()
                })
                .collect(),
        ),
        to: None,
    };
    let policy = NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(object_name("peregrine-isolate", base)),
            namespace: Some(namespace),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "peregrine".to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(match_labels),
                ..Default::default()
            }),
            policy_types: Some(types),
            ingress: ingress.then(Vec::new),
            egress: egress.then(|| if allow_dns { vec![dns] } else { vec![] }),
        }),
    };
    Some((policy, quarantine))
}

fn pod_security(inputs: &Inputs<'_>) -> Option<Generated> {
    let namespace = subject_namespace(inputs)
        .map(str::to_string)
        .or_else(|| field(inputs, "ka.target.namespace"))
        .filter(|ns| is_dns_label(ns))?;
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(namespace),
            labels: Some(BTreeMap::from([
                (
                    "pod-security.kubernetes.io/enforce".to_string(),
                    "restricted".to_string(),
                ),
                (
                    "pod-security.kubernetes.io/enforce-version".to_string(),
                    "latest".to_string(),
                ),
                (
                    "pod-security.kubernetes.io/warn".to_string(),
                    "restricted".to_string(),
                ),
            ])),
            ..Default::default()
        },
        ..Default::default()
    };
    Some(Generated {
        yaml: to_yaml(&[&ns])?,
        prerequisite: None,
    })
}

fn deny_privileged(inputs: &Inputs<'_>) -> Option<Generated> {
    let namespace = subject_namespace(inputs)
        .map(str::to_string)
        .or_else(|| field(inputs, "ka.target.namespace"))
        .filter(|ns| is_dns_label(ns))?;
    let name = object_name("peregrine-deny-privileged", &namespace);
    let all_containers = "object.spec.containers + (has(object.spec.initContainers) ? object.spec.initContainers : []) + (has(object.spec.ephemeralContainers) ? object.spec.ephemeralContainers : [])";
    let check = |expression: String, message: &str| admission::Validation {
        expression,
        message: Some(message.to_string()),
        ..Default::default()
    };
    let policy = admission::ValidatingAdmissionPolicy {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        spec: Some(admission::ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(admission::MatchResources {
                resource_rules: Some(vec![admission::NamedRuleWithOperations {
                    api_groups: Some(vec!["".into()]),
                    api_versions: Some(vec!["v1".into()]),
                    operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
                    resources: Some(vec!["pods".into()]),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            validations: Some(vec![
                check(
                    format!("({all_containers}).all(c, !has(c.securityContext) || !has(c.securityContext.privileged) || c.securityContext.privileged == false)"),
                    "privileged containers are not allowed in this namespace",
                ),
                check(
                    "!(has(object.spec.hostPID) && object.spec.hostPID) && !(has(object.spec.hostIPC) && object.spec.hostIPC) && !(has(object.spec.hostNetwork) && object.spec.hostNetwork)".into(),
                    "host namespaces (hostPID, hostIPC, hostNetwork) are not allowed in this namespace",
                ),
                check(
                    "!has(object.spec.volumes) || object.spec.volumes.all(v, !has(v.hostPath))".into(),
                    "hostPath volumes are not allowed in this namespace",
                ),
            ]),
            ..Default::default()
        }),
        status: None,
    };
    let binding = admission::ValidatingAdmissionPolicyBinding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        spec: admission::ValidatingAdmissionPolicyBindingSpec {
            policy_name: name,
            validation_actions: vec!["Deny".into()],
            match_resources: Some(admission::MatchResources {
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "kubernetes.io/metadata.name".to_string(),
                        namespace,
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    };
    Some(Generated {
        yaml: format!("{}---\n{}", to_yaml(&[&policy])?, to_yaml(&[&binding])?),
        prerequisite: None,
    })
}

fn readonly_role(inputs: &Inputs<'_>) -> Option<Generated> {
    let user = field(inputs, "ka.user.name")?;
    let namespace = field(inputs, "ka.target.namespace")
        .or_else(|| inputs.subject.namespace.clone())
        .filter(|ns| is_dns_label(ns))?;
    let name = object_name("peregrine-readonly", &user);
    let role = Role {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec!["".into()]),
                resources: Some(vec![
                    "pods".into(),
                    "pods/log".into(),
                    "services".into(),
                    "endpoints".into(),
                    "configmaps".into(),
                    "events".into(),
                ]),
                verbs: vec!["get".into(), "list".into(), "watch".into()],
                ..Default::default()
            },
            PolicyRule {
                api_groups: Some(vec!["apps".into(), "batch".into()]),
                resources: Some(vec![
                    "deployments".into(),
                    "replicasets".into(),
                    "statefulsets".into(),
                    "daemonsets".into(),
                    "jobs".into(),
                    "cronjobs".into(),
                ]),
                verbs: vec!["get".into(), "list".into(), "watch".into()],
                ..Default::default()
            },
        ]),
    };
    let subject = match user
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
        // Anything else is bound as the User it is named: the API server
        // authenticates a ServiceAccount as exactly that user name.
        .filter(|(ns, sa)| is_dns_label(ns) && is_dns_label(sa))
    {
        Some((ns, sa)) => RbacSubject {
            kind: "ServiceAccount".into(),
            name: sa.to_string(),
            namespace: Some(ns.to_string()),
            api_group: None,
        },
        None => RbacSubject {
            kind: "User".into(),
            name: user,
            namespace: None,
            api_group: Some("rbac.authorization.k8s.io".into()),
        },
    };
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name,
        },
        subjects: Some(vec![subject]),
    };
    Some(Generated {
        yaml: format!("{}---\n{}", to_yaml(&[&role])?, to_yaml(&[&binding])?),
        prerequisite: None,
    })
}

/// The incident's namespace, when it is one that can exist: a manifest for
/// any other (a forged or garbled alert) would only be refused.
fn subject_namespace<'a>(inputs: &'a Inputs<'_>) -> Option<&'a str> {
    inputs
        .subject
        .namespace
        .as_deref()
        .filter(|ns| is_dns_label(ns))
}

fn field(inputs: &Inputs<'_>, key: &str) -> Option<String> {
    inputs.fields.get(key).and_then(crate::falco::value_text)
}

fn workload_name<'a>(inputs: &'a Inputs<'_>) -> Option<&'a str> {
    inputs
        .subject
        .workload
        .as_ref()
        .map(|w| w.name.as_str())
        .or(inputs.subject.pod.as_deref())
}

fn to_yaml<T: serde::Serialize>(objects: &[&T]) -> Option<String> {
    let mut out = String::new();
    for object in objects {
        out.push_str(&serde_saphyr::to_string(object).ok()?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_dns_labels_whatever_the_input() {
        for base in [
            "web",
            "Web_App.v2",
            &"x".repeat(300),
            "--",
            "ünïcødé",
            "system:serviceaccount:a:b",
        ] {
            let name = object_name("peregrine-isolate", base);
            assert!(name.len() <= 63, "{name}");
            assert!(crate::falco::is_dns_label(&name), "{name}");
        }
        assert_eq!(
            object_name("peregrine-isolate", "web"),
            "peregrine-isolate-web"
        );
    }

    #[test]
    fn label_values_are_valid_and_distinct() {
        let a = label_value(&format!("{}a", "p".repeat(70)));
        let b = label_value(&format!("{}b", "p".repeat(70)));
        assert_ne!(a, b);
        for v in [
            a,
            b,
            label_value("-x-"),
            label_value("web-7d9f8b6c5d-x2k4q"),
        ] {
            assert!(
                v.len() <= 63
                    && v.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c)),
                "{v}"
            );
        }
    }
}
