//! `mode = "forward_auth"`: tokengate has no upstream and answers the auth
//! sub-request of another proxy. The original request is recovered from the
//! convention of the front proxy (`[forward_auth] convention`):
//!
//! | convention               | method                | path and query      | host               |
//! |--------------------------|-----------------------|---------------------|--------------------|
//! | `nginx` (`auth_request`) | `X-Original-Method`   | `X-Original-URI`    | `X-Forwarded-Host` |
//! | `traefik` (`ForwardAuth`)| `X-Forwarded-Method`  | `X-Forwarded-Uri`   | `X-Forwarded-Host` |
//! | `envoy` (`ext_authz` HTTP)| the request's        | the request's, minus `[forward_auth] path_prefix` | `Host` |
//!
//! The route policy then applies to that original request, exactly as in proxy
//! mode. The convention's headers are trusted: only the front proxy may reach
//! tokengate, and it overwrites them. The *other* conventions' headers are not
//! overwritten by that proxy: nginx and Traefik copy every client header into
//! the sub-request, so a client-sent `X-Original-URI` reaches tokengate next to
//! Traefik's `X-Forwarded-Uri`. Hence:
//!
//! * a fixed convention reads only its own headers and ignores the others
//!   (ignored, not refused: an outer proxy such as ingress-nginx may set
//!   `X-Original-URI` on every request, and an ignored header cannot choose
//!   anything), and requires all of its own, so that a front proxy that does not
//!   set one (and would then pass a client's copy on) fails closed and visibly;
//! * `auto` (the default, for configurations written before the key existed)
//!   picks the one convention whose headers are present and refuses a request
//!   that carries two (nginx's, Traefik's, or a path under the Envoy
//!   `path_prefix`) with 400: no front proxy sends two, so the second one came
//!   from the client.
//!
//! Either way a convention header sent twice is refused: the proxy sets one,
//! and a second copy can only be the client's.

use crate::config::ConventionSetting;
use crate::config::IdentitySettings;
use crate::http::Body;
use crate::policy::Principal;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};

static X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
static X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
static X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
static X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

#[derive(Debug, thiserror::Error)]
pub enum ForwardAuthError {
    #[error("{0} is not an origin-form request target (it must start with '/')")]
    BadUri(&'static str),
    #[error("{0} is not an HTTP method")]
    BadMethod(&'static str),
    #[error("the request path is outside forward_auth.path_prefix")]
    OutsidePrefix,
    #[error("{0} is missing: the front proxy must set it")]
    Missing(&'static str),
    #[error("{0} appears more than once")]
    Repeated(&'static str),
    #[error(
        "the sub-request carries the headers of two front-proxy conventions ({0} and {1}); \
         set forward_auth.convention to the front proxy's"
    )]
    TwoConventions(&'static str, &'static str),
}

/// Which front proxy's headers described the original request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convention {
    Nginx,
    Traefik,
    Envoy,
}

/// The request the front proxy is asking about.
#[derive(Debug)]
pub struct Original {
    /// Which convention the request was read by; the unit tests pin it.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "read by the unit tests; the pipeline needs only the request"
        )
    )]
    pub convention: Convention,
    pub method: Method,
    pub target: PathAndQuery,
    pub host: Option<HeaderValue>,
}

/// The headers of one header-based convention, with their names as the error
/// messages spell them.
struct Names {
    method: (&'static HeaderName, &'static str),
    uri: (&'static HeaderName, &'static str),
}

const NGINX: Names = Names {
    method: (&X_ORIGINAL_METHOD, "X-Original-Method"),
    uri: (&X_ORIGINAL_URI, "X-Original-URI"),
};

const TRAEFIK: Names = Names {
    method: (&X_FORWARDED_METHOD, "X-Forwarded-Method"),
    uri: (&X_FORWARDED_URI, "X-Forwarded-Uri"),
};

/// Recovers the original request from the sub-request, in the configured
/// convention (see the module docs for what `auto` does).
pub fn original<B>(
    req: &Request<B>,
    setting: ConventionSetting,
    envoy_prefix: &str,
) -> Result<Original, ForwardAuthError> {
    let (convention, strict) = match setting {
        ConventionSetting::Auto => (detect(req, envoy_prefix)?, false),
        ConventionSetting::Nginx => (Convention::Nginx, true),
        ConventionSetting::Traefik => (Convention::Traefik, true),
        ConventionSetting::Envoy => (Convention::Envoy, true),
    };
    match convention {
        Convention::Nginx => from_headers(req, Convention::Nginx, &NGINX, strict),
        Convention::Traefik => from_headers(req, Convention::Traefik, &TRAEFIK, strict),
        Convention::Envoy => from_request_line(req, envoy_prefix),
    }
}

/// `auto`: the one convention the sub-request shows signs of. The Envoy form
/// has no headers of its own; with a `path_prefix` configured, a path under it
/// is its sign (so a client header cannot turn an Envoy check into an nginx
/// one); without one, it is what is left when no other convention's header is
/// there.
fn detect<B>(req: &Request<B>, envoy_prefix: &str) -> Result<Convention, ForwardAuthError> {
    let h = req.headers();
    let nginx = h.contains_key(&X_ORIGINAL_URI) || h.contains_key(&X_ORIGINAL_METHOD);
    let traefik = h.contains_key(&X_FORWARDED_URI) || h.contains_key(&X_FORWARDED_METHOD);
    let envoy =
        !envoy_prefix.is_empty() && strip_prefix(path_and_query(req), envoy_prefix).is_some();
    const N: &str = "nginx X-Original-*";
    const T: &str = "Traefik X-Forwarded-Method/-Uri";
    const E: &str = "a path under the Envoy path_prefix";
    match (nginx, traefik, envoy) {
        (true, true, _) => Err(ForwardAuthError::TwoConventions(N, T)),
        (true, false, true) => Err(ForwardAuthError::TwoConventions(N, E)),
        (false, true, true) => Err(ForwardAuthError::TwoConventions(T, E)),
        (true, false, false) => Ok(Convention::Nginx),
        (false, true, false) => Ok(Convention::Traefik),
        (false, false, _) => Ok(Convention::Envoy),
    }
}

/// nginx and Traefik: the original request in headers. `strict` (a configured
/// convention) requires every one of them; `auto` keeps the older fallbacks to
/// the sub-request's own method and `Host`.
fn from_headers<B>(
    req: &Request<B>,
    convention: Convention,
    names: &Names,
    strict: bool,
) -> Result<Original, ForwardAuthError> {
    let h = req.headers();
    let (uri_header, uri_name) = names.uri;
    let uri = one(h, uri_header, uri_name)?.ok_or(ForwardAuthError::Missing(uri_name))?;
    let target = uri
        .to_str()
        .ok()
        .and_then(origin_form)
        .ok_or(ForwardAuthError::BadUri(uri_name))?;
    let (method_header, method_name) = names.method;
    let method = match one(h, method_header, method_name)? {
        Some(v) => Method::from_bytes(v.as_bytes())
            .map_err(|_| ForwardAuthError::BadMethod(method_name))?,
        None if strict => return Err(ForwardAuthError::Missing(method_name)),
        None => req.method().clone(),
    };
    // The sub-request's own Host names tokengate (nginx `proxy_pass`, Traefik
    // `address`), not the original host.
    let host = match one(h, &X_FORWARDED_HOST, "X-Forwarded-Host")? {
        Some(v) => Some(v.clone()),
        None if strict => return Err(ForwardAuthError::Missing("X-Forwarded-Host")),
        None => crate::upstream::forward::inbound_host(req),
    };
    Ok(Original {
        convention,
        method,
        target,
        host,
    })
}

/// Envoy: the sub-request *is* the original request, under `path_prefix`.
/// `X-Forwarded-Host` is not Envoy's: there it could only be the client's.
fn from_request_line<B>(
    req: &Request<B>,
    envoy_prefix: &str,
) -> Result<Original, ForwardAuthError> {
    let rest =
        strip_prefix(path_and_query(req), envoy_prefix).ok_or(ForwardAuthError::OutsidePrefix)?;
    let target = origin_form(rest).ok_or(ForwardAuthError::BadUri("the request target"))?;
    Ok(Original {
        convention: Convention::Envoy,
        method: req.method().clone(),
        target,
        host: crate::upstream::forward::inbound_host(req),
    })
}

fn path_and_query<B>(req: &Request<B>) -> &str {
    req.uri()
        .path_and_query()
        .map(PathAndQuery::as_str)
        .unwrap_or("/")
}

/// The one value of `name`; a second copy is refused (see the module docs).
fn one<'a>(
    h: &'a HeaderMap,
    name: &HeaderName,
    spelled: &'static str,
) -> Result<Option<&'a HeaderValue>, ForwardAuthError> {
    let mut values = h.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ForwardAuthError::Repeated(spelled));
    }
    Ok(first)
}

fn origin_form(s: &str) -> Option<PathAndQuery> {
    if !s.starts_with('/') {
        return None;
    }
    s.parse().ok()
}

/// `/ext_authz/api/x?q` minus `/ext_authz` is `/api/x?q`. The prefix must end
/// at a segment boundary (Envoy sends prefix + original path, and the original
/// path starts with '/'); the bare prefix means `/`.
fn strip_prefix<'a>(pq: &'a str, prefix: &str) -> Option<&'a str> {
    if prefix.is_empty() {
        return Some(pq);
    }
    let rest = pq.strip_prefix(prefix)?;
    if rest.is_empty() {
        Some("/")
    } else {
        rest.starts_with('/').then_some(rest)
    }
}

/// At start-up: `auto` is safe against the known attack, but cannot protect
/// an Envoy without `path_prefix` that passes every client header on (a
/// client's `X-Original-URI` then looks like nginx's), and it refuses requests
/// that legitimately carry another convention's headers. Say so once.
pub fn warn_if_auto(settings: &crate::config::Settings) {
    if settings.mode == crate::config::Mode::ForwardAuth
        && settings.forward_auth_convention == ConventionSetting::Auto
    {
        tracing::warn!(
            key = "forward_auth.convention",
            "forward_auth.convention is \"auto\": set it to the front proxy's (\"nginx\", \"traefik\" or \"envoy\") so that only its headers are read"
        );
    }
}

/// The "allowed" answer: 200, no body, the identity headers for the front proxy
/// to copy onto the request it forwards (nginx `auth_request_set`, Traefik
/// `authResponseHeaders`, Envoy `allowed_upstream_headers`).
pub fn allowed(principal: Option<&Principal>, id: &IdentitySettings) -> Response<Body> {
    let mut resp = Response::new(
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(p) = principal {
        crate::upstream::forward::insert_identity(h, p, id);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    type Want = Result<(Convention, &'static str, &'static str, Option<&'static str>), ()>;

    #[test]
    fn auto_reads_the_one_convention_present() {
        // (request, prefix) → (convention, method, target, host)
        let cases: Vec<(Request<()>, &str, Want)> = vec![
            (
                req(
                    "GET",
                    "/_auth",
                    &[
                        ("x-original-uri", "/admin/x?y=1"),
                        ("x-original-method", "DELETE"),
                        ("host", "api.example"),
                    ],
                ),
                "",
                Ok((
                    Convention::Nginx,
                    "DELETE",
                    "/admin/x?y=1",
                    Some("api.example"),
                )),
            ),
            (
                req("GET", "/_auth", &[("x-original-uri", "/a")]),
                "",
                Ok((Convention::Nginx, "GET", "/a", None)),
            ),
            (
                req(
                    "GET",
                    "/verify",
                    &[
                        ("x-forwarded-uri", "/b/c"),
                        ("x-forwarded-method", "POST"),
                        ("x-forwarded-host", "app.example"),
                        ("x-forwarded-proto", "https"),
                        ("host", "gate"),
                    ],
                ),
                "",
                Ok((Convention::Traefik, "POST", "/b/c", Some("app.example"))),
            ),
            (
                req("PUT", "/ext_authz/items/7?x=1", &[("host", "shop.example")]),
                "/ext_authz",
                Ok((
                    Convention::Envoy,
                    "PUT",
                    "/items/7?x=1",
                    Some("shop.example"),
                )),
            ),
            (
                req("GET", "/ext_authz", &[]),
                "/ext_authz",
                Ok((Convention::Envoy, "GET", "/", None)),
            ),
            (
                req("GET", "/items", &[]),
                "",
                Ok((Convention::Envoy, "GET", "/items", None)),
            ),
            (req("GET", "/ext_authzX/a", &[]), "/ext_authz", Err(())),
            (req("GET", "/other", &[]), "/ext_authz", Err(())),
            (
                req("GET", "/", &[("x-original-uri", "http://evil/x")]),
                "",
                Err(()),
            ),
            (
                req("GET", "/", &[("x-forwarded-uri", "relative")]),
                "",
                Err(()),
            ),
            (
                req(
                    "GET",
                    "/",
                    &[("x-original-uri", "/a"), ("x-original-method", "G E T")],
                ),
                "",
                Err(()),
            ),
        ];
        for (r, prefix, want) in cases {
            let got = original(&r, ConventionSetting::Auto, prefix);
            match (got, want) {
                (Ok(o), Ok((conv, method, target, host))) => {
                    assert_eq!(o.convention, conv, "{r:?}");
                    assert_eq!(o.method.as_str(), method, "{r:?}");
                    assert_eq!(o.target.as_str(), target, "{r:?}");
                    assert_eq!(o.host.as_ref().map(|h| h.to_str().unwrap()), host, "{r:?}");
                }
                (Err(_), Err(())) => {}
                (got, want) => panic!("{r:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    /// Traefik's description of `DELETE /admin/users` on api.example.
    const TRAEFIK_DELETE: [(&str, &str); 4] = [
        ("x-forwarded-method", "DELETE"),
        ("x-forwarded-uri", "/admin/users"),
        ("x-forwarded-host", "api.example"),
        ("x-forwarded-proto", "https"),
    ];

    /// nginx's description of `DELETE /admin/users` on api.example.
    const NGINX_DELETE: [(&str, &str); 3] = [
        ("x-original-method", "DELETE"),
        ("x-original-uri", "/admin/users"),
        ("x-forwarded-host", "api.example"),
    ];

    fn with(
        base: &[(&'static str, &'static str)],
        extra: &[(&'static str, &'static str)],
    ) -> Vec<(&'static str, &'static str)> {
        base.iter().chain(extra).copied().collect()
    }

    /// The attack: Traefik copies the client's headers into the
    /// sub-request and overwrites only its own, so the client adds the other
    /// conventions' headers to choose the route.
    #[test]
    fn another_conventions_headers_never_choose_the_request() {
        use ConventionSetting::*;
        let spoof_nginx: &[(&str, &str)] = &[
            ("x-original-uri", "/public/anything"),
            ("x-original-method", "GET"),
        ];
        let spoof_traefik: &[(&str, &str)] = &[
            ("x-forwarded-uri", "/public/anything"),
            ("x-forwarded-method", "GET"),
            ("x-forwarded-host", "www.example"),
        ];
        // A fixed convention reads its own headers and ignores the rest.
        for extra in [spoof_nginx, &spoof_nginx[..1], &spoof_nginx[1..]] {
            let r = req("GET", "/_tokengate", &with(&TRAEFIK_DELETE, extra));
            let o = original(&r, Traefik, "").unwrap();
            assert_eq!(o.convention, Convention::Traefik);
            assert_eq!(
                (o.method.as_str(), o.target.as_str()),
                ("DELETE", "/admin/users")
            );
            assert_eq!(o.host.unwrap(), "api.example");
        }
        let r = req(
            "GET",
            "/_tokengate",
            &with(&NGINX_DELETE, &spoof_traefik[..2]),
        );
        let o = original(&r, Nginx, "").unwrap();
        assert_eq!(
            (o.method.as_str(), o.target.as_str()),
            ("DELETE", "/admin/users")
        );
        let r = req(
            "DELETE",
            "/ext_authz/admin/users",
            &with(
                &[("host", "api.example")],
                &with(spoof_nginx, spoof_traefik),
            ),
        );
        let o = original(&r, Envoy, "/ext_authz").unwrap();
        assert_eq!(o.convention, Convention::Envoy);
        assert_eq!(
            (o.method.as_str(), o.target.as_str()),
            ("DELETE", "/admin/users")
        );
        // X-Forwarded-Host is not Envoy's: the client's copy is ignored.
        assert_eq!(o.host.unwrap(), "api.example");

        // `auto` cannot tell whose headers are whose: two conventions → refused.
        let refused = |r: &Request<()>, prefix: &str| {
            let e = original(r, Auto, prefix).unwrap_err();
            assert!(
                matches!(e, ForwardAuthError::TwoConventions(..)),
                "{r:?}: {e}"
            );
        };
        for extra in [spoof_nginx, &spoof_nginx[..1], &spoof_nginx[1..]] {
            refused(
                &req("GET", "/_tokengate", &with(&TRAEFIK_DELETE, extra)),
                "",
            );
        }
        for extra in [&spoof_traefik[..1], &spoof_traefik[1..2]] {
            refused(&req("GET", "/_tokengate", &with(&NGINX_DELETE, extra)), "");
        }
        // With a path_prefix, a path under it is the Envoy convention's sign.
        for extra in [&spoof_nginx[..1], &spoof_traefik[..1]] {
            refused(
                &req("DELETE", "/ext_authz/admin/users", extra),
                "/ext_authz",
            );
        }
        // A client-sent X-Forwarded-Host is not a convention of its own.
        let r = req(
            "DELETE",
            "/ext_authz/admin/users",
            &[("x-forwarded-host", "www.example"), ("host", "api.example")],
        );
        let o = original(&r, Auto, "/ext_authz").unwrap();
        assert_eq!(o.convention, Convention::Envoy);
        assert_eq!(o.host.unwrap(), "api.example");
    }

    #[test]
    fn a_fixed_convention_needs_all_of_its_headers_once() {
        use ConventionSetting::*;
        let err = |setting, r: Request<()>| original(&r, setting, "").unwrap_err().to_string();
        // A header the proxy does not set would be the client's to set.
        for (setting, base) in [(Traefik, &TRAEFIK_DELETE[..]), (Nginx, &NGINX_DELETE[..])] {
            for missing in 0..3 {
                let headers: Vec<_> = base[..3]
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != missing)
                    .map(|(_, h)| *h)
                    .collect();
                let e = err(setting, req("GET", "/_tokengate", &headers));
                assert!(
                    e.contains("is missing"),
                    "{setting:?} without {:?}: {e}",
                    base[missing]
                );
            }
            // A second copy of any of them: the proxy sets one.
            for twice in 0..3 {
                let headers = with(base, &base[twice..=twice]);
                let e = err(setting, req("GET", "/_tokengate", &headers));
                assert!(
                    e.contains("more than once"),
                    "{setting:?} {:?} twice: {e}",
                    base[twice]
                );
                let e = original(&req("GET", "/_tokengate", &headers), Auto, "").unwrap_err();
                assert!(matches!(e, ForwardAuthError::Repeated(_)), "auto: {e}");
            }
        }
        // `auto` keeps the older fallbacks: the sub-request's method and Host.
        let r = req(
            "PUT",
            "/_tokengate",
            &[("x-original-uri", "/a"), ("host", "gate")],
        );
        let o = original(&r, Auto, "").unwrap();
        assert_eq!(
            (o.method.as_str(), o.host.unwrap().to_str().unwrap()),
            ("PUT", "gate")
        );
        // Envoy: outside the prefix is still a 400.
        let e = original(&req("GET", "/other", &[]), Envoy, "/ext_authz").unwrap_err();
        assert!(matches!(e, ForwardAuthError::OutsidePrefix), "{e}");
    }
}
