//! `peregrine replay`: POSTs alert files to an intake as Falco or
//! Falcosidekick would, for demos and trials.

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Why alerts could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0:?} is not an http:// or https:// URL of the intake")]
    BadUrl(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use the TLS files: {0}")]
    Tls(String),
    #[error("cannot reach the intake at {url}: {message}. Is `peregrine run` listening there?")]
    Connect { url: String, message: String },
    #[error("the request failed: {0}")]
    Request(String),
    #[error("the intake refused {0} alert(s): see the answers above")]
    Refused(usize),
    #[error("{path} is not a JSON alert: {message}")]
    NotJson { path: PathBuf, message: String },
}

/// TLS material of a client.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    /// CA that signed the intake's certificate.
    pub ca: Option<PathBuf>,
    /// Client certificate and key, for mutual TLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// An HTTP/1.1 client of the intake, keeping one connection open.
pub struct IntakeClient {
    uri: Uri,
    host: String,
    port: u16,
    tls: Option<Arc<ClientConfig>>,
    token: Option<String>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

/// An answer of the intake.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: String,
}

impl IntakeClient {
    pub fn new(
        url: &str,
        token: Option<String>,
        tls: &TlsFiles,
    ) -> Result<IntakeClient, ReplayError> {
        let uri: Uri = url
            .parse()
            .map_err(|_| ReplayError::BadUrl(url.to_string()))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(ReplayError::BadUrl(url.to_string())),
        };
        let host = uri
            .host()
            .ok_or_else(|| ReplayError::BadUrl(url.to_string()))?
            .trim_matches(['[', ']'])
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            Some(client_config(tls)?)
        } else {
            None
        };
        Ok(IntakeClient {
            uri,
            host,
            port,
            tls,
            token,
            sender: None,
        })
    }

    async fn connect(&mut self) -> Result<SendRequest<Full<Bytes>>, ReplayError> {
        let url = self.uri.to_string();
        let connect_error = |message: String| ReplayError::Connect {
            url: url.clone(),
            message,
        };
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| connect_error("timed out".into()))?
        .map_err(|e| connect_error(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let sender = match &self.tls {
            Some(config) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| connect_error(e.to_string()))?;
                let stream = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| connect_error(format!("TLS: {e}")))?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| connect_error(e.to_string()))?;
                tokio::spawn(conn);
                sender
            }
            None => {
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|e| connect_error(e.to_string()))?;
                tokio::spawn(conn);
                sender
            }
        };
        Ok(sender)
    }

    /// POSTs one alert as `application/json`.
    pub async fn post_alert(&mut self, body: impl Into<Bytes>) -> Result<Answer, ReplayError> {
        self.send(Method::POST, Some("application/json"), body.into())
            .await
    }

    /// Sends any request to the intake's URL.
    pub async fn send(
        &mut self,
        method: Method,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Answer, ReplayError> {
        let mut sender = match self.sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.connect().await?,
        };
        sender
            .ready()
            .await
            .map_err(|e| ReplayError::Request(e.to_string()))?;
        let path = self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, format!("{}:{}", self.host, self.port));
        if let Some(ct) = content_type {
            request = request.header(header::CONTENT_TYPE, ct);
        }
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| ReplayError::Request(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ReplayError::Request(e.to_string()))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ReplayError::Request(e.to_string()))?
            .to_bytes();
        self.sender = Some(sender);
        Ok(Answer {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// The system's root certificates (`SSL_CERT_FILE`/`SSL_CERT_DIR`, else the
/// platform's store), read once. Empty when there are none: every TLS
/// handshake then fails with an unknown issuer.
pub fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: std::sync::OnceLock<Vec<CertificateDer<'static>>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        for error in &loaded.errors {
            tracing::warn!(%error, "cannot read some of the system's root certificates");
        }
        if loaded.certs.is_empty() {
            tracing::warn!(
                "no system root certificates found: https webhooks will fail. Install ca-certificates in the image or set SSL_CERT_FILE"
            );
        }
        loaded.certs
    })
}

fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, ReplayError> {
    let tls = |e: &dyn std::fmt::Display| ReplayError::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &files.ca {
        Some(ca) => {
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| tls(&e))? {
                roots.add(cert.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
            }
        }
        // Without a CA file, trust what the system trusts (webhooks such as Slack's).
        None => {
            roots.add_parsable_certificates(system_roots().iter().cloned());
        }
    }
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_root_certificates(roots);
    let config = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| tls(&e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls(&e))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| tls(&e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls(&e))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The alert files named: files as given, directories by their `*.json`, sorted.
pub fn alert_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ReplayError> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let read = |source| ReplayError::Read {
                path: path.clone(),
                source,
            };
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(read)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// The alert in `path`, its `time` set to now unless `keep_time`, so the
/// report is fresh (and not expired at once by retention).
pub fn load_alert(path: &Path, keep_time: bool) -> Result<Bytes, ReplayError> {
    let text = std::fs::read(path).map_err(|source| ReplayError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if keep_time {
        return Ok(Bytes::from(text));
    }
    let mut alert: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&text)
        .map_err(|e| ReplayError::NotJson {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    alert.insert(
        "time".into(),
        serde_json::Value::String(jiff::Timestamp::now().to_string()),
    );
    serde_json::to_vec(&alert)
        .map(Bytes::from)
        .map_err(|e| ReplayError::NotJson {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// What `peregrine replay` was asked to do.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Alert files (one JSON alert each), or directories of them.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// URL of the intake.
    #[arg(long, default_value = "http://127.0.0.1:2801/v1/falco")]
    pub url: String,
    /// File whose first line is the bearer token to send.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// CA of the intake's certificate, for https URLs.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Client certificate for mutual TLS (with --key).
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Client key for mutual TLS.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Send each alert this many times.
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
    /// Keep each alert's own `time` instead of setting it to now.
    #[arg(long)]
    pub keep_time: bool,
}

/// Sends every alert; prints one line per file. Fails when the intake
/// refused any.
pub async fn run(args: ReplayArgs) -> Result<(), ReplayError> {
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|source| ReplayError::Read {
                    path: path.clone(),
                    source,
                })?
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with('#'))
                .unwrap_or_default()
                .to_string(),
        ),
        None => None,
    };
    let tls = TlsFiles {
        ca: args.ca.clone(),
        cert: args.cert.clone(),
        key: args.key.clone(),
    };
    let mut client = IntakeClient::new(&args.url, token, &tls)?;
    let mut refused = 0;
    for path in alert_files(&args.paths)? {
        let mut last = None;
        let started = std::time::Instant::now();
        for _ in 0..args.repeat.max(1) {
            let body = load_alert(&path, args.keep_time)?;
            let answer = client.post_alert(body).await?;
            if !answer.status.is_success() {
                refused += 1;
            }
            last = Some(answer);
        }
        if let Some(answer) = last {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            println!(
                "{name}: {} x{} in {:.0?} {}",
                answer.status.as_u16(),
                args.repeat.max(1),
                started.elapsed(),
                answer.body.trim()
            );
        }
    }
    if refused > 0 {
        return Err(ReplayError::Refused(refused));
    }
    Ok(())
}
