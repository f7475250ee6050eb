//! A local Kubernetes control plane for integration tests, in the spirit of
//! controller-runtime's envtest: etcd, kube-apiserver and
//! kube-controller-manager run as child processes on 127.0.0.1 with freshly
//! generated certificates, RBAC on, and real service-account tokens.
//!
//! The binaries come from `target/controlplane/bin/` (built by
//! `make controlplane-build`) or from `$PEREGRINE_CONTROLPLANE_BIN`.
//!
//! ```no_run
//! use peregrine_testenv::{ControlPlane, TestNamespace};
//!
//! #[tokio::test]
//! async fn creates_things() -> anyhow::Result<()> {
//!     let cp = ControlPlane::shared();
//!     let client = cp.client().await?;
//!     let ns = TestNamespace::create(&client, "creates-things").await?;
//!     // ... use `client` in `ns.name()`
//!     Ok(())
//! }
//! ```
//!
//! There is no kubelet and no scheduler: [`create_node`], [`bind_pod`] and
//! [`mark_pod_running`] stand in for them.

mod controlplane;
mod error;
mod fixtures;
mod pki;
mod process;

pub use controlplane::{BIN_ENV, ControlPlane, FIELD_MANAGER, KEEP_ENV, Options, repo_root};
pub use error::{Error, Result};
pub use fixtures::{
    TestNamespace, bind_pod, create_node, mark_pod_running, poll_for, poll_until, random_hex64,
    unique_name,
};
