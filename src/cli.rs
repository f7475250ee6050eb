//! The command line: subcommands of the one `peregrine` binary.

use crate::crd;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Turns Falco alerts into analysed AlertReports and answers them as declared by RemediationPolicies.
#[derive(Debug, Parser)]
#[command(name = "peregrine", version, about)]
pub struct Cli {
    /// Log format: `text` for a terminal, `json` in a cluster.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PEREGRINE_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the CustomResourceDefinitions as YAML (install with `peregrine crd | kubectl apply -f -`).
    Crd(CrdArgs),
    /// Run the operator against the cluster of the current kubeconfig or in-cluster config.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct CrdArgs {
    /// Write one file per CRD into this directory instead of printing them.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Address of the health endpoints `/healthz` and `/readyz`.
    #[arg(long, default_value = "0.0.0.0:8081", env = "PEREGRINE_HEALTH_ADDR")]
    pub health_addr: SocketAddr,
}

/// Prints every CRD, or writes them as files under `out_dir`.
pub fn print_crds(args: &CrdArgs) -> anyhow::Result<()> {
    let crds = crd::all();
    match &args.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            for c in &crds {
                let path = dir.join(crd::file_name(c));
                std::fs::write(&path, crd::to_yaml(c)?)?;
                eprintln!("wrote {}", path.display());
            }
        }
        None => {
            let mut docs = Vec::new();
            for c in &crds {
                docs.push(crd::to_yaml(c)?);
            }
            write_stdout(&docs.join("---\n"))?;
        }
    }
    Ok(())
}

/// Writes to stdout; a closed pipe (`peregrine crd | head`) is not an error.
pub fn write_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
