//! What Peregrine knows about Falco rules, loaded from the YAML files in `knowledge/`.
//!
//! The files are compiled into the binary; a malformed file is a start-up
//! error (and a failing test), never a surprise on the event path.

mod mitre;
mod model;

pub use mitre::{
    KILL_CHAIN, Mitre, TacticInfo, TaggedMitre, TechniqueInfo, parse_tags, technique_id,
};
pub use model::*;

use std::collections::HashMap;
use std::sync::OnceLock;

/// Rule knowledge files: (file name, contents).
const RULE_FILES: &[(&str, &str)] = &[
    (
        "syscall-stable.yaml",
        include_str!("../../knowledge/syscall-stable.yaml"),
    ),
    (
        "syscall-incubating.yaml",
        include_str!("../../knowledge/syscall-incubating.yaml"),
    ),
    (
        "syscall-sandbox.yaml",
        include_str!("../../knowledge/syscall-sandbox.yaml"),
    ),
    (
        "syscall-deprecated.yaml",
        include_str!("../../knowledge/syscall-deprecated.yaml"),
    ),
    (
        "k8s-audit.yaml",
        include_str!("../../knowledge/k8s-audit.yaml"),
    ),
    (
        "aws-cloudtrail.yaml",
        include_str!("../../knowledge/aws-cloudtrail.yaml"),
    ),
    (
        "gcp-auditlog.yaml",
        include_str!("../../knowledge/gcp-auditlog.yaml"),
    ),
    ("okta.yaml", include_str!("../../knowledge/okta.yaml")),
    ("github.yaml", include_str!("../../knowledge/github.yaml")),
];
const MITRE_FILE: &str = include_str!("../../knowledge/mitre.yaml");
const TACTICS_FILE: &str = include_str!("../../knowledge/tactics.yaml");
const GENERIC_FILE: &str = include_str!("../../knowledge/generic.yaml");

/// A knowledge file that does not load.
#[derive(Debug, thiserror::Error)]
pub enum KnowledgeError {
    #[error("knowledge/{file} is not valid: {message}")]
    Invalid { file: String, message: String },
    #[error("knowledge/{file} describes rule {rule:?} twice")]
    Duplicate { file: String, rule: String },
}

/// Everything known, indexed for the event path.
#[derive(Debug)]
pub struct Knowledge {
    rules: HashMap<String, RuleKnowledge>,
    /// Rule name → file it came from, for error messages and coverage reports.
    origin: HashMap<String, &'static str>,
    pub mitre: Mitre,
    tactics: HashMap<String, TacticKnowledge>,
    generic: GenericFile,
}

/// The knowledge compiled into this binary, loaded once.
pub fn builtin() -> Result<&'static Knowledge, &'static KnowledgeError> {
    static KNOWLEDGE: OnceLock<Result<Knowledge, KnowledgeError>> = OnceLock::new();
    KNOWLEDGE.get_or_init(Knowledge::load_builtin).as_ref()
}

fn parse<T: serde::de::DeserializeOwned>(file: &str, text: &str) -> Result<T, KnowledgeError> {
    serde_saphyr::from_str(text).map_err(|e| KnowledgeError::Invalid {
        file: file.to_string(),
        message: e.to_string(),
    })
}

impl Knowledge {
    fn load_builtin() -> Result<Knowledge, KnowledgeError> {
        let mut rules = HashMap::new();
        let mut origin = HashMap::new();
        for (file, text) in RULE_FILES {
            let parsed: RuleFile = parse(file, text)?;
            for rule in parsed.rules {
                rule.validate().map_err(|message| KnowledgeError::Invalid {
                    file: file.to_string(),
                    message: format!("rule {:?}: {message}", rule.rule),
                })?;
                if rules.contains_key(&rule.rule) {
                    return Err(KnowledgeError::Duplicate {
                        file: file.to_string(),
                        rule: rule.rule,
                    });
                }
                origin.insert(rule.rule.clone(), *file);
                rules.insert(rule.rule.clone(), rule);
            }
        }
        let mitre: Mitre = parse("mitre.yaml", MITRE_FILE)?;
        let tactics: TacticsFile = parse("tactics.yaml", TACTICS_FILE)?;
        let generic: GenericFile = parse("generic.yaml", GENERIC_FILE)?;
        for tactic in tactics.tactics.keys() {
            if !mitre.tactics.contains_key(tactic) {
                return Err(KnowledgeError::Invalid {
                    file: "tactics.yaml".into(),
                    message: format!("{tactic} is not a tactic of mitre.yaml"),
                });
            }
        }
        Ok(Knowledge {
            rules,
            origin,
            mitre,
            tactics: tactics.tactics,
            generic,
        })
    }

    /// Knowledge written for exactly this rule.
    pub fn rule(&self, name: &str) -> Option<&RuleKnowledge> {
        self.rules.get(name)
    }

    /// The knowledge file a rule is described in.
    pub fn origin(&self, name: &str) -> Option<&'static str> {
        self.origin.get(name).copied()
    }

    /// Every rule with specific knowledge.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.keys().map(String::as_str)
    }

    /// Knowledge about a MITRE tactic (lower_snake_case key such as `privilege_escalation`).
    pub fn tactic(&self, key: &str) -> Option<&TacticKnowledge> {
        self.tactics.get(key)
    }

    /// The answer for a rule nothing specific is known about, by event source.
    pub fn generic(&self, source: &str) -> &GenericKnowledge {
        self.generic
            .sources
            .get(source)
            .unwrap_or(&self.generic.default)
    }
}
