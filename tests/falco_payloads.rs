//! Real-shaped Falco payloads, one per quirk of `shared` payload facts, parse as a user expects.

use peregrine::crd::Priority;
use peregrine::falco::{self, Alert, ParseError};
use serde_json::json;

fn payload(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/payloads/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn parse(name: &str) -> Alert {
    falco::parse(&payload(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn modern_syscall_alert_gives_the_full_subject() {
    let alert = parse("shell-in-container-0.41.json");
    assert_eq!(alert.rule, "Terminal shell in container");
    assert_eq!(alert.priority, Priority::Notice);
    assert_eq!(alert.source, "syscall");
    let s = falco::subject_of(&alert);
    assert_eq!(s.namespace.as_deref(), Some("shop"));
    assert_eq!(s.pod.as_deref(), Some("web-7d9f8b6c5d-x2k4q"));
    assert_eq!(s.container.as_deref(), Some("web"));
    assert_eq!(s.container_id.as_deref(), Some("3f2a9c1b7d4e"));
    assert_eq!(
        s.image.as_deref(),
        Some("registry.example.com/shop/web:1.4.2")
    );
    assert_eq!(s.node.as_deref(), Some("worker-3"));
    let p = s.process.expect("process");
    assert_eq!(p.name.as_deref(), Some("bash"));
    assert_eq!(
        p.cmdline.as_deref(),
        Some("bash -c \"echo $(id) && cat /etc/shadow\"")
    );
    assert_eq!(s.user.expect("user").uid, Some(0));
}

#[test]
fn numbers_beyond_i64_and_2_pow_53_stay_exact() {
    let alert = parse("shell-in-container-0.41.json");
    assert_eq!(
        alert.output_fields["evt.time"],
        json!(1764493964153628901_i64)
    );
    assert_eq!(
        alert.field("proc.exe_ino.ctime").as_deref(),
        Some("18446744073697073282")
    );
    let internal = parse("internal-metrics.json");
    assert_eq!(
        internal.field("scap.n_evts").as_deref(),
        Some("18446744073709551615")
    );
    // A counter sent as a string stays a string.
    assert_eq!(internal.output_fields["falco.n_drops"], json!("815508"));
}

#[test]
fn old_payload_without_source_hostname_or_tags_is_a_syscall_alert() {
    let alert = parse("shell-in-container-0.29-old.json");
    assert_eq!(alert.source, "syscall");
    assert_eq!(alert.hostname, None);
    assert!(alert.tags.is_empty());
    let s = falco::subject_of(&alert);
    assert_eq!(s.namespace, None, "null namespace is unknown, not \"null\"");
    assert_eq!(s.pod, None);
    assert_eq!(s.image, None, "<NA> is unknown, not a value");
}

#[test]
fn sidekick_uuid_and_eight_fraction_digits_are_read() {
    let alert = parse("sidekick-ptrace.json");
    assert_eq!(
        alert.uuid.as_deref(),
        Some("0b8e4c47-7c1b-4f2f-9d5e-2a4c6e1f9b30")
    );
    assert!(alert.timestamp.is_some(), "{:?}", alert.time);
}

#[test]
fn audit_alert_names_its_subject_from_ka_fields() {
    let alert = parse("k8s-audit-exec.json");
    let s = falco::subject_of(&alert);
    assert_eq!(s.namespace.as_deref(), Some("data"));
    assert_eq!(s.pod.as_deref(), Some("db-0"));
    assert_eq!(
        s.user.and_then(|u| u.name).as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(alert.field("ka.response.code").as_deref(), Some("101"));
    assert_eq!(
        alert.field("ka.uri.param[command]").as_deref(),
        Some("/bin/sh")
    );
}

#[test]
fn internal_events_are_recognised() {
    let alert = parse("internal-metrics.json");
    assert!(alert.is_internal());
    assert_eq!(alert.priority, Priority::Informational);
}

#[test]
fn keys_with_trailing_spaces_and_brackets_are_kept_flat() {
    let alert = parse("gcp-policy.json");
    assert_eq!(alert.priority, Priority::Warning, "WARNING in capitals");
    assert!(alert.output_fields.contains_key("gcp.userAgent "));
    assert_eq!(
        alert
            .field("json.value[/resource/labels/policy_name]")
            .as_deref(),
        Some("allow-all")
    );
    assert_eq!(alert.field("gcp.policyDelta"), None);
    // A JSON document inside a string stays a string.
    assert!(alert.output_fields["gcp.request"].is_string());
}

#[test]
fn dotted_keys_that_prefix_each_other_both_survive() {
    let alert = parse("cloudtrail-console-login.json");
    assert_eq!(alert.field("ct.user").as_deref(), Some("bob"));
    assert_eq!(
        alert.field("ct.user.accountid").as_deref(),
        Some("123456789012")
    );
    assert_eq!(alert.field("ct.response"), None, "empty string is missing");
    assert_eq!(
        falco::subject_of(&alert)
            .user
            .and_then(|u| u.name)
            .as_deref(),
        Some("bob")
    );
}

#[test]
fn integer_priority_and_host_events() {
    let alert = parse("host-event-integer-priority.json");
    assert_eq!(alert.priority, Priority::Error);
    let s = falco::subject_of(&alert);
    assert_eq!(s.container_id.as_deref(), Some("host"));
    assert_eq!(s.namespace, None);
    assert_eq!(s.pod, None);
}

#[test]
fn broken_payloads_are_refused_with_a_reason() {
    let cases = [
        (
            "broken-field-without-value.json",
            "not_json",
            "not valid JSON",
        ),
        (
            "broken-two-alerts-one-line.json",
            "not_json",
            "one alert per request",
        ),
        (
            "broken-2016-two-fields.json",
            "missing_field",
            "missing rule, priority, output_fields",
        ),
    ];
    for (name, reason, message) in cases {
        let err = falco::parse(&payload(name)).expect_err(name);
        assert_eq!(err.reason(), reason, "{name}: {err}");
        assert!(err.to_string().contains(message), "{name}: {err}");
    }
}

#[test]
fn other_bodies_are_refused_clearly() {
    let cases: [(&[u8], &str); 6] = [
        (b"[1,2]", "not_an_object"),
        (b"09:12:44.1: Notice A shell was spawned", "not_json"),
        (
            br#"{"rule":"x","priority":"Loud","output_fields":{}}"#,
            "bad_priority",
        ),
        (
            br#"{"rule":"x","priority":9,"output_fields":{}}"#,
            "wrong_type",
        ),
        (
            br#"{"rule":"x","priority":"Notice","output_fields":[]}"#,
            "wrong_type",
        ),
        (
            br#"{"rule":{"a":1},"priority":"Notice","output_fields":{}}"#,
            "wrong_type",
        ),
    ];
    for (body, reason) in cases {
        let err: ParseError = falco::parse(body).expect_err(&String::from_utf8_lossy(body));
        assert_eq!(err.reason(), reason, "{err}");
    }
}

#[test]
fn invalid_utf8_becomes_replacement_characters() {
    let mut body = br#"{"rule":"Terminal shell in container","priority":"Notice","output":"x","output_fields":{"proc.cmdline":"sh -c "#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(br#""}}"#);
    let alert = falco::parse(&body).expect("lossy UTF-8 is accepted");
    assert_eq!(
        alert.field("proc.cmdline").as_deref(),
        Some("sh -c \u{fffd}\u{fffd}")
    );
}

#[test]
fn plugin_alerts_with_microsecond_times_old_source_names_and_integer_iso_times_parse() {
    let body = br#"{"output":"GCP audit","priority":"Notice","rule":"Custom GCP rule","source":"auditlogs",
        "time":"2026-11-30T13:00:00.123456Z",
        "output_fields":{"evt.time.iso8601":1764507600123456000,"gcp.user":"a@example.com","jevt.time":"13:00:00.123456"}}"#;
    let alert = falco::parse(body).expect("parses");
    assert_eq!(alert.source, "auditlogs");
    assert_eq!(
        alert.timestamp.map(|t| t.subsec_microsecond()),
        Some(123_456)
    );
    assert_eq!(
        alert.field("evt.time.iso8601").as_deref(),
        Some("1764507600123456000")
    );
    assert_eq!(alert.field("jevt.time").as_deref(), Some("13:00:00.123456"));
}

#[test]
fn a_falco_log_line_posted_instead_of_an_alert_is_refused_as_not_json() {
    let line = b"Thu Dec  3 09:12:44 2026: Falco initialized with configuration file: /etc/falco/falco.yaml";
    let err = falco::parse(line).expect_err("a log line is no alert");
    assert_eq!(err.reason(), "not_json");
}

#[test]
fn a_field_that_is_a_number_in_one_alert_and_null_in_another_reads_the_same_way() {
    let with = |v: &str| {
        let body = format!(
            r#"{{"rule":"R","priority":"Notice","output":"x","output_fields":{{"ka.response.code":{v}}}}}"#
        );
        falco::parse(body.as_bytes())
            .expect("parses")
            .field("ka.response.code")
    };
    assert_eq!(with("403").as_deref(), Some("403"));
    assert_eq!(with("\"403\"").as_deref(), Some("403"));
    assert_eq!(with("null"), None);
    assert_eq!(with("\"<NA>\""), None);
}

#[test]
fn an_unparseable_time_is_kept_as_sent_and_not_trusted() {
    let body = br#"{"rule":"R","priority":"Notice","output":"x","time":"11:00:00.123","output_fields":{}}"#;
    let alert = falco::parse(body).expect("parses");
    assert_eq!(alert.time.as_deref(), Some("11:00:00.123"));
    assert_eq!(alert.timestamp, None);
}
