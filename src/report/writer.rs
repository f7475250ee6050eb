//! Writes waiting incidents to their AlertReports with few API calls.
//!
//! A new incident costs a server-side apply (the object, spec and labels)
//! and one status patch; a known incident costs one status patch per flush
//! interval however many alerts it had.
//!
//! Several replicas may count the same incident. Each status patch is a
//! merge patch that carries the `resourceVersion` the new status was computed
//! from: a replica that read a stale count gets 409 Conflict, re-reads the
//! object and adds its own alerts again, so no increment is lost or counted
//! twice. (A server-side apply of `status.occurrences` would let the last
//! writer's count win.) The same precondition protects fields other parts
//! write, such as `status.remediations`, which are carried over unchanged.

use super::aggregate::{self, Bounds};
use super::build::{self, EventBounds};
use super::cache::ReportCache;
use super::fingerprint::{
    LABEL_SEVERITY, LABEL_WORKLOAD_KIND, LABEL_WORKLOAD_NAME, severity_label, severity_of_priority,
};
use super::{FirstAlert, InDoubt, Pending, ReportKey};
use crate::analysis::{Context, RelatedIncident};
use crate::cluster::ClusterCache;
use crate::crd::{AlertReport, AlertReportSpec, AlertReportStatus, Analysis, Basis, Subject};
use crate::falco::Alert;
use crate::intake::queue::Queue;
use crate::metrics::Metrics;
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The analysis the writer puts in `status.analysis`: `analysis::analyze`
/// with the knowledge loaded at start-up.
pub type Analyzer = Arc<dyn Fn(&Alert, &Subject, &Context) -> Analysis + Send + Sync>;

/// The condition type the writer owns.
pub const CONDITION_ANALYZED: &str = "Analyzed";

/// Counts at which the analysis is refreshed (it weighs repetition).
const COUNT_STEPS: [u64; 6] = [1, 10, 100, 1_000, 10_000, 100_000];

/// Why an incident could not be written now; it is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot create AlertReport {key}: {source}")]
    Create {
        key: ReportKey,
        #[source]
        source: kube::Error,
    },
    #[error("cannot read AlertReport {key}: {source}")]
    Read {
        key: ReportKey,
        #[source]
        source: kube::Error,
    },
    #[error("cannot update the status of AlertReport {key}: {source}")]
    Status {
        key: ReportKey,
        #[source]
        source: kube::Error,
    },
    #[error(
        "the operator may not {verb} AlertReport {key}: grant get and patch on alertreports and alertreports/status in its ClusterRole"
    )]
    Forbidden { key: ReportKey, verb: &'static str },
    #[error("AlertReport {key} changed under every one of {attempts} attempts; trying again later")]
    Contended { key: ReportKey, attempts: u32 },
    #[error("the API server did not answer within {0:?}; trying again later")]
    TimedOut(Duration),
}

impl WriteError {
    /// The API server refused the object itself (400, 422): sending it again
    /// cannot succeed. Permissions (403) and missing namespaces (404) can be
    /// fixed by an admin, so those are retried.
    pub fn is_permanent(&self) -> bool {
        match self {
            WriteError::Create { source, .. } | WriteError::Status { source, .. } => {
                matches!(source, kube::Error::Api(s) if s.code == 400 || s.is_invalid())
            }
            _ => false,
        }
    }
}

fn forbidden(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(s) if s.is_forbidden())
}

/// How long the writer lets new incidents gather before writing them.
const NEW_INCIDENT_BATCH: Duration = Duration::from_millis(100);

/// The flush interval is checked this many times per interval, so incidents
/// fall due and are written a few at a time.
const SPREAD_SLICES: u32 = 20;

/// Longest time one incident's write may take, so a hung API server cannot
/// hold a flush (or a shutdown's drain) forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);

/// How the writer behaves.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// How often waiting incidents are written.
    pub flush_interval: Duration,
    /// How long a shutdown may take to write what was accepted.
    pub drain_timeout: Duration,
    /// Where reports of alerts without a namespace go (and of namespaces that do not exist).
    pub operator_namespace: String,
    /// Namespaces whose incidents weigh more in the analysis.
    pub sensitive_namespaces: Vec<String>,
    pub bounds: Bounds,
    pub event_bounds: EventBounds,
    /// Writes in flight at once.
    pub concurrency: usize,
}

/// What the writer last wrote to a report, to skip a read on the next flush.
struct Known {
    report: AlertReport,
    related: Vec<String>,
}

pub struct Writer {
    client: Client,
    queue: Arc<Queue>,
    reports: ReportCache,
    analyzer: Option<Analyzer>,
    config: WriterConfig,
    metrics: Metrics,
    known: Mutex<HashMap<ReportKey, Known>>,
    cluster: Option<ClusterCache>,
    readiness: Option<crate::health::Readiness>,
}

/// The part of `/readyz` the writer owns: not ready while reports cannot be written.
pub const READINESS_PART: &str = "reports";

impl Writer {
    pub fn new(
        client: Client,
        queue: Arc<Queue>,
        reports: ReportCache,
        analyzer: Option<Analyzer>,
        config: WriterConfig,
        metrics: Metrics,
    ) -> Writer {
        Writer {
            client,
            queue,
            reports,
            analyzer,
            config,
            metrics,
            known: Mutex::new(HashMap::new()),
            cluster: None,
            readiness: None,
        }
    }

    /// Says in `/readyz` why reports cannot be written (the API server does
    /// not answer, or refuses), until a write succeeds again. The intake keeps
    /// accepting meanwhile: the alerts wait in the queue.
    pub fn with_readiness(mut self, readiness: crate::health::Readiness) -> Writer {
        self.readiness = Some(readiness);
        self
    }

    /// Reads pod facts from `cluster` when re-analysing a report.
    pub fn with_cluster(mut self, cluster: ClusterCache) -> Writer {
        self.cluster = Some(cluster);
        self
    }

    fn known(&self) -> MutexGuard<'_, HashMap<ReportKey, Known>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets a report (retention deleted it).
    pub fn forget(&self, key: &ReportKey) {
        self.known().remove(key);
    }

    /// Writes every flush interval until `stop`, then writes what is left,
    /// retrying until the queue is empty or the drain timeout passes.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let slice = (self.config.flush_interval / SPREAD_SLICES).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(slice);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush_spread().await,
                () = self.queue.incident_arrived() => {
                    // One batch per burst of new incidents.
                    tokio::time::sleep(NEW_INCIDENT_BATCH).await;
                    self.flush_new().await;
                }
                () = stop.cancelled() => break,
            }
        }
        let deadline = Instant::now() + self.config.drain_timeout;
        tracing::info!(
            incidents = self.queue.len(),
            alerts = self.queue.alerts(),
            "writing the accepted alerts before stopping"
        );
        loop {
            self.drain_once().await;
            if self.queue.is_empty() {
                tracing::info!("every accepted alert is written");
                return;
            }
            if Instant::now() >= deadline {
                let lost = self.queue.take_due(Instant::now(), true);
                for p in &lost {
                    self.metrics
                        .drop("not_written_before_shutdown", p.priority(), p.delta.count);
                }
                tracing::error!(
                    incidents = lost.len(),
                    alerts = lost.iter().map(|p| p.delta.count).sum::<u64>(),
                    "the API server did not take these alerts before the drain timeout: they are lost. Raise --drain-timeout and the pod's terminationGracePeriodSeconds"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Writes the incidents that have waited a flush interval, a share at a
    /// time (see [`Queue::take_spread`]).
    pub async fn flush_spread(&self) {
        let batch =
            self.queue
                .take_spread(Instant::now(), self.config.flush_interval, SPREAD_SLICES);
        self.write_batch(batch).await;
    }

    /// Writes every waiting incident, backoff or not: on the way out.
    async fn drain_once(&self) {
        let batch = self.queue.take_due(Instant::now(), true);
        self.write_batch(batch).await;
    }

    /// Writes at once the incidents that have no report yet: a new incident
    /// should not wait for the flush interval to be seen (and acted on);
    /// repeats of known incidents still wait and cost one write per interval.
    pub async fn flush_new(&self) {
        let batch = self.queue.take_due_where(Instant::now(), false, |key| {
            !self.known().contains_key(key) && self.reports.get(key).is_none()
        });
        self.write_batch(batch).await;
    }

    async fn write_batch(&self, batch: Vec<Pending>) {
        if batch.is_empty() {
            return;
        }
        futures::stream::iter(batch)
            .map(|mut pending| async move {
                let span = tracing::info_span!(
                    "write",
                    report = %pending.key,
                    alert_id = pending.first.alert.uuid.as_deref(),
                    alerts = pending.delta.count,
                );
                let result = tokio::time::timeout(WRITE_TIMEOUT, self.write(&mut pending))
                    .instrument(span)
                    .await
                    .unwrap_or(Err(WriteError::TimedOut(WRITE_TIMEOUT)));
                (pending, result)
            })
            .buffer_unordered(self.config.concurrency.max(1))
            .for_each(|(mut pending, result)| async move {
                if let Err(error) = &result
                    && error.is_permanent()
                {
                    self.metrics
                        .drop("rejected_by_api", pending.priority(), pending.delta.count);
                    tracing::error!(report = %pending.key, %error, alerts = pending.delta.count, "the API server refuses this report: its alerts are dropped");
                    return;
                }
                if let Some(readiness) = &self.readiness {
                    match &result {
                        Ok(()) => readiness.clear(READINESS_PART),
                        Err(WriteError::Contended { .. }) => {}
                        Err(error) => readiness.block(
                            READINESS_PART,
                            format!(
                                "cannot write AlertReports: {error}; {} accepted alerts wait in the queue",
                                self.queue.alerts() + pending.delta.count
                            ),
                        ),
                    }
                }
                if let Err(error) = result {
                    pending.attempts = pending.attempts.saturating_add(1);
                    let backoff = backoff(pending.attempts);
                    tracing::warn!(report = %pending.key, %error, retry_in = ?backoff, "write failed; the alerts wait in the queue");
                    pending.not_before = Some(Instant::now() + backoff);
                    self.queue.put_back(pending);
                }
            })
            .await;
    }

    /// The report as last written or seen, without an API call when possible.
    fn current(&self, key: &ReportKey) -> Option<AlertReport> {
        if let Some(k) = self.known().get(key) {
            return Some(k.report.clone());
        }
        self.reports.get(key)
    }

    /// Counts one incident's waiting alerts in its report.
    async fn write(&self, pending: &mut Pending) -> Result<(), WriteError> {
        let mut key = pending.key.clone();
        let mut current = match self.current(&key) {
            // After a lost answer, only a fresh read tells whether it was applied.
            Some(r) if pending.in_doubt.is_none() => Some(r),
            _ => self.read(&key).await?,
        };
        if pending.in_doubt.is_some() {
            let status = current.as_ref().and_then(|r| r.status.as_ref());
            if pending.settle(status) {
                tracing::info!(report = %key, "the last write was applied although its answer was lost");
                return Ok(());
            }
        }
        let mut attempts = 0u32;
        let mut created = false;
        loop {
            attempts += 1;
            if attempts > 8 {
                return Err(WriteError::Contended { key, attempts });
            }
            let report = match current.take() {
                Some(r) => r,
                None => match self.create(&key, pending).await {
                    Ok(r) => {
                        created = true;
                        r
                    }
                    Err(WriteError::Create { source, .. })
                        if is_not_found(&source)
                            && key.namespace != self.config.operator_namespace =>
                    {
                        tracing::warn!(namespace = %key.namespace, "the alert's namespace does not exist; the report goes to the operator's namespace");
                        key.namespace = self.config.operator_namespace.clone();
                        current = self.read(&key).await?;
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            let related = self.related(&key, &report);
            let related_names: Vec<String> = related.iter().map(|r| r.report.clone()).collect();
            let Some(status) = self.next_status(&key, &report, pending, &related) else {
                self.remember(&key, report, related_names);
                return Ok(());
            };
            let api: Api<AlertReport> = Api::namespaced(self.client.clone(), &key.namespace);
            let patch = serde_json::json!({
                "metadata": { "resourceVersion": report.resource_version() },
                "status": status,
            });
            // Until the API server answers, this write may or may not apply.
            pending.in_doubt = Some(InDoubt {
                status: Box::new(status),
                count: pending.delta.count,
            });
            let answer = api
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
            if !answer_in_doubt(&answer) {
                pending.in_doubt = None;
            }
            match answer {
                Ok(updated) => {
                    self.metrics.write("status", "ok");
                    tracing::debug!(count = ?updated.status.as_ref().and_then(|s| s.occurrences.as_ref()).map(|o| o.count), "status written");
                    if created {
                        self.refresh_related(&key, &updated, &related).await;
                    }
                    let updated = self.keep_severity_label(&key, updated).await;
                    self.remember(&key, updated, related_names);
                    return Ok(());
                }
                Err(kube::Error::Api(s)) if s.is_conflict() => {
                    self.metrics.write("status", "conflict");
                    self.known().remove(&key);
                    current = self.read(&key).await?;
                }
                Err(kube::Error::Api(s)) if s.is_not_found() => {
                    self.metrics.write("status", "not_found");
                    self.known().remove(&key);
                    current = None;
                }
                Err(source) => {
                    self.metrics.write("status", "error");
                    if forbidden(&source) {
                        return Err(WriteError::Forbidden {
                            key,
                            verb: "patch the status of",
                        });
                    }
                    return Err(WriteError::Status { key, source });
                }
            }
        }
    }

    async fn read(&self, key: &ReportKey) -> Result<Option<AlertReport>, WriteError> {
        let api: Api<AlertReport> = Api::namespaced(self.client.clone(), &key.namespace);
        api.get_opt(&key.name).await.map_err(|source| {
            if forbidden(&source) {
                WriteError::Forbidden {
                    key: key.clone(),
                    verb: "read",
                }
            } else {
                WriteError::Read {
                    key: key.clone(),
                    source,
                }
            }
        })
    }

    /// Creates the report of a new incident by server-side apply. Replicas
    /// racing to create it converge on the one object.
    async fn create(&self, key: &ReportKey, pending: &Pending) -> Result<AlertReport, WriteError> {
        let related = self.related_by_subject(key, &pending.first.subject);
        let severity = self
            .analyze(&pending.first, pending.delta.count, &related)
            .map(|a| a.severity)
            .unwrap_or_else(|| severity_of_priority(pending.priority()));
        let object = build::report(
            key,
            &pending.fingerprint,
            &pending.first,
            severity,
            &self.config.event_bounds,
        );
        let api: Api<AlertReport> = Api::namespaced(self.client.clone(), &key.namespace);
        let created = api
            .patch(
                &key.name,
                &PatchParams::apply(crate::FIELD_MANAGER).force(),
                &Patch::Apply(&object),
            )
            .await;
        match created {
            Ok(report) => {
                self.metrics.write("create", "ok");
                tracing::info!(report = %key, rule = %pending.first.alert.rule, "new incident");
                Ok(report)
            }
            Err(source) if forbidden(&source) => {
                self.metrics.write("create", "error");
                Err(WriteError::Forbidden {
                    key: key.clone(),
                    verb: "create",
                })
            }
            Err(source) => {
                self.metrics.write("create", "error");
                Err(WriteError::Create {
                    key: key.clone(),
                    source,
                })
            }
        }
    }

    /// A new incident changes the context of the others on its workload:
    /// re-analyse them (at most a few), best effort.
    async fn refresh_related(
        &self,
        key: &ReportKey,
        created: &AlertReport,
        related: &[RelatedIncident],
    ) {
        let newcomer = RelatedIncident {
            report: key.name.clone(),
            rule: created.spec.rule.clone(),
            tags: created.spec.tags.clone(),
            last_seen: created
                .status
                .as_ref()
                .and_then(|s| s.occurrences.as_ref())
                .map(|o| o.last_seen.0),
        };
        for other in related.iter().take(5) {
            let other_key = ReportKey {
                namespace: key.namespace.clone(),
                name: other.report.clone(),
            };
            if let Err(error) = self.reanalyze(&other_key, &newcomer).await {
                tracing::debug!(report = %other_key, %error, "not re-analysed now; it will be at its next alert");
            }
        }
    }

    /// Recomputes the analysis of `key` with `newcomer` among its related
    /// incidents; patches only when the analysis changed.
    async fn reanalyze(
        &self,
        key: &ReportKey,
        newcomer: &RelatedIncident,
    ) -> Result<(), WriteError> {
        let Some(report) = self.current(key) else {
            return Ok(());
        };
        let Some(status) = report.status.clone() else {
            return Ok(());
        };
        let mut related = self.related(key, &report);
        if !related.iter().any(|r| r.report == newcomer.report) {
            related.push(newcomer.clone());
        }
        let spec = &report.spec;
        let pod = match (&self.cluster, &spec.subject.namespace, &spec.subject.pod) {
            (Some(cluster), Some(ns), Some(pod)) => cluster.pod(ns, pod),
            _ => None,
        };
        let first = FirstAlert {
            alert: alert_of(spec),
            subject: spec.subject.clone(),
            pod,
        };
        let count = status.occurrences.as_ref().map_or(0, |o| o.count);
        let analysis = self.analyze(&first, count, &related);
        if analysis.is_none() || analysis == status.analysis {
            return Ok(());
        }
        let api: Api<AlertReport> = Api::namespaced(self.client.clone(), &key.namespace);
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": report.resource_version() },
            "status": { "analysis": analysis },
        });
        match api
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(updated) => {
                self.metrics.write("status", "ok");
                let names = related.iter().map(|r| r.report.clone()).collect();
                let updated = self.keep_severity_label(key, updated).await;
                self.remember(key, updated, names);
                Ok(())
            }
            Err(source) => {
                let result = if is_conflict(&source) {
                    "conflict"
                } else {
                    "error"
                };
                self.metrics.write("status", result);
                self.known().remove(key);
                Err(WriteError::Status {
                    key: key.clone(),
                    source,
                })
            }
        }
    }

    /// Re-applies the labels when the analysis changed the severity, so
    /// `-l peregrine.dev/severity=...` keeps selecting what the status says.
    /// Best effort: returns the report as it now is.
    async fn keep_severity_label(&self, key: &ReportKey, report: AlertReport) -> AlertReport {
        let Some(severity) = report
            .status
            .as_ref()
            .and_then(|s| s.analysis.as_ref())
            .map(|a| severity_label(a.severity))
        else {
            return report;
        };
        if report.labels().get(LABEL_SEVERITY).map(String::as_str) == Some(severity) {
            return report;
        }
        // Our own labels only: labels others set stay theirs.
        let mut labels: std::collections::BTreeMap<String, String> = report
            .labels()
            .iter()
            .filter(|(k, _)| k.starts_with("peregrine.dev/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.insert(LABEL_SEVERITY.to_string(), severity.to_string());
        let mut object = AlertReport::new(&key.name, report.spec.clone());
        object.metadata.namespace = Some(key.namespace.clone());
        object.metadata.labels = Some(labels);
        let api: Api<AlertReport> = Api::namespaced(self.client.clone(), &key.namespace);
        match api
            .patch(
                &key.name,
                &PatchParams::apply(crate::FIELD_MANAGER).force(),
                &Patch::Apply(&object),
            )
            .await
        {
            Ok(relabelled) => {
                self.metrics.write("labels", "ok");
                relabelled
            }
            Err(error) => {
                self.metrics.write("labels", "error");
                tracing::debug!(report = %key, %error, "severity label not updated; retried at the next write");
                report
            }
        }
    }

    fn remember(&self, key: &ReportKey, report: AlertReport, related: Vec<String>) {
        let mut known = self.known();
        // A cache of what we wrote, not a source of truth: start over when large.
        if known.len() >= 20_000 {
            known.clear();
        }
        known.insert(key.clone(), Known { report, related });
    }

    /// Other incidents on the same workload.
    fn related(&self, key: &ReportKey, report: &AlertReport) -> Vec<RelatedIncident> {
        let labels = report.labels();
        match (
            labels.get(LABEL_WORKLOAD_KIND),
            labels.get(LABEL_WORKLOAD_NAME),
        ) {
            (Some(kind), Some(name)) => self.reports.related(key, kind, name),
            _ => Vec::new(),
        }
    }

    fn related_by_subject(&self, key: &ReportKey, subject: &Subject) -> Vec<RelatedIncident> {
        match &subject.workload {
            Some(w) => self.reports.related(
                key,
                &super::fingerprint::label_value(&w.kind),
                &super::fingerprint::label_value(&w.name),
            ),
            None => Vec::new(),
        }
    }

    fn analyze(
        &self,
        first: &FirstAlert,
        count: u64,
        related: &[RelatedIncident],
    ) -> Option<Analysis> {
        let analyzer = self.analyzer.as_ref()?;
        let ctx = Context {
            pod: first.pod.clone(),
            occurrences: Some(count),
            related: related.to_vec(),
            sensitive_namespaces: self.config.sensitive_namespaces.clone(),
        };
        Some(analyzer(&first.alert, &first.subject, &ctx))
    }

    /// The status after this incident's waiting alerts are counted, or
    /// `None` when nothing would change.
    fn next_status(
        &self,
        key: &ReportKey,
        report: &AlertReport,
        pending: &Pending,
        related: &[RelatedIncident],
    ) -> Option<AlertReportStatus> {
        let status = report.status.clone().unwrap_or_default();
        let mut next = aggregate::apply(&status, &pending.delta, &self.config.bounds);
        let before = status.occurrences.as_ref().map_or(0, |o| o.count);
        let after = next.occurrences.as_ref().map_or(0, |o| o.count);
        let related_names: Vec<String> = related.iter().map(|r| r.report.clone()).collect();
        let related_changed = self
            .known()
            .get(key)
            .is_none_or(|k| k.related != related_names);
        let refresh = status.analysis.is_none() || step(before) != step(after) || related_changed;
        let generation = report.metadata.generation;
        if refresh {
            let condition = match self.analyze(&pending.first, after, related) {
                Some(analysis) => {
                    let (reason, message) = match analysis.basis {
                        Basis::Rule => ("RuleKnowledge", "analysed with knowledge of this rule"),
                        Basis::Tags => ("TagKnowledge", "analysed from the rule's tags only"),
                        Basis::Generic => (
                            "GenericKnowledge",
                            "nothing specific is known about this rule: analysed from its priority and source",
                        ),
                    };
                    next.analysis = Some(analysis);
                    condition("True", reason, message, generation)
                }
                None => condition(
                    "False",
                    "KnowledgeUnavailable",
                    "the built-in knowledge did not load: see the operator's log at start-up",
                    generation,
                ),
            };
            aggregate::set_condition(&mut next.conditions, condition);
        }
        next.observed_generation = generation;
        (next != status).then_some(next)
    }
}

fn condition(status: &str, reason: &str, message: &str, generation: Option<i64>) -> Condition {
    Condition {
        type_: CONDITION_ANALYZED.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        last_transition_time: Time(jiff::Timestamp::now()),
        observed_generation: generation,
    }
}

fn step(count: u64) -> usize {
    COUNT_STEPS.iter().filter(|s| count >= **s).count()
}

/// True when a write may have been applied although it failed: the
/// connection broke, or the API server failed after accepting it (5xx).
fn answer_in_doubt<T>(answer: &Result<T, kube::Error>) -> bool {
    match answer {
        Ok(_) => false,
        Err(kube::Error::Api(s)) => s.code >= 500,
        Err(_) => true,
    }
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(s) if s.is_conflict())
}

/// The first alert of a report, rebuilt from its spec for re-analysis.
fn alert_of(spec: &AlertReportSpec) -> Alert {
    Alert {
        time: spec.event.time.clone(),
        timestamp: spec.event.time.as_deref().and_then(|t| t.parse().ok()),
        rule: spec.rule.clone(),
        priority: spec.priority,
        source: spec.source.clone(),
        hostname: spec.event.hostname.clone(),
        output: spec.event.output.clone(),
        output_fields: spec.event.output_fields.clone(),
        tags: spec.tags.clone(),
        uuid: spec.event.uuid.clone(),
    }
}

fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(s) if s.is_not_found())
}

/// 0.5 s, 1 s, 2 s... up to 30 s.
fn backoff(attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(6);
    Duration::from_millis(500u64 << exp).min(Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(100), Duration::from_secs(30));
    }

    #[test]
    fn the_analysis_is_refreshed_when_the_count_crosses_a_step() {
        assert_eq!(step(0), 0);
        assert_eq!(step(1), step(9));
        assert_ne!(step(9), step(10));
        assert_eq!(step(1000), step(9999));
    }
}
