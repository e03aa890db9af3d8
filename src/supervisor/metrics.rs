//! What `/metrics`, `/healthz`, `/readyz`, `lrpmctl metrics` and the
//! SIGUSR1 report say, from the core's state, the workers' shared pages
//! and /proc; and the HTTP clients' turn of the loop.
//!
//! Everything is read at the request: nothing is kept up to date between
//! scrapes (the core's counters and the pages already are the state).

use std::fmt::Write as _;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::event_loop::Source;
use super::Supervisor;
use crate::farm::{JobState, Phase, RecycleReason, StatusName};
use crate::metrics::exposition::{self, Exposition, Kind};
use crate::metrics::http::{Incoming, Request, Response, Route};
use crate::metrics::rss;
use crate::process;
use crate::process::shared_page::OpcacheFigures;

/// Every status name, for the one-gauge-per-state family.
const STATES: [StatusName; 7] = [
    StatusName::Starting,
    StatusName::Running,
    StatusName::Stopping,
    StatusName::Backoff,
    StatusName::Stopped,
    StatusName::Done,
    StatusName::Failed,
];

/// At most this many jobs are named in a 503 of `/readyz`.
const READYZ_NAMED: usize = 20;

/// One job's figures at a scrape.
pub(super) struct JobFigures<'a> {
    pub(super) id: String,
    pub(super) state: &'a JobState,
    status: StatusName,
    running: u64,
    pub(super) cycles: u64,
    last_cycle: Option<Duration>,
    pub(super) resident: u64,
    /// The largest resident set of one process of the job.
    resident_max: u64,
    /// Tasks (`Lrpm\Task`) running now, and of every process, ended or live.
    tasks_running: u64,
    tasks: crate::farm::TaskCounts,
    /// The longest time since a running process showed life (a cycle began
    /// or ended, `Lrpm\progress()`).
    since_activity: Option<Duration>,
}

impl Supervisor<'_> {
    /// The HTTP part of a loop turn: accept, read, answer (one rendering
    /// of each document for every client that asked in this turn), write,
    /// expire.
    pub(super) fn serve_http(&mut self, ready: &[Source], now: Instant) {
        let Some(http) = self.http.as_mut() else { return };
        let mut requests = Vec::new();
        for source in ready {
            match *source {
                Source::HttpListener => http.clients.accept_all(now),
                Source::Http { id, wants_write } => {
                    if let Some(request) = http.clients.ready(id, wants_write) {
                        requests.push((id, request));
                    }
                }
                _ => {}
            }
        }
        let mut rendered: [Option<Response>; Route::COUNT] = Default::default();
        for (id, incoming) in requests {
            let (response, head) = match incoming {
                Incoming::Get(Request { route, head }) => {
                    let index = route as usize;
                    if rendered[index].is_none() {
                        rendered[index] = Some(self.http_response(route, now));
                    }
                    (rendered[index].clone(), head)
                }
                Incoming::Action(action) => (Some(self.dashboard_action(action, now)), false),
            };
            if let (Some(http), Some(response)) = (self.http.as_mut(), response.as_ref()) {
                http.respond(id, response, head);
            }
        }
        if let Some(http) = self.http.as_mut() {
            http.clients.expire(now);
        }
    }

    fn http_response(&mut self, route: Route, now: Instant) -> Response {
        match route {
            Route::Metrics => Response {
                status: 200,
                content_type: exposition::CONTENT_TYPE,
                body: Rc::from(self.metrics_text(now).into_bytes()),
                render_us: None,
            },
            Route::Healthz => match self.health() {
                Ok(text) => Response::text(200, text),
                Err(text) => Response::text(503, text),
            },
            Route::Readyz => match self.readiness(now) {
                Ok(text) => Response::text(200, text),
                Err(text) => Response::text(503, text),
            },
            Route::Dashboard | Route::ApiStatus | Route::ApiFarm => self.dashboard_response(route, now),
        }
    }

    /// Alive (this answers) and a configuration has been loaded.
    pub(super) fn health(&self) -> Result<String, String> {
        if self.farm.config_process().loaded {
            Ok("ok\n".into())
        } else {
            Err("no configuration loaded yet\n".into())
        }
    }

    /// Every job has the processes it wants running, and none is failed or
    /// backing off. A held job (`stop ID`) and slots `done` by their
    /// restart policy want no process.
    pub(super) fn readiness(&self, now: Instant) -> Result<String, String> {
        if !self.farm.config_process().loaded {
            return Err("not ready: no configuration loaded yet\n".into());
        }
        if self.farm.is_shutting_down() {
            return Err("not ready: shutting down\n".into());
        }
        self.cluster_readiness()?;
        let mut not_ready = Vec::new();
        for (id, state) in self.farm.jobs() {
            let status = state.status(now);
            // A unit another member runs is not wanted here.
            let wanted = state
                .slots
                .values()
                .filter(|s| !matches!(s.phase, Phase::Held | Phase::Done | Phase::Elsewhere))
                .count();
            let running = state.slots.values().filter(|s| matches!(s.phase, Phase::Running { .. })).count();
            if matches!(status, StatusName::Failed | StatusName::Backoff) || running < wanted {
                not_ready.push(format!(
                    "job {id} ({}): {}, {running} of {wanted} processes running",
                    state.job.name,
                    status.as_str()
                ));
            }
        }
        if not_ready.is_empty() {
            return Ok(format!("ready: {} jobs\n", self.farm.jobs().len()));
        }
        let mut text = format!("not ready: {} of {} jobs\n", not_ready.len(), self.farm.jobs().len());
        for line in not_ready.iter().take(READYZ_NAMED) {
            text.push_str(line);
            text.push('\n');
        }
        if not_ready.len() > READYZ_NAMED {
            let _ = writeln!(text, "... and {} more", not_ready.len() - READYZ_NAMED);
        }
        Err(text)
    }

    /// The OPcache figures of the live worker that published last.
    fn opcache_figures(&self) -> Option<OpcacheFigures> {
        self.children.pages().filter_map(|page| page.opcache()).max_by_key(|f| f.published_ns)
    }

    pub(super) fn job_figures(&mut self, now: Instant) -> Vec<JobFigures<'_>> {
        let pids: Vec<i32> = self.farm.jobs().values().flat_map(|s| s.pids().map(|(_, pid)| pid)).collect();
        let mut resident = self.rss.sample(&pids).into_iter();
        let monotonic_now = process::monotonic_now_ns();
        let children = &self.children;
        self.farm
            .jobs()
            .iter()
            .map(|(id, state)| {
                let mut figures = JobFigures {
                    id: id.to_string(),
                    state,
                    status: state.status(now),
                    running: 0,
                    cycles: state.cycles_of_ended,
                    last_cycle: None,
                    resident: 0,
                    resident_max: 0,
                    tasks_running: 0,
                    tasks: state.tasks_of_ended,
                    since_activity: None,
                };
                for slot in state.slots.values() {
                    figures.running += u64::from(matches!(slot.phase, Phase::Running { .. }));
                    let Some(pid) = slot.phase.pid() else { continue };
                    let own = resident.next().flatten().unwrap_or(0);
                    figures.resident += own;
                    figures.resident_max = figures.resident_max.max(own);
                    if let Some(page) = children.page(pid) {
                        let snapshot = page.cycle_snapshot(monotonic_now);
                        figures.cycles += snapshot.cycles;
                        figures.last_cycle = figures.last_cycle.max(snapshot.last_cycle);
                        if matches!(slot.phase, Phase::Running { .. }) {
                            figures.since_activity = figures.since_activity.max(page.since_activity(monotonic_now));
                        }
                        let tasks = page.tasks();
                        figures.tasks_running += tasks.running;
                        figures.tasks += crate::farm::TaskCounts {
                            started: tasks.started,
                            failed: tasks.failed,
                            timed_out: tasks.timed_out,
                        };
                    }
                }
                figures
            })
            .collect()
    }

    /// The whole exposition (`GET /metrics`, `lrpmctl metrics`).
    pub(super) fn metrics_text(&mut self, now: Instant) -> String {
        let mut e = Exposition::new();
        let uptime = now.saturating_duration_since(self.host.started).as_secs_f64();
        e.family("lrpm_build_info", Kind::Gauge, "lrpm-host and PHP versions (always 1).");
        e.sample(
            "lrpm_build_info",
            &[("version", env!("CARGO_PKG_VERSION")), ("php", crate::php::php_version())],
            1u64,
        );
        e.family("lrpm_uptime_seconds", Kind::Gauge, "Seconds since the supervisor started.");
        e.sample("lrpm_uptime_seconds", &[], (uptime * 1000.0).round() / 1000.0);
        e.family(
            "lrpm_config_loads_total",
            Kind::Counter,
            "Configurations received from the source (result=ok) and failed loads: errors the source reported, \
             configurations refused, configuration processes that died or could not start (result=failed).",
        );
        e.sample("lrpm_config_loads_total", &[("result", "ok")], self.host.config_loads_ok);
        e.sample("lrpm_config_loads_total", &[("result", "failed")], self.host.config_loads_failed);
        e.family("lrpm_configuration_loaded", Kind::Gauge, "1 once a configuration has been loaded.");
        e.sample("lrpm_configuration_loaded", &[], u64::from(self.farm.config_process().loaded));
        e.family(
            "lrpm_output_lines_forwarded_total",
            Kind::Counter,
            "Lines (and pieces of long lines) of worker output the supervisor forwarded to its own stdout and stderr.",
        );
        e.sample("lrpm_output_lines_forwarded_total", &[], self.output.as_ref().map_or(0, |o| o.lines_forwarded));
        e.family(
            "lrpm_log_lines_dropped_total",
            Kind::Counter,
            "Lines of the host's own log dropped because its stderr was not read (a stuck log reader); worker output \
             is never dropped, it waits in the workers' pipes.",
        );
        e.sample("lrpm_log_lines_dropped_total", &[], crate::host_output::log_lines_dropped());
        if let Some(own) = rss::resident_bytes(std::process::id() as i32) {
            e.family("lrpm_supervisor_resident_bytes", Kind::Gauge, "Resident set of the supervisor process.");
            e.sample("lrpm_supervisor_resident_bytes", &[], own);
        }
        if let Some(opcache) = self.opcache_figures() {
            write_opcache(&mut e, &opcache);
        }
        self.write_cluster_metrics(&mut e, now);
        let jobs = self.job_figures(now);
        write_jobs(&mut e, &jobs);
        e.finish()
    }

    /// SIGUSR1: the job table, the memory figures and OPcache's, logged once.
    pub(super) fn log_status_report(&mut self, now: Instant) {
        let opcache = self.opcache_figures();
        let uptime = now.saturating_duration_since(self.host.started).as_secs();
        let monotonic_now = process::monotonic_now_ns();
        let mut rows: Vec<[String; 6]> = vec![["ID", "NAME", "STATE", "PID", "RESTARTS", "CYCLES"].map(String::from)];
        let mut pids = Vec::new();
        for (id, state) in self.farm.jobs() {
            for (slot, slot_state) in &state.slots {
                let pid = slot_state.phase.pid();
                pids.extend(pid);
                let cycles =
                    pid.and_then(|pid| self.children.page(pid)).map(|p| p.cycle_snapshot(monotonic_now).cycles);
                let id = crate::escape::controls(&id.to_string()).into_owned();
                rows.push([
                    if state.job.replicas > 1 || *slot > 0 { format!("{id}#{slot}") } else { id.to_string() },
                    crate::escape::controls(&state.job.name).into_owned(),
                    slot_state.status(now).as_str().to_string(),
                    pid.map_or_else(|| "-".into(), |p| p.to_string()),
                    slot_state.restarts.to_string(),
                    cycles.map_or_else(|| "-".into(), |c| c.to_string()),
                ]);
            }
        }
        let workers: u64 = self.rss.sample(&pids).into_iter().flatten().sum();
        let mut widths = [0usize; 6];
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let headline =
            format!("status report (SIGUSR1): {} jobs, {} processes, up {uptime}s", self.farm.jobs().len(), pids.len());
        let mut text = String::new();
        for row in &rows {
            let cells: Vec<String> = row.iter().zip(widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
            text.push_str(cells.join("  ").trim_end());
            text.push('\n');
        }
        let mb = |bytes: u64| bytes as f64 / 1_048_576.0;
        let own = rss::resident_bytes(std::process::id() as i32).unwrap_or(0);
        let _ = write!(text, "memory: supervisor {:.1} MB, workers {:.1} MB resident", mb(own), mb(workers));
        if let Some((total, available)) = rss::system_memory() {
            let _ = write!(text, "; system {:.0} MB total, {:.0} MB available", mb(total), mb(available));
        }
        text.push('\n');
        match opcache {
            Some(o) => {
                let _ = write!(
                    text,
                    "opcache: {:.1} MB used, {:.1} MB free, {} hits, {} misses, hit rate {}",
                    mb(o.used_bytes),
                    mb(o.free_bytes),
                    o.hits,
                    o.misses,
                    hit_ratio(&o).map_or_else(|| "-".into(), |r| format!("{:.1}%", r * 100.0))
                );
            }
            None => text.push_str("opcache: no figures yet (no worker has published them)"),
        }
        // The table's cells are escaped above; the block keeps its line breaks.
        tracing::info!(block = %text, "{headline}");
    }
}

fn hit_ratio(o: &OpcacheFigures) -> Option<f64> {
    let lookups = o.hits + o.misses;
    (lookups > 0).then(|| o.hits as f64 / lookups as f64)
}

fn write_opcache(e: &mut Exposition, o: &OpcacheFigures) {
    e.family(
        "lrpm_opcache_memory_used_bytes",
        Kind::Gauge,
        "OPcache shared memory in use (opcache_get_status() as the last worker to publish saw it).",
    );
    e.sample("lrpm_opcache_memory_used_bytes", &[], o.used_bytes);
    e.family("lrpm_opcache_memory_free_bytes", Kind::Gauge, "OPcache shared memory free.");
    e.sample("lrpm_opcache_memory_free_bytes", &[], o.free_bytes);
    e.family("lrpm_opcache_hits_total", Kind::Counter, "OPcache hits (since OPcache last restarted).");
    e.sample("lrpm_opcache_hits_total", &[], o.hits);
    e.family("lrpm_opcache_misses_total", Kind::Counter, "OPcache misses (since OPcache last restarted).");
    e.sample("lrpm_opcache_misses_total", &[], o.misses);
    if let Some(ratio) = hit_ratio(o) {
        e.family("lrpm_opcache_hit_ratio", Kind::Gauge, "OPcache hits / (hits + misses).");
        e.sample("lrpm_opcache_hit_ratio", &[], ratio);
    }
}

/// The per-job families, each written whole (labels `job` and `name`).
fn write_jobs(e: &mut Exposition, jobs: &[JobFigures<'_>]) {
    let family =
        |e: &mut Exposition, name: &str, kind: Kind, help: &str, value: &dyn Fn(&JobFigures) -> Option<u64>| {
            e.family(name, kind, help);
            for job in jobs {
                if let Some(v) = value(job) {
                    e.sample(name, &[("job", &job.id), ("name", &job.state.job.name)], v);
                }
            }
        };
    family(e, "lrpm_job_processes_desired", Kind::Gauge, "Processes the job runs (replicas).", &|j| {
        Some(u64::from(j.state.job.replicas))
    });
    family(e, "lrpm_job_processes_running", Kind::Gauge, "Processes of the job in the running state.", &|j| {
        Some(j.running)
    });
    e.family("lrpm_job_state", Kind::Gauge, "The job's status: 1 for the current one, 0 for the others.");
    for job in jobs {
        for state in STATES {
            let labels = [("job", job.id.as_str()), ("name", job.state.job.name.as_str()), ("state", state.as_str())];
            e.sample("lrpm_job_state", &labels, u64::from(job.status == state));
        }
    }
    family(
        e,
        "lrpm_job_restarts_total",
        Kind::Counter,
        "Processes of the job started again, for any reason (recycles included).",
        &|j| Some(j.state.restarts),
    );
    family(
        e,
        "lrpm_job_failures_total",
        Kind::Counter,
        "Failures: exits other than 0 and deaths by signal of processes that ended on their own, and cycles stopped by the watchdog.",
        &|j| Some(j.state.failures_total),
    );
    family(e, "lrpm_job_tasks_running", Kind::Gauge, "Tasks (Lrpm\\Task) the job's workers run now.", &|j| {
        Some(j.tasks_running)
    });
    family(e, "lrpm_job_tasks_started_total", Kind::Counter, "Tasks (Lrpm\\Task) the job's workers started.", &|j| {
        Some(j.tasks.started)
    });
    family(
        e,
        "lrpm_job_tasks_failed_total",
        Kind::Counter,
        "Tasks that threw, died (a signal, exit(), a fatal error), were cancelled or sent no answer.",
        &|j| Some(j.tasks.failed),
    );
    family(
        e,
        "lrpm_job_tasks_timed_out_total",
        Kind::Counter,
        "Tasks killed at their wait's timeout or at the end of their worker's stop grace.",
        &|j| Some(j.tasks.timed_out),
    );
    e.family("lrpm_job_recycles_total", Kind::Counter, "Planned recycles of the job's processes, by reason.");
    for job in jobs {
        for reason in RecycleReason::ALL {
            let count = job.state.recycles_by_reason.get(reason);
            // "unknown" only appears when it happened.
            if reason != RecycleReason::Unknown || count > 0 {
                let labels =
                    [("job", job.id.as_str()), ("name", job.state.job.name.as_str()), ("reason", reason.as_str())];
                e.sample("lrpm_job_recycles_total", &labels, count);
            }
        }
    }
    family(
        e,
        "lrpm_job_backoff_seconds",
        Kind::Gauge,
        "The job's current restart backoff (php-lrpm's backoffInterval: what the next short run waits; the longest of its slots).",
        &|j| Some(j.state.slots.values().map(|s| s.backoff.current().as_secs()).max().unwrap_or(0)),
    );
    family(
        e,
        "lrpm_job_last_exit_status",
        Kind::Gauge,
        "How the job's last process ended: its exit code, or 128 + the signal that killed it.",
        &|j| j.state.last_exit.map(|x| x.as_status().max(0) as u64),
    );
    family(
        e,
        "lrpm_job_cycles_total",
        Kind::Counter,
        "cycle() calls the job's processes completed (ended processes included).",
        &|j| Some(j.cycles),
    );
    let seconds = |e: &mut Exposition, name: &str, help: &str, value: &dyn Fn(&JobFigures) -> Option<Duration>| {
        e.family(name, Kind::Gauge, help);
        for job in jobs {
            if let Some(d) = value(job) {
                e.sample(name, &[("job", &job.id), ("name", &job.state.job.name)], d.as_secs_f64());
            }
        }
    };
    seconds(
        e,
        "lrpm_job_last_cycle_seconds",
        "How long the last completed cycle took (the longest over the job's running processes).",
        &|j| j.last_cycle,
    );
    seconds(
        e,
        "lrpm_job_seconds_since_activity",
        "The longest time any running process of the job has shown no life: no cycle began or ended and no \
         Lrpm\\progress() (absent before a first cycle). A value that only grows is a stuck or long-blocked worker.",
        &|j| j.since_activity,
    );
    e.family(
        "lrpm_job_watchdog_stops_total",
        Kind::Counter,
        "Processes the watchdog stopped as stuck, by the limit they ran past (cycleTimeoutSeconds, progressTimeoutSeconds).",
    );
    for job in jobs {
        let stops = job.state.watchdog_stops;
        for (limit, count) in [("cycle_timeout", stops.cycle_timeout), ("progress_timeout", stops.progress_timeout)] {
            let labels = [("job", job.id.as_str()), ("name", job.state.job.name.as_str()), ("limit", limit)];
            e.sample("lrpm_job_watchdog_stops_total", &labels, count);
        }
    }
    family(
        e,
        "lrpm_job_stop_kills_total",
        Kind::Counter,
        "Stops that ran out of shutdownTimeoutSeconds: the process was SIGKILLed (its PHP stack is logged first).",
        &|j| Some(j.state.stop_kills),
    );
    family(
        e,
        "lrpm_job_resident_bytes",
        Kind::Gauge,
        "Resident set of the job's processes, summed (/proc/PID/statm; shared pages count in each process).",
        &|j| Some(j.resident),
    );
    family(
        e,
        "lrpm_job_process_resident_bytes_max",
        Kind::Gauge,
        "The largest resident set of one of the job's processes (what memoryLimitMb is compared with, next to the Zend heap).",
        &|j| Some(j.resident_max),
    );
    family(
        e,
        "lrpm_job_memory_limit_bytes",
        Kind::Gauge,
        "The job's memoryLimitMb in bytes: a process above it is recycled (absent without a limit).",
        &|j| j.state.job.memory_limit_mb.map(|mb| mb.saturating_mul(1 << 20)),
    );
}
