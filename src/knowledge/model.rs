//! The shape of the knowledge files (see docs/knowledge.md).

use crate::crd::MitigationCategory;
use serde::Deserialize;
use std::collections::HashMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleFile {
    #[allow(dead_code)]
    pub family: String,
    pub rules: Vec<RuleKnowledge>,
}

/// What is known about one rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleKnowledge {
    pub rule: String,
    pub detects: String,
    #[serde(default)]
    pub techniques: Vec<TechniqueRef>,
    #[serde(default)]
    pub findings: Vec<FindingSpec>,
    pub misuse: Vec<String>,
    pub false_positives: Vec<String>,
    pub mitigations: Vec<MitigationSpec>,
    pub exception: ExceptionSpec,
}

/// A MITRE technique named by the knowledge rather than the rule's tags.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TechniqueRef {
    pub id: String,
    pub name: String,
    pub tactic: String,
}

/// An output field worth showing, with its label.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FindingSpec {
    pub field: String,
    pub label: String,
}

/// A response step as written in the knowledge, before placeholders are filled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MitigationSpec {
    pub category: MitigationCategory,
    pub title: String,
    pub description: String,
    #[serde(default)]
    pub commands: Vec<String>,
    #[serde(default)]
    pub manifest: Option<ManifestKind>,
}

/// The manifests the analysis can generate for an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ManifestKind {
    IsolateWorkload,
    DenyEgress,
    PodSecurityRestricted,
    DenyPrivilegedPods,
    AuditReadonlyRole,
}

/// How to tune a rule with a Falco exception.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExceptionSpec {
    pub name: String,
    pub fields: Vec<String>,
    #[serde(default)]
    pub comps: Vec<String>,
}

impl ExceptionSpec {
    /// The comparison for field `i`, `=` unless the knowledge says otherwise.
    pub fn comp(&self, i: usize) -> &str {
        self.comps.get(i).map(String::as_str).unwrap_or("=")
    }
}

/// Falco's exception comparison operators.
pub const EXCEPTION_COMPS: &[&str] = &[
    "=",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "in",
    "intersects",
    "pmatch",
    "startswith",
    "endswith",
    "contains",
    "icontains",
    "glob",
    "bcontains",
    "bstartswith",
    "regex",
];

impl RuleKnowledge {
    /// The structural checks every entry must pass.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let has = |c: MitigationCategory| self.mitigations.iter().any(|m| m.category == c);
        if !has(MitigationCategory::Contain) {
            return Err("no Contain mitigation".into());
        }
        if !has(MitigationCategory::Investigate) {
            return Err("no Investigate mitigation".into());
        }
        if has(MitigationCategory::Tune) {
            return Err(
                "Tune mitigations are generated from `exception`, do not write them".into(),
            );
        }
        if self.exception.fields.is_empty() {
            return Err("exception has no fields".into());
        }
        if !self.exception.comps.is_empty()
            && self.exception.comps.len() != self.exception.fields.len()
        {
            return Err("exception comps and fields differ in length".into());
        }
        if let Some(bad) = self
            .exception
            .comps
            .iter()
            .find(|c| !EXCEPTION_COMPS.contains(&c.as_str()))
        {
            return Err(format!("exception comp {bad:?} is not a Falco operator"));
        }
        if !self
            .exception
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err("exception name must be lower_snake_case".into());
        }
        Ok(())
    }
}

/// Knowledge about one MITRE tactic, for rules known only by their tags.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TacticKnowledge {
    /// Completes "This behaviour ..." for the summary.
    pub meaning: String,
    pub misuse: Vec<String>,
    pub false_positives: Vec<String>,
    pub mitigations: Vec<MitigationSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TacticsFile {
    pub tactics: HashMap<String, TacticKnowledge>,
}

/// The answer for an unknown rule of a given source.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GenericKnowledge {
    pub meaning: String,
    pub misuse: Vec<String>,
    pub false_positives: Vec<String>,
    pub mitigations: Vec<MitigationSpec>,
    /// Output fields, in order of preference, to key a tuning exception on.
    pub exception_fields: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GenericFile {
    pub default: GenericKnowledge,
    pub sources: HashMap<String, GenericKnowledge>,
}
