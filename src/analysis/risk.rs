//! Severity and risk score: the Falco priority, adjusted by what the cluster tells.

use super::context::Context;
use crate::crd::{Priority, Severity, Subject};

/// Namespaces where any incident weighs more: the control plane's own.
const CONTROL_PLANE_NAMESPACES: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];

/// Capabilities that make a container escape or a node takeover easy.
const DANGEROUS_CAPABILITIES: &[&str] = &[
    "SYS_ADMIN",
    "SYS_PTRACE",
    "SYS_MODULE",
    "DAC_READ_SEARCH",
    "NET_ADMIN",
    "SYS_RAWIO",
    "BPF",
    "PERFMON",
    "ALL",
];

/// The score, its severity, and why.
pub struct Risk {
    pub score: u8,
    pub severity: Severity,
    pub factors: Vec<String>,
}

fn base(priority: Priority) -> i32 {
    match priority {
        Priority::Emergency => 90,
        Priority::Alert => 85,
        Priority::Critical => 80,
        Priority::Error => 65,
        Priority::Warning => 50,
        Priority::Notice => 35,
        Priority::Informational => 15,
        Priority::Debug => 5,
    }
}

/// Scores an incident. Every adjustment is listed in `factors`.
pub fn assess(priority: Priority, subject: &Subject, ctx: &Context) -> Risk {
    let mut score = base(priority);
    let mut factors = vec![format!("Falco priority {priority}: base {score}")];
    let mut add = |points: i32, why: String| {
        score += points;
        factors.push(format!("{why}: {points:+}"));
    };

    if let Some(pod) = &ctx.pod {
        if pod.privileged {
            add(15, "privileged container".into());
        }
        let host: Vec<&str> = [
            (pod.host_pid, "hostPID"),
            (pod.host_network, "hostNetwork"),
            (pod.host_ipc, "hostIPC"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect();
        if !host.is_empty() {
            add(10, format!("host namespaces shared ({})", host.join(", ")));
        }
        let dangerous: Vec<&str> = pod
            .added_capabilities
            .iter()
            .map(String::as_str)
            .filter(|c| DANGEROUS_CAPABILITIES.contains(&c.trim_start_matches("CAP_")))
            .collect();
        if !dangerous.is_empty() {
            add(
                10,
                format!("dangerous capabilities added ({})", dangerous.join(", ")),
            );
        }
        if !pod.host_path_volumes.is_empty() {
            add(5, "hostPath volumes mounted".into());
        }
        if pod.internet_facing {
            add(5, "reachable from outside the cluster".into());
        }
    }
    let root_user = subject
        .user
        .as_ref()
        .is_some_and(|u| u.uid == Some(0) || u.name.as_deref() == Some("root"));
    if root_user || ctx.pod.as_ref().is_some_and(|p| p.runs_as_root) {
        add(5, "runs as root".into());
    }
    if let Some(ns) = subject.namespace.as_deref()
        && (CONTROL_PLANE_NAMESPACES.contains(&ns)
            || ctx.sensitive_namespaces.iter().any(|s| s == ns))
    {
        add(10, format!("sensitive namespace {ns}"));
    }
    if let Some(count) = ctx.occurrences.filter(|c| *c >= 10) {
        add(5, format!("repeated {count} times"));
    }
    match ctx.related.len() {
        0 => {}
        1 => add(10, "another incident on the same workload".into()),
        n => add(15, format!("{n} other incidents on the same workload")),
    }

    let score = score.clamp(0, 100) as u8;
    Risk {
        score,
        severity: severity_of(score),
        factors,
    }
}

/// Severity bands of the risk score.
pub fn severity_of(score: u8) -> Severity {
    match score {
        85.. => Severity::Critical,
        65..=84 => Severity::High,
        40..=64 => Severity::Medium,
        20..=39 => Severity::Low,
        _ => Severity::Info,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::context::PodContext;
    use crate::crd::UserInfo;

    #[test]
    fn a_notice_in_a_plain_pod_is_low() {
        let r = assess(Priority::Notice, &Subject::default(), &Context::default());
        assert_eq!(r.severity, Severity::Low);
    }

    #[test]
    fn a_privileged_root_pod_with_host_pid_raises_a_warning_to_critical() {
        let subject = Subject {
            user: Some(UserInfo {
                name: Some("root".into()),
                uid: Some(0),
            }),
            ..Subject::default()
        };
        let ctx = Context {
            pod: Some(PodContext {
                privileged: true,
                host_pid: true,
                ..PodContext::default()
            }),
            ..Context::default()
        };
        let r = assess(Priority::Warning, &subject, &ctx);
        assert_eq!(r.score, 80);
        assert_eq!(r.severity, Severity::High);
        assert!(r.factors.iter().any(|f| f.contains("privileged")));
        let ctx = Context {
            occurrences: Some(50),
            related: vec![],
            sensitive_namespaces: vec![],
            ..ctx
        };
        let subject = Subject {
            namespace: Some("kube-system".into()),
            ..subject
        };
        assert_eq!(
            assess(Priority::Warning, &subject, &ctx).severity,
            Severity::Critical
        );
    }

    #[test]
    fn scores_stay_within_0_and_100() {
        let ctx = Context {
            pod: Some(PodContext {
                privileged: true,
                host_pid: true,
                host_network: true,
                added_capabilities: vec!["SYS_ADMIN".into()],
                host_path_volumes: vec!["/".into()],
                internet_facing: true,
                runs_as_root: true,
                ..PodContext::default()
            }),
            occurrences: Some(1000),
            ..Context::default()
        };
        assert_eq!(
            assess(Priority::Emergency, &Subject::default(), &ctx).score,
            100
        );
    }
}
