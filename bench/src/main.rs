//! `peregrine-loadgen`: the load generator and measuring harness of `make bench`.
//!
//! It plays many Falco nodes against a `peregrine run` it starts (release
//! build, mutual TLS) on the local control plane, and measures what the
//! operator accepts, how fast it answers, how soon reports and actions show
//! up, what it costs the API server, and what it loses or drops. It prints a
//! table and, as its last line, one JSON object with every figure.

mod alerts;
mod client;
mod cluster;
mod load;
mod operator;
mod pki;
mod stats;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Plays many Falco nodes against a Peregrine operator on a local control plane.
#[derive(Debug, Parser)]
#[command(name = "peregrine-loadgen")]
pub struct Args {
    /// The `peregrine` binary to run (a release build).
    #[arg(long, default_value = "target/release/peregrine")]
    operator: PathBuf,
    /// The upstream rule catalog the alerts are built from.
    #[arg(long, default_value = "tests/data/falco-rules-catalog.json")]
    catalog: PathBuf,
    /// Profiles to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "steady,noisy,storm,max")]
    profiles: Vec<Profile>,
    /// How the nodes authenticate: a client certificate (Falco's http_output)
    /// or a bearer token over TLS (Falcosidekick's webhook).
    #[arg(long, value_enum, default_value_t = Auth::Mtls)]
    auth: Auth,
    /// Simulated Falco nodes, each with its own keep-alive connection.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Longer runs: a minute for `steady` too, 15 s per step of `max`.
    #[arg(long)]
    long: bool,
    /// Seconds per profile (per step of `max`), overriding the defaults: for smoke runs.
    #[arg(long)]
    seconds: Option<f64>,
    /// `max` stops raising the rate once acknowledgements pass this p99.
    #[arg(long, default_value_t = 50.0)]
    max_p99_ms: f64,
    /// Extra flags for `peregrine run`.
    #[arg(long, allow_hyphen_values = true, value_delimiter = ' ')]
    operator_args: Vec<String>,
    /// Where each run's JSON (and the operator's logs) go.
    #[arg(long, default_value = "target/bench")]
    out_dir: PathBuf,
    /// Run alongside a peer implementation (only `falcosidekick` is known).
    #[arg(long)]
    peer: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Profile {
    Steady,
    Noisy,
    Storm,
    Max,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Profile::Steady => "steady",
            Profile::Noisy => "noisy",
            Profile::Storm => "storm",
            Profile::Max => "max",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Auth {
    Mtls,
    Token,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("peregrine-loadgen: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peregrine-loadgen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(peer) = &args.peer {
        anyhow::bail!(
            "--peer {peer}: no peer can be run here. Falcosidekick is not among the Go modules this project can fetch, so it cannot be built from source; see the Benchmark section of the README"
        );
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let run_id = format!("{:06x}", alerts::Rng::seeded().next() & 0xff_ffff);
    let work = args.out_dir.join(format!("run-{run_id}"));
    std::fs::create_dir_all(&work)?;
    let creds = pki::write(&work.join("pki"))?;
    let tls = client::Tls::load(&creds.ca, &creds.client_cert, &creds.client_key)?;
    let rules = alerts::load_catalog(&args.catalog)?;
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes client: set KUBECONFIG to the local control plane's")?;
    cluster::install_crds(&client).await?;
    let leftover = cluster::leftover_namespaces(&client).await?;
    if !leftover.is_empty() {
        eprintln!("deleting {} namespaces of earlier runs", leftover.len());
        cluster::delete_namespaces(&client, &leftover, true).await?;
    }
    eprintln!(
        "run {run_id}: {} nodes, auth {:?}, profiles {:?}",
        args.nodes, args.auth, args.profiles
    );

    let mut results = Vec::new();
    for profile in &args.profiles {
        let figures = run_profile(
            &args, *profile, &run_id, &work, &creds, &tls, &rules, &client,
        )
        .await
        .with_context(|| format!("profile {}", profile.name()))?;
        eprintln!("{}", stats::row_text(&figures));
        results.push(figures);
    }
    let report = stats::report(&run_id, &args, results);
    println!("{}", stats::table(&report));
    let line = serde_json::to_string(&report)?;
    let file = args.out_dir.join(format!("bench-{run_id}.json"));
    std::fs::write(&file, format!("{line}\n"))?;
    std::fs::write(args.out_dir.join("latest.json"), format!("{line}\n"))?;
    eprintln!("figures kept in {}", file.display());
    println!("{line}");
    Ok(())
}

/// Durations of a profile: (seconds per run or step).
fn seconds(args: &Args, profile: Profile) -> f64 {
    if let Some(s) = args.seconds {
        return s;
    }
    match (profile, args.long) {
        (Profile::Max, true) => 15.0,
        (Profile::Max, false) => 4.0,
        // `storm` is a minute by definition; `noisy`'s goals are about a
        // steady state, which a minute reaches (creating its incidents costs
        // writes that a shorter run would not amortise).
        (Profile::Storm | Profile::Noisy, _) => 60.0,
        (_, true) => 60.0,
        (Profile::Steady, false) => 6.0,
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_profile(
    args: &Args,
    profile: Profile,
    run_id: &str,
    work: &std::path::Path,
    creds: &pki::Credentials,
    tls: &client::Tls,
    rules: &[alerts::CatalogRule],
    client: &kube::Client,
) -> anyhow::Result<stats::Figures> {
    let name = profile.name();
    let ns = format!("bench-{run_id}-{name}");
    let system_ns = format!("{ns}-sys");
    eprintln!("[{name}] workloads in {ns}");
    let workloads = cluster::workloads(client, &ns, &system_ns).await?;
    let mix = Arc::new(alerts::Mix::build(rules, &workloads)?);

    let mut op_args: Vec<String> = vec![
        "--namespace".into(),
        system_ns.clone(),
        "--intake-tls-cert".into(),
        creds.server_cert.display().to_string(),
        "--intake-tls-key".into(),
        creds.server_key.display().to_string(),
        "--intake-client-ca".into(),
        creds.ca.display().to_string(),
        "--intake-token-file".into(),
        creds.token_file.display().to_string(),
        // Every simulated node keeps a connection open.
        "--intake-max-connections".into(),
        (args.nodes + 64).to_string(),
    ];
    op_args.extend(args.operator_args.iter().filter(|a| !a.is_empty()).cloned());
    let log = work.join(format!("operator-{name}.log"));
    let operator = operator::Operator::start(&args.operator, &op_args, &log).await?;
    let namespaces = vec![ns.clone(), system_ns.clone()];
    let report_seen = cluster::watch_reports(client, &namespaces);
    let action_seen = cluster::watch_actions(client, &ns);
    let policies = cluster::policy(client, &ns, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| {
            eprintln!("[{name}] no RemediationPolicy: {e:#}");
            false
        });
    if !policies {
        eprintln!(
            "[{name}] no policy controller made the RemediationPolicy Ready: alert→action is not measured"
        );
    }

    let nodes = connect_nodes(args, operator.intake, tls, creds).await?;
    let bad = vec![
        (
            "no_credentials",
            client::Connection::new(operator.intake, tls.without_cert.clone(), None),
        ),
        (
            "malformed",
            client::Connection::new(operator.intake, tls.with_cert.clone(), None),
        ),
        (
            "oversized",
            client::Connection::new(operator.intake, tls.with_cert.clone(), None),
        ),
    ];
    let before = cluster::apiserver_requests(client).await?;
    let cpu_before = operator.cpu_seconds();
    let secs = seconds(args, profile);
    eprintln!("[{name}] load for {secs} s");
    let (outcome, steps) = match profile {
        Profile::Max => max_steps(nodes, bad, mix.clone(), secs, args.max_p99_ms).await,
        _ => {
            let (rate, hot) = match profile {
                Profile::Steady => (50.0, None),
                Profile::Noisy => (500.0, None),
                _ => (1000.0, Some(4000.0)),
            };
            let plan = load::Plan {
                rate,
                hot_rate: hot,
                bad_rate: (rate + hot.unwrap_or(0.0)) * alerts::SHARE_BAD,
                duration: Duration::from_secs_f64(secs),
            };
            let (_, _, o) = load::run(nodes, bad, mix.clone(), plan).await;
            (o, Vec::new())
        }
    };

    // Settle: everything acknowledged written (or counted as dropped).
    let settle_deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut figures_reports;
    loop {
        figures_reports = cluster::reports(client, &namespaces).await?;
        let m = operator.metrics().await.unwrap_or_default();
        let waiting = m.get("peregrine_queue_incidents").copied().unwrap_or(0.0);
        let shed = stats::shed_after_ack(&m);
        let actions_done = !policies
            || outcome.policy_reports.keys().all(|k| {
                let s = action_seen.lock().unwrap_or_else(|p| p.into_inner());
                s.contains_key(&format!("isolate/{k}"))
            });
        if waiting == 0.0 && figures_reports.occurrences + shed >= outcome.acked && actions_done {
            break;
        }
        if tokio::time::Instant::now() > settle_deadline {
            eprintln!("[{name}] not settled after 60 s: counting what is there");
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let after = cluster::apiserver_requests(client).await?;
    let cpu = operator.cpu_seconds() - cpu_before;
    let rss = operator.peak_rss();
    let metrics = operator.metrics().await.unwrap_or_default();
    operator.stop().await?;
    // The next profile's operator starts with empty caches, as this one did.
    cluster::delete_namespaces(client, &namespaces, true).await?;

    let report_seen = report_seen.lock().map(|m| m.clone()).unwrap_or_default();
    let action_seen = action_seen.lock().map(|m| m.clone()).unwrap_or_default();
    Ok(stats::Figures::compute(stats::Inputs {
        profile: name,
        nodes: args.nodes,
        seconds: secs,
        outcome,
        steps,
        max_p99_ms: args.max_p99_ms,
        before,
        after,
        reports: figures_reports,
        report_seen,
        action_seen,
        policies,
        metrics,
        rss,
        cpu,
    }))
}

/// Opens one connection per node, a few at a time.
async fn connect_nodes(
    args: &Args,
    intake: std::net::SocketAddr,
    tls: &client::Tls,
    creds: &pki::Credentials,
) -> anyhow::Result<Vec<load::Node>> {
    let started = std::time::Instant::now();
    let nodes: Vec<anyhow::Result<load::Node>> = futures::stream::iter(0..args.nodes)
        .map(|i| {
            let (config, token) = match args.auth {
                Auth::Mtls => (tls.with_cert.clone(), None),
                Auth::Token => (tls.without_cert.clone(), Some(creds.token.clone())),
            };
            async move {
                let mut conn = client::Connection::new(intake, config, token);
                conn.connect().await?;
                Ok(load::Node {
                    host: cluster::node_name(i),
                    conn,
                    rng: alerts::Rng::new(0x5eed_0000 + i as u64 * 7919),
                })
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let nodes = nodes.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    eprintln!(
        "  {} connections open in {:.1} s",
        nodes.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(nodes)
}

/// `max`: raise the rate by half step by step until accepted/s stops
/// growing or acknowledgements pass `max_p99_ms` (50 ms) at p99, then halve
/// the gap between the last good rate and the first bad one twice, so the
/// figure does not depend on where the steps happen to fall.
async fn max_steps(
    mut nodes: Vec<load::Node>,
    mut bad: Vec<(&'static str, client::Connection)>,
    mix: Arc<alerts::Mix>,
    secs: f64,
    max_p99_ms: f64,
) -> (load::Outcome, Vec<stats::Step>) {
    let mut total = load::Outcome::default();
    let mut steps: Vec<stats::Step> = Vec::new();
    let mut rate = 2_000.0_f64;
    let mut best = 0.0_f64;
    let (mut good, mut too_fast): (f64, Option<f64>) = (0.0, None);
    let mut refinements = 0;
    for _ in 0..14 {
        let plan = load::Plan {
            rate,
            hot_rate: None,
            bad_rate: rate * alerts::SHARE_BAD,
            duration: Duration::from_secs_f64(secs),
        };
        let (n, b, o) = load::run(nodes, bad, mix.clone(), plan).await;
        nodes = n;
        bad = b;
        let step = stats::Step::of(rate, &o);
        eprintln!(
            "  step {:>6.0}/s: accepted {:>8.0}/s, ack p99 {:.2} ms",
            rate, step.accepted_per_s, step.ack_p99_ms
        );
        let grew = step.accepted_per_s > best * 1.05;
        let slow = step.ack_p99_ms > max_p99_ms;
        if slow || !grew {
            too_fast = Some(too_fast.map_or(rate, |t: f64| t.min(rate)));
        } else {
            good = good.max(rate);
            best = best.max(step.accepted_per_s);
        }
        steps.push(step);
        total.absorb(o);
        rate = match too_fast {
            None => rate * 1.5,
            Some(_) if refinements >= 2 || good == 0.0 => break,
            Some(bad_rate) => {
                refinements += 1;
                ((good + bad_rate) / 2.0).round()
            }
        };
    }
    (total, steps)
}
