//! Reports go away a while after their incident was last seen. In its own
//! test binary: its short TTL would expire other tests' reports.

#[path = "support/operator.rs"]
mod support;

use peregrine_testenv::TestNamespace;
use support::*;

#[tokio::test]
async fn a_report_past_its_ttl_disappears_and_a_recent_one_stays() -> anyhow::Result<()> {
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "retention").await?;
    let tokens = TokenFile::new();
    let operator = Operator::start(
        cp,
        ns.name(),
        &[
            "--intake-token-file",
            &tokens.arg(),
            "--report-ttl",
            "4s",
            "--retention-interval",
            "500ms",
        ],
    )
    .await?;
    let mut intake = operator.client(Some(&tokens.token));
    post(
        &mut intake,
        &shell_alert(ns.name(), "old-7d9f8b6c5d-x2k4q", "worker-1"),
    )
    .await?;
    wait_for_reports(&client, ns.name(), "the first report", |r| r.len() == 1).await?;

    // Keep a second incident alive while the first ages past its TTL.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        post(
            &mut intake,
            &shell_alert(ns.name(), "live-5c8d7f9b4-qwz8n", "worker-1"),
        )
        .await?;
        let found = reports(&client, ns.name()).await?;
        let names: Vec<String> = found
            .iter()
            .filter_map(|r| r.spec.subject.pod.clone())
            .collect();
        if names == ["live-5c8d7f9b4-qwz8n"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old report is still there: {names:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    operator.stop().await
}
