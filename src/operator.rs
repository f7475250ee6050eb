//! `peregrine run`: wires the operator's parts together and runs them until shutdown.

use crate::cli::RunArgs;
use crate::health::{self, Readiness};
use crate::install_check;
use tokio_util::sync::CancellationToken;

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
}

/// Runs the operator until SIGTERM or Ctrl-C.
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let shutdown = CancellationToken::new();
    crate::shutdown::cancel_on_signal(shutdown.clone());

    let client = kube::Client::try_default()
        .await
        .map_err(RunError::Client)?;
    install_check::check_crds(&client).await?;
    tracing::info!("CRDs installed and established");

    let readiness = Readiness::default();
    let listener = tokio::net::TcpListener::bind(args.health_addr)
        .await
        .map_err(|source| RunError::Listen {
            what: "health endpoints",
            flag: "health-addr",
            addr: args.health_addr,
            source,
        })?;
    tracing::info!(addr = %args.health_addr, "serving /healthz and /readyz");
    let token = shutdown.clone();
    axum::serve(listener, health::router(readiness))
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await
        .map_err(|source| RunError::Serve {
            what: "health",
            source,
        })?;
    tracing::info!("stopped");
    Ok(())
}
