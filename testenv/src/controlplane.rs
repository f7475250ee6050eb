use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::error::{Error, Result, io, kube as kube_err};
use crate::pki::{FRONT_PROXY_CLIENT, Pki, write_private};
use crate::process::Process;

/// Environment variable naming the directory that holds the binaries.
pub const BIN_ENV: &str = "PEREGRINE_CONTROLPLANE_BIN";
/// Environment variable that, when set to 1, keeps the working directory of a
/// temporary control plane (certificates, logs, etcd data) for inspection.
pub const KEEP_ENV: &str = "PEREGRINE_TESTENV_KEEP";
/// Field manager used for server-side apply.
pub const FIELD_MANAGER: &str = "peregrine-testenv";

const ETCD: &str = "etcd";
const APISERVER: &str = "kube-apiserver";
const CONTROLLER_MANAGER: &str = "kube-controller-manager";
const REQUIRED_BINARIES: &[&str] = &[ETCD, APISERVER, CONTROLLER_MANAGER];

/// How to start a [`ControlPlane`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Working directory for certificates, logs, etcd data and the kubeconfig.
    /// `None`: a fresh temporary directory, removed when the control plane
    /// stops (unless `PEREGRINE_TESTENV_KEEP=1`).
    pub dir: Option<PathBuf>,
    /// Directory holding the binaries. `None`: `$PEREGRINE_CONTROLPLANE_BIN`,
    /// else `target/controlplane/bin` of this repository.
    pub bin_dir: Option<PathBuf>,
    /// How long each component may take to become ready.
    pub start_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dir: None,
            bin_dir: None,
            start_timeout: Duration::from_secs(90),
        }
    }
}

/// A running etcd + kube-apiserver + kube-controller-manager on 127.0.0.1.
///
/// Every process is stopped when the value is dropped, and is killed by the
/// kernel when the process holding it exits in any way (see
/// [`ControlPlane::shared`]).
pub struct ControlPlane {
    dir: PathBuf,
    remove_dir: bool,
    server: String,
    kubeconfig_path: PathBuf,
    kubeconfig: Kubeconfig,
    processes: Mutex<Vec<Process>>,
    /// How each component was started, to start it again after a fault.
    specs: Mutex<Vec<Spec>>,
}

#[derive(Clone)]
struct Spec {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server", &self.server)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// The control plane shared by every test of this test binary.
    ///
    /// Started on first use (thread-safe; later callers wait for it), in a
    /// temporary directory, and torn down when the process exits. Usable from
    /// any number of `#[tokio::test]`s, each with its own runtime: build
    /// clients with [`ControlPlane::client`] inside the test, never keep one
    /// across tests.
    ///
    /// # Panics
    /// If the control plane cannot start; the message names the failed
    /// component, shows the end of its log and says what to do.
    pub fn shared() -> &'static ControlPlane {
        let started = SHARED.get_or_init(|| {
            sweep_stale_dirs();
            let started = ControlPlane::start(Options::default()).map_err(|e| e.to_string());
            if started.is_ok() {
                // SAFETY: registers a plain extern "C" fn without arguments.
                unsafe {
                    libc::atexit(stop_shared_at_exit);
                }
            }
            started
        });
        match started {
            Ok(cp) => cp,
            // Remembered, so that the other tests fail at once with the same
            // message instead of each trying (and waiting) again.
            Err(e) => panic!("the test control plane did not start: {e}"),
        }
    }

    /// Starts a control plane and waits until it is ready. Blocks; callable
    /// from inside or outside a Tokio runtime.
    pub fn start(options: Options) -> Result<ControlPlane> {
        let bin = resolve_bin_dir(options.bin_dir.as_deref())?;
        let (dir, remove_dir) = match &options.dir {
            Some(dir) => (dir.clone(), false),
            None => (
                new_temp_dir()?,
                std::env::var(KEEP_ENV).as_deref() != Ok("1"),
            ),
        };
        let dir = std::path::absolute(&dir).map_err(io(format!("resolving {}", dir.display())))?;
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let kubeconfig_path = dir.join("kubeconfig");
        // A kubeconfig present means "running": remove any stale one now and
        // write the new one only once everything is ready.
        remove_if_exists(&kubeconfig_path)?;
        let etcd_data = dir.join("etcd-data");
        if etcd_data.exists() {
            std::fs::remove_dir_all(&etcd_data).map_err(io(format!(
                "removing old etcd data {}",
                etcd_data.display()
            )))?;
        }

        let pki = Pki::generate()?;
        let pki_dir = dir.join("pki");
        let files = pki.write(&pki_dir)?;
        let [etcd_port, etcd_peer_port, apiserver_port, kcm_port] = free_ports()?;
        let server = format!("https://127.0.0.1:{apiserver_port}");
        let admin_kubeconfig = kubeconfig_yaml(&server, &pki.ca.cert_pem, "admin", &pki.admin);
        let kcm_kubeconfig_path = pki_dir.join("kube-controller-manager.kubeconfig");
        write_private(
            &kcm_kubeconfig_path,
            &kubeconfig_yaml(
                &server,
                &pki.ca.cert_pem,
                CONTROLLER_MANAGER,
                &pki.controller_manager,
            ),
        )?;
        let kubeconfig = Kubeconfig::from_yaml(&admin_kubeconfig)?;

        let mut cp = ControlPlane {
            dir: dir.clone(),
            remove_dir,
            server: server.clone(),
            kubeconfig_path: kubeconfig_path.clone(),
            kubeconfig,
            processes: Mutex::new(Vec::new()),
            specs: Mutex::new(Vec::new()),
        };
        let timeout = options.start_timeout;

        // etcd
        let etcd_client = format!("http://127.0.0.1:{etcd_port}");
        let etcd_peer = format!("http://127.0.0.1:{etcd_peer_port}");
        let args = vec![
            "--name=default".to_string(),
            format!("--data-dir={}", etcd_data.display()),
            format!("--listen-client-urls={etcd_client}"),
            format!("--advertise-client-urls={etcd_client}"),
            format!("--listen-peer-urls={etcd_peer}"),
            format!("--initial-advertise-peer-urls={etcd_peer}"),
            format!("--initial-cluster=default={etcd_peer}"),
            "--unsafe-no-fsync=true".to_string(),
            "--log-level=warn".to_string(),
        ];
        cp.spawn(ETCD, &bin, args)?;
        cp.wait_ready(ETCD, timeout, || async move {
            http_get_plain(etcd_port, "/health")
                .await
                .is_some_and(|b| b.contains("true"))
        })?;

        // kube-apiserver
        let args = vec![
            format!("--etcd-servers={etcd_client}"),
            "--bind-address=127.0.0.1".to_string(),
            "--advertise-address=127.0.0.1".to_string(),
            format!("--secure-port={apiserver_port}"),
            format!("--tls-cert-file={}", files.apiserver_cert.display()),
            format!("--tls-private-key-file={}", files.apiserver_key.display()),
            format!("--client-ca-file={}", files.ca_cert.display()),
            // Front-proxy (aggregation) authentication, which components read
            // from kube-system/extension-apiserver-authentication.
            format!("--requestheader-client-ca-file={}", files.ca_cert.display()),
            format!("--requestheader-allowed-names={FRONT_PROXY_CLIENT}"),
            "--requestheader-username-headers=X-Remote-User".to_string(),
            "--requestheader-group-headers=X-Remote-Group".to_string(),
            "--requestheader-extra-headers-prefix=X-Remote-Extra-".to_string(),
            format!(
                "--proxy-client-cert-file={}",
                files.front_proxy_cert.display()
            ),
            format!(
                "--proxy-client-key-file={}",
                files.front_proxy_key.display()
            ),
            "--authorization-mode=Node,RBAC".to_string(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_string(),
            format!("--service-account-key-file={}", files.sa_pub.display()),
            format!(
                "--service-account-signing-key-file={}",
                files.sa_key.display()
            ),
            "--service-cluster-ip-range=10.0.0.0/24".to_string(),
            "--allow-privileged=true".to_string(),
            // The endpoints of the `kubernetes` service would be 127.0.0.1,
            // which Endpoints validation rejects; nothing here needs them.
            "--endpoint-reconciler-type=none".to_string(),
            "--profiling=false".to_string(),
            "--v=1".to_string(),
        ];
        cp.spawn(APISERVER, &bin, args)?;
        let admin = cp.kubeconfig.clone();
        cp.wait_ready(APISERVER, timeout, || {
            let admin = admin.clone();
            async move {
                let Ok(client) = client_from(admin, Some(Duration::from_secs(5))).await else {
                    return false;
                };
                get_text(&client, "/readyz")
                    .await
                    .is_some_and(|b| b.trim() == "ok")
            }
        })?;

        // kube-controller-manager
        let kcm_kubeconfig = kcm_kubeconfig_path.display().to_string();
        let args = vec![
            format!("--kubeconfig={kcm_kubeconfig}"),
            format!("--authentication-kubeconfig={kcm_kubeconfig}"),
            format!("--authorization-kubeconfig={kcm_kubeconfig}"),
            "--bind-address=127.0.0.1".to_string(),
            format!("--secure-port={kcm_port}"),
            format!("--cert-dir={}", pki_dir.join("kcm-generated").display()),
            format!(
                "--service-account-private-key-file={}",
                files.sa_key.display()
            ),
            format!("--root-ca-file={}", files.ca_cert.display()),
            format!("--cluster-signing-cert-file={}", files.ca_cert.display()),
            format!("--cluster-signing-key-file={}", files.ca_key.display()),
            "--use-service-account-credentials=true".to_string(),
            "--leader-elect=false".to_string(),
            "--controllers=*".to_string(),
            "--profiling=false".to_string(),
            "--v=1".to_string(),
        ];
        cp.spawn(CONTROLLER_MANAGER, &bin, args)?;
        let kcm_url = format!("https://127.0.0.1:{kcm_port}");
        cp.wait_ready(CONTROLLER_MANAGER, timeout, || {
            let kcm_url = kcm_url.clone();
            async move {
                let Ok(uri) = kcm_url.parse() else {
                    return false;
                };
                let mut config = Config::new(uri);
                // Its serving certificate is self-signed; /healthz needs no auth.
                config.accept_invalid_certs = true;
                config.connect_timeout = Some(Duration::from_secs(2));
                config.read_timeout = Some(Duration::from_secs(5));
                let Ok(client) = Client::try_from(config) else {
                    return false;
                };
                get_text(&client, "/healthz")
                    .await
                    .is_some_and(|b| b.trim() == "ok")
            }
        })?;

        // Written last, atomically: its presence means the control plane is ready.
        let tmp = dir.join(".kubeconfig.tmp");
        write_private(&tmp, &admin_kubeconfig)?;
        std::fs::rename(&tmp, &kubeconfig_path)
            .map_err(io(format!("writing {}", kubeconfig_path.display())))?;
        Ok(cp)
    }

    /// URL of the API server, `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server
    }

    /// The working directory (certificates in `pki/`, `etcd-data/`, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the admin kubeconfig (`<dir>/kubeconfig`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The admin kubeconfig (client certificate in group `system:masters`).
    pub fn kubeconfig(&self) -> &Kubeconfig {
        &self.kubeconfig
    }

    /// Path of a component's log file (`etcd`, `kube-apiserver`,
    /// `kube-controller-manager`).
    pub fn log_path(&self, component: &str) -> PathBuf {
        self.dir.join(format!("{component}.log"))
    }

    /// Process ids of the running components, by name.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        match self.processes.lock() {
            Ok(p) => p.iter().map(|p| (p.name, p.pid())).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Admin client configuration.
    pub async fn config(&self) -> Result<Config> {
        Ok(
            Config::from_custom_kubeconfig(self.kubeconfig.clone(), &KubeConfigOptions::default())
                .await?,
        )
    }

    /// A new admin client, bound to the calling Tokio runtime.
    pub async fn client(&self) -> Result<Client> {
        client_from(self.kubeconfig.clone(), None).await
    }

    /// A client authenticated as ServiceAccount `namespace/name` with a token
    /// from the TokenRequest API. The ServiceAccount is created if missing.
    /// It has no permissions beyond what RBAC grants it.
    pub async fn service_account_client(&self, namespace: &str, name: &str) -> Result<Client> {
        let admin = self.client().await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(admin, namespace);
        let account = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        match accounts.create(&PostParams::default(), &account).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_already_exists() => {}
            Err(e) => {
                return Err(kube_err(format!(
                    "creating ServiceAccount {namespace}/{name}"
                ))(e));
            }
        }
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let token = accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .map_err(kube_err(format!(
                "requesting a token for ServiceAccount {namespace}/{name}"
            )))?
            .status
            .map(|s| s.token)
            .ok_or_else(|| {
                Error::Manifest(format!(
                    "TokenRequest for {namespace}/{name} returned no token"
                ))
            })?;
        let mut config = self.config().await?;
        config.auth_info =
            serde_json::from_value::<AuthInfo>(serde_json::json!({ "token": token }))
                .map_err(|e| Error::Manifest(format!("building the token credentials: {e}")))?;
        Client::try_from(config).map_err(kube_err("building the ServiceAccount client"))
    }

    /// Applies every CustomResourceDefinition in the `.yaml`/`.yml` files of
    /// `dir` (server-side apply, so repeating it is harmless) and waits until
    /// each is Established. Returns the CRD names.
    pub async fn install_crds(&self, dir: impl AsRef<Path>) -> Result<Vec<String>> {
        let client = self.client().await?;
        install_crds(&client, dir.as_ref()).await
    }

    /// Stops every component (SIGTERM, SIGKILL after a grace period), in the
    /// reverse order of starting. Idempotent.
    pub fn stop(&self) {
        let mut processes = match self.processes.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        while let Some(mut p) = processes.pop() {
            p.stop(Duration::from_secs(10));
        }
    }

    /// Stops one component (`etcd`, `kube-apiserver` or
    /// `kube-controller-manager`) and leaves the others running: SIGTERM,
    /// SIGKILL after 10 s. For fault tests; [`ControlPlane::start_component`]
    /// brings it back. Do it only on a control plane no other test is using
    /// at the time (a test binary of its own, or [`ControlPlane::start`]).
    pub fn stop_component(&self, name: &str) -> Result<()> {
        let mut processes = self.processes.lock().unwrap_or_else(|p| p.into_inner());
        let Some(at) = processes.iter().position(|p| p.name == name) else {
            return Err(Error::Manifest(format!("{name} is not running")));
        };
        let mut process = processes.remove(at);
        drop(processes);
        process.stop(Duration::from_secs(10));
        Ok(())
    }

    /// Starts a component stopped by [`ControlPlane::stop_component`] again,
    /// with the same flags, data directory and port, and waits until it
    /// answers (etcd `/health`, kube-apiserver `/readyz`).
    pub fn start_component(&self, name: &str, timeout: Duration) -> Result<()> {
        let running = self.pids().iter().any(|(n, _)| *n == name);
        if running {
            return Err(Error::Manifest(format!("{name} is already running")));
        }
        let spec = self
            .specs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .ok_or_else(|| Error::Manifest(format!("no component named {name}")))?;
        let mut process = Process::start(
            spec.name,
            &spec.program,
            &spec.args,
            self.log_path(spec.name),
        )?;
        let etcd_port = spec
            .args
            .iter()
            .find_map(|a| a.strip_prefix("--listen-client-urls=http://127.0.0.1:"))
            .and_then(|p| p.parse::<u16>().ok());
        let admin = self.kubeconfig.clone();
        let deadline = Instant::now() + timeout;
        let process = block_on(move || async move {
            loop {
                if let Some(status) = process.exited() {
                    return Err(process.failure(format!("exited with {status}")));
                }
                let ready = match (spec.name, etcd_port) {
                    (ETCD, Some(port)) => http_get_plain(port, "/health")
                        .await
                        .is_some_and(|b| b.contains("true")),
                    (APISERVER, _) => {
                        match client_from(admin.clone(), Some(Duration::from_secs(5))).await {
                            Ok(client) => get_text(&client, "/readyz")
                                .await
                                .is_some_and(|b| b.trim() == "ok"),
                            Err(_) => false,
                        }
                    }
                    _ => true,
                };
                if ready {
                    return Ok(process);
                }
                if Instant::now() >= deadline {
                    return Err(process.failure(format!("not ready after {} s", timeout.as_secs())));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })??;
        self.processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(process);
        Ok(())
    }

    /// Stops a component and starts it again (see [`ControlPlane::stop_component`]).
    pub fn restart_component(&self, name: &str, timeout: Duration) -> Result<()> {
        self.stop_component(name)?;
        self.start_component(name, timeout)
    }

    /// Compacts etcd's history up to its current revision, so that a watch
    /// from an older resource version fails with `410 Gone` once the API
    /// server's watch cache no longer holds it. Returns the revision.
    pub fn compact_etcd(&self) -> Result<i64> {
        let port = self
            .specs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|s| s.name == ETCD)
            .and_then(|s| {
                s.args
                    .iter()
                    .find_map(|a| a.strip_prefix("--listen-client-urls=http://127.0.0.1:"))
                    .and_then(|p| p.parse::<u16>().ok())
            })
            .ok_or_else(|| Error::Manifest("no etcd port".into()))?;
        block_on(move || async move {
            let range = http_post_plain(port, "/v3/kv/range", r#"{"key":"AA=="}"#)
                .await
                .ok_or_else(|| Error::Manifest("etcd did not answer /v3/kv/range".into()))?;
            let revision = serde_json::from_str::<serde_json::Value>(&range)
                .ok()
                .and_then(|v| {
                    v["header"]["revision"]
                        .as_str()
                        .and_then(|r| r.parse::<i64>().ok())
                })
                .ok_or_else(|| Error::Manifest(format!("no revision in {range}")))?;
            http_post_plain(
                port,
                "/v3/kv/compaction",
                &format!(r#"{{"revision":"{revision}","physical":true}}"#),
            )
            .await
            .ok_or_else(|| Error::Manifest("etcd did not compact".into()))?;
            Ok(revision)
        })?
    }

    fn spawn(&mut self, name: &'static str, bin: &Path, args: Vec<String>) -> Result<()> {
        self.specs
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .push(Spec {
                name,
                program: bin.join(name),
                args: args.clone(),
            });
        let process = Process::start(name, &bin.join(name), &args, self.log_path(name))?;
        self.processes
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .push(process);
        Ok(())
    }

    /// Polls `ready` until it returns true, the component exits, or the
    /// deadline passes. Runs on its own thread and runtime, so it works both
    /// inside and outside a caller's runtime.
    fn wait_ready<F, Fut>(&mut self, name: &'static str, timeout: Duration, ready: F) -> Result<()>
    where
        F: Fn() -> Fut + Send,
        Fut: Future<Output = bool>,
    {
        let processes = self.processes.get_mut().unwrap_or_else(|p| p.into_inner());
        let Some(process) = processes.iter_mut().find(|p| p.name == name) else {
            return Ok(());
        };
        let deadline = Instant::now() + timeout;
        block_on(move || async move {
            loop {
                if let Some(status) = process.exited() {
                    return Err(process.failure(format!("exited with {status}")));
                }
                if ready().await {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    return Err(process.failure(format!("not ready after {} s", timeout.as_secs())));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })?
    }

    fn cleanup_dir(&self) {
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            let _ = std::fs::remove_file(&self.kubeconfig_path);
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
        self.cleanup_dir();
    }
}

static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

/// Runs when the test binary exits normally or through `process::exit`
/// (also after failed tests): the shared control plane is never dropped.
extern "C" fn stop_shared_at_exit() {
    if let Some(Ok(cp)) = SHARED.get() {
        if let Ok(mut processes) = cp.processes.try_lock() {
            // Killing is enough: the data is thrown away with the directory.
            while let Some(mut p) = processes.pop() {
                p.kill();
            }
        }
        cp.cleanup_dir();
    }
}

/// Runs a future to completion on a fresh single-threaded runtime on a scoped
/// thread, so that it also works when called from inside another runtime.
fn block_on<T, Fut>(make: impl FnOnce() -> Fut + Send) -> Result<T>
where
    T: Send,
    Fut: Future<Output = T>,
{
    std::thread::scope(|scope| {
        let handle = scope.spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(make()))
                .map_err(io("starting a Tokio runtime"))
        });
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

async fn client_from(kubeconfig: Kubeconfig, timeout: Option<Duration>) -> Result<Client> {
    let mut config =
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    if let Some(t) = timeout {
        config.connect_timeout = Some(t);
        config.read_timeout = Some(t);
    }
    Client::try_from(config).map_err(kube_err("building a client for the test API server"))
}

async fn get_text(client: &Client, path: &str) -> Option<String> {
    let request = http::Request::get(path).body(Vec::new()).ok()?;
    client.request_text(request).await.ok()
}

/// Minimal HTTP/1.0 GET against 127.0.0.1 (etcd's plain-HTTP /health).
async fn http_get_plain(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.").then(|| body.to_string())
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .ok()
        .flatten()
}

async fn http_post_plain(port: u16, path: &str, body: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let request = format!(
            "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200")
            .then(|| body.to_string())
            .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .ok()
        .flatten()
}

pub(crate) async fn install_crds(client: &Client, dir: &Path) -> Result<Vec<String>> {
    let crds = read_crds(dir)?;
    if crds.is_empty() {
        return Err(Error::Manifest(format!(
            "no CustomResourceDefinition found in {}",
            dir.display()
        )));
    }
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut names = Vec::new();
    for (file, crd) in &crds {
        let name = crd["metadata"]["name"].as_str().ok_or_else(|| {
            Error::Manifest(format!(
                "a CustomResourceDefinition in {} has no metadata.name",
                file.display()
            ))
        })?;
        // Applied as the JSON read from the file, not through the typed
        // struct: a round trip through typed JSONSchemaProps would mangle
        // numeric `default`s when serde_json's arbitrary_precision is on.
        api.patch(name, &params, &Patch::Apply(crd))
            .await
            .map_err(kube_err(format!(
                "applying CustomResourceDefinition {name} from {}",
                file.display()
            )))?;
        names.push(name.to_string());
    }
    let timeout = Duration::from_secs(30);
    for name in &names {
        let established = kube::runtime::wait::await_condition(
            api.clone(),
            name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        match tokio::time::timeout(timeout, established).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(Error::Manifest(format!(
                    "waiting for CustomResourceDefinition {name} to be Established: {e}"
                )));
            }
            Err(_) => {
                return Err(Error::Timeout {
                    what: format!("CustomResourceDefinition {name} to be Established"),
                    secs: timeout.as_secs(),
                });
            }
        }
    }
    Ok(names)
}

/// Reads every CustomResourceDefinition from the YAML files of `dir`, in file
/// name order, with the file each came from; multi-document files are
/// supported. Anything else than a CustomResourceDefinition is an error.
pub(crate) fn read_crds(dir: &Path) -> Result<Vec<(PathBuf, serde_json::Value)>> {
    let entries =
        std::fs::read_dir(dir).map_err(io(format!("reading CRD directory {}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    let mut crds = Vec::new();
    for file in files {
        let text =
            std::fs::read_to_string(&file).map_err(io(format!("reading {}", file.display())))?;
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
            .map_err(|e| Error::Manifest(format!("parsing {}: {e}", file.display())))?;
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            let api_version = doc["apiVersion"].as_str().unwrap_or_default();
            let kind = doc["kind"].as_str().unwrap_or_default();
            if kind != "CustomResourceDefinition" || api_version != "apiextensions.k8s.io/v1" {
                return Err(Error::Manifest(format!(
                    "{} holds a {api_version:?} {kind:?}, not an apiextensions.k8s.io/v1 \
                     CustomResourceDefinition",
                    file.display()
                )));
            }
            crds.push((file.clone(), doc));
        }
    }
    Ok(crds)
}

fn kubeconfig_yaml(server: &str, ca_pem: &str, user: &str, cert: &crate::pki::CertPair) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: peregrine-testenv
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: peregrine-testenv
  context:
    cluster: peregrine-testenv
    user: {user}
current-context: peregrine-testenv
",
        ca = BASE64.encode(ca_pem),
        cert = BASE64.encode(&cert.cert_pem),
        key = BASE64.encode(&cert.key_pem),
    )
}

fn resolve_bin_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    let dir = match explicit {
        Some(d) => d.to_path_buf(),
        None => match std::env::var_os(BIN_ENV) {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => repo_root().join("target/controlplane/bin"),
        },
    };
    let missing: Vec<&str> = REQUIRED_BINARIES
        .iter()
        .copied()
        .filter(|b| !is_executable(&dir.join(b)))
        .collect();
    if missing.is_empty() {
        Ok(dir)
    } else {
        Err(Error::BinariesMissing {
            dir,
            missing: missing.join(", "),
        })
    }
}

/// The repository root: the parent of this crate's directory.
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Distinct free TCP ports on 127.0.0.1 (all held open until all are chosen).
fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for port in &mut ports {
        let listener =
            TcpListener::bind(("127.0.0.1", 0)).map_err(io("finding a free port on 127.0.0.1"))?;
        *port = listener
            .local_addr()
            .map_err(io("finding a free port on 127.0.0.1"))?
            .port();
        listeners.push(listener);
    }
    Ok(ports)
}

const TEMP_PREFIX: &str = "peregrine-testenv-";

fn new_temp_dir() -> Result<PathBuf> {
    let base = std::env::temp_dir();
    for attempt in 0..100u32 {
        let dir = base.join(format!("{TEMP_PREFIX}{}-{attempt}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(format!("creating {}", dir.display()))(e)),
        }
    }
    Err(Error::Manifest(format!(
        "cannot create a fresh directory in {}",
        base.display()
    )))
}

/// Removes working directories left by test processes that were killed
/// before they could clean up (their pid no longer runs).
fn sweep_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TEMP_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(format!("removing {}", path.display()))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("testenv-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    #[test]
    fn reads_multi_document_crd_files_and_keeps_numbers() {
        let dir = temp_dir("crds");
        let crd = |name: &str| {
            format!(
                "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n\
                 metadata:\n  name: {name}\nspec:\n  x:\n    default: 0\n"
            )
        };
        std::fs::write(
            dir.join("b.yaml"),
            format!("{}---\n{}", crd("b1"), crd("b2")),
        )
        .unwrap();
        std::fs::write(dir.join("a.yml"), crd("a")).unwrap();
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        let crds = read_crds(&dir).unwrap();
        let names: Vec<_> = crds
            .iter()
            .map(|(_, c)| c["metadata"]["name"].clone())
            .collect();
        assert_eq!(names, ["a", "b1", "b2"]);
        assert_eq!(
            serde_json::to_string(&crds[0].1["spec"]["x"]["default"]).unwrap(),
            "0"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rejects_other_kinds_in_the_crd_directory() {
        let dir = temp_dir("notcrd");
        std::fs::write(dir.join("cm.yaml"), "apiVersion: v1\nkind: ConfigMap\n").unwrap();
        let err = read_crds(&dir).unwrap_err().to_string();
        assert!(
            err.contains("ConfigMap") && err.contains("cm.yaml"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_binaries_say_how_to_build_them() {
        let err = resolve_bin_dir(Some(Path::new("/nonexistent/bin")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("make controlplane-build"), "{err}");
        assert!(err.contains("kube-apiserver"), "{err}");
    }

    #[test]
    fn generated_kubeconfig_parses() {
        let pki = Pki::generate().unwrap();
        let yaml = kubeconfig_yaml(
            "https://127.0.0.1:6443",
            &pki.ca.cert_pem,
            "admin",
            &pki.admin,
        );
        let kc = Kubeconfig::from_yaml(&yaml).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("peregrine-testenv"));
        assert_eq!(
            kc.clusters[0].cluster.as_ref().unwrap().server.as_deref(),
            Some("https://127.0.0.1:6443")
        );
    }
}
