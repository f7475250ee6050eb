//! Remediation policies answer AlertReports on the real local control plane:
//! what each action does, what is refused, and how it is undone.
//!
//! The operator watches every namespace, so the tests of this file run one
//! at a time (one operator at a time).

#[path = "support/operator.rs"]
mod support;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use peregrine::crd::{AlertReport, RemediationPolicy, RemediationRecord, RemediationState};
use peregrine_testenv::{
    ControlPlane, TestNamespace, bind_pod, create_node, mark_pod_running, poll_for, poll_until,
    unique_name,
};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::*;

/// Changes a correct alert into a forged one.
type Forge = Box<dyn Fn(&mut Value)>;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WAIT: Duration = Duration::from_secs(60);

/// A namespace with a Deployment whose one pod runs on a node, as a kubelet would report it.
struct Scene {
    client: Client,
    ns: TestNamespace,
    node: String,
    pod: Pod,
}

impl Scene {
    async fn new(cp: &ControlPlane, prefix: &str, deployment_name: &str) -> anyhow::Result<Scene> {
        let client = cp.client().await?;
        let ns = TestNamespace::create(&client, prefix).await?;
        let node = unique_name("worker");
        create_node(&client, &node).await?;
        let pods = deployment(&client, ns.name(), deployment_name, 1).await?;
        bind_pod(&client, ns.name(), &pods[0], &node).await?;
        let pod = mark_pod_running(&client, ns.name(), &pods[0]).await?;
        Ok(Scene {
            client,
            ns,
            node,
            pod,
        })
    }

    /// The alert Falco would send about this pod: uid, container id and node all right.
    fn alert(&self) -> Value {
        alert_about(&self.pod, &self.node)
    }

    async fn policy(&self, name: &str, spec: Value) -> anyhow::Result<()> {
        let api: Api<RemediationPolicy> = Api::namespaced(self.client.clone(), self.ns.name());
        let policy: RemediationPolicy = serde_json::from_value(json!({
            "apiVersion": "peregrine.dev/v1alpha1", "kind": "RemediationPolicy",
            "metadata": {"name": name, "namespace": self.ns.name()},
            "spec": spec,
        }))?;
        api.patch(
            name,
            &PatchParams::apply("peregrine-tests").force(),
            &Patch::Apply(&policy),
        )
        .await?;
        Ok(())
    }

    async fn pods(&self) -> anyhow::Result<Vec<Pod>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), self.ns.name());
        Ok(api.list(&ListParams::default()).await?.items)
    }
}

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

async fn start_operator(
    cp: &ControlPlane,
    extra: &[&str],
) -> anyhow::Result<(Operator, TestNamespace)> {
    let client = cp.client().await?;
    let home = TestNamespace::create(&client, "peregrine").await?;
    let mut args = vec!["--intake-allow-unauthenticated", "--lease-duration", "3s"];
    // The breaker counts every action in the cluster, earlier tests' too:
    // only the test about it sets it low.
    if !extra.contains(&"--circuit-breaker-threshold") {
        args.extend_from_slice(&["--circuit-breaker-threshold", "1000"]);
    }
    args.extend_from_slice(extra);
    let operator = Operator::start(cp, home.name(), &args).await?;
    Ok((operator, home))
}

fn records(report: &AlertReport) -> Vec<RemediationRecord> {
    report
        .status
        .as_ref()
        .map(|s| s.remediations.clone())
        .unwrap_or_default()
}

/// Waits until the namespace's one report has records satisfying `done`.
async fn wait_records(
    client: &Client,
    namespace: &str,
    what: &str,
    done: impl Fn(&[RemediationRecord]) -> bool,
) -> anyhow::Result<AlertReport> {
    poll_for(what, WAIT, || async {
        let found = reports(client, namespace).await?;
        Ok::<_, anyhow::Error>(found.into_iter().find(|r| done(&records(r))))
    })
    .await
    .with_context(|| format!("waiting for: {what}"))
}

fn state_of(records: &[RemediationRecord], action: &str) -> Option<RemediationState> {
    records.iter().find(|r| r.action == action).map(|r| r.state)
}

async fn annotate(client: &Client, report: &AlertReport, key: &str) -> anyhow::Result<()> {
    let api: Api<AlertReport> =
        Api::namespaced(client.clone(), &report.namespace().unwrap_or_default());
    api.patch(
        &report.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {key: "true"}}})),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn enforced_label_isolate_and_delete_act_on_the_verified_pod_and_expire() -> anyhow::Result<()>
{
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = control_plane().await?;
    let scene = Scene::new(cp, "enforce", "web").await?;
    let (operator, _home) = start_operator(cp, &[]).await?;
    scene
        .policy(
            "contain-shells",
            json!({
                "mode": "Enforce",
                "match": {"rules": ["Terminal shell*"], "minPriority": "Notice", "tags": ["shell"],
                          "podSelector": {"matchLabels": {"app": "web"}},
                          "outputFields": [{"field": "proc.name", "operator": "In", "values": ["bash", "sh"]}]},
                "actions": [
                    {"type": "Label", "labels": {"peregrine.dev/quarantine": "true"}, "expireAfter": "3s"},
                    {"type": "Isolate", "expireAfter": "3s"},
                    {"type": "DeletePod", "gracePeriodSeconds": 0}
                ]
            }),
        )
        .await?;
    let original_uid = scene.pod.uid().unwrap_or_default();
    let started = Instant::now();
    let mut intake = operator.client(None);
    post(&mut intake, &scene.alert()).await?;

    let report = wait_records(
        &scene.client,
        scene.ns.name(),
        "the three actions succeed",
        |r| r.len() == 3 && r.iter().all(|r| r.state == RemediationState::Succeeded),
    )
    .await?;
    eprintln!("alert to three actions succeeded: {:?}", started.elapsed());
    let records = records(&report);
    assert!(
        records[2].reason.contains(&original_uid),
        "{}",
        records[2].reason
    );
    // The NetworkPolicy selects the workload's pods and belongs to the report.
    let nps: Api<NetworkPolicy> = Api::namespaced(scene.client.clone(), scene.ns.name());
    let np = nps.get("peregrine-isolate-web").await?;
    let spec = np.spec.clone().unwrap_or_default();
    assert_eq!(
        spec.pod_selector.and_then(|s| s.match_labels),
        Some([("app".to_string(), "web".to_string())].into())
    );
    assert_eq!(
        spec.policy_types,
        Some(vec!["Ingress".into(), "Egress".into()])
    );
    assert_eq!(
        np.owner_references()[0].uid,
        report.uid().unwrap_or_default()
    );
    // The ReplicaSet replaced the deleted pod.
    poll_until("a new pod replaces the deleted one", WAIT, || async {
        let pods = scene.pods().await?;
        Ok::<_, anyhow::Error>(
            pods.iter()
                .all(|p| p.uid().as_deref() != Some(original_uid.as_str()))
                && pods.iter().any(|p| p.metadata.deletion_timestamp.is_none()),
        )
    })
    .await?;
    // Expiry undoes the reversible ones.
    wait_records(
        &scene.client,
        scene.ns.name(),
        "Label and Isolate reverted at expiry",
        |r| {
            state_of(r, "Label") == Some(RemediationState::Reverted)
                && state_of(r, "Isolate") == Some(RemediationState::Reverted)
        },
    )
    .await?;
    assert!(nps.get_opt("peregrine-isolate-web").await?.is_none());
    operator.stop().await
}

#[tokio::test]
async fn dry_run_records_what_it_would_do_and_changes_nothing() -> anyhow::Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = control_plane().await?;
    let scene = Scene::new(cp, "dryrun", "web").await?;
    let (operator, _home) = start_operator(cp, &[]).await?;
    scene
        .policy(
            "watch-only",
            json!({"actions": [{"type": "DeletePod"}, {"type": "Label", "labels": {"seen": "true"}}]}),
        )
        .await?;
    let mut intake = operator.client(None);
    post(&mut intake, &scene.alert()).await?;
    let report = wait_records(&scene.client, scene.ns.name(), "two DryRun records", |r| {
        r.len() == 2 && r.iter().all(|r| r.state == RemediationState::DryRun)
    })
    .await?;
    let records = records(&report);
    assert!(
        records[0].reason.contains("would DeletePod Pod/"),
        "{}",
        records[0].reason
    );
    let pod = Api::<Pod>::namespaced(scene.client.clone(), scene.ns.name())
        .get(&scene.pod.name_any())
        .await?;
    assert_eq!(pod.uid(), scene.pod.uid(), "the pod is still there");
    assert!(!pod.labels().contains_key("seen"));
    operator.stop().await
}

#[tokio::test]
async fn forged_stale_and_protected_alerts_are_refused_with_the_reason() -> anyhow::Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = control_plane().await?;
    let (operator, home) = start_operator(cp, &[]).await?;
    let mut intake = operator.client(None);
    let policy = json!({"mode": "Enforce", "actions": [{"type": "DeletePod"}]});

    let cases: Vec<(&str, Forge, RemediationState, &str)> = vec![
        (
            "uid",
            Box::new(|a: &mut Value| {
                a["output_fields"]["k8s.pod.uid"] = json!("00000000-0000-0000-0000-000000000000")
            }),
            RemediationState::Rejected,
            "k8s.pod.uid",
        ),
        (
            "node",
            Box::new(|a: &mut Value| a["hostname"] = json!("OTHER")),
            RemediationState::Rejected,
            "the alert came from node",
        ),
        (
            "container",
            Box::new(|a: &mut Value| a["output_fields"]["container.id"] = json!("0123456789ab")),
            RemediationState::Rejected,
            "container.id",
        ),
        (
            "gone",
            Box::new(|a: &mut Value| {
                a["output_fields"]["k8s.pod.name"] = json!("web-does-not-exist")
            }),
            RemediationState::Rejected,
            "does not exist",
        ),
    ];
    for (name, forge, state, reason) in cases {
        let scene = Scene::new(cp, &format!("forged-{name}"), "web").await?;
        scene.policy("delete", policy.clone()).await?;
        let mut alert = scene.alert();
        if name == "node" {
            // Another real node: the hostname is a Node's name, but not the pod's.
            let other = unique_name("worker");
            create_node(&scene.client, &other).await?;
            alert["hostname"] = json!(other);
        } else {
            forge(&mut alert);
        }
        post(&mut intake, &alert).await?;
        let report = wait_records(
            &scene.client,
            scene.ns.name(),
            &format!("{name}: refused"),
            |r| !r.is_empty(),
        )
        .await?;
        let r = &records(&report)[0];
        assert_eq!(r.state, state, "{name}: {}", r.reason);
        assert!(r.reason.contains(reason), "{name}: {}", r.reason);
        let pods = scene.pods().await?;
        assert!(
            pods.iter().any(|p| p.uid() == scene.pod.uid()),
            "{name}: the pod was not touched"
        );
    }

    // A DaemonSet's pod is skipped by DeletePod.
    let scene = Scene::new(cp, "daemonset", "web").await?;
    scene.policy("delete", policy.clone()).await?;
    let client = scene.client.clone();
    let ds: Api<k8s_openapi::api::apps::v1::DaemonSet> =
        Api::namespaced(client.clone(), scene.ns.name());
    let ds = ds
        .create(&Default::default(), &serde_json::from_value(json!({
            "metadata": {"name": "agent"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                     "template": {"metadata": {"labels": {"app": "agent"}},
                                  "spec": {"containers": [{"name": "agent", "image": "agent:1"}]}}}
        }))?)
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), scene.ns.name());
    let agent: Pod = serde_json::from_value(json!({
        "metadata": {"name": "agent-x1", "labels": {"app": "agent"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent",
                                 "uid": ds.uid(), "controller": true}]},
        "spec": {"containers": [{"name": "agent", "image": "agent:1"}]}
    }))?;
    pods.create(&Default::default(), &agent).await?;
    bind_pod(&client, scene.ns.name(), "agent-x1", &scene.node).await?;
    let agent = mark_pod_running(&client, scene.ns.name(), "agent-x1").await?;
    let mut alert = alert_about(&agent, &scene.node);
    alert["rule"] = json!("Launch Privileged Container");
    post(&mut intake, &alert).await?;
    let report = wait_records(&client, scene.ns.name(), "DaemonSet pod skipped", |r| {
        r.iter().any(|r| r.reason.contains("DaemonSet"))
    })
    .await?;
    let r = records(&report)
        .into_iter()
        .find(|r| r.reason.contains("DaemonSet"))
        .unwrap();
    assert_eq!(r.state, RemediationState::Skipped);

    // The operator's own namespace is protected.
    let api: Api<RemediationPolicy> = Api::namespaced(client.clone(), home.name());
    api.patch(
        "delete",
        &PatchParams::apply("peregrine-tests").force(),
        &Patch::Apply(&json!({
            "apiVersion": "peregrine.dev/v1alpha1", "kind": "RemediationPolicy",
            "metadata": {"name": "delete", "namespace": home.name()}, "spec": policy
        })),
    )
    .await?;
    let pods = deployment(&client, home.name(), "self", 1).await?;
    bind_pod(&client, home.name(), &pods[0], &scene.node).await?;
    let own = mark_pod_running(&client, home.name(), &pods[0]).await?;
    post(&mut intake, &alert_about(&own, &scene.node)).await?;
    let report = wait_records(&client, home.name(), "protected namespace skipped", |r| {
        !r.is_empty()
    })
    .await?;
    let r = &records(&report)[0];
    assert_eq!(r.state, RemediationState::Skipped);
    assert!(r.reason.contains("protected"), "{}", r.reason);
    operator.stop().await
}

#[tokio::test]
async fn approval_holds_actions_until_the_annotation_and_revert_undoes_them() -> anyhow::Result<()>
{
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = control_plane().await?;
    let scene = Scene::new(cp, "approval", "web").await?;
    let (operator, _home) = start_operator(cp, &[]).await?;
    scene
        .policy(
            "scale-down",
            json!({"mode": "Enforce", "approval": "Required",
                   "actions": [{"type": "ScaleToZero"}, {"type": "CordonNode"}, {"type": "Annotate", "annotations": {"peregrine.dev/incident": "open"}}]}),
        )
        .await?;
    let mut intake = operator.client(None);
    post(&mut intake, &scene.alert()).await?;
    let report = wait_records(
        &scene.client,
        scene.ns.name(),
        "three PendingApproval",
        |r| {
            r.len() == 3
                && r.iter()
                    .all(|r| r.state == RemediationState::PendingApproval)
        },
    )
    .await?;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(scene.client.clone(), scene.ns.name());
    assert_eq!(deployments.get("web").await?.spec.replicas, Some(1));
    annotate(&scene.client, &report, "peregrine.dev/approve").await?;
    let report = wait_records(
        &scene.client,
        scene.ns.name(),
        "approved actions succeed",
        |r| r.len() == 3 && r.iter().all(|r| r.state == RemediationState::Succeeded),
    )
    .await?;
    assert_eq!(deployments.get("web").await?.spec.replicas, Some(0));
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(scene.client.clone());
    let cordoned = |n: &k8s_openapi::api::core::v1::Node| {
        n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true)
    };
    assert!(cordoned(&nodes.get(&scene.node).await?));
    annotate(&scene.client, &report, "peregrine.dev/revert").await?;
    wait_records(&scene.client, scene.ns.name(), "all reverted", |r| {
        r.iter().all(|r| r.state == RemediationState::Reverted)
    })
    .await?;
    assert_eq!(
        deployments.get("web").await?.spec.replicas,
        Some(1),
        "replicas restored"
    );
    assert!(!cordoned(&nodes.get(&scene.node).await?), "node uncordoned");
    operator.stop().await
}

#[tokio::test]
async fn an_invalid_policy_says_which_field_and_becomes_ready_when_fixed() -> anyhow::Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "invalid").await?;
    let (operator, _home) = start_operator(cp, &[]).await?;
    let api: Api<RemediationPolicy> = Api::namespaced(client.clone(), ns.name());
    let apply = |expire: &str| {
        json!({"apiVersion": "peregrine.dev/v1alpha1", "kind": "RemediationPolicy",
               "metadata": {"name": "p", "namespace": ns.name()},
               "spec": {"actions": [{"type": "DeletePod"}, {"type": "Label", "labels": {"q": "1"}, "expireAfter": expire}]}})
    };
    let pp = PatchParams::apply("peregrine-tests").force();
    api.patch("p", &pp, &Patch::Apply(&apply("soon"))).await?;
    let ready = |api: Api<RemediationPolicy>, want: &'static str| async move {
        poll_for(&format!("Ready={want}"), WAIT, || async {
            let p = api.get("p").await?;
            let c = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned());
            Ok::<_, anyhow::Error>(
                c.filter(|c| c.status == want && c.observed_generation == p.metadata.generation),
            )
        })
        .await
    };
    let c = ready(api.clone(), "False").await?;
    assert_eq!(c.reason, "Invalid");
    assert!(
        c.message.starts_with("spec.actions[1].expireAfter:"),
        "{}",
        c.message
    );
    api.patch("p", &pp, &Patch::Apply(&apply("10m"))).await?;
    let c = ready(api.clone(), "True").await?;
    assert_eq!(c.reason, "Valid");
    operator.stop().await
}

#[tokio::test]
async fn two_operators_only_the_lease_holder_acts_and_the_other_takes_over_without_repeating()
-> anyhow::Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let home = TestNamespace::create(&client, "peregrine-ha").await?;
    let args = [
        "--intake-allow-unauthenticated",
        "--lease-duration",
        "3s",
        "--circuit-breaker-threshold",
        "1000",
    ];
    let first = Operator::start(cp, home.name(), &args).await?;
    let second = Operator::start(cp, home.name(), &args).await?;
    let scene = Scene::new(cp, "ha", "web").await?;
    scene
        .policy(
            "label",
            json!({"mode": "Enforce", "actions": [{"type": "Label", "labels": {"contained": "true"}}]}),
        )
        .await?;
    // Both accept alerts; one acts once.
    post(&mut first.client(None), &scene.alert()).await?;
    post(&mut second.client(None), &scene.alert()).await?;
    let report = wait_records(&scene.client, scene.ns.name(), "one Label record", |r| {
        r.len() == 1 && r[0].state == RemediationState::Succeeded
    })
    .await?;
    assert_eq!(records(&report).len(), 1, "the action was recorded once");
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), home.name());
    let holder = |l: k8s_openapi::api::coordination::v1::Lease| {
        l.spec.and_then(|s| s.holder_identity).unwrap_or_default()
    };
    let before = holder(leases.get("peregrine-leader").await?);
    // Stop the operators one by one; whichever held the lease, the other takes over.
    first.stop().await?;
    let taken_over = Instant::now();
    poll_until("a lease holder after the first stopped", WAIT, || async {
        let now = holder(leases.get("peregrine-leader").await?);
        Ok::<_, anyhow::Error>(
            !now.is_empty() && (now != before || taken_over.elapsed() > Duration::from_secs(1)),
        )
    })
    .await?;
    let second_scene = Scene::new(cp, "ha-after", "web").await?;
    second_scene
        .policy(
            "label",
            json!({"mode": "Enforce", "actions": [{"type": "Label", "labels": {"contained": "true"}}]}),
        )
        .await?;
    post(&mut second.client(None), &second_scene.alert()).await?;
    wait_records(
        &second_scene.client,
        second_scene.ns.name(),
        "the remaining operator acts",
        |r| r.len() == 1 && r[0].state == RemediationState::Succeeded,
    )
    .await?;
    eprintln!(
        "take-over and action after the first operator stopped: {:?}",
        taken_over.elapsed()
    );
    // The first report was not acted on again.
    let again = reports(&scene.client, scene.ns.name()).await?;
    assert_eq!(records(&again[0]).len(), 1);
    assert_eq!(
        records(&again[0])[0].updated_at,
        records(&report)[0].updated_at
    );
    second.stop().await
}

#[tokio::test]
async fn the_rate_limit_stops_a_flood_across_many_pods() -> anyhow::Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = control_plane().await?;
    let (operator, home) = start_operator(cp, &[]).await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "flood").await?;
    let node = unique_name("worker");
    create_node(&client, &node).await?;
    let api: Api<RemediationPolicy> = Api::namespaced(client.clone(), ns.name());
    api.patch(
        "label",
        &PatchParams::apply("peregrine-tests").force(),
        &Patch::Apply(&json!({
            "apiVersion": "peregrine.dev/v1alpha1", "kind": "RemediationPolicy",
            "metadata": {"name": "label", "namespace": ns.name()},
            "spec": {"mode": "Enforce", "rateLimit": {"maxActions": 3, "per": "1m"},
                     "actions": [{"type": "Label", "labels": {"contained": "true"}}]}
        })),
    )
    .await?;
    let mut intake = operator.client(None);
    // Ten workloads, one alert each: ten reports.
    for i in 0..10 {
        let name = format!("app{i}");
        let pods = deployment(&client, ns.name(), &name, 1).await?;
        bind_pod(&client, ns.name(), &pods[0], &node).await?;
        let pod = mark_pod_running(&client, ns.name(), &pods[0]).await?;
        post(&mut intake, &alert_about(&pod, &node)).await?;
    }
    let all = poll_for("ten decided reports", WAIT, || async {
        let found = reports(&client, ns.name()).await?;
        let decided: Vec<RemediationRecord> = found
            .iter()
            .flat_map(records)
            .filter(|r| r.state != RemediationState::Running)
            .collect();
        Ok::<_, anyhow::Error>((decided.len() == 10).then_some(decided))
    })
    .await?;
    let succeeded = all
        .iter()
        .filter(|r| r.state == RemediationState::Succeeded)
        .count();
    let limited = all
        .iter()
        .filter(|r| r.state == RemediationState::Skipped && r.reason.contains("rate limit"))
        .count();
    assert_eq!(succeeded, 3, "{all:#?}");
    assert_eq!(limited, 7, "{all:#?}");
    let _ = home;
    operator.stop().await
}

/// The events.k8s.io Events about `name` (of `kind`) in `namespace`.
async fn events_about(
    client: &Client,
    namespace: &str,
    kind: &str,
    name: &str,
) -> anyhow::Result<Vec<k8s_openapi::api::events::v1::Event>> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), namespace);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name))
        })
        .collect())
}

/// The value of an unlabelled metric in a scrape, if present.
fn metric(scrape: &str, name: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn a_flood_opens_the_circuit_breaker_and_deleting_its_configmap_resets_it()
-> anyhow::Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = control_plane().await?;
    // The breaker counts every recent action in the cluster: start from none
    // by removing the reports earlier tests of this binary left.
    let admin = cp.client().await?;
    for r in Api::<AlertReport>::all(admin.clone())
        .list(&ListParams::default())
        .await?
        .items
    {
        let api: Api<AlertReport> =
            Api::namespaced(admin.clone(), &r.namespace().unwrap_or_default());
        api.delete(&r.name_any(), &Default::default()).await?;
    }
    poll_until("no reports left", WAIT, || async {
        Ok::<_, anyhow::Error>(
            Api::<AlertReport>::all(admin.clone())
                .list(&ListParams::default())
                .await?
                .items
                .is_empty(),
        )
    })
    .await?;
    let (operator, home) = start_operator(
        cp,
        &[
            "--circuit-breaker-threshold",
            "3",
            "--circuit-breaker-window",
            "10m",
        ],
    )
    .await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "breaker").await?;
    let node = unique_name("worker");
    create_node(&client, &node).await?;
    let api: Api<RemediationPolicy> = Api::namespaced(client.clone(), ns.name());
    api.patch(
        "label",
        &PatchParams::apply("peregrine-tests").force(),
        &Patch::Apply(&json!({
            "apiVersion": "peregrine.dev/v1alpha1", "kind": "RemediationPolicy",
            "metadata": {"name": "label", "namespace": ns.name()},
            "spec": {"mode": "Enforce",
                     "actions": [{"type": "Label", "labels": {"contained": "true"}}]}
        })),
    )
    .await?;
    let mut intake = operator.client(None);
    let mut pods = Vec::new();
    for i in 0..7 {
        let name = format!("app{i}");
        let names = deployment(&client, ns.name(), &name, 1).await?;
        bind_pod(&client, ns.name(), &names[0], &node).await?;
        pods.push(mark_pod_running(&client, ns.name(), &names[0]).await?);
    }
    // Six workloads alert at once: three actions pass, then the breaker opens.
    for pod in &pods[..6] {
        post(&mut intake, &alert_about(pod, &node)).await?;
    }
    let all = poll_for("six decided records", WAIT, || async {
        let decided: Vec<RemediationRecord> = reports(&client, ns.name())
            .await?
            .iter()
            .flat_map(records)
            .filter(|r| r.state != RemediationState::Running)
            .collect();
        Ok::<_, anyhow::Error>((decided.len() == 6).then_some(decided))
    })
    .await?;
    let succeeded = all
        .iter()
        .filter(|r| r.state == RemediationState::Succeeded)
        .count();
    let held: Vec<&RemediationRecord> = all
        .iter()
        .filter(|r| r.state == RemediationState::DryRun)
        .collect();
    assert_eq!(succeeded, 3, "{all:#?}");
    assert_eq!(held.len(), 3, "{all:#?}");
    for r in &held {
        assert!(r.reason.contains("circuit breaker"), "{}", r.reason);
    }
    let labelled = Api::<Pod>::namespaced(client.clone(), ns.name())
        .list(&ListParams::default().labels("contained=true"))
        .await?
        .items
        .len();
    assert_eq!(labelled, 3, "only the admitted actions touched pods");

    // It says so: ConfigMap, Event, policy condition, metric.
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), home.name());
    let cm = cms.get("peregrine-circuit-breaker").await?;
    let data = cm.data.clone().unwrap_or_default();
    assert_eq!(data.get("state").map(String::as_str), Some("Open"));
    assert!(
        data.get("reset")
            .is_some_and(|r| r.contains("delete configmap peregrine-circuit-breaker")),
        "{data:?}"
    );
    let event = poll_for("a CircuitBreakerOpen Event", WAIT, || async {
        let events = events_about(
            &client,
            home.name(),
            "ConfigMap",
            "peregrine-circuit-breaker",
        )
        .await?;
        Ok::<_, anyhow::Error>(
            events
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("CircuitBreakerOpen")),
        )
    })
    .await?;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(
        event.note.as_deref().unwrap_or_default().contains("Reset:"),
        "{:?}",
        event.note
    );
    let condition = poll_for("the CircuitBreakerOpen condition", WAIT, || async {
        let p = api.get("label").await?;
        Ok::<_, anyhow::Error>(p.status.and_then(|s| {
            s.conditions
                .into_iter()
                .find(|c| c.type_ == "CircuitBreakerOpen" && c.status == "True")
        }))
    })
    .await?;
    assert!(
        condition.message.contains("circuit breaker"),
        "{}",
        condition.message
    );
    let scrape = metrics_of(&operator).await?;
    assert_eq!(
        metric(&scrape, "peregrine_remediation_circuit_breaker_open"),
        Some(1.0),
        "{scrape}"
    );

    // An admin resets it; actions resume.
    cms.delete("peregrine-circuit-breaker", &Default::default())
        .await?;
    poll_until("the breaker metric back to 0", WAIT, || async {
        let scrape = metrics_of(&operator).await?;
        Ok::<_, anyhow::Error>(
            metric(&scrape, "peregrine_remediation_circuit_breaker_open") == Some(0.0),
        )
    })
    .await?;
    poll_until("the CircuitBreakerOpen condition gone", WAIT, || async {
        let p = api.get("label").await?;
        Ok::<_, anyhow::Error>(
            p.status
                .is_some_and(|s| !s.conditions.iter().any(|c| c.type_ == "CircuitBreakerOpen")),
        )
    })
    .await?;
    post(&mut intake, &alert_about(&pods[6], &node)).await?;
    let pod_name = pods[6].name_any();
    poll_until("the seventh workload is labelled", WAIT, || async {
        let found = reports(&client, ns.name()).await?;
        let done = found.iter().any(|r| {
            r.spec.subject.pod.as_deref() == Some(pod_name.as_str())
                && records(r)
                    .iter()
                    .any(|r| r.state == RemediationState::Succeeded)
        });
        Ok::<_, anyhow::Error>(done)
    })
    .await?;
    let pod = Api::<Pod>::namespaced(client.clone(), ns.name())
        .get(&pod_name)
        .await?;
    assert_eq!(
        pod.labels().get("contained").map(String::as_str),
        Some("true")
    );
    operator.stop().await
}

/// A webhook on 127.0.0.1 that keeps every body it receives. With `hold_after
/// = Some(k)`, it answers the first `k` requests and holds every later one
/// without answering until [`Webhook::release`].
struct Webhook {
    url: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(http::HeaderMap, Value)>>>,
    held: std::sync::Arc<tokio::sync::Notify>,
    release: tokio::sync::watch::Sender<bool>,
}

impl Webhook {
    async fn start(hold_after: Option<usize>) -> anyhow::Result<Webhook> {
        use axum::extract::State;
        type Shared = (
            std::sync::Arc<std::sync::Mutex<Vec<(http::HeaderMap, Value)>>>,
            std::sync::Arc<tokio::sync::Notify>,
            tokio::sync::watch::Receiver<bool>,
            Option<usize>,
        );
        async fn hook(
            State((seen, held, released, hold_after)): State<Shared>,
            headers: http::HeaderMap,
            body: bytes::Bytes,
        ) -> http::StatusCode {
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let n = {
                let mut seen = seen.lock().unwrap();
                seen.push((headers, body));
                seen.len()
            };
            if hold_after.is_some_and(|k| n > k) && !*released.borrow() {
                held.notify_one();
                let mut released = released.clone();
                let _ = released.wait_for(|r| *r).await;
            }
            http::StatusCode::OK
        }
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let held = std::sync::Arc::new(tokio::sync::Notify::new());
        let (release, released) = tokio::sync::watch::channel(false);
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state((seen.clone(), held.clone(), released, hold_after));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Webhook {
            url,
            seen,
            held,
            release,
        })
    }

    fn bodies(&self) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// How many requests named each report.
    fn per_report(&self) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for b in self.bodies() {
            *counts
                .entry(b["report"].as_str().unwrap_or_default().to_string())
                .or_insert(0) += 1;
        }
        counts
    }
}

/// A Secret `name` in `namespace` holding `url` under key `url`.
async fn webhook_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    url: &str,
) -> anyhow::Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), namespace);
    api.create(
        &Default::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": name}, "stringData": {"url": url}
        }))?,
    )
    .await?;
    Ok(())
}

/// `peregrine run` as a separate process, so that it can be SIGKILLed.
struct OperatorProcess {
    name: &'static str,
    child: tokio::process::Child,
    intake: u16,
    health: u16,
    log: std::path::PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl OperatorProcess {
    async fn spawn(
        cp: &ControlPlane,
        name: &'static str,
        namespace: &str,
        extra: &[&str],
    ) -> anyhow::Result<OperatorProcess> {
        let intake = free_port();
        let health = free_port();
        let log = std::env::temp_dir().join(unique_name(&format!("peregrine-{name}")));
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_peregrine"))
            .arg("run")
            .arg(format!("--intake-addr=127.0.0.1:{intake}"))
            .arg(format!("--health-addr=127.0.0.1:{health}"))
            .arg(format!("--namespace={namespace}"))
            .args([
                "--intake-allow-unauthenticated",
                "--flush-interval=300ms",
                "--lease-duration=3s",
            ])
            .args(extra)
            .env("KUBECONFIG", cp.kubeconfig_path())
            .env("POD_NAME", name)
            .env("NO_COLOR", "1")
            .env_remove("POD_NAMESPACE")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()?;
        let mut process = OperatorProcess {
            name,
            child,
            intake,
            health,
            log,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = process.child.try_wait()? {
                anyhow::bail!("operator {name} exited: {status}\n{}", process.log_text());
            }
            if process.get("/readyz").await.is_ok_and(|(s, _)| s == 200) {
                break;
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "operator {name} not ready after {WAIT:?}\n{}",
                    process.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(process)
    }

    async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let mut c = peregrine::replay::IntakeClient::new(
            &format!("http://127.0.0.1:{}{path}", self.health),
            None,
            &Default::default(),
        )?;
        let a = c.send(http::Method::GET, None, bytes::Bytes::new()).await?;
        Ok((a.status.as_u16(), a.body))
    }

    async fn leader_gauge(&self) -> anyhow::Result<Option<f64>> {
        Ok(metric(&self.get("/metrics").await?.1, "peregrine_leader"))
    }

    fn intake(&self) -> peregrine::replay::IntakeClient {
        peregrine::replay::IntakeClient::new(
            &format!("http://127.0.0.1:{}/v1/falco", self.intake),
            None,
            &Default::default(),
        )
        .expect("intake client")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::env::var_os("PEREGRINE_TESTENV_KEEP").is_none() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

#[tokio::test]
async fn sigkilling_the_lease_holder_mid_stream_repeats_no_action_and_loses_no_decision()
-> anyhow::Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let home = TestNamespace::create(&client, "peregrine-kill").await?;
    let extra = ["--circuit-breaker-threshold=1000"];
    let a = OperatorProcess::spawn(cp, "replica-a", home.name(), &extra).await?;
    let b = OperatorProcess::spawn(cp, "replica-b", home.name(), &extra).await?;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), home.name());
    let holder = || async {
        let lease = leases.get_opt("peregrine-leader").await?;
        Ok::<_, anyhow::Error>(
            lease
                .and_then(|l| l.spec)
                .and_then(|s| s.holder_identity)
                .unwrap_or_default(),
        )
    };
    let first = poll_for("a lease holder", WAIT, || async {
        let h = holder().await?;
        Ok::<_, anyhow::Error>((!h.is_empty()).then_some(h))
    })
    .await?;
    let (mut leader, follower) = if first.starts_with("replica-a-") {
        (a, b)
    } else {
        (b, a)
    };
    poll_until("peregrine_leader is 1 on the holder only", WAIT, || async {
        Ok::<_, anyhow::Error>(
            leader.leader_gauge().await? == Some(1.0)
                && follower.leader_gauge().await? == Some(0.0),
        )
    })
    .await?;

    // Eight workloads; the policy labels the pod, then notifies a webhook
    // that answers three requests and holds the rest: the leader is killed
    // while it waits for an answer.
    let ns = TestNamespace::create(&client, "kill").await?;
    let node = unique_name("worker");
    create_node(&client, &node).await?;
    let hook = Webhook::start(Some(3)).await?;
    webhook_secret(&client, ns.name(), "hook", &hook.url).await?;
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
                    {"type": "Notify", "secretRef": {"name": "hook"}}
                ]}
            })),
        )
        .await?;
    let mut pods = Vec::new();
    for i in 0..8 {
        let names = deployment(&client, ns.name(), &format!("app{i}"), 1).await?;
        bind_pod(&client, ns.name(), &names[0], &node).await?;
        pods.push(mark_pod_running(&client, ns.name(), &names[0]).await?);
    }
    // Alerts go to the follower, so the kill loses no accepted alert.
    let mut intake = follower.intake();
    for pod in &pods {
        post(&mut intake, &alert_about(pod, &node)).await?;
    }
    tokio::time::timeout(WAIT, hook.held.notified())
        .await
        .context("the leader never reached the webhook")?;
    let sender = holder().await?;
    anyhow::ensure!(
        sender.starts_with(&format!("{}-", leader.name)),
        "the lease moved before the kill: {sender}"
    );
    leader.child.start_kill()?; // SIGKILL
    leader.child.wait().await?;
    let killed = Instant::now();
    let held_at_kill = hook.per_report();
    hook.release.send_replace(true);

    let new_holder = poll_for("the follower takes the lease", WAIT, || async {
        let h = holder().await?;
        Ok::<_, anyhow::Error>(h.starts_with(&format!("{}-", follower.name)).then_some(h))
    })
    .await?;
    let failover = killed.elapsed();
    poll_until("peregrine_leader is 1 on the survivor", WAIT, || async {
        Ok::<_, anyhow::Error>(follower.leader_gauge().await? == Some(1.0))
    })
    .await?;
    let all = poll_for("every report decided and finished", WAIT, || async {
        let found = reports(&client, ns.name()).await?;
        let done = found.len() == 8
            && found.iter().all(|r| {
                let r = records(r);
                r.len() == 2 && r.iter().all(|r| r.state != RemediationState::Running)
            });
        Ok::<_, anyhow::Error>(done.then_some(found))
    })
    .await?;
    let finished = killed.elapsed();

    // Count records and effects.
    let sent = hook.per_report();
    let mut interrupted = 0;
    let mut succeeded = 0;
    for report in &all {
        let name = report.name_any();
        let rs = records(report);
        let mut indexes: Vec<u32> = rs.iter().map(|r| r.action_index).collect();
        indexes.sort();
        assert_eq!(indexes, vec![0, 1], "{name}: one record per action");
        let posts = sent.get(&name).copied().unwrap_or(0);
        assert!(posts <= 1, "{name}: notified {posts} times");
        for r in &rs {
            match r.state {
                RemediationState::Succeeded => succeeded += 1,
                RemediationState::Failed => {
                    assert!(
                        r.reason.contains("interrupted") || r.reason.contains("lost the lease"),
                        "{name}: {}",
                        r.reason
                    );
                    interrupted += 1;
                }
                other => panic!("{name}: {} is {other:?}: {}", r.action, r.reason),
            }
        }
        let notify = rs.iter().find(|r| r.action == "Notify").unwrap();
        if notify.state == RemediationState::Succeeded {
            assert_eq!(posts, 1, "{name}: a Succeeded Notify was sent once");
        }
        if held_at_kill.get(&name).is_some_and(|n| *n > 0) {
            // The request was sent before the kill: never sent again.
            assert_eq!(posts, 1, "{name}");
        }
        let label = rs.iter().find(|r| r.action == "Label").unwrap();
        if label.state == RemediationState::Succeeded {
            let pod = Api::<Pod>::namespaced(client.clone(), ns.name())
                .get(report.spec.subject.pod.as_deref().unwrap_or_default())
                .await?;
            assert_eq!(
                pod.labels().get("contained").map(String::as_str),
                Some("true")
            );
        }
    }
    // At least the held request's record was left Running by the killed leader.
    assert!(
        interrupted >= 1,
        "no record was interrupted: {:#?}",
        all.iter().map(records).collect::<Vec<_>>()
    );
    let duplicated: usize = sent.values().map(|n| n.saturating_sub(1)).sum();
    assert_eq!(duplicated, 0);
    eprintln!(
        "SIGKILL of {}: {} took the lease after {failover:?}, every report finished after {finished:?}; \
         {succeeded} actions succeeded, {interrupted} interrupted and marked Failed, {} webhook posts, {duplicated} duplicated",
        leader.name,
        new_holder,
        sent.values().sum::<usize>()
    );
    drop(follower);
    Ok(())
}

/// An https server on 127.0.0.1 with a self-signed certificate nobody trusts.
async fn untrusted_https() -> anyhow::Result<String> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let key = rustls_pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("https://localhost:{}/hook", listener.local_addr()?.port());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    Ok(url)
}

#[tokio::test]
async fn notify_posts_json_and_slack_from_the_secret_and_says_what_is_missing() -> anyhow::Result<()>
{
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = control_plane().await?;
    let scene = Scene::new(cp, "notify", "web").await?;
    let (operator, _home) = start_operator(cp, &[]).await?;
    let hook = Webhook::start(None).await?;
    webhook_secret(&scene.client, scene.ns.name(), "hook", &hook.url).await?;
    webhook_secret(
        &scene.client,
        scene.ns.name(),
        "tls-hook",
        &untrusted_https().await?,
    )
    .await?;
    scene
        .policy(
            "tell",
            json!({"mode": "Enforce", "actions": [
                {"type": "Notify", "secretRef": {"name": "hook"}},
                {"type": "Notify", "secretRef": {"name": "hook", "key": "url"}, "format": "Slack"},
                {"type": "Notify", "secretRef": {"name": "absent"}},
                {"type": "Notify", "secretRef": {"name": "hook", "key": "webhook"}},
                {"type": "Notify", "secretRef": {"name": "tls-hook"}},
                {"type": "Label", "labels": {"notified": "true"}}
            ]}),
        )
        .await?;
    post(&mut operator.client(None), &scene.alert()).await?;
    let report = wait_records(&scene.client, scene.ns.name(), "six outcomes", |r| {
        r.len() == 6
            && r.iter()
                .all(|r| !matches!(r.state, RemediationState::Running))
    })
    .await?;
    let rs = records(&report);
    let ns = scene.ns.name();
    let by_index = |i: u32| rs.iter().find(|r| r.action_index == i).unwrap();
    assert_eq!(by_index(0).state, RemediationState::Succeeded, "{rs:#?}");
    assert_eq!(by_index(1).state, RemediationState::Succeeded, "{rs:#?}");
    assert!(
        by_index(1).reason.contains("Slack"),
        "{}",
        by_index(1).reason
    );
    let missing = by_index(2);
    assert_eq!(missing.state, RemediationState::Failed);
    assert!(
        missing.reason.contains(&format!("Secret {ns}/absent")),
        "{}",
        missing.reason
    );
    let no_key = by_index(3);
    assert_eq!(no_key.state, RemediationState::Failed);
    assert!(
        no_key.reason.contains(&format!("{ns}/hook")) && no_key.reason.contains("\"webhook\""),
        "{}",
        no_key.reason
    );
    let tls = by_index(4);
    assert_eq!(tls.state, RemediationState::Failed);
    assert!(tls.reason.contains("TLS"), "{}", tls.reason);
    assert!(
        !tls.reason.contains("localhost:"),
        "the URL stays secret: {}",
        tls.reason
    );
    assert_eq!(by_index(5).state, RemediationState::Succeeded);

    // What the webhook received: Peregrine's JSON, then Slack's {"text"}.
    let seen = hook.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    let (headers, json_body) = &seen[0];
    assert_eq!(
        headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
        Some(&b"application/json"[..])
    );
    assert_eq!(json_body["report"], json!(report.name_any()));
    assert_eq!(json_body["namespace"], json!(ns));
    assert_eq!(json_body["rule"], json!("Terminal shell in container"));
    assert_eq!(json_body["pod"], json!(scene.pod.name_any()));
    assert_eq!(json_body["policy"], json!(format!("{ns}/tell")));
    assert_eq!(json_body["count"], json!(1));
    let text = seen[1].1["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("*Terminal shell in container*")
            && text.contains(&format!("`{ns}/{}`", scene.pod.name_any())),
        "{text}"
    );

    // Every action left an Event a person can read, on the report and on the
    // pod it touched. Repeats of one reason are counted in a series.
    let times = |e: &k8s_openapi::api::events::v1::Event| {
        e.series.as_ref().map_or(1, |s| s.count.max(1)) as usize
    };
    let on_report = poll_for("Events on the report", WAIT, || async {
        let events = events_about(&scene.client, ns, "AlertReport", &report.name_any()).await?;
        let count = |reason: &str| -> usize {
            events
                .iter()
                .filter(|e| e.reason.as_deref() == Some(reason))
                .map(times)
                .sum()
        };
        Ok::<_, anyhow::Error>(
            (count("RemediationSucceeded") >= 3 && count("RemediationFailed") >= 3)
                .then_some(events),
        )
    })
    .await?;
    let notes: Vec<String> = on_report.iter().filter_map(|e| e.note.clone()).collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("Notify") && n.contains(&format!("Secret {ns}/"))),
        "{notes:#?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("Label") && n.contains("set labels notified=true")),
        "{notes:#?}"
    );
    let on_pod = poll_for("an Event on the pod", WAIT, || async {
        let events = events_about(&scene.client, ns, "Pod", &scene.pod.name_any()).await?;
        Ok::<_, anyhow::Error>(
            events
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("RemediationSucceeded")),
        )
    })
    .await?;
    assert!(
        on_pod
            .note
            .as_deref()
            .is_some_and(|n| n.contains("set labels notified=true")),
        "{:?}",
        on_pod.note
    );
    assert_eq!(
        on_pod.related.as_ref().and_then(|r| r.name.clone()),
        Some(report.name_any()),
        "the pod's Event points back at the report"
    );
    operator.stop().await
}
