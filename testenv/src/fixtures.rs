//! Test fixtures: unique namespaces, and doing by hand what a kubelet and
//! a scheduler would do (there is neither in the test control plane).

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Binding, Namespace, Node, ObjectReference, Pod, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::controlplane::FIELD_MANAGER;
use crate::error::{Error, Result, kube as kube_err};

/// A fresh namespace with a unique name, for one test.
///
/// Namespaces are *not* deleted on drop: deleting needs an async call that a
/// destructor cannot make, and the control plane is thrown away with the test
/// process anyway. A namespace of a failed test stays around for inspection
/// (see `PEREGRINE_TESTENV_KEEP`). Call [`TestNamespace::delete`] to delete
/// it explicitly.
#[derive(Debug, Clone)]
pub struct TestNamespace {
    name: String,
}

impl TestNamespace {
    /// Creates namespace `<prefix>-<random suffix>` and waits until its
    /// `default` ServiceAccount exists (created by kube-controller-manager),
    /// so Pods can be created in it right away.
    pub async fn create(client: &Client, prefix: &str) -> Result<TestNamespace> {
        let name = unique_name(prefix);
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(
                    [(
                        "peregrine.dev/test-namespace".to_string(),
                        "true".to_string(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .map_err(kube_err(format!("creating test namespace {name}")))?;
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        poll_until(
            &format!(
                "the default ServiceAccount of namespace {name} (made by kube-controller-manager)"
            ),
            Duration::from_secs(30),
            || async { Ok::<_, Error>(accounts.get_opt("default").await.ok().flatten().is_some()) },
        )
        .await?;
        Ok(TestNamespace { name })
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Deletes the namespace (kube-controller-manager then deletes its content).
    pub async fn delete(self, client: &Client) -> Result<()> {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        match namespaces
            .delete(&self.name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
            Err(e) => Err(kube_err(format!("deleting namespace {}", self.name))(e)),
        }
    }
}

impl std::fmt::Display for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// `<prefix>-<8 hex>`, trimmed to a valid DNS label.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u32(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    let suffix = format!("{:08x}", h.finish() as u32);
    let mut prefix: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63 - 9)
        .collect();
    while prefix.ends_with('-') {
        prefix.pop();
    }
    if prefix.is_empty() {
        format!("t-{suffix}")
    } else {
        format!("{prefix}-{suffix}")
    }
}

/// 64 random hex digits, like a container id.
pub fn random_hex64() -> String {
    (0..4)
        .map(|i: u64| {
            let mut h = std::hash::RandomState::new().build_hasher();
            h.write_u64(i);
            format!("{:016x}", h.finish())
        })
        .collect()
}

/// Polls `check` every 100 ms until it returns `Ok(true)`, an error, or the
/// deadline passes (then [`Error::Timeout`] naming `what`). Any error type
/// that a [`Error`] converts into works, such as `anyhow::Error`.
pub async fn poll_until<F, Fut, E>(what: &str, timeout: Duration, mut check: F) -> Result<(), E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, E>>,
    E: From<Error>,
{
    poll_for(what, timeout, || {
        let fut = check();
        async move { Ok(fut.await?.then_some(())) }
    })
    .await
}

/// Like [`poll_until`], but `check` returns `Ok(Some(value))` when done, and
/// the value is returned.
pub async fn poll_for<T, F, Fut, E>(what: &str, timeout: Duration, mut check: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
    E: From<Error>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: what.to_string(),
                secs: timeout.as_secs(),
            }
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates (or updates) a Node and reports it Ready through its status
/// subresource, as its kubelet would.
pub async fn create_node(client: &Client, name: &str) -> Result<Node> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        },
    }))
    .map_err(|e| Error::Manifest(format!("building Node {name}: {e}")))?;
    nodes
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&node),
        )
        .await
        .map_err(kube_err(format!("creating Node {name}")))?;
    let now = Time(now());
    let status = json!({
        "status": {
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "kubelet is posting ready status",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }],
            "addresses": [
                { "type": "InternalIP", "address": "127.0.0.1" },
                { "type": "Hostname", "address": name },
            ],
            "capacity": { "cpu": "4", "memory": "8Gi", "pods": "110" },
            "allocatable": { "cpu": "4", "memory": "8Gi", "pods": "110" },
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": "",
                "containerRuntimeVersion": "containerd://2.0.0",
                "kernelVersion": "",
                "kubeProxyVersion": "",
                "kubeletVersion": "v1.37.2",
                "machineID": "",
                "operatingSystem": "linux",
                "osImage": "peregrine-testenv",
                "systemUUID": "",
            },
        }
    });
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(kube_err(format!("setting the status of Node {name}")))
}

/// Binds a Pod to a Node, as the scheduler would (`pods/binding`).
pub async fn bind_pod(client: &Client, namespace: &str, pod: &str, node: &str) -> Result<()> {
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(pod.to_string()),
            namespace: Some(namespace.to_string()),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_string()),
            ..Default::default()
        },
    };
    let body = serde_json::to_vec(&binding)
        .map_err(|e| Error::Manifest(format!("encoding the binding of {namespace}/{pod}: {e}")))?;
    let request = http::Request::post(format!("/api/v1/namespaces/{namespace}/pods/{pod}/binding"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(|e| {
            Error::Manifest(format!(
                "building the binding request of {namespace}/{pod}: {e}"
            ))
        })?;
    client
        .request_text(request)
        .await
        .map_err(kube_err(format!(
            "binding Pod {namespace}/{pod} to Node {node}"
        )))?;
    Ok(())
}

/// Reports a Pod Running and Ready through its status subresource, as a
/// kubelet would: phase `Running`, conditions `PodScheduled`, `Initialized`,
/// `ContainersReady` and `Ready` true, and a running `containerStatuses`
/// entry per container with a `containerd://<64 hex>` container id.
/// Returns the updated Pod.
pub async fn mark_pod_running(client: &Client, namespace: &str, name: &str) -> Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = pods
        .get(name)
        .await
        .map_err(kube_err(format!("reading Pod {namespace}/{name}")))?;
    let now = Time(now());
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let statuses: Vec<_> = containers
        .iter()
        .map(|c| {
            let image = c.image.clone().unwrap_or_default();
            json!({
                "name": c.name,
                "image": image,
                "imageID": format!("{image}@sha256:{}", random_hex64()),
                "containerID": format!("containerd://{}", random_hex64()),
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": { "running": { "startedAt": now } },
            })
        })
        .collect();
    let condition = |t: &str| json!({ "type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": now });
    let status = json!({
        "status": {
            "phase": "Running",
            "conditions": [
                condition("PodReadyToStartContainers"),
                condition("Initialized"),
                condition("Ready"),
                condition("ContainersReady"),
                condition("PodScheduled"),
            ],
            "hostIP": "127.0.0.1",
            "hostIPs": [{ "ip": "127.0.0.1" }],
            "podIP": "10.244.0.10",
            "podIPs": [{ "ip": "10.244.0.10" }],
            "startTime": now,
            "containerStatuses": statuses,
        }
    });
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(kube_err(format!(
            "setting the status of Pod {namespace}/{name}"
        )))
}

fn now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_valid_dns_labels_and_differ() {
        let a = unique_name("Some_Test::name");
        let b = unique_name("Some_Test::name");
        assert_ne!(a, b);
        assert!(a.starts_with("some-test--name-"), "{a}");
        let long = unique_name(&"x".repeat(100));
        assert!(long.len() <= 63, "{long}");
        assert!(unique_name("--").starts_with("t-"));
        for name in [a, long] {
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            );
        }
    }

    #[test]
    fn container_ids_are_64_hex_digits() {
        let id = random_hex64();
        assert_eq!(id.len(), 64);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(id, random_hex64());
    }
}
