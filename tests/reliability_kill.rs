//! The operator killed with SIGKILL mid-stream: what it had acknowledged but
//! not yet written is lost, and no more than that; started again, it counts
//! on from what its reports say, without counting anything twice.
//! (SIGTERM mid-stream loses nothing: tests/reports_restart.rs.)

#[path = "support/binary.rs"]
mod binary;
#[path = "support/operator.rs"]
mod support;

use binary::{Binary, free_port, token_args};
use peregrine::replay::{IntakeClient, TlsFiles};
use peregrine_testenv::{TestNamespace, poll_until};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

#[tokio::test]
async fn sigkill_loses_at_most_what_was_in_flight() -> anyhow::Result<()> {
    let flush = Duration::from_millis(500);
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "sigkill").await?;
    let tokens = TokenFile::new();
    let (intake_port, health_port) = (free_port()?, free_port()?);
    let args = token_args(ns.name(), &tokens.arg(), intake_port, health_port);
    let log = std::env::temp_dir().join(format!("{}.log", ns.name()));
    let mut first = Binary::start(cp, &args, health_port, log.clone())?;
    first.wait_ready().await?;

    // When each acknowledged alert was sent. A response already on its way
    // when the process dies still arrives afterwards, so an alert belongs to
    // the operator that was running when it was sent, not when its answer came.
    let acks: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let alert = serde_json::to_vec(&shell_alert(ns.name(), "web-7d9f8b6c5d-x2k4q", "worker-1"))?;
    let sender = {
        let (acks, stop, token) = (acks.clone(), stop.clone(), tokens.token.clone());
        tokio::spawn(async move {
            let url = format!("http://127.0.0.1:{intake_port}/v1/falco");
            while !stop.load(Ordering::SeqCst) {
                // A fresh client after a failure: the old connection died with the process.
                let Ok(mut intake) =
                    IntakeClient::new(&url, Some(token.clone()), &TlsFiles::default())
                else {
                    continue;
                };
                while !stop.load(Ordering::SeqCst) {
                    let sent = Instant::now();
                    match intake.post_alert(alert.clone()).await {
                        Ok(a) if a.status.as_u16() == 202 => {
                            acks.lock()
                                .map_err(|_| anyhow::anyhow!("poisoned"))?
                                .push(sent);
                        }
                        _ => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            Ok::<_, anyhow::Error>(())
        })
    };
    let acked = |acks: &Mutex<Vec<Instant>>| acks.lock().map(|a| a.len()).unwrap_or(0);
    let acked_since = |acks: &Mutex<Vec<Instant>>, since: Instant| {
        acks.lock()
            .map(|a| a.iter().filter(|t| **t >= since).count())
            .unwrap_or(0)
    };
    poll_until("500 alerts acknowledged", Duration::from_secs(60), || {
        let n = acked(&acks);
        async move { Ok::<_, anyhow::Error>(n >= 500) }
    })
    .await?;
    first.kill()?;
    // `kill` returns once the process is reaped: nothing sent from now on can
    // have been acknowledged by it.
    let killed_at = Instant::now();
    // Let answers that were already on their way arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (acked_before_kill, in_last_flush, in_last_3s) = {
        let a = acks.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let sent_before = |d: Duration| {
            a.iter()
                .filter(|t| **t < killed_at && killed_at.duration_since(**t) <= d)
                .count()
        };
        (
            a.iter().filter(|t| **t < killed_at).count(),
            sent_before(flush),
            sent_before(Duration::from_secs(3)),
        )
    };
    let counted_after_kill = reports(&client, ns.name())
        .await?
        .iter()
        .map(count)
        .sum::<u64>();
    let lost = acked_before_kill as u64 - counted_after_kill.min(acked_before_kill as u64);
    eprintln!(
        "SIGKILL: {acked_before_kill} acknowledged, {counted_after_kill} counted: {lost} lost ({in_last_flush} acknowledged in the last flush interval of {flush:?}, {in_last_3s} in the last 3 s)"
    );
    assert!(
        counted_after_kill <= acked_before_kill as u64,
        "counted more than acknowledged"
    );
    assert!(
        lost <= in_last_3s as u64,
        "lost {lost}, more than the {in_last_3s} acknowledged in the 3 s before the kill"
    );

    // Started again: everything acknowledged from now on is counted, once.
    let mut second = Binary::start(cp, &args, health_port, log.clone())?;
    second.wait_ready().await?;
    poll_until("300 more acknowledged", Duration::from_secs(60), || {
        let n = acked_since(&acks, killed_at);
        async move { Ok::<_, anyhow::Error>(n >= 300) }
    })
    .await?;
    second.terminate().await?;
    stop.store(true, Ordering::SeqCst);
    sender.await??;
    let after_restart = acked_since(&acks, killed_at);
    let total = reports(&client, ns.name())
        .await?
        .iter()
        .map(count)
        .sum::<u64>();
    eprintln!("after the restart: {after_restart} acknowledged, report at {total}");
    assert_eq!(
        total,
        counted_after_kill + after_restart as u64,
        "after the restart every acknowledged alert is counted once"
    );
    let _ = std::fs::remove_file(log);
    Ok(())
}
