//! `[tracing]`: where spans go (OTLP over gRPC), under which service name,
//! and how many traces are kept; the standard `OTEL_*` variables fill in what
//! the section leaves unset.
//!
//! Precedence, key by key: `[tracing]` in the TOML file, overridden by
//! `TOKENGATE_TRACING__*` (the usual order of tokengate's own settings), and
//! only where neither sets a key, the `OTEL_*` variable; then the default.
//! tokengate's own keys are the more specific ones: an operator who wrote
//! `sample_ratio` in tokengate's file meant it for tokengate, while `OTEL_*`
//! is often injected for a whole pod by a platform.
//!
//! Tracing is on when an endpoint is found: `otlp_endpoint`, else
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`.
//! An endpoint in the environment alone turns it on, because that is what the
//! OpenTelemetry Operator and most platforms inject, expecting the process to
//! export; `otlp_endpoint = ""` written out turns it off whatever the
//! environment says, and `OTEL_SDK_DISABLED=true` turns it off in every case.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The default export timeout (the OpenTelemetry specification's 10 s).
const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The service name when nothing names one.
const DEFAULT_SERVICE_NAME: &str = "tokengate";

/// `[tracing]` as written. Every key is optional, so that an unset key can
/// fall back to its `OTEL_*` variable.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTracing {
    /// OTLP/gRPC collector URL, e.g. `http://otel-collector:4317`. Unset: the
    /// `OTEL_*` endpoint, if any; `""`: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of every span. Unset: `OTEL_SERVICE_NAME`, else
    /// `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, else "tokengate".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// Share of new traces kept (0.0 to 1.0), parent-based: a request whose
    /// `traceparent` says "sampled" (or "not sampled") is followed as its
    /// caller decided. Unset: `OTEL_TRACES_SAMPLER(_ARG)`, else 1.0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_ratio: Option<f64>,
    /// How long one export call may take ("10s"). Unset:
    /// `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT` (milliseconds), else 10 s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export_timeout: Option<String>,
    /// The `OTEL_*` variables, read by `config::load` (never by `validate`,
    /// so that a config built in code, as the tests do, is not changed by
    /// the process environment).
    #[serde(skip)]
    pub env: OtelEnv,
}

/// The standard OpenTelemetry variables tokengate reads. The header
/// variables (`OTEL_EXPORTER_OTLP_(TRACES_)HEADERS`, which often carry an API
/// key) are not among them: the exporter reads them itself, so their values
/// never pass through tokengate's settings, its `Debug` output or
/// `--check-config`.
#[derive(Clone, Default, PartialEq)]
pub struct OtelEnv {
    pub sdk_disabled: Option<String>,
    pub service_name: Option<String>,
    pub resource_attributes: Option<String>,
    pub traces_endpoint: Option<String>,
    pub endpoint: Option<String>,
    pub traces_timeout: Option<String>,
    pub timeout: Option<String>,
    pub traces_protocol: Option<String>,
    pub protocol: Option<String>,
    pub sampler: Option<String>,
    pub sampler_arg: Option<String>,
}

impl OtelEnv {
    /// Reads the variables from the process environment (empty values count
    /// as unset, as the specification says).
    pub fn from_process() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the variables through `get` (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        Self {
            sdk_disabled: get("OTEL_SDK_DISABLED"),
            service_name: get("OTEL_SERVICE_NAME"),
            resource_attributes: get("OTEL_RESOURCE_ATTRIBUTES"),
            traces_endpoint: get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            endpoint: get("OTEL_EXPORTER_OTLP_ENDPOINT"),
            traces_timeout: get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"),
            timeout: get("OTEL_EXPORTER_OTLP_TIMEOUT"),
            traces_protocol: get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
            protocol: get("OTEL_EXPORTER_OTLP_PROTOCOL"),
            sampler: get("OTEL_TRACES_SAMPLER"),
            sampler_arg: get("OTEL_TRACES_SAMPLER_ARG"),
        }
    }
}

// Debug by hand: an endpoint may carry a credential in its userinfo, path or
// query (refused by `settings`, but only for the endpoint in use: the file's
// key hides the environment's, which is never validated), and `Debug` of the
// raw config must not show one. Endpoints are shown as scheme, host and port.
impl std::fmt::Debug for RawTracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawTracing")
            .field("otlp_endpoint", &self.otlp_endpoint.as_deref().map(shown))
            .field("service_name", &self.service_name)
            .field("sample_ratio", &self.sample_ratio)
            .field("export_timeout", &self.export_timeout)
            .field("env", &self.env)
            .finish()
    }
}

impl std::fmt::Debug for OtelEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtelEnv")
            .field("sdk_disabled", &self.sdk_disabled)
            .field("service_name", &self.service_name)
            .field("resource_attributes", &self.resource_attributes)
            .field(
                "traces_endpoint",
                &self.traces_endpoint.as_deref().map(shown),
            )
            .field("endpoint", &self.endpoint.as_deref().map(shown))
            .field("traces_timeout", &self.traces_timeout)
            .field("timeout", &self.timeout)
            .field("traces_protocol", &self.traces_protocol)
            .field("protocol", &self.protocol)
            .field("sampler", &self.sampler)
            .field("sampler_arg", &self.sampler_arg)
            .finish()
    }
}

/// An endpoint as it may be shown (Debug, error messages): scheme, host and
/// port only, never its userinfo, path, query or fragment, where a
/// credential may have been put.
fn shown(e: &str) -> String {
    match url::Url::parse(e.trim()) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{}://{h}:{p}", u.scheme()),
            (Some(h), None) => format!("{}://{h}", u.scheme()),
            (None, _) => format!("{}:<no host>", u.scheme()),
        },
        Err(_) => "<not a URL>".to_owned(),
    }
}

/// How traces are sampled: always the parent's decision when a `traceparent`
/// came in (its `sampled` flag), else this for a new trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// `OTEL_TRACES_SAMPLER=always_on|always_off|traceidratio`: the parent is
    /// ignored (the specification's non-parent-based samplers).
    Root(f64),
    /// The default and `sample_ratio`: follow the parent, else keep this share.
    ParentBased(f64),
}

/// `[tracing]`, validated; `None` in `Settings` when tracing is off.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// The OTLP/gRPC endpoint (http:// or https://).
    pub endpoint: String,
    pub service_name: String,
    /// `OTEL_RESOURCE_ATTRIBUTES` (`service.name` excepted: see `service_name`).
    pub resource_attributes: Vec<(String, String)>,
    pub sampling: Sampling,
    pub export_timeout: Duration,
}

/// A problem with one key or variable: its name and what is wrong.
pub type Problem = (&'static str, String);

impl RawTracing {
    /// Validates `[tracing]` with the `OTEL_*` variables it was loaded with.
    /// Every problem is reported; `Ok(None)` when tracing is off.
    pub fn settings(&self) -> Result<Option<TracingSettings>, Vec<Problem>> {
        let mut problems = Vec::new();
        let env = &self.env;
        let disabled = match env.sdk_disabled.as_deref().map(str::trim) {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(v) => {
                problems.push((
                    "OTEL_SDK_DISABLED",
                    format!("{v:?} is neither \"true\" nor \"false\""),
                ));
                false
            }
        };
        let (endpoint_key, endpoint) = match &self.otlp_endpoint {
            Some(e) => ("tracing.otlp_endpoint", Some(e.trim())),
            None => match (&env.traces_endpoint, &env.endpoint) {
                (Some(e), _) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", Some(e.trim())),
                (None, Some(e)) => ("OTEL_EXPORTER_OTLP_ENDPOINT", Some(e.trim())),
                (None, None) => ("tracing.otlp_endpoint", None),
            },
        };
        let endpoint = endpoint.filter(|e| !e.is_empty());
        if let Some(e) = endpoint {
            if let Err(m) = check_endpoint(e) {
                problems.push((endpoint_key, m));
            }
        }
        for (key, value) in [
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", &env.traces_protocol),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", &env.protocol),
        ] {
            // Only the traces one counts when both are set.
            if key == "OTEL_EXPORTER_OTLP_PROTOCOL" && env.traces_protocol.is_some() {
                continue;
            }
            if let Some(p) = value.as_deref().map(str::trim) {
                if endpoint.is_some() && p != "grpc" {
                    problems.push((
                        key,
                        format!("{p:?}: tokengate exports OTLP over gRPC only (\"grpc\", port 4317 by convention)"),
                    ));
                }
            }
        }
        let service_name = match &self.service_name {
            Some(s) => {
                if s.trim().is_empty() {
                    problems.push(("tracing.service_name", "must not be empty".into()));
                }
                s.trim().to_owned()
            }
            None => env
                .service_name
                .clone()
                .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned()),
        };
        let mut resource_attributes = Vec::new();
        let mut service_from_resource = None;
        if let Some(attrs) = &env.resource_attributes {
            match parse_resource_attributes(attrs) {
                Ok(pairs) => {
                    for (k, v) in pairs {
                        if k == "service.name" {
                            service_from_resource = Some(v);
                        } else {
                            resource_attributes.push((k, v));
                        }
                    }
                }
                Err(m) => problems.push(("OTEL_RESOURCE_ATTRIBUTES", m)),
            }
        }
        // OTEL_SERVICE_NAME wins over the resource attribute (specification).
        let service_name = match (&self.service_name, &env.service_name, service_from_resource) {
            (None, None, Some(s)) => s,
            _ => service_name,
        };
        let sampling = match self.sample_ratio {
            Some(r) => {
                if !(0.0..=1.0).contains(&r) {
                    problems.push((
                        "tracing.sample_ratio",
                        format!("{r} is not between 0.0 and 1.0"),
                    ));
                }
                Sampling::ParentBased(r.clamp(0.0, 1.0))
            }
            None => match env_sampling(env) {
                Ok(s) => s,
                Err(p) => {
                    problems.push(p);
                    Sampling::ParentBased(1.0)
                }
            },
        };
        let export_timeout = match &self.export_timeout {
            Some(t) => match humantime::parse_duration(t.trim()) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    problems.push(("tracing.export_timeout", "must be more than 0s".into()));
                    DEFAULT_EXPORT_TIMEOUT
                }
                Err(e) => {
                    problems.push((
                        "tracing.export_timeout",
                        format!("invalid duration {t:?} ({e}); use e.g. \"10s\""),
                    ));
                    DEFAULT_EXPORT_TIMEOUT
                }
            },
            None => match (&env.traces_timeout, &env.timeout) {
                (Some(t), _) => env_millis("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", t, &mut problems),
                (None, Some(t)) => env_millis("OTEL_EXPORTER_OTLP_TIMEOUT", t, &mut problems),
                (None, None) => DEFAULT_EXPORT_TIMEOUT,
            },
        };
        // Tracing off (no endpoint, or OTEL_SDK_DISABLED=true): the `OTEL_*`
        // variables are not ours to judge. A platform sets them for a whole
        // pod, for other processes' SDKs (a Java agent's `jaeger_remote`
        // sampler...): refusing to start over them would stop a tokengate
        // that does not trace. tokengate's own keys are still checked.
        if endpoint.is_none() || disabled {
            problems.retain(|(key, _)| !key.starts_with("OTEL_"));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(match endpoint {
            Some(endpoint) if !disabled => Some(TracingSettings {
                endpoint: lowercase_scheme(endpoint),
                service_name,
                resource_attributes,
                sampling,
                export_timeout,
            }),
            _ => None,
        })
    }
}

/// An OTLP/gRPC endpoint: an absolute http(s) URL with a host and nothing
/// after the authority but `/` (gRPC paths are the exporter's).
fn check_endpoint(e: &str) -> Result<(), String> {
    let url = url::Url::parse(e).map_err(|err| format!("not a URL ({err})"))?;
    if !url.username().is_empty() || url.password().is_some() {
        // Checked first, so that no message below echoes the credential;
        // the header variables are the place for one.
        return Err("must not carry credentials (use OTEL_EXPORTER_OTLP_HEADERS)".into());
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{}: must be http:// or https://", shown(e)));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{}: has no host", shown(e)));
    }
    // Named without the path, query or fragment: an API key is sometimes put
    // there, and this message is printed and logged.
    if url.query().is_some() || url.path() != "/" || url.fragment().is_some() {
        return Err(format!(
            "{}/...: OTLP/gRPC takes no path, query or fragment, only scheme, host and port (e.g. http://otel-collector:4317)",
            shown(e)
        ));
    }
    Ok(())
}

/// `HTTPS://c:4317` as `https://c:4317`: the URL scheme is case-insensitive
/// (and validated so), but the exporter is given TLS only for an endpoint
/// that starts with `https://`; any other case would make every export fail.
fn lowercase_scheme(e: &str) -> String {
    match e.split_once("://") {
        Some((scheme, rest)) => format!("{}://{rest}", scheme.to_ascii_lowercase()),
        None => e.to_owned(),
    }
}

/// `key1=value1,key2=value2` (W3C Baggage octets, values percent-decoded).
fn parse_resource_attributes(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(format!("{pair:?} is not key=value"));
        };
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() {
            return Err(format!("{pair:?} has an empty key"));
        }
        let v = percent_decode(v).ok_or_else(|| format!("{pair:?}: bad percent-encoding"))?;
        out.push((k.to_owned(), v));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `OTEL_TRACES_SAMPLER` / `_ARG` (the specification's names; the ratio
/// defaults to 1.0).
fn env_sampling(env: &OtelEnv) -> Result<Sampling, Problem> {
    let ratio = || -> Result<f64, Problem> {
        match env.sampler_arg.as_deref().map(str::trim) {
            None => Ok(1.0),
            Some(a) => match a.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err((
                    "OTEL_TRACES_SAMPLER_ARG",
                    format!("{a:?} is not a ratio between 0.0 and 1.0"),
                )),
            },
        }
    };
    Ok(match env.sampler.as_deref().map(str::trim) {
        None | Some("parentbased_always_on") => Sampling::ParentBased(1.0),
        Some("parentbased_always_off") => Sampling::ParentBased(0.0),
        Some("parentbased_traceidratio") => Sampling::ParentBased(ratio()?),
        Some("always_on") => Sampling::Root(1.0),
        Some("always_off") => Sampling::Root(0.0),
        Some("traceidratio") => Sampling::Root(ratio()?),
        Some(other) => {
            return Err((
                "OTEL_TRACES_SAMPLER",
                format!("{other:?} is not supported (always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio)"),
            ))
        }
    })
}

/// An `OTEL_*_TIMEOUT` value: whole milliseconds (specification).
fn env_millis(key: &'static str, v: &str, problems: &mut Vec<Problem>) -> Duration {
    match v.trim().parse::<u64>() {
        Ok(ms) if ms > 0 => Duration::from_millis(ms),
        _ => {
            problems.push((
                key,
                format!("{v:?} is not a positive number of milliseconds"),
            ));
            DEFAULT_EXPORT_TIMEOUT
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> OtelEnv {
        let vars: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        OtelEnv::from_lookup(|k| vars.get(k).cloned())
    }

    fn raw(vars: &[(&str, &str)]) -> RawTracing {
        RawTracing {
            env: env(vars),
            ..RawTracing::default()
        }
    }

    #[test]
    fn off_by_default_and_on_with_an_endpoint() {
        assert_eq!(RawTracing::default().settings().unwrap(), None);
        let r = RawTracing {
            otlp_endpoint: Some("http://collector:4317".into()),
            ..RawTracing::default()
        };
        let s = r.settings().unwrap().unwrap();
        assert_eq!(s.endpoint, "http://collector:4317");
        assert_eq!(s.service_name, "tokengate");
        assert_eq!(s.sampling, Sampling::ParentBased(1.0));
        assert_eq!(s.export_timeout, Duration::from_secs(10));
    }

    #[test]
    fn the_otel_endpoint_alone_turns_tracing_on_unless_the_key_says_off() {
        let r = raw(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317")]);
        assert_eq!(r.settings().unwrap().unwrap().endpoint, "http://a:4317");
        // The traces-specific variable wins over the generic one.
        let r = raw(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4317"),
        ]);
        assert_eq!(r.settings().unwrap().unwrap().endpoint, "http://b:4317");
        // Our key wins; written empty, it turns tracing off.
        let mut r = raw(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317")]);
        r.otlp_endpoint = Some("http://c:4317".into());
        assert_eq!(r.settings().unwrap().unwrap().endpoint, "http://c:4317");
        r.otlp_endpoint = Some(String::new());
        assert_eq!(r.settings().unwrap(), None);
        // OTEL_SDK_DISABLED wins over everything.
        let mut r = raw(&[("OTEL_SDK_DISABLED", "true")]);
        r.otlp_endpoint = Some("http://c:4317".into());
        assert_eq!(r.settings().unwrap(), None);
    }

    #[test]
    fn service_name_and_resource_attributes() {
        let r = raw(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=from-attrs,deployment.environment=prod%20eu",
            ),
        ]);
        let s = r.settings().unwrap().unwrap();
        assert_eq!(s.service_name, "from-attrs");
        assert_eq!(
            s.resource_attributes,
            vec![("deployment.environment".to_owned(), "prod eu".to_owned())]
        );
        let mut r = raw(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
            ("OTEL_SERVICE_NAME", "from-env"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs"),
        ]);
        assert_eq!(r.settings().unwrap().unwrap().service_name, "from-env");
        r.service_name = Some("from-toml".into());
        assert_eq!(r.settings().unwrap().unwrap().service_name, "from-toml");
    }

    #[test]
    fn sampling_from_the_key_or_the_environment() {
        let mut r = raw(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ]);
        assert_eq!(
            r.settings().unwrap().unwrap().sampling,
            Sampling::Root(0.25)
        );
        r.sample_ratio = Some(0.5);
        assert_eq!(
            r.settings().unwrap().unwrap().sampling,
            Sampling::ParentBased(0.5)
        );
    }

    #[test]
    fn timeouts_from_the_key_or_the_environment() {
        let mut r = raw(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "3000"),
        ]);
        let s = r.settings().unwrap().unwrap();
        assert_eq!(s.export_timeout, Duration::from_secs(3));
        r.export_timeout = Some("500ms".into());
        let s = r.settings().unwrap().unwrap();
        assert_eq!(s.export_timeout, Duration::from_millis(500));
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let mut r = raw(&[
            ("OTEL_SDK_DISABLED", "maybe"),
            ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_RESOURCE_ATTRIBUTES", "novalue"),
        ]);
        r.otlp_endpoint = Some("ftp://user:pw@collector/".into());
        r.export_timeout = Some("soon".into());
        r.service_name = Some(" ".into());
        let problems = r.settings().unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [
                "OTEL_SDK_DISABLED",
                "tracing.otlp_endpoint",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                "tracing.service_name",
                "OTEL_RESOURCE_ATTRIBUTES",
                "OTEL_TRACES_SAMPLER",
                "tracing.export_timeout",
            ]
        );
        let r = RawTracing {
            otlp_endpoint: Some("http://collector:4317/v1/traces".into()),
            sample_ratio: Some(1.5),
            ..RawTracing::default()
        };
        let problems = r.settings().unwrap_err();
        assert_eq!(problems.len(), 2);
        // A URL with a password is refused without echoing it.
        let r = RawTracing {
            otlp_endpoint: Some("http://user:hunter2@collector:4317".into()),
            ..RawTracing::default()
        };
        let problems = r.settings().unwrap_err();
        assert!(!problems[0].1.contains("hunter2"), "{problems:?}");
    }

    #[test]
    fn an_endpoint_error_does_not_echo_a_secret_in_its_path_or_query() {
        for endpoint in [
            "http://collector:4317/?api-key=s3cr3t-q",
            "http://collector:4317/s3cr3t-q/v1/traces",
            "http://collector:4317#s3cr3t-q",
        ] {
            let r = RawTracing {
                otlp_endpoint: Some(endpoint.into()),
                ..RawTracing::default()
            };
            let problems = r.settings().unwrap_err();
            assert_eq!(problems.len(), 1, "{endpoint}: {problems:?}");
            assert_eq!(problems[0].0, "tracing.otlp_endpoint");
            assert!(!problems[0].1.contains("s3cr3t"), "{problems:?}");
            assert!(problems[0].1.contains("collector:4317"), "{problems:?}");
        }
    }

    #[test]
    fn debug_never_shows_an_endpoints_credentials_or_query() {
        // The file's key wins, so the environment's endpoint is never
        // validated: the credential in it stays in the raw config.
        let r = RawTracing {
            otlp_endpoint: Some("http://u:pw-file-1@collector:4317".into()),
            ..raw(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://u:pw-env-2@a:4317"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "https://b:4317/?k=pw-env-3",
                ),
            ])
        };
        let shown = format!("{r:?}");
        for secret in ["pw-file-1", "pw-env-2", "pw-env-3"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("collector:4317") && shown.contains("a:4317"),
            "{shown}"
        );
    }

    #[test]
    fn otel_variables_meant_for_other_processes_do_not_stop_tokengate_with_tracing_off() {
        // Set pod-wide for another container's SDK (a Java agent's sampler,
        // a timeout with a unit, HTTP protocol), with no endpoint for us.
        let foreign = [
            ("OTEL_TRACES_SAMPLER", "parentbased_jaeger_remote"),
            ("OTEL_TRACES_SAMPLER_ARG", "endpoint=http://jaeger:14250"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
            ("OTEL_RESOURCE_ATTRIBUTES", "novalue"),
            ("OTEL_SDK_DISABLED", "1"),
        ];
        assert_eq!(raw(&foreign).settings(), Ok(None));
        // Off by OTEL_SDK_DISABLED, the environment's endpoint included.
        let mut vars = foreign.to_vec();
        vars.retain(|(k, _)| *k != "OTEL_SDK_DISABLED");
        vars.push(("OTEL_SDK_DISABLED", "true"));
        vars.push(("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"));
        assert_eq!(raw(&vars).settings(), Ok(None));
        // Tracing on: the same variables are ours, and errors.
        vars.retain(|(k, _)| *k != "OTEL_SDK_DISABLED");
        let problems = raw(&vars).settings().unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:?}");
        // tokengate's own keys are errors whether tracing is on or not.
        let r = RawTracing {
            sample_ratio: Some(2.0),
            ..raw(&[("OTEL_SDK_DISABLED", "true")])
        };
        assert_eq!(r.settings().unwrap_err()[0].0, "tracing.sample_ratio");
    }

    #[test]
    fn an_upper_case_https_scheme_is_kept_as_https() {
        let r = RawTracing {
            otlp_endpoint: Some("HTTPS://Collector.example:4317".into()),
            ..RawTracing::default()
        };
        let s = r.settings().unwrap().unwrap();
        // `Otel::start` turns TLS on for this prefix.
        assert_eq!(s.endpoint, "https://Collector.example:4317");
    }
}
