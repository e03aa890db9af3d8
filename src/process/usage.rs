//! A process's CPU time and resident set, read from /proc/PID/stat by the
//! supervisor for `status`. The pids are the supervisor's own unreaped
//! children, in its own PID namespace, so they cannot name another process;
//! a client reading /proc itself could be in another namespace.
//!
//! `status` reads this for every worker of the farm in the poll loop, so
//! one reading is three syscalls (open, one read into a stack buffer,
//! close) and no allocation. That still costs 3 to 8 µs per process, 8 ms
//! for 1,000 workers on a small VM: [`UsageCache`] bounds the time spent
//! reading ([`ReadBudget`]) and keeps the other figures from earlier
//! requests.

use std::collections::HashMap;
use std::ffi::CStr;
use std::io::Write;
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};

/// What /proc says about one process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessUsage {
    /// User plus system CPU time of the process (its threads, not its
    /// children).
    pub cpu_time: Duration,
    /// How long the process has existed.
    pub age: Duration,
    /// Resident set (`RSS` in ps): pages shared with the supervisor and the
    /// other workers (OPcache, copy-on-write memory) count in full.
    pub rss_bytes: u64,
}

impl ProcessUsage {
    /// CPU time over the process's lifetime, in percent of one CPU, as ps
    /// computes `%CPU` (above 100 for a process using several CPUs).
    pub fn cpu_percent(&self) -> f64 {
        let age = self.age.as_secs_f64();
        if age > 0.0 {
            self.cpu_time.as_secs_f64() / age * 100.0
        } else {
            0.0
        }
    }
}

/// Reads /proc/PID/stat of many processes at one moment: the clock and
/// the kernel's constants are taken once, at `new`.
#[derive(Debug, Clone, Copy)]
pub struct UsageReader {
    ticks_per_second: u64,
    page_size: u64,
    /// CLOCK_BOOTTIME now: /proc/PID/stat's start time counts from boot.
    since_boot: Duration,
}

/// /proc/PID/stat is under 1 KiB (52 numbers and a comm of at most 16
/// bytes); what the reader needs is in its first 24 fields.
const STAT_BUFFER: usize = 2048;

impl UsageReader {
    pub fn new() -> UsageReader {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        UsageReader {
            ticks_per_second: rustix::param::clock_ticks_per_second().max(1),
            page_size: rustix::param::page_size() as u64,
            since_boot: Duration::new(now.tv_sec.max(0) as u64, now.tv_nsec.clamp(0, 999_999_999) as u32),
        }
    }

    /// The process's usage, or None when it does not exist (or /proc is
    /// not mounted). A zombie reads as its last CPU time and no memory.
    pub fn read(&self, pid: i32) -> Option<ProcessUsage> {
        let mut path = [0u8; 32];
        let mut cursor = &mut path[..];
        write!(cursor, "/proc/{pid}/stat\0").ok()?;
        let path = CStr::from_bytes_until_nul(&path).ok()?;
        let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
        let mut buf = [0u8; STAT_BUFFER];
        // procfs builds the whole line at the first read.
        let len = rustix::io::read(&fd, &mut buf).ok()?;
        self.parse(&buf[..len])
    }

    fn parse(&self, stat: &[u8]) -> Option<ProcessUsage> {
        let fields = StatFields::of(stat)?;
        let ticks = |n: u64| {
            let (secs, rest) = (n / self.ticks_per_second, n % self.ticks_per_second);
            Duration::new(secs, (rest * 1_000_000_000 / self.ticks_per_second) as u32)
        };
        let cpu = fields.get(UTIME)?.checked_add(fields.get(STIME)?)?;
        let started = ticks(fields.get(STARTTIME)?);
        Some(ProcessUsage {
            cpu_time: ticks(cpu),
            age: self.since_boot.saturating_sub(started),
            rss_bytes: fields.get(RSS)?.saturating_mul(self.page_size),
        })
    }
}

impl Default for UsageReader {
    fn default() -> Self {
        UsageReader::new()
    }
}

/// The last reading of each of the farm's processes.
#[derive(Debug, Default)]
pub struct UsageCache {
    entries: HashMap<i32, Cached>,
    /// Reading time not yet spent ([`ReadBudget`]), as of `refilled_at`.
    allowance: Duration,
    refilled_at: Option<Instant>,
}

/// How long reading /proc may take: at most `burst` at once, and
/// `1/share` of the time on average. A token bucket: many `status`
/// requests at once (one loop turn, or several clients watching) share one
/// burst instead of each taking its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadBudget {
    pub burst: Duration,
    pub share: u32,
}

#[derive(Debug, Clone, Copy)]
struct Cached {
    /// When the process started, as the caller knows it: a pid reused by a
    /// later process is a different process.
    started: Instant,
    usage: ProcessUsage,
    read_at: Instant,
}

/// A reading and how old it is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub usage: ProcessUsage,
    pub age: Duration,
}

/// What one [`UsageCache::refresh`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refreshed {
    pub read: usize,
    /// Processes left with an older reading, or none, when the budget ran out.
    pub left: usize,
}

impl UsageCache {
    /// Reads the usage of `processes` (pid, when it started) while `budget`
    /// allows: processes never read first, then the oldest readings, so a
    /// farm too big for one request is read in full over a few. Forgets
    /// every other process.
    pub fn refresh(&mut self, processes: &[(i32, Instant)], budget: ReadBudget) -> Refreshed {
        let started = Instant::now();
        let allowance = self.allowance(budget, started);
        let refreshed = self.refresh_while(processes, || started.elapsed() < allowance);
        self.spend(started.elapsed());
        refreshed
    }

    /// The reading time available at `now`: what was left, plus `1/share`
    /// of the time since, at most `burst` (all of it at first).
    fn allowance(&mut self, budget: ReadBudget, now: Instant) -> Duration {
        let refill = match self.refilled_at {
            Some(at) => now.saturating_duration_since(at) / budget.share.max(1),
            None => budget.burst,
        };
        self.allowance = self.allowance.saturating_add(refill).min(budget.burst);
        self.refilled_at = Some(now);
        self.allowance
    }

    fn spend(&mut self, spent: Duration) {
        self.allowance = self.allowance.saturating_sub(spent);
    }

    fn refresh_while(&mut self, processes: &[(i32, Instant)], mut more: impl FnMut() -> bool) -> Refreshed {
        let mut due: Vec<(Option<Instant>, i32, Instant)> = processes
            .iter()
            .map(|&(pid, started)| {
                let last = self.entries.get(&pid).filter(|c| c.started == started).map(|c| c.read_at);
                (last, pid, started)
            })
            .collect();
        let wanted: HashMap<i32, Instant> = processes.iter().copied().collect();
        self.entries.retain(|pid, cached| wanted.get(pid) == Some(&cached.started));
        // None (never read) sorts first.
        due.sort_unstable_by_key(|(last, pid, _)| (*last, *pid));
        let reader = UsageReader::new();
        let mut read = 0;
        for (i, &(_, pid, started)) in due.iter().enumerate() {
            if !more() {
                return Refreshed { read, left: due.len() - i };
            }
            match reader.read(pid) {
                Some(usage) => {
                    self.entries.insert(pid, Cached { started, usage, read_at: Instant::now() });
                }
                None => {
                    self.entries.remove(&pid);
                }
            }
            read += 1;
        }
        Refreshed { read, left: 0 }
    }

    /// The last reading of `pid`, as of `now`; only the processes of the
    /// last refresh are known.
    pub fn get(&self, pid: i32, now: Instant) -> Option<Reading> {
        let cached = self.entries.get(&pid)?;
        Some(Reading { usage: cached.usage, age: now.saturating_duration_since(cached.read_at) })
    }
}

// Field numbers of proc_pid_stat(5), 1-based.
const UTIME: usize = 14;
const STIME: usize = 15;
const STARTTIME: usize = 22;
const RSS: usize = 24;

/// The numeric fields of a stat line after `(comm)`, which may itself hold
/// spaces and parentheses: everything up to the last `)` is skipped.
struct StatFields<'a> {
    /// Starts at field 3 (the state letter).
    rest: &'a [u8],
}

impl<'a> StatFields<'a> {
    fn of(stat: &'a [u8]) -> Option<StatFields<'a>> {
        let close = stat.iter().rposition(|b| *b == b')')?;
        Some(StatFields { rest: stat.get(close + 2..)? })
    }

    fn get(&self, field: usize) -> Option<u64> {
        let text = self.rest.split(|b| *b == b' ').nth(field.checked_sub(3)?)?;
        let text = text.strip_suffix(b"\n").unwrap_or(text);
        if text.is_empty() {
            return None;
        }
        text.iter().try_fold(0u64, |n, b| {
            let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
            n.checked_mul(10)?.checked_add(u64::from(digit))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader() -> UsageReader {
        UsageReader { ticks_per_second: 100, page_size: 4096, since_boot: Duration::from_secs(1000) }
    }

    #[test]
    fn parses_a_stat_line_whose_comm_has_spaces_and_parentheses() {
        // Fields 3..: state R, ppid 1, ..., utime 250, stime 50, ..., starttime 40000 (400 s), vsize, rss 300.
        let line = b"1234 (lrpm-host: (w) 1) R 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 40000 123456789 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        let usage = reader().parse(line).expect("parsed");
        assert_eq!(usage.cpu_time, Duration::from_secs(3));
        assert_eq!(usage.age, Duration::from_secs(600));
        assert_eq!(usage.rss_bytes, 300 * 4096);
        assert!((usage.cpu_percent() - 0.5).abs() < 1e-9, "{}", usage.cpu_percent());
    }

    #[test]
    fn refuses_truncated_or_garbled_lines() {
        assert_eq!(reader().parse(b""), None);
        assert_eq!(reader().parse(b"1 (x) R 1 2 3"), None);
        assert_eq!(reader().parse(b"1 (x) R 1 1 1 0 -1 0 0 0 0 0 x 50 0 0 20 0 1 0 4 1 3"), None);
    }

    #[test]
    fn a_process_started_after_the_reader_has_age_zero_and_no_percent() {
        let line = b"1 (x) R 1 1 1 0 -1 0 0 0 0 0 5 5 0 0 20 0 1 0 200000 1 3\n";
        let usage = reader().parse(line).expect("parsed");
        assert_eq!(usage.age, Duration::ZERO);
        assert_eq!(usage.cpu_percent(), 0.0);
    }

    #[test]
    fn the_cache_reads_new_processes_first_then_the_oldest_readings_and_forgets_the_rest() {
        let me = std::process::id() as i32;
        let parent = std::os::unix::process::parent_id() as i32;
        let started = Instant::now();
        let mut cache = UsageCache::default();
        assert_eq!(cache.refresh_while(&[(me, started)], || false), Refreshed { read: 0, left: 1 });
        assert_eq!(cache.get(me, Instant::now()), None, "nothing read within no budget");
        assert_eq!(cache.refresh_while(&[(me, started), (parent, started)], || true).read, 2);
        let first = cache.get(me, Instant::now()).expect("read");
        assert!(first.usage.rss_bytes > 0);
        // A pid reused by another process is never given the old reading.
        let later = started + Duration::from_secs(1);
        cache.refresh_while(&[(me, later)], || false);
        assert_eq!(cache.get(me, Instant::now()), None);
        assert_eq!(cache.get(parent, Instant::now()), None, "a process not asked for is forgotten");
        cache.refresh_while(&[(me, later), (parent, started)], || true);
        let read_at = Instant::now();
        assert!(cache.get(me, read_at).is_some() && cache.get(parent, read_at).is_some());
        assert!(cache.get(me, read_at + Duration::from_secs(2)).expect("kept").age >= Duration::from_secs(2));
        // One reading per refresh: the oldest goes first, so both are read in turn.
        let one = || {
            let mut left = 1;
            move || std::mem::replace(&mut left, 0) == 1
        };
        let processes = [(me, later), (parent, started)];
        let read_at = |cache: &UsageCache, pid| cache.entries[&pid].read_at;
        let (me_before, parent_before) = (read_at(&cache, me), read_at(&cache, parent));
        let oldest = if me_before <= parent_before { me } else { parent };
        let newest = if oldest == me { parent } else { me };
        assert_eq!(cache.refresh_while(&processes, one()), Refreshed { read: 1, left: 1 });
        assert!(read_at(&cache, oldest) > me_before.max(parent_before), "the oldest reading is renewed first");
        let newest_before = read_at(&cache, newest);
        cache.refresh_while(&processes, one());
        assert!(read_at(&cache, newest) > newest_before, "then the other one");
    }

    #[test]
    fn requests_share_the_reading_time_of_a_token_bucket() {
        let budget = ReadBudget { burst: Duration::from_millis(5), share: 10 };
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut cache = UsageCache::default();
        assert_eq!(cache.allowance(budget, t0), ms(5), "the whole burst at first");
        cache.spend(ms(5));
        assert_eq!(cache.allowance(budget, t0), ms(0), "a second request at once gets nothing");
        assert_eq!(cache.allowance(budget, t0 + ms(20)), ms(2), "a tenth of the 20 ms since");
        cache.spend(ms(1));
        assert_eq!(cache.allowance(budget, t0 + ms(30)), ms(2));
        assert_eq!(cache.allowance(budget, t0 + Duration::from_secs(10)), ms(5), "never more than the burst");
        // The real thing reads at least this process within a fresh burst.
        let me = std::process::id() as i32;
        let refreshed = UsageCache::default().refresh(&[(me, t0)], budget);
        assert_eq!(refreshed, Refreshed { read: 1, left: 0 });
    }

    #[test]
    fn reads_this_process() {
        let usage = UsageReader::new().read(std::process::id() as i32).expect("/proc/self/stat");
        assert!(usage.rss_bytes > 0, "{usage:?}");
        assert!(usage.age > Duration::ZERO, "{usage:?}");
        assert_eq!(UsageReader::new().read(-1), None);
    }
}
