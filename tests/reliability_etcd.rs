//! etcd restarted, then its history compacted and the API server restarted so
//! that the operator's watches fall out of their window (410 Gone, too old
//! resource version): the operator recovers without a restart, and counts
//! every alert once.

#[path = "support/operator.rs"]
mod support;

use peregrine_testenv::TestNamespace;
use std::time::Duration;
use support::*;

#[tokio::test]
async fn the_operator_recovers_from_an_etcd_restart_and_expired_watches() -> anyhow::Result<()> {
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "etcd-faults").await?;
    let tokens = TokenFile::new();
    let operator = Operator::start(cp, ns.name(), &["--intake-token-file", &tokens.arg()]).await?;
    let mut intake = operator.client(Some(&tokens.token));
    let web = shell_alert(ns.name(), "web-7d9f8b6c5d-x2k4q", "worker-1");
    let api = shell_alert(ns.name(), "api-5c8d7f9b4-qwz8n", "worker-2");
    let mut sent = 0u64;
    let send = async |intake: &mut peregrine::replay::IntakeClient,
                      alert,
                      n: u64|
           -> anyhow::Result<u64> {
        for _ in 0..n {
            let answer = post(intake, alert).await?;
            anyhow::ensure!(answer.status.as_u16() == 202, "{}", answer.body);
        }
        Ok(n)
    };
    sent += send(&mut intake, &web, 20).await?;
    wait_for_reports(&client, ns.name(), "20 before the faults", |r| {
        r.len() == 1 && count(&r[0]) == 20
    })
    .await?;

    // etcd restarted under a stream of alerts.
    let restart =
        tokio::task::spawn_blocking(move || cp.restart_component("etcd", Duration::from_secs(60)));
    sent += send(&mut intake, &web, 20).await?;
    restart.await??;
    sent += send(&mut intake, &web, 20).await?;
    wait_for_reports(&client, ns.name(), "60 after the etcd restart", |r| {
        r.len() == 1 && count(&r[0]) == 60
    })
    .await?;

    // Many changes, history compacted, the API server's watch cache lost:
    // every watch resumes from a resource version that is gone.
    for i in 0..50 {
        let cm: k8s_openapi::api::core::v1::ConfigMap =
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("churn-{i}")}, "data": {"i": i.to_string()}
            }))?;
        kube::Api::namespaced(client.clone(), ns.name())
            .create(&kube::api::PostParams::default(), &cm)
            .await?;
    }
    let revision = tokio::task::spawn_blocking(move || cp.compact_etcd()).await??;
    tokio::task::spawn_blocking(move || {
        cp.restart_component("kube-apiserver", Duration::from_secs(90))
    })
    .await??;
    eprintln!("etcd compacted at revision {revision}, API server restarted");

    // The operator goes on without a restart: the known incident counts on
    // exactly, and a new one gets its report.
    sent += send(&mut intake, &web, 20).await?;
    send(&mut intake, &api, 5).await?;
    let found = wait_for_reports(&client, ns.name(), "both incidents counted exactly", |r| {
        let mut counts: Vec<u64> = r.iter().map(count).collect();
        counts.sort();
        counts == [5, sent]
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut counts: Vec<u64> = reports(&client, ns.name())
        .await?
        .iter()
        .map(count)
        .collect();
    counts.sort();
    assert_eq!(
        counts,
        [5, sent],
        "nothing counted twice after the watches restarted"
    );
    assert_eq!(found.len(), 2);
    operator.stop().await
}
