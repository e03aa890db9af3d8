//! `--cluster etcds://` against a real etcd that wants TLS, a client
//! certificate signed by its CA (`--client-cert-auth`) and a user with a
//! password (etcd's auth, a role on the farm's prefix only): a member with
//! all three runs its unit; one without the client certificate, one with a
//! wrong password and one trusting another CA get no lease, say why, and
//! keep their every-host job and control socket; options that cannot work
//! are refused at startup (exit 64) with the reason.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use support::*;

/// A test CA, the server's certificate (for 127.0.0.1), a client
/// certificate, and another CA.
struct Certificates {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    other_ca: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl (Debian's openssl, `make deps`): {e}"));
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn certificates(dir: &Path) -> Certificates {
    let days = ["-days", "2"];
    for ca in ["ca", "other-ca"] {
        let subject = format!("/CN=lrpm test {ca}");
        let (key, cert) = (format!("{ca}.key"), format!("{ca}.pem"));
        openssl(
            dir,
            &[&["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &cert, "-subj", &subject][..], &days]
                .concat(),
        );
    }
    let sign = |name: &str, subject: &str, extensions: &str| {
        std::fs::write(dir.join(format!("{name}.ext")), extensions).unwrap();
        let (key, csr, cert, ext) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
        openssl(
            dir,
            &["req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", subject],
        );
        openssl(
            dir,
            &[
                &["x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", &cert][..],
                &["-extfile", &ext],
                &days,
            ]
            .concat(),
        );
    };
    // etcd's JSON gateway connects to etcd itself with the server's
    // certificate: it must be good for clients too.
    sign("server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n");
    // No CommonName: with auth on, etcd's gateway refuses a client
    // certificate that has one (it would not be used as the user name).
    sign("client", "/O=lrpm member", "extendedKeyUsage=clientAuth\n");
    Certificates {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
        other_ca: dir.join("other-ca.pem"),
    }
}

/// etcdctl against the secure etcd, as the client certificate.
fn etcdctl(port: u16, certs: &Certificates, args: &[&str]) {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=https://127.0.0.1:{port}"))
        .arg(format!("--cacert={}", certs.ca.display()))
        .arg(format!("--cert={}", certs.client_cert.display()))
        .arg(format!("--key={}", certs.client_key.display()))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("etcdctl (Debian's etcd-client, `make deps`): {e}"));
    assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn farm_jobs(dir: &TempDir) -> Value {
    let log = dir.join("events.log");
    json!({
        "1": job(&log, "1", 1, json!({}), json!({})),
        "2": job(&log, "2", 1, json!({}), json!({"placement": "every-host"})),
    })
}

fn member(name: &str, url: &str, args: &[String]) -> Farm {
    let dir = TempDir::new(&format!("cluster_secure_{name}"));
    write_atomically(&dir.join("jobs.json"), farm_jobs(&dir).to_string().as_bytes());
    let mut extra_args: Vec<String> =
        ["--cluster", url, "--cluster-member", name, "--cluster-ttl", "4"].map(String::from).to_vec();
    extra_args.extend_from_slice(args);
    let farm = Farm::start_in(dir, FarmOptions { extra_args, ..Default::default() });
    farm.wait_answering(secs(20.0));
    farm
}

fn view(farm: &Farm) -> Value {
    let reply = farm.request("cluster").unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("the cluster document ({e}): {reply}"))
}

fn running(farm: &Farm, id: &str) -> usize {
    let Some(status) = farm.try_status() else { return 0 };
    let slots = status[id]["state"]["slots"].as_array().cloned().unwrap_or_default();
    slots.iter().filter(|s| s["status"] == "running").count()
}

#[test]
fn a_member_with_tls_a_client_certificate_and_a_password_runs_its_units_and_the_others_say_why_not() {
    let _g = shared();
    let dir = TempDir::new("cluster_secure_etcd");
    let certs = certificates(dir.path());
    let data = dir.join("etcd-data").to_string_lossy().into_owned();
    let (ca, cert, key) = (certs.ca.clone(), certs.server_cert.clone(), certs.server_key.clone());
    let etcd = Daemon::start("etcd", "etcd-server", dir.path(), move |port| {
        let peer = free_port();
        let client = format!("https://127.0.0.1:{port}");
        [
            "--name=secure".to_string(),
            format!("--data-dir={data}"),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-cluster=secure=http://127.0.0.1:{peer}"),
            format!("--cert-file={}", cert.display()),
            format!("--key-file={}", key.display()),
            format!("--trusted-ca-file={}", ca.display()),
            "--client-cert-auth".to_string(),
            "--log-level=warn".to_string(),
        ]
        .to_vec()
    });
    // etcd's auth: root (needed to turn it on) and a user that may only
    // touch /lrpm/.
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "lrpm-rw"],
        &["role", "grant-permission", "lrpm-rw", "--prefix=true", "readwrite", "/lrpm/"],
        &["user", "add", "lrpm:s3cret"],
        &["user", "grant-role", "lrpm", "lrpm-rw"],
        &["auth", "enable"],
    ] {
        etcdctl(etcd.port, &certs, args);
    }
    let url = format!("etcds://127.0.0.1:{}/secure", etcd.port);
    let password = dir.join("password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let wrong = dir.join("wrong-password");
    std::fs::write(&wrong, "guess\n").unwrap();
    let path = |p: &PathBuf| p.to_string_lossy().into_owned();
    let flags = |ca: &PathBuf, cert: bool, password: &PathBuf| {
        let mut args = vec!["--cluster-ca".to_string(), path(ca)];
        if cert {
            args.extend([
                "--cluster-cert".into(),
                path(&certs.client_cert),
                "--cluster-key".into(),
                path(&certs.client_key),
            ]);
        }
        args.extend(["--cluster-user".into(), "lrpm".into(), "--cluster-password-file".into(), path(password)]);
        args
    };

    // Everything right: the member holds a lease and runs the unit.
    let good = member("good", &url, &flags(&certs.ca, true, &password));
    good.wait_for(secs(30.0), "the unit on the member with TLS and a password", || {
        (running(&good, "1") == 1 && view(&good)["lease"]["held"] == true).then_some(())
    });

    // Each one thing wrong: no lease, the reason in `cluster`, the every-host
    // job and the control socket as ever, and the unit stays with `good`.
    let cases = [
        ("nocert", flags(&certs.ca, false, &password)),
        ("badpassword", flags(&certs.ca, true, &wrong)),
        ("otherca", flags(&certs.other_ca, true, &password)),
    ];
    for (name, args) in cases {
        let farm = member(name, &url, &args);
        let reason = farm.wait_for(secs(30.0), &format!("{name} to report why it has no lease"), || {
            let v = view(&farm);
            let reason = v["lease"]["reason"].as_str()?.to_string();
            (v["lease"]["held"] == false && reason != "not granted yet" && running(&farm, "2") == 1).then_some(reason)
        });
        let expected = match name {
            "badpassword" => "authentication failed",
            "otherca" => "UnknownIssuer",
            _ => "no etcd endpoint answered",
        };
        assert!(reason.contains(expected), "{name}: {reason}");
        eprintln!("{name}: {reason}");
        assert_eq!(running(&farm, "1"), 0, "{name} runs a unit without a lease");
        assert_eq!(running(&good, "1"), 1, "the unit left good while {name} tried");
        let ready = farm.request("metrics").unwrap();
        assert!(ready.lines().any(|l| l == "lrpm_cluster_lease 0"), "{name}: {ready}");
        farm.signal(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(farm.wait_exit(secs(30.0)).code(), Some(0), "{}", farm.diagnostics());
    }
    good.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(good.wait_exit(secs(30.0)).code(), Some(0), "{}", good.diagnostics());
}

#[test]
fn cluster_options_that_cannot_work_are_refused_at_startup() {
    let dir = TempDir::new("cluster_secure_usage");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let garbage = garbage.to_string_lossy().into_owned();
    // (arguments, environment, what the refusal says)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["--cluster", "etcd://127.0.0.1:1/f", "--cluster-ca", &garbage], vec![], "use etcds://"),
        (vec!["--cluster", "etcds://127.0.0.1:1/f", "--cluster-ca", &garbage], vec![], "no certificate"),
        (vec!["--cluster", "etcds://127.0.0.1:1/f", "--cluster-cert", &garbage], vec![], "needs --cluster-key"),
        (vec!["--cluster", "etcd://127.0.0.1:1/f", "--cluster-user", "u"], vec![], "no password"),
        (
            vec!["--cluster", "etcd://127.0.0.1:1/f", "--cluster-user", "u", "--cluster-password-file", "/nonexistent"],
            vec![],
            "--cluster-password-file /nonexistent",
        ),
        (
            vec!["--cluster", "etcd://127.0.0.1:1/f", "--cluster-password-file", &garbage],
            vec![],
            "needs --cluster-user",
        ),
        (vec!["--cluster", "etcd://127.0.0.1:1/f"], vec![("LRPM_CLUSTER_CA", garbage.as_str())], "use etcds://"),
    ];
    for (args, env, needle) in cases {
        let mut cmd = lrpm_host(args.iter().chain(&["farm.php"]));
        cmd.env_remove("LRPM_CLUSTER_PASSWORD");
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let out = run_with_timeout(cmd, DEFAULT_TIMEOUT);
        out.assert_code(64).assert_stderr_contains(needle);
    }
}
