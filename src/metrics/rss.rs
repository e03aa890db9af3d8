//! Resident set sizes of the farm's processes, from `/proc/PID/statm`.
//!
//! One read costs a few microseconds; a farm of 10,000 workers would cost
//! the loop tens of milliseconds per scrape. So reads are cached per pid for
//! `FRESH`, and one sampling spends at most `BUDGET` on reads: past it,
//! processes keep their previous figure (or have none yet), and the next
//! scrapes catch up. A small farm is read whole at every scrape.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A figure younger than this is not read again.
pub const FRESH: Duration = Duration::from_secs(5);
/// Reads stop for this sampling once they took this long.
pub const BUDGET: Duration = Duration::from_millis(10);

#[derive(Debug, Default)]
pub struct RssSampler {
    cache: HashMap<i32, (u64, Instant)>,
}

impl RssSampler {
    /// The resident bytes of each of `pids` (None: unreadable, or not read
    /// yet because the budget was spent). Forgets pids not asked for.
    pub fn sample(&mut self, pids: &[i32]) -> Vec<Option<u64>> {
        let started = Instant::now();
        let mut kept = HashMap::with_capacity(pids.len());
        let figures = pids
            .iter()
            .map(|pid| {
                let cached = self.cache.get(pid).copied();
                let fresh = cached.filter(|(_, at)| started.saturating_duration_since(*at) < FRESH);
                let figure = match fresh {
                    Some(figure) => Some(figure),
                    None if started.elapsed() < BUDGET => resident_bytes(*pid).map(|b| (b, Instant::now())).or(cached),
                    None => cached,
                };
                if let Some(figure) = figure {
                    kept.insert(*pid, figure);
                }
                figure.map(|(bytes, _)| bytes)
            })
            .collect();
        self.cache = kept;
        figures
    }
}

/// Resident bytes of a process now (None when it is gone or unreadable).
pub fn resident_bytes(pid: i32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    use std::sync::OnceLock;
    static SIZE: OnceLock<u64> = OnceLock::new();
    *SIZE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().map_or(4096, |s| s as u64)
    })
}

/// `MemTotal` and `MemAvailable` of /proc/meminfo, in bytes.
pub fn system_memory() -> Option<(u64, u64)> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_resident_set_and_caches_it() {
        let me = std::process::id() as i32;
        let own = resident_bytes(me).expect("our own statm");
        assert!(own > 1 << 20, "{own}");
        let mut sampler = RssSampler::default();
        let first = sampler.sample(&[me, i32::MAX]);
        assert!(first[0].is_some() && first[1].is_none(), "{first:?}");
        assert_eq!(sampler.cache.len(), 1, "a pid with no figure is not kept");
        let again = sampler.sample(&[me]);
        assert_eq!(again[0], first[0], "fresh figures are not read again");
        sampler.sample(&[]);
        assert!(sampler.cache.is_empty(), "pids not asked for are forgotten");
        let (total, available) = system_memory().expect("/proc/meminfo");
        assert!(total >= available && total > 0);
    }
}
