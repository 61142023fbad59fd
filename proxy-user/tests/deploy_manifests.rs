//! The Kubernetes manifests in `deploy/kubernetes/`: schema-valid (kubernetes-validate, offline), consistent with
//! each other and with the config they carry, and that config passes `rasp-proxy check`.

#![expect(clippy::unwrap_used, reason = "test helpers: a failure here is a failed test")]

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use proxy_user::config::Config;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_rasp-proxy");
/// Oldest Kubernetes release the manifests are meant for; they are also checked against the newest schema
/// kubernetes-validate ships.
const OLDEST_KUBERNETES: &str = "1.29.0";
/// The capabilities the data plane needs, in one place for the `DaemonSet` and the systemd unit.
const CAPABILITIES: [&str; 3] = ["BPF", "NET_ADMIN", "PERFMON"];
const PIP_HINT: &str = "pip install kubernetes-validate";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn manifests() -> Vec<PathBuf> {
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 6,
        "expected the six manifests in {}",
        dir.display()
    );
    files
}

/// Runs a Python snippet with the files as arguments and parses its stdout as JSON. A missing module fails with
/// the pip command that installs it (`PyYAML` comes with kubernetes-validate).
fn python_json(script: &str, files: &[PathBuf]) -> Value {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("python3 is needed for the manifest tests ({e}); then `{PIP_HINT}`"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "a Python module is missing; run `{PIP_HINT}`:\n{stderr}"
    );
    assert!(out.status.success(), "python3 failed:\n{stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "python3 printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Every document of every manifest, in file order.
fn documents() -> Vec<Value> {
    let script = "import json, sys, yaml\n\
                  docs = []\n\
                  for f in sys.argv[1:]:\n    \
                      with open(f) as fh:\n        \
                          docs += [d for d in yaml.safe_load_all(fh) if d is not None]\n\
                  print(json.dumps(docs))";
    match python_json(script, &manifests()) {
        Value::Array(docs) => docs,
        other => panic!("expected a list of documents, got {other}"),
    }
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let mut of_kind = docs.iter().filter(|d| d["kind"] == kind);
    let doc = of_kind
        .next()
        .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes"));
    assert!(of_kind.next().is_none(), "more than one {kind}");
    doc
}

fn ptr<'a>(doc: &'a Value, pointer: &str) -> &'a Value {
    doc.pointer(pointer)
        .unwrap_or_else(|| panic!("{} has no {pointer}", doc["kind"]))
}

fn str_at<'a>(doc: &'a Value, pointer: &str) -> &'a str {
    ptr(doc, pointer)
        .as_str()
        .unwrap_or_else(|| panic!("{} {pointer} is not a string", doc["kind"]))
}

#[test]
fn every_manifest_passes_kubernetes_schema_validation() {
    // Strict: unknown fields are errors. A kind without a bundled schema is an error too, except the Prometheus
    // Operator's ServiceMonitor (a CRD; its wiring is checked in `metrics_service_and_monitor_select_the_daemon`).
    let script = format!(
        "import json, sys, yaml\n\
         import kubernetes_validate as kv\n\
         from kubernetes_validate import utils\n\
         report = []\n\
         for f in sys.argv[1:]:\n    \
             with open(f) as fh:\n        \
                 docs = [d for d in yaml.safe_load_all(fh) if d is not None]\n    \
             for d in docs:\n        \
                 for version in ['{OLDEST_KUBERNETES}', utils.latest_version()]:\n            \
                     entry = {{'file': f, 'kind': d.get('kind'), 'version': version}}\n            \
                     try:\n                \
                         kv.validate(d, version, strict=True)\n                \
                         entry['result'] = 'ok'\n            \
                     except utils.SchemaNotFoundError as e:\n                \
                         entry['result'] = 'no schema: ' + str(e)\n            \
                     except utils.ValidationError as e:\n                \
                         entry['result'] = 'invalid: ' + str(e.message) + ' at ' + '.'.join(map(str, e.path))\n            \
                     report.append(entry)\n\
         print(json.dumps(report))"
    );
    let report = python_json(&script, &manifests());
    let entries = report.as_array().expect("a list");
    let mut kinds = BTreeSet::new();
    let mut failures = Vec::new();
    for e in entries {
        let kind = e["kind"].as_str().unwrap_or("?");
        kinds.insert(kind.to_owned());
        let result = e["result"].as_str().unwrap_or("?");
        let tolerated = kind == "ServiceMonitor" && result.starts_with("no schema");
        if result != "ok" && !tolerated {
            failures.push(format!(
                "{} {kind} (Kubernetes {}): {result}",
                e["file"], e["version"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "manifests failed validation:\n{}",
        failures.join("\n")
    );
    let expected: BTreeSet<String> = [
        "ConfigMap",
        "DaemonSet",
        "Namespace",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(kinds, expected);
}

#[test]
fn configmap_carries_the_example_config_and_it_passes_check() {
    let docs = documents();
    let config = str_at(find(&docs, "ConfigMap"), "/data/config.toml");
    let example_path = repo().join("deploy/config.toml");
    let example = std::fs::read_to_string(&example_path).unwrap();
    assert_eq!(
        config, example,
        "the ConfigMap's config.toml must be deploy/config.toml verbatim (one example config, not two)"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rasp-proxy check refused the ConfigMap's config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{}: ok", path.display())
    );
}

#[test]
fn daemonset_runs_with_the_data_plane_capabilities_and_not_privileged() {
    let docs = documents();
    let ds = find(&docs, "DaemonSet");
    let pod = ptr(ds, "/spec/template/spec");
    assert_eq!(pod["hostNetwork"], true, "the proxy fronts the host's services");
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod[k].as_array().into_iter().flatten())
        .collect();
    assert_eq!(containers.len(), 2, "the xdp-attach init container and the proxy");
    for c in &containers {
        let name = c["name"].as_str().unwrap_or("?");
        let sc = &c["securityContext"];
        assert_ne!(sc["privileged"], true, "{name} must not be privileged");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]), "{name}");
        let added: BTreeSet<&str> = sc["capabilities"]["add"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} adds no capabilities"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(added, BTreeSet::from(CAPABILITIES), "{name}");
        let bpffs = c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["mountPath"] == "/sys/fs/bpf")
            .unwrap_or_else(|| panic!("{name} does not mount /sys/fs/bpf"));
        let volume = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == bpffs["name"])
            .unwrap_or_else(|| panic!("no volume {}", bpffs["name"]));
        assert_eq!(
            volume["hostPath"]["path"], "/sys/fs/bpf",
            "the pins must live in the host's bpffs to outlive the pod"
        );
        let limits = &c["resources"]["limits"];
        let requests = &c["resources"]["requests"];
        assert!(
            limits["memory"].is_string() && requests["cpu"].is_string() && requests["memory"].is_string(),
            "{name} needs resource requests and limits"
        );
    }
    let init = &pod["initContainers"][0];
    let args: Vec<&str> = init["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(&args[..2], ["xdp", "attach"], "the init container attaches XDP");
    // The init container's arguments must parse: ask clap, with the env references filled in.
    let filled: Vec<String> = args
        .iter()
        .map(|a| match *a {
            "$(RASP_XDP_IFACE)" => "eth0".to_owned(),
            "$(RASP_XDP_MODE)" => "native".to_owned(),
            other => other.to_owned(),
        })
        .collect();
    let out = Command::new(BIN).args(&filled).arg("--help").output().unwrap();
    assert!(
        out.status.success(),
        "`rasp-proxy {}` does not parse: {}",
        filled.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    let update = ptr(ds, "/spec/updateStrategy");
    assert_eq!(update["type"], "RollingUpdate");
    assert_eq!(
        update["rollingUpdate"]["maxSurge"], 0,
        "two pods on one node would both bind the host's ports"
    );
}

#[test]
fn daemonset_probes_grace_and_config_agree() {
    let docs = documents();
    let config_text = str_at(find(&docs, "ConfigMap"), "/data/config.toml");
    let config =
        Config::parse(config_text, Path::new("/etc/rasp-proxy")).expect("the ConfigMap's config parses");
    let ds = find(&docs, "DaemonSet");
    let pod = ptr(ds, "/spec/template/spec");
    let proxy = &pod["containers"][0];
    let port_of = |name: &str| -> u16 {
        let port = proxy["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("the proxy container has no port named {name}"));
        u16::try_from(port["containerPort"].as_u64().unwrap()).unwrap()
    };
    assert_eq!(
        port_of("metrics"),
        config.admin.listen.port(),
        "the metrics port must be the config's admin port"
    );
    assert!(
        !config.admin.listen.ip().is_loopback(),
        "with the admin listener on loopback, neither the kubelet nor Prometheus can reach it"
    );
    assert_eq!(port_of("http"), config.listeners[0].listen.port());
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(proxy[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(proxy[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    let config_mount = proxy["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == "config")
        .expect("the config volume is mounted");
    let args: Vec<&str> = proxy["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let config_file = format!("{}/config.toml", config_mount["mountPath"].as_str().unwrap());
    assert_eq!(args, ["run", "--config", config_file.as_str()]);
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("a termination grace period");
    assert!(
        std::time::Duration::from_secs(grace) > config.timeouts.shutdown_grace,
        "terminationGracePeriodSeconds ({grace}s) must exceed the drain ({:?}) or the kubelet kills mid-drain",
        config.timeouts.shutdown_grace
    );
    assert_eq!(
        pod["serviceAccountName"],
        find(&docs, "ServiceAccount")["metadata"]["name"]
    );
}

#[test]
fn metrics_service_and_monitor_select_the_daemon() {
    let docs = documents();
    let pod_labels = &find(&docs, "DaemonSet")["spec"]["template"]["metadata"]["labels"];
    let service = find(&docs, "Service");
    let selects = |selector: &Value, labels: &Value| {
        selector
            .as_object()
            .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| &labels[k] == v))
    };
    assert!(
        selects(&service["spec"]["selector"], pod_labels),
        "the Service does not select the DaemonSet's pods"
    );
    let service_port = service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "metrics")
        .expect("the Service has a port named metrics");
    assert_eq!(service_port["targetPort"], "metrics");
    let monitor = find(&docs, "ServiceMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert!(
        selects(
            &monitor["spec"]["selector"]["matchLabels"],
            &service["metadata"]["labels"]
        ),
        "the ServiceMonitor does not select the Service"
    );
    let namespace = &find(&docs, "Namespace")["metadata"]["name"];
    assert!(
        monitor["spec"]["namespaceSelector"]["matchNames"]
            .as_array()
            .is_some_and(|n| n.contains(namespace))
    );
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(endpoint["path"], "/metrics");
    for doc in &docs {
        if doc["kind"] != "Namespace" {
            assert_eq!(
                &doc["metadata"]["namespace"], namespace,
                "{} is outside the namespace",
                doc["kind"]
            );
        }
    }
}

#[test]
fn systemd_unit_has_the_same_capabilities_as_the_daemonset() {
    let unit_path = repo().join("deploy/systemd/rasp-proxy.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    let expected: BTreeSet<String> = CAPABILITIES.iter().map(|c| format!("CAP_{c}")).collect();
    for key in ["AmbientCapabilities=", "CapabilityBoundingSet="] {
        let line = unit
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("{} has no {key}", unit_path.display()));
        let caps: BTreeSet<String> = line[key.len()..].split_whitespace().map(String::from).collect();
        assert_eq!(caps, expected, "{key}");
    }
}

/// The init container filters the node before the daemon is up, and the daemon then attaches its config's
/// `[xdp] interfaces` itself: both must name the same interface, mode and pin directory, or the node ends up
/// with two attachments (or a daemon attaching an interface the manifest never meant).
#[test]
fn init_container_attaches_what_the_config_attaches() {
    let docs = documents();
    let config_text = str_at(find(&docs, "ConfigMap"), "/data/config.toml");
    let config =
        Config::parse(config_text, Path::new("/etc/rasp-proxy")).expect("the ConfigMap's config parses");
    let pod = ptr(find(&docs, "DaemonSet"), "/spec/template/spec");
    let init = pod["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "xdp-attach")
        .expect("an xdp-attach init container");
    let env = |name: &str| -> String {
        init["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("the init container sets no {name}"))
            .to_owned()
    };
    assert_eq!(config.xdp.interfaces, [env("RASP_XDP_IFACE")], "[xdp] interfaces");
    assert_eq!(config.xdp.mode.as_str(), env("RASP_XDP_MODE"), "[xdp] mode");
    assert_eq!(
        config.xdp.pin_dir,
        Path::new(&env("RASP_PIN_DIR")),
        "[xdp] pin_dir"
    );
}
