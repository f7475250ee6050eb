//! The analysis weighs a pod reachable from outside the cluster higher, using
//! the cluster's own Services and Ingresses.

#[path = "support/operator.rs"]
mod support;

use k8s_openapi::api::core::v1::Service;
use kube::Api;
use peregrine_testenv::TestNamespace;
use serde_json::json;
use support::*;

fn risk_factors(report: &peregrine::crd::AlertReport) -> Vec<String> {
    report
        .status
        .as_ref()
        .and_then(|s| s.analysis.as_ref())
        .map(|a| a.risk_factors.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_pod_behind_a_load_balancer_is_analysed_as_reachable_from_outside() -> anyhow::Result<()>
{
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "exposure").await?;
    let web = deployment(&client, ns.name(), "web", 1).await?;
    let internal = deployment(&client, ns.name(), "batch", 1).await?;
    let services: Api<Service> = Api::namespaced(client.clone(), ns.name());
    services
        .create(
            &Default::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                "spec": {"type": "LoadBalancer", "selector": {"app": "web"}, "ports": [{"port": 80}]}
            }))?,
        )
        .await?;
    services
        .create(
            &Default::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": "batch"},
                "spec": {"type": "ClusterIP", "selector": {"app": "batch"}, "ports": [{"port": 80}]}
            }))?,
        )
        .await?;

    let tokens = TokenFile::new();
    let operator = Operator::start(cp, ns.name(), &["--intake-token-file", &tokens.arg()]).await?;
    let mut intake = operator.client(Some(&tokens.token));
    for pod in [&web[0], &internal[0]] {
        let answer = post(&mut intake, &shell_alert(ns.name(), pod, "worker-1")).await?;
        assert_eq!(answer.status.as_u16(), 202, "{}", answer.body);
    }
    let found = wait_for_reports(&client, ns.name(), "two analysed reports", |r| {
        r.len() == 2
            && r.iter()
                .all(|r| r.status.as_ref().is_some_and(|s| s.analysis.is_some()))
    })
    .await?;
    let by_workload = |name: &str| {
        found
            .iter()
            .find(|r| {
                r.spec
                    .subject
                    .workload
                    .as_ref()
                    .is_some_and(|w| w.name == name)
            })
            .map(risk_factors)
            .unwrap_or_default()
    };
    let exposed = |factors: &[String]| factors.iter().any(|f| f.contains("reachable from outside"));
    assert!(exposed(&by_workload("web")), "{:?}", by_workload("web"));
    assert!(
        !exposed(&by_workload("batch")),
        "{:?}",
        by_workload("batch")
    );
    operator.stop().await?;
    ns.delete(&client).await?;
    Ok(())
}
