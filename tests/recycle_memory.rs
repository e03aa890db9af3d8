//! memoryLimitMb against a heap that grows fast: the runner reads the Zend
//! heap after every cycle (only the resident set, from /proc, at most once
//! a second), so a worker that grows by 20 MB a cycle is recycled at the
//! limit, never killed by PHP's memory_limit (a fatal error mid-cycle:
//! found by examples/messenger's soak, where a handler growing 10 MB a
//! batch died at 128 MB with a 40 MB memoryLimitMb).

mod support;

use serde_json::json;
use support::*;

#[test]
fn a_fast_growing_heap_is_recycled_at_memory_limit_mb_not_killed_by_memory_limit() {
    let _g = shared();
    let farm = Farm::start("recycle_memory", FarmOptions::default(), |jobs| {
        json!({"grow": jobs.job_with("grow", 1, json!({"keepBytes": 20 * 1024 * 1024}),
            json!({"workerClass": "FarmFixture\\Recycler", "memoryLimitMb": 60}))})
    });
    farm.wait_for(secs(20.0), "three memoryLimitMb recycles", || {
        (farm.stderr().matches("recycled (memoryLimitMb)").count() >= 3).then_some(())
    });
    let stderr = farm.stderr();
    assert!(!stderr.contains("Allowed memory size"), "a worker reached memory_limit\n{}", farm.diagnostics());
    assert!(!stderr.contains("exit code 255"), "{}", farm.diagnostics());
    farm.stop(secs(15.0));
}

/// What start() built and dropped goes back to the kernel once it returns:
/// 1,000,000 short strings (about 50 MB of Zend heap, all of it private
/// dirty memory a second later without the release) leave a few MB, built
/// and dropped in start() or in a cycle.
#[test]
fn what_start_freed_is_given_back_to_the_kernel() {
    let _g = shared();
    let farm = Farm::start("release_after_start", FarmOptions::default(), |jobs| {
        json!({
            "cold": jobs.job_with("cold", 1, json!({}), json!({"workerClass": "FarmFixture\\Churner"})),
            "empty": jobs.job_with("empty", 1, json!({"strings": 0}), json!({"workerClass": "FarmFixture\\Churner"})),
            // The same churn in its first cycle: given back between cycles.
            "batch": jobs.job_with("batch", 1, json!({"inCycle": true}), json!({"workerClass": "FarmFixture\\Churner"})),
        })
    });
    let dirty = |tag: &str| {
        farm.wait_for(secs(30.0), "the private dirty figure", || farm.events_of(tag, "dirty").first().map(|e| e.pid))
    };
    let (cold, empty, batch) = (dirty("cold"), dirty("empty"), dirty("batch"));
    // 46.6 MB without the release, 3.3 MB with it (docs/benchmarks.md).
    assert!(cold < 8 * 1024, "the cold worker kept {cold} kB of private dirty memory (an empty one: {empty} kB)");
    assert!(batch < 8 * 1024, "the batch worker kept {batch} kB of private dirty memory (an empty one: {empty} kB)");
    farm.stop(secs(15.0));
}
