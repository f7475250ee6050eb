//! Properties of everything that reads attacker-chosen input: the alert
//! parser, and what turns alert values into Kubernetes names, label values,
//! manifests, Falco exceptions, shell commands and the markdown report.
//!
//! `PROPTEST_CASES` sets the number of cases of each property (a few hundred
//! by default, millions in `make fuzz`); each property prints how many ran.

#[path = "support/catalog.rs"]
mod catalog;

use peregrine::analysis::{self, Context, PodContext, markdown, render};
use peregrine::crd::{AlertReportSpec, MitigationCategory, Subject, WorkloadRef};
use peregrine::falco::{self, ParseError};
use peregrine::report::aggregate::Bounds;
use peregrine::report::{Arrival, build, fingerprint};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value, json};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;

// ---------------------------------------------------------------------------
// Allocation accounting, per thread, so that parallel tests do not disturb it.
// ---------------------------------------------------------------------------

struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn track(grow: usize, shrink: usize) {
    let _ = LIVE.try_with(|live| {
        let now = (live.get() + grow).saturating_sub(shrink);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            track(layout.size(), 0);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        track(0, layout.size());
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            track(new_size, layout.size());
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result and the most memory it held at once on this thread.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    let peak = PEAK.with(Cell::get).saturating_sub(base);
    (out, peak)
}

// ---------------------------------------------------------------------------
// Running properties
// ---------------------------------------------------------------------------

/// Cases per property: `PROPTEST_CASES`, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn check<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{name}: {e}");
    }
    eprintln!("property {name}: {cases} cases passed");
}

// ---------------------------------------------------------------------------
// Hostile values
// ---------------------------------------------------------------------------

const FRAGMENTS: &[&str] = &[
    "'",
    "\"",
    "$(id)",
    "`id`",
    "${IFS}",
    "\n",
    "\r\n",
    "\\",
    ";",
    "|",
    "&&",
    ">",
    "<",
    "#",
    "---",
    "- ",
    ": ",
    "{",
    "}",
    "[",
    "]",
    "*",
    "!",
    "~",
    "%",
    "\t",
    "\0",
    "\u{1b}[31m",
    "\u{202e}",
    "\u{2028}",
    "\u{feff}",
    "ünïcødé",
    "null",
    "true",
    "1e999",
    "<NA>",
    "```",
    "## Fake",
    "| a | b |",
    " ",
    "--",
    "-rf /",
    "..",
    "/",
    "system:serviceaccount:",
    "@",
    "=",
    "&amp;",
    "<script>",
    "*/",
    "x",
    "web-7d9f8b6c5d-x2k4q",
    "A",
    "9",
    ".",
    "_",
    "?",
    ",",
];

/// Strings built from shell, YAML and markdown metacharacters and any characters.
fn hostile() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => proptest::sample::select(FRAGMENTS).prop_map(str::to_string),
        2 => any::<char>().prop_map(|c| c.to_string()),
        1 => (1usize..300).prop_map(|n| "a".repeat(n)),
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|p| p.concat())
}

/// A hostile value that Falco would not count as missing: it starts with a letter.
fn present() -> impl Strategy<Value = String> {
    hostile().prop_map(|s| format!("v{s}"))
}

/// What the shell must see: the value with control characters replaced.
fn visible(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

// ---------------------------------------------------------------------------
// The parser
// ---------------------------------------------------------------------------

/// Most a parse may hold at once: a few times the body, never more.
fn allocation_bound(len: usize) -> usize {
    64 * len + 256 * 1024
}

fn parse_bounded(body: &[u8]) -> Result<(), TestCaseError> {
    let (result, peak) = peak_during(|| falco::parse(body));
    prop_assert!(
        peak <= allocation_bound(body.len()),
        "parsing {} bytes held {peak} bytes",
        body.len()
    );
    if let Ok(alert) = result {
        prop_assert!(!alert.rule.is_empty());
    }
    Ok(())
}

#[test]
fn the_parser_survives_arbitrary_bytes_with_bounded_memory() {
    check(
        "parser on arbitrary bytes",
        cases(512),
        proptest::collection::vec(any::<u8>(), 0..8192),
        |bytes| parse_bounded(&bytes),
    );
}

fn payloads() -> Vec<Vec<u8>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/payloads");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("payloads")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read(p).expect("payload"))
        .collect()
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
}

#[test]
fn the_parser_survives_mutated_real_payloads() {
    let payloads = payloads();
    let mutation = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (
            any::<usize>(),
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 1..16),
                proptest::sample::select(FRAGMENTS).prop_map(|f| f.as_bytes().to_vec()),
                Just(vec![0xff, 0xfe]),
                Just(vec![0xc3]),
                Just(b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[".to_vec()),
            ]
        )
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
    ];
    let strategy = (0..payloads.len(), proptest::collection::vec(mutation, 1..8));
    check(
        "parser on mutated real payloads",
        cases(512),
        strategy,
        |(which, mutations)| {
            let mut body = payloads[which].clone();
            for m in mutations {
                let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
                match m {
                    Mutation::Flip(i, b) if !body.is_empty() => {
                        let i = i % body.len();
                        body[i] ^= b;
                    }
                    Mutation::Flip(..) => {}
                    Mutation::Insert(i, bytes) => {
                        let i = at(i, body.len());
                        body.splice(i..i, bytes);
                    }
                    Mutation::Delete(i, n) => {
                        let i = at(i, body.len());
                        let end = (i + n).min(body.len());
                        body.drain(i..end);
                    }
                    Mutation::Truncate(i) => body.truncate(at(i, body.len())),
                }
            }
            parse_bounded(&body)
        },
    );
}

/// JSON text of a hostile shape: deep nesting, huge numbers, odd keys.
#[derive(Debug, Clone)]
enum Shape {
    Nest(usize, bool),
    Number(String),
    OddKey(String),
    Text(String),
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        (0usize..200, any::<bool>()).prop_map(|(d, obj)| Shape::Nest(d, obj)),
        prop_oneof![
            (1usize..2000).prop_map(|n| "9".repeat(n)),
            (1usize..2000).prop_map(|n| format!("-{}", "1".repeat(n))),
            Just("1e999999999".to_string()),
            Just("-0".to_string()),
            Just("18446744073709551616".to_string()),
            Just("0.0000000000000000000000000000000001".to_string()),
            (1usize..500).prop_map(|n| format!("1.{}", "5".repeat(n))),
        ]
        .prop_map(Shape::Number),
        hostile().prop_map(Shape::OddKey),
        hostile().prop_map(Shape::Text),
    ]
}

fn render_shape(shape: &Shape) -> String {
    match shape {
        Shape::Nest(depth, obj) => {
            let (open, close) = if *obj { (r#"{"k":"#, "}") } else { ("[", "]") };
            format!("{}1{}", open.repeat(*depth), close.repeat(*depth))
        }
        Shape::Number(n) => n.clone(),
        Shape::OddKey(k) => format!("{{{}:1}}", json!(k)),
        Shape::Text(t) => json!(t).to_string(),
    }
}

fn nesting(shape: &Shape) -> usize {
    match shape {
        Shape::Nest(d, _) => *d,
        Shape::OddKey(_) => 1,
        _ => 0,
    }
}

#[test]
fn hostile_alert_shapes_parse_or_are_refused_cleanly() {
    let place = prop_oneof![
        Just("output_fields value"),
        Just("top-level field"),
        Just("rule"),
        Just("tags"),
        Just("priority"),
    ];
    let strategy = (
        proptest::collection::vec((hostile(), shape()), 0..6),
        place,
        shape(),
        proptest::collection::vec(
            (
                any::<usize>(),
                prop_oneof![Just(0xffu8), Just(0xc0), Just(0x80)],
            ),
            0..3,
        ),
    );
    check(
        "structured hostile alerts",
        cases(512),
        strategy,
        |(fields, place, extra, invalid_utf8)| {
            let mut output_fields = String::from("{");
            for (i, (key, value)) in fields.iter().enumerate() {
                if i > 0 {
                    output_fields.push(',');
                }
                output_fields.push_str(&format!("{}:{}", json!(key), render_shape(value)));
            }
            let extra_text = render_shape(&extra);
            let (rule, priority, tags, top) = match place {
                "rule" => (
                    extra_text.clone(),
                    "\"Notice\"".into(),
                    "[]".into(),
                    String::new(),
                ),
                "tags" => (
                    "\"r\"".into(),
                    "\"Notice\"".into(),
                    extra_text.clone(),
                    String::new(),
                ),
                "priority" => (
                    "\"r\"".into(),
                    extra_text.clone(),
                    "[]".into(),
                    String::new(),
                ),
                "top-level field" => (
                    "\"r\"".into(),
                    "\"Notice\"".into(),
                    "[]".into(),
                    format!(",\"extra\":{extra_text}"),
                ),
                _ => {
                    if !fields.is_empty() {
                        output_fields.push(',');
                    }
                    output_fields.push_str(&format!("\"x.y\":{extra_text}"));
                    (
                        "\"r\"".into(),
                        "\"Notice\"".into(),
                        "[]".into(),
                        String::new(),
                    )
                }
            };
            output_fields.push('}');
            let text = format!(
                r#"{{"rule":{rule},"priority":{priority},"tags":{tags},"output":"o","output_fields":{output_fields}{top}}}"#
            );
            let mut body = text.into_bytes();
            for (i, byte) in invalid_utf8 {
                // Inside the output string, where Falco's own bytes go.
                let at = body
                    .windows(3)
                    .position(|w| w == b"\"o\"")
                    .map_or(0, |p| p + 1);
                let _ = i;
                body.insert(at, byte);
            }
            let depth = 2 + fields
                .iter()
                .map(|(_, s)| nesting(s))
                .max()
                .unwrap_or(0)
                .max(match place {
                    "output_fields value" => nesting(&extra),
                    _ => nesting(&extra).saturating_sub(1),
                });
            parse_bounded(&body)?;
            let result = falco::parse(&body);
            if depth > falco::MAX_DEPTH + 1 {
                prop_assert!(
                    matches!(result, Err(ParseError::TooDeep)),
                    "depth {depth}: {:?}",
                    result.map(|a| a.rule)
                );
            }
            if let Err(e) = &result {
                // Every refusal says what to do, in one bounded line.
                let message = e.to_string();
                prop_assert!(message.len() < 400 && !message.contains('\n'), "{message}");
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------
// Names and label values
// ---------------------------------------------------------------------------

fn valid_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && v.as_bytes()[0].is_ascii_alphanumeric()
            && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric())
}

fn valid_label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(|p| p.len() <= 253 && is_dns_subdomain(p))
        && !name.is_empty()
        && valid_label_value(name)
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn is_dns_label(s: &str) -> bool {
    !s.contains('.') && s.len() <= 63 && is_dns_subdomain(s)
}

#[test]
fn every_generated_name_and_label_value_is_valid() {
    check(
        "names and label values",
        cases(2048),
        (hostile(), hostile(), hostile()),
        |(a, b, c)| {
            for prefix in [
                "peregrine-isolate",
                "peregrine-deny-egress",
                "peregrine-readonly",
            ] {
                let name = peregrine::names::object_name(prefix, &a);
                prop_assert!(is_dns_label(&name), "object_name({a:?}) = {name:?}");
            }
            let fp = fingerprint::fingerprint(
                &a,
                &b,
                &fingerprint::Scope::Source {
                    actor: Some(c.clone()),
                },
            );
            let name = fingerprint::report_name(&a, &fp);
            prop_assert!(is_dns_label(&name), "report_name({a:?}) = {name:?}");
            for v in [
                peregrine::names::label_value(&a),
                fingerprint::label_value(&b),
                fingerprint::slug(&c, 63),
            ] {
                prop_assert!(valid_label_value(&v), "{v:?} from {a:?} {b:?} {c:?}");
            }
            let slug = peregrine::names::slug(&a);
            prop_assert!(
                slug.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !slug.starts_with('-')
                    && !slug.ends_with('-')
                    && !slug.contains("--"),
                "{slug:?}"
            );
            Ok(())
        },
    );
}

#[test]
fn long_or_odd_values_keep_distinct_names_and_labels() {
    check(
        "distinct names for distinct values",
        cases(1024),
        (hostile(), hostile()),
        |(a, b)| {
            prop_assume!(a != b);
            let (la, lb) = (
                peregrine::names::label_value(&a),
                peregrine::names::label_value(&b),
            );
            prop_assert!(la != lb, "{a:?} and {b:?} share the label {la:?}");
            let (na, nb) = (
                peregrine::names::object_name("peregrine-isolate", &a),
                peregrine::names::object_name("peregrine-isolate", &b),
            );
            prop_assert!(na != nb, "{a:?} and {b:?} share the name {na:?}");
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------
// Shell commands
// ---------------------------------------------------------------------------

#[test]
fn a_quoted_value_is_exactly_one_shell_word() {
    check(
        "shell quoting (shell-words parser)",
        cases(4096),
        hostile(),
        |value| {
            let quoted = render::quote(&value);
            prop_assert!(!quoted.chars().any(char::is_control), "{quoted:?}");
            let words = shlex::split(&format!("kubectl exec {quoted} --"));
            prop_assert_eq!(
                words,
                Some(vec![
                    "kubectl".to_string(),
                    "exec".to_string(),
                    visible(&value),
                    "--".to_string()
                ])
            );
            Ok(())
        },
    );
}

#[test]
fn a_quoted_value_is_one_word_to_a_real_shell() {
    // A real POSIX shell, for a bounded sample: each case is a process.
    let n = cases(128).min(2000);
    check("shell quoting (/bin/sh)", n, hostile(), |value| {
        let command = format!("printf '%s\\0' {}", render::quote(&value));
        let out = std::process::Command::new("sh")
            .args(["-c", &command])
            .output()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(out.status.success(), "{command:?}");
        let mut expected = visible(&value).into_bytes();
        expected.push(0);
        prop_assert_eq!(out.stdout, expected, "{}", command);
        Ok(())
    });
}

#[test]
fn filled_templates_keep_their_words() {
    let templates = [
        "kubectl -n {namespace} exec {pod} -c {container} -- ls -la {field:fd.name}",
        "kubectl -n {namespace} logs {pod} | grep -F {field:proc.cmdline}",
        "kubectl debug node/{node} -it --image=busybox -- chroot /host ls -la {field:fd.name}",
        "x=$(kubectl -n {namespace} get pod {pod} -o name) && echo {field:proc.cmdline}",
    ];
    check(
        "filled command templates",
        cases(2048),
        (
            present(),
            present(),
            present(),
            present(),
            present(),
            present(),
        ),
        |(ns, pod, container, node, file, cmdline)| {
            let subject = Subject {
                namespace: Some(ns),
                pod: Some(pod),
                container: Some(container),
                ..Subject::default()
            };
            let fields: Map<String, Value> = [
                ("fd.name".to_string(), json!(file)),
                ("proc.cmdline".to_string(), json!(cmdline)),
            ]
            .into_iter()
            .collect();
            let hostile = render::Values {
                subject: &subject,
                node: Some(&node),
                fields: &fields,
            };
            let plain_subject = Subject {
                namespace: Some("ns".into()),
                pod: Some("pod".into()),
                container: Some("c".into()),
                ..Subject::default()
            };
            let plain_fields: Map<String, Value> = [
                ("fd.name".to_string(), json!("f")),
                ("proc.cmdline".to_string(), json!("c")),
            ]
            .into_iter()
            .collect();
            let plain = render::Values {
                subject: &plain_subject,
                node: Some("n"),
                fields: &plain_fields,
            };
            for t in templates {
                let (Some(h), Some(p)) = (render::fill(t, &hostile), render::fill(t, &plain))
                else {
                    return Err(TestCaseError::fail(format!("{t} not filled")));
                };
                let (hw, pw) = (shlex::split(&h), shlex::split(&p));
                prop_assert!(hw.is_some(), "{h:?} does not split");
                prop_assert_eq!(hw.map(|w| w.len()), pw.map(|w| w.len()), "{}", h);
                prop_assert!(!h.contains('\n'), "{h:?}");
            }
            Ok(())
        },
    );
}

/// The shell syntax of a command outside quotes, as a POSIX shell reads it
/// (a `$(...)` starts a fresh quoting context, also inside double quotes):
/// separators, pipes, redirections, substitutions, expansions and word
/// breaks. A value that escaped its quotes would change it.
fn shell_syntax(command: &str) -> Vec<String> {
    #[derive(Clone, Copy, PartialEq)]
    enum Ctx {
        Plain,
        Single,
        Double,
    }
    let chars: Vec<char> = command.chars().collect();
    let mut stack = vec![Ctx::Plain];
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let top = *stack.last().unwrap_or(&Ctx::Plain);
        match (top, c) {
            (Ctx::Single, '\'') | (Ctx::Double, '"') => {
                stack.pop();
            }
            (Ctx::Single, _) => {}
            (_, '\\') => i += 1,
            (_, '$') if next == Some('(') => {
                out.push("$(".into());
                stack.push(Ctx::Plain);
                i += 1;
            }
            (_, '$') if next.is_some_and(|n| n.is_alphanumeric() || "{_?@*#!$-".contains(n)) => {
                out.push("$".into())
            }
            (_, '`') => out.push("`".into()),
            (Ctx::Double, _) => {}
            (Ctx::Plain, '\'') => stack.push(Ctx::Single),
            (Ctx::Plain, '"') => stack.push(Ctx::Double),
            (Ctx::Plain, ')') if stack.len() > 1 => {
                out.push(")".into());
                stack.pop();
            }
            (Ctx::Plain, c) if c.is_whitespace() => {
                if out.last().is_none_or(|l| l != " ") {
                    out.push(" ".into());
                }
            }
            (Ctx::Plain, c) if ";|&<>()#\n".contains(c) => out.push(c.to_string()),
            (Ctx::Plain, _) => {}
        }
        i += 1;
    }
    out.push(format!("open contexts: {}", stack.len()));
    out
}

#[test]
fn shell_syntax_sees_what_the_shell_sees() {
    assert_eq!(
        shell_syntax("a 'b;c' \"$(d | e)\""),
        [" ", "$(", " ", "|", " ", ")", "open contexts: 1"]
    );
    assert_ne!(shell_syntax("echo 'x'; id"), shell_syntax("echo 'x;id'"));
}

// ---------------------------------------------------------------------------
// The whole analysis of a hostile alert
// ---------------------------------------------------------------------------

/// The alert Falco would send for catalog rule `rule`, with every string
/// field set by `value(i)`.
fn catalog_alert(rule: &catalog::CatalogRule, value: &dyn Fn(usize) -> String) -> Value {
    let mut body: Value = serde_json::from_slice(&catalog::alert_body(rule)).expect("json");
    if let Some(fields) = body["output_fields"].as_object_mut() {
        for (i, (_, v)) in fields.iter_mut().enumerate() {
            if v.is_string() {
                *v = json!(value(i));
            }
        }
    }
    body
}

struct Analysed {
    spec: AlertReportSpec,
    analysis: peregrine::crd::Analysis,
    alert: falco::Alert,
}

fn analyse(body: &Value, pod: Option<PodContext>) -> Analysed {
    let alert = falco::parse(&serde_json::to_vec(body).expect("json")).expect("parses");
    let mut subject = falco::subject_of(&alert);
    if let Some(p) = &pod {
        subject.workload = p.workload.clone();
    }
    let kb = peregrine::knowledge::builtin().expect("knowledge");
    let ctx = Context {
        pod,
        ..Context::default()
    };
    let analysis = analysis::analyze(&alert, &subject, &ctx, kb);
    let spec = AlertReportSpec {
        rule: alert.rule.clone(),
        priority: alert.priority,
        source: alert.source.clone(),
        tags: alert.tags.clone(),
        fingerprint: "f".into(),
        subject,
        event: Default::default(),
    };
    Analysed {
        spec,
        analysis,
        alert,
    }
}

/// Every document of a manifest, as JSON.
fn documents(yaml: &str) -> Result<Vec<Value>, TestCaseError> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .map_err(|e| TestCaseError::fail(format!("manifest does not parse: {e}\n{yaml}")))
}

fn check_object(doc: &Value, yaml: &str) -> Result<(), TestCaseError> {
    let meta = &doc["metadata"];
    let name = meta["name"].as_str().unwrap_or_default();
    let cluster_scoped = matches!(
        doc["kind"].as_str(),
        Some("Namespace" | "ValidatingAdmissionPolicy" | "ValidatingAdmissionPolicyBinding")
    );
    prop_assert!(
        is_dns_subdomain(name)
            && (cluster_scoped
                || is_dns_label(name)
                || doc["kind"] == "Role"
                || doc["kind"] == "RoleBinding"),
        "invalid name {name:?} in\n{yaml}"
    );
    if let Some(ns) = meta["namespace"].as_str() {
        prop_assert!(is_dns_label(ns), "invalid namespace {ns:?} in\n{yaml}");
    }
    let mut maps = vec![&meta["labels"], &doc["spec"]["podSelector"]["matchLabels"]];
    maps.push(&doc["spec"]["matchResources"]["namespaceSelector"]["matchLabels"]);
    for labels in maps {
        if let Some(labels) = labels.as_object() {
            for (k, v) in labels {
                let v = v.as_str().unwrap_or("(not a string)");
                prop_assert!(valid_label_key(k), "invalid label key {k:?} in\n{yaml}");
                prop_assert!(valid_label_value(v), "invalid label value {v:?} in\n{yaml}");
            }
        }
    }
    if doc["kind"] == "RoleBinding" {
        for s in doc["subjects"].as_array().into_iter().flatten() {
            if s["kind"] == "ServiceAccount" {
                prop_assert!(
                    is_dns_subdomain(s["name"].as_str().unwrap_or_default()),
                    "{yaml}"
                );
                prop_assert!(
                    is_dns_label(s["namespace"].as_str().unwrap_or_default()),
                    "{yaml}"
                );
            }
        }
    }
    Ok(())
}

/// The structure of a markdown document: headings and table rows outside
/// code blocks, and whether every block is closed.
fn structure(md: &str) -> Result<(Vec<String>, usize), TestCaseError> {
    let mut headings = Vec::new();
    let mut rows = 0;
    let mut fence: Option<usize> = None;
    for line in md.lines() {
        let ticks = line.chars().take_while(|c| *c == '`').count();
        match fence {
            Some(open) => {
                if ticks >= open && line.trim_end().chars().all(|c| c == '`') {
                    fence = None;
                }
            }
            None if ticks >= 3 => fence = Some(ticks),
            None => {
                if line.starts_with('#') {
                    // The heading's level and the fixed words before a value.
                    headings.push(line.chars().take_while(|c| *c == '#').collect());
                }
                if line.starts_with("| ") {
                    let pipes = line.replace("\\|", "").matches('|').count();
                    prop_assert_eq!(pipes, 3, "a value broke a table row: {}", line);
                    rows += 1;
                }
            }
        }
    }
    prop_assert!(fence.is_none(), "a code block is left open:\n{md}");
    Ok((headings, rows))
}

fn hostile_pod(workload: &str, pod_labels: bool) -> PodContext {
    PodContext {
        labels: if pod_labels {
            BTreeMap::from([("app".to_string(), "web".to_string())])
        } else {
            BTreeMap::new()
        },
        workload: Some(WorkloadRef {
            kind: "Deployment".into(),
            name: workload.to_string(),
        }),
        ..PodContext::default()
    }
}

#[test]
fn hostile_alerts_of_every_catalog_rule_analyse_into_valid_output() {
    let rules = catalog::catalog();
    let strategy = (
        0..rules.len(),
        proptest::collection::vec(present(), 24),
        present(),
        any::<bool>(),
        any::<bool>(),
    );
    check(
        "analysis of hostile catalog alerts",
        cases(384),
        strategy,
        |(which, values, workload, with_pod, pod_labels)| {
            let rule = &rules[which];
            let hostile_body = catalog_alert(rule, &|i| values[i % values.len()].clone());
            let plain_body = catalog_alert(rule, &|i| format!("plain{i}"));
            let pod = |w: &str| with_pod.then(|| hostile_pod(w, pod_labels));
            let hostile = analyse(&hostile_body, pod(&workload));
            let plain = analyse(&plain_body, pod("web"));

            // Commands: a value never adds, removes or joins words.
            let commands = |a: &Analysed| -> Vec<String> {
                a.analysis
                    .mitigations
                    .iter()
                    .flat_map(|m| m.commands.clone())
                    .collect()
            };
            // The labelling command comes with a manifest, which an invalid
            // namespace rightly drops: compare it on its own.
            let label = |c: &String| c.contains(" label pod ");
            let (mut hc, mut pc) = (commands(&hostile), commands(&plain));
            if let (Some(h), Some(p)) = (hc.iter().find(|c| label(c)), pc.iter().find(|c| label(c)))
            {
                prop_assert_eq!(shell_syntax(h), shell_syntax(p), "{}", h);
            }
            hc.retain(|c| !label(c));
            pc.retain(|c| !label(c));
            prop_assert_eq!(hc.len(), pc.len(), "{:?}\n{:?}", hc, pc);
            for (h, p) in hc.iter().zip(&pc) {
                prop_assert!(!h.chars().any(char::is_control), "{h:?}");
                prop_assert_eq!(
                    shell_syntax(h),
                    shell_syntax(p),
                    "hostile {:?}\nplain   {:?}",
                    h,
                    p
                );
                // Where a shell-words parser can read the template (no `$(...)`
                // with quotes inside), the words line up too.
                if let Some(pw) = shlex::split(p).filter(|_| !p.contains("$(")) {
                    prop_assert_eq!(shlex::split(h).map(|w| w.len()), Some(pw.len()), "{}", h);
                }
            }

            // Manifests: parse, valid names and labels, values as plain strings.
            for m in &hostile.analysis.mitigations {
                let Some(yaml) = &m.manifest else { continue };
                let docs = documents(yaml)?;
                prop_assert!(!docs.is_empty(), "{yaml}");
                if m.category == MitigationCategory::Tune {
                    for doc in &docs {
                        for rule_override in doc.as_array().into_iter().flatten() {
                            prop_assert_eq!(
                                rule_override["rule"].as_str(),
                                Some(hostile.alert.rule.as_str())
                            );
                            for ex in rule_override["exceptions"].as_array().into_iter().flatten() {
                                let fields = ex["fields"].as_array().cloned().unwrap_or_default();
                                for row in ex["values"].as_array().into_iter().flatten() {
                                    let row = row.as_array().cloned().unwrap_or_default();
                                    prop_assert_eq!(row.len(), fields.len(), "{}", yaml);
                                    for (f, v) in fields.iter().zip(row) {
                                        let sent =
                                            hostile.alert.field(f.as_str().unwrap_or_default());
                                        let got = match &v {
                                            Value::Array(items) => items.first().cloned(),
                                            other => Some(other.clone()),
                                        };
                                        prop_assert_eq!(
                                            got.as_ref()
                                                .and_then(Value::as_str)
                                                .map(str::to_string),
                                            sent,
                                            "{}",
                                            yaml
                                        );
                                    }
                                }
                            }
                        }
                    }
                } else {
                    for doc in &docs {
                        check_object(doc, yaml)?;
                    }
                }
            }

            // Markdown: the same structure as the plain alert's report.
            let (hs, hr) = structure(&markdown::render(&hostile.spec, &hostile.analysis))?;
            let (ps, pr) = structure(&markdown::render(&plain.spec, &plain.analysis))?;
            prop_assert_eq!(hs, ps, "headings differ");
            prop_assert_eq!(hr, pr, "table rows differ");

            // The report object of the incident: valid name, namespace and labels.
            let arrival = Arrival::new(
                hostile.alert.clone(),
                hostile.spec.subject.clone(),
                None,
                "peregrine-system",
                jiff::Timestamp::now(),
                &Bounds::default(),
            );
            prop_assert!(is_dns_label(&arrival.key.name), "{:?}", arrival.key);
            prop_assert!(is_dns_label(&arrival.key.namespace), "{:?}", arrival.key);
            let first = peregrine::report::FirstAlert {
                alert: arrival.alert.clone(),
                subject: arrival.subject.clone(),
                pod: None,
            };
            for (k, v) in build::labels(&first, hostile.analysis.severity) {
                prop_assert!(valid_label_key(&k) && valid_label_value(&v), "{k}={v:?}");
            }
            Ok(())
        },
    );
}

#[test]
fn hostile_values_in_the_markdown_report_cannot_add_structure() {
    let strategy = (hostile(), present(), present(), present());
    check(
        "markdown of hostile values",
        cases(1024),
        strategy,
        |(rule, cmdline, file, pod)| {
            let body = |rule: &str, cmdline: &str, file: &str, pod: &str| {
                json!({
                    "rule": format!("r{rule}"), "priority": "Warning", "output": "o", "source": "syscall",
                    "hostname": "worker-1",
                    "output_fields": {
                        "proc.cmdline": cmdline, "fd.name": file, "k8s.ns.name": "shop",
                        "k8s.pod.name": pod, "container.id": "3f2a9c1b7d4e", "proc.name": cmdline
                    }
                })
            };
            let hostile = analyse(&body(&rule, &cmdline, &file, &pod), None);
            let plain = analyse(&body("x", "c", "f", "p"), None);
            let (hs, hr) = structure(&markdown::render(&hostile.spec, &hostile.analysis))?;
            let (ps, pr) = structure(&markdown::render(&plain.spec, &plain.analysis))?;
            prop_assert_eq!(hs, ps);
            prop_assert_eq!(hr, pr);
            Ok(())
        },
    );
}
