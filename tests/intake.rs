//! The intake's answers: authentication (tokens, rotated tokens, mutual
//! TLS), and a clear status code for every kind of bad input, which leaves
//! no report behind.

#[path = "support/pki.rs"]
mod pki;
#[path = "support/operator.rs"]
mod support;

use bytes::Bytes;
use http::Method;
use peregrine::replay::{IntakeClient, TlsFiles};
use peregrine_testenv::{TestNamespace, repo_root, unique_name};
use pki::Pki;
use std::path::Path;
use std::time::Duration;
use support::*;

/// What is sent, and the status and part of the message it must get.
type Case = (
    &'static str,
    Method,
    Option<&'static str>,
    Bytes,
    u16,
    &'static str,
);

#[tokio::test]
async fn every_bad_input_gets_its_status_code_and_leaves_no_report() -> anyhow::Result<()> {
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "bad-input").await?;
    let tokens = TokenFile::new();
    let operator = Operator::start(
        cp,
        ns.name(),
        &[
            "--intake-token-file",
            &tokens.arg(),
            "--intake-max-body",
            "4KiB",
        ],
    )
    .await?;
    let good = serde_json::to_vec(&shell_alert(ns.name(), "web-7d9f8b6c5d-x2k4q", "worker-1"))?;

    let mut anonymous = operator.client(None);
    let answer = anonymous.post_alert(good.clone()).await?;
    assert_eq!(answer.status.as_u16(), 401, "no credentials");
    assert!(
        answer.body.contains("Authorization: Bearer"),
        "{}",
        answer.body
    );

    let mut wrong = operator.client(Some("not-the-token"));
    assert_eq!(
        wrong.post_alert(good.clone()).await?.status.as_u16(),
        401,
        "wrong token"
    );

    let mut intake = operator.client(Some(&tokens.token));
    let cases: Vec<Case> = vec![
        (
            "text/plain, as Falco sends without json_output",
            Method::POST,
            Some("text/plain"),
            Bytes::from_static(b"09:12:44.153628901: Notice A shell was spawned in a container"),
            415,
            "json_output: true",
        ),
        (
            "a body over --intake-max-body",
            Method::POST,
            Some("application/json"),
            Bytes::from(vec![b' '; 5000]),
            413,
            "--intake-max-body",
        ),
        (
            "JSON broken as Falco sometimes writes it",
            Method::POST,
            Some("application/json"),
            Bytes::from(std::fs::read(
                repo_root().join("tests/payloads/broken-field-without-value.json"),
            )?),
            400,
            "not valid JSON",
        ),
        (
            "two alerts on one line",
            Method::POST,
            Some("application/json"),
            Bytes::from(std::fs::read(
                repo_root().join("tests/payloads/broken-two-alerts-one-line.json"),
            )?),
            400,
            "one alert per request",
        ),
        (
            "JSON that is not an alert",
            Method::POST,
            Some("application/json"),
            Bytes::from_static(br#"{"hello":"world"}"#),
            400,
            "missing rule, priority, output_fields",
        ),
        ("a GET", Method::GET, None, Bytes::new(), 405, "POST"),
    ];
    for (what, method, content_type, body, code, message) in cases {
        let answer = intake.send(method, content_type, body).await?;
        assert_eq!(answer.status.as_u16(), code, "{what}: {}", answer.body);
        assert!(answer.body.contains(message), "{what}: {}", answer.body);
    }

    // A good alert after all of them is the only report.
    assert_eq!(intake.post_alert(good).await?.status.as_u16(), 202);
    let found = wait_for_reports(
        &client,
        ns.name(),
        "the good alert's report, counted",
        |r| !r.is_empty() && count(&r[0]) > 0,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let found_later = reports(&client, ns.name()).await?;
    assert_eq!(found.len(), 1);
    assert_eq!(found_later.len(), 1, "bad input made no report");
    assert_eq!(count(&found_later[0]), 1);

    let metrics = metrics_of(&operator).await?;
    for reason in [
        "unauthorized",
        "text_plain",
        "too_large",
        "not_json",
        "missing_field",
        "method_not_allowed",
    ] {
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "{reason} is counted:\n{metrics}"
        );
    }
    operator.stop().await
}

#[tokio::test]
async fn every_valid_payload_shape_is_accepted() -> anyhow::Result<()> {
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "shapes").await?;
    let tokens = TokenFile::new();
    let operator = Operator::start(cp, ns.name(), &["--intake-token-file", &tokens.arg()]).await?;
    let mut intake = operator.client(Some(&tokens.token));
    let mut accepted = 0;
    for entry in std::fs::read_dir(repo_root().join("tests/payloads"))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let answer = intake.post_alert(std::fs::read(&path)?).await?;
        let expected = if name.starts_with("broken-") {
            400
        } else {
            202
        };
        assert_eq!(answer.status.as_u16(), expected, "{name}: {}", answer.body);
        if expected == 202 {
            accepted += 1;
        }
    }
    assert!(accepted >= 8, "{accepted}");
    operator.stop().await
}

#[tokio::test]
async fn a_rotated_token_is_accepted_without_a_restart() -> anyhow::Result<()> {
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "rotate").await?;
    let tokens = TokenFile::new();
    let operator = Operator::start(cp, ns.name(), &["--intake-token-file", &tokens.arg()]).await?;
    let alert = serde_json::to_vec(&shell_alert(ns.name(), "web-7d9f8b6c5d-x2k4q", "worker-1"))?;
    let fresh = unique_name("rotated");
    std::fs::write(&tokens.path, format!("{fresh}\n"))?;
    let mut new_client = operator.client(Some(&fresh));
    // The file is re-read every few seconds: poll with a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let answer = new_client.post_alert(alert.clone()).await?;
        if answer.status.as_u16() == 202 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new token was never accepted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut old_client = operator.client(Some(&tokens.token));
    assert_eq!(
        old_client.post_alert(alert).await?.status.as_u16(),
        401,
        "the old token is gone"
    );
    operator.stop().await
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test]
async fn mutual_tls_admits_a_client_certificate_from_the_ca_and_nothing_else() -> anyhow::Result<()>
{
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "mtls").await?;
    let pki = Pki::new("intake")?;
    let (server_crt, server_key) = pki.leaf("intake", true, false)?;
    let (falco_crt, falco_key) = pki.leaf("falco", false, false)?;
    let stranger = Pki::new("stranger")?;
    let (stranger_crt, stranger_key) = stranger.leaf("stranger", false, false)?;
    let operator = Operator::start(
        cp,
        ns.name(),
        &[
            "--intake-tls-cert",
            &display(&server_crt),
            "--intake-tls-key",
            &display(&server_key),
            "--intake-client-ca",
            &display(&pki.ca()),
        ],
    )
    .await?;
    let url = format!("https://localhost:{}/", operator.intake.port());
    let alert = serde_json::to_vec(&shell_alert(ns.name(), "web-7d9f8b6c5d-x2k4q", "worker-1"))?;

    let mut falco = IntakeClient::new(
        &url,
        None,
        &TlsFiles {
            ca: Some(pki.ca()),
            cert: Some(falco_crt),
            key: Some(falco_key),
        },
    )?;
    let answer = falco.post_alert(alert.clone()).await?;
    assert_eq!(answer.status.as_u16(), 202, "{}", answer.body);

    let mut no_cert = IntakeClient::new(
        &url,
        None,
        &TlsFiles {
            ca: Some(pki.ca()),
            ..TlsFiles::default()
        },
    )?;
    assert!(
        no_cert.post_alert(alert.clone()).await.is_err(),
        "a client without a certificate is refused"
    );

    let mut foreign = IntakeClient::new(
        &url,
        None,
        &TlsFiles {
            ca: Some(pki.ca()),
            cert: Some(stranger_crt),
            key: Some(stranger_key),
        },
    )?;
    assert!(
        foreign.post_alert(alert).await.is_err(),
        "a certificate from another CA is refused"
    );

    wait_for_reports(&client, ns.name(), "the report of the mTLS alert", |r| {
        r.len() == 1 && count(&r[0]) == 1
    })
    .await?;
    operator.stop().await
}

#[tokio::test]
async fn a_stalled_sender_is_answered_or_cut_off_after_the_read_timeout() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "stall").await?;
    let operator = Operator::start(
        cp,
        ns.name(),
        &[
            "--intake-allow-unauthenticated",
            "--intake-read-timeout",
            "1s",
        ],
    )
    .await?;

    // Headers that never end: the connection is closed.
    let mut stalled = tokio::net::TcpStream::connect(operator.intake).await?;
    stalled.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n").await?;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the connection with unfinished headers is still open after 10 s"
    );

    // A body that never arrives: 408.
    let mut slow = tokio::net::TcpStream::connect(operator.intake).await?;
    slow.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"rule\":").await?;
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut answer)).await??;
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    operator.stop().await
}
