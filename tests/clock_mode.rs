//! Clock mode in a farm: `--cycle-interval-seconds` is the default for jobs
//! without `cycleIntervalSeconds`; a job's own value wins.

mod support;

use serde_json::json;
use support::*;

#[test]
fn the_host_default_paces_jobs_without_their_own_interval() {
    let _g = shared();
    let options =
        FarmOptions { extra_args: vec!["--cycle-interval-seconds".into(), "0.3".into()], ..Default::default() };
    let farm = Farm::start("clock", options, |jobs| {
        json!({
            "default": jobs.job_with("default", 1, json!({"sleep": 0}), json!({})),
            "own": jobs.job_with("own", 1, json!({"sleep": 0}), json!({"cycleIntervalSeconds": 0.1})),
        })
    });
    let cycles = |tag: &str, n: usize| {
        farm.wait_for(secs(10.0), &format!("{n} cycles of {tag}"), || {
            let events = farm.events_of(tag, "cycle");
            (events.len() >= n).then_some(events)
        })
    };
    let default = cycles("default", 4);
    let own = cycles("own", 4);
    for pair in default.windows(2) {
        assert!(pair[1].t - pair[0].t >= 0.29, "default gap {:.3}\n{}", pair[1].t - pair[0].t, farm.diagnostics());
    }
    let mut own_gaps: Vec<f64> = own.windows(2).map(|p| p[1].t - p[0].t).collect();
    own_gaps.sort_by(f64::total_cmp);
    assert!(own_gaps[0] >= 0.09, "own gaps {own_gaps:?}\n{}", farm.diagnostics());
    assert!(own_gaps[own_gaps.len() / 2] < 0.2, "the job's own 0.1 s must win: {own_gaps:?}\n{}", farm.diagnostics());
}
