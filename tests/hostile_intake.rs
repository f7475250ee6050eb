//! Real-world broken and hostile requests against the real intake, each with
//! the status and message it must get; slow and idle clients that must not
//! hold it; credentials that must not pass. tests/intake.rs covers the
//! common bad inputs and mutual TLS; this suite adds the rest.

#[path = "support/pki.rs"]
mod pki;
#[path = "support/operator.rs"]
mod support;

use peregrine::replay::{IntakeClient, TlsFiles};
use peregrine_testenv::{TestNamespace, repo_root};
use pki::Pki;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One raw HTTP/1.1 request; the connection closes after the answer.
fn request(method: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} /v1/falco HTTP/1.1\r\nHost: intake\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
    {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Sends `bytes` and reads the answer: status and body.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    // The server may answer (413) and close before the whole body is written.
    let _ = stream.write_all(bytes).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no HTTP answer: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn payload(name: &str) -> Vec<u8> {
    std::fs::read(repo_root().join("tests/payloads").join(name)).expect("payload")
}

/// 10 MiB of zeros, gzip-compressed (about 10 KiB): a gzip bomb.
fn gzip_bomb() -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    let mut child = std::process::Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("stdin"))?;
    let writer = std::thread::spawn(move || stdin.write_all(&vec![0u8; 10 << 20]));
    let out = child.wait_with_output()?;
    writer.join().map_err(|_| anyhow::anyhow!("writer"))??;
    Ok(out.stdout)
}

struct Case {
    what: &'static str,
    method: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    message: &'static str,
}

#[tokio::test]
async fn broken_requests_get_their_status_and_message() -> anyhow::Result<()> {
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "hostile-requests").await?;
    let tokens = TokenFile::new();
    let operator = Operator::start(cp, ns.name(), &["--intake-token-file", &tokens.arg()]).await?;
    let good = serde_json::to_vec(&shell_alert(ns.name(), "web-7d9f8b6c5d-x2k4q", "worker-1"))?;
    let bearer = format!("Bearer {}", tokens.token);
    let json = |extra: &[(&'static str, String)]| {
        let mut h = vec![
            ("Authorization", bearer.clone()),
            ("Content-Type", "application/json".to_string()),
        ];
        h.extend_from_slice(extra);
        h
    };
    let truncated = good[..good.len() / 2].to_vec();
    let deep = format!(
        r#"{{"rule":"r","priority":"Notice","output_fields":{{"a":{}1{}}}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let mut invalid_utf8_alert = good.clone();
    let at = invalid_utf8_alert
        .windows(4)
        .position(|w| w == b"bash")
        .unwrap_or(0);
    invalid_utf8_alert.splice(at..at, [0xff, 0xfe, 0xc3]);
    let ten_mib = vec![b' '; 10 << 20];
    let mut chunked_ten_mib = Vec::new();
    for _ in 0..160 {
        chunked_ten_mib.extend_from_slice(format!("{:x}\r\n", 65536).as_bytes());
        chunked_ten_mib.extend_from_slice(&[b' '; 65536]);
        chunked_ten_mib.extend_from_slice(b"\r\n");
    }
    chunked_ten_mib.extend_from_slice(b"0\r\n\r\n");

    let cases = vec![
        Case {
            what: "truncated JSON (the connection dropped mid-alert)",
            method: "POST",
            headers: json(&[]),
            body: truncated,
            status: 400,
            message: "not valid JSON",
        },
        Case {
            what: "two alerts on one line",
            method: "POST",
            headers: json(&[]),
            body: payload("broken-two-alerts-one-line.json"),
            status: 400,
            message: "one alert per request",
        },
        Case {
            what: "a field with no value",
            method: "POST",
            headers: json(&[]),
            body: payload("broken-field-without-value.json"),
            status: 400,
            message: "not valid JSON",
        },
        Case {
            what: "a 2016-era alert with two fields",
            method: "POST",
            headers: json(&[]),
            body: payload("broken-2016-two-fields.json"),
            status: 400,
            message: "missing rule, priority, output_fields",
        },
        Case {
            what: "10,000 levels of nesting",
            method: "POST",
            headers: json(&[]),
            body: deep.into_bytes(),
            status: 400,
            message: "nests more than 32 levels",
        },
        Case {
            what: "JSON that is a list, not an alert",
            method: "POST",
            headers: json(&[]),
            body: b"[1,2,3]".to_vec(),
            status: 400,
            message: "not an object",
        },
        Case {
            what: "a 10 MiB body with its length declared",
            method: "POST",
            headers: json(&[]),
            body: ten_mib,
            status: 413,
            message: "--intake-max-body",
        },
        Case {
            what: "a 10 MiB chunked body",
            method: "POST",
            headers: json(&[("Transfer-Encoding", "chunked".into())]),
            body: chunked_ten_mib,
            status: 413,
            message: "--intake-max-body",
        },
        Case {
            what: "a gzip bomb (10 MiB of zeros)",
            method: "POST",
            headers: json(&[("Content-Encoding", "gzip".into())]),
            body: gzip_bomb()?,
            status: 415,
            message: "send the alert uncompressed",
        },
        Case {
            what: "a form instead of JSON",
            method: "POST",
            headers: vec![
                ("Authorization", bearer.clone()),
                ("Content-Type", "application/x-www-form-urlencoded".into()),
            ],
            body: b"rule=x".to_vec(),
            status: 415,
            message: "send the alert as application/json",
        },
        Case {
            what: "text/plain, Falco without json_output",
            method: "POST",
            headers: vec![
                ("Authorization", bearer.clone()),
                ("Content-Type", "text/plain".into()),
            ],
            body: b"09:12:44.153628901: Notice A shell was spawned".to_vec(),
            status: 415,
            message: "json_output: true",
        },
        Case {
            what: "PUT",
            method: "PUT",
            headers: json(&[]),
            body: good.clone(),
            status: 405,
            message: "send alerts with POST",
        },
        Case {
            what: "DELETE",
            method: "DELETE",
            headers: json(&[]),
            body: Vec::new(),
            status: 405,
            message: "send alerts with POST",
        },
        Case {
            what: "no credentials",
            method: "POST",
            headers: vec![("Content-Type", "application/json".into())],
            body: good.clone(),
            status: 401,
            message: "Authorization: Bearer",
        },
        Case {
            what: "a wrong token",
            method: "POST",
            headers: vec![("Authorization", "Bearer nope".into())],
            body: good.clone(),
            status: 401,
            message: "missing or wrong credentials",
        },
        Case {
            what: "the right token as Basic credentials",
            method: "POST",
            headers: vec![("Authorization", format!("Basic {}", tokens.token))],
            body: good.clone(),
            status: 401,
            message: "missing or wrong credentials",
        },
        Case {
            what: "the token with a suffix",
            method: "POST",
            headers: vec![("Authorization", format!("{bearer}x"))],
            body: good.clone(),
            status: 401,
            message: "missing or wrong credentials",
        },
        Case {
            what: "invalid UTF-8 inside a valid alert (replaced, as Falco does)",
            method: "POST",
            headers: json(&[]),
            body: invalid_utf8_alert,
            status: 202,
            message: "report",
        },
    ];
    let mut failures = Vec::new();
    for case in &cases {
        let started = Instant::now();
        let (status, body) = exchange(
            operator.intake,
            &request(case.method, &case.headers, &case.body),
        )
        .await?;
        eprintln!(
            "{:<60} {status} in {:>5} ms: {}",
            case.what,
            started.elapsed().as_millis(),
            body.trim()
        );
        if status != case.status || !body.contains(case.message) {
            failures.push(format!(
                "{}: expected {} with {:?}, got {status}: {body}",
                case.what, case.status, case.message
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Only the valid alert (sent once, with replaced bytes) made a report.
    // A new report is applied first and counted by the status write after it.
    let found = wait_for_reports(&client, ns.name(), "the one report, counted", |r| {
        !r.is_empty() && count(&r[0]) > 0
    })
    .await?;
    assert_eq!(found.len(), 1);
    assert_eq!(count(&found[0]), 1);
    // The intake is still answering after all of it.
    let mut intake = operator.client(Some(&tokens.token));
    assert_eq!(intake.post_alert(good).await?.status.as_u16(), 202);
    operator.stop().await
}

#[tokio::test]
async fn a_client_sending_one_byte_a_second_is_cut_off() -> anyhow::Result<()> {
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "dribble").await?;
    let operator = Operator::start(
        cp,
        ns.name(),
        &[
            "--intake-allow-unauthenticated",
            "--intake-read-timeout",
            "3s",
        ],
    )
    .await?;
    let good = serde_json::to_vec(&shell_alert(ns.name(), "web-7d9f8b6c5d-x2k4q", "worker-1"))?;

    // Headers, one byte a second: the connection is closed, well before the
    // request could end (it would take minutes).
    let headers = request(
        "POST",
        &[("Content-Type", "application/json".into())],
        &good,
    );
    let started = Instant::now();
    let mut stream = TcpStream::connect(operator.intake).await?;
    let mut closed = false;
    for byte in headers.iter().take(120) {
        if stream.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut probe = [0u8; 256];
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => {
                closed = true;
                break;
            }
            Err(_) => {}
        }
    }
    let headers_cut = started.elapsed();
    eprintln!("one byte a second in the headers: cut after {headers_cut:?}");
    assert!(closed, "a client dribbling headers was never cut off");
    assert!(headers_cut < Duration::from_secs(60));

    // Headers at once, the body one byte a second: 408 once the read timeout passes.
    let (head, body) = headers.split_at(headers.len() - good.len());
    let started = Instant::now();
    let mut stream = TcpStream::connect(operator.intake).await?;
    stream.write_all(head).await?;
    let mut answer = Vec::new();
    for byte in body.iter().take(120) {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            Ok(_) => break,
            Err(_) => {}
        }
    }
    let text = String::from_utf8_lossy(&answer);
    eprintln!(
        "one byte a second in the body: {:?} after {:?}",
        text.lines().next(),
        started.elapsed()
    );
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("did not arrive within"), "{text}");

    // Meanwhile and after, others are answered.
    let mut intake = operator.client(None);
    assert_eq!(intake.post_alert(good).await?.status.as_u16(), 202);
    operator.stop().await
}

#[tokio::test]
async fn two_thousand_idle_connections_do_not_stop_the_intake() -> anyhow::Result<()> {
    const IDLE: usize = 2000;
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "idle").await?;
    let operator = Operator::start(
        cp,
        ns.name(),
        &[
            "--intake-allow-unauthenticated",
            "--intake-read-timeout",
            "5s",
            "--intake-max-connections",
            "2500",
        ],
    )
    .await?;
    let good = serde_json::to_vec(&shell_alert(ns.name(), "web-7d9f8b6c5d-x2k4q", "worker-1"))?;
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(operator.intake).await?);
    }
    // While they are open, a sender is answered at once.
    let mut intake = operator.client(None);
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(intake.post_alert(good.clone()).await?.status.as_u16(), 202);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // And the server closes every idle one after the read timeout.
    let started = Instant::now();
    let mut open = 0;
    for mut stream in idle {
        let mut buf = [0u8; 64];
        let left = Duration::from_secs(30).saturating_sub(started.elapsed());
        match tokio::time::timeout(left.max(Duration::from_millis(10)), stream.read(&mut buf)).await
        {
            Ok(_) => {}
            Err(_) => open += 1,
        }
    }
    eprintln!(
        "{IDLE} idle connections: {open} still open {:?} later",
        started.elapsed()
    );
    assert_eq!(open, 0, "idle connections were kept open");
    wait_for_reports(&client, ns.name(), "20 alerts counted", |r| {
        r.len() == 1 && count(&r[0]) == 20
    })
    .await?;
    operator.stop().await
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_and_the_intake_recovers() -> anyhow::Result<()> {
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "over-limit").await?;
    let operator = Operator::start(
        cp,
        ns.name(),
        &[
            "--intake-allow-unauthenticated",
            "--intake-read-timeout",
            "2s",
            "--intake-max-connections",
            "200",
        ],
    )
    .await?;
    let good = serde_json::to_vec(&shell_alert(ns.name(), "web-7d9f8b6c5d-x2k4q", "worker-1"))?;
    let mut idle = Vec::new();
    for _ in 0..400 {
        idle.push(TcpStream::connect(operator.intake).await?);
    }
    // Once the idle ones time out, senders are answered again, without a restart.
    let url = operator.url();
    let started = Instant::now();
    peregrine_testenv::poll_until("an alert accepted", Duration::from_secs(30), || {
        let (url, good) = (url.clone(), good.clone());
        async move {
            let mut c = IntakeClient::new(&url, None, &TlsFiles::default())?;
            Ok::<_, anyhow::Error>(
                matches!(c.post_alert(good).await, Ok(a) if a.status.as_u16() == 202),
            )
        }
    })
    .await?;
    eprintln!(
        "400 idle connections over a limit of 200: answered again after {:?}",
        started.elapsed()
    );
    drop(idle);
    operator.stop().await
}

#[tokio::test]
async fn expired_and_foreign_client_certificates_are_refused() -> anyhow::Result<()> {
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "certs").await?;
    let pki = Pki::new("intake")?;
    let (server_crt, server_key) = pki.leaf("intake", true, false)?;
    let (falco_crt, falco_key) = pki.leaf("falco", false, false)?;
    let (expired_crt, expired_key) = pki.leaf("falco-expired", false, true)?;
    let stranger = Pki::new("stranger")?;
    let (stranger_crt, stranger_key) = stranger.leaf("falco", false, false)?;
    let operator = Operator::start(
        cp,
        ns.name(),
        &[
            "--intake-tls-cert",
            &server_crt.display().to_string(),
            "--intake-tls-key",
            &server_key.display().to_string(),
            "--intake-client-ca",
            &pki.ca().display().to_string(),
        ],
    )
    .await?;
    let url = format!("https://localhost:{}/", operator.intake.port());
    let alert = serde_json::to_vec(&shell_alert(ns.name(), "web-7d9f8b6c5d-x2k4q", "worker-1"))?;
    let with = |cert: Option<PathBuf>, key: Option<PathBuf>| {
        IntakeClient::new(
            &url,
            None,
            &TlsFiles {
                ca: Some(pki.ca()),
                cert,
                key,
            },
        )
    };
    let refused = [
        (
            "an expired client certificate",
            Some(expired_crt),
            Some(expired_key),
        ),
        (
            "a client certificate from another CA",
            Some(stranger_crt),
            Some(stranger_key),
        ),
        ("no client certificate", None, None),
    ];
    for (what, cert, key) in refused {
        let result = with(cert, key)?.post_alert(alert.clone()).await;
        assert!(
            !matches!(&result, Ok(a) if a.status.is_success()),
            "{what} was accepted"
        );
        eprintln!(
            "{what}: {}",
            match &result {
                Ok(a) => format!("{} {}", a.status, a.body.trim()),
                Err(e) => format!("refused in the handshake: {e}"),
            }
        );
    }
    // Plain HTTP on the TLS port is no way in either.
    let (status, _) = exchange(operator.intake, &request("POST", &[], &alert))
        .await
        .unwrap_or((0, String::new()));
    assert_ne!(status, 202, "plain HTTP was accepted on the TLS port");

    let answer = with(Some(falco_crt), Some(falco_key))?
        .post_alert(alert)
        .await?;
    assert_eq!(answer.status.as_u16(), 202, "{}", answer.body);
    wait_for_reports(
        &client,
        ns.name(),
        "only the valid certificate's alert",
        |r| r.len() == 1 && count(&r[0]) == 1,
    )
    .await?;
    operator.stop().await
}
