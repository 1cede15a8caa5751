//! The access decision, and the route table that picks which rules apply.
//!
//! Pure: (introspection, route, now) → [`Principal`] or [`Deny`]; (method, host,
//! path) → [`Route`]. No I/O. The decision runs on *every* request, cache hits
//! included: the cache stores the introspection, never the decision (the bug
//! class of Oathkeeper's GHSA-qvp4-rpmr-xwrr).

use crate::answer::Answer;
use http::{HeaderName, Method};
use std::fmt;
use std::sync::Arc;

/// Who the caller is, as the upstream will see it in identity headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `sub`, else `client_id` (client-credentials tokens have no `sub`).
    pub subject: Option<String>,
    pub client_id: Option<String>,
    /// Space-separated scopes.
    pub scope: String,
    /// `[identity.claims]`: header → value, for claims the token has.
    pub claims: Vec<(HeaderName, String)>,
}

/// Why a token may not pass. Every variant but `InsufficientScope` is a 401
/// invalid_token: the token is not good *for this API*. A missing scope is a
/// 403: the token is fine, the caller lacks a right (RFC 6750 §3.1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Deny {
    #[error("token is not active")]
    Inactive,
    #[error("token expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token is not an access token")]
    NotAccessToken,
    #[error("issuer does not match require_issuer")]
    WrongIssuer,
    #[error("audience does not contain any of require_audience")]
    WrongAudience,
    #[error("client_id is not in allow_clients")]
    ClientNotAllowed,
    /// An identity value (`sub`, `client_id`, a `[identity.claims]` claim) that
    /// starts or ends with whitespace: HTTP drops it around a field value, so the
    /// upstream would read ` admin\t` as `admin`, another user.
    #[error("the {0} claim starts or ends with whitespace")]
    UnsafeIdentity(&'static str),
    #[error("missing scope(s) of require_scopes: {required}")]
    InsufficientScope {
        /// The route's required scopes, space-separated, for the challenge.
        required: String,
    },
}

/// What an authenticated request must satisfy (`[policy]`, or a route's override).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    /// The token's `aud` must contain at least one of these (if non-empty).
    pub audience: Vec<String>,
    /// The token's `iss` must equal this exactly (if set).
    pub issuer: Option<String>,
    /// The token must carry all of these.
    pub scopes: Vec<String>,
    /// The token's `client_id` must be one of these (if non-empty).
    pub clients: Vec<String>,
}

/// `token_type` values that name something other than an access token
/// (Keycloak's `typ` for refresh and ID tokens among them).
const NON_ACCESS_TOKEN_TYPES: &[&str] = &["refresh_token", "refresh", "id_token", "id"];

/// Checks an introspection answer against a route's requirements at `now_unix`.
pub fn evaluate(
    i: &Answer,
    req: &Requirements,
    now_unix: i64,
    claim_headers: &[(HeaderName, String)],
) -> Result<Principal, Deny> {
    if !i.active() {
        return Err(Deny::Inactive);
    }
    // RFC 7662 §4: "active" was true when the AS answered; the token's own
    // times still bind, so they are re-checked against our clock every time.
    if i.exp.is_some_and(|exp| exp <= now_unix) {
        return Err(Deny::Expired);
    }
    if i.nbf().is_some_and(|nbf| nbf > now_unix) {
        return Err(Deny::NotYetValid);
    }
    // A refresh token introspects as active at most servers (Hydra says so in
    // `token_use`); a resource server must not accept it.
    if i.token_type().is_some_and(|t| {
        NON_ACCESS_TOKEN_TYPES
            .iter()
            .any(|n| t.as_ref().eq_ignore_ascii_case(n))
    }) {
        return Err(Deny::NotAccessToken);
    }
    if let Some(token_use) = i.extra("token_use") {
        if !matches!(token_use.as_str(), Some("access_token" | "access")) {
            return Err(Deny::NotAccessToken);
        }
    }
    if let Some(issuer) = &req.issuer {
        if i.iss() != Some(issuer.as_str()) {
            return Err(Deny::WrongIssuer);
        }
    }
    if !req.audience.is_empty() && !i.aud().iter().any(|a| req.audience.contains(a)) {
        return Err(Deny::WrongAudience);
    }
    let client_id = i.client_id().map(|c| c.as_str().to_owned());
    if !req.clients.is_empty() && !client_id.as_ref().is_some_and(|c| req.clients.contains(c)) {
        return Err(Deny::ClientNotAllowed);
    }
    if !req.scopes.is_empty() {
        let have = i.scopes();
        if !req
            .scopes
            .iter()
            .all(|want| have.iter().any(|s| s.as_str() == want))
        {
            return Err(Deny::InsufficientScope {
                required: req.scopes.join(" "),
            });
        }
    }
    let claims: Vec<(HeaderName, String)> = claim_headers
        .iter()
        .filter_map(|(header, claim)| Some((header.clone(), i.claim_text(claim)?)))
        .collect();
    // Refused rather than trimmed: trimming would hand ` admin` the identity of
    // `admin`, a different subject at the AS.
    if i.sub().is_some_and(padded) {
        return Err(Deny::UnsafeIdentity("sub"));
    }
    if client_id.as_deref().is_some_and(padded) {
        return Err(Deny::UnsafeIdentity("client_id"));
    }
    if claims.iter().any(|(_, v)| padded(v)) {
        return Err(Deny::UnsafeIdentity("mapped"));
    }
    Ok(Principal {
        subject: i.sub().map(str::to_owned).or_else(|| client_id.clone()),
        client_id,
        scope: i.scope_string(),
        claims,
    })
}

/// Whether `v` starts or ends with whitespace (or a control character, which
/// `forward::header_safe` would turn into `?`, still at the edge). Unicode
/// whitespace too: some frameworks decode header bytes and `strip()` them.
fn padded(v: &str) -> bool {
    let edge = |c: char| c.is_whitespace() || c.is_control();
    v.starts_with(edge) || v.ends_with(edge)
}

/// Whether a route needs a token, and if so what the token must satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// No token needed; nothing is introspected. Identity headers are still stripped.
    Public,
    Token(Arc<Requirements>),
}

/// One `[[routes]]` entry, compiled.
#[derive(Debug, Clone)]
pub struct Route {
    /// For logs and `--check-config`: `routes[2]` or `default`.
    pub name: String,
    /// Normalised (see [`normalize_path`]); "/" matches everything.
    pub path_prefix: String,
    /// Empty: any method.
    pub methods: Vec<Method>,
    /// Lower-case host without port; `None`: any host.
    pub host: Option<String>,
    pub access: Access,
}

impl Route {
    fn matches(&self, method: &Method, host: Option<&str>, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.contains(method))
            && self.host.as_deref().is_none_or(|h| host == Some(h))
            && prefix_matches(&self.path_prefix, path)
    }
}

/// The ordered route table plus the default (`[policy]`) for unmatched requests.
#[derive(Debug, Clone)]
pub struct RouteTable {
    pub routes: Vec<Route>,
    pub default: Route,
}

/// The path means different things depending on how a server decodes it, and
/// those meanings fall under different routes: refuse rather than guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request path matches different routes depending on how it is decoded")]
pub struct AmbiguousPath;

impl RouteTable {
    /// Picks the first matching route (or the default).
    ///
    /// Matching uses the percent-decoded, dot-segment-normalised path, so that
    /// `/public/../admin/x` and `/%61dmin/x` cannot dodge the `/admin/` rule.
    /// An upstream may decode less than we do (not `%2F`, or nothing at all),
    /// so the route is also computed under those readings; if they disagree
    /// the request is refused ([`AmbiguousPath`]). The forwarded path is
    /// always the original bytes.
    pub fn select(
        &self,
        method: &Method,
        host: Option<&str>,
        raw_path: &str,
    ) -> Result<&Route, AmbiguousPath> {
        let host = host.map(host_without_port);
        let host = host.as_deref();
        let pick = |path: &str| {
            self.routes
                .iter()
                .position(|r| r.matches(method, host, path))
        };
        // The common case: nothing to decode and nothing to normalise, so all
        // three readings are the path itself. No allocation, one match.
        if !raw_path.contains('%') && is_normal(raw_path) {
            return Ok(pick(raw_path).map_or(&self.default, |i| &self.routes[i]));
        }
        let readings = [
            normalize_path(&percent_decode(raw_path, DecodeMode::All)),
            normalize_path(&percent_decode(raw_path, DecodeMode::KeepSlashes)),
            normalize_path(raw_path),
        ];
        let first = pick(&readings[0]);
        if readings[1..].iter().any(|p| pick(p) != first) {
            return Err(AmbiguousPath);
        }
        Ok(first.map_or(&self.default, |i| &self.routes[i]))
    }
}

impl fmt::Display for RouteTable {
    /// The resolved route table, one line per route, as `--check-config` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in self.routes.iter().chain(std::iter::once(&self.default)) {
            let methods = if r.methods.is_empty() {
                "*".to_owned()
            } else {
                r.methods
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            write!(
                f,
                "{:<10} {:<8} host={:<16} path={:<20} ",
                r.name,
                methods,
                r.host.as_deref().unwrap_or("*"),
                if r.name == "default" {
                    "(no match)"
                } else {
                    &r.path_prefix
                },
            )?;
            match &r.access {
                Access::Public => writeln!(f, "public")?,
                Access::Token(q) => writeln!(
                    f,
                    "token scopes=[{}] audience=[{}] issuer={} clients=[{}]",
                    q.scopes.join(" "),
                    q.audience.join(" "),
                    q.issuer.as_deref().unwrap_or("*"),
                    q.clients.join(" "),
                )?,
            }
        }
        Ok(())
    }
}

fn host_without_port(h: &str) -> std::borrow::Cow<'_, str> {
    let h = h.trim();
    // `[::1]:8080` → `[::1]`; `example.com:80` → `example.com`.
    let end = match h.rfind(':') {
        Some(i) if !h[i..].contains(']') => i,
        _ => h.len(),
    };
    let h = &h[..end];
    // Borrow when already lower-case (the usual case): no allocation.
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        h.to_ascii_lowercase().into()
    } else {
        h.into()
    }
}

/// Whether [`normalize_path`] would return `path` unchanged: "/", or "/"-separated
/// segments none of which is empty, "." or "..", and no "\\".
fn is_normal(path: &str) -> bool {
    if path == "/" {
        return true;
    }
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    !rest.contains('\\')
        && rest
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

/// `/admin/` matches `/admin` and `/admin/x`, never `/administrator`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

#[derive(Clone, Copy)]
enum DecodeMode {
    All,
    /// Leaves `%2F` and `%5C` encoded, as many servers do.
    KeepSlashes,
}

fn percent_decode(s: &str, mode: DecodeMode) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                let byte = (h * 16 + l) as u8;
                let keep =
                    matches!(mode, DecodeMode::KeepSlashes) && (byte == b'/' || byte == b'\\');
                if !keep {
                    out.push(byte);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes dot segments (RFC 3986 §5.2.4), treats `\` as `/`, and collapses
/// empty segments, so that every spelling of a path that some server would
/// resolve to `/a/b` is `/a/b` here.
pub fn normalize_path(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for seg in path.split(['/', '\\']) {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
#[allow(clippy::type_complexity, clippy::result_large_err)] // table tests; figment::Jail's error type
mod tests {
    use super::*;

    /// Parsed, then in its cached form (interned, as the cache makes it):
    /// every decision below goes through the conversion.
    fn tok(json: &str) -> Answer {
        let parsed = serde_json::from_str(json).unwrap();
        Answer::new(parsed, &crate::answer::Interner::default())
    }

    fn reqs() -> Requirements {
        Requirements::default()
    }

    #[test]
    fn decision_table() {
        let now = 1_000;
        let strict = Requirements {
            audience: vec!["api".into(), "api2".into()],
            issuer: Some("https://as".into()),
            scopes: vec!["read".into(), "write".into()],
            clients: vec!["app".into()],
        };
        let good = r#"{"active":true,"exp":2000,"iss":"https://as","aud":["x","api2"],"scope":"write read extra","client_id":"app"}"#;
        let none = Requirements::default();
        let cases: Vec<(&str, &str, &Requirements, Result<(), Deny>)> = vec![
            (
                "active with no times passes",
                r#"{"active":true}"#,
                &none,
                Ok(()),
            ),
            (
                "exp in the future passes",
                r#"{"active":true,"exp":1001}"#,
                &none,
                Ok(()),
            ),
            (
                "should fail because inactive",
                r#"{"active":false,"exp":2000}"#,
                &none,
                Err(Deny::Inactive),
            ),
            (
                "should fail because exp == now",
                r#"{"active":true,"exp":1000}"#,
                &none,
                Err(Deny::Expired),
            ),
            (
                "should fail because exp in the past",
                r#"{"active":true,"exp":10}"#,
                &none,
                Err(Deny::Expired),
            ),
            (
                "should fail because nbf in the future",
                r#"{"active":true,"nbf":1001}"#,
                &none,
                Err(Deny::NotYetValid),
            ),
            (
                "nbf == now passes",
                r#"{"active":true,"nbf":1000}"#,
                &none,
                Ok(()),
            ),
            (
                "nbf 0 (Keycloak) is no constraint",
                r#"{"active":true,"nbf":0}"#,
                &none,
                Ok(()),
            ),
            (
                "should fail because Hydra token_use says refresh",
                r#"{"active":true,"token_use":"refresh_token"}"#,
                &none,
                Err(Deny::NotAccessToken),
            ),
            (
                "Hydra access token passes",
                r#"{"active":true,"token_use":"access_token"}"#,
                &none,
                Ok(()),
            ),
            (
                "should fail because token_type is refresh_token",
                r#"{"active":true,"token_type":"refresh_token"}"#,
                &none,
                Err(Deny::NotAccessToken),
            ),
            (
                "should fail because Keycloak typ is Refresh",
                r#"{"active":true,"typ":"Refresh"}"#,
                &none,
                Err(Deny::NotAccessToken),
            ),
            (
                "should fail because Keycloak typ is ID",
                r#"{"active":true,"typ":"ID"}"#,
                &none,
                Err(Deny::NotAccessToken),
            ),
            ("all requirements met passes", good, &strict, Ok(())),
            (
                "should fail because iss differs",
                r#"{"active":true,"iss":"https://evil","aud":"api","scope":"read write","client_id":"app"}"#,
                &strict,
                Err(Deny::WrongIssuer),
            ),
            (
                "should fail because iss is a prefix only",
                r#"{"active":true,"iss":"https://as/","aud":"api","scope":"read write","client_id":"app"}"#,
                &strict,
                Err(Deny::WrongIssuer),
            ),
            (
                "should fail because iss missing",
                r#"{"active":true,"aud":"api","scope":"read write","client_id":"app"}"#,
                &strict,
                Err(Deny::WrongIssuer),
            ),
            (
                "should fail because aud is another API",
                r#"{"active":true,"iss":"https://as","aud":"other","scope":"read write","client_id":"app"}"#,
                &strict,
                Err(Deny::WrongAudience),
            ),
            (
                "should fail because aud missing",
                r#"{"active":true,"iss":"https://as","scope":"read write","client_id":"app"}"#,
                &strict,
                Err(Deny::WrongAudience),
            ),
            (
                "should fail because client not allowed",
                r#"{"active":true,"iss":"https://as","aud":"api","scope":"read write","client_id":"other"}"#,
                &strict,
                Err(Deny::ClientNotAllowed),
            ),
            (
                "should fail because client_id missing",
                r#"{"active":true,"iss":"https://as","aud":"api","scope":"read write"}"#,
                &strict,
                Err(Deny::ClientNotAllowed),
            ),
            (
                "should fail because one scope missing",
                r#"{"active":true,"iss":"https://as","aud":"api","scope":"read","client_id":"app"}"#,
                &strict,
                Err(Deny::InsufficientScope {
                    required: "read write".into(),
                }),
            ),
            (
                "should fail because scope is a substring only",
                r#"{"active":true,"iss":"https://as","aud":"api","scope":"readwrite","client_id":"app"}"#,
                &strict,
                Err(Deny::InsufficientScope {
                    required: "read write".into(),
                }),
            ),
            (
                "array scope satisfies",
                r#"{"active":true,"iss":"https://as","aud":"api","scope":["read","write"],"client_id":"app"}"#,
                &strict,
                Ok(()),
            ),
            (
                "should fail with 401 before 403: wrong aud and no scope",
                r#"{"active":true,"iss":"https://as","aud":"x","client_id":"app"}"#,
                &strict,
                Err(Deny::WrongAudience),
            ),
        ];
        for (name, json, req, want) in cases {
            assert_eq!(
                evaluate(&tok(json), req, now, &[]).map(|_| ()),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn principal_and_claims() {
        let claims = vec![
            (HeaderName::from_static("x-auth-email"), "email".to_owned()),
            (
                HeaderName::from_static("x-auth-roles"),
                "realm_access.roles".to_owned(),
            ),
            (HeaderName::from_static("x-auth-missing"), "nope".to_owned()),
            (HeaderName::from_static("x-auth-iss"), "iss".to_owned()),
        ];
        let i = tok(
            r#"{"active":true,"client_id":"app","scope":"a b","email":"a@b.c","iss":"https://as","realm_access":{"roles":["r1","r2"]}}"#,
        );
        let p = evaluate(&i, &reqs(), 0, &claims).unwrap();
        assert_eq!(
            p.subject.as_deref(),
            Some("app"),
            "sub falls back to client_id"
        );
        assert_eq!(p.scope, "a b");
        let got: Vec<(&str, &str)> = p
            .claims
            .iter()
            .map(|(h, v)| (h.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("x-auth-email", "a@b.c"),
                ("x-auth-roles", "r1 r2"),
                ("x-auth-iss", "https://as")
            ]
        );
        let p = evaluate(
            &tok(r#"{"active":true,"client_id":"app","sub":"alice"}"#),
            &reqs(),
            0,
            &[],
        )
        .unwrap();
        assert_eq!(p.subject.as_deref(), Some("alice"));
        assert_eq!(p.client_id.as_deref(), Some("app"));
    }

    /// HTTP trims whitespace around a field value, so ` admin\t` would reach
    /// the upstream as `admin`: such an identity is refused, not trimmed.
    #[test]
    fn padded_identity_is_refused() {
        let email = [(HeaderName::from_static("x-auth-email"), "email".to_owned())];
        for (json, which) in [
            (r#"{"active":true,"sub":" admin\t"}"#, "sub"),
            (r#"{"active":true,"sub":"admin "}"#, "sub"),
            (r#"{"active":true,"sub":"\u00a0admin"}"#, "sub"),
            (r#"{"active":true,"sub":"admin\n"}"#, "sub"),
            (r#"{"active":true,"client_id":" app"}"#, "client_id"),
            (
                r#"{"active":true,"sub":"a","client_id":"app\t"}"#,
                "client_id",
            ),
            (r#"{"active":true,"sub":"a","email":"root@x "}"#, "mapped"),
        ] {
            assert_eq!(
                evaluate(&tok(json), &reqs(), 0, &email),
                Err(Deny::UnsafeIdentity(which)),
                "{json}"
            );
        }
        // Inner spaces are the value's own: kept.
        let p = evaluate(
            &tok(r#"{"active":true,"sub":"Jane Doe","email":"a b@x"}"#),
            &reqs(),
            0,
            &email,
        )
        .unwrap();
        assert_eq!(p.subject.as_deref(), Some("Jane Doe"));
    }

    fn route(
        name: &str,
        prefix: &str,
        methods: &[&str],
        host: Option<&str>,
        public: bool,
    ) -> Route {
        Route {
            name: name.into(),
            path_prefix: normalize_path(prefix),
            methods: methods.iter().map(|m| m.parse().unwrap()).collect(),
            host: host.map(str::to_owned),
            access: if public {
                Access::Public
            } else {
                Access::Token(Arc::new(Requirements::default()))
            },
        }
    }

    #[test]
    fn route_matching_table() {
        let table = RouteTable {
            routes: vec![
                route("healthz", "/healthz", &[], None, true),
                route("public", "/public/", &[], None, true),
                route("admin-w", "/admin/", &["POST", "DELETE"], None, false),
                route("admin", "/admin/", &[], None, false),
                route("hosted", "/h", &[], Some("api.example.com"), true),
            ],
            default: route("default", "/", &[], None, false),
        };
        let pick = |m: &str, host: Option<&str>, p: &str| {
            table
                .select(&m.parse().unwrap(), host, p)
                .map(|r| r.name.clone())
        };
        let cases: &[(&str, &str, Option<&str>, &str, Result<&str, AmbiguousPath>)] = &[
            ("exact prefix", "GET", None, "/healthz", Ok("healthz")),
            ("below prefix", "GET", None, "/healthz/live", Ok("healthz")),
            (
                "segment boundary: /healthzz is not /healthz",
                "GET",
                None,
                "/healthzz",
                Ok("default"),
            ),
            (
                "segment boundary: /administrator is not /admin/",
                "GET",
                None,
                "/administrator",
                Ok("default"),
            ),
            (
                "trailing-slash prefix matches the bare path",
                "GET",
                None,
                "/admin",
                Ok("admin"),
            ),
            (
                "method-specific route first",
                "DELETE",
                None,
                "/admin/x",
                Ok("admin-w"),
            ),
            (
                "other methods fall through to the next route",
                "GET",
                None,
                "/admin/x",
                Ok("admin"),
            ),
            (
                "traversal cannot dodge: /public/../admin/x",
                "GET",
                None,
                "/public/../admin/x",
                Ok("admin"),
            ),
            (
                "dot segments are removed",
                "GET",
                None,
                "/public/./x",
                Ok("public"),
            ),
            (
                "double slashes collapse",
                "GET",
                None,
                "//admin//x",
                Ok("admin"),
            ),
            (
                "backslash is a separator",
                "GET",
                None,
                "/admin\\x",
                Ok("admin"),
            ),
            (
                "query is not part of the path",
                "GET",
                None,
                "/healthz",
                Ok("healthz"),
            ),
            (
                "percent-encoded letters cannot dodge (ambiguous → refused)",
                "GET",
                None,
                "/%61dmin/x",
                Err(AmbiguousPath),
            ),
            (
                "encoded traversal to a public path is refused",
                "GET",
                None,
                "/admin/..%2Fpublic/x",
                Err(AmbiguousPath),
            ),
            (
                "encoded dots are refused when they change the route",
                "GET",
                None,
                "/admin/%2e%2e/public/x",
                Err(AmbiguousPath),
            ),
            (
                "harmless encoding is fine",
                "GET",
                None,
                "/public/a%20b",
                Ok("public"),
            ),
            (
                "host-specific route matches its host",
                "GET",
                Some("API.example.com:8443"),
                "/h/x",
                Ok("hosted"),
            ),
            (
                "host-specific route ignores other hosts",
                "GET",
                Some("other"),
                "/h/x",
                Ok("default"),
            ),
            (
                "host-specific route needs a host",
                "GET",
                None,
                "/h/x",
                Ok("default"),
            ),
        ];
        for (name, m, host, path, want) in cases {
            assert_eq!(pick(m, *host, path), want.map(str::to_owned), "{name}");
        }
    }

    #[test]
    fn normalisation() {
        for (input, want) in [
            ("/", "/"),
            ("", "/"),
            ("/a/b/../c", "/a/c"),
            ("/../../etc", "/etc"),
            ("/a/./b/", "/a/b"),
            ("a//b", "/a/b"),
        ] {
            assert_eq!(normalize_path(input), want, "{input}");
        }
        // The fast path of `select` skips normalisation exactly when it would
        // change nothing.
        for p in [
            "/", "", "/a", "/a/b", "/a/", "a", "//a", "/a//b", "/./a", "/a/.", "/a/..", "/..",
            "/a\\b", "/.a", "/a..", "/a/.b/c", "/...", "/a/b/c/d",
        ] {
            assert_eq!(is_normal(p), normalize_path(p) == p, "{p:?}");
        }
        assert_eq!(percent_decode("/%2Fx%zz%4", DecodeMode::All), "//x%zz%4");
        assert_eq!(
            percent_decode("/%2Fx%41", DecodeMode::KeepSlashes),
            "/%2FxA"
        );
    }
}
