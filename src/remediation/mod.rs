//! Answering AlertReports with the actions their policies declare.
//!
//! Every replica watches reports and policies; only the lease holder decides
//! and acts. For each report the pipeline is: read the report fresh (IO) →
//! match policies and verify targets (pure, with the pod read live) → record
//! every decision in `status.remediations` with the report's
//! `resourceVersion` as precondition (IO) → only then run the actions whose
//! record says `Running` (IO) → record their outcome (IO).
//!
//! The record on the report is the idempotency key: one record per report,
//! policy and action index, ever. A replica that races another gets 409 on
//! the recording step and re-reads; a replica that finds a `Running` record it
//! did not start (its leader died mid-action) marks it `Failed` instead of
//! running it again.

pub mod actions;
pub mod limits;
pub mod notify;

use crate::crd::{
    Action, ActionType, AlertReport, Approval, ClusterRemediationPolicy, PolicyMode,
    RemediationPolicy, RemediationRecord, RemediationState,
};
use crate::intake::queue::Protect;
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::policy::verify::{self, Verdict};
use crate::policy::{self, Incident, PolicyView, validation};
use actions::{Target, Undo};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use limits::{Admission, LimitConfig, Limits, Refusal};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Annotate a report `peregrine.dev/approve=true` to run its PendingApproval actions.
pub const ANNOTATION_APPROVE: &str = "peregrine.dev/approve";
/// Annotate a report `peregrine.dev/revert=true` to undo its reversible actions now.
pub const ANNOTATION_REVERT: &str = "peregrine.dev/revert";
/// The ConfigMap (in the operator's namespace) that exists while the circuit
/// breaker is open. Delete it to reset the breaker.
pub const BREAKER_CONFIGMAP: &str = "peregrine-circuit-breaker";

/// How the remediation behaves.
#[derive(Clone, Debug)]
pub struct RemediationConfig {
    pub operator_namespace: String,
    /// Never acted on.
    pub protected_namespaces: Vec<String>,
    pub limits: LimitConfig,
}

/// Why a report could not be remediated now; retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum RemediationError {
    #[error("cannot read AlertReport {report}: {source}")]
    Read {
        report: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "cannot record remediation decisions on AlertReport {report}: {source}. Grant patch on alertreports/status"
    )]
    Record {
        report: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot read pod {pod} to verify the target: {source}. Grant get on pods")]
    ReadPod {
        pod: String,
        #[source]
        source: kube::Error,
    },
}

type Key = (String, String, String, u32);

/// The remediation controller's shared state.
pub struct Remediator {
    client: Client,
    config: RemediationConfig,
    leadership: Leadership,
    namespaced: Store<DeserializeGuard<RemediationPolicy>>,
    cluster: Store<DeserializeGuard<ClusterRemediationPolicy>>,
    /// Bumped by every policy watch event, after the stores took it.
    policies_changed: Arc<AtomicU64>,
    /// The policies as of a `policies_changed` value: the intake asks for
    /// every alert, and building them validates each policy.
    policies_cache: Mutex<Option<(u64, Arc<Vec<PolicyView>>)>>,
    reports: crate::report::cache::ReportCache,
    limits: Mutex<Limits>,
    breaker: Mutex<Option<String>>,
    /// Outcomes of actions whose final record could not be written yet.
    outcomes: Mutex<HashMap<Key, RemediationRecord>>,
    recorder: Recorder,
    metrics: Metrics,
    backoff: Mutex<HashMap<(String, String), u32>>,
    trigger: futures::channel::mpsc::UnboundedSender<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Remediator {
    /// Starts watching policies and reports; acts whenever `leadership` holds the lease.
    pub fn start(
        client: Client,
        config: RemediationConfig,
        leadership: Leadership,
        reports: crate::report::cache::ReportCache,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> (Arc<Remediator>, tokio::task::JoinHandle<()>) {
        let (trigger, triggered) = futures::channel::mpsc::unbounded();
        let policies_changed = Arc::new(AtomicU64::new(0));
        let (namespaced, ns_writer) = reflector::store();
        let ns_stream = watcher(
            Api::<DeserializeGuard<RemediationPolicy>>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(ns_writer)
        .inspect({
            let changed = policies_changed.clone();
            move |_| {
                changed.fetch_add(1, Ordering::Release);
            }
        })
        .applied_objects();
        let (cluster, cl_writer) = reflector::store();
        let cl_stream = watcher(
            Api::<DeserializeGuard<ClusterRemediationPolicy>>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(cl_writer)
        .inspect({
            let changed = policies_changed.clone();
            move |_| {
                changed.fetch_add(1, Ordering::Release);
            }
        })
        .applied_objects();
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "peregrine".into(),
                instance: Some(leadership.identity().to_string()),
            },
        );
        let remediator = Arc::new(Remediator {
            client: client.clone(),
            config,
            leadership: leadership.clone(),
            namespaced,
            cluster,
            policies_changed,
            policies_cache: Mutex::new(None),
            reports,
            limits: Mutex::new(Limits::default()),
            breaker: Mutex::new(None),
            outcomes: Mutex::new(HashMap::new()),
            recorder,
            metrics,
            backoff: Mutex::new(HashMap::new()),
            trigger,
        });
        let r = remediator.clone();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            let policy_events = {
                let r = r.clone();
                futures::stream::select(
                    ns_stream.map(|e| e.map(|_| ()).map_err(|e| e.to_string())),
                    cl_stream.map(|e| e.map(|_| ()).map_err(|e| e.to_string())),
                )
                .for_each(move |e| {
                    if let Err(error) = e {
                        tracing::warn!(%error, "watching remediation policies failed; retrying with backoff");
                    }
                    let _ = r.trigger.unbounded_send(());
                    async {}
                })
            };
            let leader_changes = {
                let r = r.clone();
                let mut changes = r.leadership.changes();
                async move {
                    while changes.changed().await.is_ok() {
                        if *changes.borrow_and_update() {
                            r.seed_limits();
                            let _ = r.trigger.unbounded_send(());
                        }
                    }
                }
            };
            let breaker = r.clone().watch_breaker();
            let statuses = r.clone().policy_status_loop();
            let controller = Controller::new(
                Api::<DeserializeGuard<AlertReport>>::all(r.client.clone()),
                watcher::Config::default(),
            )
            .reconcile_all_on(triggered)
            .graceful_shutdown_on({
                let stop = stop.clone();
                async move { stop.cancelled().await }
            })
            .run(reconcile, error_policy, r.clone())
            .for_each(|_| async {});
            tokio::select! {
                () = controller => {}
                () = policy_events => {}
                () = leader_changes => {}
                () = breaker => {}
                () = statuses => {}
                () = stop.cancelled() => {}
            }
        });
        (remediator, task)
    }

    /// Every valid policy of both kinds.
    pub fn policies(&self) -> Arc<Vec<PolicyView>> {
        // Read before the stores: a change that lands meanwhile bumps it
        // again, and the next call rebuilds.
        let changed = self.policies_changed.load(Ordering::Acquire);
        if let Some((seen, policies)) = lock(&self.policies_cache).as_ref()
            && *seen == changed
        {
            return policies.clone();
        }
        let mut all: Vec<PolicyView> = self
            .namespaced
            .state()
            .iter()
            .filter_map(|g| g.0.as_ref().ok())
            .filter_map(PolicyView::namespaced)
            .collect();
        all.extend(
            self.cluster
                .state()
                .iter()
                .filter_map(|g| g.0.as_ref().ok())
                .filter_map(PolicyView::cluster),
        );
        all.sort_by(|a, b| a.id.cmp(&b.id));
        let all = Arc::new(all);
        *lock(&self.policies_cache) = Some((changed, all.clone()));
        all
    }

    /// The queue's protect hook: an alert that a valid policy may answer is
    /// never shed (nor is anything `fallback` protects).
    pub fn protect(self: &Arc<Self>, fallback: Protect) -> Protect {
        let me = Arc::downgrade(self);
        Arc::new(move |alert| {
            if fallback(alert) {
                return true;
            }
            let Some(me) = me.upgrade() else { return false };
            let namespace = alert
                .output_fields
                .get("k8s.ns.name")
                .and_then(crate::falco::value_text)
                .unwrap_or_else(|| me.config.operator_namespace.clone());
            me.policies().iter().any(|p| {
                p.is_ready()
                    && (p.scope.contains(&namespace, None) || p.scope.needs_namespace_labels())
                    && policy::may_match_alert(&p.spec.match_, alert)
            })
        })
    }

    fn breaker_reason(&self) -> Option<String> {
        lock(&self.breaker).clone()
    }

    /// Gives back the limits counted for actions whose decision was not recorded.
    fn release(&self, runs: &[Run]) {
        let mut limits = lock(&self.limits);
        for run in runs {
            limits.release(&run.admission);
        }
    }

    /// Seeds rate limits, cooldowns and the budget from the records on the reports.
    fn seed_limits(&self) {
        let mut limits = lock(&self.limits);
        limits.reset();
        let policies: HashMap<String, PolicyView> = self
            .policies()
            .iter()
            .map(|p| (p.id.clone(), p.clone()))
            .collect();
        for report in self.reports.all() {
            let workload = workload_key(&report);
            for r in report.status.iter().flat_map(|s| &s.remediations) {
                if !matches!(
                    r.state,
                    RemediationState::Running
                        | RemediationState::Succeeded
                        | RemediationState::Reverted
                ) {
                    continue;
                }
                let destructive = policies
                    .get(&r.policy)
                    .and_then(|p| p.spec.actions.get(r.action_index as usize))
                    .is_some_and(|a| validation::destructive(a.type_));
                limits.seed(&r.policy, &workload, destructive, r.decided_at.0);
            }
        }
    }

    async fn watch_breaker(self: Arc<Self>) {
        let api: Api<ConfigMap> =
            Api::namespaced(self.client.clone(), &self.config.operator_namespace);
        let stream = watcher(
            api,
            watcher::Config::default().fields(&format!("metadata.name={BREAKER_CONFIGMAP}")),
        )
        .default_backoff();
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => {
                    let reason = cm
                        .data
                        .as_ref()
                        .and_then(|d| d.get("reason").cloned())
                        .unwrap_or_else(|| "opened by an admin".to_string());
                    *lock(&self.breaker) = Some(reason);
                    self.metrics.circuit_breaker_open.set(1);
                }
                Ok(watcher::Event::Delete(_)) => {
                    if lock(&self.breaker).take().is_some() {
                        tracing::warn!(
                            "circuit breaker reset (its ConfigMap was deleted): policies act again"
                        );
                    }
                    lock(&self.limits).reset_breaker_window();
                    self.metrics.circuit_breaker_open.set(0);
                    let _ = self.trigger.unbounded_send(());
                }
                Ok(watcher::Event::Init) => {}
                Ok(watcher::Event::InitDone) => {}
                Err(error) => {
                    tracing::warn!(%error, "watching the circuit breaker ConfigMap failed; retrying")
                }
            }
        }
    }

    async fn open_breaker(&self, reason: &str) {
        if lock(&self.breaker).replace(reason.to_string()).is_some() {
            return;
        }
        self.metrics.circuit_breaker_open.set(1);
        let ns = &self.config.operator_namespace;
        tracing::error!(
            reason,
            "CIRCUIT BREAKER OPEN: every remediation policy now behaves as DryRun. Reset with: kubectl -n {ns} delete configmap {BREAKER_CONFIGMAP}"
        );
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": BREAKER_CONFIGMAP, "namespace": ns,
                "labels": {"app.kubernetes.io/managed-by": "peregrine"}},
            "data": {
                "state": "Open",
                "reason": reason,
                "openedAt": Timestamp::now().to_string(),
                "reset": format!("kubectl -n {ns} delete configmap {BREAKER_CONFIGMAP}"),
            }
        });
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        match api
            .patch(
                BREAKER_CONFIGMAP,
                &PatchParams::apply(crate::FIELD_MANAGER).force(),
                &Patch::Apply(&cm),
            )
            .await
        {
            Ok(cm) => {
                let event = Event {
                    type_: EventType::Warning,
                    reason: "CircuitBreakerOpen".into(),
                    note: Some(truncate(&format!(
                        "{reason}. Reset: kubectl -n {ns} delete configmap {BREAKER_CONFIGMAP}"
                    ))),
                    action: "Remediate".into(),
                    secondary: None,
                };
                let _ = self.recorder.publish(&event, &cm.object_ref(&())).await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot record the open circuit breaker in its ConfigMap; it holds in this replica only")
            }
        }
    }

    /// Writes each policy's status while this replica leads.
    async fn policy_status_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !self.leadership.is_leader() {
                continue;
            }
            let reports = self.reports.all();
            let breaker = self.breaker_reason();
            let now = Time(Timestamp::now());
            for p in self.policies().iter() {
                let status = policy::policy_status(p, &reports, breaker.as_deref(), &now);
                if !policy::status_changed(p.status.as_ref(), &status) {
                    continue;
                }
                let patch = Patch::Merge(json!({ "status": status }));
                let result = match &p.namespace {
                    Some(ns) => Api::<RemediationPolicy>::namespaced(self.client.clone(), ns)
                        .patch_status(&p.name, &PatchParams::default(), &patch)
                        .await
                        .map(|_| ()),
                    None => Api::<ClusterRemediationPolicy>::all(self.client.clone())
                        .patch_status(&p.name, &PatchParams::default(), &patch)
                        .await
                        .map(|_| ()),
                };
                if let Err(error) = result {
                    tracing::warn!(policy = %p.id, %error, "cannot write the policy's status");
                } else if let Err(invalid) = &p.checked {
                    tracing::warn!(policy = %p.id, %invalid, "policy is invalid: it does nothing until fixed");
                }
            }
        }
    }

    async fn publish(
        &self,
        report: &AlertReport,
        target: Option<ObjectReference>,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        // The action type is the Event's action: the recorder folds repeats
        // into one series by (reason, action, object), never by note, so a
        // shared action would show one note (the first action's) for all.
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(truncate(&note)),
            action: action.to_string(),
            secondary: target.clone(),
        };
        if let Err(error) = self.recorder.publish(&event, &report.object_ref(&())).await {
            tracing::debug!(%error, "cannot record an event on the report");
        }
        if let Some(target) = target {
            let event = Event {
                secondary: Some(report.object_ref(&())),
                ..event
            };
            if let Err(error) = self.recorder.publish(&event, &target).await {
                tracing::debug!(%error, "cannot record an event on the target");
            }
        }
    }
}

fn truncate(text: &str) -> String {
    let mut s: String = text.chars().take(1000).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}

fn workload_key(report: &AlertReport) -> String {
    let s = &report.spec.subject;
    let ns = s.namespace.clone().unwrap_or_default();
    match (&s.workload, &s.pod, &s.node) {
        (Some(w), _, _) => format!("{ns}/{}/{}", w.kind, w.name),
        (None, Some(p), _) => format!("{ns}/Pod/{p}"),
        (None, None, Some(n)) => format!("Node/{n}"),
        _ => report.name_any(),
    }
}

fn error_policy(
    obj: Arc<DeserializeGuard<AlertReport>>,
    error: &RemediationError,
    ctx: Arc<Remediator>,
) -> Requeue {
    let key = (
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default(),
    );
    let mut backoff = lock(&ctx.backoff);
    let n = backoff.entry(key).or_insert(0);
    *n = (*n + 1).min(8);
    let delay = Duration::from_millis(250 << *n);
    tracing::warn!(%error, retry_in = ?delay, "remediation failed; retrying");
    Requeue::requeue(delay)
}

async fn reconcile(
    obj: Arc<DeserializeGuard<AlertReport>>,
    ctx: Arc<Remediator>,
) -> Result<Requeue, RemediationError> {
    let Ok(report) = &obj.0 else {
        return Ok(Requeue::await_change());
    };
    if !ctx.leadership.is_leader() {
        return Ok(Requeue::await_change());
    }
    let namespace = report.namespace().unwrap_or_default();
    let name = report.name_any();
    let span = tracing::info_span!(
        "remediate",
        report = %name,
        namespace = %namespace,
        pod = report.spec.subject.pod.as_deref().unwrap_or(""),
        rule = %report.spec.rule,
    );
    let result = ctx.remediate(&namespace, &name).instrument(span).await;
    if result.is_ok() {
        lock(&ctx.backoff).remove(&(namespace, name));
    }
    result
}

/// A decision to run, with what it runs on.
struct Run {
    index: usize,
    policy: PolicyView,
    action: Action,
    target: Target,
    /// What the limits counted for it, given back if the decision is not recorded.
    admission: Admission,
}

/// The live objects an alert names, read once per reconcile.
struct Facts {
    pod: Option<Pod>,
    hostname_is_node: bool,
}

impl Remediator {
    async fn facts(&self, report: &AlertReport) -> Result<Facts, RemediationError> {
        let pod = match verify::named_pod(report) {
            Some((ns, name)) if !self.config.protected_namespaces.contains(&ns) => {
                Api::<Pod>::namespaced(self.client.clone(), &ns)
                    .get_opt(&name)
                    .await
                    .map_err(|source| RemediationError::ReadPod {
                        pod: format!("{ns}/{name}"),
                        source,
                    })?
            }
            _ => None,
        };
        let hostname_is_node = match &report.spec.event.hostname {
            Some(h) => matches!(
                Api::<Node>::all(self.client.clone()).get_opt(h).await,
                Ok(Some(_))
            ),
            None => false,
        };
        Ok(Facts {
            pod,
            hostname_is_node,
        })
    }

    /// The verified target of `action`.
    fn target(&self, action: &Action, report: &AlertReport, facts: &Facts) -> Verdict<Target> {
        if action.type_ == ActionType::Notify {
            return Verdict::Verified(Target::Webhook);
        }
        if verify::named_pod(report).is_none() && actions::on_node(action) {
            // A host alert: the node is its hostname, when that is a Node.
            return match (&report.spec.event.hostname, facts.hostname_is_node) {
                (Some(h), true) => Verdict::Verified(Target::Node(h.clone())),
                (Some(h), false) => Verdict::Rejected(format!(
                    "the alert's hostname {h} is not a Node of this cluster: nothing was touched"
                )),
                (None, _) => Verdict::Skipped("the alert names neither a pod nor a node".into()),
            };
        }
        let pod = match verify::verify_pod(
            report,
            &self.config.protected_namespaces,
            facts.pod.as_ref(),
            facts.hostname_is_node,
        ) {
            Verdict::Verified(p) => p,
            Verdict::Rejected(r) => return Verdict::Rejected(r),
            Verdict::Skipped(r) => return Verdict::Skipped(r),
        };
        if matches!(
            action.type_,
            ActionType::DeletePod | ActionType::ScaleToZero
        ) && !action.include_unmanaged.unwrap_or(false)
            && let Some(reason) = verify::unmanaged_reason(&pod)
        {
            return Verdict::Skipped(reason);
        }
        if actions::on_node(action) {
            return match &pod.node {
                Some(n) => Verdict::Verified(Target::Node(n.clone())),
                None => Verdict::Skipped(format!(
                    "pod {}/{} is not bound to a node yet",
                    pod.namespace, pod.name
                )),
            };
        }
        Verdict::Verified(Target::Pod(pod))
    }

    /// Passes the limits for one action about to run: what was counted, or
    /// the state and reason to record instead.
    async fn gate(
        &self,
        p: &PolicyView,
        action: &Action,
        workload: &str,
    ) -> Result<Admission, (RemediationState, String)> {
        let rate = p.checked.as_ref().ok().and_then(|c| c.rate_limit);
        let admitted = lock(&self.limits).admit_tentatively(
            &self.config.limits,
            &p.id,
            workload,
            rate,
            validation::destructive(action.type_),
            Timestamp::now(),
        );
        match admitted {
            Ok(admission) => Ok(admission),
            Err(Refusal::Skip(reason)) => Err((RemediationState::Skipped, reason)),
            Err(Refusal::BreakerOpened(reason)) => {
                self.open_breaker(&reason).await;
                Err((RemediationState::DryRun, format!("DryRun: {reason}")))
            }
        }
    }

    async fn remediate(&self, namespace: &str, name: &str) -> Result<Requeue, RemediationError> {
        let api: Api<AlertReport> = Api::namespaced(self.client.clone(), namespace);
        let report_id = format!("{namespace}/{name}");
        let Some(report) = api
            .get_opt(name)
            .await
            .map_err(|source| RemediationError::Read {
                report: report_id.clone(),
                source,
            })?
        else {
            return Ok(Requeue::await_change());
        };
        let now = Time(Timestamp::now());
        let mut records = report
            .status
            .as_ref()
            .map(|s| s.remediations.clone())
            .unwrap_or_default();
        let before = records.clone();
        let annotations = report.annotations();
        let approved = annotations.get(ANNOTATION_APPROVE).map(String::as_str) == Some("true");
        let revert = annotations.get(ANNOTATION_REVERT).map(String::as_str) == Some("true");
        let policies = self.policies();
        let by_id: HashMap<&str, &PolicyView> =
            policies.iter().map(|p| (p.id.as_str(), p)).collect();
        let workload = workload_key(&report);
        let breaker = self.breaker_reason();

        // Running records this replica did not finish: their outcome, or Failed.
        for r in records.iter_mut() {
            if r.state != RemediationState::Running {
                continue;
            }
            let key = (
                report_id.clone(),
                r.policy.clone(),
                r.action.clone(),
                r.action_index,
            );
            match lock(&self.outcomes).remove(&key) {
                Some(outcome) => *r = outcome,
                None => {
                    r.state = RemediationState::Failed;
                    r.reason = "interrupted: the operator that started this action stopped before recording its outcome; it is not run again, check the target".into();
                    r.updated_at = now.clone();
                }
            }
        }

        let facts = self.facts(&report).await?;
        let pod_labels = facts.pod.as_ref().and_then(|p| p.metadata.labels.clone());
        let mut runs: Vec<Run> = Vec::new();
        let mut reverts: Vec<usize> = Vec::new();

        // Approved, or reverted before approval.
        for (i, r) in records.iter_mut().enumerate() {
            if r.state != RemediationState::PendingApproval {
                continue;
            }
            if revert {
                r.state = RemediationState::Skipped;
                r.reason = format!("{ANNOTATION_REVERT}=true was set before approval: not run");
                r.updated_at = now.clone();
                continue;
            }
            if !approved {
                continue;
            }
            let Some(p) = by_id.get(r.policy.as_str()) else {
                r.state = RemediationState::Skipped;
                r.reason = "approved, but the policy no longer exists".into();
                r.updated_at = now.clone();
                continue;
            };
            let Some(action) = p.spec.actions.get(r.action_index as usize).cloned() else {
                continue;
            };
            let (state, reason, target) = self
                .decide_run(
                    p,
                    &action,
                    &report,
                    &facts,
                    &workload,
                    breaker.as_deref(),
                    true,
                )
                .await;
            r.state = state;
            r.reason = reason;
            r.updated_at = now.clone();
            if let Some((target, admission)) = target {
                r.target = Some(target.describe());
                runs.push(Run {
                    index: i,
                    policy: (*p).clone(),
                    action,
                    target,
                    admission,
                });
            }
        }

        // Reverts: on the annotation, or at expiry.
        for (i, r) in records.iter().enumerate() {
            if r.state == RemediationState::Succeeded
                && r.undo.is_some()
                && (revert || r.expires_at.as_ref().is_some_and(|e| e.0 <= now.0))
            {
                reverts.push(i);
            }
        }

        // New decisions.
        if let Some(ns_labels) = self.namespace_labels(&policies, namespace).await {
            for p in policies.iter().filter(|p| p.is_ready()) {
                if !p.scope.contains(namespace, ns_labels.as_ref()) {
                    continue;
                }
                let incident = Incident::of_report(&report, pod_labels.as_ref());
                if policy::match_incident(&p.spec.match_, &incident).is_err() {
                    continue;
                }
                let first_time = !records.iter().any(|r| r.policy == p.id);
                let cooling = if first_time {
                    let cooldown = p.checked.as_ref().ok().and_then(|c| c.cooldown);
                    lock(&self.limits).cooling_down(&p.id, &workload, cooldown, now.0)
                } else {
                    None
                };
                for (index, action) in p.spec.actions.iter().enumerate() {
                    let index = index as u32;
                    if records
                        .iter()
                        .any(|r| r.policy == p.id && r.action_index == index)
                    {
                        continue;
                    }
                    let (state, reason, target) = match &cooling {
                        Some(reason) => (RemediationState::Skipped, reason.clone(), None),
                        None => {
                            self.decide_run(
                                p,
                                action,
                                &report,
                                &facts,
                                &workload,
                                breaker.as_deref(),
                                approved,
                            )
                            .await
                        }
                    };
                    let described = match (&target, &state) {
                        (Some((t, _)), _) => Some(t.describe()),
                        _ => match self.target(action, &report, &facts) {
                            Verdict::Verified(t) => Some(t.describe()),
                            _ => verify::named_pod(&report).map(|(ns, n)| format!("Pod/{ns}/{n}")),
                        },
                    };
                    self.metrics
                        .action(action_family(action.type_), state_label(state));
                    tracing::info!(policy = %p.id, action = ?action.type_, state = ?state, %reason, "remediation decided");
                    records.push(RemediationRecord {
                        policy: p.id.clone(),
                        action: action_name(action.type_).to_string(),
                        action_index: index,
                        target: described,
                        state,
                        reason,
                        decided_at: now.clone(),
                        updated_at: now.clone(),
                        expires_at: None,
                        undo: None,
                    });
                    if let Some((target, admission)) = target {
                        runs.push(Run {
                            index: records.len() - 1,
                            policy: p.clone(),
                            action: action.clone(),
                            target,
                            admission,
                        });
                    }
                }
            }
        }

        if records == before && reverts.is_empty() {
            return Ok(self.next_visit(&records));
        }
        // Record before acting: fails with 409 if another replica recorded first.
        let version = report.resource_version();
        if records != before {
            match self
                .write_records(&api, name, version.clone(), &records)
                .await
            {
                Ok(()) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    tracing::debug!("the report changed while deciding; deciding again");
                    self.release(&runs);
                    return Ok(Requeue::requeue(Duration::from_millis(100)));
                }
                Err(source) => {
                    self.release(&runs);
                    return Err(RemediationError::Record {
                        report: report_id,
                        source,
                    });
                }
            }
            for r in records.iter().skip(before.len()) {
                if matches!(
                    r.state,
                    RemediationState::Rejected
                        | RemediationState::Skipped
                        | RemediationState::DryRun
                        | RemediationState::PendingApproval
                ) {
                    let type_ = if r.state == RemediationState::Rejected {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    };
                    let reason = format!("Remediation{:?}", r.state);
                    self.publish(
                        &report,
                        None,
                        type_,
                        &reason,
                        &r.action,
                        format!("{} {}: {}", r.policy, r.action, r.reason),
                    )
                    .await;
                }
            }
        }

        // Act, then record each outcome.
        let term = self.leadership.term();
        let secret_ns = |p: &PolicyView| {
            p.namespace
                .clone()
                .unwrap_or_else(|| self.config.operator_namespace.clone())
        };
        for run in runs {
            let mut record = records[run.index].clone();
            if !self.leadership.confirm().await {
                record.state = RemediationState::Failed;
                record.reason = "this replica lost the lease before running the action: not run, and not retried".into();
                record.updated_at = Time(Timestamp::now());
                self.write_outcomes(&api, &report_id, name, vec![(run.index, record)])
                    .await;
                continue;
            }
            let started = std::time::Instant::now();
            let secret_namespace = secret_ns(&run.policy);
            let result = tokio::select! {
                r = actions::execute(&self.client, &run.action, &report, &run.target, facts.pod.as_ref(), &run.policy.id, &secret_namespace) => Some(r),
                () = term.cancelled() => None,
            };
            let when = Time(Timestamp::now());
            record.updated_at = when.clone();
            let action = action_name(run.action.type_);
            match result {
                Some(Ok(done)) => {
                    self.metrics
                        .action(action_family(run.action.type_), "succeeded");
                    tracing::info!(policy = %run.policy.id, action, target = %done.target, elapsed_ms = started.elapsed().as_millis() as u64, "{}", done.reason);
                    record.state = RemediationState::Succeeded;
                    record.reason = done.reason.clone();
                    record.target = Some(done.target.clone());
                    record.undo = done
                        .undo
                        .as_ref()
                        .and_then(|u| serde_json::to_string(u).ok());
                    let expiry = run.policy.checked.as_ref().ok().and_then(|c| {
                        c.expire_after
                            .get(record.action_index as usize)
                            .copied()
                            .flatten()
                    });
                    if let Some(e) = expiry.filter(|_| record.undo.is_some()) {
                        record.expires_at = jiff::SignedDuration::try_from(e)
                            .ok()
                            .and_then(|d| when.0.checked_add(d).ok())
                            .map(Time);
                    }
                    self.publish(
                        &report,
                        target_ref(&run.target),
                        EventType::Normal,
                        "RemediationSucceeded",
                        action,
                        format!("{} {action}: {}", run.policy.id, done.reason),
                    )
                    .await;
                }
                Some(Err(error)) => {
                    self.metrics
                        .action(action_family(run.action.type_), "failed");
                    tracing::warn!(policy = %run.policy.id, action, %error, "remediation action failed");
                    record.state = RemediationState::Failed;
                    record.reason = error.to_string();
                    self.publish(
                        &report,
                        target_ref(&run.target),
                        EventType::Warning,
                        "RemediationFailed",
                        action,
                        format!("{} {action}: {error}", run.policy.id),
                    )
                    .await;
                }
                None => {
                    record.state = RemediationState::Failed;
                    record.reason = "this replica lost the lease while the action ran: it may be partly done, and is not retried".into();
                }
            }
            // Each outcome is written as soon as it is known, so a replica
            // killed later leaves no finished action looking unfinished.
            self.write_outcomes(&api, &report_id, name, vec![(run.index, record)])
                .await;
        }
        let mut reverted: Vec<(usize, RemediationRecord)> = Vec::new();
        for i in reverts {
            let mut record = records[i].clone();
            let Some(undo) = record
                .undo
                .as_deref()
                .and_then(|u| serde_json::from_str::<Undo>(u).ok())
            else {
                continue;
            };
            if !self.leadership.confirm().await {
                break;
            }
            let why = if revert {
                format!("{ANNOTATION_REVERT}=true")
            } else {
                "expired".to_string()
            };
            match actions::revert(&self.client, &undo).await {
                Ok(done) => {
                    record.state = RemediationState::Reverted;
                    record.reason = format!("{why}: {done}");
                    record.updated_at = Time(Timestamp::now());
                    if let Some(t) = by_id
                        .get(record.policy.as_str())
                        .and_then(|p| p.spec.actions.get(record.action_index as usize))
                    {
                        self.metrics.action(action_family(t.type_), "reverted");
                    }
                    tracing::info!(policy = %record.policy, action = %record.action, "{}", record.reason);
                    self.publish(
                        &report,
                        None,
                        EventType::Normal,
                        "RemediationReverted",
                        &record.action,
                        format!("{} {}: {}", record.policy, record.action, record.reason),
                    )
                    .await;
                    reverted.push((i, record));
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot undo the action; retrying");
                }
            }
        }
        if !reverted.is_empty() {
            self.write_outcomes(&api, &report_id, name, reverted).await;
        }
        let after = api.get_opt(name).await.ok().flatten();
        let records = after
            .and_then(|r| r.status.map(|s| s.remediations))
            .unwrap_or(records);
        Ok(self.next_visit(&records))
    }

    /// The decision for one action about to run: its state, reason and target.
    #[allow(clippy::too_many_arguments)]
    async fn decide_run(
        &self,
        p: &PolicyView,
        action: &Action,
        report: &AlertReport,
        facts: &Facts,
        workload: &str,
        breaker: Option<&str>,
        approved: bool,
    ) -> (RemediationState, String, Option<(Target, Admission)>) {
        let target = match self.target(action, report, facts) {
            Verdict::Verified(t) => t,
            Verdict::Rejected(r) => return (RemediationState::Rejected, r, None),
            Verdict::Skipped(r) => return (RemediationState::Skipped, r, None),
        };
        let what = format!("{} {}", action_name(action.type_), target.describe());
        if p.spec.mode == PolicyMode::DryRun {
            return (
                RemediationState::DryRun,
                format!("DryRun: would {what} (set mode: Enforce to act)"),
                None,
            );
        }
        if let Some(reason) = breaker {
            return (
                RemediationState::DryRun,
                format!("DryRun: would {what}, but the circuit breaker is open ({reason})"),
                None,
            );
        }
        if p.spec.approval == Approval::Required && !approved {
            return (
                RemediationState::PendingApproval,
                format!("will {what} once the report is annotated {ANNOTATION_APPROVE}=true"),
                None,
            );
        }
        match self.gate(p, action, workload).await {
            Ok(admission) => (
                RemediationState::Running,
                format!("running: {what}"),
                Some((target, admission)),
            ),
            Err((state, reason)) => (state, reason, None),
        }
    }

    async fn namespace_labels(
        &self,
        policies: &[PolicyView],
        namespace: &str,
    ) -> Option<Option<BTreeMap<String, String>>> {
        if !policies.iter().any(|p| p.scope.needs_namespace_labels()) {
            return Some(None);
        }
        match Api::<Namespace>::all(self.client.clone())
            .get_opt(namespace)
            .await
        {
            Ok(ns) => Some(ns.and_then(|n| n.metadata.labels)),
            Err(error) => {
                tracing::warn!(%error, "cannot read the namespace's labels for namespaceSelector; trying later");
                None
            }
        }
    }

    async fn write_records(
        &self,
        api: &Api<AlertReport>,
        name: &str,
        version: Option<String>,
        records: &[RemediationRecord],
    ) -> Result<(), kube::Error> {
        let patch = json!({
            "metadata": {"resourceVersion": version},
            "status": {
                "remediations": records,
                "remediationSummary": summary(records),
            }
        });
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
    }

    /// Writes outcomes into the current report, retrying conflicts; what
    /// cannot be written is kept for the next visit.
    async fn write_outcomes(
        &self,
        api: &Api<AlertReport>,
        report_id: &str,
        name: &str,
        outcomes: Vec<(usize, RemediationRecord)>,
    ) {
        for _ in 0..8 {
            let current = match api.get_opt(name).await {
                Ok(Some(current)) => current,
                Ok(None) => {
                    tracing::debug!("the report is gone; its outcome is not recorded");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read the report to record an outcome; keeping it for the next attempt");
                    break;
                }
            };
            let mut records = current
                .status
                .as_ref()
                .map(|s| s.remediations.clone())
                .unwrap_or_default();
            for (_, outcome) in &outcomes {
                if let Some(r) = records
                    .iter_mut()
                    .find(|r| r.policy == outcome.policy && r.action_index == outcome.action_index)
                {
                    *r = outcome.clone();
                }
            }
            match self
                .write_records(api, name, current.resource_version(), &records)
                .await
            {
                Ok(()) => return,
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    tracing::debug!("the report changed while recording an outcome; retrying");
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot record the outcome of an action; keeping it for the next attempt");
                    break;
                }
            }
        }
        let mut kept = lock(&self.outcomes);
        for (_, outcome) in outcomes {
            kept.insert(
                (
                    report_id.to_string(),
                    outcome.policy.clone(),
                    outcome.action.clone(),
                    outcome.action_index,
                ),
                outcome,
            );
        }
        let _ = self.trigger.unbounded_send(());
    }

    fn next_visit(&self, records: &[RemediationRecord]) -> Requeue {
        let now = Timestamp::now();
        let next = records
            .iter()
            .filter(|r| r.state == RemediationState::Succeeded)
            .filter_map(|r| r.expires_at.as_ref())
            .map(|e| e.0.duration_since(now))
            .min();
        match next {
            Some(d) => Requeue::requeue(
                Duration::try_from(d).unwrap_or_default() + Duration::from_millis(50),
            ),
            None => Requeue::requeue(Duration::from_secs(300)),
        }
    }
}

fn target_ref(target: &Target) -> Option<ObjectReference> {
    match target {
        Target::Pod(p) => Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(p.namespace.clone()),
            name: Some(p.name.clone()),
            uid: Some(p.uid.clone()),
            ..Default::default()
        }),
        Target::Node(n) => Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(n.clone()),
            ..Default::default()
        }),
        Target::Webhook => None,
    }
}

/// The action type's name as it appears in records and metrics.
pub fn action_name(t: ActionType) -> &'static str {
    match t {
        ActionType::Label => "Label",
        ActionType::Annotate => "Annotate",
        ActionType::Isolate => "Isolate",
        ActionType::DeletePod => "DeletePod",
        ActionType::ScaleToZero => "ScaleToZero",
        ActionType::CordonNode => "CordonNode",
        ActionType::Notify => "Notify",
    }
}

/// The action family label of the metrics.
pub fn action_family(t: ActionType) -> &'static str {
    match t {
        ActionType::Label => "label",
        ActionType::Annotate => "annotate",
        ActionType::Isolate => "isolate",
        ActionType::DeletePod => "delete_pod",
        ActionType::ScaleToZero => "scale_to_zero",
        ActionType::CordonNode => "cordon_node",
        ActionType::Notify => "notify",
    }
}

/// The state label of the metrics for a decision.
pub fn state_label(state: RemediationState) -> &'static str {
    match state {
        RemediationState::DryRun => "dry_run",
        RemediationState::PendingApproval => "awaiting_approval",
        RemediationState::Running => "planned",
        RemediationState::Succeeded => "succeeded",
        RemediationState::Failed => "failed",
        RemediationState::Skipped => "skipped",
        RemediationState::Rejected => "rejected",
        RemediationState::Reverted => "reverted",
    }
}

/// One line for `kubectl get`: `Isolate: Succeeded, DeletePod: Rejected`.
pub fn summary(records: &[RemediationRecord]) -> Option<String> {
    if records.is_empty() {
        return None;
    }
    let mut parts: Vec<String> = records
        .iter()
        .take(3)
        .map(|r| format!("{}: {:?}", r.action, r.state))
        .collect();
    if records.len() > 3 {
        parts.push(format!("+{} more", records.len() - 3));
    }
    Some(parts.join(", "))
}
