//! `mode = "forward_auth"`: tokengate has no upstream and answers the auth
//! sub-request of another proxy. The original request is recovered from the
//! conventions of the three common front proxies:
//!
//! | proxy                    | method                | path and query      | host               |
//! |--------------------------|-----------------------|---------------------|--------------------|
//! | nginx `auth_request`     | `X-Original-Method`   | `X-Original-URI`    | `X-Forwarded-Host`, else `Host` |
//! | Traefik `ForwardAuth`    | `X-Forwarded-Method`  | `X-Forwarded-Uri`   | `X-Forwarded-Host` |
//! | Envoy `ext_authz` (HTTP) | the request's         | the request's, minus `[forward_auth] path_prefix` | `Host` |
//!
//! The route policy then applies to that original request, exactly as in proxy
//! mode. These headers are trusted: only the front proxy may reach tokengate.

use crate::config::IdentitySettings;
use crate::policy::Principal;
use crate::server::Body;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode};
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
    pub convention: Convention,
    pub method: Method,
    pub target: PathAndQuery,
    pub host: Option<HeaderValue>,
}

/// Recovers the original request from the sub-request. nginx's headers win
/// over Traefik's, which win over the Envoy form (the request line itself).
pub fn original<B>(req: &Request<B>, envoy_prefix: &str) -> Result<Original, ForwardAuthError> {
    let h = req.headers();
    let (convention, method_header, uri_header) = if h.contains_key(&X_ORIGINAL_URI) {
        (
            Convention::Nginx,
            "X-Original-Method",
            Some("X-Original-URI"),
        )
    } else if h.contains_key(&X_FORWARDED_URI) {
        (
            Convention::Traefik,
            "X-Forwarded-Method",
            Some("X-Forwarded-Uri"),
        )
    } else {
        (Convention::Envoy, "", None)
    };
    let method = match convention {
        Convention::Nginx => header_method(h.get(&X_ORIGINAL_METHOD), method_header)?,
        Convention::Traefik => header_method(h.get(&X_FORWARDED_METHOD), method_header)?,
        Convention::Envoy => None,
    }
    .unwrap_or_else(|| req.method().clone());

    let target = match uri_header {
        Some(name) => {
            let v = h
                .get(if convention == Convention::Nginx {
                    &X_ORIGINAL_URI
                } else {
                    &X_FORWARDED_URI
                })
                .and_then(|v| v.to_str().ok())
                .ok_or(ForwardAuthError::BadUri(name))?;
            origin_form(v).ok_or(ForwardAuthError::BadUri(name))?
        }
        None => {
            let pq = req
                .uri()
                .path_and_query()
                .map(PathAndQuery::as_str)
                .unwrap_or("/");
            let rest = strip_prefix(pq, envoy_prefix).ok_or(ForwardAuthError::OutsidePrefix)?;
            origin_form(rest).ok_or(ForwardAuthError::BadUri("the request target"))?
        }
    };
    let host = h
        .get(&X_FORWARDED_HOST)
        .cloned()
        .or_else(|| crate::forward::inbound_host(req));
    Ok(Original {
        convention,
        method,
        target,
        host,
    })
}

fn header_method(
    v: Option<&HeaderValue>,
    name: &'static str,
) -> Result<Option<Method>, ForwardAuthError> {
    match v {
        None => Ok(None),
        Some(v) => Method::from_bytes(v.as_bytes())
            .map(Some)
            .map_err(|_| ForwardAuthError::BadMethod(name)),
    }
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
        crate::forward::insert_identity(h, p, id);
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
    fn three_conventions() {
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
            let got = original(&r, prefix);
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
}
