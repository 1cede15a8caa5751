//! `[policy]` and `[[routes]]` compiled into the ordered route table: every
//! route's every key checked, each error reported.

use super::error::*;
use super::raw::*;

impl RawConfig {
    /// Compiles `[policy]` and `[[routes]]` into the ordered route table.
    pub(super) fn route_table(&self) -> Result<crate::policy::RouteTable, ConfigError> {
        use crate::policy::{normalize_path, Access, Requirements, Route, RouteTable};
        use std::sync::Arc;
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let p = &self.policy;
        let defaults = Requirements {
            audience: p.require_audience.clone(),
            issuer: non_empty(&p.require_issuer),
            scopes: p.require_scopes.clone(),
            any_scopes: p.require_any_scope.clone(),
            clients: p.allow_clients.clone(),
            issuer_names: Vec::new(),
        };
        // Every route's every key is checked; a route with an error is
        // reported and left out, and the table is returned only without errors.
        let mut errors = Errors::default();
        let mut routes = Vec::with_capacity(self.routes.len());
        for (n, r) in self.routes.iter().enumerate() {
            let name = format!("routes[{n}]");
            let before = errors.len();
            errors.check(
                r.path_prefix.starts_with('/'),
                "routes.path_prefix",
                format!("{name}: {:?} must start with '/'", r.path_prefix),
            );
            let mut methods = Vec::new();
            for m in &r.methods {
                methods.extend(errors.take(
                    http::Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes()).map_err(
                        |_| {
                            ConfigError::invalid(
                                "routes.methods",
                                format!("{name}: {m:?} is not a method"),
                            )
                        },
                    ),
                ));
            }
            let overrides = r.require_audience.is_some()
                || r.require_issuer.is_some()
                || r.require_scopes.is_some()
                || r.require_any_scope.is_some()
                || r.allow_clients.is_some();
            let access = if r.public {
                errors.check(
                    !overrides,
                    "routes.public",
                    format!("{name} is public but also sets requirements; a public route checks no token"),
                );
                Access::Public
            } else {
                Access::Token(Arc::new(Requirements {
                    audience: r
                        .require_audience
                        .clone()
                        .unwrap_or_else(|| defaults.audience.clone()),
                    issuer: match &r.require_issuer {
                        Some(i) => non_empty(i),
                        None => defaults.issuer.clone(),
                    },
                    scopes: r
                        .require_scopes
                        .clone()
                        .unwrap_or_else(|| defaults.scopes.clone()),
                    any_scopes: r
                        .require_any_scope
                        .clone()
                        .unwrap_or_else(|| defaults.any_scopes.clone()),
                    clients: r
                        .allow_clients
                        .clone()
                        .unwrap_or_else(|| defaults.clients.clone()),
                    // Checked against `[issuers]` by `issuer_settings`;
                    // none, and `["default"]`, both mean the default issuer.
                    issuer_names: {
                        let names = match (&r.issuers[..], r.issuer.as_str()) {
                            ([], "") => Vec::new(),
                            ([], one) => vec![one.to_owned()],
                            (many, _) => many.to_vec(),
                        };
                        if names == [crate::config::DEFAULT_ISSUER] {
                            Vec::new()
                        } else {
                            names
                        }
                    },
                }))
            };
            // Compared with the request's host as `normalize_host` spells it
            // (lower case, no trailing dot), so `admin.example.com.` here
            // means the same as in a request.
            let host = if r.host.contains([':', '/']) {
                errors.push(ConfigError::invalid(
                    "routes.host",
                    format!("{name}: {:?} must be a bare host name (no port, no scheme); ports are ignored when matching", r.host),
                ));
                None
            } else {
                match crate::policy::normalize_host(&r.host) {
                    Ok(h) => h.map(|(h, _)| h.into_owned()),
                    Err(_) => {
                        errors.push(ConfigError::invalid(
                            "routes.host",
                            format!("{name}: {:?} is not a host name (letters, digits, '-', '_' and dots; use punycode for non-ASCII names)", r.host),
                        ));
                        None
                    }
                }
            };
            if errors.len() > before {
                continue;
            }
            routes.push(Route {
                name,
                path_prefix: normalize_path(&r.path_prefix),
                methods,
                host,
                access,
            });
        }
        errors.finish(|| RouteTable {
            routes,
            default: Route {
                name: "default".into(),
                path_prefix: "/".into(),
                methods: Vec::new(),
                host: None,
                access: Access::Token(Arc::new(defaults)),
            },
        })
    }
}
