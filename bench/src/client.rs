//! One keep-alive HTTPS connection to the intake, as one Falco node holds.

use anyhow::Context as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
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

type Io = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// The HTTP/1 connection itself: polled by the node's own task while a
/// request is under way, not by a task of its own, so a request costs one
/// task wake-up instead of three (the load generator shares the machine
/// with what it measures).
type Driver = Pin<Box<http1::Connection<Io, Full<Bytes>>>>;

/// A connection that reconnects when the intake closed it.
pub struct Connection {
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
    token: Option<String>,
    open: Option<(SendRequest<Full<Bytes>>, Driver)>,
    /// Times the connection had to be opened again.
    pub reconnects: u64,
}

impl Connection {
    pub fn new(addr: SocketAddr, tls: Arc<ClientConfig>, token: Option<String>) -> Connection {
        Connection {
            addr,
            tls,
            token,
            open: None,
            reconnects: 0,
        }
    }

    /// Opens the connection (TCP, TLS handshake, HTTP/1.1) unless it is open.
    pub async fn connect(&mut self) -> anyhow::Result<()> {
        if let Some((sender, driver)) = self.open.as_mut() {
            // A connection the intake closed while idle has its driver ended.
            let ended = futures::poll!(driver.as_mut()).is_ready();
            if !ended && !sender.is_closed() {
                return Ok(());
            }
            self.reconnects += 1;
            self.open = None;
        }
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
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        self.open = Some((sender, Box::pin(conn)));
        Ok(())
    }

    /// POSTs `body` to /v1/falco and reads the whole answer.
    pub async fn post(&mut self, content_type: &str, body: Bytes) -> anyhow::Result<Answer> {
        self.connect().await?;
        let Some((sender, driver)) = self.open.as_mut() else {
            anyhow::bail!("no connection");
        };
        let mut request = Request::builder()
            .method(Method::POST)
            .uri("/v1/falco")
            .header(header::HOST, "127.0.0.1")
            .header(header::CONTENT_TYPE, content_type);
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Full::new(body))?;
        let exchange = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>(Answer { status, body })
        };
        tokio::select! {
            answer = exchange => answer,
            ended = driver.as_mut() => {
                ended?;
                anyhow::bail!("the intake closed the connection")
            }
        }
    }
}
