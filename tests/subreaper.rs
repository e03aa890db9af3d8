//! `--subreaper`: what a worker leaves behind is adopted by the supervisor
//! and reaped when it ends, as an init would.

mod support;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use support::*;

fn orphan_of(farm: &Farm) -> i32 {
    farm.wait_for(secs(10.0), "the orphaned sleep to be adopted", || {
        children_of(farm.pid).into_iter().find(|pid| cmdline(*pid).is_some_and(|c| c.starts_with("sleep 30")))
    })
}

#[test]
fn orphans_are_adopted_and_reaped() {
    // Without --subreaper the orphan would be init's (or the test's).
    let _g = shared();
    let options = FarmOptions { extra_args: vec!["--subreaper".into()], ..Default::default() };
    let farm = Farm::start(
        "subreaper",
        options,
        |jobs| json!({"o": jobs.job_with("o", 1, json!({"spawn": "sh -c 'sleep 30 & exit 0'"}), json!({}))}),
    );
    let orphan = orphan_of(&farm);
    kill(Pid::from_raw(orphan), Signal::SIGTERM).unwrap();
    // Reaped, not left a zombie: its /proc entry goes away.
    farm.wait_for(secs(10.0), "the orphan to be reaped", || {
        (!std::path::Path::new(&format!("/proc/{orphan}")).exists()).then_some(())
    });
    // The farm itself is untouched.
    assert!(Farm::status_pid(&farm.status(), "o").is_some(), "{}", farm.diagnostics());
    farm.signal(Signal::SIGTERM);
    assert_eq!(farm.wait_exit(secs(10.0)).code(), Some(0), "{}", farm.diagnostics());
}
