//! Why a process was recycled. A worker that ends itself with exit 75
//! (`EXIT_RECYCLE`) writes its reason's code into its shared page first;
//! the supervisor reads it at the reap and hands it to the core with the
//! exit. A rolling recycle (`recycle ID`) is the core's own decision.
//!
//! The codes are one table here: the runner defines its
//! `Lrpm\Internal\RECYCLE_*` constants from `runner_constants()` (passed in
//! its params), as it does for the exit codes.

use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecycleReason {
    /// `maxCycles` reached.
    MaxCycles,
    /// `maxLifetimeSeconds` reached.
    MaxLifetime,
    /// `memoryLimitMb` exceeded.
    Memory,
    /// The worker called `Lrpm\recycle()`.
    Requested,
    /// `lrpmctl recycle ID` (or `recycle all`): the host stopped it.
    Rolling,
    /// Exit 75 with no reason in the page (no page, or a worker that
    /// exited 75 by itself).
    Unknown,
}

impl RecycleReason {
    /// Every reason, in the order metrics and status list them.
    pub const ALL: [RecycleReason; 6] = [
        RecycleReason::MaxCycles,
        RecycleReason::MaxLifetime,
        RecycleReason::Memory,
        RecycleReason::Requested,
        RecycleReason::Rolling,
        RecycleReason::Unknown,
    ];

    /// The label value in metrics (`reason="max_cycles"`).
    pub fn as_str(self) -> &'static str {
        match self {
            RecycleReason::MaxCycles => "max_cycles",
            RecycleReason::MaxLifetime => "max_lifetime",
            RecycleReason::Memory => "memory",
            RecycleReason::Requested => "requested",
            RecycleReason::Rolling => "rolling",
            RecycleReason::Unknown => "unknown",
        }
    }

    /// How the log names it, after the field or call an operator knows.
    pub fn describe(self) -> &'static str {
        match self {
            RecycleReason::MaxCycles => "maxCycles",
            RecycleReason::MaxLifetime => "maxLifetimeSeconds",
            RecycleReason::Memory => "memoryLimitMb",
            RecycleReason::Requested => "Lrpm\\recycle()",
            RecycleReason::Rolling => "rolling recycle",
            RecycleReason::Unknown => "reason unknown",
        }
    }

    /// The code a worker writes into its page; 0 (never written) is none.
    /// `Rolling` and `Unknown` are never written by a worker.
    pub fn code(self) -> u64 {
        match self {
            RecycleReason::MaxCycles => 1,
            RecycleReason::MaxLifetime => 2,
            RecycleReason::Memory => 3,
            RecycleReason::Requested => 4,
            RecycleReason::Rolling => 5,
            RecycleReason::Unknown => 0,
        }
    }

    /// The reason a worker wrote; None for 0 and codes a worker never
    /// writes (a page scribbled on by user code stays harmless).
    pub fn from_worker_code(code: u64) -> Option<RecycleReason> {
        [RecycleReason::MaxCycles, RecycleReason::MaxLifetime, RecycleReason::Memory, RecycleReason::Requested]
            .into_iter()
            .find(|r| r.code() == code)
    }

    /// `{RECYCLE_MAX_CYCLES: 1, ...}`: the constants the runner defines.
    pub fn runner_constants() -> Value {
        let named = [
            ("RECYCLE_MAX_CYCLES", RecycleReason::MaxCycles),
            ("RECYCLE_MAX_LIFETIME", RecycleReason::MaxLifetime),
            ("RECYCLE_MEMORY", RecycleReason::Memory),
            ("RECYCLE_REQUESTED", RecycleReason::Requested),
        ];
        Value::Object(named.iter().map(|(name, r)| (name.to_string(), Value::from(r.code()))).collect::<Map<_, _>>())
    }
}

/// Recycles counted by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecycleCounts([u64; RecycleReason::ALL.len()]);

impl RecycleCounts {
    pub fn add(&mut self, reason: RecycleReason) {
        self.0[reason as usize] += 1;
    }

    pub fn get(&self, reason: RecycleReason) -> u64 {
        self.0[reason as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_codes_round_trip_and_unknown_codes_are_none() {
        for reason in RecycleReason::ALL {
            let back = RecycleReason::from_worker_code(reason.code());
            match reason {
                RecycleReason::Rolling | RecycleReason::Unknown => assert_eq!(back, None, "{reason:?}"),
                _ => assert_eq!(back, Some(reason)),
            }
        }
        assert_eq!(RecycleReason::from_worker_code(99), None);
        assert_eq!(RecycleReason::runner_constants()["RECYCLE_MEMORY"], 3);
    }

    #[test]
    fn counts_by_reason() {
        let mut counts = RecycleCounts::default();
        counts.add(RecycleReason::Rolling);
        counts.add(RecycleReason::Rolling);
        counts.add(RecycleReason::Memory);
        assert_eq!((counts.get(RecycleReason::Rolling), counts.get(RecycleReason::Memory), counts.total()), (2, 1, 3));
    }
}
