//! The load: many Falco nodes, each with one keep-alive connection, posting
//! alerts on its own schedule, and a few misconfigured senders.

use crate::alerts::{Kind, Mix, Rng};
use crate::client::Connection;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// One simulated Falco node.
pub struct Node {
    pub host: String,
    pub conn: Connection,
    pub rng: Rng,
}

/// How much load, for how long.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Alerts per second over all nodes but the hot one.
    pub rate: f64,
    /// Alerts per second of node 0 alone (a looping workload), noisy rule only.
    pub hot_rate: Option<f64>,
    /// Bad requests per second, on top.
    pub bad_rate: f64,
    pub duration: Duration,
}

/// What the nodes saw.
#[derive(Default)]
pub struct Outcome {
    /// Alerts due within the duration.
    pub scheduled: u64,
    /// Alerts posted (an answer or a transport error came back).
    pub sent: u64,
    /// Alerts answered 202.
    pub acked: u64,
    /// Answers to alerts other than 202, by status code.
    pub refused: BTreeMap<u16, u64>,
    /// Alerts that got no answer (connection failed).
    pub transport_errors: u64,
    /// Acknowledgement latency of every answered alert, in microseconds.
    pub latencies_us: Vec<u32>,
    /// Report key (namespace/name) → when the first alert that went to it was sent.
    pub first_sent: HashMap<String, Instant>,
    /// Report keys of the alerts a policy acts on, with the pod they name.
    pub policy_reports: HashMap<String, String>,
    pub acked_by_kind: BTreeMap<String, u64>,
    /// Bad requests: what was sent → status code → count.
    pub bad: BTreeMap<&'static str, BTreeMap<u16, u64>>,
    pub reconnects: u64,
    /// From the start to the last answer.
    pub elapsed: Duration,
}

impl Outcome {
    pub fn absorb(&mut self, other: Outcome) {
        self.scheduled += other.scheduled;
        self.sent += other.sent;
        self.acked += other.acked;
        for (k, v) in other.refused {
            *self.refused.entry(k).or_default() += v;
        }
        self.transport_errors += other.transport_errors;
        self.latencies_us.extend(other.latencies_us);
        for (k, t) in other.first_sent {
            let e = self.first_sent.entry(k).or_insert(t);
            if t < *e {
                *e = t;
            }
        }
        self.policy_reports.extend(other.policy_reports);
        for (k, v) in other.acked_by_kind {
            *self.acked_by_kind.entry(k).or_default() += v;
        }
        for (what, codes) in other.bad {
            let e = self.bad.entry(what).or_default();
            for (c, n) in codes {
                *e.entry(c).or_default() += n;
            }
        }
        self.reconnects += other.reconnects;
        self.elapsed = self.elapsed.max(other.elapsed);
    }
}

/// The report key in a 202 answer: `{"report":"namespace/name"}`.
fn report_of(body: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("\"report\":\"")? + "\"report\":\"".len();
    let end = text[start..].find('"')? + start;
    Some(&text[start..end])
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Noisy => "noisy",
        Kind::Notice => "notice",
        Kind::Warning => "warning",
        Kind::Severe => "severe",
        Kind::Host => "host",
        Kind::Policy => "policy",
    }
}

/// Runs `plan` on `nodes` (they come back with their connections open) and
/// on the bad senders.
pub async fn run(
    nodes: Vec<Node>,
    bad: Vec<(&'static str, Connection)>,
    mix: Arc<Mix>,
    plan: Plan,
) -> (Vec<Node>, Vec<(&'static str, Connection)>, Outcome) {
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + plan.duration;
    let n = nodes.len().max(1);
    let normal = if plan.hot_rate.is_some() {
        n.saturating_sub(1).max(1)
    } else {
        n
    };
    let mut tasks = Vec::with_capacity(n);
    for (i, node) in nodes.into_iter().enumerate() {
        let hot = plan.hot_rate.is_some() && i == 0;
        let rate = match plan.hot_rate {
            Some(r) if hot => r,
            _ => plan.rate / normal as f64,
        };
        let mix = mix.clone();
        tasks.push(tokio::spawn(node_loop(node, mix, rate, hot, start, end)));
    }
    let per_bad = plan.bad_rate / bad.len().max(1) as f64;
    let mut bad_tasks = Vec::new();
    for (what, conn) in bad {
        let mix = mix.clone();
        bad_tasks.push(tokio::spawn(bad_loop(what, conn, mix, per_bad, start, end)));
    }
    let mut outcome = Outcome::default();
    let mut nodes = Vec::with_capacity(n);
    for t in tasks {
        if let Ok((node, o)) = t.await {
            outcome.absorb(o);
            nodes.push(node);
        }
    }
    let mut bad = Vec::new();
    for t in bad_tasks {
        if let Ok((what, conn, o)) = t.await {
            outcome.absorb(o);
            bad.push((what, conn));
        }
    }
    outcome.elapsed = outcome.elapsed.max(plan.duration);
    (nodes, bad, outcome)
}

/// How many due times `first + k * period` fall before `end`.
fn due_count(first: Instant, period: Duration, end: Instant) -> u64 {
    if first >= end || period.is_zero() {
        return 0;
    }
    ((end - first).as_secs_f64() / period.as_secs_f64()).ceil() as u64
}

async fn node_loop(
    mut node: Node,
    mix: Arc<Mix>,
    rate: f64,
    hot: bool,
    start: Instant,
    end: Instant,
) -> (Node, Outcome) {
    let mut o = Outcome::default();
    if rate <= 0.0 {
        return (node, o);
    }
    let period = Duration::from_secs_f64(1.0 / rate);
    let first = start + period.mul_f64(node.rng.unit());
    o.scheduled = due_count(first, period, end);
    let mut next = first;
    // A node that falls behind catches up, like Falco's output queue, but
    // stops at the end: what it could not send is counted as not sent.
    while next < end && Instant::now() < end {
        tokio::time::sleep_until(next).await;
        next += period;
        let (template, host) = if hot {
            (mix.noisy_one(&mut node.rng), node.host.as_str())
        } else {
            mix.pick(&mut node.rng, &node.host)
        };
        let time = jiff::Timestamp::now().to_string();
        let body = template.render(host, &time);
        let sent = Instant::now();
        o.sent += 1;
        match node.conn.post("application/json", body).await {
            Ok(answer) => {
                let took = sent.elapsed();
                o.latencies_us
                    .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                if answer.status.as_u16() == 202 {
                    o.acked += 1;
                    *o.acked_by_kind
                        .entry(kind_name(template.kind).to_string())
                        .or_default() += 1;
                    if let Some(key) = report_of(&answer.body) {
                        if !o.first_sent.contains_key(key) {
                            o.first_sent.insert(key.to_string(), sent);
                        }
                        if template.kind == Kind::Policy && !o.policy_reports.contains_key(key) {
                            o.policy_reports
                                .insert(key.to_string(), template.pod.clone().unwrap_or_default());
                        }
                    }
                } else {
                    *o.refused.entry(answer.status.as_u16()).or_default() += 1;
                }
            }
            Err(_) => o.transport_errors += 1,
        }
        o.elapsed = Instant::now().saturating_duration_since(start);
    }
    o.reconnects = node.conn.reconnects;
    node.conn.reconnects = 0;
    (node, o)
}

async fn bad_loop(
    what: &'static str,
    mut conn: Connection,
    mix: Arc<Mix>,
    rate: f64,
    start: Instant,
    end: Instant,
) -> (&'static str, Connection, Outcome) {
    let mut o = Outcome::default();
    if rate <= 0.0 {
        return (what, conn, o);
    }
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut rng = Rng::seeded();
    let mut next = start + period.mul_f64(rng.unit());
    while next < end && Instant::now() < end {
        tokio::time::sleep_until(next).await;
        next += period;
        let body = match what {
            "oversized" => mix.oversized.clone(),
            "malformed" => mix.malformed(),
            _ => mix
                .noisy_one(&mut rng)
                .render("bench-node-anonymous", &jiff::Timestamp::now().to_string()),
        };
        let code = match conn.post("application/json", body).await {
            Ok(answer) => answer.status.as_u16(),
            // The intake may answer and close before the body is sent (oversized).
            Err(_) => 0,
        };
        *o.bad.entry(what).or_default().entry(code).or_default() += 1;
    }
    (what, conn, o)
}
