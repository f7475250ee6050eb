//! A watch cache of every AlertReport, for the writer (does it exist, what
//! else happened on the workload) and for retention.

use super::ReportKey;
use super::fingerprint::{LABEL_WORKLOAD_KIND, LABEL_WORKLOAD_NAME};
use crate::analysis::RelatedIncident;
use crate::crd::AlertReport;
use futures::StreamExt;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct ReportCache {
    store: Store<DeserializeGuard<AlertReport>>,
}

/// The report cache did not fill.
#[derive(Debug, thiserror::Error)]
#[error(
    "the AlertReport cache did not fill within {secs}s: check that the operator may list and watch alertreports in all namespaces"
)]
pub struct CacheNotReady {
    pub secs: u64,
}

impl ReportCache {
    /// Starts watching every AlertReport; a report that does not deserialize
    /// is logged and skipped.
    pub fn start(client: &Client, shutdown: &CancellationToken) -> ReportCache {
        let (store, writer) = reflector::store();
        let stream = watcher(
            Api::<DeserializeGuard<AlertReport>>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(|r: &mut DeserializeGuard<AlertReport>| {
            if let Ok(r) = &mut r.0 {
                r.metadata.managed_fields = None;
            }
        })
        .reflect(writer)
        .applied_objects();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let run = async {
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(DeserializeGuard(Err(invalid))) => {
                            tracing::warn!(report = ?invalid.metadata.name, namespace = ?invalid.metadata.namespace, error = %invalid.error, "skipping an AlertReport that does not match the schema");
                        }
                        Ok(_) => {}
                        Err(error) => {
                            tracing::warn!(%error, "watching AlertReports failed; retrying with backoff");
                        }
                    }
                }
            };
            tokio::select! {
                () = run => {}
                () = shutdown.cancelled() => {}
            }
        });
        ReportCache { store }
    }

    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), CacheNotReady> {
        match tokio::time::timeout(timeout, self.store.wait_until_ready()).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(CacheNotReady {
                secs: timeout.as_secs(),
            }),
        }
    }

    pub fn get(&self, key: &ReportKey) -> Option<AlertReport> {
        let guard = self
            .store
            .get(&ObjectRef::new(&key.name).within(&key.namespace))?;
        guard.0.as_ref().ok().cloned()
    }

    /// Every valid report.
    pub fn all(&self) -> Vec<AlertReport> {
        self.store
            .state()
            .iter()
            .filter_map(|g| g.0.as_ref().ok().cloned())
            .collect()
    }

    /// Reports on workload `kind`/`name` (label values) in `key`'s namespace, other than `key`.
    pub fn related(&self, key: &ReportKey, kind: &str, name: &str) -> Vec<RelatedIncident> {
        let mut related: Vec<RelatedIncident> = self
            .store
            .state()
            .iter()
            .filter_map(|g| g.0.as_ref().ok())
            .filter(|r| r.namespace().as_deref() == Some(key.namespace.as_str()))
            .filter(|r| r.name_any() != key.name)
            .filter(|r| {
                let labels = r.labels();
                labels.get(LABEL_WORKLOAD_KIND).map(String::as_str) == Some(kind)
                    && labels.get(LABEL_WORKLOAD_NAME).map(String::as_str) == Some(name)
            })
            .map(|r| RelatedIncident {
                report: r.name_any(),
                rule: r.spec.rule.clone(),
                tags: r.spec.tags.clone(),
                last_seen: r
                    .status
                    .as_ref()
                    .and_then(|s| s.occurrences.as_ref())
                    .map(|o| o.last_seen.0),
            })
            .collect();
        related.sort_by(|a, b| a.report.cmp(&b.report));
        related.truncate(20);
        related
    }
}
