use std::path::PathBuf;

/// Everything that can go wrong while starting or using the test control plane.
///
/// Each message names the component or step that failed and, where there is
/// one, what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The control plane binaries have not been built.
    #[error(
        "control plane binaries missing in {}: {missing}; run `make controlplane-build` \
         (or point PEREGRINE_CONTROLPLANE_BIN at a directory holding etcd, kube-apiserver \
         and kube-controller-manager)",
        dir.display()
    )]
    BinariesMissing { dir: PathBuf, missing: String },

    /// A file system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// Generating the certificates or keys failed.
    #[error("generating the control plane certificates: {0}")]
    Pki(#[from] rcgen::Error),

    /// A component exited or never became ready.
    #[error(
        "{component} failed to start: {reason}\n--- last lines of {} ---\n{tail}",
        log.display()
    )]
    Component {
        component: &'static str,
        reason: String,
        log: PathBuf,
        tail: String,
    },

    /// A request to the API server failed.
    #[error("{context}: {}", kube_message(source))]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },

    /// The generated kubeconfig could not be turned into a client configuration.
    #[error("loading the test kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),

    /// A manifest could not be read or is not what was expected.
    #[error("{0}")]
    Manifest(String),

    /// Something did not happen within its deadline.
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout { what: String, secs: u64 },
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

pub(crate) fn kube(context: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let context = context.into();
    move |source| Error::Kube { context, source }
}

/// The server's own message for API errors (without the debug dump of the
/// whole Status), else the error itself.
fn kube_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => {
            format!("{} ({} {})", status.message, status.code, status.reason)
        }
        other => other.to_string(),
    }
}
