//! Alert + context → analysis: what it means, how bad it is, what to do.
//!
//! Pure and fast: no IO, no cluster. The operator calls it with what its
//! caches know; `peregrine analyze` calls it with what a file says.

pub mod context;
pub mod manifests;
pub mod markdown;
pub mod render;
pub mod risk;
pub mod tuning;

pub use context::{Context, PodContext, RelatedIncident};

use crate::crd::{
    Analysis, Basis, CorrelatedReport, Finding, Mitigation, MitigationCategory, MitreTechnique,
    Subject,
};
use crate::falco::{Alert, value_text};
use crate::knowledge::{
    Knowledge, MitigationSpec, Mitre, RuleKnowledge, TacticKnowledge, parse_tags,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use render::Values;

/// Longest value shown in a finding or the summary; the rest is cut.
const MAX_VALUE: usize = 512;

/// Analyses one alert.
pub fn analyze(alert: &Alert, subject: &Subject, ctx: &Context, kb: &Knowledge) -> Analysis {
    let tagged = parse_tags(&kb.mitre, &alert.tags);
    let answer = Answer::choose(alert, &tagged.tactics, kb);
    let risk = risk::assess(alert.priority, subject, ctx);
    let mitre = mitre(kb, &tagged, answer.rule);
    let node = subject
        .node
        .as_deref()
        .or_else(|| ctx.pod.as_ref().and_then(|p| p.node.as_deref()));
    let values = Values {
        subject,
        node,
        fields: &alert.output_fields,
    };
    let inputs = manifests::Inputs {
        subject,
        pod: ctx.pod.as_ref(),
        fields: &alert.output_fields,
    };
    let mut mitigations: Vec<Mitigation> = answer
        .mitigations
        .iter()
        .map(|spec| mitigation(spec, &values, &inputs))
        .collect();
    if let Some(tune) = tune(alert, &answer) {
        mitigations.push(tune);
    }
    let correlation = correlate(kb, ctx);
    Analysis {
        summary: summary(alert, subject, ctx, &answer, &risk, &correlation),
        rule_description: answer.meaning.clone(),
        severity: risk.severity,
        risk_score: risk.score,
        risk_factors: risk.factors,
        mitre,
        findings: findings(alert, subject, ctx, answer.rule),
        possible_misuse: answer.misuse.clone(),
        false_positive_hints: answer.false_positives.clone(),
        mitigations,
        basis: answer.basis,
        correlation,
    }
}

/// The knowledge that answers an alert, whatever its level.
struct Answer<'k> {
    basis: Basis,
    rule: Option<&'k RuleKnowledge>,
    meaning: String,
    misuse: Vec<String>,
    false_positives: Vec<String>,
    mitigations: Vec<MitigationSpec>,
    /// Exception name and (field, comparison) pairs.
    exception: Option<(String, Vec<(String, String)>)>,
}

impl<'k> Answer<'k> {
    fn choose(alert: &Alert, tactics: &[String], kb: &'k Knowledge) -> Answer<'k> {
        if let Some(rule) = kb.rule(&alert.rule) {
            let e = &rule.exception;
            return Answer {
                basis: Basis::Rule,
                rule: Some(rule),
                meaning: rule.detects.trim().to_string(),
                misuse: trimmed(&rule.misuse),
                false_positives: trimmed(&rule.false_positives),
                mitigations: rule.mitigations.clone(),
                exception: Some((
                    e.name.clone(),
                    e.fields
                        .iter()
                        .enumerate()
                        .map(|(i, f)| (f.clone(), e.comp(i).to_string()))
                        .collect(),
                )),
            };
        }
        let generic = kb.generic(&alert.source);
        let exception = (!generic.exception_fields.is_empty()).then(|| {
            (
                format!(
                    "peregrine_{}",
                    crate::names::slug(&alert.rule).replace('-', "_")
                ),
                generic
                    .exception_fields
                    .iter()
                    .map(|f| (f.clone(), "=".to_string()))
                    .collect(),
            )
        });
        let known: Vec<(&String, &TacticKnowledge)> = tactics
            .iter()
            .filter_map(|t| kb.tactic(t).map(|k| (t, k)))
            .collect();
        let Some((_, primary)) = known.first() else {
            return Answer {
                basis: Basis::Generic,
                rule: None,
                meaning: format!("This rule {}.", generic.meaning),
                misuse: generic.misuse.clone(),
                false_positives: generic.false_positives.clone(),
                mitigations: generic.mitigations.clone(),
                exception,
            };
        };
        let names: Vec<&str> = known
            .iter()
            .filter_map(|(t, _)| kb.mitre.tactics.get(t.as_str()).map(|i| i.name.as_str()))
            .collect();
        let mut mitigations = primary.mitigations.clone();
        let mut misuse = primary.misuse.clone();
        let mut false_positives = primary.false_positives.clone();
        for (_, other) in known.iter().skip(1) {
            for m in &other.mitigations {
                if !mitigations.iter().any(|have| have.title == m.title) {
                    mitigations.push(m.clone());
                }
            }
            misuse.extend(other.misuse.iter().cloned());
            false_positives.extend(other.false_positives.iter().cloned());
        }
        mitigations.sort_by_key(|m| m.category);
        Answer {
            basis: Basis::Tags,
            rule: None,
            meaning: format!(
                "Peregrine has no knowledge of this rule itself; its tags place it under {}: behaviour that {}.",
                names.join(" and "),
                primary.meaning
            ),
            misuse,
            false_positives,
            mitigations,
            exception,
        }
    }
}

fn trimmed(list: &[String]) -> Vec<String> {
    list.iter().map(|s| s.trim().to_string()).collect()
}

fn mitre(
    kb: &Knowledge,
    tagged: &crate::knowledge::TaggedMitre,
    rule: Option<&RuleKnowledge>,
) -> Vec<MitreTechnique> {
    let tactic_entry = |key: &str| kb.mitre.tactics.get(key);
    let mut out: Vec<MitreTechnique> = Vec::new();
    for id in &tagged.techniques {
        let info = kb.mitre.techniques.get(id).or_else(|| {
            // A sub-technique unknown to the table still has a known parent.
            id.split('.')
                .next()
                .and_then(|p| kb.mitre.techniques.get(p))
        });
        let tactic_key = match (tagged.tactics.as_slice(), info) {
            ([only], _) => Some(only.clone()),
            (many, Some(info)) if many.contains(&info.tactic) => Some(info.tactic.clone()),
            ([first, ..], _) => Some(first.clone()),
            ([], Some(info)) => Some(info.tactic.clone()),
            ([], None) => None,
        };
        let tactic = tactic_key.as_deref().and_then(tactic_entry);
        out.push(MitreTechnique {
            tactic: tactic
                .map(|t| t.name.clone())
                .unwrap_or_else(|| "Unknown".into()),
            tactic_id: tactic.map(|t| t.id.clone()),
            technique_id: Some(id.clone()),
            technique_name: kb.mitre.techniques.get(id).map(|i| i.name.clone()),
        });
    }
    for key in &tagged.tactics {
        let Some(t) = tactic_entry(key) else { continue };
        if !out
            .iter()
            .any(|m| m.tactic_id.as_deref() == Some(t.id.as_str()))
        {
            out.push(MitreTechnique {
                tactic: t.name.clone(),
                tactic_id: Some(t.id.clone()),
                technique_id: None,
                technique_name: None,
            });
        }
    }
    for extra in rule.map(|r| r.techniques.as_slice()).unwrap_or_default() {
        if out
            .iter()
            .any(|m| m.technique_id.as_deref() == Some(extra.id.as_str()))
        {
            continue;
        }
        let tactic = tactic_entry(&extra.tactic);
        out.push(MitreTechnique {
            tactic: tactic
                .map(|t| t.name.clone())
                .unwrap_or_else(|| extra.tactic.clone()),
            tactic_id: tactic.map(|t| t.id.clone()),
            technique_id: Some(extra.id.clone()),
            technique_name: Some(extra.name.clone()),
        });
    }
    out
}

fn mitigation(
    spec: &MitigationSpec,
    values: &Values<'_>,
    inputs: &manifests::Inputs<'_>,
) -> Mitigation {
    let mut commands: Vec<String> = Vec::new();
    let mut manifest = None;
    if let Some(generated) = spec
        .manifest
        .and_then(|kind| manifests::generate(kind, inputs))
    {
        // Labelling the pod must come before a policy that selects the label.
        commands.extend(generated.prerequisite);
        manifest = Some(generated.yaml);
    }
    commands.extend(spec.commands.iter().filter_map(|c| render::fill(c, values)));
    Mitigation {
        category: spec.category,
        title: spec.title.trim().to_string(),
        description: spec.description.trim().to_string(),
        commands,
        manifest,
    }
}

fn tune(alert: &Alert, answer: &Answer<'_>) -> Option<Mitigation> {
    let (name, pairs) = answer.exception.as_ref()?;
    let pairs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(f, c)| (f.as_str(), c.as_str()))
        .collect();
    let rule_name = alert.rule.as_str();
    match tuning::exception(rule_name, name, &pairs, &alert.output_fields) {
        Some(t) => {
            let mut description = format!(
                "If this alert is expected (see the false-positive hints), add this exception to a rules file that Falco loads after its default rules (for example falco_rules.local.yaml, or customRules in the Falco Helm chart). It appends to the rule's exceptions and silences only alerts where {} match this alert's values.",
                pairs
                    .iter()
                    .filter(|(f, _)| !t.left_out.iter().any(|l| l == f))
                    .map(|(f, _)| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if !t.left_out.is_empty() {
                description.push_str(&format!(
                    " This alert had no value for {}, so the exception leaves {} out: add {} to narrow it.",
                    t.left_out.join(", "),
                    if t.left_out.len() == 1 { "it" } else { "them" },
                    if t.left_out.len() == 1 { "it" } else { "them" },
                ));
            }
            Some(Mitigation {
                category: MitigationCategory::Tune,
                title: "Tune the rule with a Falco exception".into(),
                description,
                commands: Vec::new(),
                manifest: Some(t.yaml),
            })
        }
        None => Some(Mitigation {
            category: MitigationCategory::Tune,
            title: "Tune the rule with a Falco exception".into(),
            description: format!(
                "If this alert is expected, add an exception to the rule on {} with the values of the benign case; this alert carried none of them, so no ready-made exception is given.",
                pairs
                    .iter()
                    .map(|(f, _)| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            commands: Vec::new(),
            manifest: None,
        }),
    }
}

/// Standard facts first known to a responder, then the rule's own fields, then the cluster's.
fn findings(
    alert: &Alert,
    subject: &Subject,
    ctx: &Context,
    rule: Option<&RuleKnowledge>,
) -> Vec<Finding> {
    let mut out: Vec<Finding> = Vec::new();
    let mut push = |label: &str, value: Option<String>, field: Option<&str>| {
        let Some(value) = value else { return };
        if field.is_some() && out.iter().any(|f| f.field.as_deref() == field) {
            return;
        }
        out.push(Finding {
            label: label.to_string(),
            value: cut(&value),
            field: field.map(str::to_string),
        });
    };
    push("Time", alert.time.clone(), None);
    push("Rule", Some(alert.rule.clone()), None);
    push("Priority", Some(alert.priority.to_string()), None);
    push("Source", Some(alert.source.clone()), None);
    for spec in rule.map(|r| r.findings.as_slice()).unwrap_or_default() {
        push(&spec.label, alert.field(&spec.field), Some(&spec.field));
    }
    if rule.is_none() {
        // Nothing says which fields matter: show the first few that have a value.
        for (key, value) in alert.output_fields.iter().take(12) {
            push(key, value_text(value), Some(key));
        }
    }
    push("Namespace", subject.namespace.clone(), None);
    push("Pod", subject.pod.clone(), None);
    if let Some(w) = subject
        .workload
        .as_ref()
        .or(ctx.pod.as_ref().and_then(|p| p.workload.as_ref()))
    {
        push("Workload", Some(format!("{}/{}", w.kind, w.name)), None);
    }
    push(
        "Container",
        subject.container.clone(),
        Some("container.name"),
    );
    push(
        "Container id",
        subject.container_id.clone(),
        Some("container.id"),
    );
    push("Image", subject.image.clone(), None);
    push(
        "Node",
        subject
            .node
            .clone()
            .or_else(|| ctx.pod.as_ref().and_then(|p| p.node.clone())),
        None,
    );
    if let Some(user) = &subject.user {
        let who = match (&user.name, user.uid) {
            (Some(n), Some(uid)) => Some(format!("{n} (uid {uid})")),
            (Some(n), None) => Some(n.clone()),
            (None, Some(uid)) => Some(format!("uid {uid}")),
            (None, None) => None,
        };
        push("User", who, Some("user.name"));
    }
    if let Some(p) = &subject.process {
        push(
            "Process",
            p.exe_path.clone().or(p.name.clone()),
            Some("proc.exepath"),
        );
        push("Command line", p.cmdline.clone(), Some("proc.cmdline"));
        push("Parent process", p.parent.clone(), Some("proc.pname"));
    }
    push(
        "Parent command line",
        alert.field("proc.pcmdline"),
        Some("proc.pcmdline"),
    );
    if let Some(pod) = &ctx.pod {
        push("Service account", pod.service_account.clone(), None);
        let mut exposure = Vec::new();
        if pod.privileged {
            exposure.push("privileged".to_string());
        }
        for (on, name) in [
            (pod.host_pid, "hostPID"),
            (pod.host_network, "hostNetwork"),
            (pod.host_ipc, "hostIPC"),
        ] {
            if on {
                exposure.push(name.to_string());
            }
        }
        if !pod.added_capabilities.is_empty() {
            exposure.push(format!(
                "capabilities added: {}",
                pod.added_capabilities.join(", ")
            ));
        }
        if pod.runs_as_root {
            exposure.push("may run as root".into());
        }
        if pod.allow_privilege_escalation {
            exposure.push("allowPrivilegeEscalation".into());
        }
        if !pod.host_path_volumes.is_empty() {
            exposure.push(format!("hostPath: {}", pod.host_path_volumes.join(", ")));
        }
        if pod.internet_facing {
            exposure.push("exposed outside the cluster".into());
        }
        if !exposure.is_empty() {
            push("Pod security context", Some(exposure.join("; ")), None);
        }
    }
    if let Some(count) = ctx.occurrences.filter(|c| *c > 1) {
        push("Occurrences", Some(count.to_string()), None);
    }
    out
}

fn correlate(kb: &Knowledge, ctx: &Context) -> Vec<CorrelatedReport> {
    let mut related: Vec<(usize, CorrelatedReport)> = ctx
        .related
        .iter()
        .map(|r| {
            let tactics = parse_tags(&kb.mitre, &r.tags).tactics;
            let tactic = tactics
                .iter()
                .min_by_key(|t| Mitre::kill_chain_position(t))
                .cloned();
            let position = tactic
                .as_deref()
                .map(Mitre::kill_chain_position)
                .unwrap_or(usize::MAX);
            (
                position,
                CorrelatedReport {
                    report: r.report.clone(),
                    rule: r.rule.clone(),
                    tactic: tactic.and_then(|t| kb.mitre.tactics.get(&t).map(|i| i.name.clone())),
                    last_seen: r.last_seen.map(Time),
                },
            )
        })
        .collect();
    related.sort_by(|a, b| {
        a.0.cmp(&b.0).then_with(|| {
            a.1.last_seen
                .as_ref()
                .map(|t| t.0)
                .cmp(&b.1.last_seen.as_ref().map(|t| t.0))
        })
    });
    related.into_iter().map(|(_, r)| r).collect()
}

fn summary(
    alert: &Alert,
    subject: &Subject,
    ctx: &Context,
    answer: &Answer<'_>,
    risk: &risk::Risk,
    correlation: &[CorrelatedReport],
) -> String {
    let mut s = format!(
        "{} ({}) on {}",
        alert.rule,
        alert.priority,
        place(alert, subject, ctx)
    );
    if let Some(actor) = actor(subject) {
        s.push_str(": ");
        s.push_str(&actor);
    }
    s.push_str(". ");
    s.push_str(&first_sentence(&answer.meaning));
    let exposure = risk
        .factors
        .iter()
        .skip(1)
        .map(|f| f.split(':').next().unwrap_or(f))
        .collect::<Vec<_>>();
    if !exposure.is_empty() {
        s.push_str(&format!(
            " Risk {:?} ({}/100) because of {}.",
            risk.severity,
            risk.score,
            exposure.join(", ")
        ));
    } else {
        s.push_str(&format!(" Risk {:?} ({}/100).", risk.severity, risk.score));
    }
    if !correlation.is_empty() {
        let chain: Vec<String> = correlation.iter().map(|c| c.rule.clone()).collect();
        s.push_str(&format!(
            " Related incidents on the same workload: {}.",
            chain.join(" → ")
        ));
    }
    s
}

fn place(alert: &Alert, subject: &Subject, ctx: &Context) -> String {
    if let Some(service) = cloud_place(alert) {
        return service;
    }
    let workload = subject
        .workload
        .as_ref()
        .or(ctx.pod.as_ref().and_then(|p| p.workload.as_ref()));
    match (&subject.namespace, &subject.pod) {
        (Some(ns), Some(pod)) => match workload {
            Some(w) if w.kind != "Pod" => format!("pod {ns}/{pod} of {} {}", w.kind, w.name),
            _ => format!("pod {ns}/{pod}"),
        },
        (Some(ns), None) => format!("namespace {ns}"),
        _ => match (subject.container_id.as_deref(), subject.node.as_deref()) {
            (Some("host") | None, Some(node))
                if subject.container_id.is_some() || subject.process.is_some() =>
            {
                format!("node {node} (host, outside any container)")
            }
            (Some(id), node) if id != "host" => match node {
                Some(node) => format!("container {id} on node {node}"),
                None => format!("container {id}"),
            },
            (_, Some(node)) => format!("node {node}"),
            _ => "an unidentified host".to_string(),
        },
    }
}

/// Where a cloud or SaaS event happened, from its own fields.
fn cloud_place(alert: &Alert) -> Option<String> {
    let f = |k: &str| alert.field(k);
    let place = match alert.source.as_str() {
        "aws_cloudtrail" => match (f("ct.user.accountid"), f("ct.region")) {
            (Some(account), Some(region)) => format!("AWS account {account} ({region})"),
            (Some(account), None) => format!("AWS account {account}"),
            (None, Some(region)) => format!("AWS ({region})"),
            (None, None) => "AWS".to_string(),
        },
        "gcp_auditlog" => match f("gcp.projectId") {
            Some(project) => format!("GCP project {project}"),
            None => "GCP".to_string(),
        },
        "okta" => "Okta".to_string(),
        "github" => match (f("github.owner").or(f("github.org")), f("github.repo.name")) {
            (Some(owner), Some(repo)) => format!("GitHub repository {owner}/{repo}"),
            (Some(owner), None) => format!("GitHub organization {owner}"),
            _ => "GitHub".to_string(),
        },
        _ => return None,
    };
    Some(place)
}

fn actor(subject: &Subject) -> Option<String> {
    let process = subject.process.as_ref();
    let what = process.and_then(|p| p.cmdline.clone().or(p.name.clone()));
    let user = subject.user.as_ref().and_then(|u| u.name.clone());
    let parent = process.and_then(|p| p.parent.clone());
    match (what, user) {
        (Some(what), user) => {
            let mut s = format!("\"{}\"", cut_to(&what, 120));
            if let Some(user) = user {
                s.push_str(&format!(" run by {user}"));
            }
            if let Some(parent) = parent {
                s.push_str(&format!(" (parent {parent})"));
            }
            Some(s)
        }
        (None, Some(user)) => Some(format!("by {user}")),
        (None, None) => None,
    }
}

fn first_sentence(text: &str) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match text.find(". ") {
        Some(i) => text[..=i].to_string(),
        None if text.ends_with('.') => text,
        None => format!("{text}."),
    }
}

fn cut(value: &str) -> String {
    cut_to(value, MAX_VALUE)
}

fn cut_to(value: &str, max: usize) -> String {
    if value.chars().count() <= max {
        return value.to_string();
    }
    let mut s: String = value.chars().take(max).collect();
    s.push('…');
    s
}
