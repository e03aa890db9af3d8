//! Workers' PHP stacks on demand. Three parts ask: `backtrace ID[#SLOT]`
//! on the control socket, the watchdog (before its SIGTERM), and a stop
//! that runs into its SIGKILL (the kill waits for the answer, briefly).
//!
//! Asking costs the supervisor one store into the worker's shared page and
//! one signal; the worker writes the answer into the same page (how:
//! csrc/lrpm_backtrace.c). Nothing here blocks: while requests are open
//! the loop wakes every few milliseconds to look at the pages, and each
//! request has a deadline after which it is answered with what is known.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::Supervisor;
use crate::control::server::ClientId;
use crate::control::Reply;
use crate::farm::LogLevel;
use crate::job::JobId;
use crate::process;
use crate::process::shared_page::SharedPage;

/// How long a worker has to answer a control request or the watchdog.
pub(super) const ANSWER_WAIT: Duration = Duration::from_secs(1);
/// How long a SIGKILL at the end of a stop waits for the stack.
pub(super) const BEFORE_KILL_WAIT: Duration = Duration::from_millis(500);
/// A job-wide request asks at most this many processes (one slot can
/// always be asked for by name).
const MAX_PROCESSES_ASKED: usize = 100;
/// How often open requests are looked at.
const LOOK_EVERY: Duration = Duration::from_millis(2);

/// What an answer is for.
#[derive(Debug)]
enum Purpose {
    /// One part of a control client's reply.
    Client { request: u64, part: usize },
    /// A log line.
    Log { why: String },
    /// A log line, then SIGKILL to the worker's process group.
    LogThenKill { why: String },
}

#[derive(Debug)]
struct Asked {
    pid: i32,
    /// "job 3#0 (pid 1234)".
    subject: String,
    job: JobId,
    slot: u32,
    number: u64,
    deadline: Instant,
    purpose: Purpose,
}

/// A control client's reply, one part per process asked.
#[derive(Debug)]
struct ClientReply {
    client: ClientId,
    parts: Vec<Option<String>>,
}

/// The open requests.
#[derive(Debug, Default)]
pub(super) struct Backtraces {
    asked: Vec<Asked>,
    replies: BTreeMap<u64, ClientReply>,
    next_request: u64,
}

impl Backtraces {
    /// When the loop should look at the pages again (None: nothing open).
    pub(super) fn deadline(&self, now: Instant) -> Option<Instant> {
        let earliest = self.asked.iter().map(|a| a.deadline).min()?;
        Some(earliest.min(now + LOOK_EVERY))
    }
}

/// What a worker answered, or why there is no stack.
fn no_answer_text(waited: Duration) -> String {
    format!(
        "no answer within {:.1}s: the worker is neither running PHP code nor in a call PHP made into native \
         code (the engine's own work, such as a garbage collection; or the process is stopped or being traced)",
        waited.as_secs_f64()
    )
}

impl Supervisor<'_> {
    /// Stores a request in the worker's page and signals it; Err says why
    /// it cannot answer.
    fn ask_for_backtrace(&mut self, pid: i32) -> Result<u64, String> {
        let Some(page) = self.children.page(pid) else {
            return Err("it has no shared page to answer in".to_string());
        };
        if !page.answers_backtraces() {
            return Err("it is still starting (its PHP request has not begun)".to_string());
        }
        let number = page.ask_backtrace();
        process::signal_realtime(Pid::from_raw(pid), crate::php::backtrace_signal())
            .map_err(|e| format!("cannot signal it: {e}"))?;
        Ok(number)
    }

    /// `backtrace ID` (every running process of the job) or
    /// `backtrace ID#SLOT`. The reply comes once every process answered,
    /// or at the deadline.
    pub(super) fn handle_backtrace(&mut self, client: ClientId, target: &str, now: Instant) -> Option<Reply> {
        let (id, slot) = match self.farm.job(&JobId::parse(target)) {
            Some(_) => (JobId::parse(target), None),
            None => match target.rsplit_once('#').map(|(id, n)| (id, n.parse::<u32>())) {
                Some((id, Ok(slot))) => (JobId::parse(id), Some(slot)),
                _ => (JobId::parse(target), None),
            },
        };
        let targets: Vec<(u32, i32)> = match self.farm.signal_targets(&id) {
            Ok(targets) => targets.into_iter().filter(|(n, _)| slot.map_or(true, |s| s == *n)).collect(),
            Err(crate::farm::Refusal::NoSuchJob) => return Some(Reply::refused(format!("job {id} does not exist"))),
            Err(_) => Vec::new(),
        };
        if targets.is_empty() {
            return Some(Reply::refused(match slot {
                Some(slot) => format!("job {id} has no running process in slot {slot}"),
                None => format!("job {id} has no running process"),
            }));
        }
        let request = self.backtraces.next_request;
        self.backtraces.next_request += 1;
        let mut parts = Vec::new();
        let total = targets.len();
        let targets: Vec<(u32, i32)> = targets.into_iter().take(MAX_PROCESSES_ASKED).collect();
        for (part, (slot, pid)) in targets.into_iter().enumerate() {
            let subject = self.subject(&id, slot, pid);
            match self.ask_for_backtrace(pid) {
                Ok(number) => {
                    parts.push(None);
                    self.backtraces.asked.push(Asked {
                        pid,
                        subject,
                        job: id.clone(),
                        slot,
                        number,
                        deadline: now + ANSWER_WAIT,
                        purpose: Purpose::Client { request, part },
                    });
                }
                Err(why) => parts.push(Some(format!("{subject}: no backtrace: {why}"))),
            }
        }
        if total > MAX_PROCESSES_ASKED {
            parts.push(Some(format!(
                "... and {} more processes of job {id}, not asked: ask for one with `backtrace {id}#SLOT`",
                total - MAX_PROCESSES_ASKED
            )));
        }
        self.backtraces.replies.insert(request, ClientReply { client, parts });
        self.control.clients.defer(client, now + ANSWER_WAIT + Duration::from_secs(5));
        self.finish_client_reply(request);
        None
    }

    fn subject(&self, id: &JobId, slot: u32, pid: i32) -> String {
        let label = self.farm.job(id).map_or_else(|| format!("job {id}#{slot}"), |s| s.label(slot));
        format!("{label} (pid {pid})")
    }

    /// The watchdog stops a stuck worker: its stack goes to the log.
    pub(super) fn log_backtrace(&mut self, id: &JobId, slot: u32, pid: i32, why: String, now: Instant) {
        self.ask_then(id, slot, pid, Purpose::Log { why }, now + ANSWER_WAIT);
    }

    /// A stop ran out of time: the stack goes to the log, then SIGKILL
    /// (at once if the worker cannot answer).
    pub(super) fn kill_after_backtrace(&mut self, id: &JobId, slot: u32, pid: i32, why: String, now: Instant) {
        if !self.ask_then(id, slot, pid, Purpose::LogThenKill { why }, now + BEFORE_KILL_WAIT) {
            process::signal_group(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    /// False when the worker cannot answer (logged at debug level).
    fn ask_then(&mut self, id: &JobId, slot: u32, pid: i32, purpose: Purpose, deadline: Instant) -> bool {
        let subject = self.subject(id, slot, pid);
        match self.ask_for_backtrace(pid) {
            Ok(number) => {
                self.backtraces.asked.push(Asked { pid, subject, job: id.clone(), slot, number, deadline, purpose });
                true
            }
            Err(why) => {
                tracing::debug!("{subject}: no backtrace: {why}");
                false
            }
        }
    }

    /// Every turn: answers that arrived, and requests past their deadline.
    pub(super) fn collect_backtraces(&mut self, now: Instant) {
        if self.backtraces.asked.is_empty() {
            return;
        }
        let mut done = Vec::new();
        let mut open = Vec::new();
        for asked in std::mem::take(&mut self.backtraces.asked) {
            let answer = self.children.page(asked.pid).and_then(|page| page.backtrace_answer(asked.number));
            match answer {
                Some(text) => done.push((asked, text)),
                None if now >= asked.deadline => {
                    let waited = match asked.purpose {
                        Purpose::LogThenKill { .. } => BEFORE_KILL_WAIT,
                        _ => ANSWER_WAIT,
                    };
                    done.push((asked, no_answer_text(waited)));
                }
                None => open.push(asked),
            }
        }
        self.backtraces.asked = open;
        for (asked, text) in done {
            self.deliver_backtrace(asked, text.trim_end());
        }
    }

    /// The process ended (reaped): an answer it wrote in time is used,
    /// else what was asked of it is answered so.
    pub(super) fn backtrace_process_ended(&mut self, pid: i32, page: Option<&SharedPage>) {
        if !self.backtraces.asked.iter().any(|a| a.pid == pid) {
            return;
        }
        let (ended, open): (Vec<Asked>, Vec<Asked>) =
            std::mem::take(&mut self.backtraces.asked).into_iter().partition(|a| a.pid == pid);
        self.backtraces.asked = open;
        for mut asked in ended {
            // Gone: no SIGKILL for a pid that may be someone else's now.
            if let Purpose::LogThenKill { why } = asked.purpose {
                asked.purpose = Purpose::Log { why };
            }
            let text = page.and_then(|p| p.backtrace_answer(asked.number));
            let text = text.as_deref().unwrap_or("the process ended before it answered");
            self.deliver_backtrace(asked, text.trim_end());
        }
    }

    fn deliver_backtrace(&mut self, asked: Asked, text: &str) {
        match asked.purpose {
            Purpose::Client { request, part } => {
                if let Some(reply) = self.backtraces.replies.get_mut(&request) {
                    if let Some(slot) = reply.parts.get_mut(part) {
                        *slot = Some(format!("{}: {text}", asked.subject));
                    }
                }
                self.finish_client_reply(request);
            }
            Purpose::Log { why } => self.log_stack(&asked.job, asked.slot, asked.pid, &why, text),
            Purpose::LogThenKill { why } => {
                self.log_stack(&asked.job, asked.slot, asked.pid, &why, text);
                process::signal_group(Pid::from_raw(asked.pid), Signal::SIGKILL);
            }
        }
    }

    /// The stack on lines of its own after the line saying why.
    fn log_stack(&self, job: &JobId, slot: u32, pid: i32, why: &str, text: &str) {
        let id = job.to_string();
        let name = self.farm.job(job).map(|s| s.job.name.as_str());
        let subject = crate::telemetry::Subject { job: Some(&id), name, slot: Some(slot), pid: Some(pid) };
        crate::telemetry::log_block(LogLevel::Warn, &format!("{why}: its PHP stack:"), text, subject);
    }

    /// Sends a client's reply once every part is in.
    fn finish_client_reply(&mut self, request: u64) {
        let complete = self.backtraces.replies.get(&request).is_some_and(|r| r.parts.iter().all(Option::is_some));
        if !complete {
            return;
        }
        let Some(reply) = self.backtraces.replies.remove(&request) else { return };
        let parts: Vec<String> = reply.parts.into_iter().flatten().collect();
        let text = parts.join("\n\n");
        self.control.respond(reply.client, &Reply::Done(text).wire());
    }
}
