//! Folding alerts into an incident: counts, time span, who was involved and a
//! few samples, all bounded. Pure: the writer applies the result.

use crate::crd::{AlertReportStatus, Involved, Occurrences, Sample};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use std::collections::VecDeque;

/// How much of an incident a report keeps.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Entries per list of `status.involved`.
    pub involved: usize,
    /// Entries of `status.samples`.
    pub samples: usize,
    /// Characters of a sample's output.
    pub sample_output: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            involved: 10,
            samples: 5,
            sample_output: 512,
        }
    }
}

/// One alert, reduced to what aggregation keeps.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub time: Timestamp,
    pub pod: Option<String>,
    pub container: Option<String>,
    pub node: Option<String>,
    pub sample: Sample,
}

impl Observation {
    /// `time` is the alert's own time, clamped to `received` so a clock far
    /// in the future cannot keep an incident alive forever.
    pub fn new(
        alert: &crate::falco::Alert,
        subject: &crate::crd::Subject,
        received: Timestamp,
        bounds: &Bounds,
    ) -> Observation {
        let time = alert
            .timestamp
            .filter(|t| *t <= received)
            .unwrap_or(received);
        Observation {
            time,
            pod: subject.pod.clone(),
            container: subject
                .container_id
                .clone()
                .filter(|c| c != "host")
                .or_else(|| subject.container.clone()),
            node: subject.node.clone(),
            sample: Sample {
                time: alert.time.clone().map(|t| truncate(&t, 64)),
                pod: subject.pod.clone(),
                output: truncate(&alert.output, bounds.sample_output),
            },
        }
    }
}

/// Alerts of one incident not yet written to its report.
#[derive(Clone, Debug, PartialEq)]
pub struct Delta {
    pub count: u64,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    pub pods: Vec<String>,
    pub containers: Vec<String>,
    pub nodes: Vec<String>,
    /// More distinct values were seen than the lists hold.
    pub truncated: bool,
    /// Most recent last.
    pub samples: VecDeque<Sample>,
}

impl Delta {
    pub fn new(observation: Observation, bounds: &Bounds) -> Delta {
        let mut delta = Delta {
            count: 0,
            first_seen: observation.time,
            last_seen: observation.time,
            pods: Vec::new(),
            containers: Vec::new(),
            nodes: Vec::new(),
            truncated: false,
            samples: VecDeque::new(),
        };
        delta.add(observation, bounds);
        delta
    }

    /// Counts one more alert.
    pub fn add(&mut self, observation: Observation, bounds: &Bounds) {
        self.count = self.count.saturating_add(1);
        self.first_seen = self.first_seen.min(observation.time);
        self.last_seen = self.last_seen.max(observation.time);
        for (list, value) in [
            (&mut self.pods, observation.pod),
            (&mut self.containers, observation.container),
            (&mut self.nodes, observation.node),
        ] {
            if let Some(value) = value {
                self.truncated |= remember(list, value, bounds.involved);
            }
        }
        self.samples.push_back(observation.sample);
        while self.samples.len() > bounds.samples {
            self.samples.pop_front();
        }
    }

    /// Adds `later`, alerts that arrived after these.
    pub fn merge(&mut self, later: Delta, bounds: &Bounds) {
        self.count = self.count.saturating_add(later.count);
        self.first_seen = self.first_seen.min(later.first_seen);
        self.last_seen = self.last_seen.max(later.last_seen);
        self.truncated |= later.truncated;
        for (list, values) in [
            (&mut self.pods, later.pods),
            (&mut self.containers, later.containers),
            (&mut self.nodes, later.nodes),
        ] {
            for value in values {
                self.truncated |= remember(list, value, bounds.involved);
            }
        }
        self.samples.extend(later.samples);
        while self.samples.len() > bounds.samples {
            self.samples.pop_front();
        }
    }
}

/// Moves `value` to the end of `list` (most recent), dropping the oldest
/// entry beyond `max`. True when an entry was dropped.
fn remember(list: &mut Vec<String>, value: String, max: usize) -> bool {
    if let Some(i) = list.iter().position(|v| *v == value) {
        let v = list.remove(i);
        list.push(v);
        return false;
    }
    list.push(value);
    if list.len() > max {
        let excess = list.len() - max;
        list.drain(..excess);
        return true;
    }
    false
}

/// The status after `delta` is counted: occurrences, involved and samples;
/// everything else (analysis, remediations, conditions) is kept as it is.
pub fn apply(status: &AlertReportStatus, delta: &Delta, bounds: &Bounds) -> AlertReportStatus {
    let mut next = status.clone();
    next.occurrences = Some(match &status.occurrences {
        Some(o) => Occurrences {
            count: o.count.saturating_add(delta.count),
            first_seen: Time(o.first_seen.0.min(delta.first_seen)),
            last_seen: Time(o.last_seen.0.max(delta.last_seen)),
        },
        None => Occurrences {
            count: delta.count,
            first_seen: Time(delta.first_seen),
            last_seen: Time(delta.last_seen),
        },
    });
    let mut involved = status.involved.clone().unwrap_or_default();
    for (list, values) in [
        (&mut involved.pods, &delta.pods),
        (&mut involved.containers, &delta.containers),
        (&mut involved.nodes, &delta.nodes),
    ] {
        for value in values {
            involved.truncated |= remember(list, value.clone(), bounds.involved);
        }
    }
    involved.truncated |= delta.truncated;
    next.involved = (involved != Involved::default()).then_some(involved);
    let mut samples: VecDeque<Sample> = status.samples.iter().cloned().collect();
    samples.extend(delta.samples.iter().cloned());
    while samples.len() > bounds.samples {
        samples.pop_front();
    }
    next.samples = samples.into();
    next
}

/// Sets `condition` in `conditions`, keyed by type, keeping
/// `lastTransitionTime` when the status did not change.
pub fn set_condition(conditions: &mut Vec<Condition>, mut condition: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => {
            if existing.status == condition.status {
                condition.last_transition_time = existing.last_transition_time.clone();
            }
            *existing = condition;
        }
        None => conditions.push(condition),
    }
}

/// `text` cut to at most `max` bytes at a character boundary, with `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(second: i64, pod: &str) -> Observation {
        Observation {
            time: Timestamp::from_second(1_700_000_000 + second).unwrap(),
            pod: Some(pod.into()),
            container: Some(format!("c-{pod}")),
            node: Some("worker-1".into()),
            sample: Sample {
                time: None,
                pod: Some(pod.into()),
                output: format!("event {second}"),
            },
        }
    }

    #[test]
    fn repeats_count_every_alert_and_keep_the_time_span() {
        let bounds = Bounds::default();
        let mut d = Delta::new(obs(5, "a"), &bounds);
        for i in 0..999 {
            d.add(obs(i % 10, "a"), &bounds);
        }
        assert_eq!(d.count, 1000);
        assert_eq!(d.first_seen.as_second(), 1_700_000_000);
        assert_eq!(d.last_seen.as_second(), 1_700_000_009);
        let status = apply(&AlertReportStatus::default(), &d, &bounds);
        let status = apply(&status, &d, &bounds);
        assert_eq!(status.occurrences.unwrap().count, 2000);
    }

    #[test]
    fn involved_and_samples_stay_bounded_and_keep_the_most_recent() {
        let bounds = Bounds::default();
        let mut d = Delta::new(obs(0, "p0"), &bounds);
        for i in 1..100 {
            d.add(obs(i, &format!("p{i}")), &bounds);
        }
        let status = apply(&AlertReportStatus::default(), &d, &bounds);
        let involved = status.involved.unwrap();
        assert_eq!(involved.pods.len(), bounds.involved);
        assert_eq!(involved.pods.last().map(String::as_str), Some("p99"));
        assert!(involved.truncated);
        assert_eq!(involved.nodes, vec!["worker-1".to_string()]);
        assert_eq!(status.samples.len(), bounds.samples);
        assert_eq!(status.samples.last().unwrap().output, "event 99");
    }

    #[test]
    fn merging_deltas_equals_adding_one_by_one() {
        let bounds = Bounds::default();
        let mut one = Delta::new(obs(0, "a"), &bounds);
        let mut first = Delta::new(obs(0, "a"), &bounds);
        let mut second = Delta::new(obs(1, "b"), &bounds);
        one.add(obs(1, "b"), &bounds);
        for i in 2..20 {
            one.add(obs(i, "c"), &bounds);
            second.add(obs(i, "c"), &bounds);
        }
        first.merge(second, &bounds);
        assert_eq!(first, one);
    }

    #[test]
    fn a_condition_keeps_its_transition_time_when_its_status_holds() {
        let t0 = Time(Timestamp::from_second(1).unwrap());
        let t1 = Time(Timestamp::from_second(2).unwrap());
        let cond = |status: &str, time: &Time, reason: &str| Condition {
            type_: "Analyzed".into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            last_transition_time: time.clone(),
            observed_generation: Some(1),
        };
        let mut conditions = vec![cond("True", &t0, "Rule")];
        set_condition(&mut conditions, cond("True", &t1, "Tags"));
        assert_eq!(conditions[0].last_transition_time, t0);
        assert_eq!(conditions[0].reason, "Tags");
        set_condition(&mut conditions, cond("False", &t1, "Failed"));
        assert_eq!(conditions[0].last_transition_time, t1);
        assert_eq!(conditions.len(), 1);
    }

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate("abc", 10), "abc");
        let t = truncate(&"é".repeat(100), 11);
        assert!(t.len() <= 11 && t.ends_with('…'), "{t}");
    }
}
