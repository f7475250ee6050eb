//! The accept loop: plain TCP or TLS, HTTP/1.1, short timeouts, a bound on
//! connections, and a graceful stop that answers requests in flight.

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Connections refused for want of a slot are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What the connection told about its peer, for the request handler.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The peer presented a client certificate the client CA signed.
    pub verified_client: bool,
}

/// Timeouts and bounds of the connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// For the TLS handshake and for each request's headers.
    pub header_timeout: Duration,
    pub max_connections: usize,
    /// How long a stop waits for requests in flight.
    pub grace: Duration,
}

/// Serves `router` on `listener` until `shutdown`, then lets requests in
/// flight finish (up to `limits.grace`).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let (mut refused, mut last_warned) = (0u64, None);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // A flood of connections must not become a flood of log lines.
            refused += 1;
            if last_warned.is_none_or(|t: std::time::Instant| t.elapsed() >= WARN_EVERY) {
                tracing::warn!(%addr, refused, max = limits.max_connections, "too many intake connections: closing new ones");
                refused = 0;
                last_warned = Some(std::time::Instant::now());
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .keep_alive(true);
            match acceptor {
                Some(acceptor) => {
                    let tls =
                        match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(error)) => {
                                tracing::debug!(%addr, %error, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%addr, "TLS handshake timed out");
                                return;
                            }
                        };
                    let verified_client = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .is_some_and(|c| !c.is_empty());
                    let peer = Peer {
                        addr,
                        verified_client,
                    };
                    let conn = http.serve_connection(TokioIo::new(tls), service(router, peer));
                    if let Err(error) = watcher.watch(conn).await {
                        tracing::debug!(%addr, %error, "intake connection ended with an error");
                    }
                }
                None => {
                    let peer = Peer {
                        addr,
                        verified_client: false,
                    };
                    let conn = http.serve_connection(TokioIo::new(stream), service(router, peer));
                    if let Err(error) = watcher.watch(conn).await {
                        tracing::debug!(%addr, %error, "intake connection ended with an error");
                    }
                }
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.grace) => {
            tracing::warn!("intake requests still in flight after the grace period: closing them");
        }
    }
}

fn service(
    router: Router,
    peer: Peer,
) -> impl hyper::service::Service<
    http::Request<Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Send,
> {
    hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
        request.extensions_mut().insert(peer.clone());
        router.clone().oneshot(request.map(axum::body::Body::new))
    })
}
