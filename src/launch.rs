//! What each PHP child is started with, built in one place for every path
//! that starts one: a farm's worker forked by the supervisor or by the
//! zygote, the `worker` command's, the configuration process (farm and
//! `check`), the zygote. A `Launch` is the runner's params, the process
//! title and the stop grace; `php::ChildProgram` (the FFI layer) only
//! carries them into the child, and knows nothing of jobs or the core.

#![forbid(unsafe_code)]

use std::os::fd::RawFd;
use std::path::Path;
use std::time::Duration;

use crate::farm::{RecycleReason, CONFIG_STOP_TIMEOUT};
use crate::job::Job;
use crate::php::{self, ChildProgram, PhpError};

/// One child's start: what the runner reads with `Lrpm\Internal\params()`,
/// its title, and how long after a stop request its blocking waits end.
#[derive(Debug, Clone)]
pub struct Launch {
    pub params: serde_json::Value,
    pub title: String,
    pub stop_grace: Option<Duration>,
    /// The descriptor its messages go up (the configuration process's pipe).
    pub message_fd: Option<RawFd>,
}

impl Launch {
    /// The program to run in the forked child, with `argv` as PHP's `$argv`.
    pub fn program(&self, argv: &[String]) -> Result<ChildProgram, PhpError> {
        let mut program = ChildProgram::new(&self.params, argv, &self.title, self.message_fd)?;
        if let Some(grace) = self.stop_grace {
            program.set_stop_grace(grace);
        }
        Ok(program)
    }
}

/// Whether a farm's workers include the source file: when it is a file and
/// no bootstrap was found, so that a single-file farm (source and worker
/// classes in one file) works. The configuration process uses the same
/// rule to tell which worker classes workers will see.
pub fn workers_load_source(source_is_file: bool, bootstrap: Option<&Path>) -> bool {
    source_is_file && bootstrap.is_none()
}

/// A worker of `job`: `slot` is the replica it runs (`Lrpm\slot()`),
/// `fencing_token`, with `--cluster`, the claim this member holds for the
/// unit; `source_file` (the farm's source, when a file) is included only
/// without a bootstrap; `cycles` bounds the `worker` command's run. The
/// same for a worker forked by the supervisor and one forked by the zygote.
pub fn worker(
    job: &Job,
    bootstrap: Option<&Path>,
    source_file: Option<&Path>,
    cycles: Option<u64>,
    slot: u32,
    fencing_token: Option<i64>,
) -> Launch {
    let source_file = source_file.filter(|_| workers_load_source(true, bootstrap));
    let mut params = php::runner_params("worker");
    params.extend([
        ("recycleReasons".into(), RecycleReason::runner_constants()),
        ("bootstrap".into(), serde_json::json!(bootstrap.map(|p| p.to_string_lossy()))),
        ("sourceFile".into(), serde_json::json!(source_file.map(|p| p.to_string_lossy()))),
        ("class".into(), serde_json::json!(job.worker_class)),
        ("jobId".into(), serde_json::json!(job.id.to_string())),
        ("slot".into(), serde_json::json!(slot)),
        ("fencingToken".into(), serde_json::json!(fencing_token)),
        ("job".into(), serde_json::Value::Object((*job.config).clone())),
        ("cycles".into(), serde_json::json!(cycles)),
        ("cycleInterval".into(), serde_json::json!(job.cycle_interval_seconds)),
        ("maxCycles".into(), serde_json::json!(job.max_cycles)),
        ("maxLifetime".into(), serde_json::json!(job.max_lifetime_seconds)),
        ("memoryLimitMb".into(), serde_json::json!(job.memory_limit_mb)),
        ("maxTasks".into(), serde_json::json!(job.max_tasks)),
    ]);
    Launch {
        params: serde_json::Value::Object(params),
        title: format!("lrpm-host: worker {} {} #{slot}", job.id, job.name),
        // Half the shutdown timeout: a stopping worker's blocked stream reads
        // end then, leaving it the other half to finish before SIGKILL.
        stop_grace: Some(Duration::from_millis(job.shutdown_timeout_seconds.saturating_mul(500))),
        message_fd: None,
    }
}

/// The configuration process: it runs `source` (`once`: a single load, for
/// `check`) and sends what it loads on `message_fd`.
pub fn config(
    source: &str,
    source_is_file: bool,
    interval: u64,
    once: bool,
    bootstrap: Option<&Path>,
    message_fd: RawFd,
) -> Launch {
    let mut params = php::runner_params("config");
    params.extend([
        ("bootstrap".into(), serde_json::json!(bootstrap.map(|p| p.to_string_lossy()))),
        ("source".into(), serde_json::json!(source)),
        ("sourceIsFile".into(), serde_json::json!(source_is_file)),
        ("workersLoadSource".into(), serde_json::json!(workers_load_source(source_is_file, bootstrap))),
        ("interval".into(), serde_json::json!(interval)),
        ("once".into(), serde_json::json!(once)),
    ]);
    Launch {
        params: serde_json::Value::Object(params),
        title: "lrpm-host: config".into(),
        // Half its stop timeout: its handlers run, and it ends before the
        // core's SIGKILL.
        stop_grace: Some(CONFIG_STOP_TIMEOUT / 2),
        message_fd: Some(message_fd),
    }
}

/// The zygote (unless `--no-zygote`): it runs the bootstrap once, then
/// forks workers on the supervisor's requests that arrive on `socket_fd`.
pub fn zygote(bootstrap: Option<&Path>, socket_fd: RawFd) -> Launch {
    let mut params = php::runner_params("zygote");
    params.extend([
        ("recycleReasons".into(), RecycleReason::runner_constants()),
        ("bootstrap".into(), serde_json::json!(bootstrap.map(|p| p.to_string_lossy()))),
        ("socket".into(), serde_json::json!(socket_fd)),
    ]);
    Launch {
        params: serde_json::Value::Object(params),
        title: "lrpm-host: zygote".into(),
        stop_grace: None,
        message_fd: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        let described = crate::job::DescribedJob::from_json(
            crate::job::JobId::Int(1),
            serde_json::json!({"name": "mailer", "workerClass": "App\\Mailer", "mtime": 1, "workerConfig": []}),
        );
        described.validate().expect("a valid job").0
    }

    #[test]
    fn every_launch_carries_the_runners_common_params_and_its_mode() {
        let job = job();
        let launches = [
            ("worker", worker(&job, None, None, None, 2, Some(7))),
            ("config", config("src.php", true, 30, false, None, 5)),
            ("zygote", zygote(None, 6)),
        ];
        for (mode, launch) in &launches {
            assert_eq!(launch.params["mode"], *mode);
            assert!(launch.params["interfaces"].is_object(), "{mode}");
            assert!(launch.params["exitCodes"].is_object(), "{mode}");
        }
        let worker = &launches[0].1;
        assert_eq!(worker.params["slot"], 2);
        assert_eq!(worker.params["fencingToken"], 7);
        assert_eq!(worker.stop_grace, Some(Duration::from_millis(job.shutdown_timeout_seconds * 500)));
        assert!(worker.title.ends_with("#2"), "{}", worker.title);
        assert_eq!(launches[1].1.stop_grace, Some(CONFIG_STOP_TIMEOUT / 2));
        assert_eq!(launches[1].1.params["workersLoadSource"], true);
        assert_eq!(launches[2].1.params["socket"], 6);
    }

    #[test]
    fn workers_include_the_source_file_only_without_a_bootstrap() {
        let job = job();
        let file = Path::new("/app/farm.php");
        let alone = worker(&job, None, Some(file), None, 0, None);
        assert_eq!(alone.params["sourceFile"], "/app/farm.php");
        let with_bootstrap = worker(&job, Some(Path::new("/app/vendor/autoload.php")), Some(file), None, 0, None);
        assert!(with_bootstrap.params["sourceFile"].is_null());
    }
}
