//! The Helm chart, against the real local control plane and the pinned helm:
//! it lints, renders objects the API server accepts, installs, grants the
//! operator exactly what it needs, and uninstalls cleanly. The plain manifests
//! in deploy/ and the chart's CRDs must not drift from what generates them.

#[path = "support/operator.rs"]
mod support;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use peregrine::replay::{IntakeClient, TlsFiles};
use peregrine_testenv::{ControlPlane, TestNamespace, poll_until, unique_name};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    repo().join("charts/peregrine")
}

fn helm_bin() -> PathBuf {
    match std::env::var_os("HELM") {
        Some(helm) => PathBuf::from(helm),
        None => repo().join("target/controlplane/bin/helm"),
    }
}

/// Runs a command, returning (success, stdout, stderr).
fn run(cmd: &mut Command, stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (helm: `make controlplane-build`)"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait for command");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(cmd: &mut Command, stdin: Option<&str>) -> String {
    let shown = format!("{cmd:?}");
    let (success, out, err) = run(cmd, stdin);
    assert!(success, "{shown} failed:\n{err}\n{out}");
    out
}

fn helm(cp: &ControlPlane) -> Command {
    let mut cmd = Command::new(helm_bin());
    cmd.env("KUBECONFIG", cp.kubeconfig_path())
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("peregrine-helm/cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("peregrine-helm/config"),
        )
        .env(
            "HELM_DATA_HOME",
            std::env::temp_dir().join("peregrine-helm/data"),
        );
    cmd
}

fn kubectl(cp: &ControlPlane) -> Command {
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(cp.kubeconfig_path());
    cmd
}

/// `helm template` of the chart into `namespace` with `args` (more flags).
fn template(cp: &ControlPlane, namespace: &str, args: &[&str]) -> String {
    ok(
        helm(cp)
            .args(["template", "peregrine"])
            .arg(chart())
            .args(["--namespace", namespace])
            .args(args),
        None,
    )
}

/// Values that turn on everything a cluster without cert-manager and
/// prometheus-operator can accept.
fn non_default_values(falco_ns: &str) -> Vec<String> {
    [
        "replicaCount=3",
        "intake.tokens.enabled=true",
        "remediation.deletePod=true",
        "remediation.scaleToZero=true",
        "remediation.cordonNode=true",
        "remediation.notify.enabled=true",
        "remediation.notify.secrets={slack-webhook,pager}",
        "networkPolicy.notifyEndpoints[0].cidr=203.0.113.0/24",
        "networkPolicy.notifyEndpoints[0].ports={443}",
        "falco.podSelector.app\\.kubernetes\\.io/name=falco",
        "operator.logFormat=text",
        "intake.tls.extraDnsNames={peregrine.example.com}",
        "metrics.dashboard.labels.grafana_folder=security",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("falco.namespace={falco_ns}")])
    .collect()
}

fn set_args(values: &[String]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| ["--set".to_string(), v.clone()])
        .collect()
}

fn kinds(manifests: &str) -> Vec<String> {
    manifests
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .map(str::to_string)
        .collect()
}

#[test]
fn chart_crds_are_the_generated_ones() {
    let generated = repo().join("crds");
    let carried = chart().join("crds");
    let names = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        names(&generated),
        names(&carried),
        "charts/peregrine/crds/ must hold exactly the files of crds/: run `make crds`"
    );
    for name in names(&generated) {
        assert!(
            std::fs::read(generated.join(&name)).expect("read")
                == std::fs::read(carried.join(&name)).expect("read"),
            "charts/peregrine/crds/{name} differs from crds/{name}: run `make crds`"
        );
    }
}

#[test]
fn deploy_manifests_are_the_chart_rendered_with_default_values() {
    let rendered = std::env::temp_dir().join(format!("{}.yaml", unique_name("deploy")));
    ok(
        Command::new(repo().join("scripts/render-deploy.sh"))
            .arg(&rendered)
            .env("HELM", helm_bin()),
        None,
    );
    let want = std::fs::read_to_string(&rendered).expect("rendered manifests");
    let _ = std::fs::remove_file(&rendered);
    let have = std::fs::read_to_string(repo().join("deploy/peregrine.yaml")).unwrap_or_default();
    assert!(
        have == want,
        "deploy/peregrine.yaml is out of date with charts/peregrine: run `make deploy`"
    );
    assert!(
        !have.contains("PRIVATE KEY") && !have.contains("tls.key:"),
        "deploy/ must not carry a private key"
    );
}

#[tokio::test]
async fn wrong_values_fail_with_the_field_named() -> anyhow::Result<()> {
    let cp = ControlPlane::shared();
    for (value, says) in [
        ("replicaCount=0", "replicaCount"),
        ("remediation.deletepod=true", "deletepod"),
        ("operator.logFormat=xml", "logFormat"),
        ("operator.flushInterval=soon", "flushInterval"),
        ("remediation.notify.secrets={Not_A_Name}", "secrets"),
    ] {
        let (success, _, err) = run(
            helm(cp)
                .args(["template", "peregrine"])
                .arg(chart())
                .args(["--set", value]),
            None,
        );
        assert!(!success, "--set {value} was accepted");
        assert!(err.contains(says), "--set {value}: {err}");
    }
    let (success, _, err) = run(
        helm(cp)
            .args(["template", "peregrine"])
            .arg(chart())
            .args(["--set", "intake.tls.enabled=false"]),
        None,
    );
    assert!(!success && err.contains("needs authentication"), "{err}");
    Ok(())
}

#[tokio::test]
async fn chart_lints_and_renders_objects_the_api_server_accepts() -> anyhow::Result<()> {
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "render").await?;
    let falco = TestNamespace::create(&client, "falco-render").await?;
    let custom = set_args(&non_default_values(falco.name()));
    let custom: Vec<&str> = custom.iter().map(String::as_str).collect();

    ok(helm(cp).arg("lint").arg(chart()).arg("--strict"), None);
    let mut lint = helm(cp);
    lint.arg("lint").arg(chart()).arg("--strict").args(&custom);
    ok(&mut lint, None);

    let set_falco = format!("falco.namespace={}", falco.name());
    let default = template(cp, ns.name(), &["--set", &set_falco]);
    let non_default = template(cp, ns.name(), &custom);
    for (what, manifests) in [("default", &default), ("non-default", &non_default)] {
        let out = ok(
            kubectl(cp).args(["apply", "--dry-run=server", "-f", "-"]),
            Some(manifests),
        );
        assert!(
            out.lines().count() >= kinds(manifests).len(),
            "{what} values: not every object was accepted:\n{out}"
        );
    }
    let examples = std::fs::read_to_string(repo().join("deploy/examples/policies.yaml"))?
        .replace("namespace: shop", &format!("namespace: {}", ns.name()));
    ok(
        kubectl(cp).args(["apply", "--dry-run=server", "-f", "-"]),
        Some(&examples),
    );
    let default_kinds = kinds(&default);
    for kind in ["Deployment", "ServiceAccount", "NetworkPolicy", "ConfigMap"] {
        assert!(
            default_kinds.iter().any(|k| k == kind),
            "no {kind}: {default_kinds:?}"
        );
    }
    assert!(!default_kinds.iter().any(|k| k == "PodDisruptionBudget"));
    let non_default_kinds = kinds(&non_default);
    assert!(non_default_kinds.iter().any(|k| k == "PodDisruptionBudget"));

    // Without their CRDs here, cert-manager and ServiceMonitor objects are only rendered.
    let optional = template(
        cp,
        ns.name(),
        &[
            "--set",
            "certManager.enabled=true",
            "--set",
            "metrics.serviceMonitor.enabled=true",
        ],
    );
    let optional_kinds = kinds(&optional);
    assert_eq!(
        optional_kinds
            .iter()
            .filter(|k| *k == "Certificate")
            .count(),
        3,
        "CA, server and client certificates: {optional_kinds:?}"
    );
    assert!(optional_kinds.iter().any(|k| k == "ServiceMonitor"));
    assert!(
        !optional.contains("peregrine.dev/generated-certificate"),
        "cert-manager replaces the generated certificates"
    );

    // Least privilege: no wildcard, no exec, Secrets only by name.
    for manifests in [&default, &non_default] {
        assert!(!manifests.contains("\"*\""), "a wildcard in RBAC");
        assert!(!manifests.contains("pods/exec"), "exec in RBAC");
    }
    let secret_rules: Vec<&str> = non_default
        .split("\n---\n")
        .filter(|doc| doc.contains("\"secrets\""))
        .collect();
    assert!(!secret_rules.is_empty());
    for doc in secret_rules {
        assert!(
            doc.contains("kind: Role\n"),
            "Secrets are granted by a namespaced Role only"
        );
        assert!(
            doc.contains("resourceNames"),
            "Secrets are granted by name only:\n{doc}"
        );
    }
    assert!(
        !default.contains("\"secrets\""),
        "with notify off, no access to Secrets"
    );
    Ok(())
}

/// A permission the operator's identity should have or not have.
struct Access {
    what: &'static str,
    group: &'static str,
    resource: &'static str,
    subresource: &'static str,
    verb: &'static str,
    allowed: bool,
}

const fn access(
    what: &'static str,
    group: &'static str,
    resource: &'static str,
    subresource: &'static str,
    verb: &'static str,
    allowed: bool,
) -> Access {
    Access {
        what,
        group,
        resource,
        subresource,
        verb,
        allowed,
    }
}

/// What the chart with default values grants and refuses in a workload's
/// namespace. Action families `label`, `annotate` and `isolate` are on by
/// default, the others off.
const DEFAULT_ACCESS: &[Access] = &[
    access("read pods", "", "pods", "", "list", true),
    access(
        "write AlertReports",
        "peregrine.dev",
        "alertreports",
        "",
        "create",
        true,
    ),
    access(
        "write AlertReport status",
        "peregrine.dev",
        "alertreports",
        "status",
        "patch",
        true,
    ),
    access(
        "read RemediationPolicies",
        "peregrine.dev",
        "remediationpolicies",
        "",
        "watch",
        true,
    ),
    access(
        "write RemediationPolicy status",
        "peregrine.dev",
        "remediationpolicies",
        "status",
        "patch",
        true,
    ),
    access(
        "record Events",
        "events.k8s.io",
        "events",
        "",
        "create",
        true,
    ),
    access("label/annotate: patch pods", "", "pods", "", "patch", true),
    access(
        "isolate: create NetworkPolicies",
        "networking.k8s.io",
        "networkpolicies",
        "",
        "create",
        true,
    ),
    access(
        "isolate: delete NetworkPolicies",
        "networking.k8s.io",
        "networkpolicies",
        "",
        "delete",
        true,
    ),
    access("deletePod is off", "", "pods", "", "delete", false),
    access(
        "scaleToZero is off",
        "apps",
        "deployments",
        "scale",
        "patch",
        false,
    ),
    access("cordonNode is off", "", "nodes", "", "patch", false),
    access("no Secrets", "", "secrets", "", "get", false),
    access("no Secrets listed", "", "secrets", "", "list", false),
    access("no exec", "", "pods", "exec", "create", false),
    access(
        "no RemediationPolicy writes",
        "peregrine.dev",
        "remediationpolicies",
        "",
        "update",
        false,
    ),
    access(
        "no Leases outside its namespace",
        "coordination.k8s.io",
        "leases",
        "",
        "update",
        false,
    ),
];

async fn can(client: &kube::Client, namespace: &str, a: &Access) -> anyhow::Result<bool> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.to_string()),
                group: Some(a.group.to_string()),
                resource: Some(a.resource.to_string()),
                subresource: (!a.subresource.is_empty()).then(|| a.subresource.to_string()),
                verb: Some(a.verb.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let answer = api.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// A kubeconfig authenticating with `token` at the control plane.
fn token_kubeconfig(cp: &ControlPlane, token: &str) -> anyhow::Result<Kubeconfig> {
    let mut config = cp.kubeconfig().clone();
    let auth: kube::config::AuthInfo =
        serde_json::from_value(serde_json::json!({ "token": token }))?;
    for named in &mut config.auth_infos {
        named.auth_info = Some(auth.clone());
    }
    Ok(config)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    let code = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Some((code, body))
}

#[tokio::test]
async fn installed_chart_runs_the_flow_with_exactly_its_rbac_and_uninstalls_cleanly()
-> anyhow::Result<()> {
    let cp = control_plane().await?;
    let admin = cp.client().await?;
    let ns = TestNamespace::create(&admin, "peregrine-system").await?;
    let falco = TestNamespace::create(&admin, "falco").await?;
    let apps = TestNamespace::create(&admin, "shop").await?;
    let release = unique_name("pg");
    let fullname = format!("{release}-peregrine");

    let started = Instant::now();
    ok(
        helm(cp)
            .args(["install", &release])
            .arg(chart())
            .args(["--namespace", ns.name()])
            .args(["--set", &format!("falco.namespace={}", falco.name())]),
        None,
    );
    eprintln!("helm install took {:?}", started.elapsed());
    let notes = ok(
        helm(cp).args(["get", "notes", &release, "-n", ns.name()]),
        None,
    );
    for needle in [
        "json_output: true",
        "mtls: true",
        "client_cert:",
        "ca_cert:",
        "volumeMounts:",
    ] {
        assert!(notes.contains(needle), "NOTES lack {needle}:\n{notes}");
    }

    // The chart's own identity: a token of its ServiceAccount, in a kubeconfig.
    let token = ok(
        kubectl(cp).args([
            "create",
            "token",
            &fullname,
            "-n",
            ns.name(),
            "--duration=1h",
        ]),
        None,
    );
    let work = std::env::temp_dir().join(unique_name("chart-flow"));
    std::fs::create_dir_all(&work)?;
    let kubeconfig = work.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        serde_json::to_vec(&token_kubeconfig(cp, token.trim())?)?,
    )?;
    let operator_client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(
            token_kubeconfig(cp, token.trim())?,
            &KubeConfigOptions::default(),
        )
        .await?,
    )?;

    // The chart-generated certificates: the server's for the operator, the
    // client's (in Falco's namespace) for the sender.
    let write_secret = |secret: &Secret, prefix: &str| -> anyhow::Result<()> {
        for key in ["tls.crt", "tls.key", "ca.crt"] {
            let data = secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .ok_or_else(|| anyhow::anyhow!("{key} missing from the Secret"))?;
            std::fs::write(work.join(format!("{prefix}-{key}")), &data.0)?;
        }
        Ok(())
    };
    let server: Secret = Api::namespaced(admin.clone(), ns.name())
        .get(&format!("{fullname}-intake-tls"))
        .await?;
    write_secret(&server, "server")?;
    let client_secret: Secret = Api::namespaced(admin.clone(), falco.name())
        .get(&format!("{fullname}-falco-client"))
        .await?;
    write_secret(&client_secret, "client")?;

    // The operator binary, as the Deployment runs it, with that identity.
    let intake_port = free_port();
    let health_port = free_port();
    let path = |name: &str| work.join(name).display().to_string();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_peregrine"))
        .args(["run", "--log-format", "json"])
        .arg(format!("--intake-addr=127.0.0.1:{intake_port}"))
        .arg(format!("--health-addr=127.0.0.1:{health_port}"))
        .arg(format!("--intake-tls-cert={}", path("server-tls.crt")))
        .arg(format!("--intake-tls-key={}", path("server-tls.key")))
        .arg(format!("--intake-client-ca={}", path("server-ca.crt")))
        .arg(format!("--namespace={}", ns.name()))
        .arg("--flush-interval=300ms")
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("POD_NAMESPACE")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join("operator.log"))?)
        .kill_on_drop(true)
        .spawn()?;
    let health = format!("127.0.0.1:{health_port}");
    let log = work.join("operator.log");
    poll_until("the operator is ready", Duration::from_secs(60), || {
        let health = health.clone();
        let log = log.clone();
        async move {
            match http_get(&health, "/readyz").await {
                Some((200, _)) => Ok(true),
                _ if std::fs::read_to_string(&log)
                    .is_ok_and(|l| l.contains("\"level\":\"ERROR\"")) =>
                {
                    Err(anyhow::anyhow!(
                        "the operator failed:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    ))
                }
                _ => Ok(false),
            }
        }
    })
    .await?;

    let pods = deployment(&admin, apps.name(), "web", 1).await?;
    let node = unique_name("worker");
    peregrine_testenv::create_node(&admin, &node).await?;
    peregrine_testenv::bind_pod(&admin, apps.name(), &pods[0], &node).await?;
    // A policy using the families the chart turns on by default: label and isolate.
    let policy: peregrine::crd::RemediationPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "peregrine.dev/v1alpha1", "kind": "RemediationPolicy",
        "metadata": {"name": "quarantine-shells", "namespace": apps.name()},
        "spec": {
            "mode": "Enforce",
            "match": {"rules": ["Terminal shell in container"]},
            "actions": [
                {"type": "Label", "labels": {"security.peregrine.dev/quarantine": "true"}},
                {"type": "Isolate"}
            ]
        }
    }))?;
    Api::<peregrine::crd::RemediationPolicy>::namespaced(admin.clone(), apps.name())
        .create(&PostParams::default(), &policy)
        .await?;
    let url = format!("https://localhost:{intake_port}/v1/falco");
    let mut falco_client = IntakeClient::new(
        &url,
        None,
        &TlsFiles {
            ca: Some(work.join("client-ca.crt")),
            cert: Some(work.join("client-tls.crt")),
            key: Some(work.join("client-tls.key")),
        },
    )?;
    // Remediation verifies its target: the alert names the pod's real UID.
    let running = peregrine_testenv::mark_pod_running(&admin, apps.name(), &pods[0]).await?;
    let uid = running.metadata.uid.clone().unwrap_or_default();
    let container_id: String = running
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.into_iter().next())
        .and_then(|c| c.container_id)
        .and_then(|id| {
            id.rsplit('/')
                .next()
                .map(|hex| hex.chars().take(12).collect())
        })
        .unwrap_or_default();
    let mut alert = shell_alert(apps.name(), &pods[0], &node);
    alert["output_fields"]["k8s.pod.uid"] = serde_json::json!(uid);
    alert["output_fields"]["container.id"] = serde_json::json!(container_id);
    let answer = post(&mut falco_client, &alert).await?;
    assert_eq!(answer.status.as_u16(), 202, "{}", answer.body);
    let reports = wait_for_reports(&admin, apps.name(), "a report from the mTLS alert", |r| {
        r.len() == 1 && count(&r[0]) == 1
    })
    .await?;
    assert_eq!(reports[0].spec.rule, "Terminal shell in container");

    // The policy acted with the chart's RBAC: the pod is labelled and isolated.
    let admin_pods: Api<Pod> = Api::namespaced(admin.clone(), apps.name());
    let policies: Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
        Api::namespaced(admin.clone(), apps.name());
    let pod_name = pods[0].clone();
    let acted = poll_until(
        "the pod labelled and isolated",
        Duration::from_secs(60),
        || {
            let admin_pods = admin_pods.clone();
            let policies = policies.clone();
            let pod_name = pod_name.clone();
            async move {
                let pod = admin_pods.get(&pod_name).await?;
                let labelled = pod.metadata.labels.is_some_and(|l| {
                    l.get("security.peregrine.dev/quarantine")
                        .map(String::as_str)
                        == Some("true")
                });
                let isolated = !policies.list(&Default::default()).await?.items.is_empty();
                Ok::<_, anyhow::Error>(labelled && isolated)
            }
        },
    )
    .await;
    let log = std::fs::read_to_string(work.join("operator.log")).unwrap_or_default();
    assert!(acted.is_ok(), "{acted:?}\noperator log:\n{log}");
    assert!(
        !log.contains("forbidden"),
        "the chart's RBAC refused the operator something:\n{log}"
    );

    // Without the client certificate: refused.
    let mut stranger = IntakeClient::new(
        &url,
        None,
        &TlsFiles {
            ca: Some(work.join("client-ca.crt")),
            ..Default::default()
        },
    )?;
    match post(&mut stranger, &shell_alert(apps.name(), &pods[0], &node)).await {
        Ok(answer) => assert_eq!(answer.status.as_u16(), 401, "{}", answer.body),
        Err(refused) => eprintln!("without a client certificate: {refused}"),
    }

    let (code, metrics) = http_get(&health, "/metrics").await.expect("metrics answer");
    assert_eq!(code, 200);
    for family in [
        "peregrine_alerts_accepted_total{priority=\"Notice\"} 1",
        "peregrine_api_writes_total{kind=\"AlertReport\",operation=\"create\",result=\"ok\"}",
        "peregrine_queue_incidents",
        "peregrine_leader",
    ] {
        assert!(
            metrics.contains(family),
            "/metrics lacks {family}:\n{metrics}"
        );
    }

    // Exactly the chart's RBAC: what it grants and what it refuses.
    let mut wrong = Vec::new();
    for a in DEFAULT_ACCESS {
        if can(&operator_client, apps.name(), a).await? != a.allowed {
            wrong.push(format!(
                "{}: {} {}/{} expected allowed={}",
                a.what, a.verb, a.resource, a.subresource, a.allowed
            ));
        }
    }
    let lease = access(
        "Lease in its own namespace",
        "coordination.k8s.io",
        "leases",
        "",
        "update",
        true,
    );
    if !can(&operator_client, ns.name(), &lease).await? {
        wrong.push("cannot update its Lease".into());
    }
    assert!(
        wrong.is_empty(),
        "the chart's RBAC is not as declared:\n{}",
        wrong.join("\n")
    );
    // And the API server itself refuses the real requests.
    let secrets: Api<Secret> = Api::namespaced(operator_client.clone(), ns.name());
    let refused = secrets.get(&format!("{fullname}-intake-tls")).await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 403),
        "{refused:?}"
    );
    let pods_api: Api<Pod> = Api::namespaced(operator_client.clone(), apps.name());
    let refused = pods_api.delete(&pods[0], &DeleteParams::default()).await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 403),
        "deletePod is off: {refused:?}"
    );

    let peak = child
        .id()
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM"))
                .map(str::to_string)
        });
    if let Some(hwm) = peak {
        eprintln!("operator peak memory: {hwm}");
    }
    child.start_kill()?;
    let _ = child.wait().await;

    // Uninstall: nothing of the release is left, the CRDs stay.
    ok(
        helm(cp).args(["uninstall", &release, "-n", ns.name(), "--wait"]),
        None,
    );
    let types = ok(
        kubectl(cp).args(["api-resources", "--verbs=list", "-o", "name"]),
        None,
    );
    let types: Vec<&str> = types
        .lines()
        .filter(|t| !t.starts_with("events") && !t.contains("componentstatuses"))
        .collect();
    let selector = format!("app.kubernetes.io/instance={release}");
    poll_until(
        "the release's objects are gone",
        Duration::from_secs(60),
        || {
            let left = ok(
                kubectl(cp).args(["get", &types.join(","), "-A", "-l", &selector, "-o", "name"]),
                None,
            );
            async move {
                if !left.trim().is_empty() {
                    eprintln!("still there:\n{left}");
                }
                Ok::<_, anyhow::Error>(left.trim().is_empty())
            }
        },
    )
    .await?;
    let crds = ok(kubectl(cp).args(["get", "crd", "-o", "name"]), None);
    for crd in [
        "alertreports",
        "remediationpolicies",
        "clusterremediationpolicies",
    ] {
        assert!(
            crds.contains(&format!("{crd}.peregrine.dev")),
            "CRD {crd} was removed"
        );
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
