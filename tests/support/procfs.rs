//! What /proc says about a process. A zombie counts as gone: PID 1 in a
//! container may never reap orphans.

use std::collections::BTreeMap;
use std::fs;
use std::process::Command;
use std::time::Duration;

use super::{poll_every, POLL};

/// The fields of /proc/PID/stat the tests use.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    /// R, S, D, Z, ...
    pub state: char,
    pub ppid: i32,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// When it started, in clock ticks after the boot.
    pub start_ticks: u64,
}

/// /proc/PID/stat, None when the process does not exist.
pub fn stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may contain spaces and parentheses.
    let fields: Vec<&str> = text.get(text.rfind(')')? + 1..)?.split_whitespace().collect();
    // fields[0] is field 3 of proc_pid_stat(5); utime and stime are 14 and 15.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        cpu_ticks: ticks(11)? + ticks(12)?,
        start_ticks: ticks(19)?,
    })
}

/// How long the process has existed (its start time against /proc/uptime).
pub fn age(pid: i32) -> Option<Duration> {
    // Clock ticks are USER_HZ, 100 on Linux.
    let started = stat(pid)?.start_ticks as f64 / 100.0;
    let uptime: f64 = fs::read_to_string("/proc/uptime").ok()?.split(' ').next()?.parse().ok()?;
    Some(Duration::from_secs_f64((uptime - started).max(0.0)))
}

/// True while the process exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    matches!(stat(pid), Some(s) if s.state != 'Z' && s.state != 'X')
}

/// True when `pid` no longer runs: gone, or a zombie.
pub fn is_gone(pid: i32) -> bool {
    !is_alive(pid)
}

/// Waits up to `timeout` for `pid` to be gone; returns how long it took.
pub fn wait_gone(pid: i32, timeout: Duration) -> Option<Duration> {
    let start = std::time::Instant::now();
    poll_every(POLL, timeout, || is_gone(pid).then(|| start.elapsed()))
}

/// The process title / command line, NULs as spaces, trimmed.
pub fn cmdline(pid: i32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " ").trim().to_string())
}

/// Alive and titled by lrpm-host (guards against pid reuse).
pub fn is_lrpm_process(pid: i32) -> bool {
    is_alive(pid) && cmdline(pid).is_some_and(|c| c.starts_with("lrpm-host"))
}

/// Live processes by parent pid.
fn live_children_by_parent() -> BTreeMap<i32, Vec<i32>> {
    let mut parents: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if let Some(s) = stat(pid) {
            if s.state != 'Z' && s.state != 'X' {
                parents.entry(s.ppid).or_default().push(pid);
            }
        }
    }
    parents
}

/// The live children of `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    live_children_by_parent().remove(&pid).unwrap_or_default()
}

/// Every live descendant of `root`.
/// The farm's processes among `pids`: all but a zygote (the default;
/// not with LRPM_TEST_NO_ZYGOTE=1), which tests that count a farm's
/// configuration process and workers leave out.
pub fn farm_count(pids: &[i32]) -> usize {
    pids.iter().filter(|p| cmdline(**p).as_deref() != Some("lrpm-host: zygote")).count()
}

pub fn descendants(root: i32) -> Vec<i32> {
    let parents = live_children_by_parent();
    let mut found = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        for child in parents.get(&pid).into_iter().flatten() {
            found.push(*child);
            queue.push(*child);
        }
    }
    found
}

/// True while `pid` blocks in nanosleep()/clock_nanosleep() (PHP's sleep()
/// and usleep()), as /proc/PID/syscall tells.
pub fn in_sleep_syscall(pid: i32) -> bool {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/syscall")) else { return false };
    let number = text.split_whitespace().next().and_then(|n| n.parse::<i64>().ok());
    number.is_some_and(|n| n == libc::SYS_nanosleep || n == libc::SYS_clock_nanosleep)
}

/// True while `pid` blocks in a wait on descriptors or a socket read
/// (poll, ppoll, select, pselect6, epoll_wait, epoll_pwait, recvfrom, read),
/// as /proc/PID/syscall tells.
pub fn in_wait_syscall(pid: i32) -> bool {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/syscall")) else { return false };
    let number = text.split_whitespace().next().and_then(|n| n.parse::<i64>().ok());
    let waits = [
        libc::SYS_poll,
        libc::SYS_ppoll,
        libc::SYS_select,
        libc::SYS_pselect6,
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_recvfrom,
        libc::SYS_read,
    ];
    number.is_some_and(|n| waits.contains(&n))
}

/// Voluntary plus involuntary context switches: one per wakeup of a
/// sleeping process.
pub fn context_switches(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .filter(|line| line.starts_with("voluntary_ctxt_switches") || line.starts_with("nonvoluntary_ctxt_switches"))
        .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// `ps -o args= -p PID`, trimmed.
pub fn ps_args(pid: i32) -> String {
    let out = Command::new("ps")
        .args(["-o", "args=", "-p", &pid.to_string()])
        .output()
        .expect("running ps (procps installed?)");
    assert!(out.status.success(), "ps -p {pid} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
