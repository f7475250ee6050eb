//! Rate limits, cooldowns, the destructive budget and the circuit breaker:
//! sliding windows of past actions, kept by the lease holder and seeded from
//! the records on the reports when it takes over.

use jiff::{SignedDuration, Timestamp};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// Times of past events, oldest first.
#[derive(Debug, Default, Clone)]
pub struct Window {
    times: VecDeque<Timestamp>,
}

impl Window {
    /// Events within `span` before `now`.
    pub fn count(&mut self, now: Timestamp, span: Duration) -> usize {
        let span = SignedDuration::try_from(span).unwrap_or(SignedDuration::MAX);
        let since = now.checked_sub(span).unwrap_or(Timestamp::MIN);
        while self.times.front().is_some_and(|t| *t <= since) {
            self.times.pop_front();
        }
        self.times.len()
    }

    pub fn push(&mut self, at: Timestamp) {
        // Seeding may add out of order; keep the deque sorted.
        let i = self.times.partition_point(|t| *t <= at);
        self.times.insert(i, at);
    }

    pub fn clear(&mut self) {
        self.times.clear();
    }

    /// Forgets one event at `at`, if it is still there.
    pub fn remove(&mut self, at: Timestamp) {
        if let Some(i) = self.times.iter().position(|t| *t == at) {
            self.times.remove(i);
        }
    }
}

/// An action counted against the limits, to give back when its decision could
/// not be recorded (another replica or a newer report won): deciding again must
/// not find the slot already spent by the decision that never happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    policy: String,
    workload: String,
    destructive: bool,
    at: Timestamp,
    previous_trigger: Option<Timestamp>,
}

/// Configured limits.
#[derive(Debug, Clone)]
pub struct LimitConfig {
    /// Destructive actions (DeletePod, ScaleToZero, CordonNode) per minute, cluster-wide.
    pub destructive_budget: u32,
    /// Actions in `breaker_window` past which every policy turns DryRun.
    pub breaker_threshold: u32,
    pub breaker_window: Duration,
}

/// Why an action may not run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Skipped: a limit was reached.
    Skip(String),
    /// The circuit breaker opened with this action: record it as DryRun.
    BreakerOpened(String),
}

/// The limits' state.
#[derive(Debug, Default)]
pub struct Limits {
    per_policy: HashMap<String, Window>,
    last_trigger: HashMap<(String, String), Timestamp>,
    destructive: Window,
    all: Window,
}

const MINUTE: Duration = Duration::from_secs(60);

impl Limits {
    /// Forgets everything (a new term of leadership re-seeds).
    pub fn reset(&mut self) {
        *self = Limits::default();
    }

    /// The circuit breaker was reset by an admin: start counting afresh.
    pub fn reset_breaker_window(&mut self) {
        self.all.clear();
    }

    /// Remembers an action taken before (seeding from the records).
    pub fn seed(&mut self, policy: &str, workload: &str, destructive: bool, at: Timestamp) {
        self.per_policy
            .entry(policy.to_string())
            .or_default()
            .push(at);
        let key = (policy.to_string(), workload.to_string());
        let last = self.last_trigger.entry(key).or_insert(at);
        if *last < at {
            *last = at;
        }
        if destructive {
            self.destructive.push(at);
        }
        self.all.push(at);
    }

    /// The cooldown of `policy` on `workload`: `Some(reason)` when it was triggered too recently.
    pub fn cooling_down(
        &self,
        policy: &str,
        workload: &str,
        cooldown: Option<Duration>,
        now: Timestamp,
    ) -> Option<String> {
        let cooldown = cooldown?;
        let last = self
            .last_trigger
            .get(&(policy.to_string(), workload.to_string()))?;
        let since = now.duration_since(*last);
        let cooldown_signed = SignedDuration::try_from(cooldown).ok()?;
        (since < cooldown_signed).then(|| {
            format!(
                "policy {policy} acted on {workload} {}s ago; its cooldown is {}s",
                since.as_secs(),
                cooldown.as_secs()
            )
        })
    }

    /// Gives back what [`Limits::admit_tentatively`] counted.
    pub fn release(&mut self, admission: &Admission) {
        if let Some(w) = self.per_policy.get_mut(&admission.policy) {
            w.remove(admission.at);
        }
        let key = (admission.policy.clone(), admission.workload.clone());
        match admission.previous_trigger {
            Some(previous) => {
                self.last_trigger.insert(key, previous);
            }
            None => {
                self.last_trigger.remove(&key);
            }
        }
        if admission.destructive {
            self.destructive.remove(admission.at);
        }
        self.all.remove(admission.at);
    }

    /// Checks every limit for one action and, when it may run, counts it;
    /// returns what to give back if the decision is not recorded.
    pub fn admit_tentatively(
        &mut self,
        config: &LimitConfig,
        policy: &str,
        workload: &str,
        rate_limit: Option<(u32, Duration)>,
        destructive: bool,
        now: Timestamp,
    ) -> Result<Admission, Refusal> {
        if let Some((max, per)) = rate_limit {
            let w = self.per_policy.entry(policy.to_string()).or_default();
            if w.count(now, per) >= max as usize {
                return Err(Refusal::Skip(format!(
                    "rate limit of policy {policy} reached: {max} actions per {}s",
                    per.as_secs()
                )));
            }
        }
        if destructive && self.destructive.count(now, MINUTE) >= config.destructive_budget as usize
        {
            return Err(Refusal::Skip(format!(
                "the cluster-wide budget of {} destructive actions per minute is spent (--destructive-budget)",
                config.destructive_budget
            )));
        }
        if self.all.count(now, config.breaker_window) >= config.breaker_threshold as usize {
            return Err(Refusal::BreakerOpened(format!(
                "more than {} actions within {}s: the circuit breaker opened and every policy now behaves as DryRun until an admin resets it",
                config.breaker_threshold,
                config.breaker_window.as_secs()
            )));
        }
        self.per_policy
            .entry(policy.to_string())
            .or_default()
            .push(now);
        let previous_trigger = self
            .last_trigger
            .insert((policy.to_string(), workload.to_string()), now);
        if destructive {
            self.destructive.push(now);
        }
        self.all.push(now);
        Ok(Admission {
            policy: policy.to_string(),
            workload: workload.to_string(),
            destructive,
            at: now,
            previous_trigger,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Limits {
        /// Admits for good, as when the decision is recorded.
        fn admit(
            &mut self,
            config: &LimitConfig,
            policy: &str,
            workload: &str,
            rate_limit: Option<(u32, Duration)>,
            destructive: bool,
            now: Timestamp,
        ) -> Result<(), Refusal> {
            self.admit_tentatively(config, policy, workload, rate_limit, destructive, now)
                .map(|_| ())
        }
    }

    fn config() -> LimitConfig {
        LimitConfig {
            destructive_budget: 2,
            breaker_threshold: 4,
            breaker_window: MINUTE,
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_000_000 + s).unwrap()
    }

    #[test]
    fn the_rate_limit_refuses_within_the_period_and_recovers_after() {
        let mut l = Limits::default();
        let c = config();
        let rl = Some((2, Duration::from_secs(10)));
        assert_eq!(l.admit(&c, "p", "w1", rl, false, at(0)), Ok(()));
        assert_eq!(l.admit(&c, "p", "w2", rl, false, at(1)), Ok(()));
        assert!(
            matches!(l.admit(&c, "p", "w3", rl, false, at(2)), Err(Refusal::Skip(r)) if r.contains("rate limit"))
        );
        assert_eq!(l.admit(&c, "p", "w3", rl, false, at(11)), Ok(()));
    }

    #[test]
    fn a_released_admission_gives_its_slot_and_cooldown_back() {
        let c = config();
        let mut l = Limits::default();
        let rl = Some((1, Duration::from_secs(10)));
        let a = l.admit_tentatively(&c, "p", "w1", rl, true, at(0)).unwrap();
        assert!(l.admit(&c, "p", "w2", rl, true, at(1)).is_err());
        l.release(&a);
        assert_eq!(
            l.cooling_down("p", "w1", Some(Duration::from_secs(60)), at(2)),
            None
        );
        assert_eq!(l.admit(&c, "p", "w1", rl, true, at(2)), Ok(()));
    }

    #[test]
    fn the_destructive_budget_is_shared_by_every_policy() {
        let mut l = Limits::default();
        let c = config();
        assert_eq!(l.admit(&c, "a", "w1", None, true, at(0)), Ok(()));
        assert_eq!(l.admit(&c, "b", "w2", None, true, at(1)), Ok(()));
        assert!(
            matches!(l.admit(&c, "c", "w3", None, true, at(2)), Err(Refusal::Skip(r)) if r.contains("budget"))
        );
        assert_eq!(l.admit(&c, "c", "w3", None, false, at(2)), Ok(()));
    }

    #[test]
    fn the_breaker_opens_past_the_threshold_and_a_reset_starts_afresh() {
        let mut l = Limits::default();
        let c = config();
        for i in 0..4 {
            assert_eq!(
                l.admit(&c, "p", &format!("w{i}"), None, false, at(i)),
                Ok(())
            );
        }
        assert!(matches!(
            l.admit(&c, "p", "w9", None, false, at(5)),
            Err(Refusal::BreakerOpened(_))
        ));
        l.reset_breaker_window();
        assert_eq!(l.admit(&c, "p", "w9", None, false, at(6)), Ok(()));
    }

    #[test]
    fn cooldown_is_per_workload() {
        let mut l = Limits::default();
        let c = config();
        l.admit(&c, "p", "shop/web", None, false, at(0)).unwrap();
        let cd = Some(Duration::from_secs(60));
        assert!(l.cooling_down("p", "shop/web", cd, at(30)).is_some());
        assert!(l.cooling_down("p", "shop/db", cd, at(30)).is_none());
        assert!(l.cooling_down("p", "shop/web", cd, at(61)).is_none());
    }
}
