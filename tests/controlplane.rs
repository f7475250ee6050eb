//! Integration tests against a real local control plane (etcd,
//! kube-apiserver, kube-controller-manager; see the `peregrine-testenv`
//! crate). Each test works in its own namespace.
//!
//! Needs the binaries: `make controlplane-build`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams,
};
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};
use peregrine_testenv::{
    ControlPlane, TestNamespace, bind_pod, create_node, mark_pod_running, poll_for, poll_until,
};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(60);

fn crds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crds")
}

fn alert_reports(client: &Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("peregrine.dev", "v1alpha1", "AlertReport");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "alertreports");
    Api::namespaced_with(client.clone(), ns, &resource)
}

fn alert_report(name: &str, priority: &str) -> Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "peregrine.dev/v1alpha1",
        "kind": "AlertReport",
        "metadata": { "name": name },
        "spec": {
            "rule": "Terminal shell in container",
            "priority": priority,
            "source": "syscall",
            "fingerprint": "0123456789abcdef",
            "event": { "output": "A shell was spawned in a container" },
        },
    }))?)
}

fn config_map(name: &str, owner: Option<&ConfigMap>) -> Result<ConfigMap> {
    let mut value = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": name },
        "data": { "key": "value" },
    });
    if let Some(owner) = owner {
        value["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "name": owner.name_any(),
            "uid": owner.uid().context("owner has no uid")?,
        }]);
    }
    Ok(serde_json::from_value(value)?)
}

fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

#[tokio::test]
async fn crds_install_and_become_established() -> Result<()> {
    let cp = ControlPlane::shared();
    let names = cp.install_crds(crds_dir()).await?;
    ensure!(
        names.iter().any(|n| n == "alertreports.peregrine.dev"),
        "alertreports.peregrine.dev not among the installed CRDs: {names:?}"
    );
    // Idempotent: a second install changes nothing and succeeds.
    let again = cp.install_crds(crds_dir()).await?;
    assert_eq!(names, again);

    let client = cp.client().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    for name in &names {
        let crd = crds.get(name).await?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        ensure!(established, "CRD {name} is not Established");
    }
    let alert_reports = crds.get("alertreports.peregrine.dev").await?;
    assert_eq!(alert_reports.spec.scope, "Namespaced");
    assert!(
        alert_reports
            .spec
            .versions
            .iter()
            .any(|v| v.name == "v1alpha1" && v.served)
    );
    Ok(())
}

#[tokio::test]
async fn the_server_rejects_an_alert_report_that_violates_the_schema() -> Result<()> {
    let cp = ControlPlane::shared();
    cp.install_crds(crds_dir()).await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "schema").await?;
    let reports = alert_reports(&client, ns.name());

    let valid = reports
        .create(&PostParams::default(), &alert_report("valid", "Warning")?)
        .await
        .context("a valid AlertReport must be accepted")?;
    assert_eq!(valid.data["spec"]["priority"], "Warning");

    let err = reports
        .create(&PostParams::default(), &alert_report("bogus", "Bogus")?)
        .await
        .expect_err("priority Bogus must be rejected");
    let kube::Error::Api(status) = &err else {
        bail!("expected an API error, got {err}");
    };
    assert_eq!(status.code, 422, "{status:?}");
    assert!(status.is_invalid(), "{status:?}");
    assert!(
        status.message.contains("spec.priority") && status.message.contains("Bogus"),
        "the server's message should name the field and the value: {}",
        status.message
    );

    let mut missing_rule = alert_report("norule", "Alert")?;
    if let Some(spec) = missing_rule.data["spec"].as_object_mut() {
        spec.remove("rule");
    }
    let err = reports
        .create(&PostParams::default(), &missing_rule)
        .await
        .expect_err("a missing spec.rule must be rejected");
    let kube::Error::Api(status) = &err else {
        bail!("expected an API error, got {err}");
    };
    assert!(
        status.message.contains("spec.rule") && status.message.contains("Required"),
        "{}",
        status.message
    );
    Ok(())
}

#[tokio::test]
async fn a_watch_sees_an_object_being_created() -> Result<()> {
    let cp = ControlPlane::shared();
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "watch").await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());

    let mut events = watcher(config_maps.clone(), watcher::Config::default()).boxed();
    let watched = async {
        let mut created = false;
        while let Some(event) = events.next().await {
            match event? {
                watcher::Event::InitDone if !created => {
                    config_maps
                        .create(&PostParams::default(), &config_map("watched", None)?)
                        .await?;
                    created = true;
                }
                watcher::Event::Apply(cm) if cm.name_any() == "watched" => {
                    assert_eq!(cm.data.unwrap_or_default()["key"], "value");
                    return Ok(());
                }
                _ => {}
            }
        }
        bail!("the watch ended before the object was seen")
    };
    tokio::time::timeout(DEADLINE, watched)
        .await
        .context("the watch did not see the new ConfigMap in time")?
}

#[tokio::test]
async fn deleting_an_owner_garbage_collects_what_it_owns() -> Result<()> {
    let cp = ControlPlane::shared();
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "gc").await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client, ns.name());

    let owner = config_maps
        .create(&PostParams::default(), &config_map("owner", None)?)
        .await?;
    config_maps
        .create(&PostParams::default(), &config_map("owned", Some(&owner))?)
        .await?;
    config_maps
        .delete("owner", &DeleteParams::background())
        .await?;

    poll_until(
        "the owned ConfigMap to be garbage-collected",
        DEADLINE,
        || async { Ok::<_, anyhow::Error>(config_maps.get_opt("owned").await?.is_none()) },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_service_account_needs_rbac_to_list_pods() -> Result<()> {
    let cp = ControlPlane::shared();
    let admin = cp.client().await?;
    let ns = TestNamespace::create(&admin, "rbac").await?;
    let sa = cp.service_account_client(ns.name(), "reader").await?;
    let pods: Api<Pod> = Api::namespaced(sa, ns.name());

    let err = pods
        .list(&ListParams::default())
        .await
        .expect_err("a ServiceAccount without RBAC must not list pods");
    assert_eq!(status_code(&err), Some(403), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("system:serviceaccount:{}:reader", ns.name())),
        "the server should name the ServiceAccount: {err}"
    );

    let role: Role = serde_json::from_value(json!({
        "metadata": { "name": "pod-reader" },
        "rules": [{ "apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"] }],
    }))?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "reader-reads-pods" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader" },
        "subjects": [{ "kind": "ServiceAccount", "name": "reader", "namespace": ns.name() }],
    }))?;
    Api::<Role>::namespaced(admin.clone(), ns.name())
        .create(&PostParams::default(), &role)
        .await?;
    Api::<RoleBinding>::namespaced(admin.clone(), ns.name())
        .create(&PostParams::default(), &binding)
        .await?;

    poll_until(
        "the RoleBinding to allow listing pods",
        DEADLINE,
        || async {
            match pods.list(&ListParams::default()).await {
                Ok(_) => Ok(true),
                Err(e) if status_code(&e) == Some(403) => Ok(false),
                Err(e) => Err(anyhow::Error::from(e).context("listing pods as the ServiceAccount")),
            }
        },
    )
    .await?;
    // Still nothing beyond the Role: no access to other namespaces.
    let elsewhere: Api<Pod> = Api::namespaced(
        cp.service_account_client(ns.name(), "reader").await?,
        "default",
    );
    let err = elsewhere
        .list(&ListParams::default())
        .await
        .expect_err("no access outside the namespace");
    assert_eq!(status_code(&err), Some(403), "{err}");
    Ok(())
}

#[tokio::test]
async fn kubectl_reports_the_pinned_server_version() -> Result<()> {
    let cp = ControlPlane::shared();
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_string());
    let kubeconfig = cp.kubeconfig_path().to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&kubectl)
            .args(["version", "-o", "json", "--kubeconfig"])
            .arg(&kubeconfig)
            .output()
            .with_context(|| format!("running {kubectl} (set KUBECTL to its path)"))
    })
    .await??;
    ensure!(
        output.status.success(),
        "kubectl version failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let version: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(
        version["serverVersion"]["gitVersion"], "v1.37.2",
        "{version}"
    );
    assert_eq!(version["serverVersion"]["minor"], "37", "{version}");
    Ok(())
}

#[tokio::test]
async fn helm_talks_to_the_server() -> Result<()> {
    let cp = ControlPlane::shared();
    let helm = peregrine_testenv::repo_root().join("target/controlplane/bin/helm");
    let bin = std::env::var_os(peregrine_testenv::BIN_ENV).map(|d| PathBuf::from(d).join("helm"));
    let helm = bin.unwrap_or(helm);
    let kubeconfig = cp.kubeconfig_path().to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&helm)
            .args([
                "list",
                "--all-namespaces",
                "--output",
                "json",
                "--kubeconfig",
            ])
            .arg(&kubeconfig)
            .output()
            .with_context(|| format!("running {}", helm.display()))
    })
    .await??;
    ensure!(
        output.status.success(),
        "helm list failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let releases: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert!(releases.is_array(), "{releases}");
    Ok(())
}

#[tokio::test]
async fn a_deployment_gets_a_replicaset_and_a_pod_from_the_controller_manager() -> Result<()> {
    let cp = ControlPlane::shared();
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "deploy").await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns.name());
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), ns.name());
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());

    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "web", "image": "registry.test/web:1.0" }] },
            },
        },
    }))?;
    let deployment = deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    let deployment_uid = deployment.uid().context("no uid")?;

    let owned_by = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
                    uid: &str| {
        meta.owner_references
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|o| o.uid == uid && o.controller == Some(true))
    };

    let rs_uid = poll_for("a ReplicaSet owned by the Deployment", DEADLINE, || async {
        let list = replica_sets.list(&ListParams::default()).await?;
        let owned = list
            .items
            .iter()
            .find(|rs| owned_by(&rs.metadata, &deployment_uid));
        Ok::<_, anyhow::Error>(owned.and_then(|rs| rs.uid()))
    })
    .await?;
    let pod_name = poll_for("a Pod owned by the ReplicaSet", DEADLINE, || async {
        let list = pods.list(&ListParams::default()).await?;
        let owned = list.items.iter().find(|p| owned_by(&p.metadata, &rs_uid));
        Ok::<_, anyhow::Error>(owned.map(|p| p.name_any()))
    })
    .await?;

    // No scheduler and no kubelet: bind the Pod and report it running by hand,
    // after which the controllers see the Deployment available.
    let node_name = format!("node-{}", ns.name());
    let node = create_node(&client, &node_name).await?;
    let ready = node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    ensure!(ready, "the Node should report Ready");
    bind_pod(&client, ns.name(), &pod_name, &node_name).await?;
    let pod = mark_pod_running(&client, ns.name(), &pod_name).await?;
    let spec = pod.spec.clone().unwrap_or_default();
    assert_eq!(spec.node_name.as_deref(), Some(node_name.as_str()));
    let status = pod.status.clone().unwrap_or_default();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    let container_id = status.container_statuses.unwrap_or_default()[0]
        .container_id
        .clone()
        .unwrap_or_default();
    let hex = container_id
        .strip_prefix("containerd://")
        .unwrap_or_default();
    assert!(
        hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "{container_id}"
    );

    poll_until(
        "the Deployment to report 1 available replica",
        DEADLINE,
        || async {
            let d = deployments.get("web").await?;
            Ok::<_, anyhow::Error>(d.status.and_then(|s| s.available_replicas) == Some(1))
        },
    )
    .await?;

    Api::<Node>::all(client)
        .delete(&node_name, &DeleteParams::default())
        .await?;
    Ok(())
}
