//! Falco never resends, so alerts accepted while the API server is
//! unreachable wait in the operator and are written once it is back.

#[path = "support/operator.rs"]
mod support;

use peregrine_testenv::TestNamespace;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// A TCP proxy to the API server that can be cut (every connection dropped,
/// new ones refused) and restored.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    cut: Arc<Notify>,
}

impl Proxy {
    async fn start(target: String) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(Notify::new());
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is reset
                }
                let (target, cut) = (target.clone(), cut2.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = cut.notified() => {}
                    }
                });
            }
        });
        Ok(Proxy { port, up, cut })
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn alerts_accepted_during_an_api_server_outage_are_written_when_it_returns()
-> anyhow::Result<()> {
    let cp = control_plane().await?;
    let admin = cp.client().await?;
    let ns = TestNamespace::create(&admin, "outage").await?;
    let server: http::Uri = cp.server_url().parse()?;
    let target = format!("127.0.0.1:{}", server.port_u16().unwrap_or(443));
    let proxy = Proxy::start(target).await?;
    let mut config = cp.config().await?;
    config.cluster_url = format!("https://127.0.0.1:{}", proxy.port).parse()?;
    config.connect_timeout = Some(Duration::from_secs(2));
    config.read_timeout = Some(Duration::from_secs(5));
    let through_proxy = kube::Client::try_from(config)?;

    let tokens = TokenFile::new();
    let operator = Operator::start_with(
        through_proxy,
        ns.name(),
        &["--intake-token-file", &tokens.arg()],
    )
    .await?;
    let mut intake = operator.client(Some(&tokens.token));
    let alert = shell_alert(ns.name(), "web-7d9f8b6c5d-x2k4q", "worker-1");
    post(&mut intake, &alert).await?;
    wait_for_reports(&admin, ns.name(), "the report before the outage", |r| {
        r.len() == 1 && count(&r[0]) == 1
    })
    .await?;

    proxy.cut();
    for _ in 0..50 {
        let answer = post(&mut intake, &alert).await?;
        assert_eq!(
            answer.status.as_u16(),
            202,
            "the intake answers without the API server"
        );
    }
    // Several flush intervals fail while the API server is away.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        count(&reports(&admin, ns.name()).await?[0]),
        1,
        "nothing was written during the outage"
    );

    proxy.restore();
    wait_for_reports(
        &admin,
        ns.name(),
        "all 51 alerts counted after the outage",
        |r| r.len() == 1 && count(&r[0]) == 51,
    )
    .await?;
    operator.stop().await
}
