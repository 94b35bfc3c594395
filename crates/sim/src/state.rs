//! Mutable simulator state: faults, latencies and the request recorder, all per instance.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use crate::{Fault, Latency, RecordedRequest, Scenario};

/// Recorded requests kept per instance; older ones are dropped first so a long-running
/// `switchyard sim` cannot grow without bound.
pub(crate) const RECORDER_CAPACITY: usize = 10_000;

/// A fault plus how many more requests it applies to.
#[derive(Clone, Debug)]
struct ActiveFault {
    fault: Fault,
    remaining: Option<u32>,
}

/// A fault as listed by the control endpoint.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct FaultListing {
    pub instance: String,
    pub model: String,
    #[serde(flatten)]
    pub fault: Fault,
    /// Requests left before the fault clears itself; absent = until cleared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u32>,
}

/// A latency as listed by the control endpoint.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LatencyListing {
    pub instance: String,
    pub model: String,
    #[serde(flatten)]
    pub latency: Latency,
}

#[derive(Default)]
pub(crate) struct SimState {
    /// instance → model (or "*") → fault
    faults: HashMap<String, HashMap<String, ActiveFault>>,
    /// instance → model (or "*") → latency
    latencies: HashMap<String, HashMap<String, Latency>>,
    requests: HashMap<String, VecDeque<RecordedRequest>>,
}

impl SimState {
    pub(crate) fn apply_scenario(&mut self, scenario: &Scenario) {
        for f in &scenario.faults {
            self.set_fault(&f.instance, &f.model, f.fault.clone());
        }
        for l in &scenario.latencies {
            self.set_latency(&l.instance, &l.model, l.latency.clone());
        }
    }

    pub(crate) fn set_fault(&mut self, instance: &str, model: &str, fault: Fault) {
        let per_instance = self.faults.entry(instance.to_string()).or_default();
        if fault.count == Some(0) {
            per_instance.remove(model);
            return;
        }
        let remaining = fault.count;
        per_instance.insert(model.to_string(), ActiveFault { fault, remaining });
    }

    pub(crate) fn set_latency(&mut self, instance: &str, model: &str, latency: Latency) {
        self.latencies
            .entry(instance.to_string())
            .or_default()
            .insert(model.to_string(), latency);
    }

    /// The fault for this request, if any, counting it against the fault's `count`.
    /// A model-specific fault wins over the `"*"` one.
    pub(crate) fn take_fault(&mut self, instance: &str, model: &str) -> Option<Fault> {
        let per_instance = self.faults.get_mut(instance)?;
        let key = if per_instance.contains_key(model) {
            model.to_string()
        } else if per_instance.contains_key("*") {
            "*".to_string()
        } else {
            return None;
        };
        let active = per_instance.get_mut(&key)?;
        let fault = active.fault.clone();
        if let Some(left) = active.remaining.as_mut() {
            *left = left.saturating_sub(1);
            if *left == 0 {
                per_instance.remove(&key);
            }
        }
        Some(fault)
    }

    /// The latency for this request: model-specific, else `"*"`, else none.
    pub(crate) fn latency(&self, instance: &str, model: &str) -> Latency {
        self.latencies
            .get(instance)
            .and_then(|m| m.get(model).or_else(|| m.get("*")))
            .cloned()
            .unwrap_or_default()
    }

    /// Clears faults of one instance (and optionally one model key), or all of them.
    pub(crate) fn clear_faults(&mut self, scope: Option<(&str, Option<&str>)>) {
        match scope {
            None => self.faults.clear(),
            Some((instance, None)) => {
                self.faults.remove(instance);
            }
            Some((instance, Some(model))) => {
                if let Some(m) = self.faults.get_mut(instance) {
                    m.remove(model);
                }
            }
        }
    }

    pub(crate) fn clear_latencies(&mut self, scope: Option<(&str, Option<&str>)>) {
        match scope {
            None => self.latencies.clear(),
            Some((instance, None)) => {
                self.latencies.remove(instance);
            }
            Some((instance, Some(model))) => {
                if let Some(m) = self.latencies.get_mut(instance) {
                    m.remove(model);
                }
            }
        }
    }

    pub(crate) fn clear_requests(&mut self) {
        self.requests.clear();
    }

    pub(crate) fn clear_all(&mut self) {
        self.faults.clear();
        self.latencies.clear();
        self.requests.clear();
    }

    pub(crate) fn record(&mut self, instance: &str, request: RecordedRequest) {
        let log = self.requests.entry(instance.to_string()).or_default();
        if log.len() >= RECORDER_CAPACITY {
            log.pop_front();
        }
        log.push_back(request);
    }

    pub(crate) fn requests(&self, instance: &str) -> Vec<RecordedRequest> {
        self.requests
            .get(instance)
            .map(|log| log.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every active fault, sorted by instance then model so listings are stable.
    pub(crate) fn fault_listing(&self) -> Vec<FaultListing> {
        let mut out: Vec<FaultListing> = self
            .faults
            .iter()
            .flat_map(|(instance, models)| {
                models.iter().map(move |(model, active)| FaultListing {
                    instance: instance.clone(),
                    model: model.clone(),
                    fault: active.fault.clone(),
                    remaining: active.remaining,
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.instance, &a.model).cmp(&(&b.instance, &b.model)));
        out
    }

    pub(crate) fn latency_listing(&self) -> Vec<LatencyListing> {
        let mut out: Vec<LatencyListing> = self
            .latencies
            .iter()
            .flat_map(|(instance, models)| {
                models.iter().map(move |(model, latency)| LatencyListing {
                    instance: instance.clone(),
                    model: model.clone(),
                    latency: latency.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.instance, &a.model).cmp(&(&b.instance, &b.model)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FaultKind;

    #[test]
    fn model_specific_fault_wins_over_wildcard() {
        let mut s = SimState::default();
        s.set_fault("", "*", Fault::error(500));
        s.set_fault("", "gpt-4o", Fault::error(429));
        assert_eq!(s.take_fault("", "gpt-4o").and_then(|f| f.status), Some(429));
        assert_eq!(s.take_fault("", "other").and_then(|f| f.status), Some(500));
    }

    #[test]
    fn faults_are_per_instance() {
        let mut s = SimState::default();
        s.set_fault("primary", "*", Fault::error(503));
        assert!(s.take_fault("", "gpt-4o").is_none());
        assert!(s.take_fault("backup", "gpt-4o").is_none());
        assert_eq!(
            s.take_fault("primary", "gpt-4o").map(|f| f.kind),
            Some(FaultKind::Error)
        );
    }

    #[test]
    fn counted_fault_expires_and_uncovers_wildcard() {
        let mut s = SimState::default();
        s.set_fault("", "*", Fault::stall(10));
        s.set_fault("", "m", Fault::error(429).times(2));
        assert_eq!(
            s.take_fault("", "m").map(|f| f.kind),
            Some(FaultKind::Error)
        );
        assert_eq!(
            s.take_fault("", "m").map(|f| f.kind),
            Some(FaultKind::Error)
        );
        // The counted fault is gone; the wildcard one (no count) stays forever.
        for _ in 0..3 {
            assert_eq!(
                s.take_fault("", "m").map(|f| f.kind),
                Some(FaultKind::Stall)
            );
        }
        assert_eq!(s.fault_listing().len(), 1);
    }

    #[test]
    fn count_zero_removes() {
        let mut s = SimState::default();
        s.set_fault("", "m", Fault::malformed());
        s.set_fault("", "m", Fault::malformed().times(0));
        assert!(s.take_fault("", "m").is_none());
    }

    #[test]
    fn latency_lookup_prefers_model() {
        let mut s = SimState::default();
        let slow = Latency {
            ttft_ms: 50,
            ..Latency::default()
        };
        let fast = Latency {
            ttft_ms: 1,
            ..Latency::default()
        };
        s.set_latency("a", "*", slow.clone());
        s.set_latency("a", "m", fast.clone());
        assert_eq!(s.latency("a", "m"), fast);
        assert_eq!(s.latency("a", "x"), slow);
        assert_eq!(s.latency("", "m"), Latency::default());
    }

    #[test]
    fn recorder_is_bounded() {
        let mut s = SimState::default();
        for i in 0..(RECORDER_CAPACITY + 5) {
            s.record(
                "",
                RecordedRequest {
                    method: "POST".into(),
                    path: format!("/{i}"),
                    query: None,
                    headers: vec![],
                    body: serde_json::Value::Null,
                },
            );
        }
        let all = s.requests("");
        assert_eq!(all.len(), RECORDER_CAPACITY);
        assert_eq!(all[0].path, "/5");
        assert!(s.requests("other").is_empty());
    }
}
