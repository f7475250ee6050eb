//! The bounded queue between the intake and the report writer.
//!
//! It holds incidents, not alerts: a repeat of an incident already waiting
//! only raises its count, so a flood of one noisy rule costs one entry. When
//! `capacity` distinct incidents wait, a new one displaces the least severe
//! waiting incident if it is more severe, and is refused otherwise. Incidents
//! a remediation policy would act on are never displaced: they may take the
//! queue up to twice its capacity. Every alert not counted is counted as dropped.

use crate::analysis::PodContext;
use crate::crd::Priority;
use crate::falco::Alert;
use crate::metrics::Metrics;
use crate::report::aggregate::Bounds;
use crate::report::{Arrival, Pending, ReportKey};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// Decides whether an alert must never be shed. The remediation part
/// provides one that asks its policies; the default protects priority
/// Critical and above.
pub type Protect = Arc<dyn Fn(&Alert) -> bool + Send + Sync>;

/// The default [`Protect`]: Critical, Alert and Emergency are never shed.
pub fn protect_critical() -> Protect {
    Arc::new(|alert: &Alert| alert.priority.at_least(Priority::Critical))
}

/// Why an alert was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error(
        "the queue is full of incidents at least as severe ({waiting} waiting): the alert was dropped. The API server may be slow or down; see the operator's log"
    )]
    Full { waiting: usize },
}

/// What happened to an offered alert.
#[derive(Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Added to an incident already waiting.
    Merged,
    /// A new incident in the queue.
    Queued,
    /// A new incident that displaced a less severe one.
    Displaced { dropped: u64 },
}

pub struct Queue {
    state: Mutex<HashMap<ReportKey, Pending>>,
    capacity: usize,
    bounds: Bounds,
    protect: Protect,
    metrics: Metrics,
    /// Signalled when an incident that was not waiting joins the queue.
    arrived: tokio::sync::Notify,
}

impl Queue {
    pub fn new(capacity: usize, bounds: Bounds, protect: Protect, metrics: Metrics) -> Queue {
        Queue {
            state: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            bounds,
            protect,
            metrics,
            arrived: tokio::sync::Notify::new(),
        }
    }

    /// Resolves once an incident that was not waiting has joined the queue
    /// since the last call (a new incident, or a known one after a write).
    pub async fn incident_arrived(&self) {
        self.arrived.notified().await;
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ReportKey, Pending>> {
        // Every mutation below leaves the map consistent, even on panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Offers one alert. Never blocks and never calls the API server.
    pub fn offer(&self, arrival: Arrival) -> Result<Accepted, Refused> {
        let protected = (self.protect)(&arrival.alert);
        self.offer_protected(arrival, protected)
    }

    /// Offers one alert whose pod facts (`arrival.pod`) are only looked up
    /// when they are needed: when the alert opens an incident, or changes
    /// what a waiting one is about. A repeat is counted without them, which
    /// is most alerts of a noisy rule.
    pub fn offer_with_facts(
        &self,
        mut arrival: Arrival,
        facts: impl FnOnce() -> Option<PodContext>,
    ) -> Result<Accepted, Refused> {
        let protected = (self.protect)(&arrival.alert);
        let priority = arrival.alert.priority;
        {
            let mut state = self.lock();
            if let Some(waiting) = state.get_mut(&arrival.key)
                && priority >= waiting.priority()
            {
                waiting.add(arrival, protected, &self.bounds);
                self.metrics.alerts_accepted_inc(priority);
                return Ok(Accepted::Merged);
            }
        }
        arrival.pod = facts();
        self.offer_protected(arrival, protected)
    }

    fn offer_protected(&self, arrival: Arrival, protected: bool) -> Result<Accepted, Refused> {
        let priority = arrival.alert.priority;
        let mut state = self.lock();
        if let Some(waiting) = state.get_mut(&arrival.key) {
            waiting.add(arrival, protected, &self.bounds);
            self.metrics.alerts_accepted_inc(priority);
            return Ok(Accepted::Merged);
        }
        let mut result = Accepted::Queued;
        if state.len() >= self.capacity {
            // The least severe waiting incident that may be shed.
            let victim = state
                .values()
                .filter(|p| !p.protected)
                .max_by_key(|p| (p.priority(), std::cmp::Reverse(p.delta.last_seen)))
                .map(|p| (p.key.clone(), p.priority()));
            match victim {
                Some((key, victim_priority)) if victim_priority > priority => {
                    if let Some(evicted) = state.remove(&key) {
                        tracing::warn!(report = %key, alerts = evicted.delta.count, "queue full: shed a less severe incident");
                        self.metrics.drop(
                            "shed_for_higher_priority",
                            victim_priority,
                            evicted.delta.count,
                        );
                        result = Accepted::Displaced {
                            dropped: evicted.delta.count,
                        };
                    }
                }
                _ if protected && state.len() < self.capacity.saturating_mul(2) => {}
                _ => {
                    self.metrics.drop("queue_full", priority, 1);
                    return Err(Refused::Full {
                        waiting: state.len(),
                    });
                }
            }
        }
        let key = arrival.key.clone();
        state.insert(key, Pending::new(arrival, protected, &self.bounds));
        self.metrics.alerts_accepted_inc(priority);
        self.metrics.queue_incidents.set(state.len() as i64);
        drop(state);
        self.arrived.notify_one();
        Ok(result)
    }

    /// Takes every incident due for a write (all of them when `ignore_backoff`).
    pub fn take_due(&self, now: Instant, ignore_backoff: bool) -> Vec<Pending> {
        self.take_due_where(now, ignore_backoff, |_| true)
    }

    /// Takes the incidents that have waited `interval` or longer, oldest
    /// first, but no more than `1 / slices` of those waiting at once unless
    /// they are a whole interval late. Called every `interval / slices`, it
    /// writes each incident about once per interval, a few at every call,
    /// instead of sending the API server a burst of writes every interval.
    pub fn take_spread(&self, now: Instant, interval: Duration, slices: u32) -> Vec<Pending> {
        let mut state = self.lock();
        let mut due: Vec<(Instant, &ReportKey)> = state
            .values()
            .filter(|p| p.not_before.is_none_or(|t| t <= now))
            .filter(|p| now.saturating_duration_since(p.queued_at) >= interval)
            .map(|p| (p.queued_at, &p.key))
            .collect();
        due.sort_unstable_by_key(|(queued_at, _)| *queued_at);
        let cap = state.len().div_ceil(slices.max(1) as usize).max(1);
        // None waits more than an interval past its time.
        let overdue = due
            .iter()
            .take_while(|(queued_at, _)| now.saturating_duration_since(*queued_at) >= interval * 2)
            .count();
        let keys: Vec<ReportKey> = due
            .iter()
            .take(cap.max(overdue))
            .map(|(_, k)| (*k).clone())
            .collect();
        let taken = keys.iter().filter_map(|k| state.remove(k)).collect();
        self.metrics.queue_incidents.set(state.len() as i64);
        taken
    }

    /// Takes the incidents due for a write whose key is `wanted`.
    pub fn take_due_where(
        &self,
        now: Instant,
        ignore_backoff: bool,
        wanted: impl Fn(&ReportKey) -> bool,
    ) -> Vec<Pending> {
        let mut state = self.lock();
        let due: Vec<ReportKey> = state
            .values()
            .filter(|p| ignore_backoff || p.not_before.is_none_or(|t| t <= now))
            .filter(|p| wanted(&p.key))
            .map(|p| p.key.clone())
            .collect();
        let taken = due.iter().filter_map(|k| state.remove(k)).collect();
        self.metrics.queue_incidents.set(state.len() as i64);
        taken
    }

    /// Puts back an incident whose write failed; alerts that arrived for it
    /// meanwhile join it. Accepted alerts are never refused here.
    pub fn put_back(&self, mut pending: Pending) {
        let mut state = self.lock();
        if let Some(newer) = state.remove(&pending.key) {
            pending.merge(newer, &self.bounds);
        }
        state.insert(pending.key.clone(), pending);
        self.metrics.queue_incidents.set(state.len() as i64);
    }

    /// Incidents waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Alerts waiting, over all incidents.
    pub fn alerts(&self) -> u64 {
        self.lock().values().map(|p| p.delta.count).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Subject;

    fn arrival(rule: &str, priority: &str, pod: &str) -> Arrival {
        let alert = crate::falco::parse(
            serde_json::json!({
                "rule": rule, "priority": priority, "output": "x",
                "output_fields": {"k8s.ns.name": "shop", "k8s.pod.name": pod}
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let subject: Subject = crate::falco::subject_of(&alert);
        Arrival::new(
            alert,
            subject,
            None,
            "peregrine-system",
            jiff::Timestamp::now(),
            &Bounds::default(),
        )
    }

    fn queue(capacity: usize) -> (Queue, Metrics) {
        let metrics = Metrics::new();
        let q = Queue::new(
            capacity,
            Bounds::default(),
            protect_critical(),
            metrics.clone(),
        );
        (q, metrics)
    }

    #[test]
    fn repeats_of_one_incident_take_one_place() {
        let (q, _) = queue(2);
        for _ in 0..1000 {
            q.offer(arrival("Shell", "Notice", "web-7d9f8b6c5d-x2k4q"))
                .unwrap();
        }
        assert_eq!(q.len(), 1);
        assert_eq!(q.alerts(), 1000);
    }

    #[test]
    fn pod_facts_are_looked_up_for_a_new_incident_and_a_more_severe_alert_only() {
        let (q, _) = queue(10);
        let looked_up = std::cell::Cell::new(0);
        let facts = |privileged| {
            looked_up.set(looked_up.get() + 1);
            Some(PodContext {
                privileged,
                ..PodContext::default()
            })
        };
        let pod = "web-7d9f8b6c5d-x2k4q";
        q.offer_with_facts(arrival("Shell", "Notice", pod), || facts(false))
            .unwrap();
        for _ in 0..100 {
            let merged = q.offer_with_facts(arrival("Shell", "Notice", pod), || facts(false));
            assert_eq!(merged, Ok(Accepted::Merged));
        }
        assert_eq!(looked_up.get(), 1, "repeats need no pod facts");
        // A more severe alert decides what the incident is about: with its facts.
        q.offer_with_facts(arrival("Shell", "Critical", pod), || facts(true))
            .unwrap();
        assert_eq!(looked_up.get(), 2);
        let taken = q.take_due(Instant::now(), true);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].delta.count, 102);
        assert_eq!(taken[0].priority(), Priority::Critical);
        assert!(taken[0].first.pod.as_ref().is_some_and(|p| p.privileged));
    }

    #[test]
    fn incidents_that_fall_due_together_are_written_a_few_at_a_time_oldest_first() {
        let (q, _) = queue(100);
        for i in 0..20 {
            q.offer(arrival("Shell", "Notice", &format!("pod-{i}")))
                .unwrap();
        }
        let interval = Duration::from_secs(5);
        let queued = Instant::now();
        assert!(
            q.take_spread(queued, interval, 10).is_empty(),
            "nothing has waited an interval yet"
        );
        // Called every twentieth of an interval, as the writer does.
        let slice = interval / 20;
        let mut now = queued + interval;
        let mut sizes = Vec::new();
        while !q.is_empty() {
            sizes.push(q.take_spread(now, interval, 20).len());
            now += slice;
        }
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        assert!(
            sizes.iter().all(|n| *n == 1),
            "one at a time (1/20 of those waiting, at least one): {sizes:?}"
        );
        assert!(now <= queued + interval * 2, "none an interval late");
        // The oldest goes first.
        q.offer(arrival("Shell", "Notice", "old")).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        q.offer(arrival("Shell", "Notice", "new")).unwrap();
        let batch = q.take_spread(Instant::now() + interval, interval, 20);
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].first.subject.pod.as_deref(), Some("old"));
    }

    #[test]
    fn a_full_queue_sheds_the_least_severe_incident_for_a_more_severe_one() {
        let (q, metrics) = queue(2);
        q.offer(arrival("A", "Debug", "a")).unwrap();
        q.offer(arrival("A", "Debug", "a")).unwrap();
        q.offer(arrival("B", "Warning", "b")).unwrap();
        assert_eq!(
            q.offer(arrival("C", "Error", "c")),
            Ok(Accepted::Displaced { dropped: 2 })
        );
        assert_eq!(
            q.offer(arrival("D", "Notice", "d")),
            Err(Refused::Full { waiting: 2 }),
            "nothing less severe than Notice waits"
        );
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"peregrine_alerts_dropped_total{reason="shed_for_higher_priority",priority="Debug"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"peregrine_alerts_dropped_total{reason="queue_full",priority="Notice"} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn protected_alerts_are_never_shed_and_always_admitted_within_twice_the_capacity() {
        let (q, _) = queue(1);
        q.offer(arrival("A", "Critical", "a")).unwrap();
        // Emergency cannot displace a protected Critical incident, but is admitted.
        assert_eq!(
            q.offer(arrival("B", "Emergency", "b")),
            Ok(Accepted::Queued)
        );
        assert!(q.offer(arrival("C", "Alert", "c")).is_err());
        let keys: Vec<String> = q
            .take_due(Instant::now(), true)
            .into_iter()
            .map(|p| p.first.alert.rule)
            .collect();
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&"A".to_string()) && keys.contains(&"B".to_string()));
    }

    #[tokio::test]
    async fn a_new_incident_wakes_the_writer_and_can_be_taken_alone() {
        let (q, _) = queue(4);
        q.offer(arrival("A", "Notice", "a")).unwrap();
        // The permit is kept until the writer asks.
        q.incident_arrived().await;
        q.offer(arrival("B", "Notice", "b")).unwrap();
        let taken = q.take_due_where(Instant::now(), false, |k| k.name.starts_with('b'));
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].first.alert.rule, "B");
        assert_eq!(q.len(), 1, "A still waits for the flush interval");
    }

    #[test]
    fn a_failed_write_rejoins_the_alerts_that_came_meanwhile() {
        let (q, _) = queue(4);
        q.offer(arrival("A", "Notice", "a")).unwrap();
        let taken = q.take_due(Instant::now(), false);
        q.offer(arrival("A", "Notice", "a")).unwrap();
        for p in taken {
            q.put_back(p);
        }
        assert_eq!(q.len(), 1);
        assert_eq!(q.alerts(), 2);
    }
}
