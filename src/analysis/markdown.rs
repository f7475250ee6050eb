//! The analysis as a report a person reads: Summary, Detailed analysis,
//! Possible misuse, Mitigation strategies, Conclusion.

use crate::crd::{AlertReportSpec, Analysis, Basis, MitigationCategory};
use std::fmt::Write;

/// Renders the report. Values from the alert are shown in code spans or
/// blocks, never as markdown that could change the document's structure.
pub fn render(spec: &AlertReportSpec, analysis: &Analysis) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Alert analysis: {}\n", inline(&spec.rule));
    let _ = writeln!(
        md,
        "**Severity:** {:?} (risk {}/100) · **Falco priority:** {} · **Source:** {} · **Answered from:** {}\n",
        analysis.severity,
        analysis.risk_score,
        spec.priority,
        inline(&spec.source),
        match analysis.basis {
            Basis::Rule => "knowledge of this rule",
            Basis::Tags => "the rule's MITRE tags",
            Basis::Generic => "generic knowledge of the source",
        }
    );
    let _ = writeln!(md, "## Summary\n\n{}\n", escape(&analysis.summary));

    let _ = writeln!(
        md,
        "## Detailed analysis\n\n{}\n",
        escape(&analysis.rule_description)
    );
    let _ = writeln!(md, "| Fact | Value |\n| --- | --- |");
    for f in &analysis.findings {
        let _ = writeln!(md, "| {} | {} |", cell(&f.label), code_cell(&f.value));
    }
    md.push('\n');
    if !analysis.mitre.is_empty() {
        let _ = writeln!(md, "**MITRE ATT&CK**\n");
        for m in &analysis.mitre {
            match (&m.technique_id, &m.technique_name) {
                (Some(id), Some(name)) => {
                    let _ = writeln!(
                        md,
                        "- {} ({}): {} {}",
                        m.tactic,
                        m.tactic_id.as_deref().unwrap_or("-"),
                        id,
                        name
                    );
                }
                (Some(id), None) => {
                    let _ = writeln!(
                        md,
                        "- {} ({}): {}",
                        m.tactic,
                        m.tactic_id.as_deref().unwrap_or("-"),
                        id
                    );
                }
                _ => {
                    let _ = writeln!(
                        md,
                        "- {} ({})",
                        m.tactic,
                        m.tactic_id.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        md.push('\n');
    }
    if !analysis.risk_factors.is_empty() {
        let _ = writeln!(
            md,
            "**Risk factors:** {}\n",
            escape(&analysis.risk_factors.join("; "))
        );
    }
    if !analysis.correlation.is_empty() {
        let _ = writeln!(
            md,
            "**Related incidents on this workload (kill-chain order)**\n"
        );
        for c in &analysis.correlation {
            let _ = writeln!(
                md,
                "- {} — {} (`{}`)",
                c.tactic.as_deref().unwrap_or("unknown stage"),
                escape(&c.rule),
                c.report
            );
        }
        md.push('\n');
    }

    let _ = writeln!(md, "## Possible misuse\n");
    for m in &analysis.possible_misuse {
        let _ = writeln!(md, "- {}", escape(m));
    }
    md.push('\n');
    if !analysis.false_positive_hints.is_empty() {
        let _ = writeln!(md, "### When it is benign\n");
        for m in &analysis.false_positive_hints {
            let _ = writeln!(md, "- {}", escape(m));
        }
        md.push('\n');
    }

    let _ = writeln!(md, "## Mitigation strategies\n");
    for (i, m) in analysis.mitigations.iter().enumerate() {
        let _ = writeln!(
            md,
            "### {}. {}: {}\n\n{}\n",
            i + 1,
            category(m.category),
            escape(&m.title),
            escape(&m.description)
        );
        if !m.commands.is_empty() {
            let _ = writeln!(md, "{}", fence("sh", &m.commands.join("\n")));
        }
        if let Some(manifest) = &m.manifest {
            let lang = if m.category == MitigationCategory::Tune {
                "yaml"
            } else {
                "yaml"
            };
            if m.category == MitigationCategory::Tune {
                let _ = writeln!(md, "Falco rules file:\n");
            } else {
                let _ = writeln!(md, "Apply with `kubectl apply -f -`:\n");
            }
            let _ = writeln!(md, "{}", fence(lang, manifest.trim_end()));
        }
    }

    let _ = writeln!(md, "## Conclusion\n\n{}", conclusion(analysis));
    md
}

fn conclusion(analysis: &Analysis) -> String {
    let first = analysis
        .mitigations
        .iter()
        .find(|m| m.category == MitigationCategory::Contain)
        .map(|m| m.title.to_lowercase());
    let check = analysis
        .false_positive_hints
        .first()
        .map(|h| format!(" Before acting, rule out the benign case: {}", escape(h)))
        .unwrap_or_default();
    match (analysis.severity, first) {
        (crate::crd::Severity::Critical | crate::crd::Severity::High, Some(step)) => {
            format!("Treat this as an active incident: {step} first, then investigate.{check}")
        }
        (_, Some(step)) => format!(
            "Investigate to confirm whether the behaviour is expected; if it is not, {step}. If it is, apply the tuning exception so that the next real alert stands out.{check}"
        ),
        (_, None) => {
            format!("Investigate the behaviour and tune the rule if it is expected.{check}")
        }
    }
}

fn category(c: MitigationCategory) -> &'static str {
    match c {
        MitigationCategory::Contain => "Contain",
        MitigationCategory::Investigate => "Investigate",
        MitigationCategory::Eradicate => "Eradicate",
        MitigationCategory::Harden => "Harden",
        MitigationCategory::Tune => "Tune",
    }
}

/// A fenced block whose fence is longer than any run of backticks inside.
fn fence(lang: &str, body: &str) -> String {
    let longest = body.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let ticks = "`".repeat(longest.max(2) + 1);
    format!("{ticks}{lang}\n{body}\n{ticks}\n")
}

fn inline(text: &str) -> String {
    escape(text)
}

/// Escapes characters that markdown would read as structure.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '#' | '|' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn cell(text: &str) -> String {
    escape(text)
}

/// A value in a table cell as a code span: pipes and newlines cannot break the table.
fn code_cell(text: &str) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect::<String>()
        .replace('|', "\\|");
    let longest = flat.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let ticks = "`".repeat(longest + 1);
    format!("{ticks} {flat} {ticks}")
}
