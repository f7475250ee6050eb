//! The operator binary stopped with SIGTERM and started again while alerts
//! keep coming loses none of the alerts it accepted.

#[path = "support/binary.rs"]
mod binary;
#[path = "support/operator.rs"]
mod support;

use binary::{Binary, free_port, token_args};
use peregrine::replay::{IntakeClient, TlsFiles};
use peregrine_testenv::{TestNamespace, poll_until};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use support::*;

#[tokio::test]
async fn an_operator_stopped_and_started_mid_stream_loses_no_accepted_alert() -> anyhow::Result<()>
{
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "restart").await?;
    let tokens = TokenFile::new();
    let (intake_port, health_port) = (free_port()?, free_port()?);
    let args = token_args(ns.name(), &tokens.arg(), intake_port, health_port);
    let log = std::env::temp_dir().join(format!("{}.log", ns.name()));

    let mut first = Binary::start(cp, &args, health_port, log.clone())?;
    first.wait_ready().await?;

    // Two incidents, sent without pause; only 202 answers count as accepted.
    let accepted = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let stop = Arc::new(AtomicBool::new(false));
    let alerts = [
        serde_json::to_vec(&shell_alert(ns.name(), "web-7d9f8b6c5d-x2k4q", "worker-1"))?,
        serde_json::to_vec(&shell_alert(ns.name(), "api-5c8d7f9b4-qwz8n", "worker-2"))?,
    ];
    let sender = {
        let (accepted, stop, token) = (accepted.clone(), stop.clone(), tokens.token.clone());
        tokio::spawn(async move {
            let url = format!("http://127.0.0.1:{intake_port}/v1/falco");
            let mut intake = IntakeClient::new(&url, Some(token), &TlsFiles::default())?;
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let which = i % 2;
                match intake.post_alert(alerts[which].clone()).await {
                    Ok(a) if a.status.as_u16() == 202 => {
                        accepted[which].fetch_add(1, Ordering::SeqCst);
                        i += 1;
                    }
                    // Down, or refused while stopping: not accepted, Falco would lose it.
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            Ok::<_, anyhow::Error>(())
        })
    };
    let total = |a: &[AtomicU64; 2]| a[0].load(Ordering::SeqCst) + a[1].load(Ordering::SeqCst);
    poll_until("300 alerts accepted", Duration::from_secs(60), || {
        let n = total(&accepted);
        async move { Ok::<_, anyhow::Error>(n >= 300) }
    })
    .await?;
    first.terminate().await?;
    let before_restart = total(&accepted);

    let mut second = Binary::start(cp, &args, health_port, log.clone())?;
    second.wait_ready().await?;
    poll_until("300 more alerts accepted", Duration::from_secs(60), || {
        let n = total(&accepted);
        async move { Ok::<_, anyhow::Error>(n >= before_restart + 300) }
    })
    .await?;
    second.terminate().await?;
    stop.store(true, Ordering::SeqCst);
    sender.await??;

    let mut expected: Vec<u64> = accepted.iter().map(|a| a.load(Ordering::SeqCst)).collect();
    expected.sort();
    let found = reports(&client, ns.name()).await?;
    let mut counted: Vec<u64> = found.iter().map(count).collect();
    counted.sort();
    eprintln!("accepted {expected:?} (first run {before_restart}), counted {counted:?}");
    assert_eq!(counted, expected, "every accepted alert is counted, once");
    let _ = std::fs::remove_file(log);
    Ok(())
}
