//! `peregrine run`: wires the operator's parts together and runs them until shutdown.
//!
//! Start-up: check the CRDs, fill the caches, then listen. Shutdown (SIGTERM):
//! stop accepting alerts, answer the requests in flight, write everything
//! accepted, then stop the health server.

use crate::cli::RunArgs;
use crate::cluster::{self, ClusterCache};
use crate::health::{self, Readiness};
use crate::install_check;
use crate::intake::auth::{Auth, TokenError, Tokens};
use crate::intake::queue::{Protect, Queue, protect_critical};
use crate::intake::server::ConnectionLimits;
use crate::intake::tls::TlsError;
use crate::intake::{self, Intake};
use crate::metrics::Metrics;
use crate::report::aggregate::Bounds;
use crate::report::build::EventBounds;
use crate::report::cache::{CacheNotReady, ReportCache};
use crate::report::retention::{self, RetentionPolicy};
use crate::report::writer::{Analyzer, Writer, WriterConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long start-up waits for the caches.
const CACHE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the token file is re-read.
const TOKEN_RELOAD: Duration = Duration::from_secs(2);

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "cannot build a Kubernetes client: {0}. Set KUBECONFIG, or run inside a cluster with a ServiceAccount"
    )]
    Client(#[source] kube::Error),
    #[error(transparent)]
    Install(#[from] install_check::InstallError),
    #[error("cannot listen on {addr} for {what}: {source}. Choose another address with --{flag}")]
    Listen {
        what: &'static str,
        flag: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} server failed: {source}")]
    Serve {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the intake has no authentication: give --intake-client-ca (mutual TLS, what Falco's http_output supports), --intake-token-file (bearer tokens, for Falcosidekick's webhook), or --intake-allow-unauthenticated for a local trial"
    )]
    NoAuthentication,
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Tokens(#[from] TokenError),
    #[error(transparent)]
    ClusterCache(#[from] cluster::CacheError),
    #[error(transparent)]
    ReportCache(#[from] CacheNotReady),
    #[error(transparent)]
    Leader(#[from] crate::leader::LeaderError),
    #[error("an operator task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Runs the operator until SIGTERM or Ctrl-C.
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let shutdown = CancellationToken::new();
    crate::shutdown::cancel_on_signal(shutdown.clone());
    let client = kube::Client::try_default()
        .await
        .map_err(RunError::Client)?;
    start(client, args, protect_critical(), shutdown)
        .await?
        .wait()
        .await
}

/// A started operator.
pub struct Running {
    /// Where the intake listens (the bound port when `--intake-addr` had port 0).
    pub intake_addr: SocketAddr,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub health_addr: SocketAddr,
    pub metrics: Metrics,
    task: JoinHandle<Result<(), RunError>>,
}

impl Running {
    /// Waits until the operator has stopped (after `shutdown` was cancelled)
    /// and has written every accepted alert it could.
    pub async fn wait(self) -> Result<(), RunError> {
        self.task.await?
    }
}

/// Starts the operator with `client`: returns once the intake listens.
/// `protect` says which alerts are never shed when the queue is full.
pub async fn start(
    client: kube::Client,
    args: RunArgs,
    protect: Protect,
    shutdown: CancellationToken,
) -> Result<Running, RunError> {
    install_check::check_crds(&client).await?;
    tracing::info!("CRDs installed and established");
    let auth = auth(&args)?;
    let tls = match (&args.intake_tls_cert, &args.intake_tls_key) {
        (Some(cert), Some(key)) => Some(crate::intake::tls::server_config(
            cert,
            key,
            args.intake_client_ca.as_deref(),
            auth.tokens.is_some(),
        )?),
        _ => None,
    };
    if let Some(tokens) = &auth.tokens {
        tokens.clone().watch(TOKEN_RELOAD, shutdown.clone());
    }
    let operator_namespace = args.operator_namespace();
    let metrics = Metrics::new();
    let readiness = Readiness::default();
    readiness.block("caches", "filling the pod and report caches");

    let health_stop = CancellationToken::new();
    let health_listener = bind(args.health_addr, "health endpoints", "health-addr").await?;
    let health_addr = local_addr(&health_listener, args.health_addr);
    tracing::info!(addr = %health_addr, "serving /healthz, /readyz and /metrics");
    let health_router = health::router(readiness.clone()).merge(metrics.router());
    let stop = health_stop.clone();
    let health_task = tokio::spawn(async move {
        axum::serve(health_listener, health_router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .map_err(|source| RunError::Serve {
                what: "health",
                source,
            })
    });

    let cluster = ClusterCache::start(&client, &shutdown);
    let reports = ReportCache::start(&client, &shutdown);
    cluster.wait_ready(CACHE_TIMEOUT).await?;
    reports.wait_ready(CACHE_TIMEOUT).await?;
    tracing::info!("pod, owner and report caches filled");

    let analyzer: Option<Analyzer> = match crate::knowledge::builtin() {
        Ok(kb) => Some(Arc::new(move |alert, subject, ctx| {
            crate::analysis::analyze(alert, subject, ctx, kb)
        })),
        Err(error) => {
            tracing::error!(%error, "the built-in knowledge does not load: reports get no analysis");
            None
        }
    };
    let leadership = crate::leader::Leadership::start(
        client.clone(),
        crate::leader::LeaseConfig {
            namespace: operator_namespace.clone(),
            name: args.lease_name.clone(),
            duration: args.lease_duration,
        },
        metrics.clone(),
        shutdown.clone(),
    )
    .await?;
    let mut protected_namespaces = args.protected_namespaces.clone();
    protected_namespaces.push(operator_namespace.clone());
    let (remediator, remediation_task) = crate::remediation::Remediator::start(
        client.clone(),
        crate::remediation::RemediationConfig {
            operator_namespace: operator_namespace.clone(),
            protected_namespaces,
            limits: crate::remediation::limits::LimitConfig {
                destructive_budget: args.destructive_budget,
                breaker_threshold: args.circuit_breaker_threshold,
                breaker_window: args.circuit_breaker_window,
            },
        },
        leadership,
        reports.clone(),
        metrics.clone(),
        shutdown.clone(),
    );
    let protect = remediator.protect(protect);
    let bounds = Bounds::default();
    let queue = Arc::new(Queue::new(
        args.queue_capacity,
        bounds,
        protect,
        metrics.clone(),
    ));
    let writer = Arc::new(
        Writer::new(
            client.clone(),
            queue.clone(),
            reports.clone(),
            analyzer,
            WriterConfig {
                flush_interval: args.flush_interval,
                drain_timeout: args.drain_timeout,
                operator_namespace: operator_namespace.clone(),
                sensitive_namespaces: vec!["kube-system".to_string(), operator_namespace.clone()],
                bounds,
                event_bounds: EventBounds::default(),
                concurrency: 8,
            },
            metrics.clone(),
        )
        .with_cluster(cluster.clone())
        .with_readiness(readiness.clone()),
    );
    let writer_stop = CancellationToken::new();
    let writer_task = tokio::spawn(writer.clone().run(writer_stop.clone()));

    let policy = RetentionPolicy {
        ttl: args.report_ttl,
        ttl_remediated: args.report_ttl_remediated,
        max_per_namespace: args.max_reports_per_namespace,
        max_total: args.max_reports,
    };
    let forget = writer.clone();
    let retention_task = tokio::spawn(retention::run(
        client.clone(),
        reports.clone(),
        policy,
        args.retention_interval,
        metrics.clone(),
        move |key| forget.forget(key),
        shutdown.clone(),
    ));

    let intake = Intake {
        auth,
        queue: queue.clone(),
        cluster: Some(cluster),
        operator_namespace: operator_namespace.clone(),
        max_body: args.intake_max_body,
        body_timeout: args.intake_read_timeout,
        bounds,
        metrics: metrics.clone(),
    };
    let listener = bind(args.intake_addr, "the alert intake", "intake-addr").await?;
    let intake_addr = local_addr(&listener, args.intake_addr);
    tracing::info!(
        addr = %intake_addr,
        tls = tls.is_some(),
        client_certificates = args.intake_client_ca.is_some(),
        tokens = args.intake_token_file.is_some(),
        namespace = %operator_namespace,
        "accepting Falco alerts on POST / and /v1/falco"
    );
    let limits = ConnectionLimits {
        header_timeout: args.intake_read_timeout,
        max_connections: args.intake_max_connections,
        grace: Duration::from_secs(5),
    };
    readiness.clear("caches");

    let task = tokio::spawn(async move {
        crate::intake::server::serve(
            listener,
            tls,
            intake::router(intake),
            limits,
            shutdown.clone(),
        )
        .await;
        readiness.block("shutdown", "stopping");
        tracing::info!("intake closed; writing what was accepted");
        writer_stop.cancel();
        writer_task.await?;
        retention_task.await?;
        remediation_task.await?;
        health_stop.cancel();
        health_task.await??;
        tracing::info!("stopped");
        Ok(())
    });
    Ok(Running {
        intake_addr,
        health_addr,
        metrics,
        task,
    })
}

fn auth(args: &RunArgs) -> Result<Auth, RunError> {
    let tokens = match &args.intake_token_file {
        Some(path) => Some(Tokens::load(path)?),
        None => None,
    };
    let client_certificates = args.intake_client_ca.is_some();
    if tokens.is_none() && !client_certificates && !args.intake_allow_unauthenticated {
        return Err(RunError::NoAuthentication);
    }
    if args.intake_allow_unauthenticated {
        tracing::warn!(
            "--intake-allow-unauthenticated: anyone who reaches the intake can create AlertReports. Use mutual TLS or tokens outside local trials"
        );
    }
    if tokens.is_some() && args.intake_tls_cert.is_none() {
        tracing::warn!(
            "bearer tokens are accepted over plain HTTP: give --intake-tls-cert and --intake-tls-key so they do not travel in clear"
        );
    }
    Ok(Auth {
        tokens,
        client_certificates,
        allow_unauthenticated: args.intake_allow_unauthenticated,
    })
}

async fn bind(
    addr: SocketAddr,
    what: &'static str,
    flag: &'static str,
) -> Result<tokio::net::TcpListener, RunError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Listen {
            what,
            flag,
            addr,
            source,
        })
}

fn local_addr(listener: &tokio::net::TcpListener, fallback: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(fallback)
}
