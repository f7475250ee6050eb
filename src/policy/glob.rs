//! Shell-style globs for rule names: `*` is any run of characters, `?` one character.

/// True when `text` matches `pattern` as a whole. Other characters match
/// themselves, case-sensitively (Falco rule names are case-sensitive).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matcher with one backtrack point: linear in practice, no recursion
    // however the attacker-chosen text looks.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// True when the pattern has glob characters.
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_names_match_only_themselves() {
        assert!(glob_match(
            "Terminal shell in container",
            "Terminal shell in container"
        ));
        assert!(!glob_match(
            "Terminal shell in container",
            "terminal shell in container"
        ));
        assert!(!glob_match("Terminal shell", "Terminal shell in container"));
    }

    #[test]
    fn stars_and_question_marks_match_runs_and_single_characters() {
        assert!(glob_match("Terminal shell*", "Terminal shell in container"));
        assert!(glob_match("*shell*", "Terminal shell in container"));
        assert!(glob_match("*", ""));
        assert!(glob_match("Write below ?tc", "Write below etc"));
        assert!(!glob_match("Write below ?tc", "Write below /etc"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
    }

    #[test]
    fn pathological_patterns_finish_quickly() {
        let text = "a".repeat(10_000);
        let pattern = format!("{}b", "*a".repeat(50));
        let start = std::time::Instant::now();
        assert!(!glob_match(&pattern, &text));
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }
}
