//! The operator binary as a child process: started, probed, its memory read,
//! stopped with SIGTERM or SIGKILL.
#![allow(dead_code)]

use anyhow::Context as _;
use bytes::Bytes;
use http::Method;
use peregrine::replay::{IntakeClient, TlsFiles};
use peregrine_testenv::{ControlPlane, poll_until};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `peregrine run` arguments for a test: loopback ports, reports in
/// `namespace`, bearer tokens from `token_file`, a 500 ms flush interval.
pub fn token_args(
    namespace: &str,
    token_file: &str,
    intake_port: u16,
    health_port: u16,
) -> Vec<String> {
    [
        "--intake-addr",
        &format!("127.0.0.1:{intake_port}"),
        "--health-addr",
        &format!("127.0.0.1:{health_port}"),
        "--namespace",
        namespace,
        "--intake-token-file",
        token_file,
        "--flush-interval",
        "500ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub struct Binary {
    pub child: Child,
    pub log: PathBuf,
    pub health: u16,
}

impl Binary {
    pub fn start(
        cp: &ControlPlane,
        args: &[String],
        health: u16,
        log: PathBuf,
    ) -> anyhow::Result<Binary> {
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
        Ok(Binary { child, log, health })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory, in KiB, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// `/readyz`: status and body, `None` when it does not answer.
    pub async fn readyz(&self) -> Option<(u16, String)> {
        let url = format!("http://127.0.0.1:{}/readyz", self.health);
        let mut c = IntakeClient::new(&url, None, &TlsFiles::default()).ok()?;
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            c.send(Method::GET, None, Bytes::new()),
        )
        .await
        .ok()?
        .ok()?;
        Some((answer.status.as_u16(), answer.body))
    }

    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/readyz", self.health);
        let result = poll_until("the operator ready", Duration::from_secs(60), || {
            let url = url.clone();
            async move {
                let mut c = IntakeClient::new(&url, None, &TlsFiles::default())?;
                Ok::<_, anyhow::Error>(
                    matches!(c.send(Method::GET, None, Bytes::new()).await, Ok(a) if a.status.as_u16() == 200),
                )
            }
        })
        .await;
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!("the operator exited with {status}:\n{}", self.log_tail());
        }
        result.with_context(|| self.log_tail())
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill {signal} failed");
        Ok(())
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn terminate(mut self) -> anyhow::Result<()> {
        self.signal("-TERM")?;
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

    /// SIGKILL: no drain, no flush.
    pub fn kill(mut self) -> anyhow::Result<()> {
        self.signal("-KILL")?;
        self.child.wait()?;
        Ok(())
    }

    pub fn log_tail(&self) -> String {
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
