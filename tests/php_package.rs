//! php/: the Composer package (lrpm-host/lrpm). Its PHPUnit tests (Debian's
//! phpunit) pass; Composer (Debian's composer) installs it offline into an
//! app as a path repository; and that app's vendor/autoload.php, as
//! lrpm-host's bootstrap, runs under the host (the package's fallback
//! Lrpm\ functions for plain PHP stand aside for the host's native ones).

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::json;
use support::*;

fn package_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("php")
}

#[test]
fn the_packages_phpunit_tests_pass() {
    let _g = shared();
    let mut cmd = Command::new("phpunit");
    cmd.arg("-c").arg(package_dir().join("phpunit.xml.dist"));
    let out = run_with_timeout(cmd, secs(60.0));
    out.assert_code(0).assert_stdout_contains("OK (");
}

#[test]
fn composer_installs_the_package_offline_and_the_app_runs_under_lrpm_host() {
    let _g = shared();
    let dir = TempDir::new("php_package");
    let app = dir.join("app");
    std::fs::create_dir_all(app.join("src")).unwrap();
    let composer_json = json!({
        "name": "test/app",
        "type": "project",
        "repositories": [{"type": "path", "url": package_dir(), "options": {"symlink": true}}],
        "require": {"lrpm-host/lrpm": "*@dev"},
        "autoload": {"psr-4": {"App\\": "src/"}},
    });
    std::fs::write(app.join("composer.json"), serde_json::to_string_pretty(&composer_json).unwrap()).unwrap();
    std::fs::write(
        app.join("src/Hello.php"),
        r#"<?php
namespace App;

final class Hello implements \Lrpm\Worker, \Lrpm\Stoppable
{
    public function start(array $job): void
    {
        // The package's validator, inside the host, agrees with it.
        $errors = (new \Lrpm\JobValidator())->errors(\Lrpm\job_id(), $job);
        echo 'hello from slot ', \Lrpm\slot(), ' of job ', \Lrpm\job_id(), ' as a ', \Lrpm\process_kind(),
            ', validator errors: ', count($errors), "\n";
    }

    public function cycle(): void
    {
        usleep(50_000);
    }

    public function stop(): void
    {
        echo "stopped\n";
    }
}
"#,
    )
    .unwrap();
    std::fs::write(
        app.join("farm.php"),
        r#"<?php
return new class implements Lrpm\ConfigurationSource {
    public function loadConfiguration(): array
    {
        return ['h' => ['name' => 'hello', 'workerClass' => App\Hello::class, 'mtime' => 1, 'workerConfig' => [], 'replicas' => 2]];
    }
};
"#,
    )
    .unwrap();

    let mut composer = Command::new("composer");
    composer
        .args(["install", "--no-interaction", "--no-progress"])
        .current_dir(&app)
        .env("COMPOSER_HOME", dir.join("composer-home"))
        .env("COMPOSER_CACHE_DIR", dir.join("composer-cache"))
        .env("COMPOSER_DISABLE_NETWORK", "1")
        .env("COMPOSER_ALLOW_SUPERUSER", "1");
    let out = run_with_timeout(composer, secs(120.0));
    out.assert_code(0);
    assert!(
        out.stderr.contains("Installing lrpm-host/lrpm") || out.stdout.contains("Installing lrpm-host/lrpm"),
        "{}",
        out.dump()
    );

    // In plain PHP: the classes, the interfaces and the functions.
    let mut php = Command::new("php");
    php.arg("-r")
        .arg(
            r#"require 'vendor/autoload.php';
echo json_encode([class_exists('Lrpm\JobValidator'), class_exists('Lrpm\Testing\WorkerHarness'),
    interface_exists('Lrpm\Worker'), interface_exists('Lrpm\Stoppable'), interface_exists('PHPLRPM\Worker'),
    function_exists('Lrpm\should_stop'), function_exists('Lrpm\slot')]);"#,
        )
        .current_dir(&app);
    run_with_timeout(php, DEFAULT_TIMEOUT)
        .assert_code(0)
        .assert_stdout_contains("[true,true,true,true,true,true,true]");

    // Under lrpm-host, with the app's vendor/autoload.php as the bootstrap.
    std::fs::write(dir.join("jobs.json"), "{}").unwrap();
    let options = FarmOptions { source: app.join("farm.php"), ..Default::default() };
    let farm = Farm::start_in(dir, options);
    farm.wait_for(secs(15.0), "both slots to say hello", || {
        let out = farm.stdout();
        (out.contains("[hello#0] hello from slot 0 of job h as a worker, validator errors: 0")
            && out.contains("[hello#1] hello from slot 1 of job h as a worker, validator errors: 0"))
        .then_some(())
    });
    assert!(farm.stderr().contains("bootstrap="), "{}", farm.diagnostics());
    farm.stop(secs(15.0));
    assert!(farm.stdout().contains("[hello#1] stopped"), "{}", farm.diagnostics());
}
