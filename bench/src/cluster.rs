//! The control plane side: CRDs, workloads, policies, and what the API
//! server and etcd say afterwards.

use crate::alerts::{POLICY_RULE, PodRef, Rng, Workloads};
use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use peregrine::crd::AlertReport;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

const MANAGER: &str = "peregrine-bench";

/// Applies the CRDs `peregrine crd` prints and waits until they are Established.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in peregrine::crd::all() {
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("applying CRD {name}"))?;
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

/// Deletes namespaces (and so their reports); waits until they are gone
/// when `wait`, so the operator's caches start from the same state.
pub async fn delete_namespaces(
    client: &Client,
    names: &[String],
    wait: bool,
) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    for name in names {
        // Pods bound to a Node wait for a kubelet to confirm their deletion;
        // there is none here.
        let pods: Api<Pod> = Api::namespaced(client.clone(), name);
        let now = kube::api::DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        let _ = pods.delete_collection(&now, &ListParams::default()).await;
        match api.delete(name, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => return Err(e).with_context(|| format!("deleting namespace {name}")),
        }
    }
    if wait {
        for name in names {
            peregrine_testenv::poll_until(
                &format!("namespace {name} deleted"),
                Duration::from_secs(120),
                || async { Ok::<_, anyhow::Error>(api.get_opt(name).await?.is_none()) },
            )
            .await?;
        }
    }
    Ok(())
}

/// Namespaces an earlier run left behind.
pub async fn leftover_namespaces(client: &Client) -> anyhow::Result<Vec<String>> {
    let api: Api<Namespace> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default().labels("app.kubernetes.io/part-of=peregrine-bench"))
        .await?;
    Ok(list.items.iter().map(|n| n.name_any()).collect())
}

async fn namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name,
        "labels": {"app.kubernetes.io/part-of": "peregrine-bench"}}
    }))?;
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&ns),
    )
    .await
    .with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}

async fn deployment(client: &Client, ns: &str, name: &str, replicas: i32) -> anyhow::Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": format!("registry.example.com/bench/{name}:1.0")}]}
            }
        }
    }))?;
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&d),
    )
    .await
    .with_context(|| format!("creating Deployment {ns}/{name}"))?;
    Ok(())
}

/// The simulated node names: `bench-node-0000`...
pub fn node_name(i: usize) -> String {
    format!("bench-node-{i:04}")
}

/// Namespaces and workloads of one profile: noisy, ordinary and target
/// Deployments; the target pods bound to real Nodes and running, so a
/// remediation policy can verify and act on them.
pub async fn workloads(client: &Client, ns: &str, system_ns: &str) -> anyhow::Result<Workloads> {
    namespace(client, ns).await?;
    namespace(client, system_ns).await?;
    let groups: [(&str, usize, i32); 3] = [("noisy", 3, 2), ("app", 5, 2), ("target", 5, 1)];
    let mut expected = 0;
    for (prefix, n, replicas) in groups {
        for i in 0..n {
            deployment(client, ns, &format!("{prefix}-{i}"), replicas).await?;
            expected += replicas as usize;
        }
    }
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pods = peregrine_testenv::poll_for(
        &format!("{expected} pods in {ns}"),
        Duration::from_secs(120),
        || async {
            let list = pods_api.list(&ListParams::default()).await?;
            Ok::<_, anyhow::Error>((list.items.len() >= expected).then_some(list.items))
        },
    )
    .await?;
    let mut rng = Rng::seeded();
    let mut by_app: BTreeMap<String, Vec<PodRef>> = BTreeMap::new();
    for pod in &pods {
        let app = pod.labels().get("app").cloned().unwrap_or_default();
        by_app.entry(app).or_default().push(PodRef {
            namespace: ns.to_string(),
            name: pod.name_any(),
            container_id: rng.hex12(),
            node: None,
        });
    }
    let group = |prefix: &str, n: usize| -> Vec<Vec<PodRef>> {
        (0..n)
            .filter_map(|i| by_app.get(&format!("{prefix}-{i}")).cloned())
            .collect()
    };
    let noisy = group("noisy", 3);
    let apps = group("app", 5);
    let mut targets = Vec::new();
    for (i, mut pod) in group("target", 5).into_iter().flatten().enumerate() {
        let node = node_name(i);
        peregrine_testenv::create_node(client, &node).await?;
        peregrine_testenv::bind_pod(client, ns, &pod.name, &node).await?;
        let running = peregrine_testenv::mark_pod_running(client, ns, &pod.name).await?;
        let id = running
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|c| c.into_iter().next())
            .and_then(|c| c.container_id)
            .unwrap_or_default();
        let hex = id.rsplit("://").next().unwrap_or_default();
        pod.container_id = hex.chars().take(12).collect();
        pod.node = Some(node);
        targets.push(pod);
    }
    Ok(Workloads {
        noisy,
        apps,
        targets,
        host_nodes: (0..5).map(node_name).collect(),
    })
}

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("peregrine.dev", "v1alpha1", kind),
        plural,
    )
}

/// Creates a RemediationPolicy (Label and Isolate, Enforce) for the policy
/// rule in `ns`, and waits for a policy controller to call it Ready.
/// `Ok(false)`: no controller answered (remediation is not in this build).
pub async fn policy(client: &Client, ns: &str, wait: Duration) -> anyhow::Result<bool> {
    let ar = resource("RemediationPolicy", "remediationpolicies");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let object = json!({
        "apiVersion": "peregrine.dev/v1alpha1", "kind": "RemediationPolicy",
        "metadata": {"name": "bench-quarantine"},
        "spec": {
            "mode": "Enforce",
            "match": {"rules": [POLICY_RULE]},
            "actions": [
                {"type": "Label", "labels": {"peregrine.dev/quarantine": "true"}},
                {"type": "Isolate", "ingress": true, "egress": true}
            ]
        }
    });
    let object: DynamicObject = serde_json::from_value(object)?;
    api.patch(
        "bench-quarantine",
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&object),
    )
    .await
    .context("creating the RemediationPolicy")?;
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        let p = api.get("bench-quarantine").await?;
        let ready = p
            .data
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
        if ready {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(false)
}

/// `apiserver_request_total` summed by (verb, resource[/subresource]).
pub async fn apiserver_requests(
    client: &Client,
) -> anyhow::Result<BTreeMap<(String, String), f64>> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_default()
                .to_string()
        };
        let mut resource = label("resource");
        let sub = label("subresource");
        if !sub.is_empty() {
            resource = format!("{resource}/{sub}");
        }
        let v: f64 = value.trim().parse().unwrap_or(0.0);
        *out.entry((label("verb"), resource)).or_default() += v;
    }
    Ok(out)
}

/// What the reports of a profile hold.
#[derive(Debug, Default)]
pub struct ReportFigures {
    pub reports: u64,
    pub occurrences: u64,
    /// Sum of the objects' JSON sizes: how etcd stores custom resources.
    pub bytes: u64,
}

/// Counts the reports of `namespaces`.
pub async fn reports(client: &Client, namespaces: &[String]) -> anyhow::Result<ReportFigures> {
    let mut f = ReportFigures::default();
    for ns in namespaces {
        let request = http::Request::get(format!(
            "/apis/peregrine.dev/v1alpha1/namespaces/{ns}/alertreports"
        ))
        .body(Vec::new())?;
        let list: Value = serde_json::from_str(&client.request_text(request).await?)?;
        for item in list["items"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            f.reports += 1;
            f.occurrences += item
                .pointer("/status/occurrences/count")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            f.bytes += serde_json::to_vec(item).map_or(0, |v| v.len() as u64);
        }
    }
    Ok(f)
}

/// When each object was first seen by a watch.
pub type Seen = Arc<Mutex<HashMap<String, Instant>>>;

fn mark(seen: &Seen, key: String) {
    let mut map = seen.lock().unwrap_or_else(|p| p.into_inner());
    map.entry(key).or_insert_with(Instant::now);
}

/// Watches AlertReports in `ns` and `system_ns`; records when each
/// `namespace/name` first appeared.
pub fn watch_reports(client: &Client, namespaces: &[String]) -> Seen {
    let seen: Seen = Arc::default();
    for ns in namespaces {
        let api: Api<PartialObjectMeta<AlertReport>> = Api::namespaced(client.clone(), ns);
        let seen = seen.clone();
        let ns = ns.clone();
        tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(item) = stream.next().await {
                if let Ok(meta) = item {
                    mark(&seen, format!("{ns}/{}", meta.name_any()));
                }
            }
        });
    }
    seen
}

/// Watches the actions of the policy in `ns`: the quarantine label on a pod
/// (keyed `label/<pod>`) and NetworkPolicies owned by a report (keyed
/// `isolate/<namespace>/<report>`).
pub fn watch_actions(client: &Client, ns: &str) -> Seen {
    let seen: Seen = Arc::default();
    let pods: Api<PartialObjectMeta<Pod>> = Api::namespaced(client.clone(), ns);
    let s = seen.clone();
    tokio::spawn(async move {
        let mut stream = watcher(pods, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(item) = stream.next().await {
            if let Ok(meta) = item
                && meta.labels().contains_key("peregrine.dev/quarantine")
            {
                mark(&s, format!("label/{}", meta.name_any()));
            }
        }
    });
    let nps: Api<PartialObjectMeta<NetworkPolicy>> = Api::namespaced(client.clone(), ns);
    let s = seen.clone();
    let ns = ns.to_string();
    tokio::spawn(async move {
        let mut stream = watcher(nps, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(item) = stream.next().await {
            if let Ok(meta) = item {
                for owner in meta.owner_references() {
                    if owner.kind == "AlertReport" {
                        mark(&s, format!("isolate/{ns}/{}", owner.name));
                    }
                }
            }
        }
    });
    seen
}
