//! `peregrine analyze` prints the AlertReport an alert would become, offline.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn payload(name: &str) -> String {
    format!("{}/tests/payloads/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn analyze(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_peregrine"))
        .arg("analyze")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("peregrine runs");
    if let Some(body) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(body)
            .expect("writes");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("peregrine exits")
}

#[test]
fn yaml_output_is_the_alert_report_with_its_analysis() {
    let out = analyze(&[&payload("sidekick-ptrace.json")], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_saphyr::from_slice(&out.stdout).expect("YAML");
    assert_eq!(report["apiVersion"], "peregrine.dev/v1alpha1");
    assert_eq!(report["kind"], "AlertReport");
    assert_eq!(report["metadata"]["namespace"], "payments");
    assert!(
        report["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("ptrace-attached-to-process-")
    );
    assert_eq!(report["spec"]["subject"]["pod"], "api-5c8d7f9b4-qwz8n");
    let analysis = &report["status"]["analysis"];
    assert_eq!(analysis["basis"], "rule");
    assert_eq!(analysis["mitre"][0]["techniqueId"], "T1055.008");
    let cmds = analysis["mitigations"].to_string();
    assert!(cmds.contains("kubectl -n payments"), "{cmds}");
}

#[test]
fn json_from_stdin_with_context_uses_the_pods_labels() {
    let ctx = std::env::temp_dir().join(format!("peregrine-ctx-{}.yaml", std::process::id()));
    std::fs::write(&ctx, "pod:\n  labels: {app: web}\n  workload: {kind: Deployment, name: web}\n  privileged: true\n").unwrap();
    let body = std::fs::read(payload("shell-in-container-0.41.json")).unwrap();
    let out = analyze(
        &["-", "-o", "json", "--context", ctx.to_str().unwrap()],
        Some(&body),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["spec"]["subject"]["workload"]["name"], "web");
    let analysis = &report["status"]["analysis"];
    assert!(analysis["riskFactors"].to_string().contains("privileged"));
    let manifests: Vec<&str> = analysis["mitigations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["manifest"].as_str())
        .collect();
    assert!(
        manifests
            .iter()
            .any(|m| m.contains("kind: NetworkPolicy") && m.contains("app: web")),
        "{manifests:?}"
    );
}

#[test]
fn markdown_output_has_the_report_sections() {
    let out = analyze(&[&payload("k8s-audit-exec.json"), "-o", "markdown"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = String::from_utf8(out.stdout).unwrap();
    for section in [
        "## Summary",
        "## Detailed analysis",
        "## Possible misuse",
        "## Mitigation strategies",
        "## Conclusion",
    ] {
        assert!(md.contains(section), "{section} missing:\n{md}");
    }
    assert!(md.contains("alice@example.com"));
}

#[test]
fn a_bad_alert_fails_with_the_reason() {
    let out = analyze(&["-"], Some(b"09:12:44: Notice A shell was spawned"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("json_output: true"), "{err}");
    let out = analyze(&["/nonexistent/alert.json"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read alert file"));
}
