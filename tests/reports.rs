//! Alerts posted to the intake become aggregated AlertReports in the right
//! namespace, against the real local control plane.

#[path = "support/operator.rs"]
mod support;

use kube::ResourceExt;
use peregrine::crd::WorkloadRef;
use peregrine_testenv::{TestNamespace, bind_pod, create_node, unique_name};
use support::*;

#[tokio::test]
async fn real_alerts_posted_with_a_token_become_reports_with_the_right_subject()
-> anyhow::Result<()> {
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "subject").await?;
    let node = unique_name("worker");
    create_node(&client, &node).await?;
    let pods = deployment(&client, ns.name(), "web", 2).await?;
    for pod in &pods {
        bind_pod(&client, ns.name(), pod, &node).await?;
    }
    let tokens = TokenFile::new();
    let operator = Operator::start(cp, ns.name(), &["--intake-token-file", &tokens.arg()]).await?;

    let mut intake = operator.client(Some(&tokens.token));
    for (i, pod) in pods.iter().enumerate() {
        for _ in 0..=i {
            let answer = post(&mut intake, &shell_alert(ns.name(), pod, &node)).await?;
            assert_eq!(answer.status.as_u16(), 202, "{}", answer.body);
        }
    }

    let found = wait_for_reports(&client, ns.name(), "one report counting 3 alerts", |r| {
        r.len() == 1 && count(&r[0]) == 3
    })
    .await?;
    let report = &found[0];
    let spec = &report.spec;
    assert_eq!(spec.rule, "Terminal shell in container");
    assert_eq!(spec.source, "syscall");
    assert_eq!(spec.subject.namespace.as_deref(), Some(ns.name()));
    assert_eq!(
        spec.subject.workload,
        Some(WorkloadRef {
            kind: "Deployment".into(),
            name: "web".into()
        }),
        "pods of one Deployment are one workload"
    );
    assert_eq!(spec.subject.node.as_deref(), Some(node.as_str()));
    assert_eq!(spec.subject.container.as_deref(), Some("web"));
    assert_eq!(
        spec.subject
            .process
            .as_ref()
            .and_then(|p| p.name.as_deref()),
        Some("bash")
    );
    assert_eq!(
        spec.event.output_fields["proc.exe_ino.ctime"],
        serde_json::json!("18446744073697073282"),
        "numbers beyond i64 are kept exact"
    );
    assert!(
        report
            .name_any()
            .starts_with("terminal-shell-in-container-")
    );
    assert!(report.name_any().len() <= 63);
    let labels = report.labels();
    assert_eq!(labels["peregrine.dev/rule"], "terminal-shell-in-container");
    assert_eq!(labels["peregrine.dev/workload-kind"], "Deployment");
    assert_eq!(labels["peregrine.dev/workload-name"], "web");
    assert!(labels.contains_key("peregrine.dev/severity"));

    let status = report.status.as_ref().expect("status");
    let involved = status.involved.as_ref().expect("involved");
    let mut involved_pods = involved.pods.clone();
    involved_pods.sort();
    let mut expected = pods.clone();
    expected.sort();
    assert_eq!(involved_pods, expected);
    assert_eq!(involved.nodes, vec![node.clone()]);
    assert!(!status.samples.is_empty() && status.samples.len() <= 5);
    let analysis = status.analysis.as_ref().expect("analysis filled");
    assert!(!analysis.summary.is_empty());
    let analyzed = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Analyzed")
        .expect("Analyzed condition");
    assert_eq!(analyzed.status, "True");
    assert_eq!(status.observed_generation, report.metadata.generation);
    let size = serde_json::to_vec(report)?.len();
    assert!(size < 32 * 1024, "report is {size} bytes");

    operator.stop().await
}

#[tokio::test]
async fn alerts_for_two_workloads_give_two_reports() -> anyhow::Result<()> {
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "two-workloads").await?;
    let web = deployment(&client, ns.name(), "web", 1).await?;
    let api = deployment(&client, ns.name(), "api", 1).await?;
    let tokens = TokenFile::new();
    let operator = Operator::start(cp, ns.name(), &["--intake-token-file", &tokens.arg()]).await?;
    let mut intake = operator.client(Some(&tokens.token));
    for _ in 0..4 {
        post(&mut intake, &shell_alert(ns.name(), &web[0], "worker-1")).await?;
    }
    for _ in 0..2 {
        post(&mut intake, &shell_alert(ns.name(), &api[0], "worker-1")).await?;
    }
    let found = wait_for_reports(&client, ns.name(), "two reports counting 4 and 2", |r| {
        let mut counts: Vec<u64> = r.iter().map(count).collect();
        counts.sort();
        counts == [2, 4]
    })
    .await?;
    let mut workloads: Vec<String> = found
        .iter()
        .filter_map(|r| r.spec.subject.workload.as_ref().map(|w| w.name.clone()))
        .collect();
    workloads.sort();
    assert_eq!(workloads, ["api", "web"]);
    operator.stop().await
}

#[tokio::test]
async fn a_host_level_alert_lands_in_the_operators_namespace() -> anyhow::Result<()> {
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let home = TestNamespace::create(&client, "operator-home").await?;
    let tokens = TokenFile::new();
    let operator =
        Operator::start(cp, home.name(), &["--intake-token-file", &tokens.arg()]).await?;
    let node = unique_name("host");
    let mut intake = operator.client(Some(&tokens.token));
    let answer = post(&mut intake, &host_alert(&node)).await?;
    assert_eq!(answer.status.as_u16(), 202, "{}", answer.body);
    assert!(
        answer.body.contains(home.name()),
        "the answer names the report: {}",
        answer.body
    );
    let found = wait_for_reports(&client, home.name(), "the host report", |r| {
        r.iter()
            .any(|r| r.spec.subject.node.as_deref() == Some(node.as_str()))
    })
    .await?;
    let report = found
        .iter()
        .find(|r| r.spec.subject.node.as_deref() == Some(node.as_str()))
        .expect("found");
    assert_eq!(report.spec.rule, "Write below etc");
    assert_eq!(report.spec.subject.namespace, None);
    assert_eq!(report.spec.subject.workload, None);
    assert_eq!(report.labels()["peregrine.dev/node"], node);
    operator.stop().await
}

#[tokio::test]
async fn a_new_incident_on_a_workload_is_correlated_into_the_earlier_ones() -> anyhow::Result<()> {
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "correlate").await?;
    let web = deployment(&client, ns.name(), "web", 1).await?;
    let tokens = TokenFile::new();
    let operator = Operator::start(cp, ns.name(), &["--intake-token-file", &tokens.arg()]).await?;
    let mut intake = operator.client(Some(&tokens.token));
    post(&mut intake, &shell_alert(ns.name(), &web[0], "worker-1")).await?;
    let first = wait_for_reports(&client, ns.name(), "the shell report", |r| r.len() == 1).await?;
    let shell_report = first[0].name_any();

    let mut read = shell_alert(ns.name(), &web[0], "worker-1");
    read["rule"] = serde_json::json!("Read sensitive file untrusted");
    read["priority"] = serde_json::json!("Warning");
    read["tags"] = serde_json::json!([
        "T1555",
        "container",
        "filesystem",
        "host",
        "maturity_stable",
        "mitre_credential_access"
    ]);
    read["output_fields"]["fd.name"] = serde_json::json!("/etc/shadow");
    post(&mut intake, &read).await?;

    let found = wait_for_reports(
        &client,
        ns.name(),
        "the shell report correlated with the new one",
        |r| {
            r.len() == 2
                && r.iter().any(|r| {
                    r.name_any() == shell_report
                        && r.status
                            .as_ref()
                            .and_then(|s| s.analysis.as_ref())
                            .is_some_and(|a| {
                                a.correlation
                                    .iter()
                                    .any(|c| c.rule == "Read sensitive file untrusted")
                            })
                })
        },
    )
    .await?;
    let newer = found
        .iter()
        .find(|r| r.name_any() != shell_report)
        .expect("second report");
    let correlation = &newer
        .status
        .as_ref()
        .and_then(|s| s.analysis.as_ref())
        .expect("analysis")
        .correlation;
    assert!(
        correlation.iter().any(|c| c.report == shell_report),
        "{correlation:?}"
    );

    // The severity label follows the analysis, which the new incident changed.
    wait_for_reports(
        &client,
        ns.name(),
        "severity labels matching the analyses",
        |r| {
            r.iter().all(|r| {
                let analysed = r
                    .status
                    .as_ref()
                    .and_then(|s| s.analysis.as_ref())
                    .map(|a| format!("{:?}", a.severity));
                analysed.as_deref() == r.labels().get("peregrine.dev/severity").map(String::as_str)
            })
        },
    )
    .await?;
    operator.stop().await
}

#[tokio::test]
async fn two_replicas_counting_one_incident_lose_no_increment() -> anyhow::Result<()> {
    let cp = control_plane().await?;
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "replicas").await?;
    let tokens = TokenFile::new();
    let token_path = tokens.arg();
    let args = [
        "--intake-token-file",
        token_path.as_str(),
        "--flush-interval",
        "100ms",
    ];
    let one = Operator::start(cp, ns.name(), &args).await?;
    let two = Operator::start(cp, ns.name(), &args).await?;
    let alert = serde_json::to_vec(&shell_alert(ns.name(), "web-7d9f8b6c5d-x2k4q", "worker-1"))?;
    let send = |operator: &Operator| {
        let mut intake = operator.client(Some(&tokens.token));
        let alert = alert.clone();
        async move {
            for _ in 0..300 {
                let answer = intake.post_alert(alert.clone()).await?;
                anyhow::ensure!(answer.status.as_u16() == 202, "{}", answer.body);
                // Spread the alerts over several flushes of both replicas.
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            Ok::<_, anyhow::Error>(())
        }
    };
    let (a, b) = tokio::join!(send(&one), send(&two));
    a?;
    b?;
    let found = wait_for_reports(&client, ns.name(), "one report counting 600", |r| {
        r.len() == 1 && count(&r[0]) == 600
    })
    .await?;
    assert_eq!(found.len(), 1, "both replicas converge on one object");
    for (name, operator) in [("one", &one), ("two", &two)] {
        let metrics = metrics_of(operator).await?;
        let conflicts: Vec<&str> = metrics
            .lines()
            .filter(|l| l.contains("result=\"conflict\""))
            .collect();
        eprintln!("replica {name}: {conflicts:?}");
    }
    one.stop().await?;
    two.stop().await?;
    assert_eq!(count(&reports(&client, ns.name()).await?[0]), 600);
    Ok(())
}
