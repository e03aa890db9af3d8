//! Configurations from the configuration process: read from its pipe,
//! validated (entries it marks unchanged come from the cache), host-wide
//! defaults applied, and handed to the core.

use std::time::Instant;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::config_channel::{ConfigMessage, PushRate, ReadOutcome};
use super::Supervisor;
use crate::farm::Event;
use crate::job::{self, JobId};
use crate::process;

impl Supervisor<'_> {
    pub(super) fn read_config_channel(&mut self, now: Instant) {
        let Some(channel) = self.config_channel.as_mut() else { return };
        let (messages, closed) = match channel.read_available() {
            ReadOutcome::Open(m) => (m, false),
            ReadOutcome::Closed(m) => (m, true),
        };
        if closed {
            self.config_channel = None;
        }
        for message in messages {
            match message {
                Ok(ConfigMessage::Configuration { jobs }) => self.configuration_received(jobs, now),
                Ok(ConfigMessage::Error { message }) => {
                    self.host.config_failed();
                    if let Some(dashboard) = self.dashboard.as_mut() {
                        dashboard.configuration_failed(&format!("configuration source error: {message}"));
                    }
                    tracing::error!("configuration source error: {message}")
                }
                Err(e) => tracing::error!("{e}"),
            }
        }
    }

    fn configuration_received(&mut self, entries: Vec<serde_json::Value>, now: Instant) {
        let resolve_user = job::users::system_resolver(nix::unistd::geteuid().is_root());
        let (validated, lost) =
            job::validate_entries_cached(entries, &mut self.entry_cache, &resolve_user, &self.config.job_defaults);
        if !lost.is_empty() {
            // Cannot happen unless a message was lost: never apply a
            // configuration with holes (its missing jobs would be stopped).
            let ids: Vec<String> = lost.into_iter().map(|l| l.job_id).collect();
            tracing::error!(
                "the configuration process referred to entries this supervisor does not have (jobs {}); \
                 ignoring this configuration and restarting the configuration process",
                ids.join(", ")
            );
            if let Some(pid) = self.farm.config_process().pid() {
                process::signal_group(Pid::from_raw(pid), Signal::SIGKILL);
            }
            self.host.config_failed();
            return;
        }
        for error in &validated.errors {
            tracing::error!("invalid configuration for {error}; the job is dropped, the others run");
        }
        if let Some(dashboard) = self.dashboard.as_mut() {
            dashboard.configuration_applied(validated.errors.iter().map(|e| format!("invalid: {e}")).collect());
        }
        for unknown in validated.unknown_fields {
            if self.warned_fields.insert((JobId::parse(&unknown.job_id), unknown.field.clone())) {
                tracing::warn!("{unknown}");
            }
        }
        if self.config.interval_seconds == 0 && self.push_rate.arrived(now) {
            tracing::warn!(
                "the configuration source returned {} or more configurations in one second in push mode (--interval=0): \
                 loadConfiguration() should block until the configuration changes (with a timeout of a few seconds), \
                 or use --interval=N; polls are paced to 10 per second",
                PushRate::MAX_PER_SECOND
            );
        }
        tracing::debug!(jobs = validated.jobs.len(), "configuration received");
        let mut jobs = validated.jobs;
        let php_memory_limit = crate::php::memory_limit_bytes();
        for job in &mut jobs {
            if let Some(warning) = job::memory_limit_warning(job, php_memory_limit) {
                let key = format!("memoryLimitMb {:?}", job.memory_limit_mb);
                if self.warned_fields.insert((job.id.clone(), key)) {
                    tracing::warn!("{warning}");
                }
            }
        }
        self.host.config_loaded();
        let actions = self.farm.handle(Event::Configuration(jobs), now);
        self.apply(actions);
    }
}
