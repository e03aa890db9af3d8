//! The dashboard in a real headless browser: Debian's chromium, driven by
//! Selenium (python3-selenium, chromium-driver) from
//! tests/browser/dashboard.py against a live farm. Its own suite
//! (`make test-browser`, which installs the three packages): built only
//! with the `browser-tests` feature, and it fails, not skips, when a piece
//! is missing. With LRPM_SCREENSHOT_DIR set the screenshots go there
//! (`make test-browser` refreshes docs/screenshots).

mod support;

use std::process::Command;

use serde_json::json;
use support::*;

const TOKEN: &str = "browser-token-0123456789abcdef";

#[test]
fn the_page_shows_the_farm_live_refuses_actions_without_the_token_and_fits_a_phone() {
    let _g = shared();
    let dir = TempDir::new("dashboard_browser_token");
    let token_file = dir.join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    std::fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let extra_args =
        ["--metrics-listen", "127.0.0.1:0", "--dashboard", "--dashboard-token-file", &token_file.to_string_lossy()]
            .map(String::from)
            .to_vec();
    let farm = Farm::start("dashboard_browser", FarmOptions { extra_args, ..Default::default() }, |jobs| {
        json!({
            "steady": jobs.job_with("steady", 1, json!({"sleep": 0.05}), json!({"replicas": 2, "name": "orders consumer"})),
            "reports": jobs.job_with("reports", 1, json!({"sleep": 0.2}), json!({"name": "nightly reports", "memoryLimitMb": 256})),
            "crasher": jobs.job_with(
                "crasher",
                1,
                json!({"exitInStart": 3}),
                json!({"name": "broken importer", "maxFailures": 1, "shortRunTimeSeconds": 0})
            ),
        })
    });
    farm.wait_running(&["steady", "reports"], secs(15.0));
    let stderr = farm.wait_stderr("metrics=http://", secs(10.0));
    let start = stderr.find("metrics=http://").unwrap() + "metrics=http://".len();
    let address = &stderr[start..start + stderr[start..].find("/metrics").unwrap()];
    let shots = std::env::var("LRPM_SCREENSHOT_DIR").map_or_else(|_| farm.dir.join("screenshots"), Into::into);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/dashboard.py");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(&script).arg(format!("http://{address}/")).arg(TOKEN).arg(&shots);
    let out = run_with_timeout(cmd, secs(180.0));
    assert_eq!(out.status.code(), Some(0), "{}\n{}", out.dump(), farm.diagnostics());
    for name in ["dashboard-1280x800.png", "dashboard-390x844.png"] {
        let png = std::fs::read(shots.join(name)).unwrap_or_default();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{name}: {} bytes", png.len());
    }
}
