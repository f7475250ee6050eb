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
            if m.category == MitigationCategory::Tune {
                let _ = writeln!(md, "Falco rules file:\n");
            } else {
                let _ = writeln!(md, "Apply with `kubectl apply -f -`:\n");
            }
            let _ = writeln!(md, "{}", fence("yaml", manifest.trim_end()));
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
            '\\' | '`' | '*' | '[' | ']' | '<' | '>' | '|' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    // What starts a block (a heading, a list item, a setext underline) would
    // turn the text into structure, so it is escaped too.
    let lead = out.trim_start().chars().next();
    if matches!(lead, Some('#' | '-' | '+' | '=')) {
        let at = out.len() - out.trim_start().len();
        out.insert(at, '\\');
    } else if lead.is_some_and(|c| c.is_ascii_digit()) {
        let trimmed = out.trim_start();
        let digits = trimmed.chars().take_while(char::is_ascii_digit).count();
        if matches!(trimmed[digits..].chars().next(), Some('.' | ')')) {
            let at = out.len() - trimmed.len() + digits;
            out.insert(at, '\\');
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{Context, analyze};
    use crate::falco;

    fn report(body: serde_json::Value) -> String {
        let alert = falco::parse(&serde_json::to_vec(&body).unwrap()).unwrap();
        let kb = crate::knowledge::builtin().unwrap();
        let subject = falco::subject_of(&alert);
        let a = analyze(&alert, &subject, &Context::default(), kb);
        let spec = AlertReportSpec {
            rule: alert.rule.clone(),
            priority: alert.priority,
            source: alert.source.clone(),
            tags: alert.tags.clone(),
            fingerprint: "f".into(),
            subject,
            event: Default::default(),
        };
        render(&spec, &a)
    }

    #[test]
    fn the_report_has_the_five_sections_in_order() {
        let md = report(serde_json::json!({
            "rule": "Terminal shell in container", "priority": "Notice", "output": "x",
            "output_fields": {"proc.cmdline": "bash", "k8s.ns.name": "shop", "k8s.pod.name": "web-1"}
        }));
        let at = |h: &str| md.find(h).unwrap_or_else(|| panic!("{h} missing:\n{md}"));
        assert!(at("## Summary") < at("## Detailed analysis"));
        assert!(at("## Detailed analysis") < at("## Possible misuse"));
        assert!(at("## Possible misuse") < at("## Mitigation strategies"));
        assert!(at("## Mitigation strategies") < at("## Conclusion"));
    }

    #[test]
    fn hostile_values_cannot_add_headings_rows_or_close_code_blocks() {
        let md = report(serde_json::json!({
            "rule": "# Owned", "priority": "Notice", "output": "x",
            "output_fields": {"proc.cmdline": "x | y\n## Fake section\n```\n", "k8s.ns.name": "shop"}
        }));
        let headings: Vec<&str> = md.lines().filter(|l| l.starts_with('#')).collect();
        assert!(
            headings
                .iter()
                .all(|h| !h.contains("Fake section") && !h.starts_with("# Owned")),
            "{headings:?}"
        );
        assert!(md.starts_with("# Alert analysis: \\# Owned"), "{md}");
        let fences = md.lines().filter(|l| l.starts_with("```")).count();
        assert_eq!(fences % 2, 0, "unbalanced code fences:\n{md}");
        for row in md.lines().filter(|l| l.starts_with("| ")) {
            let unescaped_pipes = row.replace("\\|", "").matches('|').count();
            assert_eq!(unescaped_pipes, 3, "a value broke a table row: {row}");
        }
    }
}
