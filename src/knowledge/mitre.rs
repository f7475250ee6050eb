//! MITRE ATT&CK names, and reading the tactics and techniques out of a rule's tags.
//!
//! Falco tags name tactics as `mitre_privilege_escalation`, `TA0004` or
//! `TA0005-defense-evasion`, and techniques as `T1055.008` or
//! `T1562-impair-defenses`.

use serde::Deserialize;
use std::collections::HashMap;

/// The tactic and technique names of `knowledge/mitre.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mitre {
    /// Keyed by lower_snake_case name.
    pub tactics: HashMap<String, TacticInfo>,
    /// Keyed by technique id.
    pub techniques: HashMap<String, TechniqueInfo>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TacticInfo {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TechniqueInfo {
    pub name: String,
    /// The technique's usual tactic (lower_snake_case).
    pub tactic: String,
}

/// Kill-chain order of the enterprise tactics, earliest first.
pub const KILL_CHAIN: &[&str] = &[
    "reconnaissance",
    "resource_development",
    "initial_access",
    "execution",
    "persistence",
    "privilege_escalation",
    "defense_evasion",
    "credential_access",
    "discovery",
    "lateral_movement",
    "collection",
    "command_and_control",
    "exfiltration",
    "impact",
];

/// Tactics (lower_snake_case) and technique ids named by a rule's tags, in tag order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TaggedMitre {
    pub tactics: Vec<String>,
    pub techniques: Vec<String>,
}

impl Mitre {
    fn tactic_by_id(&self, id: &str) -> Option<&str> {
        self.tactics
            .iter()
            .find(|(_, t)| t.id.eq_ignore_ascii_case(id))
            .map(|(k, _)| k.as_str())
    }

    /// Position of a tactic in the kill chain; unknown tactics sort last.
    pub fn kill_chain_position(tactic: &str) -> usize {
        KILL_CHAIN
            .iter()
            .position(|t| *t == tactic)
            .unwrap_or(KILL_CHAIN.len())
    }
}

/// Reads the MITRE tactics and technique ids out of Falco tags.
pub fn parse_tags(mitre: &Mitre, tags: &[String]) -> TaggedMitre {
    let mut out = TaggedMitre::default();
    for tag in tags {
        let tag = tag.trim();
        if let Some(name) = tag.strip_prefix("mitre_") {
            // `mitre_data_destruction` is an old Falco tag for the Impact tactic.
            let name = match name {
                "data_destruction" => "impact",
                other => other,
            };
            if mitre.tactics.contains_key(name) {
                push_unique(&mut out.tactics, name.to_string());
            }
        } else if let Some(id) = tactic_id(tag) {
            if let Some(key) = mitre.tactic_by_id(id) {
                push_unique(&mut out.tactics, key.to_string());
            }
        } else if let Some(id) = technique_id(tag) {
            push_unique(&mut out.techniques, id.to_string());
        }
    }
    out
}

fn push_unique(list: &mut Vec<String>, item: String) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// `TA0005` out of `TA0005` or `TA0005-defense-evasion`.
fn tactic_id(tag: &str) -> Option<&str> {
    let id = tag.split('-').next()?;
    let digits = id.strip_prefix("TA")?;
    (digits.len() == 4 && digits.bytes().all(|b| b.is_ascii_digit())).then_some(id)
}

/// `T1562` or `T1055.008` out of a tag, ignoring a `-description` suffix.
pub fn technique_id(tag: &str) -> Option<&str> {
    let id = tag.split('-').next()?;
    let rest = id.strip_prefix('T')?;
    let (main, sub) = match rest.split_once('.') {
        Some((m, s)) => (m, Some(s)),
        None => (rest, None),
    };
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    (digits(main, 4) && sub.is_none_or(|s| digits(s, 3))).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mitre() -> &'static Mitre {
        &crate::knowledge::builtin().expect("knowledge loads").mitre
    }

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_spelling_of_tactics_and_techniques_is_read() {
        let got = parse_tags(
            mitre(),
            &tags(&[
                "maturity_stable",
                "mitre_privilege_escalation",
                "T1055.008",
                "TA0005-defense-evasion",
                "T1562-impair-defenses",
                "TA0011",
                "mitre_data_destruction",
                "host",
            ]),
        );
        assert_eq!(
            got.tactics,
            [
                "privilege_escalation",
                "defense_evasion",
                "command_and_control",
                "impact"
            ]
        );
        assert_eq!(got.techniques, ["T1055.008", "T1562"]);
    }

    #[test]
    fn words_that_look_like_ids_are_not_techniques() {
        assert_eq!(technique_id("T1"), None);
        assert_eq!(technique_id("TA0004"), None);
        assert_eq!(technique_id("T1059.4"), None);
        assert_eq!(technique_id("Terminal"), None);
        assert_eq!(technique_id("T1498-DOS"), Some("T1498"));
    }
}
