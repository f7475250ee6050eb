//! Prometheus metrics, with bounded labels only (reasons, priorities,
//! operations: never object names). Served at `/metrics` on the health address.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// HTTP status code answered.
    pub code: u16,
    /// Why: `accepted`, `unauthorized`, `too_large`, `unsupported_media_type`, `not_json`...
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    pub priority: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// `queue_full`, `shed_for_higher_priority`, `not_written_before_shutdown`, `rejected_by_api`.
    pub reason: &'static str,
    pub priority: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// `create`, `status`, `delete`.
    pub operation: &'static str,
    /// `ok`, `conflict`, `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiWriteLabels {
    /// Kind written: `AlertReport`, `RemediationPolicy`, `Pod`, `NetworkPolicy`, `Event`...
    pub kind: &'static str,
    /// `create`, `apply`, `patch`, `status`, `delete`, `scale`.
    pub operation: &'static str,
    /// `ok`, `conflict`, `forbidden`, `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// Action family: `label`, `annotate`, `isolate`, `delete_pod`, `scale_to_zero`, `cordon_node`, `notify`.
    pub action: &'static str,
    /// `planned`, `dry_run`, `awaiting_approval`, `succeeded`, `failed`, `reverted`, `rate_limited`, `forbidden`.
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `reports`, `policies`, `remediation`, `retention`.
    pub controller: &'static str,
}

/// Every metric of the operator, cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub intake_requests: Family<RequestLabels, Counter>,
    pub alerts_accepted: Family<AlertLabels, Counter>,
    pub alerts_dropped: Family<DropLabels, Counter>,
    pub ack_seconds: Histogram,
    pub queue_incidents: Gauge,
    pub report_writes: Family<WriteLabels, Counter>,
    pub reports_expired: Family<RequestReason, Counter>,
    pub api_writes: Family<ApiWriteLabels, Counter>,
    pub remediation_actions: Family<ActionLabels, Counter>,
    pub reconcile_seconds: Family<ControllerLabels, Histogram>,
    pub leader: Gauge,
    pub circuit_breaker_open: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestReason {
    pub reason: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("peregrine");
        let intake_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "intake_requests",
            "Requests answered by the intake, by status code and reason",
            intake_requests.clone(),
        );
        let alerts_accepted = Family::<AlertLabels, Counter>::default();
        registry.register(
            "alerts_accepted",
            "Alerts accepted (answered 202), by priority",
            alerts_accepted.clone(),
        );
        let alerts_dropped = Family::<DropLabels, Counter>::default();
        registry.register(
            "alerts_dropped",
            "Alerts not counted in any report, by reason and priority",
            alerts_dropped.clone(),
        );
        let ack_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "intake_ack_seconds",
            "Time from the request's arrival to its answer",
            ack_seconds.clone(),
        );
        let queue_incidents = Gauge::default();
        registry.register(
            "queue_incidents",
            "Incidents with alerts accepted but not yet written",
            queue_incidents.clone(),
        );
        let report_writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "report_writes",
            "Writes of AlertReports to the API server, by operation and result",
            report_writes.clone(),
        );
        let reports_expired = Family::<RequestReason, Counter>::default();
        registry.register(
            "reports_expired",
            "AlertReports deleted by retention, by reason",
            reports_expired.clone(),
        );
        let api_writes = Family::<ApiWriteLabels, Counter>::default();
        registry.register(
            "api_writes",
            "Writes to the API server, by kind, operation and result",
            api_writes.clone(),
        );
        let remediation_actions = Family::<ActionLabels, Counter>::default();
        registry.register(
            "remediation_actions",
            "Remediation actions, by action family and the state they reached",
            remediation_actions.clone(),
        );
        let reconcile_seconds =
            Family::<ControllerLabels, Histogram>::new_with_constructor(reconcile_histogram);
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took, by controller",
            reconcile_seconds.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the Lease and acts, else 0",
            leader.clone(),
        );
        let circuit_breaker_open = Gauge::default();
        registry.register(
            "remediation_circuit_breaker_open",
            "1 while the circuit breaker holds every remediation policy in DryRun",
            circuit_breaker_open.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            circuit_breaker_open,
            intake_requests,
            alerts_accepted,
            alerts_dropped,
            ack_seconds,
            queue_incidents,
            report_writes,
            reports_expired,
            api_writes,
            remediation_actions,
            reconcile_seconds,
            leader,
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// A router serving `GET /metrics`.
    pub fn router(&self) -> axum::Router {
        let metrics = self.clone();
        axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        )
    }

    pub fn drop(&self, reason: &'static str, priority: crate::crd::Priority, count: u64) {
        self.alerts_dropped
            .get_or_create(&DropLabels {
                reason,
                priority: priority.as_str(),
            })
            .inc_by(count);
    }

    pub fn alerts_accepted_inc(&self, priority: crate::crd::Priority) {
        self.alerts_accepted
            .get_or_create(&AlertLabels {
                priority: priority.as_str(),
            })
            .inc();
    }

    pub fn write(&self, operation: &'static str, result: &'static str) {
        self.report_writes
            .get_or_create(&WriteLabels { operation, result })
            .inc();
        self.api_write("AlertReport", operation, result);
    }

    /// Counts one write to the API server.
    pub fn api_write(&self, kind: &'static str, operation: &'static str, result: &'static str) {
        self.api_writes
            .get_or_create(&ApiWriteLabels {
                kind,
                operation,
                result,
            })
            .inc();
    }

    /// Counts a remediation action reaching `state`.
    pub fn action(&self, action: &'static str, state: &'static str) {
        self.remediation_actions
            .get_or_create(&ActionLabels { action, state })
            .inc();
    }

    /// Records whether this replica holds the Lease.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Times a reconcile of `controller` until the returned guard is dropped.
    pub fn time_reconcile(&self, controller: &'static str) -> ReconcileTimer {
        ReconcileTimer {
            histogram: self
                .reconcile_seconds
                .get_or_create(&ControllerLabels { controller })
                .clone(),
            start: std::time::Instant::now(),
        }
    }
}

fn reconcile_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

/// Observes the time since it was made into the reconcile histogram when dropped.
pub struct ReconcileTimer {
    histogram: Histogram,
    start: std::time::Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_the_dashboard_shows_is_exposed() {
        let metrics = Metrics::new();
        metrics.write("create", "ok");
        metrics.action("isolate", "succeeded");
        metrics.set_leader(true);
        drop(metrics.time_reconcile("reports"));
        let text = metrics.encode();
        for line in [
            "peregrine_api_writes_total{kind=\"AlertReport\",operation=\"create\",result=\"ok\"} 1",
            "peregrine_remediation_actions_total{action=\"isolate\",state=\"succeeded\"} 1",
            "peregrine_leader 1",
            "peregrine_reconcile_duration_seconds_count{controller=\"reports\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
    }
}
