//! Every upstream Falco rule gets a specific, well-formed answer from the knowledge.

#[path = "support/catalog.rs"]
mod catalog;

use catalog::{CatalogRule, alert_body, allowed_fields, catalog};
use peregrine::analysis::{self, Context, PodContext, render};
use peregrine::crd::{Analysis, Basis, MitigationCategory, WorkloadRef};
use peregrine::falco;
use peregrine::knowledge::{self, Knowledge, technique_id};
use std::collections::BTreeMap;

fn kb() -> &'static Knowledge {
    knowledge::builtin().expect("knowledge loads")
}

fn context() -> Context {
    Context {
        pod: Some(PodContext {
            labels: BTreeMap::from([
                ("app".to_string(), "web".to_string()),
                ("pod-template-hash".to_string(), "7d9f8b6c5d".to_string()),
            ]),
            workload: Some(WorkloadRef {
                kind: "Deployment".into(),
                name: "web".into(),
            }),
            node: Some("worker-1".into()),
            ..PodContext::default()
        }),
        ..Context::default()
    }
}

fn analyse(rule: &CatalogRule, ctx: &Context) -> Analysis {
    let alert = falco::parse(&alert_body(rule)).unwrap_or_else(|e| panic!("{}: {e}", rule.rule));
    let mut subject = falco::subject_of(&alert);
    subject.workload = ctx.pod.as_ref().and_then(|p| p.workload.clone());
    analysis::analyze(&alert, &subject, ctx, kb())
}

#[test]
fn every_catalog_rule_has_knowledge_and_every_entry_names_a_catalog_rule() {
    let rules = catalog();
    assert_eq!(rules.len(), 242);
    let missing: Vec<&str> = rules
        .iter()
        .filter(|r| kb().rule(&r.rule).is_none())
        .map(|r| r.rule.as_str())
        .collect();
    assert!(missing.is_empty(), "no knowledge for: {missing:#?}");
    let stale: Vec<&str> = kb()
        .rule_names()
        .filter(|name| !rules.iter().any(|r| r.rule == *name))
        .collect();
    assert!(
        stale.is_empty(),
        "knowledge for rules not in the catalog: {stale:#?}"
    );
}

#[test]
fn every_catalog_rule_is_answered_specifically_with_containment_and_tuning() {
    let mut failures = Vec::new();
    for rule in catalog() {
        for ctx in [Context::default(), context()] {
            let a = analyse(&rule, &ctx);
            let mut problems = Vec::new();
            if a.basis != Basis::Rule {
                problems.push(format!("basis {:?}", a.basis));
            }
            let ids: Vec<&str> = a
                .mitre
                .iter()
                .filter_map(|m| m.technique_id.as_deref())
                .collect();
            for tag in &rule.tags {
                if let Some(id) = technique_id(tag)
                    && !ids.contains(&id)
                {
                    problems.push(format!("technique {id} of the tags is missing"));
                }
            }
            if a.mitigations.len() < 3 {
                problems.push(format!("{} mitigations", a.mitigations.len()));
            }
            let has = |c| a.mitigations.iter().any(|m| m.category == c);
            if !has(MitigationCategory::Contain) {
                problems.push("no Contain step".into());
            }
            let tune = a
                .mitigations
                .iter()
                .find(|m| m.category == MitigationCategory::Tune);
            match tune.and_then(|t| t.manifest.as_deref()) {
                Some(yaml) => problems.extend(check_exception(&rule, yaml)),
                None => problems.push("no Tune step with an exception".into()),
            }
            if a.summary.is_empty()
                || a.possible_misuse.is_empty()
                || a.false_positive_hints.is_empty()
            {
                problems.push("empty summary, misuse or false-positive hints".into());
            }
            if !problems.is_empty() {
                failures.push(format!("{}: {}", rule.rule, problems.join("; ")));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The exception is valid Falco YAML naming only the rule's fields, with matching arity.
fn check_exception(rule: &CatalogRule, yaml: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let doc: serde_json::Value = match serde_saphyr::from_str(yaml) {
        Ok(doc) => doc,
        Err(e) => return vec![format!("exception is not YAML: {e}")],
    };
    let item = &doc[0];
    if item["rule"] != rule.rule.as_str() {
        problems.push("exception names another rule".into());
    }
    if item["override"]["exceptions"] != "append" {
        problems.push("exception does not append".into());
    }
    let exc = &item["exceptions"][0];
    let fields: Vec<&str> = exc["fields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .collect();
    let comps = exc["comps"].as_array().map(Vec::len).unwrap_or(0);
    let allowed = allowed_fields(rule);
    for f in &fields {
        if !allowed.iter().any(|a| a == f) {
            problems.push(format!("exception field {f} is not a field of the rule"));
        }
    }
    if fields.is_empty() || comps != fields.len() {
        problems.push(format!(
            "exception arity: {} fields, {comps} comps",
            fields.len()
        ));
    }
    for row in exc["values"].as_array().into_iter().flatten() {
        if row.as_array().map(Vec::len) != Some(fields.len()) {
            problems.push("exception values row arity differs from fields".into());
        }
    }
    problems
}

#[test]
fn knowledge_commands_use_only_fields_of_their_rule_and_never_inside_quotes() {
    let mut failures = Vec::new();
    for rule in catalog() {
        let Some(k) = kb().rule(&rule.rule) else {
            continue;
        };
        let allowed = allowed_fields(&rule);
        for m in &k.mitigations {
            for c in &m.commands {
                if render::placeholder_inside_quotes(c) {
                    failures.push(format!("{}: placeholder inside quotes: {c}", rule.rule));
                }
                for p in render::placeholders(c) {
                    let ok = matches!(
                        p,
                        "namespace"
                            | "pod"
                            | "container"
                            | "node"
                            | "image"
                            | "workload_kind"
                            | "workload_name"
                    ) || p
                        .strip_prefix("field:")
                        .is_some_and(|f| allowed.iter().any(|a| a == f));
                    if !ok {
                        failures.push(format!("{}: unknown placeholder {{{p}}} in {c}", rule.rule));
                    }
                }
            }
        }
        for f in &k.findings {
            if !allowed.contains(&f.field) {
                failures.push(format!(
                    "{}: finding field {} is not a field of the rule",
                    rule.rule, f.field
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn syscall_answers_carry_commands_for_the_alerts_own_pod() {
    let mut without = Vec::new();
    for rule in catalog().iter().filter(|r| r.source == "syscall") {
        let a = analyse(rule, &context());
        let commands: Vec<&String> = a.mitigations.iter().flat_map(|m| &m.commands).collect();
        let targeted = commands
            .iter()
            .any(|c| (c.contains("-n shop") && c.contains("web")) || c.contains("worker-1"));
        if !targeted {
            without.push(rule.rule.as_str().to_string());
        }
    }
    assert!(
        without.is_empty(),
        "no command aimed at the alert's pod or node: {without:#?}"
    );
}

#[test]
fn an_unknown_rule_with_mitre_tags_is_answered_from_its_tactics() {
    let body = serde_json::json!({
        "rule": "Acme custom: curl to paste site",
        "priority": "Warning",
        "source": "syscall",
        "tags": ["mitre_exfiltration", "T1567", "custom"],
        "output": "curl to paste site",
        "output_fields": {"proc.name": "curl", "k8s.ns.name": "shop", "k8s.pod.name": "web-1",
                          "container.image.repository": "registry.example.com/shop/web"}
    });
    let alert = falco::parse(&serde_json::to_vec(&body).unwrap()).unwrap();
    let a = analysis::analyze(
        &alert,
        &falco::subject_of(&alert),
        &Context::default(),
        kb(),
    );
    assert_eq!(a.basis, Basis::Tags);
    assert!(
        a.rule_description.contains("Exfiltration"),
        "{}",
        a.rule_description
    );
    let t = &a.mitre[0];
    assert_eq!(t.technique_id.as_deref(), Some("T1567"));
    assert_eq!(t.tactic, "Exfiltration");
    assert!(
        a.mitigations
            .iter()
            .any(|m| m.category == MitigationCategory::Contain)
    );
    let tune = a
        .mitigations
        .iter()
        .find(|m| m.category == MitigationCategory::Tune)
        .unwrap();
    assert!(
        tune.manifest
            .as_deref()
            .unwrap()
            .contains("registry.example.com/shop/web")
    );
}

#[test]
fn an_unknown_rule_without_tags_gets_the_generic_answer_of_its_source() {
    let body = serde_json::json!({
        "rule": "Acme: odd audit call",
        "priority": "Notice",
        "source": "k8s_audit",
        "output": "odd",
        "output_fields": {"ka.user.name": "bob", "ka.target.namespace": "data", "ka.verb": "patch"}
    });
    let alert = falco::parse(&serde_json::to_vec(&body).unwrap()).unwrap();
    let a = analysis::analyze(
        &alert,
        &falco::subject_of(&alert),
        &Context::default(),
        kb(),
    );
    assert_eq!(a.basis, Basis::Generic);
    assert!(a.rule_description.contains("Kubernetes API request"));
    assert!(
        a.mitigations
            .iter()
            .flat_map(|m| &m.commands)
            .any(|c| c.contains("--as bob"))
    );
}
