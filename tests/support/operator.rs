//! Running the operator against the test control plane, and posting alerts to it.
#![allow(dead_code)]

use anyhow::Context as _;
use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use peregrine::cli::RunArgs;
use peregrine::crd::AlertReport;
use peregrine::operator::Running;
use peregrine::replay::{Answer, IntakeClient, TlsFiles};
use peregrine_testenv::{ControlPlane, poll_for, repo_root, unique_name};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct TestCli {
    #[command(flatten)]
    run: RunArgs,
}

/// Builds `RunArgs` as the command line would.
pub fn run_args(args: &[&str]) -> RunArgs {
    let mut argv = vec!["peregrine"];
    argv.extend_from_slice(args);
    TestCli::parse_from(argv).run
}

/// The control plane of this test binary, with the CRDs installed.
pub async fn control_plane() -> anyhow::Result<&'static ControlPlane> {
    peregrine::telemetry::init(peregrine::cli::LogFormat::Text);
    let cp = ControlPlane::shared();
    install_crds(&cp.client().await?).await?;
    Ok(cp)
}

/// Applies the CRDs as the Rust types define them (what `peregrine crd`
/// prints; tests/crd_drift.rs keeps crds/ equal to it) and waits until
/// they are Established.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Patch, PatchParams};
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in peregrine::crd::all() {
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply("peregrine-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("applying CRD {name}"))?;
        let api = api.clone();
        peregrine_testenv::poll_until(
            &format!("CRD {name} Established"),
            Duration::from_secs(30),
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let crd = api.get(&name).await?;
                    Ok::<_, anyhow::Error>(crd.status.and_then(|s| s.conditions).is_some_and(|c| {
                        c.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    }))
                }
            },
        )
        .await?;
    }
    Ok(())
}

/// A token file with one fresh token, removed on drop.
pub struct TokenFile {
    pub path: PathBuf,
    pub token: String,
}

impl TokenFile {
    pub fn new() -> TokenFile {
        let token = unique_name("token");
        let path = std::env::temp_dir().join(format!("peregrine-test-{}", unique_name("tokens")));
        std::fs::write(&path, format!("# test\n{token}\n")).expect("write token file");
        TokenFile { path, token }
    }

    pub fn arg(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// An operator running in this process, stopped on [`Operator::stop`].
pub struct Operator {
    pub intake: SocketAddr,
    pub health: SocketAddr,
    pub namespace: String,
    shutdown: CancellationToken,
    running: Option<Running>,
}

impl Operator {
    /// Starts the operator with its intake and health on free ports and its
    /// namespace `namespace`; `extra` are more flags.
    pub async fn start(
        cp: &ControlPlane,
        namespace: &str,
        extra: &[&str],
    ) -> anyhow::Result<Operator> {
        Operator::start_with(cp.client().await?, namespace, extra).await
    }

    /// Like [`Operator::start`], with the operator talking through `client`.
    pub async fn start_with(
        client: Client,
        namespace: &str,
        extra: &[&str],
    ) -> anyhow::Result<Operator> {
        let mut args = vec![
            "--intake-addr",
            "127.0.0.1:0",
            "--health-addr",
            "127.0.0.1:0",
            "--namespace",
            namespace,
        ];
        if !extra.contains(&"--flush-interval") {
            args.extend_from_slice(&["--flush-interval", "300ms"]);
        }
        args.extend_from_slice(extra);
        let shutdown = CancellationToken::new();
        let running = peregrine::operator::start(
            client,
            run_args(&args),
            peregrine::intake::queue::protect_critical(),
            shutdown.clone(),
        )
        .await
        .context("starting the operator")?;
        Ok(Operator {
            intake: running.intake_addr,
            health: running.health_addr,
            namespace: namespace.to_string(),
            shutdown,
            running: Some(running),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1/falco", self.intake)
    }

    pub fn client(&self, token: Option<&str>) -> IntakeClient {
        IntakeClient::new(&self.url(), token.map(str::to_string), &TlsFiles::default())
            .expect("intake client")
    }

    /// Stops like SIGTERM: drains and writes what was accepted.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            running.wait().await?;
        }
        Ok(())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A real-shaped syscall alert (Falco 0.41, `Terminal shell in container`)
/// about `pod` in `namespace` on `node`.
pub fn shell_alert(namespace: &str, pod: &str, node: &str) -> Value {
    let mut alert: Value = serde_json::from_slice(
        &std::fs::read(repo_root().join("tests/payloads/shell-in-container-0.41.json"))
            .expect("fixture"),
    )
    .expect("fixture is JSON");
    alert["hostname"] = json!(node);
    alert["time"] = json!(jiff::Timestamp::now().to_string());
    let fields = &mut alert["output_fields"];
    fields["k8s.ns.name"] = json!(namespace);
    fields["k8s.pod.name"] = json!(pod);
    alert
}

/// A host-level alert (`Write below etc`, container.id `host`) on `node`.
pub fn host_alert(node: &str) -> Value {
    json!({
        "hostname": node,
        "output": "2026-12-01T10:00:00.000000000+0000: Error File below /etc opened for writing | file=/etc/passwd pcmdline=bash gparent=sshd evt_type=openat user=root user_uid=0 user_loginuid=0 process=vi proc_exepath=/usr/bin/vi parent=bash command=vi /etc/passwd terminal=34816 container_id=host container_name=host",
        "output_fields": {
            "container.id": "host", "container.name": "host",
            "evt.time": 1764583200000000000_i64, "evt.type": "openat",
            "fd.name": "/etc/passwd", "k8s.ns.name": null, "k8s.pod.name": null,
            "proc.aname[2]": "sshd", "proc.cmdline": "vi /etc/passwd", "proc.exepath": "/usr/bin/vi",
            "proc.name": "vi", "proc.pcmdline": "bash", "proc.pname": "bash", "proc.tty": 34816,
            "user.loginuid": 0, "user.name": "root", "user.uid": 0
        },
        "priority": "Error",
        "rule": "Write below etc",
        "source": "syscall",
        "tags": ["T1098", "container", "filesystem", "host", "maturity_sandbox", "mitre_persistence"],
        "time": jiff::Timestamp::now().to_string(),
    })
}

pub async fn post(client: &mut IntakeClient, alert: &Value) -> anyhow::Result<Answer> {
    Ok(client.post_alert(serde_json::to_vec(alert)?).await?)
}

/// The reports of a namespace.
pub async fn reports(client: &Client, namespace: &str) -> anyhow::Result<Vec<AlertReport>> {
    let api: Api<AlertReport> = Api::namespaced(client.clone(), namespace);
    Ok(api.list(&ListParams::default()).await?.items)
}

pub fn count(report: &AlertReport) -> u64 {
    report
        .status
        .as_ref()
        .and_then(|s| s.occurrences.as_ref())
        .map_or(0, |o| o.count)
}

/// Waits until the reports of `namespace` satisfy `done`, and returns them.
pub async fn wait_for_reports(
    client: &Client,
    namespace: &str,
    what: &str,
    done: impl Fn(&[AlertReport]) -> bool,
) -> anyhow::Result<Vec<AlertReport>> {
    poll_for(what, Duration::from_secs(60), || async {
        let found = reports(client, namespace).await?;
        Ok::<_, anyhow::Error>(done(&found).then_some(found))
    })
    .await
}

/// Creates Deployment `name` with `replicas` pods (made by
/// kube-controller-manager; no scheduler runs, so they stay Pending) and
/// returns the pod names.
pub async fn deployment(
    client: &Client,
    namespace: &str,
    name: &str,
    replicas: i32,
) -> anyhow::Result<Vec<String>> {
    let api: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), namespace);
    let deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "serviceAccountName": "default",
                    "containers": [{
                        "name": "web", "image": "registry.example.com/shop/web:1.4.2",
                        "securityContext": {"privileged": true, "capabilities": {"add": ["SYS_ADMIN"]}}
                    }]
                }
            }
        }
    }))?;
    api.create(&Default::default(), &deployment).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!("app={name}");
    poll_for(
        &format!("{replicas} pods of Deployment {name}"),
        Duration::from_secs(60),
        || async {
            let list = pods.list(&ListParams::default().labels(&selector)).await?;
            let names: Vec<String> = list.items.iter().map(|p| p.name_any()).collect();
            Ok::<_, anyhow::Error>((names.len() == replicas as usize).then_some(names))
        },
    )
    .await
}

/// Counts the write requests (POST, PUT, PATCH, APPLY) on alertreports the
/// API server has served, from its own `apiserver_request_total`.
pub async fn apiserver_alertreport_writes(client: &Client) -> anyhow::Result<u64> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await?;
    let mut total = 0;
    for line in text.lines() {
        if !line.starts_with("apiserver_request_total{")
            || !line.contains("resource=\"alertreports\"")
        {
            continue;
        }
        let verb = line
            .split("verb=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default();
        if matches!(verb, "POST" | "PUT" | "PATCH" | "APPLY") {
            let value: f64 = line
                .rsplit(' ')
                .next()
                .unwrap_or("0")
                .parse()
                .unwrap_or(0.0);
            total += value as u64;
        }
    }
    Ok(total)
}

/// `GET /metrics` of an operator.
pub async fn metrics_of(operator: &Operator) -> anyhow::Result<String> {
    let mut c = IntakeClient::new(
        &format!("http://{}/metrics", operator.health),
        None,
        &TlsFiles::default(),
    )?;
    Ok(c.send(http::Method::GET, None, bytes::Bytes::new())
        .await?
        .body)
}
