//! `--dashboard`: the web page on the metrics listener (`GET /`, compiled
//! into the binary), its two documents (`/api/status`, the same as
//! `lrpmctl status --json`; `/api/farm`, the host's own figures and the
//! last hour's history), and its actions (`POST /api/jobs/ID/VERB`, only
//! with a token). The page is read-only without a token: every action
//! answers 403 then, and 401 to a request without the right
//! `Authorization: Bearer` header. A token never travels in a URL.

use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::Supervisor;
use crate::control::Reply;
use crate::farm::zygote::{Disabled, ZygotePhase};
use crate::farm::{JobCommand, Phase, Refusal};
use crate::job::JobId;
use crate::metrics::history::{self, History, Sample};
use crate::metrics::http::{Action, ActionVerb, Response, Route};

/// The page, with its script and styles inline (no CDN, no build step).
const PAGE: &str = include_str!("dashboard.html");

/// How the supervisor was asked to serve the dashboard.
#[derive(Debug, Clone, Default)]
pub struct DashboardSettings {
    /// Actions need `Authorization: Bearer TOKEN`; None: the page is read-only.
    pub token: Option<String>,
    /// It came from LRPM_DASHBOARD_TOKEN, which was then taken out of the
    /// environment children inherit: an upgrade's exec puts it back.
    pub token_from_env: bool,
}

/// The dashboard's state in the supervisor.
#[derive(Debug)]
pub(super) struct Dashboard {
    settings: DashboardSettings,
    history: History,
    /// Unix time of the last configuration applied, the last failed load and why.
    pub(super) last_load_at: Option<f64>,
    pub(super) last_error: Option<(f64, String)>,
    /// What the last configuration refused, job by job (at most 20).
    pub(super) job_errors: Vec<String>,
    /// The last `/api/status` and when it was rendered.
    status_cache: Option<(Instant, Response)>,
}

/// What `job_errors` keeps of a configuration's refused jobs.
const JOB_ERRORS_KEPT: usize = 20;

impl Dashboard {
    pub(super) fn new(settings: DashboardSettings, now: Instant) -> Dashboard {
        Dashboard {
            settings,
            history: History::new(now),
            last_load_at: None,
            last_error: None,
            job_errors: Vec::new(),
            status_cache: None,
        }
    }

    pub(super) fn next_sample(&self) -> Instant {
        self.history.next_due()
    }

    /// A configuration was applied; `errors` are the jobs it refused.
    pub(super) fn configuration_applied(&mut self, errors: Vec<String>) {
        self.last_load_at = Some(crate::control::status::unix_now());
        let total = errors.len();
        self.job_errors = errors.into_iter().take(JOB_ERRORS_KEPT).collect();
        if total > JOB_ERRORS_KEPT {
            self.job_errors
                .push(format!("... and {} more refused jobs (the log has them all)", total - JOB_ERRORS_KEPT));
        }
    }

    pub(super) fn configuration_failed(&mut self, why: &str) {
        let why: String = why.chars().take(2000).collect();
        self.last_error = Some((crate::control::status::unix_now(), why));
    }
}

/// Tokens compared in time independent of where they differ.
fn same_token(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    let mut differ = a.len() ^ b.len();
    for (i, byte) in b.iter().enumerate() {
        differ |= usize::from(a.get(i).copied().unwrap_or(0) ^ byte);
    }
    differ == 0
}

fn json_response(value: String) -> Response {
    Response { status: 200, content_type: "application/json", body: Rc::from(value.into_bytes()), render_us: None }
}

/// A status document rendered this recently serves every page that asks:
/// many open pages cost what one does.
const STATUS_REUSE: Duration = Duration::from_secs(1);

impl Supervisor<'_> {
    /// `GET /`, `/api/status`, `/api/farm`: 404 without `--dashboard`.
    pub(super) fn dashboard_response(&mut self, route: Route, now: Instant) -> Response {
        if self.dashboard.is_none() {
            return Response::text(404, crate::metrics::http::NOT_FOUND);
        }
        match route {
            Route::Dashboard => Response {
                status: 200,
                content_type: "text/html; charset=utf-8",
                body: Rc::from(PAGE.as_bytes()),
                render_us: None,
            },
            Route::ApiStatus => {
                if let Some((at, response)) = self.dashboard.as_ref().and_then(|d| d.status_cache.as_ref()) {
                    if now.saturating_duration_since(*at) < STATUS_REUSE {
                        return response.clone();
                    }
                }
                let started = Instant::now();
                let mut response = json_response(self.status_text(now));
                response.render_us = Some(started.elapsed().as_micros() as u64);
                if let Some(dashboard) = self.dashboard.as_mut() {
                    dashboard.status_cache = Some((now, response.clone()));
                }
                response
            }
            Route::ApiFarm => json_response(self.farm_document(now).to_string()),
            Route::Metrics | Route::Healthz | Route::Readyz => unreachable!("not a dashboard route"),
        }
    }

    fn zygote_state(&self) -> String {
        match self.zygote.phase() {
            ZygotePhase::Starting(p) => format!("starting (pid {})", p.pid),
            ZygotePhase::Ready(p) => format!("ready (pid {})", p.pid),
            ZygotePhase::Stopping(p, _) => format!("stopping (pid {})", p.pid),
            ZygotePhase::Down { .. } => "down: starting again after its backoff".to_string(),
            ZygotePhase::Disabled(Disabled::Off) => "off (--no-zygote)".to_string(),
            ZygotePhase::Disabled(Disabled::Refused) => {
                "disabled: it failed to start (workers are forked directly)".into()
            }
            ZygotePhase::Disabled(Disabled::ShutDown) => "stopped (shutting down)".to_string(),
            ZygotePhase::Disabled(Disabled::Upgrading) => "stopped for the upgrade".to_string(),
        }
    }

    /// The host's own figures, the configuration's last load, the zygote,
    /// the cluster, and the history.
    fn farm_document(&mut self, now: Instant) -> Value {
        let cluster = self.cluster_document(now).map_or(Value::Null, |doc| json!(doc));
        let zygote = self.zygote_state();
        let Some(dashboard) = self.dashboard.as_ref() else { return Value::Null };
        let history_jobs: serde_json::Map<String, Value> =
            dashboard.history.jobs().map(|(id, ring)| (id.clone(), json!(ring))).collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "php": crate::php::php_version(),
            "uptimeSeconds": now.saturating_duration_since(self.host.started).as_secs(),
            "configuration": {
                "loaded": self.farm.config_process().loaded,
                "loadsOk": self.host.config_loads_ok,
                "loadsFailed": self.host.config_loads_failed,
                "lastLoadAt": dashboard.last_load_at,
                "lastError": dashboard.last_error.as_ref().map(|(at, message)| json!({"at": at, "message": message})),
                "jobErrors": dashboard.job_errors,
            },
            "zygote": zygote,
            "shuttingDown": self.farm.is_shutting_down(),
            "actions": dashboard.settings.token.is_some(),
            "cluster": cluster,
            "history": {
                "farmEverySeconds": history::FARM_EVERY.as_secs(),
                "jobEverySeconds": history::JOB_EVERY.as_secs(),
                "farm": dashboard.history.farm().collect::<Vec<_>>(),
                "jobs": history_jobs,
            },
        })
    }

    /// Takes the history's samples that are due (the farm's every 10 s,
    /// each job's every minute), from the figures /metrics uses.
    pub(super) fn sample_history(&mut self, now: Instant) {
        let Some(due) = self.dashboard.as_ref().map(Dashboard::next_sample) else { return };
        if now < due {
            return;
        }
        let jobs_due = self.dashboard.as_ref().is_some_and(|d| d.history.jobs_due(now));
        let at = crate::control::status::unix_now() as u64;
        let figures = self.job_figures(now);
        let mut farm = Sample { at, ..Sample::default() };
        let mut jobs = Vec::new();
        for job in &figures {
            let sample = Sample {
                at,
                cycles: job.cycles,
                restarts: job.state.restarts,
                resident_bytes: job.resident,
                running: job.state.slots.values().filter(|s| matches!(s.phase, Phase::Running { .. })).count() as u64,
            };
            farm.cycles += sample.cycles;
            farm.restarts += sample.restarts;
            farm.resident_bytes += sample.resident_bytes;
            farm.running += sample.running;
            if jobs_due {
                jobs.push((job.id.clone(), sample));
            }
        }
        drop(figures);
        if let Some(dashboard) = self.dashboard.as_mut() {
            dashboard.history.record(now, farm, jobs_due.then_some(jobs));
        }
    }

    /// `POST /api/jobs/ID/VERB`.
    pub(super) fn dashboard_action(&mut self, action: Action, now: Instant) -> Response {
        let Some(dashboard) = self.dashboard.as_ref() else {
            return Response::text(404, crate::metrics::http::NOT_FOUND);
        };
        let Some(expected) = dashboard.settings.token.as_deref() else {
            return Response::text(
                403,
                "actions are off: start lrpm-host with --dashboard-token-file PATH (or LRPM_DASHBOARD_TOKEN) to allow them\n",
            );
        };
        if !action.token.as_deref().is_some_and(|given| same_token(given, expected)) {
            tracing::warn!("dashboard: refused a {:?} of job {} without the right token", action.verb, action.job);
            return Response::text(401, "refused: this action needs the header `Authorization: Bearer TOKEN`\n");
        }
        let command = match action.verb {
            ActionVerb::Restart => JobCommand::Restart,
            ActionVerb::Recycle => JobCommand::Recycle,
            ActionVerb::Stop => JobCommand::Hold,
            ActionVerb::Start => JobCommand::Start,
        };
        let id = JobId::parse(&action.job);
        let (outcome, reply) = self.run_job_command(&id, command, now);
        let status = match outcome {
            Ok(()) => 200,
            Err(Refusal::NoSuchJob) => 404,
            Err(_) => 409,
        };
        let text = match reply {
            Reply::Done(text) => {
                tracing::info!("dashboard: {} (an action from the web page)", text);
                text
            }
            Reply::Refused(text) => text,
        };
        Response::text(status, format!("{text}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::same_token;

    #[test]
    fn tokens_match_only_whole() {
        assert!(same_token("s3cret-token-123", "s3cret-token-123"));
        assert!(!same_token("s3cret-token-12", "s3cret-token-123"));
        assert!(!same_token("s3cret-token-1234", "s3cret-token-123"));
        assert!(!same_token("", "s3cret-token-123"));
        assert!(!same_token("S3cret-token-123", "s3cret-token-123"));
    }
}
