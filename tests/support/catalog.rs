//! The upstream rule catalog, and alerts built from its output templates.
//! Shared by several test binaries, each using part of it.
#![allow(dead_code)]

use serde::Deserialize;
use serde_json::{Map, Value, json};

#[derive(Debug, Clone, Deserialize)]
pub struct CatalogRule {
    pub rule: String,
    pub priority: String,
    pub source: String,
    pub tags: Vec<String>,
    pub output: String,
}

pub fn catalog() -> Vec<CatalogRule> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/falco-rules-catalog.json"
    );
    let text = std::fs::read_to_string(path).expect("catalog readable");
    serde_json::from_str(&text).expect("catalog parses")
}

/// Fields Falco appends to every syscall alert (container plugin, since 0.41).
pub const APPENDED_SYSCALL_FIELDS: &[&str] = &[
    "container.id",
    "container.name",
    "container.image.repository",
    "container.image.tag",
    "k8s.ns.name",
    "k8s.pod.name",
];

/// The `%field` names of an output template, in order.
pub fn template_fields(output: &str) -> Vec<String> {
    let mut fields: Vec<String> = Vec::new();
    let bytes = output.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let start = i + 1;
            let mut j = start;
            while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || b"_.".contains(&bytes[j]))
            {
                j += 1;
            }
            if j < bytes.len()
                && bytes[j] == b'['
                && let Some(close) = output[j..].find(']')
            {
                j += close + 1;
            }
            let name = output[start..j].trim_end_matches('.').to_string();
            if !name.is_empty() && !fields.contains(&name) {
                fields.push(name);
            }
            i = j;
        } else {
            i += 1;
        }
    }
    fields
}

/// Fields an exception or finding of this rule may name.
pub fn allowed_fields(rule: &CatalogRule) -> Vec<String> {
    let mut fields = template_fields(&rule.output);
    if rule.source == "syscall" {
        fields.extend(APPENDED_SYSCALL_FIELDS.iter().map(|s| s.to_string()));
    }
    fields
}

/// A plausible value for a field, of the JSON type Falco sends.
pub fn sample_value(field: &str) -> Value {
    match field {
        "k8s.ns.name" | "ka.target.namespace" => json!("shop"),
        "k8s.pod.name" => json!("web-7d9f8b6c5d-x2k4q"),
        "ka.target.name" => json!("web-7d9f8b6c5d-x2k4q"),
        "ka.target.resource" => json!("pods"),
        "ka.user.name" => json!("alice@example.com"),
        "container.id" => json!("3f2a9c1b7d4e"),
        "container.name" => json!("web"),
        "container.image.repository" => json!("registry.example.com/shop/web"),
        "container.image.tag" => json!("1.4.2"),
        "user.name" => json!("root"),
        "user.uid" | "user.loginuid" => json!(0),
        "evt.time" => json!(1764493964153628901_i64),
        "proc.name" => json!("bash"),
        "proc.pname" => json!("containerd-shim"),
        "proc.cmdline" => json!("bash -c \"cat /etc/shadow\""),
        "proc.exepath" => json!("/usr/bin/bash"),
        "fd.name" => json!("/etc/shadow"),
        "ct.user" | "gcp.user" | "okta.actor.name" | "github.user" => json!("mallory@example.com"),
        "ct.region" => json!("us-east-1"),
        "ct.srcip" | "gcp.callerIP" | "okta.client.ip" => json!("203.0.113.9"),
        "gcp.projectId" => json!("acme-prod"),
        "github.owner" | "github.org" => json!("acme"),
        "github.repo.name" => json!("payments"),
        f if f.ends_with(".pid") || f.ends_with("port") || f.ends_with(".uid") => json!(4242),
        f => json!(format!("sample-{}", f.replace(['[', ']', '/'], "-"))),
    }
}

/// The JSON body Falco would POST for this rule.
pub fn alert_body(rule: &CatalogRule) -> Vec<u8> {
    let mut fields = Map::new();
    for f in allowed_fields(rule) {
        let v = sample_value(&f);
        fields.insert(f, v);
    }
    serde_json::to_vec(&json!({
        "hostname": "worker-1",
        "output": rule.output,
        "output_fields": fields,
        "priority": rule.priority,
        "rule": rule.rule,
        "source": rule.source,
        "tags": rule.tags,
        "time": "2026-11-30T09:12:44.153628901Z",
    }))
    .expect("serializes")
}
