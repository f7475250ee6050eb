//! The operator binary stopped with SIGTERM and started again while alerts
//! keep coming loses none of the alerts it accepted.

#[path = "support/operator.rs"]
mod support;

use anyhow::Context as _;
use bytes::Bytes;
use http::Method;
use peregrine::replay::{IntakeClient, TlsFiles};
use peregrine_testenv::{ControlPlane, TestNamespace, poll_until};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use support::*;

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Binary {
    child: Child,
    log: PathBuf,
}

impl Binary {
    fn start(cp: &ControlPlane, args: &[String], log: PathBuf) -> anyhow::Result<Binary> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_peregrine"))
            .arg("run")
            .args(args)
            .env("KUBECONFIG", cp.kubeconfig_path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting the peregrine binary")?;
        Ok(Binary { child, log })
    }

    /// SIGTERM, then waits for a clean exit.
    async fn terminate(mut self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::ensure!(
                    status.success(),
                    "the operator exited with {status}:\n{}",
                    self.log_tail()
                );
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the operator did not stop:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_ready(health: u16, binary: &mut Binary) -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:{health}/readyz");
    let result = poll_until("the operator ready", Duration::from_secs(60), || {
        let url = url.clone();
        async move {
            let mut c = IntakeClient::new(&url, None, &TlsFiles::default())?;
            Ok::<_, anyhow::Error>(matches!(c.send(Method::GET, None, Bytes::new()).await, Ok(a) if a.status.as_u16() == 200))
        }
    })
    .await;
    if let Some(status) = binary.child.try_wait()? {
        anyhow::bail!("the operator exited with {status}:\n{}", binary.log_tail());
    }
    result.with_context(|| binary.log_tail())
}

#[tokio::test]
async fn an_operator_stopped_and_started_mid_stream_loses_no_accepted_alert() -> anyhow::Result<()>
{
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "restart").await?;
    let tokens = TokenFile::new();
    let (intake_port, health_port) = (free_port()?, free_port()?);
    let args: Vec<String> = [
        "--intake-addr",
        &format!("127.0.0.1:{intake_port}"),
        "--health-addr",
        &format!("127.0.0.1:{health_port}"),
        "--namespace",
        ns.name(),
        "--intake-token-file",
        &tokens.arg(),
        "--flush-interval",
        "500ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let log = std::env::temp_dir().join(format!("{}.log", ns.name()));

    let mut first = Binary::start(cp, &args, log.clone())?;
    wait_ready(health_port, &mut first).await?;

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

    let mut second = Binary::start(cp, &args, log.clone())?;
    wait_ready(health_port, &mut second).await?;
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
