//! The command line: subcommands of the one `peregrine` binary.

use crate::crd;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    Run(Box<RunArgs>),
    /// POST alert files to a running intake, as Falco would (for demos and trials).
    Replay(crate::replay::ReplayArgs),
    /// Analyse one Falco alert offline and print the AlertReport it would create.
    Analyze(crate::offline::AnalyzeArgs),
}

#[derive(Debug, Args)]
pub struct CrdArgs {
    /// Write one file per CRD into this directory instead of printing them.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Address of the health endpoints `/healthz` and `/readyz`, and of `/metrics`.
    #[arg(long, default_value = "0.0.0.0:8081", env = "PEREGRINE_HEALTH_ADDR")]
    pub health_addr: SocketAddr,

    /// Address the alert intake listens on (POST / and /v1/falco).
    #[arg(long, default_value = "0.0.0.0:2801", env = "PEREGRINE_INTAKE_ADDR")]
    pub intake_addr: SocketAddr,
    /// PEM certificate (chain) of the intake: serve HTTPS. Needs --intake-tls-key.
    #[arg(long, env = "PEREGRINE_INTAKE_TLS_CERT", requires = "intake_tls_key")]
    pub intake_tls_cert: Option<PathBuf>,
    /// PEM private key of the intake's certificate.
    #[arg(long, env = "PEREGRINE_INTAKE_TLS_KEY", requires = "intake_tls_cert")]
    pub intake_tls_key: Option<PathBuf>,
    /// PEM CA that signs the client certificates of Falco (mutual TLS, Falco's only
    /// authentication). Needs --intake-tls-cert.
    #[arg(long, env = "PEREGRINE_INTAKE_CLIENT_CA", requires = "intake_tls_cert")]
    pub intake_client_ca: Option<PathBuf>,
    /// File with one bearer token per line (Falcosidekick's webhook `customheaders`).
    /// Re-read when it changes.
    #[arg(long, env = "PEREGRINE_INTAKE_TOKEN_FILE")]
    pub intake_token_file: Option<PathBuf>,
    /// Accept alerts from anyone, without a client certificate or token. For local trials only.
    #[arg(long, env = "PEREGRINE_INTAKE_ALLOW_UNAUTHENTICATED")]
    pub intake_allow_unauthenticated: bool,
    /// Largest alert accepted, in bytes (suffixes KiB, MiB allowed).
    #[arg(long, default_value = "64KiB", value_parser = parse_bytes, env = "PEREGRINE_INTAKE_MAX_BODY")]
    pub intake_max_body: usize,
    /// How long a client may take to send a request's headers, or its body.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "PEREGRINE_INTAKE_READ_TIMEOUT")]
    pub intake_read_timeout: Duration,
    /// Most intake connections open at once.
    #[arg(long, default_value_t = 1024, env = "PEREGRINE_INTAKE_MAX_CONNECTIONS")]
    pub intake_max_connections: usize,

    /// Incidents that may wait to be written; beyond it, the least severe are shed.
    #[arg(long, default_value_t = 10_000, env = "PEREGRINE_QUEUE_CAPACITY")]
    pub queue_capacity: usize,
    /// How often waiting alerts are written to their reports (one status write per incident).
    #[arg(long, default_value = "5s", value_parser = parse_duration, env = "PEREGRINE_FLUSH_INTERVAL")]
    pub flush_interval: Duration,
    /// On SIGTERM, how long to keep writing accepted alerts before giving up. Keep it
    /// below the pod's terminationGracePeriodSeconds.
    #[arg(long, default_value = "25s", value_parser = parse_duration, env = "PEREGRINE_DRAIN_TIMEOUT")]
    pub drain_timeout: Duration,

    /// Namespace of the operator: reports of alerts without a namespace (host, cloud
    /// and SaaS sources) live here. Default: $POD_NAMESPACE, the service account's
    /// namespace, else peregrine-system.
    #[arg(long, env = "PEREGRINE_NAMESPACE")]
    pub namespace: Option<String>,

    /// A report is deleted this long after its incident was last seen.
    #[arg(long, default_value = "24h", value_parser = parse_duration, env = "PEREGRINE_REPORT_TTL")]
    pub report_ttl: Duration,
    /// The same, for reports on which a remediation action succeeded.
    #[arg(long, default_value = "7d", value_parser = parse_duration, env = "PEREGRINE_REPORT_TTL_REMEDIATED")]
    pub report_ttl_remediated: Duration,
    /// Most reports in one namespace; beyond it the least severe, least recent go.
    #[arg(
        long,
        default_value_t = 500,
        env = "PEREGRINE_MAX_REPORTS_PER_NAMESPACE"
    )]
    pub max_reports_per_namespace: usize,
    /// Most reports in the cluster.
    #[arg(long, default_value_t = 5000, env = "PEREGRINE_MAX_REPORTS")]
    pub max_reports: usize,
    /// How often retention runs.
    #[arg(long, default_value = "1m", value_parser = parse_duration, env = "PEREGRINE_RETENTION_INTERVAL")]
    pub retention_interval: Duration,

    /// Namespaces remediation never acts on (comma-separated). The operator's
    /// namespace is always added; add Falco's here if it is not `falco`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kube-system,kube-public,kube-node-lease,falco",
        env = "PEREGRINE_PROTECTED_NAMESPACES"
    )]
    pub protected_namespaces: Vec<String>,
    /// Destructive actions (DeletePod, ScaleToZero, CordonNode) allowed per minute, cluster-wide.
    #[arg(long, default_value_t = 5, env = "PEREGRINE_DESTRUCTIVE_BUDGET")]
    pub destructive_budget: u32,
    /// Actions within --circuit-breaker-window past which every policy behaves as
    /// DryRun until an admin deletes the ConfigMap peregrine-circuit-breaker.
    #[arg(
        long,
        default_value_t = 20,
        env = "PEREGRINE_CIRCUIT_BREAKER_THRESHOLD"
    )]
    pub circuit_breaker_threshold: u32,
    /// The window of --circuit-breaker-threshold.
    #[arg(long, default_value = "1m", value_parser = parse_duration, env = "PEREGRINE_CIRCUIT_BREAKER_WINDOW")]
    pub circuit_breaker_window: Duration,
    /// Name of the Lease (in the operator's namespace) whose holder executes remediations.
    #[arg(long, default_value = "peregrine-leader", env = "PEREGRINE_LEASE_NAME")]
    pub lease_name: String,
    /// How long the Lease lasts without renewal: how long actions pause when the leader dies.
    #[arg(long, default_value = "15s", value_parser = parse_duration, env = "PEREGRINE_LEASE_DURATION")]
    pub lease_duration: Duration,
}

impl RunArgs {
    /// The operator's namespace: `--namespace`, `$POD_NAMESPACE`, the service
    /// account's namespace file, else `peregrine-system`.
    pub fn operator_namespace(&self) -> String {
        const SA_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
        self.namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .or_else(|| std::fs::read_to_string(SA_NAMESPACE).ok())
            .map(|ns| ns.trim().to_string())
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "peregrine-system".to_string())
    }
}

/// Parses `500ms`, `2s`, `10m`, `24h`, `7d` (or a plain number of seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| {
        format!("{text:?} is not a duration: write it like 500ms, 2s, 10m, 24h or 7d")
    })?;
    let secs = |mult: u64| n.checked_mul(mult).map(Duration::from_secs);
    let d = match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => None,
    };
    d.ok_or_else(|| format!("{text:?} is not a duration: write it like 500ms, 2s, 10m, 24h or 7d"))
}

/// Parses `65536`, `64KiB`, `1MiB` (also `64k`, `1M`).
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size: write it like 65536, 64KiB or 1MiB"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        _ => {
            return Err(format!(
                "{text:?} is not a size: write it like 65536, 64KiB or 1MiB"
            ));
        }
    };
    n.checked_mul(mult)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?} is not a usable size"))
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
