//! The shipped deployment files stay valid: the tokengate config embedded in
//! the Kubernetes ConfigMap passes the same validation as `--check-config`.

mod common;

use tokengate::config::RawConfig;

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
