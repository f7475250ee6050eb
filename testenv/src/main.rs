//! `testenv up --dir DIR`: runs the test control plane in the foreground until
//! SIGTERM or SIGINT, with the admin kubeconfig at `DIR/kubeconfig` (written
//! once everything is ready) and the component logs beside it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use peregrine_testenv::{ControlPlane, Options};

#[derive(Parser)]
#[command(
    name = "testenv",
    about = "Local Kubernetes control plane for Peregrine's tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start etcd, kube-apiserver and kube-controller-manager and run until
    /// SIGTERM/SIGINT.
    Up {
        /// Working directory: kubeconfig, logs, certificates and etcd data.
        #[arg(long, default_value = "target/controlplane")]
        dir: PathBuf,
        /// Directory holding the binaries (default: $PEREGRINE_CONTROLPLANE_BIN,
        /// else target/controlplane/bin of the repository).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Seconds each component may take to become ready.
        #[arg(long, default_value_t = 90)]
        timeout: u64,
    },
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("testenv: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let Command::Up {
        dir,
        bin_dir,
        timeout,
    } = Cli::parse().command;
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the Tokio runtime")?;
    // Listen for signals before starting, so one during start-up also stops
    // what was started.
    let mut term = runtime
        .block_on(async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        })
        .context("installing the SIGTERM handler")?;
    let cp = ControlPlane::start(Options {
        dir: Some(dir),
        bin_dir,
        start_timeout: Duration::from_secs(timeout),
    })?;
    println!(
        "control plane ready in {:.1} s: {} (kubeconfig {})",
        started.elapsed().as_secs_f64(),
        cp.server_url(),
        cp.kubeconfig_path().display()
    );
    for (name, pid) in cp.pids() {
        println!("  {name}: pid {pid}, log {}", cp.log_path(name).display());
    }
    runtime.block_on(async {
        tokio::select! {
            _ = term.recv() => println!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => println!("SIGINT: stopping"),
        }
    });
    drop(cp);
    println!("control plane stopped");
    Ok(())
}
