//! Figures from what the load saw, the API server counted and the operator
//! reported; the table and the JSON line.

use crate::load::Outcome;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use tokio::time::Instant;

const WRITE_VERBS: [&str; 6] = [
    "POST",
    "PUT",
    "PATCH",
    "APPLY",
    "DELETE",
    "DELETECOLLECTION",
];
/// Drops of alerts that had been acknowledged (202) and are counted by the operator.
const DROPPED_AFTER_ACK: [&str; 3] = [
    "shed_for_higher_priority",
    "not_written_before_shutdown",
    "rejected_by_api",
];

fn label<'a>(key: &'a str, name: &str) -> Option<&'a str> {
    let needle = format!("{name}=\"");
    let start = key.find(&needle)? + needle.len();
    let end = key[start..].find('"')? + start;
    Some(&key[start..end])
}

/// Alerts the operator acknowledged and then dropped, by its own metrics.
pub fn shed_after_ack(metrics: &BTreeMap<String, f64>) -> u64 {
    metrics
        .iter()
        .filter(|(k, _)| k.starts_with("peregrine_alerts_dropped_total{"))
        .filter(|(k, _)| label(k, "reason").is_some_and(|r| DROPPED_AFTER_ACK.contains(&r)))
        .map(|(_, v)| *v as u64)
        .sum()
}

/// `q` quantile of sorted values.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub n: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl Latency {
    fn of(mut ms: Vec<f64>) -> Latency {
        ms.sort_by(f64::total_cmp);
        let q = |x| quantile(&ms, x).map(|v| round(v, 3));
        Latency {
            n: ms.len(),
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: ms.last().map(|v| round(*v, 3)),
        }
    }
}

/// One step of the `max` profile.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub offered_per_s: f64,
    pub accepted_per_s: f64,
    pub ack_p99_ms: f64,
    pub not_sent: u64,
}

impl Step {
    pub fn of(rate: f64, o: &Outcome) -> Step {
        let lat = Latency::of(o.latencies_us.iter().map(|u| *u as f64 / 1000.0).collect());
        Step {
            offered_per_s: rate,
            accepted_per_s: round(o.acked as f64 / o.elapsed.as_secs_f64().max(1e-9), 1),
            ack_p99_ms: lat.p99_ms.unwrap_or(0.0),
            not_sent: o.scheduled.saturating_sub(o.sent),
        }
    }
}

pub struct Inputs {
    pub profile: &'static str,
    pub nodes: usize,
    pub seconds: f64,
    pub outcome: Outcome,
    pub steps: Vec<Step>,
    /// A step of `max` counts only when its acknowledgement p99 stays within this.
    pub max_p99_ms: f64,
    pub before: BTreeMap<(String, String), f64>,
    pub after: BTreeMap<(String, String), f64>,
    pub reports: crate::cluster::ReportFigures,
    pub report_seen: HashMap<String, Instant>,
    pub action_seen: HashMap<String, Instant>,
    pub policies: bool,
    pub metrics: BTreeMap<String, f64>,
    pub rss: u64,
    pub cpu: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub profile: &'static str,
    pub nodes: usize,
    pub seconds: f64,
    pub alerts_scheduled: u64,
    pub alerts_sent: u64,
    /// Due but not sent before the end: the node's one connection was too slow.
    pub alerts_not_sent: u64,
    pub alerts_acked: u64,
    pub accepted_per_s: f64,
    pub acked_by_kind: BTreeMap<String, u64>,
    pub ack: Latency,
    /// The operator's own view of the acknowledgement (handler entry to
    /// answer, from `peregrine_intake_ack_seconds`): bucket upper bounds.
    pub ack_in_handler_p50_ms: Option<f64>,
    pub ack_in_handler_p99_ms: Option<f64>,
    /// From the first alert of a new incident to its report in a watch.
    pub alert_to_report: Latency,
    /// From the first alert a policy acts on to the label / NetworkPolicy in a watch.
    pub alert_to_action: Option<Latency>,
    pub policies_active: bool,
    /// Write requests the API server counted during the profile, by "VERB resource".
    pub api_writes: BTreeMap<String, u64>,
    pub alertreport_writes: u64,
    pub alertreport_writes_per_1k_alerts: f64,
    /// Every write but control-plane leases, per 1,000 alerts.
    pub all_writes_per_1k_alerts: f64,
    /// Acknowledged but in no report count.
    pub lost: u64,
    /// Of those, dropped after the acknowledgement and counted by the operator.
    pub dropped_after_ack: u64,
    /// Lost and not counted anywhere.
    pub unaccounted: u64,
    /// Alerts refused, by the status code the nodes got.
    pub refused_by_code: BTreeMap<u16, u64>,
    /// Requests refused, by the operator's reason (peregrine_intake_requests_total).
    pub refused_by_reason: BTreeMap<String, u64>,
    /// peregrine_alerts_dropped_total by reason.
    pub dropped_by_reason: BTreeMap<String, u64>,
    /// Bad requests sent: what → status code → count.
    pub bad_requests: BTreeMap<String, BTreeMap<u16, u64>>,
    pub transport_errors: u64,
    pub reconnects: u64,
    pub peak_rss_mib: f64,
    pub cpu_seconds: f64,
    pub reports: u64,
    pub report_occurrences: u64,
    pub reports_bytes: u64,
    pub steps: Vec<Step>,
}

impl Figures {
    pub fn compute(i: Inputs) -> Figures {
        let o = &i.outcome;
        let ack = Latency::of(o.latencies_us.iter().map(|u| *u as f64 / 1000.0).collect());
        let ms = |from: &Instant, to: &Instant| {
            to.checked_duration_since(*from)
                .map(|d| d.as_secs_f64() * 1000.0)
        };
        let alert_to_report = Latency::of(
            o.first_sent
                .iter()
                .filter_map(|(k, t)| i.report_seen.get(k).and_then(|s| ms(t, s)))
                .collect(),
        );
        let alert_to_action = i.policies.then(|| {
            let mut samples = Vec::new();
            for (key, pod) in &o.policy_reports {
                let Some(first) = o.first_sent.get(key) else {
                    continue;
                };
                for action in [format!("isolate/{key}"), format!("label/{pod}")] {
                    if let Some(seen) = i.action_seen.get(&action).and_then(|s| ms(first, s)) {
                        samples.push(seen);
                    }
                }
            }
            Latency::of(samples)
        });
        let mut api_writes = BTreeMap::new();
        let mut alertreport_writes = 0;
        let mut all_writes = 0;
        for ((verb, resource), v) in &i.after {
            if !WRITE_VERBS.contains(&verb.as_str()) {
                continue;
            }
            let d = (v - i
                .before
                .get(&(verb.clone(), resource.clone()))
                .unwrap_or(&0.0))
            .max(0.0) as u64;
            if d == 0 {
                continue;
            }
            api_writes.insert(format!("{verb} {resource}"), d);
            if resource.starts_with("alertreports") {
                alertreport_writes += d;
            }
            if !resource.starts_with("leases") {
                all_writes += d;
            }
        }
        let per_1k = |n: u64| round(n as f64 * 1000.0 / (o.acked.max(1)) as f64, 2);
        let mut refused_by_reason = BTreeMap::new();
        let mut dropped_by_reason = BTreeMap::new();
        for (k, v) in &i.metrics {
            if k.starts_with("peregrine_intake_requests_total{")
                && let Some(reason) = label(k, "reason")
                && reason != "accepted"
            {
                *refused_by_reason.entry(reason.to_string()).or_default() += *v as u64;
            }
            if k.starts_with("peregrine_alerts_dropped_total{")
                && let Some(reason) = label(k, "reason")
            {
                *dropped_by_reason.entry(reason.to_string()).or_default() += *v as u64;
            }
        }
        let (handler_p50, handler_p99) = handler_quantiles(&i.metrics);
        let lost = o.acked.saturating_sub(i.reports.occurrences);
        let dropped_after_ack = shed_after_ack(&i.metrics).min(lost);
        Figures {
            profile: i.profile,
            nodes: i.nodes,
            seconds: i.seconds,
            alerts_scheduled: o.scheduled,
            alerts_sent: o.sent,
            alerts_not_sent: o.scheduled.saturating_sub(o.sent),
            alerts_acked: o.acked,
            // `max`: the best step whose acknowledgements kept within the
            // p99 limit; a faster step past the limit does not count.
            accepted_per_s: if i.steps.is_empty() {
                round(o.acked as f64 / o.elapsed.as_secs_f64().max(1e-9), 1)
            } else {
                i.steps
                    .iter()
                    .filter(|s| s.ack_p99_ms <= i.max_p99_ms)
                    .map(|s| s.accepted_per_s)
                    .reduce(f64::max)
                    .unwrap_or(0.0)
            },
            acked_by_kind: o.acked_by_kind.clone(),
            ack,
            ack_in_handler_p50_ms: handler_p50,
            ack_in_handler_p99_ms: handler_p99,
            alert_to_report,
            alert_to_action,
            policies_active: i.policies,
            api_writes,
            alertreport_writes,
            alertreport_writes_per_1k_alerts: per_1k(alertreport_writes),
            all_writes_per_1k_alerts: per_1k(all_writes),
            lost,
            dropped_after_ack,
            unaccounted: lost - dropped_after_ack,
            refused_by_code: o.refused.clone(),
            refused_by_reason,
            dropped_by_reason,
            bad_requests: o
                .bad
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            transport_errors: o.transport_errors,
            reconnects: o.reconnects,
            peak_rss_mib: round(i.rss as f64 / (1024.0 * 1024.0), 1),
            cpu_seconds: round(i.cpu, 2),
            reports: i.reports.reports,
            report_occurrences: i.reports.occurrences,
            reports_bytes: i.reports.bytes,
            steps: i.steps,
        }
    }
}

/// p50 and p99 of the operator's ack histogram, as bucket upper bounds in ms.
fn handler_quantiles(metrics: &BTreeMap<String, f64>) -> (Option<f64>, Option<f64>) {
    let mut buckets: Vec<(f64, f64)> = metrics
        .iter()
        .filter(|(k, _)| k.starts_with("peregrine_intake_ack_seconds_bucket{"))
        .filter_map(|(k, v)| {
            let le = label(k, "le")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, *v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    let q = |x: f64| {
        buckets
            .iter()
            .find(|(_, c)| *c >= x * total && total > 0.0)
            .map(|(le, _)| round(le * 1000.0, 3))
    };
    (q(0.5), q(0.99))
}

fn fmt_ms(x: Option<f64>) -> String {
    match x {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
        None => "-".into(),
    }
}

/// One line, printed as each profile ends.
pub fn row_text(f: &Figures) -> String {
    format!(
        "[{}] accepted {:.0}/s, ack p99 {} ms, alert→report p99 {} ms, {} alertreport writes/1k, lost {}, RSS {} MiB",
        f.profile,
        f.accepted_per_s,
        fmt_ms(f.ack.p99_ms),
        fmt_ms(f.alert_to_report.p99_ms),
        f.alertreport_writes_per_1k_alerts,
        f.lost,
        f.peak_rss_mib
    )
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory_gib": round(mem_kib as f64 / (1024.0 * 1024.0), 1),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

fn goals(profiles: &[Figures]) -> Value {
    let get = |name: &str| profiles.iter().find(|f| f.profile == name);
    let mut g = serde_json::Map::new();
    if let Some(m) = get("max") {
        g.insert(
            "max_20k_accepted_per_s_zero_lost".into(),
            json!(m.accepted_per_s >= 20_000.0 && m.lost == 0),
        );
    }
    if let Some(n) = get("noisy") {
        g.insert(
            "noisy_ack_p99_under_5ms".into(),
            json!(n.ack.p99_ms.is_some_and(|v| v < 5.0)),
        );
        g.insert(
            "noisy_alert_to_report_p99_under_2s".into(),
            json!(n.alert_to_report.p99_ms.is_some_and(|v| v < 2000.0)),
        );
        g.insert(
            "noisy_alert_to_action_p99_under_1_5s".into(),
            match &n.alert_to_action {
                Some(a) => json!(a.p99_ms.is_some_and(|v| v < 1500.0)),
                None => Value::Null,
            },
        );
        g.insert(
            "noisy_at_most_25_writes_per_1k".into(),
            json!(n.all_writes_per_1k_alerts <= 25.0),
        );
        g.insert("noisy_rss_under_64mib".into(), json!(n.peak_rss_mib < 64.0));
    }
    if let Some(s) = get("storm") {
        g.insert(
            "storm_nothing_acked_lost".into(),
            json!(s.unaccounted == 0 && s.lost == s.dropped_after_ack),
        );
        g.insert(
            "storm_rss_under_128mib".into(),
            json!(s.peak_rss_mib < 128.0),
        );
    }
    Value::Object(g)
}

/// Everything, as the JSON line.
pub fn report(run_id: &str, args: &crate::Args, profiles: Vec<Figures>) -> Value {
    json!({
        "run": run_id,
        "time": jiff::Timestamp::now().to_string(),
        "machine": machine(),
        "auth": format!("{:?}", args.auth).to_lowercase(),
        "long": args.long,
        "goals": goals(&profiles),
        "profiles": profiles,
    })
}

/// The table printed before the JSON line.
pub fn table(report: &Value) -> String {
    let mut out = String::new();
    let m = &report["machine"];
    out.push_str(&format!(
        "machine: {} ({} cores, {} GiB, Linux {}), auth {}\n\n",
        m["cpu"].as_str().unwrap_or(""),
        m["cores"],
        m["memory_gib"],
        m["kernel"].as_str().unwrap_or(""),
        report["auth"].as_str().unwrap_or("")
    ));
    out.push_str("| profile | offered | accepted/s | ack p50 / p99 / p99.9 ms | alert→report p50 / p99 ms | alert→action p50 / p99 ms | AlertReport writes / all writes per 1k alerts | lost (unaccounted) | refused | peak RSS MiB | CPU s | reports | size KiB |\n");
    out.push_str(
        "| --- | --- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |\n",
    );
    let empty = Vec::new();
    for p in report["profiles"].as_array().unwrap_or(&empty) {
        let f = |k: &str| p[k].as_f64();
        let lat = |k: &str, q: &str| fmt_ms(p[k][q].as_f64());
        let action = if p["alert_to_action"].is_null() {
            "n/a".to_string()
        } else {
            format!(
                "{} / {}",
                lat("alert_to_action", "p50_ms"),
                lat("alert_to_action", "p99_ms")
            )
        };
        let offered = match p["profile"].as_str() {
            Some("max") => p["steps"]
                .as_array()
                .map(|s| {
                    let rates: Vec<String> = s
                        .iter()
                        .map(|x| format!("{:.0}", x["offered_per_s"].as_f64().unwrap_or(0.0)))
                        .collect();
                    format!("steps {}/s", rates.join(", "))
                })
                .unwrap_or_default(),
            _ => format!(
                "{:.0} alerts in {:.0} s",
                f("alerts_scheduled").unwrap_or(0.0),
                f("seconds").unwrap_or(0.0)
            ),
        };
        let refused: u64 = p["refused_by_code"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        out.push_str(&format!(
            "| {} | {} | {:.0} | {} / {} / {} | {} / {} | {} | {} / {} | {} ({}) | {} | {} | {} | {} | {:.0} |\n",
            p["profile"].as_str().unwrap_or(""),
            offered,
            f("accepted_per_s").unwrap_or(0.0),
            lat("ack", "p50_ms"),
            lat("ack", "p99_ms"),
            lat("ack", "p999_ms"),
            lat("alert_to_report", "p50_ms"),
            lat("alert_to_report", "p99_ms"),
            action,
            f("alertreport_writes_per_1k_alerts").unwrap_or(0.0),
            f("all_writes_per_1k_alerts").unwrap_or(0.0),
            p["lost"],
            p["unaccounted"],
            refused,
            f("peak_rss_mib").unwrap_or(0.0),
            f("cpu_seconds").unwrap_or(0.0),
            p["reports"],
            f("reports_bytes").unwrap_or(0.0) / 1024.0,
        ));
    }
    out.push_str(&format!("\ngoals: {}", report["goals"]));
    out
}
