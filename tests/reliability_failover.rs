//! Two replicas under a steady stream of alerts, the lease holder SIGKILLed
//! every few seconds and started again: no remediation action runs twice,
//! none is forgotten (each ends Succeeded, or Failed saying it was
//! interrupted), and at every moment one replica accepts alerts.
//! (One SIGKILL of a holder waiting on a webhook: tests/remediation.rs.)

#[path = "support/binary.rs"]
mod binary;
#[path = "support/operator.rs"]
mod support;

use binary::{Binary, free_port};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use peregrine::crd::{AlertReport, RemediationPolicy, RemediationRecord, RemediationState};
use peregrine::replay::{IntakeClient, TlsFiles};
use peregrine_testenv::{
    TestNamespace, bind_pod, create_node, mark_pod_running, poll_for, poll_until, unique_name,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

const WORKLOADS: usize = 24;
const KILLS: usize = 5;
const WAIT: Duration = Duration::from_secs(90);
const ACTIONS: [&str; 4] = ["Label", "Isolate", "ScaleToZero", "Notify"];

fn alert_about(pod: &Pod, node: &str) -> Value {
    let ns = pod.namespace().unwrap_or_default();
    let mut alert = shell_alert(&ns, &pod.name_any(), node);
    let id = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.container_id.clone())
        .unwrap_or_default();
    let id = id.rsplit_once("://").map_or(id.as_str(), |(_, i)| i);
    alert["output_fields"]["container.id"] = json!(&id[..12.min(id.len())]);
    alert["output_fields"]["k8s.pod.uid"] = json!(pod.uid());
    alert
}

fn records(report: &AlertReport) -> Vec<RemediationRecord> {
    report
        .status
        .as_ref()
        .map(|s| s.remediations.clone())
        .unwrap_or_default()
}

/// A webhook that counts the requests naming each report, and answers each
/// after a pause, so that kills land while actions are in flight.
struct Webhook {
    url: String,
    per_report: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl Webhook {
    async fn start() -> anyhow::Result<Webhook> {
        use axum::extract::State;
        type Shared = Arc<Mutex<BTreeMap<String, usize>>>;
        async fn hook(State(seen): State<Shared>, body: bytes::Bytes) -> http::StatusCode {
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let report = body["report"].as_str().unwrap_or_default().to_string();
            if let Ok(mut seen) = seen.lock() {
                *seen.entry(report).or_default() += 1;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            http::StatusCode::OK
        }
        let per_report: Shared = Arc::default();
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(per_report.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Webhook { url, per_report })
    }

    fn counts(&self) -> BTreeMap<String, usize> {
        self.per_report
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }
}

/// One replica: fixed ports, so that a restart answers where the killed one did.
struct Replica {
    name: &'static str,
    args: Vec<String>,
    intake: u16,
    health: u16,
    log: std::path::PathBuf,
    process: Option<Binary>,
}

impl Replica {
    fn new(name: &'static str, home: &str) -> anyhow::Result<Replica> {
        let (intake, health) = (free_port()?, free_port()?);
        let args = [
            format!("--intake-addr=127.0.0.1:{intake}"),
            format!("--health-addr=127.0.0.1:{health}"),
            format!("--namespace={home}"),
            "--intake-allow-unauthenticated".into(),
            "--flush-interval=300ms".into(),
            "--lease-duration=3s".into(),
            "--destructive-budget=1000".into(),
            "--circuit-breaker-threshold=1000".into(),
        ]
        .to_vec();
        let log = std::env::temp_dir().join(unique_name(&format!("peregrine-failover-{name}")));
        Ok(Replica {
            name,
            args,
            intake,
            health,
            log,
            process: None,
        })
    }

    async fn start(&mut self, cp: &peregrine_testenv::ControlPlane) -> anyhow::Result<()> {
        let mut process = Binary::start(cp, &self.args, self.health, self.log.clone())?;
        process.wait_ready().await?;
        self.process = Some(process);
        Ok(())
    }

    /// Whether `holder` (a Lease's holderIdentity) is this replica's current process.
    fn holds(&self, holder: &str) -> bool {
        self.process
            .as_ref()
            .is_some_and(|p| holder.contains(&format!("-{}-", p.pid())))
    }

    fn kill(&mut self) -> anyhow::Result<()> {
        match self.process.take() {
            Some(p) => p.kill(),
            None => Ok(()),
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.process.take();
        if std::env::var_os("PEREGRINE_TESTENV_KEEP").is_none() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// What the sender saw.
#[derive(Default)]
struct Tally {
    /// Alerts sent, each to both replicas.
    sent: AtomicU64,
    /// Alerts neither replica accepted.
    refused_by_both: AtomicU64,
    /// Non-202 answers (or no answer) per replica.
    refused_a: AtomicU64,
    refused_b: AtomicU64,
    accepted: AtomicU64,
    /// When each replica (a, b) acknowledged an alert.
    acks: Mutex<[Vec<Instant>; 2]>,
}

impl Tally {
    /// Acknowledgements of replica `i` in the `span` before `at`.
    fn acked_before(&self, i: usize, at: Instant, span: Duration) -> usize {
        self.acks.lock().map_or(0, |a| {
            a[i].iter()
                .filter(|t| **t <= at && at.duration_since(**t) <= span)
                .count()
        })
    }
}

async fn post_once(client: &mut Option<IntakeClient>, url: &str, body: &[u8]) -> bool {
    if client.is_none() {
        *client = IntakeClient::new(url, None, &TlsFiles::default()).ok();
    }
    let Some(c) = client.as_mut() else {
        return false;
    };
    match tokio::time::timeout(Duration::from_secs(10), c.post_alert(body.to_vec())).await {
        Ok(Ok(a)) if a.status.as_u16() == 202 => true,
        _ => {
            // The connection may have died with the process: a new one next time.
            *client = None;
            false
        }
    }
}

async fn events_on_reports(client: &Client, namespace: &str) -> anyhow::Result<Vec<Event>> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.kind.as_deref() == Some("AlertReport"))
        })
        .collect())
}

#[tokio::test]
async fn killing_the_lease_holder_repeatedly_under_load_repeats_and_forgets_no_action()
-> anyhow::Result<()> {
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let home = TestNamespace::create(&client, "peregrine-failover").await?;
    let ns = TestNamespace::create(&client, "failover").await?;
    let node = unique_name("worker");
    create_node(&client, &node).await?;

    // Workloads, each one pod Running on the node: one report each.
    let mut pods = Vec::new();
    for i in 0..WORKLOADS {
        let names = deployment(&client, ns.name(), &format!("app{i:02}"), 1).await?;
        bind_pod(&client, ns.name(), &names[0], &node).await?;
        pods.push(mark_pod_running(&client, ns.name(), &names[0]).await?);
    }
    let hook = Webhook::start().await?;
    Api::<Secret>::namespaced(client.clone(), ns.name())
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "hook"}, "stringData": {"url": hook.url}}),
            )?,
        )
        .await?;
    let policies: Api<RemediationPolicy> = Api::namespaced(client.clone(), ns.name());
    policies
        .patch(
            "contain",
            &PatchParams::apply("peregrine-tests").force(),
            &Patch::Apply(&json!({
                "apiVersion": "peregrine.dev/v1alpha1", "kind": "RemediationPolicy",
                "metadata": {"name": "contain", "namespace": ns.name()},
                "spec": {"mode": "Enforce", "actions": [
                    {"type": "Label", "labels": {"contained": "true"}},
                    {"type": "Isolate"},
                    {"type": "ScaleToZero"},
                    {"type": "Notify", "secretRef": {"name": "hook"}}
                ]}
            })),
        )
        .await?;

    let mut a = Replica::new("a", home.name())?;
    let mut b = Replica::new("b", home.name())?;
    a.start(cp).await?;
    b.start(cp).await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), home.name());
    let holder = || async {
        Ok::<_, anyhow::Error>(
            leases
                .get_opt("peregrine-leader")
                .await?
                .and_then(|l| l.spec)
                .and_then(|s| s.holder_identity)
                .unwrap_or_default(),
        )
    };

    // The load: one alert at a time, each to both replicas; a new workload
    // joins every 700 ms, so that new reports keep arriving across the kills.
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let bodies: Vec<Vec<u8>> = pods
        .iter()
        .map(|p| serde_json::to_vec(&alert_about(p, &node)))
        .collect::<Result<_, _>>()?;
    let sender = {
        let (tally, stop) = (tally.clone(), stop.clone());
        let urls = [a.intake, b.intake].map(|p| format!("http://127.0.0.1:{p}/v1/falco"));
        tokio::spawn(async move {
            let started = Instant::now();
            let mut clients: [Option<IntakeClient>; 2] = [None, None];
            let mut k = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let active = (1 + started.elapsed().as_millis() as usize / 700).min(bodies.len());
                let body = &bodies[k % active];
                k += 1;
                let [ca, cb] = &mut clients;
                let (ok_a, ok_b) =
                    tokio::join!(post_once(ca, &urls[0], body), post_once(cb, &urls[1], body));
                tally.sent.fetch_add(1, Ordering::SeqCst);
                if !ok_a {
                    tally.refused_a.fetch_add(1, Ordering::SeqCst);
                }
                if !ok_b {
                    tally.refused_b.fetch_add(1, Ordering::SeqCst);
                }
                if !ok_a && !ok_b {
                    tally.refused_by_both.fetch_add(1, Ordering::SeqCst);
                }
                tally
                    .accepted
                    .fetch_add(u64::from(ok_a) + u64::from(ok_b), Ordering::SeqCst);
                if let Ok(mut acks) = tally.acks.lock() {
                    let now = Instant::now();
                    for (i, ok) in [ok_a, ok_b].into_iter().enumerate() {
                        if ok {
                            acks[i].push(now);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Kill the holder every few seconds; start it again at once.
    let mut failovers = Vec::new();
    let mut in_flight_at_kills = 0usize;
    for kill in 0..KILLS {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let h = poll_for("a live replica holds the lease", WAIT, || async {
            let h = holder().await?;
            Ok::<_, anyhow::Error>((a.holds(&h) || b.holds(&h)).then_some(h))
        })
        .await?;
        let (index, victim) = if a.holds(&h) {
            (0, &mut a)
        } else {
            (1, &mut b)
        };
        victim.kill()?;
        let killed = Instant::now();
        // What it may have acknowledged without writing (as in tests/reliability_kill.rs).
        in_flight_at_kills += tally.acked_before(index, killed, Duration::from_secs(3));
        eprintln!("kill {}: SIGKILL replica {} ({h})", kill + 1, victim.name);
        victim.start(cp).await?;
        // Whichever replica wins the lease once the dead holder's expires.
        let new = poll_for("a live replica takes the lease", WAIT, || async {
            let now = holder().await?;
            Ok::<_, anyhow::Error>((a.holds(&now) || b.holds(&now)).then_some(now))
        })
        .await?;
        failovers.push(killed.elapsed());
        eprintln!(
            "kill {}: {new} took the lease after {:?}",
            kill + 1,
            killed.elapsed()
        );
    }
    // Every workload has joined the load by now; a little more, then stop.
    poll_until("every workload alerted", WAIT, || async {
        Ok::<_, anyhow::Error>(reports(&client, ns.name()).await?.len() == WORKLOADS)
    })
    .await?;
    stop.store(true, Ordering::SeqCst);
    sender.await?;

    // Every report decided every action, and none is left Running.
    let all = poll_for("every action of every report finished", WAIT, || async {
        let found = reports(&client, ns.name()).await?;
        let done = found.len() == WORKLOADS
            && found.iter().all(|r| {
                let r = records(r);
                r.len() == ACTIONS.len()
                    && r.iter().all(|r| {
                        !matches!(
                            r.state,
                            RemediationState::Running | RemediationState::PendingApproval
                        )
                    })
            });
        Ok::<_, anyhow::Error>(done.then_some(found))
    })
    .await;
    let all = match all {
        Ok(all) => all,
        Err(e) => {
            let found = reports(&client, ns.name()).await?;
            let states: Vec<String> = found
                .iter()
                .map(|r| {
                    format!(
                        "{}: {:?}",
                        r.name_any(),
                        records(r)
                            .iter()
                            .map(|r| (r.action.clone(), r.state, r.reason.clone()))
                            .collect::<Vec<_>>()
                    )
                })
                .collect();
            anyhow::bail!("{e}: {} reports\n{}", found.len(), states.join("\n"));
        }
    };

    // Count records and effects, per report and action.
    let sent_to_hook = hook.counts();
    let events = events_on_reports(&client, ns.name()).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns.name());
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let nps: Vec<NetworkPolicy> = Api::<NetworkPolicy>::namespaced(client.clone(), ns.name())
        .list(&ListParams::default())
        .await?
        .items;
    let mut duplicated = Vec::new();
    let mut forgotten = Vec::new();
    let mut outcomes: BTreeMap<(String, String), usize> = BTreeMap::new();
    for report in &all {
        let name = report.name_any();
        let rs = records(report);
        for action in ACTIONS {
            let of_action: Vec<&RemediationRecord> =
                rs.iter().filter(|r| r.action == action).collect();
            if of_action.len() != 1 {
                duplicated.push(format!("{name} {action}: {} records", of_action.len()));
            }
            // Events of a success, one per run of the action (a series counts repeats).
            let runs: i32 = events
                .iter()
                .filter(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str())
                        && e.reason.as_deref() == Some("RemediationSucceeded")
                        && e.note
                            .as_deref()
                            .is_some_and(|n| n.contains(&format!("/contain {action}:")))
                })
                .map(|e| e.series.as_ref().map_or(1, |s| s.count.max(1)))
                .sum();
            if runs > 1 {
                duplicated.push(format!("{name} {action}: {runs} success Events"));
            }
        }
        let posts = sent_to_hook.get(&name).copied().unwrap_or(0);
        if posts > 1 {
            duplicated.push(format!("{name} Notify: {posts} webhook requests"));
        }
        for r in &rs {
            let outcome = match r.state {
                RemediationState::Succeeded => "Succeeded",
                RemediationState::Failed
                    if r.reason.contains("interrupted") || r.reason.contains("lost the lease") =>
                {
                    "Failed (interrupted)"
                }
                _ => {
                    forgotten.push(format!("{name} {}: {:?}: {}", r.action, r.state, r.reason));
                    "other"
                }
            };
            *outcomes
                .entry((r.action.clone(), outcome.to_string()))
                .or_default() += 1;
            if r.state != RemediationState::Succeeded {
                continue;
            }
            // The effect of each success is there, and was made once.
            let workload = report
                .spec
                .subject
                .workload
                .as_ref()
                .map(|w| w.name.clone())
                .unwrap_or_default();
            match r.action.as_str() {
                "Notify" if posts != 1 => {
                    duplicated.push(format!("{name} Notify Succeeded with {posts} requests"))
                }
                "ScaleToZero" => {
                    let d = deployments.get(&workload).await?;
                    anyhow::ensure!(
                        d.spec.replicas == Some(0),
                        "{name}: Deployment {workload} not at 0"
                    );
                    if !r.reason.contains("from 1 replicas to 0") {
                        duplicated.push(format!("{name} ScaleToZero ran again: {}", r.reason));
                    }
                }
                "Isolate" => {
                    let n = nps
                        .iter()
                        .filter(|np| np.name_any() == format!("peregrine-isolate-{workload}"))
                        .count();
                    anyhow::ensure!(n == 1, "{name}: {n} NetworkPolicies for {workload}");
                }
                "Label" => {
                    // The pod may be gone (ScaleToZero); when it is still there, it is labelled.
                    if let Some(pod) = pods_api
                        .get_opt(report.spec.subject.pod.as_deref().unwrap_or_default())
                        .await?
                    {
                        anyhow::ensure!(
                            pod.labels().get("contained").map(String::as_str) == Some("true"),
                            "{name}: Label Succeeded but the pod is not labelled"
                        );
                    }
                }
                _ => {}
            }
        }
    }
    // One NetworkPolicy per report at most, none of another name.
    anyhow::ensure!(
        nps.len() <= WORKLOADS,
        "{} NetworkPolicies for {WORKLOADS} reports",
        nps.len()
    );
    // Both replicas stop cleanly, writing what they accepted; then the counts.
    for replica in [&mut a, &mut b] {
        if let Some(p) = replica.process.take() {
            p.terminate().await?;
        }
    }
    let counted: u64 = reports(&client, ns.name()).await?.iter().map(count).sum();
    let accepted = tally.accepted.load(Ordering::SeqCst);
    let lost = accepted.saturating_sub(counted);
    let sent = tally.sent.load(Ordering::SeqCst);
    let refused_by_both = tally.refused_by_both.load(Ordering::SeqCst);
    eprintln!(
        "failover: {KILLS} SIGKILLs of the lease holder, take-over after {failovers:?}; \
         {sent} alerts sent to both replicas, {accepted} acknowledged in all, {refused_by_both} refused by both \
         (replica a refused {}, b {}), {counted} counted in {} reports: {lost} lost to the SIGKILLs \
         (at most {in_flight_at_kills} acknowledged by a victim in the 3 s before its kill); records {outcomes:?}; \
         {} webhook requests; {} actions duplicated, {} forgotten",
        tally.refused_a.load(Ordering::SeqCst),
        tally.refused_b.load(Ordering::SeqCst),
        all.len(),
        sent_to_hook.values().sum::<usize>(),
        duplicated.len(),
        forgotten.len(),
    );
    assert!(
        duplicated.is_empty(),
        "duplicated:\n{}",
        duplicated.join("\n")
    );
    assert!(forgotten.is_empty(), "forgotten:\n{}", forgotten.join("\n"));
    assert_eq!(
        refused_by_both, 0,
        "the intake stopped accepting: {refused_by_both} alerts refused by both replicas"
    );
    let succeeded: usize = outcomes
        .iter()
        .filter(|((_, o), _)| o == "Succeeded")
        .map(|(_, n)| n)
        .sum();
    assert!(
        succeeded * 2 >= WORKLOADS * ACTIONS.len(),
        "most actions succeed: {outcomes:?}"
    );
    assert!(counted <= accepted, "counted more than acknowledged");
    assert!(
        lost <= in_flight_at_kills as u64,
        "lost {lost}, more than the {in_flight_at_kills} acknowledged just before the kills"
    );
    Ok(())
}
