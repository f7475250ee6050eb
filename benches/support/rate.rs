//! How many times per second one thread runs a piece of work.

use std::time::{Duration, Instant};

/// Calls `one(0)`, `one(1)`, ... for `budget`, after a 300 ms warm-up, and
/// gives the calls per second.
pub fn per_second(budget: Duration, mut one: impl FnMut(u64)) -> f64 {
    let mut run = |budget: Duration| {
        let start = Instant::now();
        let mut n: u64 = 0;
        while start.elapsed() < budget {
            // Check the clock every 64 calls, not every call.
            for _ in 0..64 {
                one(n);
                n += 1;
            }
        }
        n as f64 / start.elapsed().as_secs_f64()
    };
    run(Duration::from_millis(300));
    run(budget)
}
