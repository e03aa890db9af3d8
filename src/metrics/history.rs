//! The last hour of the farm, for the dashboard's sparklines: bounded ring
//! buffers in memory, nothing on disk. The farm's totals are sampled every
//! `FARM_EVERY` (360 points: an hour); each job's every `JOB_EVERY` (60
//! points), for at most `MAX_JOBS` jobs, so the buffers stay under a
//! megabyte on a farm of any size. Counters are kept as they are (totals
//! since the start); the page turns two samples into a rate.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

/// How often the farm's totals are sampled, and how many samples are kept.
pub const FARM_EVERY: Duration = Duration::from_secs(10);
pub const FARM_POINTS: usize = 360;
/// How often each job is sampled, how many samples, and for how many jobs.
pub const JOB_EVERY: Duration = Duration::from_secs(60);
pub const JOB_POINTS: usize = 60;
pub const MAX_JOBS: usize = 500;

/// What one sample holds, for the farm or for one job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    /// Unix time, seconds.
    pub at: u64,
    /// Cycles completed so far (ended processes included).
    pub cycles: u64,
    /// Restarts so far.
    pub restarts: u64,
    /// Resident memory of the processes, bytes.
    pub resident_bytes: u64,
    /// Processes running.
    pub running: u64,
}

/// The rings and when each is due.
#[derive(Debug)]
pub struct History {
    farm: VecDeque<Sample>,
    jobs: BTreeMap<String, VecDeque<Sample>>,
    next_farm: Instant,
    next_jobs: Instant,
}

fn push(ring: &mut VecDeque<Sample>, sample: Sample, cap: usize) {
    if ring.len() == cap {
        ring.pop_front();
    }
    ring.push_back(sample);
}

impl History {
    /// The first samples are due at once.
    pub fn new(now: Instant) -> History {
        History { farm: VecDeque::with_capacity(FARM_POINTS), jobs: BTreeMap::new(), next_farm: now, next_jobs: now }
    }

    /// When the next sample is due.
    pub fn next_due(&self) -> Instant {
        self.next_farm.min(self.next_jobs)
    }

    /// Whether the jobs' samples are due at `now` (the farm's always are
    /// when either is).
    pub fn jobs_due(&self, now: Instant) -> bool {
        now >= self.next_jobs
    }

    /// Records the farm's totals and, when `jobs` is given, each job's
    /// (jobs past `MAX_JOBS`, and jobs no longer in the farm, are dropped).
    pub fn record(&mut self, now: Instant, farm: Sample, jobs: Option<Vec<(String, Sample)>>) {
        if now >= self.next_farm {
            push(&mut self.farm, farm, FARM_POINTS);
            self.next_farm = now + FARM_EVERY;
        }
        if let Some(jobs) = jobs {
            let mut kept = BTreeMap::new();
            for (id, sample) in jobs.into_iter().take(MAX_JOBS) {
                let mut ring = self.jobs.remove(&id).unwrap_or_default();
                push(&mut ring, sample, JOB_POINTS);
                kept.insert(id, ring);
            }
            self.jobs = kept;
            self.next_jobs = now + JOB_EVERY;
        }
    }

    pub fn farm(&self) -> impl Iterator<Item = &Sample> {
        self.farm.iter()
    }

    pub fn jobs(&self) -> impl Iterator<Item = (&String, &VecDeque<Sample>)> {
        self.jobs.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(n: u64) -> Sample {
        Sample { at: n, cycles: n * 10, ..Default::default() }
    }

    #[test]
    fn the_rings_are_bounded_and_sampled_at_their_own_pace() {
        let t0 = Instant::now();
        let mut history = History::new(t0);
        assert_eq!(history.next_due(), t0);
        for i in 0..(FARM_POINTS as u64 + 5) {
            let now = t0 + FARM_EVERY * i as u32;
            let jobs = history.jobs_due(now).then(|| vec![("a".to_string(), at(i)), ("b".to_string(), at(i))]);
            history.record(now, at(i), jobs);
        }
        assert_eq!(history.farm().count(), FARM_POINTS);
        assert_eq!(history.farm().next().unwrap().at, 5, "the oldest went first");
        // Every 60 s: one job sample per six farm samples.
        let (_, ring) = history.jobs().next().unwrap();
        assert_eq!(ring.len(), JOB_POINTS);
        assert_eq!(ring.back().unwrap().at, 360);
        // A job that left the farm leaves the history; at most MAX_JOBS stay.
        let now = t0 + Duration::from_secs(100_000);
        let many: Vec<(String, Sample)> = (0..MAX_JOBS + 10).map(|n| (format!("j{n:04}"), at(1))).collect();
        history.record(now, at(1), Some(many));
        assert_eq!(history.jobs().count(), MAX_JOBS);
        assert!(history.jobs().all(|(id, _)| id.starts_with('j')));
    }
}
