//! Coalesced writes, measured by the API server itself. In its own test
//! binary, so its control plane serves no other test's writes.

#[path = "support/operator.rs"]
mod support;

use peregrine_testenv::TestNamespace;
use std::time::{Duration, Instant};
use support::*;

#[tokio::test]
async fn a_thousand_repeats_make_one_report_with_a_bounded_number_of_api_writes()
-> anyhow::Result<()> {
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "coalesce").await?;
    let pods = deployment(&client, ns.name(), "web", 1).await?;
    let tokens = TokenFile::new();
    // The default flush interval, as in production.
    let operator = Operator::start(
        cp,
        ns.name(),
        &[
            "--intake-token-file",
            &tokens.arg(),
            "--flush-interval",
            "2s",
        ],
    )
    .await?;
    let writes_before = apiserver_alertreport_writes(&client).await?;

    let mut intake = operator.client(Some(&tokens.token));
    let alert = serde_json::to_vec(&shell_alert(ns.name(), &pods[0], "worker-1"))?;
    let mut latencies = Vec::with_capacity(1000);
    let started = Instant::now();
    for _ in 0..1000 {
        let sent = Instant::now();
        let answer = intake.post_alert(alert.clone()).await?;
        latencies.push(sent.elapsed());
        assert_eq!(answer.status.as_u16(), 202, "{}", answer.body);
    }
    let posting = started.elapsed();

    let found = wait_for_reports(&client, ns.name(), "one report counting 1000", |r| {
        r.len() == 1 && count(&r[0]) == 1000
    })
    .await?;
    assert_eq!(found.len(), 1);
    // Let one more flush interval pass: nothing may be written once all is counted.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes = apiserver_alertreport_writes(&client).await? - writes_before;

    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() * 99 / 100];
    let max = latencies[latencies.len() - 1];
    eprintln!(
        "1000 alerts posted in {posting:?}: ack p50 {p50:?}, p99 {p99:?}, max {max:?}; API writes on alertreports: {writes}"
    );
    // One create, then one status write per flush interval while alerts came.
    let flushes = posting.as_secs_f64() / 2.0;
    let bound = 4 + flushes.ceil() as u64;
    assert!(
        writes <= bound,
        "{writes} writes for 1000 alerts (bound {bound})"
    );
    assert_eq!(
        count(&reports(&client, ns.name()).await?[0]),
        1000,
        "no alert counted twice"
    );
    operator.stop().await
}
