//! AlertReports: which incident an alert belongs to (fingerprint), how its
//! alerts add up (aggregation), how the report object looks (build), how it
//! is written with few API calls (writer), and when it goes away (retention).

pub mod aggregate;
pub mod build;
pub mod cache;
pub mod fingerprint;
pub mod retention;
pub mod writer;

use crate::analysis::PodContext;
use crate::crd::{Priority, Subject};
use crate::falco::Alert;
use aggregate::{Bounds, Delta, Observation};
use std::fmt;

/// Where a report lives: namespace and deterministic name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReportKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ReportKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// An accepted alert, parsed, enriched from the cluster and assigned to its incident.
#[derive(Clone, Debug)]
pub struct Arrival {
    pub alert: Alert,
    /// The subject with what the cluster added (workload, node).
    pub subject: Subject,
    /// The pod's facts, when the pod was in the cache.
    pub pod: Option<PodContext>,
    pub fingerprint: String,
    pub key: ReportKey,
    pub observation: Observation,
}

impl Arrival {
    /// Assigns an enriched alert to its incident. `operator_namespace` holds
    /// the reports of alerts that belong to no namespace.
    pub fn new(
        alert: Alert,
        subject: Subject,
        pod: Option<PodContext>,
        operator_namespace: &str,
        received: jiff::Timestamp,
        bounds: &Bounds,
    ) -> Arrival {
        let guessed = match (&subject.workload, &subject.pod) {
            (Some(w), _) => Some(w.clone()),
            (None, Some(pod)) => Some(crate::cluster::guess_workload(pod)),
            (None, None) => None,
        };
        let scope = fingerprint::scope_of(&alert, &subject, guessed.as_ref());
        let fingerprint = fingerprint::fingerprint(&alert.rule, &alert.source, &scope);
        let key = ReportKey {
            // A namespace that cannot exist (the alert is forged or garbled)
            // would be refused by the API server forever.
            namespace: scope
                .namespace()
                .filter(|ns| crate::falco::is_dns_label(ns))
                .unwrap_or(operator_namespace)
                .to_string(),
            name: fingerprint::report_name(&alert.rule, &fingerprint),
        };
        let observation = Observation::new(&alert, &subject, received, bounds);
        Arrival {
            alert,
            subject,
            pod,
            fingerprint,
            key,
            observation,
        }
    }
}

/// Alerts of one incident accepted but not yet written to its report.
#[derive(Clone, Debug)]
pub struct Pending {
    pub key: ReportKey,
    pub fingerprint: String,
    /// The first alert of this batch: creates the report when it does not exist yet.
    pub first: Box<FirstAlert>,
    pub delta: Delta,
    /// A remediation policy may act on it: never shed.
    pub protected: bool,
    /// Failed writes so far, for backoff.
    pub attempts: u32,
    /// Not retried before this instant.
    pub not_before: Option<tokio::time::Instant>,
    /// When the oldest of these alerts joined the queue.
    pub queued_at: tokio::time::Instant,
    /// A status write whose answer was lost (timeout, broken connection, 5xx):
    /// it may have been applied. Settled at the next write.
    pub in_doubt: Option<InDoubt>,
}

/// A status write that may or may not have been applied.
#[derive(Clone, Debug)]
pub struct InDoubt {
    /// The status that was sent.
    pub status: Box<crate::crd::AlertReportStatus>,
    /// The alerts it counted.
    pub count: u64,
}

/// The first alert of a batch, with what the cluster said about it.
#[derive(Clone, Debug)]
pub struct FirstAlert {
    pub alert: Alert,
    pub subject: Subject,
    pub pod: Option<PodContext>,
}

impl FirstAlert {
    /// Keeps of `alert` what a report keeps (its output and fields bounded):
    /// what waits in the queue is a few KiB per incident, whatever Falco sent.
    pub fn new(mut alert: Alert, subject: Subject, pod: Option<PodContext>) -> FirstAlert {
        let event_bounds = build::EventBounds::default();
        alert.output = aggregate::truncate(&alert.output, event_bounds.output);
        alert.output_fields = build::bounded_fields(&alert.output_fields, &event_bounds);
        FirstAlert {
            alert,
            subject,
            pod,
        }
    }
}

impl Pending {
    pub fn new(arrival: Arrival, protected: bool, bounds: &Bounds) -> Pending {
        Pending {
            key: arrival.key,
            fingerprint: arrival.fingerprint,
            delta: Delta::new(arrival.observation, bounds),
            first: Box::new(FirstAlert::new(arrival.alert, arrival.subject, arrival.pod)),
            protected,
            attempts: 0,
            not_before: None,
            queued_at: tokio::time::Instant::now(),
            in_doubt: None,
        }
    }

    pub fn priority(&self) -> Priority {
        self.first.alert.priority
    }

    /// Settles a write in doubt against the report's status as read now:
    /// when the status is exactly what was sent, that write was applied and
    /// its alerts are not counted again. True when nothing is left to write.
    ///
    /// Should another replica have written after the lost answer, the
    /// statuses differ and the alerts are counted again: the only case in
    /// which an alert may be counted twice, never one in which it is lost.
    pub fn settle(&mut self, current: Option<&crate::crd::AlertReportStatus>) -> bool {
        let Some(doubt) = self.in_doubt.take() else {
            return false;
        };
        if current != Some(doubt.status.as_ref()) {
            return false;
        }
        self.delta.count = self.delta.count.saturating_sub(doubt.count);
        self.delta.count == 0
    }

    /// Counts one more alert of this incident.
    pub fn add(&mut self, arrival: Arrival, protected: bool, bounds: &Bounds) {
        self.delta.add(arrival.observation, bounds);
        self.protected |= protected;
        // The more severe alert decides what the incident is about.
        if arrival.alert.priority < self.first.alert.priority {
            *self.first = FirstAlert::new(arrival.alert, arrival.subject, arrival.pod);
        }
    }

    /// Adds alerts that arrived after these (`later` is newer).
    pub fn merge(&mut self, later: Pending, bounds: &Bounds) {
        self.delta.merge(later.delta, bounds);
        self.protected |= later.protected;
        self.queued_at = self.queued_at.min(later.queued_at);
        // The more severe alert decides what the incident is about.
        if later.first.alert.priority < self.first.alert.priority {
            self.first = later.first;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::AlertReportStatus;

    fn pending(alerts: u64) -> Pending {
        let alert = crate::falco::parse(
            br#"{"rule":"R","priority":"Notice","output_fields":{"k8s.ns.name":"ns","k8s.pod.name":"p"}}"#,
        )
        .unwrap();
        let subject = crate::falco::subject_of(&alert);
        let bounds = Bounds::default();
        let arrival = Arrival::new(alert, subject, None, "op", jiff::Timestamp::now(), &bounds);
        let mut p = Pending::new(arrival.clone(), false, &bounds);
        for _ in 1..alerts {
            p.merge(Pending::new(arrival.clone(), false, &bounds), &bounds);
        }
        p
    }

    fn sent(count: u64) -> InDoubt {
        let status = AlertReportStatus {
            observed_generation: Some(count as i64),
            ..AlertReportStatus::default()
        };
        InDoubt {
            status: Box::new(status),
            count,
        }
    }

    #[test]
    fn a_namespace_that_cannot_exist_sends_the_report_to_the_operators_namespace() {
        let alert = crate::falco::parse(
            br#"{"rule":"R","priority":"Notice","output_fields":{"k8s.ns.name":"../Etc","k8s.pod.name":"p"}}"#,
        )
        .unwrap();
        let subject = crate::falco::subject_of(&alert);
        let arrival = Arrival::new(
            alert,
            subject,
            None,
            "op",
            jiff::Timestamp::now(),
            &Bounds::default(),
        );
        assert_eq!(arrival.key.namespace, "op");
    }

    #[test]
    fn a_write_that_landed_although_its_answer_was_lost_is_not_counted_again() {
        let mut p = pending(3);
        p.in_doubt = Some(sent(3));
        let landed = sent(3).status;
        assert!(p.settle(Some(&landed)), "nothing left to write");
        assert_eq!(p.delta.count, 0);
    }

    #[test]
    fn alerts_that_came_after_a_lost_answer_are_still_written() {
        let mut p = pending(5);
        p.in_doubt = Some(sent(3));
        let landed = sent(3).status;
        assert!(!p.settle(Some(&landed)));
        assert_eq!(p.delta.count, 2);
    }

    #[test]
    fn a_write_that_did_not_land_is_sent_again_in_full() {
        let mut p = pending(3);
        p.in_doubt = Some(sent(3));
        assert!(!p.settle(Some(&AlertReportStatus::default())));
        assert_eq!(p.delta.count, 3);
        assert!(p.in_doubt.is_none());
    }
}
