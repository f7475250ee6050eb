//! Real-shaped Falco alerts built from the upstream rule catalog, and the
//! mix a cluster sends: mostly one noisy Notice rule on a few workloads.

#[allow(clippy::collapsible_if)]
#[path = "../../tests/support/catalog.rs"]
mod catalog;

use anyhow::Context as _;
use bytes::{BufMut, Bytes, BytesMut};
pub use catalog::CatalogRule;
use serde_json::{Value, json};
use std::path::Path;

/// The rule that makes most of the volume (89% in one real 14-node cluster).
pub const NOISY_RULE: &str = "Contact K8S API Server From Container";
/// The rule the remediation policy acts on.
pub const POLICY_RULE: &str = "Drop and execute new binary in container";

/// A small, fast pseudo-random generator (xorshift64*): the load generator
/// needs speed and spread, not cryptographic quality.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn seeded() -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        Rng::new(nanos ^ u64::from(std::process::id()))
    }

    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// A number in `0.0..1.0`.
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn hex12(&mut self) -> String {
        format!("{:012x}", self.next() & 0xffff_ffff_ffff)
    }
}

/// A pod alerts are about.
#[derive(Clone, Debug)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub container_id: String,
    /// The Node it is bound to, when the benchmark made it run there.
    pub node: Option<String>,
}

/// What kind of alert, for the mix and the figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Noisy,
    Notice,
    Warning,
    Severe,
    Host,
    Policy,
}

#[derive(Clone, Debug)]
enum Segment {
    Literal(Bytes),
    Host,
    Time,
}

/// An alert body with holes for `hostname` and `time`, filled per request.
#[derive(Clone, Debug)]
pub struct Template {
    segments: Vec<Segment>,
    len: usize,
    pub kind: Kind,
    /// The hostname this alert must carry (the pod's Node), else the sender's.
    pub host: Option<String>,
    /// The pod it names.
    pub pod: Option<String>,
}

const HOST_HOLE: &str = "@@HOSTNAME@@";
const TIME_HOLE: &str = "@@TIME@@";

impl Template {
    fn new(alert: &Value, kind: Kind, host: Option<String>) -> anyhow::Result<Template> {
        let text = serde_json::to_string(alert)?;
        let mut segments = Vec::new();
        let mut rest = text.as_str();
        loop {
            let next = [(HOST_HOLE, Segment::Host), (TIME_HOLE, Segment::Time)]
                .into_iter()
                .filter_map(|(hole, seg)| rest.find(hole).map(|at| (at, hole, seg)))
                .min_by_key(|(at, _, _)| *at);
            match next {
                Some((at, hole, seg)) => {
                    segments.push(Segment::Literal(Bytes::copy_from_slice(
                        &rest.as_bytes()[..at],
                    )));
                    segments.push(seg);
                    rest = &rest[at + hole.len()..];
                }
                None => {
                    segments.push(Segment::Literal(Bytes::copy_from_slice(rest.as_bytes())));
                    break;
                }
            }
        }
        Ok(Template {
            segments,
            len: text.len(),
            kind,
            host,
            pod: alert
                .pointer("/output_fields/k8s.pod.name")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }

    /// The body for `host` (unless the template names its own) at `time`.
    pub fn render(&self, host: &str, time: &str) -> Bytes {
        let host = self.host.as_deref().unwrap_or(host);
        let mut out = BytesMut::with_capacity(self.len + host.len() + time.len());
        for s in &self.segments {
            match s {
                Segment::Literal(b) => out.put_slice(b),
                Segment::Host => out.put_slice(host.as_bytes()),
                Segment::Time => out.put_slice(time.as_bytes()),
            }
        }
        out.freeze()
    }
}

/// The upstream rules, from the catalog file.
pub fn load_catalog(path: &Path) -> anyhow::Result<Vec<CatalogRule>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn priority_is(rule: &CatalogRule, wanted: &[&str]) -> bool {
    wanted.iter().any(|w| rule.priority.eq_ignore_ascii_case(w))
}

/// The alert Falco 0.41+ would send for `rule` about `pod` (or the host when `None`).
fn alert(rule: &CatalogRule, pod: Option<&PodRef>) -> Value {
    let mut fields = serde_json::Map::new();
    for f in catalog::allowed_fields(rule) {
        let v = catalog::sample_value(&f);
        fields.insert(f, v);
    }
    match pod {
        Some(pod) => {
            fields.insert("k8s.ns.name".into(), json!(pod.namespace));
            fields.insert("k8s.pod.name".into(), json!(pod.name));
            fields.insert("container.id".into(), json!(pod.container_id));
            fields.insert("container.name".into(), json!("app"));
        }
        None => {
            fields.insert("k8s.ns.name".into(), Value::Null);
            fields.insert("k8s.pod.name".into(), Value::Null);
            fields.insert("container.id".into(), json!("host"));
            fields.insert("container.name".into(), json!("host"));
        }
    }
    // Falco writes the priority capitalised (Notice), the catalog in capitals.
    let mut priority = rule.priority.to_ascii_lowercase();
    if let Some(first) = priority.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    if priority == "Info" {
        priority = "Informational".into();
    }
    json!({
        "hostname": HOST_HOLE,
        "output": format!("{TIME_HOLE}: {priority} {}", rule.output),
        "output_fields": fields,
        "priority": priority,
        "rule": rule.rule,
        "source": rule.source,
        "tags": rule.tags,
        "time": TIME_HOLE,
    })
}

/// The workloads of one profile's namespace.
pub struct Workloads {
    /// The few workloads the noisy rule fires on, most on the first.
    pub noisy: Vec<Vec<PodRef>>,
    /// Ordinary applications: shells, Warning and Error rules.
    pub apps: Vec<Vec<PodRef>>,
    /// Pods the remediation policy acts on (bound to Nodes, running).
    pub targets: Vec<PodRef>,
    /// Node names host alerts come from.
    pub host_nodes: Vec<String>,
}

/// Every alert body the load can send, by kind.
pub struct Mix {
    pub noisy: Vec<Template>,
    /// Weights of `noisy` (cumulative, last is 1.0).
    noisy_weights: Vec<f64>,
    pub notice: Vec<Template>,
    pub warning: Vec<Template>,
    pub severe: Vec<Template>,
    pub host: Vec<Template>,
    pub policy: Vec<Template>,
    pub host_nodes: Vec<String>,
    /// An oversized alert (over the intake's 64 KiB limit).
    pub oversized: Bytes,
}

/// Shares of the alert volume by kind (the rest is the noisy rule).
pub const SHARE_NOTICE: f64 = 0.06;
pub const SHARE_WARNING: f64 = 0.10;
pub const SHARE_SEVERE: f64 = 0.02;
pub const SHARE_POLICY: f64 = 0.01;
/// Bad requests, on top of the alerts: no credentials, malformed, oversized.
pub const SHARE_BAD: f64 = 0.01;

impl Mix {
    pub fn build(rules: &[CatalogRule], w: &Workloads) -> anyhow::Result<Mix> {
        let syscall: Vec<&CatalogRule> = rules.iter().filter(|r| r.source == "syscall").collect();
        let find = |name: &str| {
            syscall
                .iter()
                .find(|r| r.rule == name)
                .copied()
                .with_context(|| format!("rule {name:?} is not in the catalog"))
        };
        let noisy_rule = find(NOISY_RULE)?;
        anyhow::ensure!(
            !w.noisy.is_empty() && !w.apps.is_empty(),
            "no workloads to alert on"
        );
        let policy_rule = find(POLICY_RULE)?;
        let pick = |wanted: &[&str], n: usize, host: bool| -> Vec<&CatalogRule> {
            syscall
                .iter()
                .filter(|r| priority_is(r, wanted) && r.rule != NOISY_RULE && r.rule != POLICY_RULE)
                .filter(|r| !host || r.tags.iter().any(|t| t == "host"))
                .take(n)
                .copied()
                .collect()
        };
        // Each kind is spread over a few workloads: a cluster's alerts come
        // from few incidents that repeat (see FALCO-PAYLOADS.md, "Volume").
        let per = |rules: Vec<&CatalogRule>,
                   kind: Kind,
                   apps: &[Vec<PodRef>]|
         -> anyhow::Result<Vec<Template>> {
            let mut out = Vec::new();
            for r in rules {
                for p in apps.iter().flatten() {
                    out.push(Template::new(&alert(r, Some(p)), kind, None)?);
                }
            }
            Ok(out)
        };
        let (front, back) = w.apps.split_at(w.apps.len().min(3));
        let mut noisy = Vec::new();
        let mut noisy_weights = Vec::new();
        let shares = [0.6, 0.3, 0.1];
        let mut acc = 0.0;
        for (i, workload) in w.noisy.iter().enumerate() {
            let share = shares.get(i).copied().unwrap_or(0.05) / workload.len().max(1) as f64;
            for p in workload {
                noisy.push(Template::new(
                    &alert(noisy_rule, Some(p)),
                    Kind::Noisy,
                    None,
                )?);
                acc += share;
                noisy_weights.push(acc);
            }
        }
        for x in &mut noisy_weights {
            *x /= acc.max(f64::MIN_POSITIVE);
        }
        let host = pick(&["ERROR", "CRITICAL"], 2, true)
            .into_iter()
            .map(|r| Template::new(&alert(r, None), Kind::Host, None))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let policy = w
            .targets
            .iter()
            .map(|p| Template::new(&alert(policy_rule, Some(p)), Kind::Policy, p.node.clone()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let big = "A".repeat(70 * 1024);
        let oversized = serde_json::to_vec(&json!({
            "rule": NOISY_RULE, "priority": "Notice", "output": big, "output_fields": {}
        }))?;
        Ok(Mix {
            noisy,
            noisy_weights,
            notice: per(pick(&["NOTICE"], 2, false), Kind::Notice, front)?,
            warning: per(pick(&["WARNING"], 2, false), Kind::Warning, front)?,
            severe: per(pick(&["ERROR", "CRITICAL"], 3, false), Kind::Severe, back)?,
            host,
            policy,
            host_nodes: w.host_nodes.clone(),
            oversized: Bytes::from(oversized),
        })
    }

    /// One alert of the mix: its template and the hostname it comes from.
    pub fn pick<'a>(&'a self, rng: &mut Rng, sender: &'a str) -> (&'a Template, &'a str) {
        let x = rng.unit();
        let from = |set: &'a [Template], rng: &mut Rng| set.get(rng.below(set.len()));
        let chosen = if x < SHARE_POLICY {
            from(&self.policy, rng)
        } else if x < SHARE_POLICY + SHARE_SEVERE {
            if rng.below(4) == 0 {
                let host = self
                    .host_nodes
                    .get(rng.below(self.host_nodes.len()))
                    .map_or(sender, String::as_str);
                if let Some(t) = from(&self.host, rng) {
                    return (t, host);
                }
                None
            } else {
                from(&self.severe, rng)
            }
        } else if x < SHARE_POLICY + SHARE_SEVERE + SHARE_WARNING {
            from(&self.warning, rng)
        } else if x < SHARE_POLICY + SHARE_SEVERE + SHARE_WARNING + SHARE_NOTICE {
            from(&self.notice, rng)
        } else {
            None
        };
        let t = chosen.unwrap_or_else(|| self.noisy_one(rng));
        (t, sender)
    }

    /// The noisy rule, on its workloads by their weights.
    pub fn noisy_one(&self, rng: &mut Rng) -> &Template {
        let x = rng.unit();
        let i = self
            .noisy_weights
            .iter()
            .position(|w| x < *w)
            .unwrap_or(self.noisy.len().saturating_sub(1));
        &self.noisy[i.min(self.noisy.len().saturating_sub(1))]
    }

    /// A malformed alert, as Falco really emitted one (a field with no value).
    pub fn malformed(&self) -> Bytes {
        Bytes::from_static(
            br#"{"hostname":"bench","output":"x","output_fields":{"evt.time":,"proc.name":"bash"},"priority":"Notice","rule":"Terminal shell in container"}"#,
        )
    }
}
