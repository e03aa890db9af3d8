//! The deployment examples are what the docs say they are: every YAML file
//! under `examples/kubernetes/` parses, each document is a Kubernetes
//! object, every lrpm-host container's arguments are ones lrpm-host
//! accepts, and the clustered farm's pieces fit together (its etcd URL
//! names the etcd Service, the member name comes from the pod, the probes
//! reach `--metrics-listen`, the grace period covers the jobs' stop). The
//! systemd units' ExecStart lines parse as lrpm-host command lines too.

use std::path::{Path, PathBuf};

use clap::Parser;
use lrpm_host::cli::Cli;
use lrpm_host::cluster::ClusterUrl;
use serde_json::Value;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// Every document of every YAML file under examples/kubernetes, by file.
fn manifests() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut dirs = vec![examples().join("kubernetes")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for document in serde_yaml_ng::Deserializer::from_str(&text) {
                let value = <Value as serde::Deserialize>::deserialize(document)
                    .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", path.display()));
                out.push((path.file_name().unwrap().to_string_lossy().into_owned(), value));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn find<'a>(all: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    all.iter()
        .map(|(_, v)| v)
        .find(|v| v["kind"] == kind && v["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in examples/kubernetes"))
}

/// `$(VAR)` replaced as the kubelet does, from the container's env (a
/// fieldRef gets a stand-in value).
fn expand(arg: &str, env: &[Value]) -> String {
    let mut out = arg.to_string();
    for var in env {
        let name = var["name"].as_str().unwrap();
        let value = var["value"].as_str().map_or_else(|| format!("pod-{}", name.to_lowercase()), str::to_string);
        out = out.replace(&format!("$({name})"), &value);
    }
    out
}

#[test]
fn every_manifest_is_a_kubernetes_object_and_every_lrpm_host_command_line_parses() {
    let all = manifests();
    assert!(all.len() >= 5, "the examples: {:?}", all.iter().map(|(f, v)| (f, &v["kind"])).collect::<Vec<_>>());
    let mut farms = 0;
    for (file, doc) in &all {
        for key in ["apiVersion", "kind"] {
            assert!(doc[key].is_string(), "{file}: a document without {key}: {doc}");
        }
        assert!(doc["metadata"]["name"].is_string(), "{file}: a {} without a name", doc["kind"]);
        let containers = doc["spec"]["template"]["spec"]["containers"].as_array().cloned().unwrap_or_default();
        for container in containers.iter().filter(|c| c["image"].as_str().is_some_and(|i| i.starts_with("lrpm-host"))) {
            farms += 1;
            let env = container["env"].as_array().cloned().unwrap_or_default();
            let mut argv = vec!["lrpm-host".to_string()];
            for arg in container["args"].as_array().unwrap() {
                argv.push(expand(arg.as_str().unwrap(), &env));
            }
            // The image sets LRPM_CLUSTER through env: give it to clap too.
            if let Some(url) = env.iter().find(|v| v["name"] == "LRPM_CLUSTER") {
                argv.insert(1, format!("--cluster={}", url["value"].as_str().unwrap()));
            }
            Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{file}: lrpm-host refuses {argv:?}: {e}"));
        }
    }
    assert!(farms >= 2, "a single-host and a clustered farm");
}

#[test]
fn the_clustered_farm_fits_its_etcd_and_drains_within_its_grace_period() {
    let all = manifests();
    let farm = find(&all, "Deployment", "lrpm-cluster");
    let pod = &farm["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let env = container["env"].as_array().unwrap();
    let value = |name: &str| env.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no env {name}"));

    // The etcd URL names the client Service of the StatefulSet's namespace.
    let url = ClusterUrl::parse(value("LRPM_CLUSTER")["value"].as_str().unwrap()).unwrap();
    let etcd = find(&all, "Service", "etcd");
    let namespace = etcd["metadata"]["namespace"].as_str().unwrap();
    let port = etcd["spec"]["ports"][0]["port"].as_u64().unwrap();
    assert_eq!(farm["metadata"]["namespace"], namespace);
    assert!(
        url.endpoints.iter().all(|e| e == &format!("etcd.{namespace}.svc:{port}")),
        "{:?} is not the etcd Service",
        url.endpoints
    );

    // Each pod is a member named after itself.
    assert_eq!(value("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let after = |flag: &str| args.iter().position(|a| *a == flag).map(|i| args[i + 1]);
    assert_eq!(after("--cluster-member"), Some("$(POD_NAME)"));

    // The probes reach the metrics listener; readiness is /readyz.
    let listen = after("--metrics-listen").expect("--metrics-listen");
    let listen_port: u64 = listen.rsplit_once(':').unwrap().1.parse().unwrap();
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"].as_u64(), Some(listen_port));
    assert_eq!(container["livenessProbe"]["httpGet"]["port"].as_u64(), Some(listen_port));

    // SIGTERM drains: no preStop hook, and a grace period above the jobs'
    // default shutdown timeout.
    assert!(container["lifecycle"]["preStop"].is_null(), "a drain needs no preStop hook");
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let default_stop = lrpm_host::job::DEFAULT_SHUTDOWN_TIMEOUT_SECONDS;
    assert!(grace > default_stop, "terminationGracePeriodSeconds {grace} <= {default_stop}");

    // etcd: three members that name each other through the peer Service.
    let set = find(&all, "StatefulSet", "etcd");
    assert_eq!(set["spec"]["replicas"], 3);
    let peers = set["spec"]["serviceName"].as_str().unwrap();
    assert!(find(&all, "Service", peers)["spec"]["clusterIP"] == "None", "the peer Service is headless");
    let command: Vec<&str> = set["spec"]["template"]["spec"]["containers"][0]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let initial = command.iter().find_map(|a| a.strip_prefix("--initial-cluster=")).expect("--initial-cluster");
    let names: Vec<&str> = initial.split(',').map(|m| m.split_once('=').unwrap().0).collect();
    assert_eq!(names, ["etcd-0", "etcd-1", "etcd-2"]);
    assert!(initial.split(',').all(|m| m.contains(&format!(".{peers}.{namespace}.svc:2380"))), "{initial}");
}

#[test]
fn the_systemd_units_start_lrpm_host_with_arguments_it_accepts() {
    let dir = examples().join("systemd");
    let mut units = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{}: no ExecStart", path.display()));
        let mut argv: Vec<String> = exec.split_whitespace().map(|w| w.replace("%H", "host")).collect();
        for line in text.lines().filter_map(|l| l.strip_prefix("Environment=LRPM_CLUSTER=")) {
            ClusterUrl::parse(line).unwrap_or_else(|e| panic!("{}: {line}: {e}", path.display()));
            argv.insert(1, format!("--cluster={line}"));
        }
        Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{}: lrpm-host refuses {argv:?}: {e}", path.display()));
        units += 1;
    }
    assert!(units >= 2, "the single-host and the cluster member unit");
}
