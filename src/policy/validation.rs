//! Checks a policy's spec beyond what the schema can, and names the first bad field.

use super::selector;
use crate::crd::ClusterRemediationPolicySpec;
use crate::crd::{
    Action, ActionTarget, ActionType, FieldOperator, PolicyCommon, RemediationPolicySpec,
};
use std::time::Duration;

/// A spec that cannot be acted on; shown in the policy's `Ready` condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// Path of the bad field, like `spec.actions[1].expireAfter`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// What validation parsed, so the executor does not parse again.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checked {
    /// `maxActions` per `per`.
    pub rate_limit: Option<(u32, Duration)>,
    pub cooldown: Option<Duration>,
    /// `expireAfter` of each action, by index.
    pub expire_after: Vec<Option<Duration>>,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

fn duration(field: &str, text: &str) -> Result<Duration, Invalid> {
    let d = crate::cli::parse_duration(text).map_err(|m| invalid(field, m))?;
    if d.is_zero() {
        return Err(invalid(field, "must be longer than zero"));
    }
    Ok(d)
}

/// Validates a namespaced policy.
pub fn validate_namespaced(spec: &RemediationPolicySpec) -> Result<Checked, Invalid> {
    validate_common(&spec.common)
}

/// Validates a cluster policy, including its namespace selector.
pub fn validate_cluster(spec: &ClusterRemediationPolicySpec) -> Result<Checked, Invalid> {
    if let Some(sel) = &spec.namespace_selector {
        selector::validate(sel)
            .map_err(|e| invalid(format!("spec.namespaceSelector.{}", e.field), e.message))?;
    }
    if let Some(i) = spec.namespaces.iter().position(|n| n.trim().is_empty()) {
        return Err(invalid(
            format!("spec.namespaces[{i}]"),
            "must not be empty",
        ));
    }
    validate_common(&spec.common)
}

fn validate_common(spec: &PolicyCommon) -> Result<Checked, Invalid> {
    let m = &spec.match_;
    if let Some(i) = m.rules.iter().position(|r| r.trim().is_empty()) {
        return Err(invalid(
            format!("spec.match.rules[{i}]"),
            "must not be empty: give a rule name or a glob like \"Terminal shell*\"",
        ));
    }
    if let Some(i) = m.sources.iter().position(|s| s.trim().is_empty()) {
        return Err(invalid(
            format!("spec.match.sources[{i}]"),
            "must not be empty",
        ));
    }
    if let Some(sel) = &m.pod_selector {
        selector::validate(sel)
            .map_err(|e| invalid(format!("spec.match.podSelector.{}", e.field), e.message))?;
    }
    for (i, f) in m.output_fields.iter().enumerate() {
        let at = format!("spec.match.outputFields[{i}]");
        if f.field.trim().is_empty() {
            return Err(invalid(
                format!("{at}.field"),
                "must name an output field, like proc.name",
            ));
        }
        match f.operator {
            FieldOperator::In | FieldOperator::NotIn if f.values.is_empty() => {
                return Err(invalid(
                    format!("{at}.values"),
                    format!("operator {:?} needs at least one value", f.operator),
                ));
            }
            FieldOperator::Exists | FieldOperator::DoesNotExist if !f.values.is_empty() => {
                return Err(invalid(
                    format!("{at}.values"),
                    format!("operator {:?} takes no values", f.operator),
                ));
            }
            _ => {}
        }
    }
    if m.min_count == Some(0) {
        return Err(invalid(
            "spec.match.minCount",
            "must be at least 1 (leave it out to act on the first alert)",
        ));
    }
    if spec.actions.is_empty() {
        return Err(invalid("spec.actions", "must list at least one action"));
    }
    let rate_limit = match &spec.rate_limit {
        None => None,
        Some(r) => {
            if r.max_actions == 0 {
                return Err(invalid(
                    "spec.rateLimit.maxActions",
                    "must be at least 1 (use mode: DryRun to act never)",
                ));
            }
            Some((r.max_actions, duration("spec.rateLimit.per", &r.per)?))
        }
    };
    let cooldown = spec
        .cooldown
        .as_deref()
        .map(|c| duration("spec.cooldown", c))
        .transpose()?;
    let mut expire_after = Vec::with_capacity(spec.actions.len());
    for (i, action) in spec.actions.iter().enumerate() {
        expire_after.push(validate_action(&format!("spec.actions[{i}]"), action)?);
    }
    Ok(Checked {
        rate_limit,
        cooldown,
        expire_after,
    })
}

/// True for the actions `expireAfter` and the revert annotation can undo.
pub fn reversible(t: ActionType) -> bool {
    matches!(
        t,
        ActionType::Label
            | ActionType::Annotate
            | ActionType::Isolate
            | ActionType::ScaleToZero
            | ActionType::CordonNode
    )
}

/// True for the actions that count against the cluster-wide destructive budget.
pub fn destructive(t: ActionType) -> bool {
    matches!(
        t,
        ActionType::DeletePod | ActionType::ScaleToZero | ActionType::CordonNode
    )
}

fn validate_action(at: &str, a: &Action) -> Result<Option<Duration>, Invalid> {
    let t = a.type_;
    let only = |present: bool, field: &str, allowed: &str| {
        if present {
            Err(invalid(
                format!("{at}.{field}"),
                format!("is not a parameter of {t:?}; it applies to {allowed} only"),
            ))
        } else {
            Ok(())
        }
    };
    let is = |types: &[ActionType]| types.contains(&t);
    only(
        a.target.is_some() && !is(&[ActionType::Label, ActionType::Annotate]),
        "target",
        "Label and Annotate",
    )?;
    only(
        !a.labels.is_empty() && t != ActionType::Label,
        "labels",
        "Label",
    )?;
    only(
        !a.annotations.is_empty() && t != ActionType::Annotate,
        "annotations",
        "Annotate",
    )?;
    only(
        (a.ingress.is_some() || a.egress.is_some() || a.allow_dns.is_some())
            && t != ActionType::Isolate,
        "ingress",
        "Isolate (ingress, egress, allowDNS)",
    )?;
    only(
        a.grace_period_seconds.is_some() && t != ActionType::DeletePod,
        "gracePeriodSeconds",
        "DeletePod",
    )?;
    only(
        a.include_unmanaged.is_some() && !is(&[ActionType::DeletePod, ActionType::ScaleToZero]),
        "includeUnmanaged",
        "DeletePod and ScaleToZero",
    )?;
    only(
        (a.secret_ref.is_some() || a.format.is_some()) && t != ActionType::Notify,
        "secretRef",
        "Notify (secretRef, format)",
    )?;
    only(
        a.expire_after.is_some() && !reversible(t),
        "expireAfter",
        "the reversible actions Label, Annotate, Isolate, ScaleToZero and CordonNode",
    )?;
    match t {
        ActionType::Label => {
            if a.labels.is_empty() {
                return Err(invalid(
                    format!("{at}.labels"),
                    "Label needs at least one label to set",
                ));
            }
            for (k, v) in &a.labels {
                check_key(&format!("{at}.labels"), k)?;
                if !valid_label_value(v) {
                    return Err(invalid(
                        format!("{at}.labels[{k}]"),
                        format!(
                            "{v:?} is not a label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
                        ),
                    ));
                }
            }
        }
        ActionType::Annotate => {
            if a.annotations.is_empty() {
                return Err(invalid(
                    format!("{at}.annotations"),
                    "Annotate needs at least one annotation to set",
                ));
            }
            for k in a.annotations.keys() {
                check_key(&format!("{at}.annotations"), k)?;
            }
        }
        ActionType::Isolate => {
            if !a.ingress.unwrap_or(true) && !a.egress.unwrap_or(true) {
                return Err(invalid(
                    format!("{at}.ingress"),
                    "Isolate with ingress: false and egress: false denies nothing: set one to true",
                ));
            }
        }
        ActionType::DeletePod => {
            if a.grace_period_seconds.is_some_and(|g| g < 0) {
                return Err(invalid(
                    format!("{at}.gracePeriodSeconds"),
                    "must be 0 or more",
                ));
            }
        }
        ActionType::Notify => match &a.secret_ref {
            None => {
                return Err(invalid(
                    format!("{at}.secretRef"),
                    "Notify needs the Secret that holds the webhook URL: secretRef: {name: ..., key: url}",
                ));
            }
            Some(s) if s.name.trim().is_empty() => {
                return Err(invalid(format!("{at}.secretRef.name"), "must not be empty"));
            }
            Some(_) => {}
        },
        ActionType::ScaleToZero | ActionType::CordonNode => {}
    }
    if a.target == Some(ActionTarget::Node) && !is(&[ActionType::Label, ActionType::Annotate]) {
        return Err(invalid(
            format!("{at}.target"),
            "only Label and Annotate take a target",
        ));
    }
    a.expire_after
        .as_deref()
        .map(|e| duration(&format!("{at}.expireAfter"), e))
        .transpose()
}

fn check_key(at: &str, key: &str) -> Result<(), Invalid> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    });
    if !prefix_ok || !valid_label_value(name) || name.is_empty() {
        return Err(invalid(
            format!("{at}[{key}]"),
            "is not a valid key: an optional DNS prefix and '/', then at most 63 letters, digits, '-', '_' or '.'",
        ));
    }
    Ok(())
}

fn valid_label_value(v: &str) -> bool {
    v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && v.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && v.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{RateLimit, SecretKeyRef};
    use std::collections::BTreeMap;

    fn action(t: ActionType) -> Action {
        Action {
            type_: t,
            target: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            ingress: None,
            egress: None,
            allow_dns: None,
            grace_period_seconds: None,
            include_unmanaged: None,
            secret_ref: None,
            format: None,
            expire_after: None,
        }
    }

    fn spec(actions: Vec<Action>) -> RemediationPolicySpec {
        RemediationPolicySpec {
            common: PolicyCommon {
                actions,
                ..Default::default()
            },
        }
    }

    fn label(k: &str, v: &str) -> Action {
        let mut a = action(ActionType::Label);
        a.labels.insert(k.into(), v.into());
        a
    }

    #[test]
    fn a_sound_policy_parses_its_durations() {
        let mut a = label("quarantine", "true");
        a.expire_after = Some("3s".into());
        let mut s = spec(vec![a, action(ActionType::DeletePod)]);
        s.common.rate_limit = Some(RateLimit {
            max_actions: 3,
            per: "1m".into(),
        });
        s.common.cooldown = Some("10m".into());
        let checked = validate_namespaced(&s).unwrap();
        assert_eq!(checked.rate_limit, Some((3, Duration::from_secs(60))));
        assert_eq!(checked.cooldown, Some(Duration::from_secs(600)));
        assert_eq!(
            checked.expire_after,
            vec![Some(Duration::from_secs(3)), None]
        );
    }

    #[test]
    fn an_unreadable_expiry_names_the_action_and_field() {
        let mut a = label("quarantine", "true");
        a.expire_after = Some("soon".into());
        let err = validate_namespaced(&spec(vec![action(ActionType::DeletePod), a])).unwrap_err();
        assert_eq!(err.field, "spec.actions[1].expireAfter");
        assert!(err.message.contains("not a duration"), "{err}");
    }

    #[test]
    fn an_expiry_on_an_irreversible_action_is_refused() {
        let mut a = action(ActionType::DeletePod);
        a.expire_after = Some("1m".into());
        let err = validate_namespaced(&spec(vec![a])).unwrap_err();
        assert_eq!(err.field, "spec.actions[0].expireAfter");
    }

    #[test]
    fn missing_parameters_are_named() {
        assert_eq!(
            validate_namespaced(&spec(vec![action(ActionType::Notify)]))
                .unwrap_err()
                .field,
            "spec.actions[0].secretRef"
        );
        assert_eq!(
            validate_namespaced(&spec(vec![action(ActionType::Label)]))
                .unwrap_err()
                .field,
            "spec.actions[0].labels"
        );
        assert_eq!(
            validate_namespaced(&spec(vec![])).unwrap_err().field,
            "spec.actions"
        );
        let mut n = action(ActionType::Notify);
        n.secret_ref = Some(SecretKeyRef {
            name: "hook".into(),
            key: None,
        });
        assert!(validate_namespaced(&spec(vec![n])).is_ok());
    }

    #[test]
    fn bad_label_values_and_zero_limits_are_refused() {
        let err = validate_namespaced(&spec(vec![label("quarantine", "yes please")])).unwrap_err();
        assert_eq!(err.field, "spec.actions[0].labels[quarantine]");
        let mut s = spec(vec![label("q", "1")]);
        s.common.rate_limit = Some(RateLimit {
            max_actions: 0,
            per: "1m".into(),
        });
        assert_eq!(
            validate_namespaced(&s).unwrap_err().field,
            "spec.rateLimit.maxActions"
        );
    }
}
