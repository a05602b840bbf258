//! Readiness: named checks with a reason, shared by the parts of a process.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A set of named readiness checks. Each component registers its check and
/// updates it; `/readyz` reports all of them with their reasons.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<String, (bool, String)>>>,
}

impl Readiness {
    /// Sets check `name` to `ready` with `reason`.
    pub fn set(&self, name: impl Into<String>, ready: bool, reason: impl Into<String>) {
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.into(), (ready, reason.into()));
    }

    /// All checks: `(name, ready, reason)`.
    pub fn report(&self) -> Vec<(String, bool, String)> {
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, (r, why))| (k.clone(), *r, why.clone()))
            .collect()
    }

    /// True when check `name` exists and is ready.
    pub fn check(&self, name: &str) -> bool {
        let c = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        c.get(name).is_some_and(|(r, _)| *r)
    }

    /// True when at least one check exists and all are ready.
    pub fn is_ready(&self) -> bool {
        let c = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        !c.is_empty() && c.values().all(|(r, _)| *r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_all_checks_pass() {
        let r = Readiness::default();
        assert!(!r.is_ready());
        r.set("broker", true, "reachable");
        r.set("state", false, "replaying 10 records");
        assert!(!r.is_ready());
        r.set("state", true, "caught up");
        assert!(r.is_ready());
        assert_eq!(r.report().len(), 2);
    }
}
