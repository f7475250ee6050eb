//! Leader election with a Lease: every replica accepts alerts and writes
//! reports; only the holder of the Lease executes remediation actions.
//!
//! Losing the lease cancels the current term at once: actions in flight are
//! abandoned, and nothing new starts until the lease is held again. Before
//! each action the executor also reads the Lease back ([`Leadership::confirm`]),
//! so a replica cut off from the API server cannot act on a lease it no longer holds.

use crate::metrics::Metrics;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Why leader election could not start.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error(
        "cannot use Lease {namespace}/{name} for leader election: {source}. Grant the operator get, create and patch on leases in its namespace (coordination.k8s.io)"
    )]
    Lease {
        namespace: String,
        name: String,
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
}

/// This replica's view of the leadership.
#[derive(Clone)]
pub struct Leadership {
    identity: String,
    lease: Api<Lease>,
    name: String,
    state: watch::Receiver<bool>,
    term: Arc<Mutex<CancellationToken>>,
}

/// Settings of the election.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// How long a lease lasts without renewal: the longest time actions stop
    /// when the holder dies.
    pub duration: Duration,
}

/// A unique name for this replica: the pod's name when known, plus a random part.
pub fn identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "peregrine".to_string());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{host}-{}-{nanos:08x}", std::process::id())
}

impl Leadership {
    /// Joins the election; it runs until `shutdown`, then releases the lease.
    /// `metrics.leader` is 1 while this replica holds the lease.
    pub async fn start(
        client: Client,
        config: LeaseConfig,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Result<Leadership, LeaderError> {
        let identity = identity();
        let secs = config.duration.as_secs().max(2);
        let grace = (secs / 3).max(1);
        let manager = LeaseManagerBuilder::new(client.clone(), &config.name)
            .with_namespace(&config.namespace)
            .with_identity(&identity)
            .with_duration(secs)
            .with_grace(grace)
            .with_field_manager(crate::FIELD_MANAGER)
            .build()
            .await
            .map_err(|source| LeaderError::Lease {
                namespace: config.namespace.clone(),
                name: config.name.clone(),
                source,
            })?;
        let (mut lease_rx, handle) = manager.watch().await;
        let (tx, rx) = watch::channel(false);
        let term = Arc::new(Mutex::new(CancellationToken::new()));
        term.lock().unwrap_or_else(|p| p.into_inner()).cancel();
        metrics.set_leader(false);
        let leadership = Leadership {
            identity: identity.clone(),
            lease: Api::namespaced(client, &config.namespace),
            name: config.name.clone(),
            state: rx,
            term: term.clone(),
        };
        let span = tracing::info_span!("leader", lease = %config.name, identity = %identity);
        tokio::spawn(async move {
            let _enter = span.clone();
            loop {
                tokio::select! {
                    changed = lease_rx.changed() => {
                        if changed.is_err() {
                            tracing::error!(parent: &span, "leader election stopped: this replica no longer acts");
                            break;
                        }
                        let leader = *lease_rx.borrow_and_update();
                        let mut current = term.lock().unwrap_or_else(|p| p.into_inner());
                        if leader {
                            *current = CancellationToken::new();
                            tracing::info!(parent: &span, "acquired the lease: this replica now executes remediations");
                        } else {
                            current.cancel();
                            tracing::warn!(parent: &span, "lost the lease: stopped executing remediations");
                        }
                        drop(current);
                        metrics.set_leader(leader);
                        let _ = tx.send(leader);
                    }
                    () = shutdown.cancelled() => break,
                }
            }
            term.lock().unwrap_or_else(|p| p.into_inner()).cancel();
            metrics.set_leader(false);
            let _ = tx.send(false);
            drop(lease_rx);
            match handle.await {
                Ok(Ok(_)) => tracing::info!(parent: &span, "released the lease"),
                Ok(Err(error)) => {
                    tracing::warn!(parent: &span, %error, "could not release the lease; it expires on its own")
                }
                Err(error) => tracing::warn!(parent: &span, %error, "the lease task failed"),
            }
        });
        Ok(leadership)
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn is_leader(&self) -> bool {
        *self.state.borrow()
    }

    /// A token cancelled when the current term of leadership ends (already
    /// cancelled when this replica is not the leader).
    pub fn term(&self) -> CancellationToken {
        self.term.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Changes of leadership.
    pub fn changes(&self) -> watch::Receiver<bool> {
        self.state.clone()
    }

    /// Reads the Lease back: true when this replica holds it and it has not expired.
    pub async fn confirm(&self) -> bool {
        if !self.is_leader() {
            return false;
        }
        let Ok(lease) = self.lease.get(&self.name).await else {
            return false;
        };
        let Some(spec) = lease.spec else { return false };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return false;
        }
        let (Some(renewed), Some(secs)) = (spec.renew_time, spec.lease_duration_seconds) else {
            return false;
        };
        let expires = renewed.0 + jiff::SignedDuration::from_secs(i64::from(secs));
        expires > jiff::Timestamp::now()
    }
}
