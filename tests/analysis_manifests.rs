//! Every manifest the analysis emits is accepted by the real API server
//! (`kubectl apply --dry-run=server`), for alerts of every source.

#[path = "support/catalog.rs"]
mod catalog;

use anyhow::{Context as _, Result, ensure};
use catalog::{allowed_fields, catalog, sample_value};
use peregrine::analysis::{self, Context, PodContext};
use peregrine::crd::{MitigationCategory, WorkloadRef};
use peregrine::falco;
use peregrine_testenv::{ControlPlane, TestNamespace};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// The alert body for a catalog rule, with its namespace fields set to `namespace`.
fn body_in(rule: &catalog::CatalogRule, namespace: &str) -> Vec<u8> {
    let mut fields = Map::new();
    for f in allowed_fields(rule) {
        let v = match f.as_str() {
            "k8s.ns.name" | "ka.target.namespace" => json!(namespace),
            other => sample_value(other),
        };
        fields.insert(f, v);
    }
    serde_json::to_vec(&json!({
        "hostname": "worker-1", "output": rule.output, "output_fields": Value::Object(fields),
        "priority": rule.priority, "rule": rule.rule, "source": rule.source, "tags": rule.tags,
    }))
    .expect("serializes")
}

#[tokio::test]
async fn every_emitted_manifest_is_accepted_by_the_api_server() -> Result<()> {
    let cp = ControlPlane::shared();
    let client = cp.client().await?;
    let ns = TestNamespace::create(&client, "manifests").await?;
    let kb = peregrine::knowledge::builtin().map_err(|e| anyhow::anyhow!("{e}"))?;

    let with_labels = Context {
        pod: Some(PodContext {
            labels: BTreeMap::from([
                ("app".into(), "web".into()),
                ("pod-template-hash".into(), "7d9f8b6c5d".into()),
            ]),
            workload: Some(WorkloadRef {
                kind: "Deployment".into(),
                name: "web".into(),
            }),
            ..PodContext::default()
        }),
        ..Context::default()
    };
    let mut manifests: BTreeSet<String> = BTreeSet::new();
    let mut per_source: BTreeMap<String, usize> = BTreeMap::new();
    for rule in catalog() {
        let alert = falco::parse(&body_in(&rule, ns.name()))?;
        for ctx in [&Context::default(), &with_labels] {
            let mut subject = falco::subject_of(&alert);
            subject.workload = ctx.pod.as_ref().and_then(|p| p.workload.clone());
            let a = analysis::analyze(&alert, &subject, ctx, kb);
            for m in a
                .mitigations
                .iter()
                .filter(|m| m.category != MitigationCategory::Tune)
            {
                if let Some(yaml) = &m.manifest
                    && manifests.insert(yaml.clone())
                {
                    *per_source.entry(rule.source.clone()).or_default() += 1;
                }
            }
        }
    }
    ensure!(
        manifests.len() >= 5,
        "expected several distinct manifests, got {}",
        manifests.len()
    );
    for source in ["syscall", "k8s_audit"] {
        ensure!(
            per_source.get(source).copied().unwrap_or(0) > 0,
            "no manifest for {source} alerts: {per_source:?}"
        );
    }

    let dir = tempdir()?;
    for (i, yaml) in manifests.iter().enumerate() {
        std::fs::write(dir.join(format!("{i:03}.yaml")), yaml)?;
    }
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .args(["apply", "--dry-run=server", "-f"])
        .arg(&dir)
        .output()
        .context("running kubectl")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "the API server refused a manifest:\n{stderr}\n{stdout}"
    );
    let applied = stdout
        .lines()
        .filter(|l| l.contains("(server dry run)"))
        .count();
    let objects: usize = manifests
        .iter()
        .map(|m| m.matches("\nkind: ").count() + usize::from(m.starts_with("kind: ")))
        .sum();
    ensure!(
        applied >= objects,
        "only {applied} of {objects} objects were dry-run applied:\n{stdout}"
    );
    println!(
        "{} distinct manifests ({objects} objects) accepted; by source: {per_source:?}",
        manifests.len()
    );
    ns.delete(&client).await?;
    Ok(())
}

fn tempdir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("peregrine-manifests-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
