//! One keep-alive HTTPS connection to the intake, as one Falco node holds.

use anyhow::Context as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// TLS client configurations: with Falco's client certificate, and without
/// (a sender that forgot its credentials, or uses a token).
#[derive(Clone)]
pub struct Tls {
    pub with_cert: Arc<ClientConfig>,
    pub without_cert: Arc<ClientConfig>,
}

impl Tls {
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<Tls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca)? {
            roots.add(c?)?;
        }
        let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(key)?;
        let builder = || {
            ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map(|b| b.with_root_certificates(roots.clone()))
        };
        Ok(Tls {
            with_cert: Arc::new(builder()?.with_client_auth_cert(chain, key)?),
            without_cert: Arc::new(builder()?.with_no_client_auth()),
        })
    }
}

/// What a request got back.
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// A connection that reconnects when the intake closed it.
pub struct Connection {
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
    token: Option<String>,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// Times the connection had to be opened again.
    pub reconnects: u64,
}

impl Connection {
    pub fn new(addr: SocketAddr, tls: Arc<ClientConfig>, token: Option<String>) -> Connection {
        Connection {
            addr,
            tls,
            token,
            sender: None,
            reconnects: 0,
        }
    }

    /// Opens the connection (TCP, TLS handshake, HTTP/1.1) unless it is open.
    pub async fn connect(&mut self) -> anyhow::Result<()> {
        if self.sender.as_ref().is_some_and(|s| !s.is_closed()) {
            return Ok(());
        }
        if self.sender.is_some() {
            self.reconnects += 1;
        }
        self.sender = None;
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect(self.addr),
        )
        .await
        .context("connecting to the intake timed out")??;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("127.0.0.1")?;
        let stream = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_rustls::TlsConnector::from(self.tls.clone()).connect(name, tcp),
        )
        .await
        .context("the TLS handshake timed out")??;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        self.sender = Some(sender);
        Ok(())
    }

    /// POSTs `body` to /v1/falco and reads the whole answer.
    pub async fn post(&mut self, content_type: &str, body: Bytes) -> anyhow::Result<Answer> {
        self.connect().await?;
        let Some(sender) = self.sender.as_mut() else {
            anyhow::bail!("no connection");
        };
        sender.ready().await?;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri("/v1/falco")
            .header(header::HOST, "127.0.0.1")
            .header(header::CONTENT_TYPE, content_type);
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = sender.send_request(request.body(Full::new(body))?).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Answer { status, body })
    }
}
