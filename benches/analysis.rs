//! How many alerts one core analyses per second: every upstream rule's alert,
//! round-robin, with and without pod context. Prints its figures; asserts nothing.
//!
//! Run with `cargo bench --bench analysis`.

#[path = "../tests/support/catalog.rs"]
mod catalog;
#[path = "support/rate.rs"]
mod rate;

use peregrine::analysis::{self, Context, PodContext};
use peregrine::crd::WorkloadRef;
use peregrine::falco;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

fn main() {
    let kb = match peregrine::knowledge::builtin() {
        Ok(kb) => kb,
        Err(e) => {
            eprintln!("knowledge does not load: {e}");
            std::process::exit(1);
        }
    };
    let bodies: Vec<Vec<u8>> = catalog::catalog().iter().map(catalog::alert_body).collect();
    let ctx = Context {
        pod: Some(PodContext {
            labels: BTreeMap::from([("app".into(), "web".into())]),
            workload: Some(WorkloadRef {
                kind: "Deployment".into(),
                name: "web".into(),
            }),
            privileged: true,
            ..PodContext::default()
        }),
        occurrences: Some(12),
        ..Context::default()
    };
    let contexts = [Context::default(), ctx];

    // Parse + subject + analysis, as on the event path.
    let per_sec = rate::per_second(Duration::from_secs(3), |n| {
        let body = &bodies[n as usize % bodies.len()];
        let alert = falco::parse(body).expect("catalog alerts parse");
        let subject = falco::subject_of(&alert);
        black_box(analysis::analyze(
            &alert,
            &subject,
            &contexts[(n % 2) as usize],
            kb,
        ));
    });
    let parse_only = rate::per_second(Duration::from_secs(1), |n| {
        black_box(falco::parse(&bodies[n as usize % bodies.len()]).expect("parses"));
    });
    println!(
        "analysis benchmark (one thread, {} distinct rules)",
        bodies.len()
    );
    println!(
        "  parse + subject + analysis: {per_sec:>10.0} alerts/s  ({:.1} µs each)",
        1e6 / per_sec
    );
    println!("  parse only:                 {parse_only:>10.0} alerts/s");
    println!(
        "{{\"analysis_per_sec\":{per_sec:.0},\"analysis_us\":{:.2},\"parse_per_sec\":{parse_only:.0}}}",
        1e6 / per_sec
    );
}
