//! What the cluster knows about an alert's pod: its owner workload, node,
//! service account, labels and security context.
//!
//! Read from watch caches (reflectors) filled in the background, never with
//! a GET per alert: the intake answers Falco before any API call.

mod exposure;
mod pod;

pub use exposure::is_exposed;
pub use pod::{guess_workload, owner_workload, pod_context};

use crate::analysis::PodContext;
use crate::crd::{Subject, WorkloadRef};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why the caches could not be filled.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(
        "the {kind} cache did not fill within {secs}s: check that the operator may list and watch {kind} in all namespaces (see its ClusterRole) and that the API server is reachable"
    )]
    NotSynced { kind: &'static str, secs: u64 },
}

/// Read-only views of the pods, ReplicaSets and Jobs of the cluster.
#[derive(Clone)]
pub struct ClusterCache {
    pods: Store<Pod>,
    replicasets: Store<PartialObjectMeta<ReplicaSet>>,
    jobs: Store<PartialObjectMeta<Job>>,
    /// Best effort: without RBAC to list them, pods are simply not known to be exposed.
    services: Store<Service>,
    ingresses: Store<Ingress>,
}

impl ClusterCache {
    /// Starts watching; the watches stop when `shutdown` is cancelled.
    pub fn start(client: &Client, shutdown: &CancellationToken) -> ClusterCache {
        let (pods, writer) = reflector::store();
        let stream = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            // Only the spec, labels and owners are read: keep the cache small.
            .modify(|pod: &mut Pod| {
                pod.status = None;
                pod.metadata.managed_fields = None;
                pod.metadata.annotations = None;
            })
            .reflect(writer);
        spawn_watch("pods", stream, shutdown.clone());

        let (replicasets, writer) = reflector::store();
        let stream = watcher(
            Api::<PartialObjectMeta<ReplicaSet>>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(strip_metadata)
        .reflect(writer);
        spawn_watch("replicasets", stream, shutdown.clone());

        let (jobs, writer) = reflector::store();
        let stream = watcher(
            Api::<PartialObjectMeta<Job>>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(strip_metadata)
        .reflect(writer);
        spawn_watch("jobs", stream, shutdown.clone());

        let (services, writer) = reflector::store();
        let stream = watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(|svc: &mut Service| {
            svc.status = None;
            svc.metadata.managed_fields = None;
            svc.metadata.annotations = None;
        })
        .reflect(writer);
        spawn_watch("services", stream, shutdown.clone());

        let (ingresses, writer) = reflector::store();
        let stream = watcher(
            Api::<Ingress>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(|ing: &mut Ingress| {
            ing.status = None;
            ing.metadata.managed_fields = None;
            ing.metadata.annotations = None;
        })
        .reflect(writer);
        spawn_watch("ingresses", stream, shutdown.clone());

        ClusterCache {
            pods,
            replicasets,
            jobs,
            services,
            ingresses,
        }
    }

    /// Waits until every cache holds its first full list.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), CacheError> {
        let not_synced = |kind| CacheError::NotSynced {
            kind,
            secs: timeout.as_secs(),
        };
        let ready = |r: Result<Result<(), _>, _>, kind| match r {
            Ok(Ok(())) => Ok(()),
            _ => Err(not_synced(kind)),
        };
        ready(
            tokio::time::timeout(timeout, self.pods.wait_until_ready()).await,
            "pods",
        )?;
        ready(
            tokio::time::timeout(timeout, self.replicasets.wait_until_ready()).await,
            "replicasets",
        )?;
        ready(
            tokio::time::timeout(timeout, self.jobs.wait_until_ready()).await,
            "jobs",
        )?;
        // Exposure only sharpens the risk score: without it the operator still works.
        let optional = timeout.min(Duration::from_secs(10));
        for (kind, synced) in [
            (
                "services",
                tokio::time::timeout(optional, self.services.wait_until_ready()).await,
            ),
            (
                "ingresses",
                tokio::time::timeout(optional, self.ingresses.wait_until_ready()).await,
            ),
        ] {
            if !matches!(synced, Ok(Ok(()))) {
                tracing::warn!(
                    kind,
                    "cache not filled: pods are not known to be reachable from outside; grant list and watch on {kind} to the operator"
                );
            }
        }
        Ok(())
    }

    /// The facts about pod `namespace/name`, when it is in the cache.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<PodContext> {
        let located = self.find(namespace, name)?;
        Some(self.facts(&located))
    }

    /// Finds the alert's pod and adds its workload and node to `subject`:
    /// what every alert needs to be assigned to its incident.
    pub fn locate(&self, subject: &mut Subject) -> Option<Located> {
        let (Some(namespace), Some(pod)) = (&subject.namespace, &subject.pod) else {
            return None;
        };
        let located = self.find(namespace, pod)?;
        subject.workload = located.workload.clone();
        if let Some(node) = located.pod.spec.as_ref().and_then(|s| s.node_name.as_ref()) {
            subject.node = Some(node.clone());
        }
        Some(located)
    }

    /// The security-relevant facts of a located pod: what the analysis of a
    /// new incident weighs. Repeats of a waiting incident never need them.
    pub fn facts(&self, located: &Located) -> PodContext {
        let namespace = located
            .pod
            .metadata
            .namespace
            .as_deref()
            .unwrap_or_default();
        let mut context = pod_context(&located.pod, located.workload.clone());
        // On the event path: look objects up in place, never copy the caches.
        context.internet_facing = self
            .services
            .find(|svc| {
                exposure::exposes(svc, namespace, &context.labels, |name| {
                    self.ingresses
                        .find(|ing| exposure::routes_to(ing, namespace, name))
                        .is_some()
                })
            })
            .is_some();
        context
    }

    fn find(&self, namespace: &str, name: &str) -> Option<Located> {
        let pod = self.pods.get(&ObjectRef::new(name).within(namespace))?;
        let replicaset_owner = |name: &str| {
            self.replicasets
                .get(&ObjectRef::new(name).within(namespace))
                .and_then(|rs| rs.metadata.owner_references.clone())
        };
        let job_owner = |name: &str| {
            self.jobs
                .get(&ObjectRef::new(name).within(namespace))
                .and_then(|job| job.metadata.owner_references.clone())
        };
        let workload = owner_workload(&pod.metadata, replicaset_owner, job_owner);
        Some(Located { pod, workload })
    }
}

/// A pod of the cache, with the workload it belongs to.
pub struct Located {
    pod: Arc<Pod>,
    workload: Option<WorkloadRef>,
}

fn strip_metadata<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    meta.annotations = None;
    meta.labels = None;
}

fn spawn_watch<S, K>(kind: &'static str, stream: S, shutdown: CancellationToken)
where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    tokio::spawn(async move {
        let span = tracing::info_span!("watch", kind);
        let mut stream = std::pin::pin!(stream);
        let run = async {
            while let Some(event) = stream.next().await {
                if let Err(error) = event {
                    tracing::warn!(parent: &span, %error, "watch failed; retrying with backoff");
                }
            }
        };
        tokio::select! {
            () = run => {}
            () = shutdown.cancelled() => {}
        }
    });
}
