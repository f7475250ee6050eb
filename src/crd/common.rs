//! Types shared by several resources.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Falco's priority of an alert, most severe first.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum Priority {
    Emergency,
    Alert,
    Critical,
    Error,
    Warning,
    Notice,
    Informational,
    Debug,
}

impl Priority {
    pub const ALL: [Priority; 8] = [
        Priority::Emergency,
        Priority::Alert,
        Priority::Critical,
        Priority::Error,
        Priority::Warning,
        Priority::Notice,
        Priority::Informational,
        Priority::Debug,
    ];

    /// The name Falco prints, also used as a label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Emergency => "Emergency",
            Priority::Alert => "Alert",
            Priority::Critical => "Critical",
            Priority::Error => "Error",
            Priority::Warning => "Warning",
            Priority::Notice => "Notice",
            Priority::Informational => "Informational",
            Priority::Debug => "Debug",
        }
    }

    /// Syslog-style number: 0 is Emergency, 7 is Debug.
    pub fn from_level(level: i64) -> Option<Priority> {
        usize::try_from(level)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
    }

    /// True when `self` is at least as severe as `other`.
    pub fn at_least(self, other: Priority) -> bool {
        self <= other
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A priority string that is not one of Falco's.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown priority {0:?}: expected one of Emergency, Alert, Critical, Error, Warning, Notice, Informational, Debug"
)]
pub struct UnknownPriority(pub String);

impl FromStr for Priority {
    type Err = UnknownPriority;

    /// Accepts Falco's names in any case, and the short forms other producers send.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let p = match s.trim().to_ascii_lowercase().as_str() {
            "emergency" | "emerg" => Priority::Emergency,
            "alert" => Priority::Alert,
            "critical" | "crit" => Priority::Critical,
            "error" | "err" => Priority::Error,
            "warning" | "warn" => Priority::Warning,
            "notice" => Priority::Notice,
            "informational" | "info" => Priority::Informational,
            "debug" => Priority::Debug,
            // The value goes back to whoever sent it, and to the logs: keep it short.
            _ => return Err(UnknownPriority(s.chars().take(32).collect())),
        };
        Ok(p)
    }
}
