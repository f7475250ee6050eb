//! Retention: reports expire a while after they were last seen, and caps per
//! namespace and per cluster evict the least severe, least recent first.

use super::ReportKey;
use super::cache::ReportCache;
use super::fingerprint::severity_of_priority;
use crate::crd::{AlertReport, RemediationState, Severity};
use crate::metrics::{Metrics, RequestReason};
use jiff::Timestamp;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::{Client, ResourceExt};
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long reports live and how many there may be.
#[derive(Clone, Debug)]
pub struct RetentionPolicy {
    /// After the last alert.
    pub ttl: Duration,
    /// After the last alert, when an action ran (a Succeeded remediation).
    pub ttl_remediated: Duration,
    pub max_per_namespace: usize,
    pub max_total: usize,
}

/// What retention needs to know of a report.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: ReportKey,
    pub resource_version: Option<String>,
    pub severity: Severity,
    pub last_seen: Timestamp,
    pub remediated: bool,
}

impl Entry {
    pub fn of(report: &AlertReport) -> Option<Entry> {
        let status = report.status.clone().unwrap_or_default();
        let last_seen = status
            .occurrences
            .as_ref()
            .map(|o| o.last_seen.0)
            .or_else(|| report.metadata.creation_timestamp.as_ref().map(|t| t.0))?;
        Some(Entry {
            key: ReportKey {
                namespace: report.namespace()?,
                name: report.name_any(),
            },
            resource_version: report.resource_version(),
            severity: status
                .analysis
                .as_ref()
                .map(|a| a.severity)
                .unwrap_or_else(|| severity_of_priority(report.spec.priority)),
            last_seen,
            remediated: status
                .remediations
                .iter()
                .any(|r| r.state == RemediationState::Succeeded),
        })
    }
}

/// Why a report goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Expired,
    NamespaceCap,
    ClusterCap,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Expired => "expired",
            Reason::NamespaceCap => "namespace_cap",
            Reason::ClusterCap => "cluster_cap",
        }
    }
}

/// The reports to delete now, and why. Pure.
pub fn plan(entries: &[Entry], now: Timestamp, policy: &RetentionPolicy) -> Vec<(Entry, Reason)> {
    let mut doomed = Vec::new();
    let mut kept = Vec::new();
    for e in entries {
        let ttl = if e.remediated {
            policy.ttl_remediated
        } else {
            policy.ttl
        };
        let age = now.duration_since(e.last_seen);
        if age.is_positive() && age.unsigned_abs() > ttl {
            doomed.push((e.clone(), Reason::Expired));
        } else {
            kept.push(e.clone());
        }
    }
    // Least severe first (Info sorts last in Severity), then least recent.
    let eviction_order = |a: &Entry, b: &Entry| {
        b.severity
            .cmp(&a.severity)
            .then(a.last_seen.cmp(&b.last_seen))
    };
    let mut by_namespace: HashMap<String, Vec<Entry>> = HashMap::new();
    for e in kept {
        by_namespace
            .entry(e.key.namespace.clone())
            .or_default()
            .push(e);
    }
    let mut kept = Vec::new();
    for (_, mut list) in by_namespace {
        if list.len() > policy.max_per_namespace {
            list.sort_by(eviction_order);
            let excess = list.len() - policy.max_per_namespace;
            doomed.extend(list.drain(..excess).map(|e| (e, Reason::NamespaceCap)));
        }
        kept.extend(list);
    }
    if kept.len() > policy.max_total {
        kept.sort_by(eviction_order);
        let excess = kept.len() - policy.max_total;
        doomed.extend(kept.drain(..excess).map(|e| (e, Reason::ClusterCap)));
    }
    doomed
}

/// Applies the retention policy every `interval` until `shutdown`.
pub async fn run(
    client: Client,
    reports: ReportCache,
    policy: RetentionPolicy,
    interval: Duration,
    metrics: Metrics,
    on_delete: impl Fn(&ReportKey) + Send,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let entries: Vec<Entry> = reports.all().iter().filter_map(Entry::of).collect();
        for (entry, reason) in plan(&entries, Timestamp::now(), &policy) {
            let api: Api<AlertReport> = Api::namespaced(client.clone(), &entry.key.namespace);
            // The precondition keeps a report that just got a new alert.
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: entry.resource_version.clone(),
                    uid: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&entry.key.name, &params).await {
                Ok(_) => {
                    tracing::info!(report = %entry.key, reason = reason.as_str(), "report removed by retention");
                    metrics
                        .reports_expired
                        .get_or_create(&RequestReason {
                            reason: reason.as_str(),
                        })
                        .inc();
                    metrics.write("delete", "ok");
                    on_delete(&entry.key);
                }
                Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => {
                    on_delete(&entry.key);
                }
                Err(error) => {
                    metrics.write("delete", "error");
                    tracing::warn!(report = %entry.key, %error, "cannot delete an expired report; retrying next round");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ns: &str, name: &str, severity: Severity, ago_secs: i64, remediated: bool) -> Entry {
        Entry {
            key: ReportKey {
                namespace: ns.into(),
                name: name.into(),
            },
            resource_version: None,
            severity,
            last_seen: Timestamp::from_second(1_000_000 - ago_secs).unwrap(),
            remediated,
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_000_000).unwrap()
    }

    fn policy() -> RetentionPolicy {
        RetentionPolicy {
            ttl: Duration::from_secs(100),
            ttl_remediated: Duration::from_secs(1000),
            max_per_namespace: 2,
            max_total: 3,
        }
    }

    fn names(plan: &[(Entry, Reason)]) -> Vec<(&str, Reason)> {
        plan.iter()
            .map(|(e, r)| (e.key.name.as_str(), *r))
            .collect()
    }

    #[test]
    fn reports_expire_after_their_ttl_and_remediated_ones_later() {
        let entries = [
            entry("a", "fresh", Severity::Low, 50, false),
            entry("a", "old", Severity::Critical, 150, false),
            entry("b", "acted-on", Severity::Low, 150, true),
        ];
        assert_eq!(
            names(&plan(&entries, now(), &policy())),
            vec![("old", Reason::Expired)]
        );
    }

    #[test]
    fn caps_evict_the_least_severe_then_least_recent() {
        let entries = [
            entry("a", "crit", Severity::Critical, 90, false),
            entry("a", "low-recent", Severity::Low, 1, false),
            entry("a", "low-older", Severity::Low, 10, false),
            entry("b", "info", Severity::Info, 1, false),
            entry("b", "high", Severity::High, 1, false),
        ];
        let p = plan(&entries, now(), &policy());
        assert_eq!(
            names(&p),
            vec![
                ("low-older", Reason::NamespaceCap),
                ("info", Reason::ClusterCap)
            ]
        );
    }
}
