//! The API server stops during a steady stream of alerts and comes back:
//! every acknowledged alert ends up counted, the operator's memory stays
//! bounded meanwhile, and `/readyz` says what is wrong while it is down.
//!
//! The outage lasts `PEREGRINE_OUTAGE_SECS` seconds: 20 by default (CI),
//! 60 in `make fuzz`.

#[path = "support/binary.rs"]
mod binary;
#[path = "support/operator.rs"]
mod support;

use binary::{Binary, free_port, token_args};
use peregrine::replay::{IntakeClient, TlsFiles};
use peregrine_testenv::{TestNamespace, poll_until};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::*;

const INCIDENTS: usize = 3;

#[tokio::test]
async fn an_api_server_outage_loses_no_acknowledged_alert_and_readiness_says_why()
-> anyhow::Result<()> {
    let outage = Duration::from_secs(
        std::env::var("PEREGRINE_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    );
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "apiserver-outage").await?;
    let tokens = TokenFile::new();
    let (intake_port, health_port) = (free_port()?, free_port()?);
    let args = token_args(ns.name(), &tokens.arg(), intake_port, health_port);
    let log = std::env::temp_dir().join(format!("{}.log", ns.name()));
    let mut operator = Binary::start(cp, &args, health_port, log.clone())?;
    operator.wait_ready().await?;

    // A steady stream: one alert every 10 ms, round-robin over the incidents.
    let accepted: Arc<Vec<AtomicU64>> =
        Arc::new((0..INCIDENTS).map(|_| AtomicU64::new(0)).collect());
    let refused = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let alerts: Vec<Vec<u8>> = (0..INCIDENTS)
        .map(|i| {
            serde_json::to_vec(&shell_alert(
                ns.name(),
                &format!("app{i}-7d9f8b6c5d-x2k4q"),
                "worker-1",
            ))
        })
        .collect::<Result<_, _>>()?;
    let sender = {
        let (accepted, refused, stop, token) = (
            accepted.clone(),
            refused.clone(),
            stop.clone(),
            tokens.token.clone(),
        );
        tokio::spawn(async move {
            let url = format!("http://127.0.0.1:{intake_port}/v1/falco");
            let mut intake = IntakeClient::new(&url, Some(token), &TlsFiles::default())?;
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let which = i % INCIDENTS;
                match intake.post_alert(alerts[which].clone()).await {
                    Ok(a) if a.status.as_u16() == 202 => {
                        accepted[which].fetch_add(1, Ordering::SeqCst);
                    }
                    _ => {
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok::<_, anyhow::Error>(())
        })
    };
    let total = |a: &[AtomicU64]| a.iter().map(|x| x.load(Ordering::SeqCst)).sum::<u64>();
    poll_until("200 alerts accepted", Duration::from_secs(60), || {
        let n = total(&accepted);
        async move { Ok::<_, anyhow::Error>(n >= 200) }
    })
    .await?;
    wait_for_reports(&client, ns.name(), "the reports before the outage", |r| {
        r.len() == INCIDENTS
    })
    .await?;
    let rss_before = operator.rss_kib().unwrap_or(0);

    // The outage.
    let before = total(&accepted);
    tokio::task::spawn_blocking(move || cp.stop_component("kube-apiserver")).await??;
    let started = Instant::now();
    let mut rss_max = rss_before;
    let mut reasons = Vec::new();
    while started.elapsed() < outage {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_max = rss_max.max(operator.rss_kib().unwrap_or(0));
        if let Some((status, body)) = operator.readyz().await
            && status == 503
            && reasons.is_empty()
        {
            eprintln!(
                "readyz {:?} into the outage: {status} {}",
                started.elapsed(),
                body.trim()
            );
            reasons.push(body);
        }
    }
    let during = total(&accepted) - before;
    tokio::task::spawn_blocking(move || {
        cp.start_component("kube-apiserver", Duration::from_secs(90))
    })
    .await??;
    let back = Instant::now();
    poll_until("/readyz 200 again", Duration::from_secs(90), || {
        let f = operator.readyz();
        async move { Ok::<_, anyhow::Error>(f.await.is_some_and(|(s, _)| s == 200)) }
    })
    .await?;
    eprintln!(
        "ready again {:?} after the API server returned",
        back.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    sender.await??;

    let expected: Vec<u64> = accepted.iter().map(|a| a.load(Ordering::SeqCst)).collect();
    let mut want = expected.clone();
    want.sort();
    let counted = poll_for_counts(&client, ns.name(), &want).await;
    let rss_after = operator.rss_kib().unwrap_or(0);
    eprintln!(
        "outage {outage:?}: accepted {} alerts ({during} while the API server was down, {} refused), counted {counted:?}; RSS {rss_before} KiB before, at most {rss_max} KiB during, {rss_after} KiB after",
        total(&accepted),
        refused.load(Ordering::SeqCst),
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("cannot write AlertReports")),
        "/readyz never said the reports cannot be written: {reasons:?}\n{}",
        operator.log_tail()
    );
    assert!(during > 0, "the intake stopped accepting during the outage");
    assert_eq!(counted, want, "every acknowledged alert is counted, once");
    // Bounded: the queue holds one entry per incident, not per alert.
    assert!(
        rss_max < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_max} KiB during the outage"
    );
    operator.terminate().await?;
    let _ = std::fs::remove_file(log);
    Ok(())
}

/// The sorted counts of the reports once they equal `want` (or the last seen after 120 s).
async fn poll_for_counts(client: &kube::Client, namespace: &str, want: &[u64]) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut counted: Vec<u64> = reports(client, namespace)
            .await
            .map(|r| r.iter().map(count).collect())
            .unwrap_or_default();
        counted.sort();
        if counted == want || Instant::now() > deadline {
            return counted;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
