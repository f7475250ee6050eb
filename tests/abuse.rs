//! Abuse, against the real local control plane: forged alerts touch nothing
//! and each is recorded with the mismatch that gave it away; a flood of
//! matching alerts across a hundred pods deletes no more pods than the
//! destructive budget; and the operator's own identity, as the chart grants
//! it, cannot read Secrets it was not given, exec into pods or escalate.
//!
//! The operator watches every namespace, so the tests that run one take
//! turns (one operator at a time).

#[path = "support/operator.rs"]
mod support;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, ResourceExt};
use peregrine::crd::{AlertReport, RemediationPolicy, RemediationRecord, RemediationState};
use peregrine_testenv::{
    ControlPlane, TestNamespace, bind_pod, create_node, mark_pod_running, poll_for, random_hex64,
    unique_name,
};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WAIT: Duration = Duration::from_secs(90);

/// The alert Falco would send about `pod` on `node`: UID and container id right.
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

async fn apply_policy(
    client: &Client,
    namespace: &str,
    name: &str,
    spec: Value,
) -> anyhow::Result<()> {
    let api: Api<RemediationPolicy> = Api::namespaced(client.clone(), namespace);
    api.patch(
        name,
        &PatchParams::apply("peregrine-tests").force(),
        &Patch::Apply(&json!({
            "apiVersion": "peregrine.dev/v1alpha1", "kind": "RemediationPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec
        })),
    )
    .await?;
    Ok(())
}

fn records(report: &AlertReport) -> Vec<RemediationRecord> {
    report
        .status
        .as_ref()
        .map(|s| s.remediations.clone())
        .unwrap_or_default()
}

/// A pod of a one-replica Deployment `web` in `namespace`, bound to `node` and Running.
async fn running_web_pod(client: &Client, namespace: &str, node: &str) -> anyhow::Result<Pod> {
    let pods = deployment(client, namespace, "web", 1).await?;
    bind_pod(client, namespace, &pods[0], node).await?;
    Ok(mark_pod_running(client, namespace, &pods[0]).await?)
}

#[tokio::test]
async fn forged_alerts_touch_nothing_and_each_record_names_the_mismatch() -> anyhow::Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let home = TestNamespace::create(&client, "peregrine-abuse").await?;
    let guarded = TestNamespace::create(&client, "guarded").await?;
    let protected = format!("kube-system,{}", guarded.name());
    let operator = Operator::start(
        cp,
        home.name(),
        &[
            "--intake-allow-unauthenticated",
            "--lease-duration",
            "3s",
            "--circuit-breaker-threshold",
            "1000",
            "--protected-namespaces",
            &protected,
        ],
    )
    .await?;
    let node = unique_name("worker");
    create_node(&client, &node).await?;
    let other_node = unique_name("worker");
    create_node(&client, &other_node).await?;
    let forged_uid = "6b1c1d0e-0000-4000-8000-00000000f00d".to_string();
    let forged_container = random_hex64()[..12].to_string();

    // (case, namespace, forgery, expected state, what the reason must name)
    type Forge = Box<dyn Fn(&mut Value)>;
    type Case<'a> = (
        &'a str,
        Option<&'a TestNamespace>,
        Forge,
        RemediationState,
        Vec<String>,
    );
    let other = other_node.clone();
    let (uid, container) = (forged_uid.clone(), forged_container.clone());
    let cases: Vec<Case> = vec![
        (
            "another node",
            None,
            Box::new(move |a: &mut Value| a["hostname"] = json!(other)),
            RemediationState::Rejected,
            vec![
                format!("runs on node {node}"),
                format!("the alert came from node {other_node}"),
            ],
        ),
        (
            "no such pod",
            None,
            Box::new(|a: &mut Value| {
                a["output_fields"]["k8s.pod.name"] = json!("web-7d9f8b6c5d-zzzzz")
            }),
            RemediationState::Rejected,
            vec!["web-7d9f8b6c5d-zzzzz does not exist".into()],
        ),
        (
            "protected namespace",
            Some(&guarded),
            Box::new(|_: &mut Value| {}),
            RemediationState::Skipped,
            vec![format!("namespace {} is protected", guarded.name())],
        ),
        (
            "container id",
            None,
            Box::new(move |a: &mut Value| a["output_fields"]["container.id"] = json!(container)),
            RemediationState::Rejected,
            vec![format!("container.id {forged_container}")],
        ),
        (
            "pod UID",
            None,
            Box::new(move |a: &mut Value| a["output_fields"]["k8s.pod.uid"] = json!(uid)),
            RemediationState::Rejected,
            vec![format!("k8s.pod.uid {forged_uid}")],
        ),
    ];
    let spec = json!({"mode": "Enforce", "actions": [
        {"type": "Label", "labels": {"peregrine.dev/quarantine": "true"}},
        {"type": "Isolate"}
    ]});
    let mut intake = operator.client(None);
    let mut figures = Vec::new();
    let mut scenes = Vec::new();
    for (case, in_ns, forge, want_state, needles) in cases {
        let own;
        let ns = match in_ns {
            Some(ns) => ns.name().to_string(),
            None => {
                own = TestNamespace::create(&client, "forged").await?;
                own.name().to_string()
            }
        };
        let pod = running_web_pod(&client, &ns, &node).await?;
        apply_policy(&client, &ns, "contain", spec.clone()).await?;
        let mut alert = alert_about(&pod, &node);
        forge(&mut alert);
        let answer = post(&mut intake, &alert).await?;
        assert_eq!(answer.status.as_u16(), 202, "{case}: {}", answer.body);
        let report = poll_for(&format!("{case}: two decided records"), WAIT, || async {
            let found = reports(&client, &ns).await?;
            Ok::<_, anyhow::Error>(found.into_iter().find(|r| {
                let r = records(r);
                r.len() == 2 && r.iter().all(|r| r.state != RemediationState::Running)
            }))
        })
        .await?;
        for r in records(&report) {
            assert_eq!(r.state, want_state, "{case}: {} {}", r.action, r.reason);
            for needle in &needles {
                assert!(
                    r.reason.contains(needle.as_str()),
                    "{case}: the reason does not name {needle:?}: {}",
                    r.reason
                );
            }
            figures.push(format!("{case}: {} {:?}: {}", r.action, r.state, r.reason));
        }
        scenes.push((case, ns, pod));
    }
    // Nothing was touched: no label, no NetworkPolicy, the same pod.
    for (case, ns, pod) in &scenes {
        let now = Api::<Pod>::namespaced(client.clone(), ns)
            .get(&pod.name_any())
            .await?;
        assert_eq!(now.uid(), pod.uid(), "{case}: the pod is the same");
        assert!(
            !now.labels().contains_key("peregrine.dev/quarantine"),
            "{case}: the pod was labelled"
        );
        let nps = Api::<NetworkPolicy>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await?
            .items;
        assert!(nps.is_empty(), "{case}: a NetworkPolicy exists: {nps:?}");
    }

    // The same policy on a genuine alert does act: the refusals above were the forgeries'.
    let ns = TestNamespace::create(&client, "genuine").await?;
    let pod = running_web_pod(&client, ns.name(), &node).await?;
    apply_policy(&client, ns.name(), "contain", spec).await?;
    post(&mut intake, &alert_about(&pod, &node)).await?;
    poll_for("the genuine alert's actions succeed", WAIT, || async {
        let found = reports(&client, ns.name()).await?;
        Ok::<_, anyhow::Error>(found.into_iter().find(|r| {
            let r = records(r);
            r.len() == 2 && r.iter().all(|r| r.state == RemediationState::Succeeded)
        }))
    })
    .await?;
    let labelled = Api::<Pod>::namespaced(client.clone(), ns.name())
        .get(&pod.name_any())
        .await?;
    assert_eq!(
        labelled
            .labels()
            .get("peregrine.dev/quarantine")
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(
        Api::<NetworkPolicy>::namespaced(client.clone(), ns.name())
            .list(&ListParams::default())
            .await?
            .items
            .len(),
        1
    );
    eprintln!(
        "forged alerts, {} records, nothing touched:\n  {}",
        figures.len(),
        figures.join("\n  ")
    );
    operator.stop().await
}

#[tokio::test]
async fn a_flood_across_a_hundred_pods_deletes_no_more_than_the_destructive_budget()
-> anyhow::Result<()> {
    const PODS: usize = 100;
    const BUDGET: usize = 5;
    const BREAKER: usize = 20;
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let home = TestNamespace::create(&client, "peregrine-flood").await?;
    let ns = TestNamespace::create(&client, "flood").await?;
    let node = unique_name("worker");
    create_node(&client, &node).await?;

    // A hundred standalone pods, each its own workload, so each alert is its own report.
    let names: Vec<String> = (0..PODS).map(|i| format!("victim-{i:03}")).collect();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let mut pods = Vec::new();
    for chunk in names.chunks(10) {
        let made = futures::future::try_join_all(chunk.iter().map(|name| {
            let (client, pods_api, ns, node) = (
                client.clone(),
                pods_api.clone(),
                ns.name().to_string(),
                node.clone(),
            );
            async move {
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": name, "labels": {"app": "victim"}},
                    "spec": {"containers": [{"name": "web", "image": "registry.example.com/shop/web:1.4.2"}]}
                }))?;
                pods_api.create(&PostParams::default(), &pod).await?;
                bind_pod(&client, &ns, name, &node).await?;
                Ok::<_, anyhow::Error>(mark_pod_running(&client, &ns, name).await?)
            }
        }))
        .await?;
        pods.extend(made);
    }

    let operator = Operator::start(
        cp,
        home.name(),
        &[
            "--intake-allow-unauthenticated",
            "--lease-duration",
            "3s",
            "--destructive-budget",
            &BUDGET.to_string(),
            "--circuit-breaker-threshold",
            &BREAKER.to_string(),
            "--circuit-breaker-window",
            "10m",
        ],
    )
    .await?;
    apply_policy(
        &client,
        ns.name(),
        "wipe",
        json!({"mode": "Enforce", "actions": [
            {"type": "Label", "labels": {"contained": "true"}},
            {"type": "DeletePod", "gracePeriodSeconds": 0, "includeUnmanaged": true}
        ]}),
    )
    .await?;
    // Wait until the operator sees the policy Ready, so every alert is matched.
    let policies: Api<RemediationPolicy> = Api::namespaced(client.clone(), ns.name());
    poll_for("the policy Ready", WAIT, || async {
        let p = policies.get("wipe").await?;
        Ok::<_, anyhow::Error>(p.status.and_then(|s| {
            s.conditions
                .into_iter()
                .find(|c| c.type_ == "Ready" && c.status == "True")
        }))
    })
    .await?;

    let started = Instant::now();
    let mut intake = operator.client(None);
    let mut refused = 0;
    for pod in &pods {
        let answer = post(&mut intake, &alert_about(pod, &node)).await?;
        if answer.status.as_u16() != 202 {
            refused += 1;
        }
    }
    assert_eq!(refused, 0, "the intake refused part of the flood");
    let all = poll_for(
        "every report of the flood decided",
        Duration::from_secs(180),
        || async {
            let found = reports(&client, ns.name()).await?;
            let done = found.len() == PODS
                && found.iter().all(|r| {
                    let r = records(r);
                    r.len() == 2 && r.iter().all(|r| r.state != RemediationState::Running)
                });
            Ok::<_, anyhow::Error>(done.then_some(found))
        },
    )
    .await?;
    let decided = started.elapsed();

    let mut by_outcome: std::collections::BTreeMap<(String, String), usize> = Default::default();
    for r in all.iter().flat_map(records) {
        let outcome = match r.state {
            RemediationState::Skipped if r.reason.contains("--destructive-budget") => {
                "Skipped (budget)".to_string()
            }
            RemediationState::DryRun if r.reason.contains("circuit breaker") => {
                "DryRun (circuit breaker)".to_string()
            }
            other => format!("{other:?}"),
        };
        *by_outcome.entry((r.action.clone(), outcome)).or_default() += 1;
    }
    let of = |action: &str, outcome: &str| {
        by_outcome
            .get(&(action.to_string(), outcome.to_string()))
            .copied()
            .unwrap_or(0)
    };
    let left: Vec<Pod> = pods_api.list(&ListParams::default()).await?.items;
    let deleted = pods
        .iter()
        .filter(|p| {
            !left
                .iter()
                .any(|l| l.uid() == p.uid() && l.metadata.deletion_timestamp.is_none())
        })
        .count();
    let labelled = left
        .iter()
        .filter(|p| p.labels().get("contained").map(String::as_str) == Some("true"))
        .count();
    eprintln!(
        "flood of {PODS} alerts on {PODS} pods, decided in {decided:?}: {deleted} pods deleted \
         (budget {BUDGET} per minute), {labelled} surviving pods labelled, circuit breaker at \
         {BREAKER} actions; records: {by_outcome:?}"
    );
    assert!(deleted >= 1, "the policy deleted nothing: {by_outcome:?}");
    assert!(
        deleted <= BUDGET,
        "{deleted} pods deleted, more than the budget of {BUDGET}: {by_outcome:?}"
    );
    assert_eq!(
        deleted,
        of("DeletePod", "Succeeded"),
        "every deleted pod has its Succeeded record, and only those"
    );
    assert!(
        of("Label", "Succeeded") + of("DeletePod", "Succeeded") <= BREAKER,
        "more actions than the circuit breaker's threshold: {by_outcome:?}"
    );
    assert_eq!(
        of("DeletePod", "Succeeded")
            + of("DeletePod", "Skipped (budget)")
            + of("DeletePod", "DryRun (circuit breaker)"),
        PODS,
        "every DeletePod decision is Succeeded, held by the budget, or by the breaker: {by_outcome:?}"
    );
    assert!(
        of("Label", "DryRun (circuit breaker)") > 0,
        "the breaker opened: {by_outcome:?}"
    );
    let breaker: Api<ConfigMap> = Api::namespaced(client.clone(), home.name());
    let cm = breaker.get("peregrine-circuit-breaker").await?;
    assert_eq!(
        cm.data.unwrap_or_default().get("state").map(String::as_str),
        Some("Open")
    );
    operator.stop().await
}

// ---------------------------------------------------------------------------
// The operator's identity, as the chart grants it.
// ---------------------------------------------------------------------------

fn helm(cp: &ControlPlane) -> Command {
    let bin = std::env::var_os("HELM").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/controlplane/bin/helm"),
        PathBuf::from,
    );
    let home = std::env::temp_dir().join("peregrine-helm");
    let mut cmd = Command::new(bin);
    cmd.env("KUBECONFIG", cp.kubeconfig_path())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    cmd
}

fn ok(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| {
        anyhow::anyhow!("cannot run {shown}: {e} (helm: `make controlplane-build`)")
    })?;
    anyhow::ensure!(
        out.status.success(),
        "{shown} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn token_client(cp: &ControlPlane, token: &str) -> anyhow::Result<Client> {
    let mut config: Kubeconfig = cp.kubeconfig().clone();
    let auth: kube::config::AuthInfo = serde_json::from_value(json!({ "token": token }))?;
    for named in &mut config.auth_infos {
        named.auth_info = Some(auth.clone());
    }
    Ok(Client::try_from(
        kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default()).await?,
    )?)
}

/// One question to the API server's authorizer, asked as the client's identity.
struct Ask {
    namespace: Option<String>,
    group: &'static str,
    resource: &'static str,
    subresource: &'static str,
    verb: &'static str,
    name: Option<String>,
}

fn ask(
    namespace: Option<&str>,
    group: &'static str,
    resource: &'static str,
    subresource: &'static str,
    verb: &'static str,
    name: Option<&str>,
) -> Ask {
    Ask {
        namespace: namespace.map(str::to_string),
        group,
        resource,
        subresource,
        verb,
        name: name.map(str::to_string),
    }
}

async fn allowed(client: &Client, a: &Ask) -> anyhow::Result<bool> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: a.namespace.clone(),
                group: Some(a.group.to_string()),
                resource: Some(a.resource.to_string()),
                subresource: (!a.subresource.is_empty()).then(|| a.subresource.to_string()),
                verb: Some(a.verb.to_string()),
                name: a.name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    Ok(api
        .create(&PostParams::default(), &review)
        .await?
        .status
        .is_some_and(|s| s.allowed))
}

fn forbidden<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) -> Option<String> {
    match result {
        Err(kube::Error::Api(s)) if s.code == 403 => None,
        other => Some(format!("{what}: expected 403 Forbidden, got {other:?}")),
    }
}

#[tokio::test]
async fn the_operators_identity_cannot_read_other_secrets_exec_or_escalate() -> anyhow::Result<()> {
    let cp = control_plane().await?;
    let admin = cp.client().await?;
    let own = TestNamespace::create(&admin, "peregrine-system").await?;
    let falco = TestNamespace::create(&admin, "falco").await?;
    let apps = TestNamespace::create(&admin, "shop").await?;
    let elsewhere = TestNamespace::create(&admin, "bank").await?;
    let release = unique_name("pg");
    let fullname = format!("{release}-peregrine");
    // Every action family on, and Notify allowed two named Secrets: the most
    // the chart can grant.
    ok(helm(cp)
        .args(["install", &release])
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("charts/peregrine"))
        .args(["--namespace", own.name()])
        .args(["--set", &format!("falco.namespace={}", falco.name())])
        .args([
            "--set",
            "remediation.deletePod=true",
            "--set",
            "remediation.scaleToZero=true",
            "--set",
            "remediation.cordonNode=true",
            "--set",
            "remediation.notify.enabled=true",
            "--set",
            &format!("remediation.notify.secrets={{hook,{}/hook}}", apps.name()),
        ]))?;
    let secrets = |ns: &str| Api::<Secret>::namespaced(admin.clone(), ns);
    for (ns, name) in [
        (own.name(), "hook"),
        (own.name(), "db-password"),
        (apps.name(), "hook"),
        (apps.name(), "db-password"),
        (elsewhere.name(), "hook"),
    ] {
        secrets(ns)
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": name}, "stringData": {"url": "http://127.0.0.1:1/hook"}
                }))?,
            )
            .await?;
    }
    let token = ok(Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .args([
            "create",
            "token",
            &fullname,
            "-n",
            own.name(),
            "--duration=1h",
        ]))?;
    let operator = token_client(cp, token.trim()).await?;

    // What the authorizer answers the operator's identity.
    let (o, a, e) = (Some(own.name()), Some(apps.name()), Some(elsewhere.name()));
    let expected: Vec<(&str, Ask, bool)> = vec![
        (
            "the named Secret in its namespace",
            ask(o, "", "secrets", "", "get", Some("hook")),
            true,
        ),
        (
            "the named Secret in a workload's namespace",
            ask(a, "", "secrets", "", "get", Some("hook")),
            true,
        ),
        (
            "another Secret in its namespace",
            ask(o, "", "secrets", "", "get", Some("db-password")),
            false,
        ),
        (
            "another Secret in a workload's namespace",
            ask(a, "", "secrets", "", "get", Some("db-password")),
            false,
        ),
        (
            "a Secret of the same name elsewhere",
            ask(e, "", "secrets", "", "get", Some("hook")),
            false,
        ),
        (
            "list Secrets in its namespace",
            ask(o, "", "secrets", "", "list", None),
            false,
        ),
        (
            "list Secrets in a workload's namespace",
            ask(a, "", "secrets", "", "list", None),
            false,
        ),
        (
            "watch Secrets cluster-wide",
            ask(None, "", "secrets", "", "watch", None),
            false,
        ),
        (
            "update the named Secret",
            ask(o, "", "secrets", "", "update", Some("hook")),
            false,
        ),
        (
            "exec into pods",
            ask(a, "", "pods", "exec", "create", None),
            false,
        ),
        (
            "attach to pods",
            ask(a, "", "pods", "attach", "create", None),
            false,
        ),
        (
            "port-forward to pods",
            ask(a, "", "pods", "portforward", "create", None),
            false,
        ),
        ("create pods", ask(a, "", "pods", "", "create", None), false),
        (
            "create ClusterRoles",
            ask(
                None,
                "rbac.authorization.k8s.io",
                "clusterroles",
                "",
                "create",
                None,
            ),
            false,
        ),
        (
            "patch its own ClusterRole",
            ask(
                None,
                "rbac.authorization.k8s.io",
                "clusterroles",
                "",
                "patch",
                Some(fullname.as_str()),
            ),
            false,
        ),
        (
            "escalate ClusterRoles",
            ask(
                None,
                "rbac.authorization.k8s.io",
                "clusterroles",
                "",
                "escalate",
                None,
            ),
            false,
        ),
        (
            "bind ClusterRoles",
            ask(
                None,
                "rbac.authorization.k8s.io",
                "clusterroles",
                "",
                "bind",
                None,
            ),
            false,
        ),
        (
            "create ClusterRoleBindings",
            ask(
                None,
                "rbac.authorization.k8s.io",
                "clusterrolebindings",
                "",
                "create",
                None,
            ),
            false,
        ),
        (
            "create Roles in its namespace",
            ask(o, "rbac.authorization.k8s.io", "roles", "", "create", None),
            false,
        ),
        (
            "escalate Roles",
            ask(
                o,
                "rbac.authorization.k8s.io",
                "roles",
                "",
                "escalate",
                None,
            ),
            false,
        ),
        (
            "bind Roles",
            ask(o, "rbac.authorization.k8s.io", "roles", "", "bind", None),
            false,
        ),
        (
            "create RoleBindings in its namespace",
            ask(
                o,
                "rbac.authorization.k8s.io",
                "rolebindings",
                "",
                "create",
                None,
            ),
            false,
        ),
        (
            "impersonate users",
            ask(None, "", "users", "", "impersonate", None),
            false,
        ),
        (
            "impersonate groups",
            ask(None, "", "groups", "", "impersonate", None),
            false,
        ),
        (
            "impersonate ServiceAccounts",
            ask(o, "", "serviceaccounts", "", "impersonate", None),
            false,
        ),
        (
            "mint tokens of ServiceAccounts",
            ask(o, "", "serviceaccounts", "token", "create", None),
            false,
        ),
        (
            "approve CertificateSigningRequests",
            ask(None, "certificates.k8s.io", "signers", "", "approve", None),
            false,
        ),
    ];
    let mut wrong = Vec::new();
    for (what, question, want) in &expected {
        if allowed(&operator, question).await? != *want {
            wrong.push(format!("{what}: expected allowed={want}"));
        }
    }

    // And the real requests, each refused by the API server.
    let as_op = |ns: &str| Api::<Secret>::namespaced(operator.clone(), ns);
    anyhow::ensure!(
        as_op(own.name()).get("hook").await.is_ok(),
        "the named Secret must be readable"
    );
    wrong.extend(forbidden(
        "get another Secret in its namespace",
        as_op(own.name()).get("db-password").await,
    ));
    wrong.extend(forbidden(
        "get another Secret in a workload's namespace",
        as_op(apps.name()).get("db-password").await,
    ));
    wrong.extend(forbidden(
        "get a Secret of the same name elsewhere",
        as_op(elsewhere.name()).get("hook").await,
    ));
    wrong.extend(forbidden(
        "list Secrets in its namespace",
        as_op(own.name()).list(&ListParams::default()).await,
    ));
    wrong.extend(forbidden(
        "list Secrets in a workload's namespace",
        as_op(apps.name()).list(&ListParams::default()).await,
    ));
    wrong.extend(forbidden(
        "list Secrets cluster-wide",
        Api::<Secret>::all(operator.clone())
            .list(&ListParams::default())
            .await,
    ));

    let node = unique_name("worker");
    create_node(&admin, &node).await?;
    let pod = running_web_pod(&admin, apps.name(), &node).await?;
    let exec = http::Request::post(format!(
        "/api/v1/namespaces/{}/pods/{}/exec?command=sh&stdout=true",
        apps.name(),
        pod.name_any()
    ))
    .body(Vec::new())?;
    wrong.extend(forbidden(
        "exec into a pod",
        operator.request_text(exec).await,
    ));

    let escalated: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": unique_name("peregrine-escalated")},
        "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]
    }))?;
    wrong.extend(forbidden(
        "create a ClusterRole",
        Api::<ClusterRole>::all(operator.clone())
            .create(&PostParams::default(), &escalated)
            .await,
    ));
    wrong.extend(forbidden(
        "patch its own ClusterRole",
        Api::<ClusterRole>::all(operator.clone())
            .patch(
                &fullname,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}),
                ),
            )
            .await,
    ));
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": unique_name("peregrine-admin")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": fullname, "namespace": own.name()}]
    }))?;
    wrong.extend(forbidden(
        "bind itself to cluster-admin",
        Api::<ClusterRoleBinding>::all(operator.clone())
            .create(&PostParams::default(), &binding)
            .await,
    ));
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "secrets-reader"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}]
    }))?;
    wrong.extend(forbidden(
        "create a Role reading Secrets in its namespace",
        Api::<Role>::namespaced(operator.clone(), own.name())
            .create(&PostParams::default(), &role)
            .await,
    ));
    let impersonated = http::Request::get(format!("/api/v1/namespaces/{}/secrets", own.name()))
        .header("Impersonate-User", "system:admin")
        .header("Impersonate-Group", "system:masters")
        .body(Vec::new())?;
    wrong.extend(forbidden(
        "impersonate system:admin",
        operator.request_text(impersonated).await,
    ));

    assert!(
        wrong.is_empty(),
        "the operator's identity can do more than it should:\n{}",
        wrong.join("\n")
    );
    eprintln!(
        "the chart's identity: {} access reviews and 11 real requests as expected (2 named Secrets readable; \
         other Secrets, exec, RBAC writes, escalate, bind and impersonate refused)",
        expected.len()
    );
    ok(helm(cp).args(["uninstall", &release, "-n", own.name(), "--wait"]))?;
    Ok(())
}
