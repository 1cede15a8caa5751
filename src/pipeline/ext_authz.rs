//! Envoy's external authorization over gRPC (`envoy.service.auth.v3.Authorization/Check`):
//! the `CheckRequest`'s `attributes.request.http` becomes the original request
//! (method, path with query, host, headers), which goes through the **same**
//! decision as forward-auth mode ([`super::forward_auth::decide`]: route with
//! every path/method/host check, token, cache, introspection, policy), and the
//! outcome becomes a `CheckResponse`:
//!
//! * allow: `OkHttpResponse` with the identity headers to set on the request
//!   Envoy forwards, and every spoofable identity header (`[identity]`) that
//!   we do not set removed (`headers_to_remove`), so a client's copy never
//!   reaches the upstream;
//! * deny: `DeniedHttpResponse` with the status, the `WWW-Authenticate`
//!   challenge and the JSON body of the one mapping in [`super::reject`], and
//!   the gRPC `status` Envoy reads (UNAUTHENTICATED, PERMISSION_DENIED,
//!   UNAVAILABLE, INVALID_ARGUMENT).
//!
//! The gRPC server itself (listener, TLS, health, drain) is `crate::listen::ext_authz`.

use super::access::AccessInfo;
use super::forward_auth::{decide, Sender};
use super::reject::{ProxyError, REALM};
use crate::app::App;
use crate::config::Settings;
use crate::policy::binding::Binding;
use crate::policy::Principal;
use crate::upstream::forward;
use envoy_types::ext_authz::v3::pb::{
    CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue,
    HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::google::rpc;
use http::header::{self, HeaderName};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, StatusCode};

pub(crate) use super::reject::CheckRequestError;

/// Answers one `Check`: never fails as a gRPC call (a deny is an answer, with
/// its own `status`), and writes the access line and the metrics like an HTTP
/// request does.
pub(crate) async fn check(app: &App, req: CheckRequest) -> CheckResponse {
    let Some(otel) = &app.otel else {
        return answer(app, req).await;
    };
    // The original request's `traceparent` (Envoy passes the client's
    // headers, with its own span's when Envoy traces too) is the parent.
    // Read where `original_headers` reads them: `header_map` when Envoy
    // sends it (`encode_raw_headers: true`; `headers` is then empty), else
    // `headers`.
    let http = req
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    let span = otel.request_span(crate::ops::otel::Entry::ExtAuthz, |name| {
        let http = http?;
        match &http.header_map {
            Some(map) => map.headers.iter().find(|h| h.key == name).and_then(|h| {
                if h.raw_value.is_empty() {
                    Some(h.value.as_str())
                } else {
                    std::str::from_utf8(&h.raw_value).ok()
                }
            }),
            None => http.headers.get(name).map(String::as_str),
        }
    });
    otel.run(span, answer(app, req)).await
}

async fn answer(app: &App, req: CheckRequest) -> CheckResponse {
    let started = crate::resilience::clock::stopwatch();
    let mut info = AccessInfo::default();
    let settings = app.settings.load_full();
    let attributes = req.attributes.unwrap_or_default();
    // The client certificate Envoy saw (`include_peer_certificate: true`):
    // URL-encoded PEM of the downstream connection's certificate. Envoy is
    // the peer of this port, so what it reports is what the client presented.
    let certificate = attributes
        .source
        .as_ref()
        .map(|s| s.certificate.as_str())
        .filter(|c| !c.is_empty())
        .map(crate::policy::binding::mtls::pem_thumbprint)
        .transpose();
    let http = attributes.request.and_then(|r| r.http);
    let result = match (&http, certificate) {
        (_, Err(e)) => Err(e.into()),
        (Some(http), Ok(cert)) => decide_http(app, &settings, http, cert, &mut info).await,
        (None, Ok(_)) => Err(CheckRequestError::NoHttpRequest.into()),
    };
    let (status, response) = match result {
        Ok((principal, binding)) => (
            StatusCode::OK,
            allowed(principal.as_ref(), binding, &settings),
        ),
        Err(err) => {
            super::log_error(&err, &info);
            let rejection = err.rejection();
            (rejection.status, denied(&err, settings.retry_after_secs))
        }
    };
    // Logged like forward-auth mode: the original method and path (no query).
    let (method, path) = info.original.take().unwrap_or_else(|| {
        let http = http.as_ref();
        let method = http
            .and_then(|h| Method::from_bytes(h.method.as_bytes()).ok())
            .unwrap_or_default();
        let path = http
            .map(|h| h.path.split('?').next().unwrap_or_default().to_owned())
            .unwrap_or_default();
        (method, path)
    });
    super::record(
        app,
        &settings,
        &method,
        &path,
        status,
        info,
        started.elapsed(),
    );
    response
}

/// `attributes.request.http` → the original request → [`decide`].
async fn decide_http(
    app: &App,
    settings: &Settings,
    http: &HttpRequest,
    client_cert_sha256: Option<[u8; 32]>,
    info: &mut AccessInfo,
) -> Result<(Option<Principal>, Option<Binding>), ProxyError> {
    if http.method.is_empty() {
        return Err(CheckRequestError::BadMethod.into());
    }
    let method =
        Method::from_bytes(http.method.as_bytes()).map_err(|_| CheckRequestError::BadMethod)?;
    // `path` is the request target as sent, query included, not decoded: the
    // route table reads it exactly as it reads a proxied request's.
    if !http.path.starts_with('/') {
        return Err(CheckRequestError::BadPath.into());
    }
    let target =
        PathAndQuery::try_from(http.path.as_str()).map_err(|_| CheckRequestError::BadPath)?;
    let headers = original_headers(http)?;
    // The host goes through the same one-Host check and normalisation as a
    // proxied request's: `host` (Envoy's `Host` / `:authority`) must agree
    // with a `host` entry in the headers, if there is one.
    let mut probe = Request::new(());
    *probe.headers_mut() = headers;
    let host = http.host.as_str();
    if !host.is_empty() && !probe.headers().contains_key(header::HOST) {
        let value = http::HeaderValue::from_str(host).map_err(|_| CheckRequestError::BadHeader)?;
        probe.headers_mut().insert(header::HOST, value);
    } else if let Some(field) = probe.headers().get(header::HOST) {
        if !host.is_empty() && field.as_bytes() != host.as_bytes() {
            return Err(crate::policy::RouteError::HostMismatch.into());
        }
    }
    let host = forward::routing_host(&probe)?;
    // DPoP's htu: Envoy's own view of the scheme and host. The original
    // headers are the client's, so their X-Forwarded-* are never believed.
    // The client certificate comes from `attributes.source.certificate`
    // (none: a certificate-bound token is refused).
    let sender = Sender {
        client_cert_sha256,
        forwarded_trusted: false,
        scheme: match http.scheme.as_str() {
            "https" => "https",
            _ => "http",
        },
    };
    decide(
        app,
        settings,
        &method,
        &target,
        host.as_ref(),
        probe.headers(),
        &sender,
        info,
    )
    .await
}

/// The original request's headers: `header_map` (Envoy's `encode_raw_headers`,
/// one entry per field line, so a repeated `Authorization` stays two and is
/// refused as such) or else `headers` (one entry per name, repeated fields
/// comma-joined by Envoy). Pseudo-headers (`:authority`, `:path`, ...) are
/// left out: their values are in `host`, `path`, `method`. A name or value
/// that is not valid HTTP is refused rather than dropped, so that nothing a
/// client sent can quietly disappear from the decision.
fn original_headers(http: &HttpRequest) -> Result<HeaderMap, CheckRequestError> {
    let mut out = HeaderMap::new();
    let mut add = |name: &str, value: &[u8]| {
        if name.starts_with(':') {
            return Ok(());
        }
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| CheckRequestError::BadHeader)?;
        let value =
            http::HeaderValue::from_bytes(value).map_err(|_| CheckRequestError::BadHeader)?;
        out.append(name, value);
        Ok(())
    };
    match &http.header_map {
        Some(map) => {
            for h in &map.headers {
                let value = if h.raw_value.is_empty() {
                    h.value.as_bytes()
                } else {
                    &h.raw_value
                };
                add(&h.key, value)?;
            }
        }
        None => {
            for (name, value) in &http.headers {
                add(name, value.as_bytes())?;
            }
        }
    }
    Ok(out)
}

fn header_option(key: &str, value: &str) -> HeaderValueOption {
    header_option_bytes(key, value.as_bytes())
}

/// A header to set, whatever its bytes: a value that is not UTF-8 (an identity
/// claim with obs-text, which HTTP allows) goes in `raw_value`. Dropping it
/// instead would leave the client's own copy of the header in place.
fn header_option_bytes(key: &str, value: &[u8]) -> HeaderValueOption {
    let (value, raw_value) = match std::str::from_utf8(value) {
        Ok(v) => (v.to_owned(), Vec::new()),
        Err(_) => (String::new(), value.to_vec()),
    };
    // `append` is deprecated in favour of `append_action`, but prost still
    // generates the field: it has to be named to build the message.
    #[expect(
        deprecated,
        reason = "the field exists; append_action is what Envoy reads"
    )]
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value,
            raw_value,
        }),
        append: None,
        // A client's copy of the header is replaced, never appended to.
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        keep_empty_value: true,
    }
}

/// Allow: the identity headers to set, and the spoofable ones to remove.
fn allowed(
    principal: Option<&Principal>,
    binding: Option<Binding>,
    settings: &Settings,
) -> CheckResponse {
    let id = &settings.identity;
    let mut identity = HeaderMap::new();
    if let Some(p) = principal {
        forward::insert_identity(&mut identity, p, id);
    }
    if let Some(b) = binding {
        identity.insert(id.binding_header.clone(), b.header_value());
    }
    let headers = identity
        .iter()
        .map(|(k, v)| header_option_bytes(k.as_str(), v.as_bytes()))
        .collect();
    // Every identity header we do not set is removed: removing one we also set
    // would depend on the order in which Envoy applies the two lists, so those
    // are overwritten instead (`OverwriteIfExistsOrAdd`).
    let mut headers_to_remove: Vec<String> = forward::unset_identity_headers(id, &identity)
        .map(|name| name.as_str().to_owned())
        .collect();
    if !id.forward_authorization {
        headers_to_remove.push(header::AUTHORIZATION.as_str().to_owned());
    }
    // As in proxy mode: the route was chosen from the request line, so the
    // app must not serve another URL or run another method than that one
    // (`decide` already refused an override naming another method).
    headers_to_remove.extend(
        forward::URL_OVERRIDES
            .iter()
            .chain(forward::METHOD_OVERRIDES.iter())
            .map(|h| h.as_str().to_owned()),
    );
    // As in proxy mode, the token's query parameter never reaches the upstream.
    let query_parameters_to_remove = settings.token_sources.query_param.iter().cloned().collect();
    CheckResponse {
        status: Some(rpc::Status {
            code: tonic::Code::Ok as i32,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers,
            headers_to_remove,
            query_parameters_to_remove,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Deny: what an HTTP client of proxy mode would get (status, challenge, JSON
/// body, `Retry-After` on 503), for Envoy to send, and the gRPC status.
fn denied(err: &ProxyError, retry_after_secs: u32) -> CheckResponse {
    let r = err.rejection();
    let mut headers = vec![
        header_option("content-type", "application/json"),
        header_option("cache-control", "no-store"),
    ];
    if let Some(www) = r.www_authenticate(REALM) {
        if let Ok(v) = forward::header_safe(&www).to_str() {
            headers.push(header_option("www-authenticate", v));
        }
    }
    if r.retry {
        headers.push(header_option("retry-after", &retry_after_secs.to_string()));
    }
    // RFC 9449 §9: the nonce a `use_dpop_nonce` client must retry with.
    if let Some(nonce) = r.dpop.as_ref().and_then(|d| d.nonce.as_deref()) {
        headers.push(header_option("dpop-nonce", nonce));
    }
    CheckResponse {
        status: Some(rpc::Status {
            code: i32::from(r.grpc_status()),
            message: r.description.clone(),
            details: Vec::new(),
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            // Envoy's `StatusCode` enum numbers its values by the HTTP code.
            status: Some(HttpStatus {
                code: i32::from(r.status.as_u16()),
            }),
            headers,
            body: r.json_body(),
        })),
        ..Default::default()
    }
}
