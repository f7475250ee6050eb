//! How much CPU the intake spends on one alert once its body is read: parse,
//! subject, pod facts, incident key and queueing, as `POST /v1/falco` does
//! (no network, no TLS). Alerts repeat a few dozen incidents, as in
//! `make bench`, so most of them join an incident already waiting.
//! Prints its figures; asserts nothing.
//!
//! Run with `cargo bench --bench intake`.

#[path = "../tests/support/catalog.rs"]
mod catalog;
#[path = "support/rate.rs"]
mod rate;

use k8s_openapi::api::core::v1::Pod;
use peregrine::crd::WorkloadRef;
use peregrine::falco;
use peregrine::intake::queue::{Queue, protect_critical};
use peregrine::metrics::Metrics;
use peregrine::report::Arrival;
use peregrine::report::aggregate::Bounds;
use std::hint::black_box;
use std::time::Duration;

// The operator's allocator, so the figures are the operator's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Distinct incidents the alerts fall into.
const INCIDENTS: usize = 36;

fn main() {
    let rules = catalog::catalog();
    let bodies: Vec<Vec<u8>> = rules
        .iter()
        .filter(|r| r.source == "syscall")
        .take(INCIDENTS)
        .map(catalog::alert_body)
        .collect();
    let pod: Pod = match serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-7d9f8b6c5d-x2k4q", "namespace": "shop",
                     "labels": {"app": "web", "pod-template-hash": "7d9f8b6c5d"}},
        "spec": {
            "nodeName": "worker-1",
            "serviceAccountName": "web",
            "securityContext": {"runAsNonRoot": true},
            "containers": [
                {"name": "web", "image": "nginx:1.27",
                 "securityContext": {"allowPrivilegeEscalation": false,
                                     "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}}},
                {"name": "sidecar", "image": "envoy:1.31"}
            ],
            "volumes": [{"name": "logs", "hostPath": {"path": "/var/log"}}]
        }
    })) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("the sample pod does not parse: {e}");
            std::process::exit(1);
        }
    };
    let workload = WorkloadRef {
        kind: "Deployment".into(),
        name: "web".into(),
    };
    let bounds = Bounds::default();
    let queue = Queue::new(10_000, bounds, protect_critical(), Metrics::new());

    let per_sec = rate::per_second(Duration::from_secs(3), |n| {
        let body = &bodies[n as usize % bodies.len()];
        let alert = falco::parse(body).expect("catalog alerts parse");
        let mut subject = falco::subject_of(&alert);
        subject.workload = Some(workload.clone());
        let arrival = Arrival::new(
            alert,
            subject,
            None,
            "peregrine",
            jiff::Timestamp::now(),
            &bounds,
        );
        let facts = || {
            Some(peregrine::cluster::pod_context(
                &pod,
                Some(workload.clone()),
            ))
        };
        black_box(
            queue
                .offer_with_facts(arrival, facts)
                .expect("the queue has room"),
        );
    });
    let parse_only = rate::per_second(Duration::from_secs(1), |n| {
        black_box(falco::parse(&bodies[n as usize % bodies.len()]).expect("parses"));
    });
    let mean_body = bodies.iter().map(Vec::len).sum::<usize>() / bodies.len().max(1);
    println!(
        "intake benchmark (one thread, {} incidents, bodies of {mean_body} bytes on average)",
        bodies.len()
    );
    println!(
        "  parse + subject + pod facts + queue: {per_sec:>10.0} alerts/s  ({:.2} µs each)",
        1e6 / per_sec
    );
    println!(
        "  parse only:                          {parse_only:>10.0} alerts/s  ({:.2} µs each)",
        1e6 / parse_only
    );
    println!(
        "{{\"intake_per_sec\":{per_sec:.0},\"intake_us\":{:.2},\"parse_per_sec\":{parse_only:.0},\"parse_us\":{:.2}}}",
        1e6 / per_sec,
        1e6 / parse_only
    );
}
