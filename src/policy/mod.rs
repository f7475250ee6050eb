//! Remediation policies, without IO: which policy answers which incident
//! (matching), whether a policy is usable (validation), whether the target of
//! an action is the one the alert is about (verification), and what a
//! policy's status says.

pub mod glob;
pub mod matching;
pub mod selector;
pub mod validation;
pub mod verify;

use crate::crd::{
    AlertReport, ClusterRemediationPolicy, PolicyCommon, RemediationPolicy,
    RemediationPolicyStatus, RemediationState,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
pub use matching::{Incident, NoMatch, Scope, match_incident, may_match_alert};
pub use validation::{Checked, Invalid};

/// Condition type: the policy is valid and in force.
pub const CONDITION_READY: &str = "Ready";
/// Condition type: the circuit breaker holds every policy in DryRun.
pub const CONDITION_CIRCUIT_BREAKER: &str = "CircuitBreakerOpen";

/// Either kind of policy, as the remediation needs it.
#[derive(Clone, Debug)]
pub struct PolicyView {
    /// `namespace/name` for a RemediationPolicy, `name` for a cluster policy:
    /// the `policy` of the records it makes.
    pub id: String,
    pub name: String,
    /// Namespace of a RemediationPolicy.
    pub namespace: Option<String>,
    pub scope: Scope,
    pub generation: Option<i64>,
    pub spec: PolicyCommon,
    pub checked: Result<Checked, Invalid>,
    pub status: Option<RemediationPolicyStatus>,
}

impl PolicyView {
    pub fn namespaced(p: &RemediationPolicy) -> Option<PolicyView> {
        let name = p.metadata.name.clone()?;
        let namespace = p.metadata.namespace.clone()?;
        Some(PolicyView {
            id: format!("{namespace}/{name}"),
            name,
            scope: Scope::Namespace(namespace.clone()),
            namespace: Some(namespace),
            generation: p.metadata.generation,
            spec: p.spec.common.clone(),
            checked: validation::validate_namespaced(&p.spec),
            status: p.status.clone(),
        })
    }

    pub fn cluster(p: &ClusterRemediationPolicy) -> Option<PolicyView> {
        let name = p.metadata.name.clone()?;
        Some(PolicyView {
            id: name.clone(),
            name,
            namespace: None,
            scope: Scope::Cluster {
                namespaces: p.spec.namespaces.clone(),
                selector: p.spec.namespace_selector.clone(),
            },
            generation: p.metadata.generation,
            spec: p.spec.common.clone(),
            checked: validation::validate_cluster(&p.spec),
            status: p.status.clone(),
        })
    }

    /// True when the policy is valid (invalid policies do nothing).
    pub fn is_ready(&self) -> bool {
        self.checked.is_ok()
    }
}

/// The status a policy should have: validity, whether the circuit breaker
/// holds it, and counts derived from the records on `reports` (so every
/// replica computes the same numbers). Conditions keep their
/// `lastTransitionTime` when their status did not change.
pub fn policy_status(
    policy: &PolicyView,
    reports: &[AlertReport],
    breaker_open: Option<&str>,
    now: &Time,
) -> RemediationPolicyStatus {
    let previous = policy
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let ready = match &policy.checked {
        Ok(_) => condition(
            previous,
            CONDITION_READY,
            true,
            "Valid",
            match policy.spec.mode {
                crate::crd::PolicyMode::DryRun => {
                    "the policy is valid and in DryRun: it records what it would do and changes nothing".to_string()
                }
                crate::crd::PolicyMode::Enforce => {
                    "the policy is valid and enforced".to_string()
                }
            },
            policy.generation,
            now,
        ),
        Err(invalid) => condition(
            previous,
            CONDITION_READY,
            false,
            "Invalid",
            format!("{invalid}"),
            policy.generation,
            now,
        ),
    };
    let mut conditions = vec![ready];
    if let Some(reason) = breaker_open {
        conditions.push(condition(
            previous,
            CONDITION_CIRCUIT_BREAKER,
            true,
            "TooManyActions",
            reason.to_string(),
            policy.generation,
            now,
        ));
    }
    let mut matched = 0;
    let mut taken = 0;
    let mut last: Option<Time> = None;
    for report in reports {
        let records = report
            .status
            .as_ref()
            .map(|s| s.remediations.as_slice())
            .unwrap_or_default();
        let mine: Vec<_> = records.iter().filter(|r| r.policy == policy.id).collect();
        if mine.is_empty() {
            continue;
        }
        matched += 1;
        taken += mine
            .iter()
            .filter(|r| {
                matches!(
                    r.state,
                    RemediationState::Succeeded | RemediationState::Reverted
                )
            })
            .count() as u64;
        for r in mine {
            if last.as_ref().is_none_or(|l| l.0 < r.decided_at.0) {
                last = Some(r.decided_at.clone());
            }
        }
    }
    RemediationPolicyStatus {
        conditions,
        observed_generation: policy.generation,
        matched_reports: matched,
        actions_taken: taken,
        last_triggered: last,
    }
}

/// A condition, keeping the previous `lastTransitionTime` when the status is unchanged.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// True when two statuses differ in more than timestamps.
pub fn status_changed(a: Option<&RemediationPolicyStatus>, b: &RemediationPolicyStatus) -> bool {
    let Some(a) = a else { return true };
    let strip = |s: &RemediationPolicyStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(jiff::Timestamp::UNIX_EPOCH);
        }
        s
    };
    strip(a) != strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Action, ActionType, RemediationPolicySpec};

    fn policy(actions: Vec<Action>) -> RemediationPolicy {
        let mut p = RemediationPolicy::new(
            "quarantine",
            RemediationPolicySpec {
                common: PolicyCommon {
                    actions,
                    ..Default::default()
                },
            },
        );
        p.metadata.namespace = Some("shop".into());
        p.metadata.generation = Some(2);
        p
    }

    #[test]
    fn an_invalid_policy_says_which_field_and_keeps_its_transition_time() {
        let view = PolicyView::namespaced(&policy(vec![])).unwrap();
        let t0 = Time(jiff::Timestamp::from_second(1_000).unwrap());
        let t1 = Time(jiff::Timestamp::from_second(2_000).unwrap());
        let status = policy_status(&view, &[], None, &t0);
        let ready = &status.conditions[0];
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason, "Invalid");
        assert!(
            ready.message.starts_with("spec.actions:"),
            "{}",
            ready.message
        );
        assert_eq!(status.observed_generation, Some(2));
        let mut view = view;
        view.status = Some(status.clone());
        let again = policy_status(&view, &[], None, &t1);
        assert_eq!(again.conditions[0].last_transition_time, t0);
        assert!(!status_changed(Some(&status), &again));
    }

    #[test]
    fn a_fixed_policy_becomes_ready() {
        let mut label = Action {
            type_: ActionType::DeletePod,
            target: None,
            labels: Default::default(),
            annotations: Default::default(),
            ingress: None,
            egress: None,
            allow_dns: None,
            grace_period_seconds: Some(0),
            include_unmanaged: None,
            secret_ref: None,
            format: None,
            expire_after: None,
        };
        let view = PolicyView::namespaced(&policy(vec![label.clone()])).unwrap();
        let status = policy_status(&view, &[], None, &Time(jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(status.conditions[0].status, "True");
        label.grace_period_seconds = Some(-1);
        let view = PolicyView::namespaced(&policy(vec![label])).unwrap();
        assert_eq!(view.id, "shop/quarantine");
        assert!(!view.is_ready());
    }
}
