//! The deployment files agree with the code: every `CHORUS_*` variable and `--flag` they pass
//! is parsed by the binary's own command-line definition (values included), ports and health
//! paths are the ones the services answer on, the load balancer's upstream is the gateway
//! service, grace periods cover the gateway's drain, and the dashboard and alerts use only
//! metrics the code exports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chorus_runtime::units::parse_duration;
use clap::{Arg, ArgAction, Command, CommandFactory};
use serde::Deserialize as _;
use serde_norway::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

fn yaml(rel: &str) -> Value {
    serde_norway::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"))
}

fn yaml_docs(rel: &str) -> Vec<Value> {
    let text = read(rel);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .collect()
}

/// `KEY=VALUE` lines of an env file (compose's format: no quoting, `#` comments).
fn env_file(rel: &str) -> Vec<(String, String)> {
    read(rel)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{rel}: not KEY=VALUE: {l}"));
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect()
}

fn s<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v:?}"))
}

/// A binary's command line, from its own clap definition.
struct Binary {
    name: &'static str,
    cmd: Command,
}

impl Binary {
    fn gateway() -> Self {
        Self {
            name: "chorus-gateway",
            cmd: chorus_gateway::Cli::command(),
        }
    }

    fn broker_api() -> Self {
        Self {
            name: "chorus-broker-api",
            cmd: chorus_broker_api::Cli::command(),
        }
    }

    fn by_env(&self, var: &str) -> Option<&Arg> {
        self.cmd
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == var))
    }

    fn by_flag(&self, flag: &str) -> Option<&Arg> {
        let long = flag.strip_prefix("--")?;
        let long = long.split_once('=').map_or(long, |(l, _)| l);
        self.cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long))
    }

    fn default_of(&self, var: &str) -> String {
        let arg = self
            .by_env(var)
            .unwrap_or_else(|| panic!("{} has no {var}", self.name));
        arg.get_default_values()
            .first()
            .and_then(|v| v.to_str())
            .unwrap_or_else(|| panic!("{var} has no default"))
            .to_owned()
    }

    /// Parses `env` (as the flags they stand for) and `flags` with the binary's own parser:
    /// unknown variables or flags and bad values fail, naming `origin`. Variables of `shared`
    /// (a settings file every service gets) that this binary does not know are left to the
    /// other binary; the ones it knows are parsed like the rest.
    fn check(
        &self,
        origin: &str,
        env: &[(String, String)],
        shared: &[(String, String)],
        flags: &[String],
    ) {
        let mut argv = vec![self.name.to_owned()];
        let own: BTreeSet<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        let shared = shared
            .iter()
            .filter(|(k, _)| !own.contains(k.as_str()) && self.by_env(k).is_some());
        for (var, value) in env.iter().chain(shared) {
            if !var.starts_with("CHORUS_") {
                assert!(
                    ["RUST_LOG", "POD_NAME", "POD_IP"].contains(&var.as_str()),
                    "{origin}: {var} is neither a CHORUS_ setting nor a known helper variable"
                );
                continue;
            }
            let arg = self
                .by_env(var)
                .unwrap_or_else(|| panic!("{origin}: {} does not accept {var}", self.name));
            let long = arg.get_long().expect("every setting has a flag");
            if matches!(arg.get_action(), ArgAction::SetTrue) {
                if ["1", "true", "yes", "on"].contains(&value.to_ascii_lowercase().as_str()) {
                    argv.push(format!("--{long}"));
                }
            } else {
                argv.push(format!("--{long}={value}"));
            }
        }
        for flag in flags {
            assert!(
                self.by_flag(flag).is_some(),
                "{origin}: {} has no flag {flag}",
                self.name
            );
            argv.push(flag.clone());
        }
        if let Err(e) = self.cmd.clone().try_get_matches_from(&argv) {
            panic!("{origin}: {} refuses {argv:?}: {e}", self.name);
        }
    }
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

/// A compose service's `environment` (map or list form).
fn compose_env(service: &Value) -> Vec<(String, String)> {
    match &service["environment"] {
        Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    other => panic!("environment value {other:?}"),
                };
                (s(k, "environment key").to_owned(), v)
            })
            .collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|i| {
                let (k, v) = s(i, "environment entry")
                    .split_once('=')
                    .expect("KEY=VALUE");
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        Value::Null => Vec::new(),
        other => panic!("environment {other:?}"),
    }
}

/// Env-file settings overridden by a service's own environment, as compose applies them.
fn merged(file: &[(String, String)], own: &[(String, String)]) -> Vec<(String, String)> {
    let mut all: BTreeMap<String, String> = file.iter().cloned().collect();
    all.extend(own.iter().cloned());
    all.into_iter().collect()
}

fn get<'a>(env: &'a [(String, String)], var: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == var).map(|(_, v)| v.as_str())
}

/// The `--flags` of a compose `command` or a container's `args`.
fn flags_of(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|seq| {
            seq.iter()
                .filter_map(Value::as_str)
                .filter(|a| a.starts_with("--"))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The gateway's drain window: `CHORUS_DRAIN_WINDOW` from the env file when it sets it, else
/// the flag's default (`--drain-window`).
fn drain_window() -> Duration {
    if let Some((_, v)) = env_file("deploy/chorus.env")
        .into_iter()
        .find(|(k, _)| k == "CHORUS_DRAIN_WINDOW")
    {
        return parse_duration(&v).expect("CHORUS_DRAIN_WINDOW parses");
    }
    let gw = Binary::gateway();
    gw.cmd
        .get_arguments()
        .find(|a| a.get_long() == Some("drain-window"))
        .and_then(|a| a.get_default_values().first()?.to_str().map(str::to_owned))
        .and_then(|d| parse_duration(&d).ok())
        .expect("the gateway has --drain-window with a default")
}

/// What a gateway's shutdown may take after SIGTERM besides the drain window: the close
/// grace for sessions (10 s) and leaving the registry (2 × Redis timeout), with a margin.
const SHUTDOWN_BEYOND_DRAIN: Duration = Duration::from_secs(15);

#[test]
fn compose_passes_only_settings_the_binaries_accept() {
    let compose = yaml("docker-compose.yml");
    let services = &compose["services"];
    let file = env_file("deploy/chorus.env");
    for (service, binary, target) in [
        ("gateway", Binary::gateway(), "gateway"),
        ("broker-api", Binary::broker_api(), "broker-api"),
    ] {
        let svc = &services[service];
        assert!(svc.is_mapping(), "compose has a {service} service");
        assert_eq!(s(&svc["build"]["target"], "build target"), target);
        assert_eq!(
            s(&svc["build"]["dockerfile"], "dockerfile"),
            "deploy/Dockerfile"
        );
        assert_eq!(s(&svc["env_file"], "env_file"), "deploy/chorus.env");
        binary.check(
            &format!("docker-compose.yml {service}"),
            &compose_env(svc),
            &file,
            &flags_of(&svc["command"]),
        );
    }
    // Every variable in the env file is one of the binaries' (it goes to both).
    let (gw, api) = (Binary::gateway(), Binary::broker_api());
    for (var, _) in &file {
        assert!(
            var == "RUST_LOG" || gw.by_env(var).is_some() || api.by_env(var).is_some(),
            "deploy/chorus.env: {var} is accepted by neither binary"
        );
    }
}

#[test]
fn compose_ports_health_and_load_balancer_agree_with_the_code() {
    let compose = yaml("docker-compose.yml");
    let services = &compose["services"];
    let file = env_file("deploy/chorus.env");

    let gw_env = merged(&file, &compose_env(&services["gateway"]));
    let gw_port = port_of(get(&gw_env, "CHORUS_GATEWAY_LISTEN").expect("gateway listen set"));
    let gw_metrics_port =
        port_of(get(&gw_env, "CHORUS_METRICS_LISTEN").expect("gateway metrics listen set"));
    assert!(
        get(&gw_env, "CHORUS_METRICS_LISTEN").is_some_and(|a| a.starts_with("0.0.0.0:")),
        "Prometheus reaches the gateways' metrics over the compose network"
    );
    let gateway = &services["gateway"];
    assert!(
        gateway["ports"].is_null(),
        "gateways publish no host port, so `--scale gateway=N` works"
    );
    let expose: Vec<String> = gateway["expose"]
        .as_sequence()
        .expect("gateway exposes its port")
        .iter()
        .map(|p| s(p, "expose").to_owned())
        .collect();
    assert_eq!(expose, [gw_port.to_string(), gw_metrics_port.to_string()]);
    let grace = parse_duration(s(&gateway["stop_grace_period"], "stop_grace_period")).unwrap();
    assert!(
        grace >= Duration::from_secs(30),
        "gateway stop grace {grace:?}"
    );
    assert!(
        grace >= drain_window() + SHUTDOWN_BEYOND_DRAIN,
        "gateway stop grace {grace:?} must cover the drain window {:?}",
        drain_window()
    );

    let api_env = merged(&file, &compose_env(&services["broker-api"]));
    let api_port = port_of(get(&api_env, "CHORUS_API_LISTEN").expect("api listen set"));
    let published: Vec<&str> = services["broker-api"]["ports"]
        .as_sequence()
        .expect("broker-api publishes its port")
        .iter()
        .map(|p| s(p, "port"))
        .collect();
    assert_eq!(published.len(), 1);
    assert!(
        published[0].ends_with(&format!(":{api_port}")),
        "{published:?}"
    );

    // Redis: official image, health-checked, AOF on; the services reach it by name.
    let redis = &services["redis"];
    assert!(s(&redis["image"], "redis image").starts_with("redis:"));
    assert!(redis["healthcheck"]["test"].is_sequence());
    let redis_cmd: Vec<&str> = redis["command"]
        .as_sequence()
        .expect("redis command")
        .iter()
        .map(|a| s(a, "arg"))
        .collect();
    assert!(redis_cmd.windows(2).any(|w| w == ["--appendonly", "yes"]));
    for env in [&gw_env, &api_env] {
        assert_eq!(
            get(env, "CHORUS_REDIS_URL"),
            Some("${CHORUS_REDIS_URL:-redis://redis:6379}")
        );
    }
    // The sharded profile: two more Redis servers like the first, in the profile only.
    for name in ["redis-2", "redis-3"] {
        let shard = &services[name];
        assert_eq!(
            format!("{:?}", shard["profiles"]),
            format!("{:?}", yaml_value("[sharded]"))
        );
        assert_eq!(shard["image"], redis["image"]);
        assert_eq!(shard["command"], redis["command"]);
        assert!(shard["healthcheck"]["test"].is_sequence());
    }
    // The cluster profile: six cluster-enabled nodes on fixed addresses of their own network,
    // joined by a one-shot init as three masters with a replica each; both services reach
    // that network.
    let subnet = s(
        &compose["networks"]["redis-cluster"]["ipam"]["config"][0]["subnet"],
        "the cluster network's subnet",
    );
    let prefix = subnet.trim_end_matches("0/24");
    let mut addresses = Vec::new();
    for i in 1..=6 {
        let node = &services[format!("redis-c{i}").as_str()];
        assert_eq!(
            format!("{:?}", node["profiles"]),
            format!("{:?}", yaml_value("[cluster]"))
        );
        assert_eq!(node["image"], redis["image"]);
        let cmd: Vec<&str> = node["command"]
            .as_sequence()
            .expect("a cluster node's command")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            cmd.windows(2).any(|w| w == ["--cluster-enabled", "yes"]),
            "{cmd:?}"
        );
        assert!(
            cmd.windows(2).any(|w| w == ["--appendonly", "yes"]),
            "{cmd:?}"
        );
        let ip = s(
            &node["networks"]["redis-cluster"]["ipv4_address"],
            "a cluster node's address",
        );
        assert!(ip.starts_with(prefix), "{ip} in {subnet}");
        addresses.push(format!("{ip}:6379"));
    }
    let init = &services["redis-cluster-init"];
    let script = format!("{:?}", init["command"]);
    assert!(
        script.contains("--cluster create")
            && script.contains("--cluster-replicas 1")
            && addresses.iter().all(|a| script.contains(a.as_str())),
        "{script}"
    );
    for service in ["gateway", "broker-api"] {
        let networks = format!("{:?}", services[service]["networks"]);
        assert!(
            networks.contains("redis-cluster") && networks.contains("default"),
            "{networks}"
        );
    }

    // The load balancer: nginx, its upstream the gateway service on the gateway's port,
    // re-resolved through Docker's DNS, one published port, the shared template.
    let lb = &services["lb"];
    assert!(s(&lb["image"], "lb image").starts_with("nginx:"));
    let lb_env = compose_env(lb);
    let servers = get(&lb_env, "LB_SERVERS").expect("LB_SERVERS");
    assert_eq!(servers, format!("server gateway:{gw_port} resolve;"));
    assert!(get(&lb_env, "LB_RESOLVER").is_some_and(|r| r.contains("127.0.0.11")));
    let lb_listen: u16 = get(&lb_env, "LB_LISTEN").unwrap().parse().unwrap();
    let lb_ports = lb["ports"].as_sequence().expect("lb publishes a port");
    assert_eq!(lb_ports.len(), 1);
    assert!(s(&lb_ports[0], "lb port").ends_with(&format!(":{lb_listen}")));
    let mounts: Vec<&str> = lb["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| s(v, "volume"))
        .collect();
    assert!(mounts.contains(
        &"./deploy/nginx/chorus.conf.template:/etc/nginx/templates/default.conf.template:ro"
    ));
    let health = format!("{:?}", lb["healthcheck"]["test"]);
    assert!(
        health.contains(&format!("127.0.0.1:{lb_listen}/lb-health")),
        "{health}"
    );

    // Monitoring: a profile, scraping each gateway replica and broker-api where they listen.
    for name in ["prometheus", "grafana"] {
        assert_eq!(
            format!("{:?}", services[name]["profiles"]),
            format!("{:?}", yaml_value("[monitoring]"))
        );
    }
    let prom = yaml("deploy/prometheus/prometheus.yml");
    let jobs = prom["scrape_configs"].as_sequence().unwrap();
    let job = |name: &str| {
        jobs.iter()
            .find(|j| j["job_name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("prometheus job {name}"))
    };
    let gw_job = job("chorus-gateway");
    assert_eq!(s(&gw_job["metrics_path"], "path"), "/metrics");
    assert_eq!(
        s(&gw_job["dns_sd_configs"][0]["names"][0], "dns name"),
        "gateway"
    );
    assert_eq!(
        gw_job["dns_sd_configs"][0]["port"].as_u64(),
        Some(u64::from(gw_metrics_port))
    );
    let api_job = job("chorus-broker-api");
    assert_eq!(s(&api_job["metrics_path"], "path"), "/metrics");
    assert_eq!(
        s(&api_job["static_configs"][0]["targets"][0], "target"),
        format!("broker-api:{api_port}")
    );
}

fn yaml_value(text: &str) -> Value {
    serde_norway::from_str(text).unwrap()
}

#[test]
fn nginx_template_proxies_websockets_to_the_gateways_with_sane_timeouts() {
    let t = read("deploy/nginx/chorus.conf.template");
    for needle in [
        "upstream chorus_gateways {",
        "${LB_SERVERS}",
        "${LB_RESOLVER}",
        "listen ${LB_LISTEN};",
        "proxy_pass http://chorus_gateways;",
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "location = /lb-health",
    ] {
        assert!(t.contains(needle), "the nginx template has {needle}");
    }
    let idle = parse_duration(&Binary::gateway().default_of("CHORUS_IDLE_TIMEOUT")).unwrap();
    for directive in ["proxy_read_timeout", "proxy_send_timeout"] {
        let value = t
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(directive))
            .and_then(|v| v.trim().strip_suffix(';'))
            .unwrap_or_else(|| panic!("{directive} is set"));
        let timeout = parse_duration(value).unwrap();
        assert!(
            timeout > idle * 2,
            "{directive} {timeout:?} must exceed the gateway's idle timeout {idle:?} by a margin"
        );
    }
}

/// The Dockerfile's stages, each with its `ENV`, `EXPOSE`, `ENTRYPOINT` and `HEALTHCHECK`.
#[derive(Default, Debug)]
struct Stage {
    env: Vec<(String, String)>,
    expose: Vec<u16>,
    entrypoint: Vec<String>,
    healthcheck: Vec<String>,
    user: String,
}

fn dockerfile_stages() -> BTreeMap<String, Stage> {
    let text = read("deploy/Dockerfile").replace("\\\n", " ");
    let mut stages = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        let (instr, rest) = line.split_once(' ').unwrap_or((line, ""));
        match instr {
            "FROM" => {
                let name = rest
                    .split_whitespace()
                    .skip_while(|w| !w.eq_ignore_ascii_case("AS"))
                    .nth(1)
                    .unwrap_or("")
                    .to_owned();
                stages.insert(name.clone(), Stage::default());
                current = Some(name);
            }
            _ if current.is_none() => {}
            "ENV" => {
                let (k, v) = rest.split_once('=').expect("ENV K=V");
                stage(&mut stages, &current).env.push((k.into(), v.into()));
            }
            "EXPOSE" => stage(&mut stages, &current)
                .expose
                .push(rest.trim().parse().unwrap()),
            "USER" => stage(&mut stages, &current).user = rest.trim().into(),
            "ENTRYPOINT" => {
                stage(&mut stages, &current).entrypoint = serde_json::from_str(rest).unwrap()
            }
            "HEALTHCHECK" => {
                let cmd = rest.split_once("CMD").expect("HEALTHCHECK CMD").1;
                stage(&mut stages, &current).healthcheck = serde_json::from_str(cmd).unwrap();
            }
            _ => {}
        }
    }
    stages
}

fn stage<'a>(stages: &'a mut BTreeMap<String, Stage>, name: &Option<String>) -> &'a mut Stage {
    stages.get_mut(name.as_deref().unwrap_or("")).unwrap()
}

/// Health paths and ports the deployment files use, checked against running services.
#[derive(Default)]
struct Probes {
    gateway: BTreeSet<String>,
    /// Paths on the gateway's metrics listener.
    gateway_metrics: BTreeSet<String>,
    broker_api: BTreeSet<String>,
}

#[test]
fn dockerfile_images_match_the_binaries() {
    let stages = dockerfile_stages();
    for (target, binary, listen_var, service) in [
        (
            "gateway",
            Binary::gateway(),
            "CHORUS_GATEWAY_LISTEN",
            "gateway",
        ),
        (
            "broker-api",
            Binary::broker_api(),
            "CHORUS_API_LISTEN",
            "broker-api",
        ),
    ] {
        let st = stages
            .get(target)
            .unwrap_or_else(|| panic!("stage {target}"));
        binary.check(&format!("deploy/Dockerfile {target}"), &st.env, &[], &[]);
        let listen = get(&st.env, listen_var).expect("the image sets its listen address");
        assert_eq!(
            listen,
            binary.default_of(listen_var),
            "image and binary agree"
        );
        assert_eq!(st.expose, [port_of(listen)]);
        assert_eq!(st.entrypoint, [format!("/usr/local/bin/{}", binary.name)]);
        assert_eq!(
            st.user, "65532:65532",
            "the distroless nonroot user, numerically"
        );
        assert_eq!(st.healthcheck[0], "/usr/local/bin/chorus-probe");
        assert_eq!(st.healthcheck[1], service);
        assert!(chorus_probe::Service::parse(&st.healthcheck[1]).is_some());
        assert_eq!(st.healthcheck[2], "/healthz");
    }
    // The probe falls back to the binaries' own default listen addresses.
    assert_eq!(
        chorus_probe::GATEWAY_DEFAULT_LISTEN,
        Binary::gateway().default_of("CHORUS_GATEWAY_LISTEN")
    );
    assert_eq!(
        chorus_probe::API_DEFAULT_LISTEN,
        Binary::broker_api().default_of("CHORUS_API_LISTEN")
    );
}

fn k8s_docs() -> Vec<Value> {
    let kustomization = yaml("deploy/k8s/kustomization.yaml");
    kustomization["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .flat_map(|r| yaml_docs(&format!("deploy/k8s/{}", s(r, "resource"))))
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("deploy/k8s has {kind} {name}"))
}

#[test]
fn kubernetes_manifests_agree_with_the_binaries() {
    let docs = k8s_docs();
    let kustomization = yaml("deploy/k8s/kustomization.yaml");
    let config = env_file("deploy/k8s/chorus.env");
    let generated = &kustomization["configMapGenerator"][0];
    assert_eq!(s(&generated["name"], "configmap"), "chorus-config");
    assert_eq!(s(&generated["envs"][0], "envs"), "chorus.env");
    let secret: Vec<(String, String)> = kustomization["secretGenerator"][0]["literals"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|l| {
            let (k, v) = s(l, "literal").split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    // The Kubernetes settings are compose's; the API keys moved to the Secret, the Pusher app
    // to an optional Secret of its own.
    let (pusher, compose_settings): (Vec<_>, Vec<_>) = env_file("deploy/chorus.env")
        .into_iter()
        .filter(|(k, _)| k != "CHORUS_API_KEYS")
        .partition(|(k, _)| k.starts_with("CHORUS_PUSHER_"));
    assert_eq!(pusher.len(), 3, "compose's example Pusher app");
    assert_eq!(
        config, compose_settings,
        "deploy/k8s/chorus.env follows deploy/chorus.env"
    );

    let mut probes = Probes::default();
    for (name, binary, listen_var) in [
        ("gateway", Binary::gateway(), "CHORUS_GATEWAY_LISTEN"),
        ("broker-api", Binary::broker_api(), "CHORUS_API_LISTEN"),
    ] {
        let deployment = find(&docs, "Deployment", name);
        let pod = &deployment["spec"]["template"];
        let container = &pod["spec"]["containers"][0];
        assert_eq!(s(&container["image"], "image"), format!("chorus/{name}"));
        let (mut env, mut shared) = (Vec::new(), Vec::new());
        for source in container["envFrom"].as_sequence().unwrap() {
            if source["configMapRef"]["name"].as_str() == Some("chorus-config") {
                shared.extend(config.iter().cloned());
            } else if source["secretRef"]["name"].as_str() == Some("chorus-api-keys") {
                env.extend(secret.iter().cloned());
            } else if source["secretRef"]["name"].as_str() == Some("chorus-pusher") {
                // Optional: the binaries accept what an operator puts there (compose's names).
                assert_eq!(source["secretRef"]["optional"].as_bool(), Some(true));
                env.extend(pusher.iter().cloned());
            } else {
                panic!("{name}: unknown envFrom {source:?}");
            }
        }
        for e in container["env"].as_sequence().unwrap() {
            let value = e["value"]
                .as_str()
                .unwrap_or("")
                .replace("$(POD_NAME)", "gateway-abc")
                .replace("$(POD_IP)", "10.0.0.7");
            env.push((s(&e["name"], "env name").to_owned(), value));
        }
        binary.check(
            &format!("deploy/k8s {name}"),
            &env,
            &shared,
            &flags_of(&container["args"]),
        );
        let port = port_of(get(&env, listen_var).expect("listen set"));
        let ports = container["ports"].as_sequence().unwrap();
        assert_eq!(ports[0]["containerPort"].as_u64(), Some(u64::from(port)));
        let port_name = s(&ports[0]["name"], "port name");
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            let get = &container[probe]["httpGet"];
            assert_eq!(s(&get["path"], "probe path"), path, "{name} {probe}");
            assert_eq!(s(&get["port"], "probe port"), port_name);
        }
        let annotations = &pod["metadata"]["annotations"];
        // The gateway serves metrics on a listener of their own; broker-api on its port.
        let metrics_port = match get(&env, "CHORUS_METRICS_LISTEN") {
            Some(addr) if name == "gateway" => {
                let metrics_port = port_of(addr);
                assert!(
                    ports
                        .iter()
                        .any(|p| p["containerPort"].as_u64() == Some(u64::from(metrics_port))),
                    "the gateway's pod declares its metrics port"
                );
                metrics_port
            }
            _ => port,
        };
        assert_eq!(
            s(&annotations["prometheus.io/port"], "scrape port"),
            metrics_port.to_string()
        );
        let metrics_path = s(&annotations["prometheus.io/path"], "scrape path");
        if name == "gateway" {
            probes.gateway.extend(["/readyz".into(), "/healthz".into()]);
            probes.gateway_metrics.insert(metrics_path.into());
        } else {
            probes
                .broker_api
                .extend(["/readyz".into(), "/healthz".into(), metrics_path.into()]);
        }

        let service = find(&docs, "Service", name);
        let labels = &pod["metadata"]["labels"];
        for (k, v) in service["spec"]["selector"].as_mapping().unwrap() {
            assert_eq!(&labels[s(k, "label")], v, "Service {name} selects its pods");
        }
        assert_eq!(
            s(&service["spec"]["ports"][0]["targetPort"], "targetPort"),
            port_name
        );
        assert_eq!(
            service["spec"]["ports"][0]["port"].as_u64(),
            Some(u64::from(port))
        );
    }

    // The gateway's drain fits in the grace period, after the preStop pause.
    let gateway = find(&docs, "Deployment", "gateway");
    let spec = &gateway["spec"]["template"]["spec"];
    let grace = Duration::from_secs(spec["terminationGracePeriodSeconds"].as_u64().unwrap());
    let pre_stop = Duration::from_secs(
        spec["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .expect("preStop sleep"),
    );
    assert!(
        grace >= pre_stop + drain_window() + SHUTDOWN_BEYOND_DRAIN
            && grace >= Duration::from_secs(30),
        "terminationGracePeriodSeconds {grace:?} covers preStop {pre_stop:?} + drain {:?}",
        drain_window()
    );
    let hpa = find(&docs, "HorizontalPodAutoscaler", "gateway");
    assert_eq!(
        s(&hpa["spec"]["scaleTargetRef"]["kind"], "kind"),
        "Deployment"
    );
    assert_eq!(s(&hpa["spec"]["scaleTargetRef"]["name"], "name"), "gateway");
    let pdb = find(&docs, "PodDisruptionBudget", "gateway");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        gateway["spec"]["selector"]["matchLabels"]
    );
    let ingress = find(&docs, "Ingress", "chorus");
    let backend = &ingress["spec"]["rules"][0]["http"]["paths"][0];
    assert_eq!(s(&backend["path"], "path"), "/ws");
    assert_eq!(
        s(&backend["backend"]["service"]["name"], "backend"),
        "gateway"
    );
    let annotations = &ingress["metadata"]["annotations"];
    let read_timeout: u64 = s(
        &annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"],
        "read timeout",
    )
    .parse()
    .unwrap();
    let idle = parse_duration(&Binary::gateway().default_of("CHORUS_IDLE_TIMEOUT")).unwrap();
    assert!(Duration::from_secs(read_timeout) > idle * 2);
    let redis = find(&docs, "StatefulSet", "redis");
    let args = format!(
        "{:?}",
        redis["spec"]["template"]["spec"]["containers"][0]["args"]
    );
    assert!(
        args.contains("--appendonly") && args.contains("yes"),
        "{args}"
    );

    // Every path the manifests probe or scrape is answered by the real service.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(answer_200(probes));
}

/// Starts a gateway and a broker-api (in-memory bus) and checks each path answers 200.
async fn answer_200(probes: Probes) {
    use chorus_bus::Bus;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let gw = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (gw_addr, api_addr) = (gw.local_addr().unwrap(), api.local_addr().unwrap());
    let metrics_addr = std::net::SocketAddr::from(([127, 0, 0, 1], chorus_testkit::free_port()));
    let bus = Bus::memory();
    tokio::spawn(chorus_gateway::serve(
        gw,
        bus.clone(),
        chorus_gateway::GatewayConfig {
            metrics_listen: chorus_gateway::ListenAddr(Some(metrics_addr)),
            ..chorus_gateway::GatewayConfig::default()
        },
        Duration::from_secs(2),
        shutdown.clone(),
    ));
    let config = chorus_broker_api::BrokerConfig {
        api_keys: vec!["k".into()],
        ..chorus_broker_api::BrokerConfig::default()
    };
    tokio::spawn(chorus_broker_api::serve(api, bus, config, shutdown.clone()));
    assert_eq!(probes.gateway_metrics.len(), 1);
    for (addr, paths) in [
        (gw_addr, &probes.gateway),
        (metrics_addr, &probes.gateway_metrics),
        (api_addr, &probes.broker_api),
    ] {
        assert!(!paths.is_empty(), "probes found: {paths:?}");
        for path in paths {
            let url = format!("http://{addr}{path}");
            chorus_testkit::wait_http_ok(&url, Duration::from_secs(5))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    shutdown.cancel();
}

/// Every metric name the code exports; histograms also as their `_bucket`/`_sum`/`_count`.
fn exported_metrics() -> BTreeSet<String> {
    let mut names: BTreeSet<String> = BTreeSet::new();
    let base = chorus_gateway::metrics::ALL
        .iter()
        .chain(chorus_broker_api::metrics::ALL)
        .chain(chorus_bus::metrics::ALL);
    for name in base {
        names.insert((*name).to_owned());
        if name.ends_with("_seconds") {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// The `chorus_…` metric names in a PromQL expression.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("chorus_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        found.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    found
}

#[test]
fn dashboard_and_alerts_use_only_exported_metrics() {
    let exported = exported_metrics();
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/chorus.json")).expect("dashboard is JSON");
    assert_eq!(dashboard["uid"], "chorus-overview");
    let mut used = BTreeSet::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("PromQL expr");
            for name in metrics_in(expr) {
                assert!(
                    exported.contains(&name),
                    "dashboard uses {name}, which is not exported"
                );
                used.insert(name);
            }
        }
    }
    // The dashboard shows every metric (histograms through their buckets).
    for name in chorus_gateway::metrics::ALL
        .iter()
        .chain(chorus_broker_api::metrics::ALL)
        .chain(chorus_bus::metrics::ALL)
    {
        assert!(
            used.iter().any(|u| u.starts_with(name)),
            "the dashboard shows {name}"
        );
    }
    // Provisioned from the same file compose mounts, against the provisioned data source.
    let datasource = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    assert_eq!(
        s(&datasource["datasources"][0]["type"], "type"),
        "prometheus"
    );

    let alerts = yaml("deploy/prometheus/alerts.yml");
    let mut rules = 0;
    for group in alerts["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            for name in metrics_in(s(&rule["expr"], "alert expr")) {
                assert!(
                    exported.contains(&name),
                    "alert uses {name}, which is not exported"
                );
            }
            rules += 1;
        }
    }
    assert!(rules >= 5);
}

#[test]
fn dockerfile_passes_hadolint_when_it_is_installed() {
    let Ok(out) = std::process::Command::new("hadolint")
        .arg(root().join("deploy/Dockerfile"))
        .output()
    else {
        eprintln!("hadolint is not installed: Dockerfile lint skipped");
        return;
    };
    assert!(
        out.status.success(),
        "hadolint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `helm template` of the chart as the docs install it, or `None` when helm is not installed.
fn helm_rendered() -> Option<Vec<Value>> {
    let chart = root().join("deploy/helm/chorus");
    let helm = |args: &[&str]| {
        std::process::Command::new("helm")
            .args(args)
            .arg(&chart)
            .output()
    };
    let Ok(lint) = helm(&["lint", "--strict"]) else {
        eprintln!("helm is not installed: chart lint and render skipped");
        return None;
    };
    assert!(
        lint.status.success(),
        "helm lint --strict: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    let out = helm(&["template", "chorus", "--namespace", "chorus"]).expect("helm runs");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Release `chorus` names resources `chorus-<part>`: map them to the kustomize names so the
    // two renderings compare field by field.
    let text = String::from_utf8(out.stdout)
        .expect("UTF-8")
        .replace("chorus-gateway", "gateway")
        .replace("chorus-broker-api", "broker-api")
        .replace("chorus-redis", "redis")
        .replace("chorus-ws", "chorus");
    Some(
        serde_norway::Deserializer::from_str(&text)
            .map(|doc| Value::deserialize(doc).expect("helm renders YAML"))
            .filter(|doc| !doc.is_null())
            .collect(),
    )
}

/// What may differ between the chart and the kustomize manifests: labels and selectors (the
/// chart adds the release), the config checksum that rolls pods on a config change, the
/// image's tag and pull policy (kustomize's `images:` sets the tag), and a gateway replica
/// count the chart leaves to its autoscaler.
fn comparable(doc: &Value) -> Value {
    let mut spec = doc["spec"].clone();
    if let Some(map) = spec.as_mapping_mut() {
        map.remove("selector");
        if doc["kind"].as_str() == Some("Deployment") && doc["metadata"]["name"] == "gateway" {
            map.remove("replicas");
        }
    }
    if let Some(meta) = spec["template"]["metadata"].as_mapping_mut() {
        meta.remove("labels");
        if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_mapping_mut) {
            annotations.remove("checksum/config");
        }
    }
    if let Some(containers) = spec["template"]["spec"]["containers"].as_sequence_mut() {
        for c in containers {
            let Some(c) = c.as_mapping_mut() else {
                continue;
            };
            c.remove("imagePullPolicy");
            if let Some(Value::String(image)) = c.get_mut("image")
                && let Some(repo) = image.strip_suffix(":latest")
            {
                *image = repo.to_owned();
            }
        }
    }
    spec
}

#[test]
fn the_helm_chart_lints_and_renders_what_the_kustomize_manifests_deploy() {
    let Some(helm) = helm_rendered() else { return };
    let k8s = k8s_docs();
    for (kind, name) in [
        ("Deployment", "gateway"),
        ("Service", "gateway"),
        ("HorizontalPodAutoscaler", "gateway"),
        ("PodDisruptionBudget", "gateway"),
        ("Deployment", "broker-api"),
        ("Service", "broker-api"),
        ("Service", "redis"),
        ("StatefulSet", "redis"),
        ("Ingress", "chorus"),
    ] {
        let (h, k) = (find(&helm, kind, name), find(&k8s, kind, name));
        assert_eq!(
            comparable(h),
            comparable(k),
            "helm and kustomize differ on {kind} {name}"
        );
        assert_eq!(
            h["metadata"]["annotations"], k["metadata"]["annotations"],
            "{kind} {name} annotations"
        );
        // The chart's selectors pick its own pods.
        let selector = h["spec"]["selector"]
            .get("matchLabels")
            .unwrap_or(&h["spec"]["selector"]);
        if let Some(selector) = selector.as_mapping() {
            let labels = &h["spec"]["template"]["metadata"]["labels"];
            for (key, value) in selector {
                if !labels.is_null() {
                    assert_eq!(
                        &labels[key.as_str().unwrap()],
                        value,
                        "{kind} {name} selector"
                    );
                }
            }
        }
    }
    // The same settings as deploy/k8s/chorus.env, and the same example API key Secret.
    let config = find(&helm, "ConfigMap", "chorus-config");
    let data: Vec<(String, String)> = config["data"]
        .as_mapping()
        .expect("data")
        .iter()
        .map(|(k, v)| (s(k, "key").to_owned(), s(v, "value").to_owned()))
        .collect();
    let mut expected = env_file("deploy/k8s/chorus.env");
    expected.sort();
    assert_eq!(
        data, expected,
        "the chart's config follows deploy/k8s/chorus.env"
    );
    let secret = find(&helm, "Secret", "chorus-api-keys");
    assert_eq!(
        s(&secret["stringData"]["CHORUS_API_KEYS"], "key"),
        "change-me"
    );
    // Every resource of the chart is one of these: nothing deployed that the manifests lack.
    assert_eq!(helm.len(), 11, "resources in the chart");
}
