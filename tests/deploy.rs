//! The shipped deployment files stay valid and free of the traps found by
//! trying them as a newcomer would (issue 16): every YAML document in deploy/
//! parses and keeps the invariants below, the tokengate configs embedded in
//! the ConfigMaps pass validation with the Secrets that the manifests tell the
//! reader to create, and the container image (no container engine here) runs
//! the binary as a non-root user from a baked config that refuses to start
//! without an authorization server, which the built binary's `--check-config`
//! shows.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokengate::config::RawConfig;
use yaml_rust2::{Yaml, YamlLoader};

/// The indented block under `tokengate.toml: |`, de-indented.
fn embedded_toml(yaml: &str) -> String {
    let mut lines = yaml
        .lines()
        .skip_while(|l| !l.trim_end().ends_with("tokengate.toml: |"));
    lines
        .next()
        .expect("no `tokengate.toml: |` key in the ConfigMap");
    let block: Vec<&str> = lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .collect();
    block
        .iter()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn kubernetes_configmap_config_is_valid() {
    let yaml = include_str!("../deploy/kubernetes/configmap.yaml");
    let toml_text = embedded_toml(yaml);
    // The Secret's files, as the pod would have them.
    let dir = common::temp_dir("deploy");
    let mut text = toml_text.clone();
    for name in ["client-secret", "purge-secret"] {
        let path = dir.join(name);
        std::fs::write(&path, "from-the-secret\n").unwrap();
        text = text.replace(
            &format!("/run/secrets/tokengate/{name}"),
            &path.display().to_string(),
        );
    }
    assert_ne!(text, toml_text, "the secret paths moved; update this test");
    let raw: RawConfig = toml::from_str(&text).expect("ConfigMap TOML does not parse");
    let settings = raw.validate().expect("ConfigMap config does not validate");
    assert_eq!(settings.admin.listen.map(|a| a.port()), Some(9090));
    assert!(settings.admin.purge_secret.is_some());
    assert!(settings.shutdown_timeout < std::time::Duration::from_secs(30));

    // The Deployment's probes and ports point at what the config serves.
    let deployment = include_str!("../deploy/kubernetes/deployment.yaml");
    for want in [
        "containerPort: 8080",
        "containerPort: 9090",
        "path: /healthz",
        "path: /readyz",
        "readOnlyRootFilesystem: true",
        "runAsNonRoot: true",
        "secretName: tokengate-client",
        "terminationGracePeriodSeconds: 30",
    ] {
        assert!(deployment.contains(want), "deployment.yaml lacks {want:?}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn example_config_parses_with_the_documented_defaults() {
    let mut raw: RawConfig = toml::from_str(include_str!("../config/tokengate.toml"))
        .expect("config/tokengate.toml does not parse");
    // The example leaves the secret to the operator.
    raw.introspection.client_secret = tokengate::config::Secret::new("x");
    let settings = raw
        .validate()
        .expect("config/tokengate.toml does not validate");
    let defaults = RawConfig::default();
    assert_eq!(raw.admin.listen, defaults.admin.listen);
    assert_eq!(
        raw.admin.purge_secret_file,
        defaults.admin.purge_secret_file
    );
    assert_eq!(raw.shutdown_timeout, defaults.shutdown_timeout);
    assert!(settings.admin.purge_secret.is_none());
}

// ---------------------------------------------------------------------------
// Every YAML document in deploy/
// ---------------------------------------------------------------------------

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `*.yaml` / `*.yml` file under `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// One parsed document and the file it came from.
struct Doc {
    file: String,
    yaml: Yaml,
}

impl Doc {
    fn kind(&self) -> &str {
        self.yaml["kind"].as_str().unwrap_or("")
    }

    fn name(&self) -> &str {
        self.yaml["metadata"]["name"].as_str().unwrap_or("")
    }
}

/// Every document of every YAML file in deploy/ (empty documents dropped).
fn deploy_docs() -> Vec<Doc> {
    let files = yaml_files(&root().join("deploy"));
    assert!(files.len() >= 5, "deploy/ lost its manifests: {files:?}");
    let mut docs = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let file = path.strip_prefix(root()).unwrap().display().to_string();
        let parsed = YamlLoader::load_from_str(&text)
            .unwrap_or_else(|e| panic!("{file} is not valid YAML: {e}"));
        for yaml in parsed {
            if !yaml.is_null() {
                docs.push(Doc {
                    file: file.clone(),
                    yaml,
                });
            }
        }
    }
    docs
}

/// Kubernetes objects: the documents with `apiVersion` and `kind`.
fn k8s_objects(docs: &[Doc]) -> Vec<&Doc> {
    docs.iter()
        .filter(|d| d.yaml["apiVersion"].as_str().is_some() && !d.kind().is_empty())
        .collect()
}

const WORKLOADS: [&str; 5] = ["Deployment", "StatefulSet", "DaemonSet", "Job", "Pod"];

/// The pod spec of a workload object.
fn pod_spec(doc: &Doc) -> &Yaml {
    if doc.kind() == "Pod" {
        &doc.yaml["spec"]
    } else {
        &doc.yaml["spec"]["template"]["spec"]
    }
}

fn workloads(docs: &[Doc]) -> Vec<&Doc> {
    k8s_objects(docs)
        .into_iter()
        .filter(|d| WORKLOADS.contains(&d.kind()))
        .collect()
}

/// Every container and init container of a pod spec.
fn containers(spec: &Yaml) -> Vec<&Yaml> {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| spec[*k].as_vec())
        .flatten()
        .collect()
}

fn is_tokengate(container: &Yaml) -> bool {
    container["name"].as_str() == Some("tokengate")
}

#[test]
fn every_deploy_manifest_parses() {
    let docs = deploy_docs();
    for d in k8s_objects(&docs) {
        assert!(
            !d.name().is_empty(),
            "{}: a {} without metadata.name",
            d.file,
            d.kind()
        );
    }
    // Each example is there, as a document of the right shape.
    let kinds: BTreeSet<&str> = k8s_objects(&docs).iter().map(|d| d.kind()).collect();
    for kind in ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget"] {
        assert!(kinds.contains(kind), "no {kind} in deploy/: {kinds:?}");
    }
    assert!(docs.iter().any(|d| d.file.ends_with("traefik/dynamic.yml")));
    assert!(docs
        .iter()
        .any(|d| d.file.ends_with("envoy/ext_authz.yaml")));
    for file in [
        "envoy/ext_authz_grpc.yaml",
        "istio/mesh-config.yaml",
        "istio/authorization-policy.yaml",
        "istio/tokengate.yaml",
    ] {
        assert!(docs.iter().any(|d| d.file.ends_with(file)), "{file}");
    }
}

/// The ext_authz filter of a bootstrap, found by name in any filter chain.
fn ext_authz_filter(bootstrap: &Yaml) -> &Yaml {
    let listeners = bootstrap["static_resources"]["listeners"].as_vec().unwrap();
    listeners
        .iter()
        .flat_map(|l| l["filter_chains"].as_vec().unwrap())
        .flat_map(|c| c["filters"].as_vec().unwrap())
        .flat_map(|f| {
            f["typed_config"]["http_filters"]
                .as_vec()
                .map(|v| v.iter().collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .find(|f| f["name"].as_str() == Some("envoy.filters.http.ext_authz"))
        .map(|f| &f["typed_config"])
        .expect("no envoy.filters.http.ext_authz filter")
}

/// The gRPC ext_authz bootstrap: V3 API, fail closed, no request body, the
/// tokengate cluster spoken to over HTTP/2 and health-checked with gRPC health.
#[test]
fn envoy_grpc_ext_authz_is_fail_closed_http2_and_health_checked() {
    let text = include_str!("../deploy/envoy/ext_authz_grpc.yaml");
    let doc = &YamlLoader::load_from_str(text).unwrap()[0];
    let filter = ext_authz_filter(doc);
    assert_eq!(filter["transport_api_version"].as_str(), Some("V3"));
    assert_eq!(filter["failure_mode_allow"].as_bool(), Some(false));
    assert!(
        filter["with_request_body"].is_badvalue(),
        "tokengate needs no request body"
    );
    assert!(filter["http_service"].is_badvalue());
    assert_eq!(
        filter["grpc_service"]["envoy_grpc"]["cluster_name"].as_str(),
        Some("tokengate")
    );
    assert!(filter["grpc_service"]["timeout"].as_str().is_some());
    let cluster = doc["static_resources"]["clusters"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some("tokengate"))
        .unwrap();
    let http = &cluster["typed_extension_protocol_options"]
        ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    assert!(
        !http["explicit_http_config"]["http2_protocol_options"].is_badvalue(),
        "gRPC needs HTTP/2 to tokengate"
    );
    assert_eq!(
        cluster["health_checks"][0]["grpc_health_check"]["service_name"].as_str(),
        Some("envoy.service.auth.v3.Authorization")
    );
    let port = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"]["port_value"]
        .as_i64();
    assert_eq!(
        port,
        Some(9191),
        "the port the header's [ext_authz] listens on"
    );
    assert!(text.contains("listen = \"0.0.0.0:9191\""));
}

/// Istio: the AuthorizationPolicy's CUSTOM provider is the mesh's
/// envoyExtAuthzGrpc provider, which names tokengate's Service and the port
/// its config serves ext_authz on, and fails closed.
#[test]
fn istio_provider_points_at_tokengate_ext_authz() {
    let docs = deploy_docs();
    let in_file = |file: &str, kind: &str| -> &Yaml {
        &docs
            .iter()
            .find(|d| d.file.ends_with(file) && d.kind() == kind)
            .unwrap_or_else(|| panic!("no {kind} in {file}"))
            .yaml
    };
    let policy = in_file("istio/authorization-policy.yaml", "AuthorizationPolicy");
    assert_eq!(policy["action"].as_str(), None, "action sits under spec");
    assert_eq!(policy["spec"]["action"].as_str(), Some("CUSTOM"));
    let provider_name = policy["spec"]["provider"]["name"].as_str().unwrap();

    let mesh = in_file("istio/mesh-config.yaml", "IstioOperator");
    let providers = mesh["spec"]["meshConfig"]["extensionProviders"]
        .as_vec()
        .unwrap();
    let provider = providers
        .iter()
        .find(|p| p["name"].as_str() == Some(provider_name))
        .unwrap_or_else(|| panic!("no extension provider {provider_name}"));
    let grpc = &provider["envoyExtAuthzGrpc"];
    assert_eq!(grpc["failOpen"].as_bool(), Some(false));
    assert!(grpc["includeRequestBodyInCheck"].is_badvalue());

    let service = in_file("istio/tokengate.yaml", "Service");
    let host = format!(
        "{}.{}.svc.cluster.local",
        service["metadata"]["name"].as_str().unwrap(),
        service["metadata"]["namespace"].as_str().unwrap()
    );
    assert_eq!(grpc["service"].as_str(), Some(host.as_str()));
    let port = &service["spec"]["ports"][0];
    assert_eq!(port["port"].as_i64(), grpc["port"].as_i64());
    assert_eq!(port["appProtocol"].as_str(), Some("grpc"));

    // tokengate's own config serves ext_authz on the port the Service targets.
    let map = in_file("istio/tokengate.yaml", "ConfigMap");
    let raw: RawConfig = toml::from_str(map["data"]["tokengate.toml"].as_str().unwrap()).unwrap();
    let listen: std::net::SocketAddr = raw.ext_authz.listen.parse().unwrap();
    let deployment = in_file("istio/tokengate.yaml", "Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let target = port["targetPort"].as_str().unwrap();
    let container_port = container["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some(target))
        .and_then(|p| p["containerPort"].as_i64());
    assert_eq!(container_port, Some(i64::from(listen.port())));
    assert_eq!(
        container["readinessProbe"]["grpc"]["port"].as_i64(),
        Some(i64::from(listen.port()))
    );
}

/// fleet.yaml told the reader to create its Secrets with `kubectl create
/// secret`, then contained them with placeholder values: applying it
/// overwrote the real ones. No applied manifest carries Secret data.
#[test]
fn no_applied_manifest_contains_secret_data() {
    let docs = deploy_docs();
    for d in k8s_objects(&docs) {
        if d.kind() == "Secret" {
            let has_data = ["data", "stringData"]
                .iter()
                .any(|k| d.yaml[*k].as_hash().is_some_and(|h| !h.is_empty()));
            assert!(
                !has_data,
                "{}: Secret {} with data: an apply overwrites the real one (create it with kubectl create secret instead)",
                d.file,
                d.name()
            );
        }
    }
}

#[test]
fn every_container_has_a_memory_limit_and_runs_as_non_root() {
    let docs = deploy_docs();
    let mut seen = 0;
    for d in workloads(&docs) {
        for c in containers(pod_spec(d)) {
            seen += 1;
            let name = c["name"].as_str().unwrap_or("?");
            let at = format!("{} {}/{}: container {name}", d.file, d.kind(), d.name());
            let limit = &c["resources"]["limits"]["memory"];
            assert!(
                limit.as_str().is_some() || limit.as_i64().is_some(),
                "{at} has no resources.limits.memory"
            );
            assert!(
                c["resources"]["requests"]["memory"].as_str().is_some(),
                "{at} has no resources.requests.memory"
            );
            let sc = &c["securityContext"];
            assert_eq!(
                sc["runAsNonRoot"].as_bool(),
                Some(true),
                "{at}: runAsNonRoot"
            );
            assert_eq!(
                sc["allowPrivilegeEscalation"].as_bool(),
                Some(false),
                "{at}: allowPrivilegeEscalation"
            );
            assert_eq!(
                sc["readOnlyRootFilesystem"].as_bool(),
                Some(true),
                "{at}: readOnlyRootFilesystem"
            );
        }
    }
    assert!(seen >= 4, "only {seen} containers found");
}

/// A PodDisruptionBudget selects the pods of every replicated Deployment.
#[test]
fn every_replicated_deployment_has_a_disruption_budget() {
    let docs = deploy_docs();
    let objects = k8s_objects(&docs);
    let budgets: Vec<&Yaml> = objects
        .iter()
        .filter(|d| d.kind() == "PodDisruptionBudget")
        .map(|d| &d.yaml["spec"]["selector"]["matchLabels"])
        .collect();
    let mut fleets = 0;
    for d in &objects {
        if d.kind() != "Deployment" || d.yaml["spec"]["replicas"].as_i64().unwrap_or(1) < 2 {
            continue;
        }
        fleets += 1;
        let labels = &d.yaml["spec"]["selector"]["matchLabels"];
        assert!(
            budgets.contains(&labels),
            "{}: Deployment {} ({:?}) has no PodDisruptionBudget",
            d.file,
            d.name(),
            labels
        );
    }
    assert!(
        fleets >= 2,
        "the sidecar and the fleet examples are replicated"
    );
}

/// The ConfigMap named `name`: from the same file, else the only one in a
/// file that holds no workload (configmap.yaml for deployment.yaml).
fn config_map<'a>(docs: &'a [Doc], file: &str, name: &str) -> &'a Doc {
    let maps: Vec<&Doc> = k8s_objects(docs)
        .into_iter()
        .filter(|d| d.kind() == "ConfigMap" && d.name() == name)
        .collect();
    if let Some(d) = maps.iter().find(|d| d.file == file) {
        return d;
    }
    let standalone: Vec<&&Doc> = maps
        .iter()
        .filter(|m| !workloads(docs).iter().any(|w| w.file == m.file))
        .collect();
    assert_eq!(standalone.len(), 1, "{file}: which ConfigMap {name}?");
    standalone[0]
}

/// Seconds of a `preStop` sleep (exec `sleep N` or the `sleep` action).
fn pre_stop_secs(container: &Yaml) -> u64 {
    let pre_stop = &container["lifecycle"]["preStop"];
    if let Some(s) = pre_stop["sleep"]["seconds"].as_i64() {
        return u64::try_from(s).unwrap();
    }
    match pre_stop["exec"]["command"].as_vec() {
        Some(cmd) if cmd.first().and_then(Yaml::as_str) == Some("sleep") => cmd[1]
            .as_str()
            .and_then(|n| n.parse().ok())
            .expect("preStop: sleep N"),
        Some(cmd) => panic!("unexpected preStop command {cmd:?}"),
        None => 0,
    }
}

/// The secrets the manifests' comments tell the reader to create:
/// `kubectl create secret generic NAME --from-literal=KEY=… --from-file=KEY=…`.
fn secrets_to_create() -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in yaml_files(&root().join("deploy/kubernetes")) {
        let text = std::fs::read_to_string(path).unwrap();
        let comments: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix('#'))
            .collect();
        // Shell continuation lines joined into one command line.
        let joined = comments.join("\n").replace("\\\n", " ");
        for line in joined.lines() {
            let Some(rest) = line.split("kubectl create secret generic").nth(1) else {
                continue;
            };
            let mut words = rest.split_whitespace();
            let name = words.next().expect("a secret name").to_owned();
            let keys = out.entry(name).or_default();
            for w in words {
                if let Some(kv) = w
                    .strip_prefix("--from-literal=")
                    .or_else(|| w.strip_prefix("--from-file="))
                {
                    keys.insert(kv.split('=').next().unwrap().to_owned());
                }
            }
        }
    }
    out
}

/// For every tokengate container: its config (from the ConfigMap it mounts)
/// validates with the Secrets that the comments say to create, each secret
/// file is a key of a mounted Secret, and shutdown_timeout plus the preStop
/// sleep ends well before terminationGracePeriodSeconds (fleet.yaml had
/// shutdown_timeout = the grace period: SIGKILL mid-drain).
#[test]
fn tokengate_pods_validate_and_drain_before_the_grace_period() {
    let docs = deploy_docs();
    let to_create = secrets_to_create();
    let mut checked = 0;
    for d in workloads(&docs) {
        let spec = pod_spec(d);
        for c in containers(spec).into_iter().filter(|c| is_tokengate(c)) {
            checked += 1;
            let at = format!("{} {}/{}", d.file, d.kind(), d.name());
            let volumes = spec["volumes"].as_vec().expect("volumes");
            let volume = |name: &str| {
                volumes
                    .iter()
                    .find(|v| v["name"].as_str() == Some(name))
                    .unwrap_or_else(|| panic!("{at}: no volume {name}"))
            };
            // mountPath -> volume
            let mounts: Vec<(&str, &Yaml)> = c["volumeMounts"]
                .as_vec()
                .expect("volumeMounts")
                .iter()
                .map(|m| {
                    (
                        m["mountPath"].as_str().unwrap(),
                        volume(m["name"].as_str().unwrap()),
                    )
                })
                .collect();
            let args: Vec<&str> = c["args"]
                .as_vec()
                .expect("args")
                .iter()
                .filter_map(Yaml::as_str)
                .collect();
            let config_path = args
                .windows(2)
                .find(|w| w[0] == "--config")
                .map(|w| Path::new(w[1]))
                .expect("--config FILE");
            let dir = config_path.parent().unwrap().to_str().unwrap();
            let file_name = config_path.file_name().unwrap().to_str().unwrap();
            let (_, config_volume) = mounts
                .iter()
                .find(|(p, _)| *p == dir)
                .unwrap_or_else(|| panic!("{at}: nothing mounted at {dir}"));
            let map_name = config_volume["configMap"]["name"]
                .as_str()
                .expect("the config is a ConfigMap volume");
            let map = config_map(&docs, &d.file, map_name);
            let toml_text = map.yaml["data"][file_name]
                .as_str()
                .unwrap_or_else(|| panic!("{at}: ConfigMap {map_name} has no {file_name}"));
            let mut raw: RawConfig =
                toml::from_str(toml_text).unwrap_or_else(|e| panic!("{at}: {map_name} TOML: {e}"));

            // Every secret file lies in a mounted Secret, under a key that
            // the comments tell the reader to create.
            let tmp = common::temp_dir("deploy-secrets");
            let generated = "3f9c2a7e81d04b6f95e2c7a1d8b3046e";
            for field in [
                &mut raw.introspection.client_secret_file,
                &mut raw.admin.purge_secret_file,
                &mut raw.cache.shared.key_secret_file,
            ] {
                if field.is_empty() {
                    continue;
                }
                let path = Path::new(field.as_str());
                let parent = path.parent().unwrap().to_str().unwrap();
                let key = path.file_name().unwrap().to_str().unwrap();
                let (_, v) = mounts
                    .iter()
                    .find(|(p, _)| *p == parent)
                    .unwrap_or_else(|| panic!("{at}: {field} is not in a mounted volume"));
                let secret = v["secret"]["secretName"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{at}: {parent} is not a Secret volume"));
                assert!(
                    to_create.get(secret).is_some_and(|keys| keys.contains(key)),
                    "{at}: {field} needs key {key} of Secret {secret}, which no `kubectl create secret` comment creates: {to_create:?}"
                );
                let local = tmp.join(format!("{secret}-{key}"));
                std::fs::write(&local, format!("{generated}\n")).unwrap();
                *field = local.display().to_string();
            }
            let settings = raw
                .validate()
                .unwrap_or_else(|e| panic!("{at}: the {map_name} config does not validate: {e}"));
            let _ = std::fs::remove_dir_all(&tmp);

            // The probes and the Service ports point at what the config serves.
            let admin = settings
                .admin
                .listen
                .expect("an admin listener for the probes");
            assert!(
                !admin.ip().is_loopback(),
                "{at}: the kubelet cannot probe loopback"
            );
            let ports: Vec<i64> = c["ports"]
                .as_vec()
                .unwrap()
                .iter()
                .filter_map(|p| p["containerPort"].as_i64())
                .collect();
            assert!(
                ports.contains(&i64::from(settings.listen.port())),
                "{at}: {ports:?}"
            );
            assert!(ports.contains(&i64::from(admin.port())), "{at}: {ports:?}");

            let grace = spec["terminationGracePeriodSeconds"].as_i64().unwrap_or(30);
            let grace = Duration::from_secs(u64::try_from(grace).unwrap());
            let pre_stop = Duration::from_secs(pre_stop_secs(c));
            let margin = Duration::from_secs(5);
            assert!(
                pre_stop + settings.shutdown_timeout + margin <= grace,
                "{at}: preStop {pre_stop:?} + shutdown_timeout {:?} + {margin:?} > terminationGracePeriodSeconds {grace:?}",
                settings.shutdown_timeout
            );
        }
    }
    assert!(checked >= 2, "the sidecar and the fleet run tokengate");
}

/// Every cluster an Envoy config references is defined (ext_authz.yaml named
/// `tokengate` and defined nothing).
#[test]
fn every_envoy_cluster_is_defined() {
    fn referenced<'a>(y: &'a Yaml, out: &mut BTreeSet<&'a str>) {
        match y {
            Yaml::Hash(h) => {
                for (k, v) in h {
                    // `cluster_name`: a gRPC service's `envoy_grpc` (and
                    // load_assignment's own name, which is defined anyway).
                    if matches!(k.as_str(), Some("cluster" | "cluster_name")) {
                        if let Some(name) = v.as_str() {
                            out.insert(name);
                        }
                    }
                    referenced(v, out);
                }
            }
            Yaml::Array(a) => a.iter().for_each(|v| referenced(v, out)),
            _ => {}
        }
    }
    let docs = deploy_docs();
    let envoy: Vec<&Doc> = docs.iter().filter(|d| d.file.contains("envoy")).collect();
    assert!(!envoy.is_empty());
    for d in envoy {
        let mut used = BTreeSet::new();
        referenced(&d.yaml, &mut used);
        let defined: BTreeSet<&str> = d.yaml["static_resources"]["clusters"]
            .as_vec()
            .map(|cs| cs.iter().filter_map(|c| c["name"].as_str()).collect())
            .unwrap_or_default();
        assert!(used.contains("tokengate"), "{}: {used:?}", d.file);
        let missing: Vec<_> = used.difference(&defined).collect();
        assert!(
            missing.is_empty(),
            "{}: clusters used but not defined: {missing:?}",
            d.file
        );
        // Each defined cluster is complete enough to resolve.
        for c in d.yaml["static_resources"]["clusters"].as_vec().unwrap() {
            let ep = &c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                ["address"]["socket_address"];
            assert!(
                ep["address"].as_str().is_some() && ep["port_value"].as_i64().is_some(),
                "{}: cluster {:?} has no endpoint",
                d.file,
                c["name"]
            );
            assert_eq!(c["load_assignment"]["cluster_name"], c["name"]);
        }
    }
}

// ---------------------------------------------------------------------------
// The container image, without a container engine
// ---------------------------------------------------------------------------

/// The Dockerfile's instructions (continuations joined, comments dropped) of
/// its last stage, as (INSTRUCTION, arguments).
fn final_stage() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(part) = t.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(t);
        let (op, args) = current.split_once(' ').unwrap_or((&current, ""));
        instructions.push((op.to_ascii_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    let last_from = instructions
        .iter()
        .rposition(|(op, _)| op == "FROM")
        .expect("FROM");
    instructions.split_off(last_from)
}

/// The baked config, as the Dockerfile copies it to where TOKENGATE_CONFIG says.
fn baked_config() -> PathBuf {
    let stage = final_stage();
    let config = stage
        .iter()
        .filter(|(op, _)| op == "ENV")
        .find_map(|(_, a)| a.strip_prefix("TOKENGATE_CONFIG="))
        .expect("ENV TOKENGATE_CONFIG=…")
        .to_owned();
    let source = stage
        .iter()
        .filter(|(op, _)| op == "COPY")
        .find_map(|(_, a)| {
            let words: Vec<&str> = a.split_whitespace().collect();
            (words.len() == 2 && words[1] == config).then(|| words[0].to_owned())
        })
        .unwrap_or_else(|| panic!("no COPY of the baked config to {config}"));
    let path = root().join(source);
    assert!(path.is_file(), "{} does not exist", path.display());
    path
}

#[test]
fn image_runs_tokengate_as_a_non_root_user() {
    let stage = final_stage();
    let one = |name: &str| -> &str {
        let found: Vec<&str> = stage
            .iter()
            .filter(|(op, _)| op == name)
            .map(|(_, a)| a.as_str())
            .collect();
        assert_eq!(found.len(), 1, "{name}: {found:?}");
        found[0]
    };
    // Numeric (Kubernetes' runAsNonRoot can only verify a number) and not root.
    let user = one("USER");
    let (uid, gid) = user.split_once(':').unwrap_or((user, user));
    let uid: u32 = uid.parse().expect("a numeric USER");
    let gid: u32 = gid.parse().expect("a numeric group");
    assert!(uid != 0 && gid != 0, "USER {user}");
    // The uid the manifests run as.
    let manifests = std::fs::read_to_string(root().join("deploy/kubernetes/fleet.yaml")).unwrap();
    assert!(manifests.contains(&format!("runAsUser: {uid}")));

    // Exec form, so tokengate is PID 1 and gets SIGTERM; no CMD, so arguments
    // after the image name (--check-config) go to tokengate.
    let entrypoint: Vec<String> =
        serde_json::from_str(one("ENTRYPOINT")).expect("ENTRYPOINT in exec (JSON) form");
    assert_eq!(entrypoint, ["/usr/local/bin/tokengate"]);
    assert!(!stage.iter().any(|(op, _)| op == "CMD"));
    assert!(stage.iter().any(|(op, a)| op == "COPY"
        && a.split_whitespace().collect::<Vec<_>>()
            == [
                "--from=builder",
                "/src/target/release/tokengate",
                "/usr/local/bin/tokengate"
            ]));

    // Every exposed port is one the baked config listens on off loopback
    // (EXPOSE 9090 advertised an admin port bound to 127.0.0.1 inside).
    let raw: RawConfig = toml::from_str(&std::fs::read_to_string(baked_config()).unwrap()).unwrap();
    let exposed: Vec<u16> = one("EXPOSE")
        .split_whitespace()
        .map(|p| p.trim_end_matches("/tcp").parse().unwrap())
        .collect();
    let listen: std::net::SocketAddr = raw.listen.parse().unwrap();
    assert!(
        listen.ip().is_unspecified(),
        "-p 8080:8080 needs 0.0.0.0: {listen}"
    );
    let admin: std::net::SocketAddr = raw.admin.listen.parse().unwrap();
    for port in &exposed {
        let open = (listen.port() == *port && !listen.ip().is_loopback())
            || (admin.port() == *port && !admin.ip().is_loopback());
        assert!(open, "EXPOSE {port}: nothing listens there off loopback");
    }
    assert_eq!(exposed, [listen.port()]);
}

/// `tokengate --check-config` of the built binary with the baked config and
/// only the given environment (as in a fresh container).
fn check_baked(env: &[(&str, String)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .arg("--check-config")
        .env_clear()
        .env("TOKENGATE_CONFIG", baked_config())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("cannot run the tokengate binary")
}

/// The baked config had `url = "https://auth.example.com/…"`: it passed
/// --check-config, and a container whose user forgot the URL answered 503
/// forever. Now it refuses to start and says which variable to set.
#[test]
fn baked_config_refuses_to_start_without_the_authorization_server() {
    let out = check_baked(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "passed without a URL: {stderr}");
    for want in [
        "introspection.url",
        "TOKENGATE_INTROSPECTION__URL",
        "TOKENGATE_DISCOVERY__ISSUER",
    ] {
        assert!(stderr.contains(want), "the message lacks {want}: {stderr}");
    }
    assert!(!stderr.contains("example.com"), "{stderr}");

    // The three settings by environment: valid, listening where -p expects.
    let out = check_baked(&[
        (
            "TOKENGATE_INTROSPECTION__URL",
            "https://as.test/introspect".into(),
        ),
        ("TOKENGATE_INTROSPECTION__CLIENT_ID", "tokengate".into()),
        (
            "TOKENGATE_INTROSPECTION__CLIENT_SECRET",
            "s3cret-value".into(),
        ),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("0.0.0.0:8080"), "{stdout}");
    assert!(!stdout.contains("s3cret-value"), "secret printed: {stdout}");
}

/// The Dockerfile's `docker run` examples work as pasted: every `-e` they
/// set, run through the binary with the baked config, passes --check-config;
/// a `_FILE` variable names a path that a `-v` of the same example mounts.
/// (The README's example set CLIENT_SECRET_FILE and mounted nothing.)
#[test]
fn documented_docker_run_lines_pass_check_config() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let comment: Vec<&str> = text
        .lines()
        .take_while(|l| l.starts_with('#') || l.trim().is_empty())
        .filter_map(|l| l.strip_prefix('#'))
        .collect();
    let joined = comment.join("\n").replace("\\\n", " ");
    let runs: Vec<&str> = joined
        .lines()
        .filter(|l| l.trim_start().starts_with("docker run"))
        .collect();
    assert_eq!(
        runs.len(),
        2,
        "one with the secret by env var, one by file: {runs:?}"
    );
    let mut by_file = false;
    let mut by_env = false;
    for run in runs {
        let words: Vec<&str> = run.split_whitespace().collect();
        let mut env: Vec<(&str, String)> = Vec::new();
        let mut mounts: Vec<&str> = Vec::new();
        for w in words.windows(2) {
            match w[0] {
                "-e" => match w[1].split_once('=') {
                    Some((k, v)) => env.push((k, v.to_owned())),
                    // `-e NAME`: passed on from the shell (the example exports it).
                    None => {
                        assert!(
                            joined.contains(&format!("export {}=", w[1])),
                            "{run}: where does {} come from?",
                            w[1]
                        );
                        env.push((w[1], "from-the-shell-5e1f".into()));
                    }
                },
                "-v" => mounts.push(w[1].trim_matches('"')),
                _ => {}
            }
        }
        assert_eq!(words.last(), Some(&"tokengate"), "{run}");
        assert!(run.contains("-p 8080:8080"), "{run}");
        let tmp = common::temp_dir("docker-run");
        for (k, v) in &mut env {
            assert!(k.starts_with("TOKENGATE_"), "{run}: {k}");
            if k.ends_with("_FILE") {
                // Mounted by this very example, at that path.
                let mounted = mounts
                    .iter()
                    .any(|m| m.split(':').nth(1) == Some(v.as_str()));
                assert!(mounted, "{run}: {k}={v} but no -v mounts it: {mounts:?}");
                let local = tmp.join("mounted-secret");
                std::fs::write(&local, "from-the-file-8a2c\n").unwrap();
                *v = local.display().to_string();
                by_file = true;
            }
            if *k == "TOKENGATE_INTROSPECTION__CLIENT_SECRET" {
                by_env = true;
            }
        }
        let out = check_baked(&env);
        assert!(
            out.status.success(),
            "{run}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_dir_all(tmp);
    }
    assert!(
        by_file && by_env,
        "both ways of passing the secret are shown"
    );
}
