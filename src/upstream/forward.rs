//! Forwarding to the upstream: header hygiene (hop-by-hop, identity, X-Forwarded-*,
//! Via) and the streaming call itself. Bodies are never buffered: the inbound
//! `Incoming` body is handed to the client and the upstream's body is handed back.

use crate::http::pool::{OriginPool, PoolBody, PoolError};
use crate::policy::{Principal, RouteError};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What happens to `X-HTTP-Method-Override`, `X-HTTP-Method` and `X-Method-Override`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodOverride {
    /// Removed from every request: the upstream runs the method we routed on.
    #[default]
    Strip,
    /// Kept for the upstream, and the route is chosen for the method they name
    /// (only on POST; the headers must agree).
    Route,
}

/// Where every forwarded request goes. Only scheme, authority and an optional
/// base path are kept, so the request can never choose its destination.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Prefix prepended to every forwarded path; empty for "/".
    pub base_path: String,
    /// `unix:/path.sock`: connect here instead of to `authority` (which is then
    /// `localhost`, the Host the upstream sees).
    pub unix_socket: Option<PathBuf>,
    /// `upstream_http2`: h2 / h2c to the upstream.
    pub http2: bool,
}

/// `[identity]`, validated: the headers that carry the principal upstream.
#[derive(Debug, Clone)]
pub struct IdentitySettings {
    pub subject_header: HeaderName,
    pub client_id_header: HeaderName,
    pub scope_header: HeaderName,
    /// `binding_header`: how the token was bound (`none`, `mtls`, `dpop`).
    pub binding_header: HeaderName,
    /// Every header removed from inbound requests: the three above plus
    /// `strip_headers`. Header names are case-insensitive, so this covers
    /// `x-AUTH-subject` too.
    pub strip: Vec<HeaderName>,
    pub forward_authorization: bool,
    /// `[identity.claims]`, parsed: header → claim name.
    pub claims: Vec<(HeaderName, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("upstream unreachable: {0}")]
    Connect(String),
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("upstream request failed: {0}")]
    Failed(String),
    #[error("request target is not a path")]
    BadTarget,
    /// The *client's* body failed mid-stream (framing hyper cannot decode, or
    /// the client went away): the client's fault, not the upstream's.
    #[error("request body could not be read: {0}")]
    BadBody(String),
    /// A `101 Switching Protocols` for an upgrade that was not forwarded, or to
    /// another protocol than the one offered: never relayed (it could open a
    /// tunnel no token check sees into, e.g. h2c). The connection is dropped.
    #[error("upstream switched protocols without a matching upgrade request (Upgrade: {0:?})")]
    UnexpectedUpgrade(String),
}

/// RFC 9110 §7.6.1 hop-by-hop fields, plus the non-standard ones that real
/// clients still send, and `HTTP2-Settings` (connection-specific, RFC 9113
/// §3.2.1: it only ever serves an h2c upgrade, which is never forwarded).
/// Prebuilt so the hot path does no parsing.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Fields that make IIS, Symfony, Zend and similar stacks serve another URL than
/// the request line's, after tokengate chose the route from the request line.
/// Removed from every request, whoever sent them.
pub static URL_OVERRIDES: [HeaderName; 2] = [
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
];

/// Fields that make many frameworks (Rails, Symfony, ASP.NET, Express's
/// method-override, Laravel) run another method than the request line's.
pub static METHOD_OVERRIDES: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// Fields a proxy in front of tokengate sets about the client or the URL it
/// saw. Kept only from `forwarding.trusted_proxies`: from anyone else they are
/// whatever the client chose to write. (`X-Forwarded-For`, `Forwarded` and
/// `X-Real-IP` are then rewritten from the peer; see `rewrite_request_headers`.)
static FROM_TRUSTED_PROXIES_ONLY: [HeaderName; 4] = [
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-port"),
];

/// Removes `Connection`, every field it names, and the fixed hop-by-hop set.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip(headers, |_| false);
}

/// Removes the hop-by-hop fields (as [`strip_hop_by_hop`]) and every field
/// `also` selects.
fn strip(headers: &mut HeaderMap, also: impl Fn(&HeaderName) -> bool) {
    // The fields `Connection` names (rare): one lookup each.
    let named: Vec<HeaderName> = crate::http::headers::connection_tokens(headers)
        .filter_map(|n| HeaderName::from_bytes(n).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    // The fixed set and `also`: one pass over the names the message has (a
    // request carries a handful; looking up each of the ~15 names we refuse
    // hashed every one of them on every request), then the removals. Not a
    // fresh scan after each removal: that is quadratic, 268 µs instead of
    // 4.2 µs for 100 fields, 50 of them named by `Connection` (hot_path bench
    // `forward/strip_hop_by_hop`, BENCHMARKS.md).
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| HOP_BY_HOP.contains(name) || also(name))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// Whether the request's `TE` lists `trailers` (gRPC clients send it; an h2
/// upstream that speaks gRPC requires it).
pub fn te_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
}

/// Makes an identity value header-safe: control characters (which would let an
/// AS-supplied claim inject headers, or make hyper refuse the value) become '?'.
pub fn header_safe(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap_or_else(|_| {
        let cleaned: String = value
            .chars()
            .map(|c| {
                if c == '\t' || (c >= ' ' && c != '\x7f') {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        HeaderValue::from_str(&cleaned).unwrap_or_else(|_| HeaderValue::from_static("?"))
    })
}

/// The headers of `id.strip` (identity headers, the binding header,
/// `strip_headers`, ...) that `set` does not carry: what a front proxy that
/// forwards the request itself (Envoy's ext_authz) must remove, since it
/// overwrites only the headers we set and would pass a client's copies of
/// the others on.
pub fn unset_identity_headers<'a>(
    id: &'a IdentitySettings,
    set: &'a HeaderMap,
) -> impl Iterator<Item = &'a HeaderName> + 'a {
    id.strip.iter().filter(move |name| !set.contains_key(*name))
}

/// Writes the principal's identity headers (subject, client id, scopes,
/// `[identity.claims]`), each made header-safe. The one place that decides
/// what the upstream (or, in forward-auth mode, the front proxy) is told.
pub fn insert_identity(headers: &mut HeaderMap, p: &Principal, id: &IdentitySettings) {
    if let Some(s) = &p.subject {
        headers.insert(id.subject_header.clone(), header_safe(s));
    }
    if let Some(c) = &p.client_id {
        headers.insert(id.client_id_header.clone(), header_safe(c));
    }
    headers.insert(id.scope_header.clone(), header_safe(&p.scope));
    for (name, value) in &p.claims {
        headers.insert(name.clone(), header_safe(value));
    }
}

/// The client end of one connection, as the upstream is told about it. Built
/// once per connection: formatting the address on every request cost more
/// than the rest of the `X-Forwarded-*` work.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address, matched against `forwarding.trusted_proxies`.
    pub addr: std::net::IpAddr,
    /// The client's IP, as our `X-Forwarded-For` element and `X-Real-IP`.
    ip: HeaderValue,
    /// Our `Forwarded` element (RFC 7239): `for=…;proto=…`.
    forwarded: HeaderValue,
    /// The scheme the client used to reach us.
    pub proto: &'static str,
    /// SHA-256 of the client certificate's DER, when tokengate terminated TLS
    /// and the client presented one (`[tls] client_ca_file`; RFC 8705).
    pub client_cert: Option<[u8; 32]>,
}

impl Peer {
    pub fn new(addr: SocketAddr, proto: &'static str) -> Self {
        let ip = addr.ip().to_canonical();
        // RFC 7239 §6: an IPv6 node is quoted and bracketed.
        let node = match ip {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        Self {
            addr: ip,
            ip: header_safe(&ip.to_string()),
            forwarded: header_safe(&format!("for={node};proto={proto}")),
            proto,
            client_cert: None,
        }
    }

    /// The connection's verified client certificate (its thumbprint).
    pub fn with_client_cert(mut self, thumbprint: Option<[u8; 32]>) -> Self {
        self.client_cert = thumbprint;
        self
    }
}

/// Everything the request-side rewrite needs to know about the connection.
pub struct Hop<'a> {
    pub peer: &'a Peer,
    pub identity: &'a IdentitySettings,
    /// The peer is in `forwarding.trusted_proxies`: its forwarding headers are
    /// appended to, not replaced.
    pub trusted: bool,
    pub method_override: MethodOverride,
}

/// Why a request's method override cannot be routed on (`method_override = "route"`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverrideError {
    #[error("a method override header is only accepted on POST")]
    NotPost,
    #[error("method override headers disagree or do not name a method")]
    Unclear,
    /// Forward-auth mode: the request that reaches the app is the front
    /// proxy's, so tokengate cannot remove an override from it, and cannot
    /// know whether the app runs it.
    #[error("a method override naming another method cannot be judged in forward-auth mode")]
    NotStrippable,
}

/// The method to choose the route for. With `method_override = "strip"` the
/// override headers are removed before forwarding, so the request's own method
/// is the one the upstream runs. With `"route"` they reach the upstream, so the
/// route must be the overriding method's: only on POST (where frameworks honour
/// them), and every override field must name the same method.
pub fn routing_method(
    method: &http::Method,
    headers: &HeaderMap,
    query: Option<&str>,
    mode: MethodOverride,
) -> Result<http::Method, OverrideError> {
    if mode == MethodOverride::Strip {
        return Ok(method.clone());
    }
    let mut named: Option<http::Method> = None;
    let header_values = METHOD_OVERRIDES
        .iter()
        .flat_map(|name| headers.get_all(name))
        .map(|v| std::borrow::Cow::Borrowed(v.as_bytes()));
    let query_values = query
        .into_iter()
        .flat_map(|q| url::form_urlencoded::parse(q.as_bytes()))
        .filter(|(k, _)| is_method_param(k))
        .map(|(_, v)| std::borrow::Cow::Owned(v.into_owned().into_bytes()));
    for v in header_values.chain(query_values) {
        let m = http::Method::from_bytes(v.trim_ascii().to_ascii_uppercase().as_slice())
            .map_err(|_| OverrideError::Unclear)?;
        match &named {
            Some(prev) if *prev != m => return Err(OverrideError::Unclear),
            _ => named = Some(m),
        }
    }
    match named {
        None => Ok(method.clone()),
        Some(_) if method != http::Method::POST => Err(OverrideError::NotPost),
        Some(m) => Ok(m),
    }
}

/// Whether a (decoded) query parameter name is a method override: `_method`
/// is one in Symfony and Laravel (`$request->query`, when there is no body
/// field) and in Express's `method-override('_method')`. PHP turns `.`, ` `
/// and `[` in a parameter name into `_`, so `.method` is `_method` to it; the
/// name is compared without case so that no spelling slips through.
pub fn is_method_param(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 7
        && matches!(b[0], b'_' | b'.' | b' ' | b'[')
        && b[1..].eq_ignore_ascii_case(b"method")
}

/// The query without its method-override parameters ([`is_method_param`]),
/// for `method_override = "strip"`: `None` if it has none (the target is
/// then forwarded byte for byte), `Some(None)` if nothing is left.
pub fn strip_method_params(query: &str) -> Option<Option<String>> {
    let is_override = |pair: &str| {
        let key = pair.split('=').next().unwrap_or_default();
        url::form_urlencoded::parse(key.as_bytes()).any(|(k, _)| is_method_param(&k))
    };
    if !query.split('&').any(is_override) {
        return None;
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !is_override(p)).collect();
    let joined = kept.join("&");
    Some((!joined.is_empty()).then_some(joined))
}

/// Rewrites inbound request headers for the upstream. Spoofed identity headers
/// are removed on *every* request (public ones too), before ours are added.
pub fn rewrite_request_headers(
    headers: &mut HeaderMap,
    version: Version,
    host: Option<HeaderValue>,
    principal: Option<&Principal>,
    hop: &Hop<'_>,
) {
    strip(headers, |name| {
        hop.identity.strip.contains(name)
            // Framing is recomputed by hyper from the body itself (never
            // copied): a request that arrived with both Content-Length and
            // Transfer-Encoding must not reach the upstream with a length that
            // disagrees with its body.
            || name == header::CONTENT_LENGTH
            // The upstream sees its own authority as Host (like nginx's
            // default); the client's is in X-Forwarded-Host. The client sets
            // Host from the URI.
            || name == header::HOST
            || (name == header::AUTHORIZATION && !hop.identity.forward_authorization)
            || URL_OVERRIDES.contains(name)
            || (hop.method_override == MethodOverride::Strip && METHOD_OVERRIDES.contains(name))
            || (!hop.trusted && FROM_TRUSTED_PROXIES_ONLY.contains(name))
    });

    if let Some(p) = principal {
        insert_identity(headers, p, hop.identity);
    }

    // From a trusted proxy, append the peer to its chain; from anyone else the
    // chain is what the client wrote (frameworks that read the first element
    // would take it for the client's address), so it starts again at the peer.
    let ip = &hop.peer.ip;
    let chain = |headers: &HeaderMap, name: &HeaderName, ours: &HeaderValue| {
        // Most peers are not trusted proxies: their chain is not even read.
        if !hop.trusted {
            return ours.clone();
        }
        let prev: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        if prev.is_empty() {
            return ours.clone();
        }
        header_safe(&format!(
            "{}, {}",
            prev.join(", "),
            ours.to_str().unwrap_or_default()
        ))
    };
    let xff = chain(headers, &X_FORWARDED_FOR, ip);
    headers.insert(X_FORWARDED_FOR.clone(), xff);
    let forwarded = chain(headers, &FORWARDED, &hop.peer.forwarded);
    headers.insert(FORWARDED.clone(), forwarded);
    // X-Real-IP is one address: a trusted proxy's stands, else it is the peer.
    if !(hop.trusted && headers.contains_key(&X_REAL_IP)) {
        headers.insert(X_REAL_IP.clone(), ip.clone());
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(hop.peer.proto),
    );
    match host {
        Some(h) => headers.insert(X_FORWARDED_HOST.clone(), h),
        None => headers.remove(&X_FORWARDED_HOST),
    };
    let via = match version {
        Version::HTTP_10 => "1.0 tokengate",
        Version::HTTP_2 => "2 tokengate",
        _ => "1.1 tokengate",
    };
    headers.append(header::VIA, HeaderValue::from_static(via));
}

/// Whether `value` reads exactly `name`, or `name:port` with the port in
/// plain decimal (no leading zero), i.e. what `routing_host` would write.
fn spelled_as(value: &[u8], name: &str, port: Option<u16>) -> bool {
    let Some(rest) = value.strip_prefix(name.as_bytes()) else {
        return false;
    };
    match (port, rest) {
        (None, []) => true,
        (Some(p), [b':', first, ..]) if *first != b'0' => {
            std::str::from_utf8(&rest[1..])
                .ok()
                .and_then(|d| d.parse::<u16>().ok())
                == Some(p)
        }
        _ => false,
    }
}

/// The host the route is chosen by, and the one the upstream is told about in
/// `X-Forwarded-Host`: the `Host` field, or the target's authority (HTTP/2
/// `:authority`, or an absolute-form target), normalised (lower case, no
/// trailing dot, no default port; [`crate::policy::normalize_host`]).
///
/// Refused when the request names two hosts, because servers disagree on which
/// one counts and the route must be the upstream's: two `Host` fields (RFC 9112
/// §3.2), or a `Host` that differs from `:authority` (RFC 9113 §8.3.1) or from
/// an absolute-form target's authority (RFC 9112 §3.2.2 has the target win;
/// some servers and frameworks read `Host` anyway).
pub fn routing_host<B>(req: &Request<B>) -> Result<Option<HeaderValue>, RouteError> {
    let mut fields = req.headers().get_all(header::HOST).iter();
    let field = fields.next();
    if fields.next().is_some() {
        return Err(RouteError::DuplicateHost);
    }
    let sent = field;
    let normal = crate::policy::normalize_host;
    let field = match field {
        Some(v) => Some(normal(v.to_str().map_err(|_| RouteError::InvalidHost)?)?),
        None => None,
    };
    let target = match req.uri().authority() {
        // Userinfo (`http://admin.example.com@www.example.com/`) is a spelling
        // some servers read one way and some the other.
        Some(a) if a.as_str().contains('@') => return Err(RouteError::InvalidHost),
        Some(a) => Some(normal(a.as_str())?),
        None => None,
    };
    if let (Some(f), Some(t)) = (&field, &target) {
        // `http://www.example.com/x` with `Host: www.example.com:80` is one
        // authority: the scheme's default port counts as no port.
        let default_port = match req.uri().scheme_str() {
            Some("https") => 443,
            _ => 80,
        };
        let port = |p: &Option<u16>| p.filter(|p| *p != default_port);
        let f = f.as_ref().map(|(name, p)| (name.as_ref(), port(p)));
        let t = t.as_ref().map(|(name, p)| (name.as_ref(), port(p)));
        if f != t {
            return Err(RouteError::HostMismatch);
        }
    }
    // The common case: the Host field as sent is already the normal form, so
    // it is the answer itself (no formatting, no copy).
    if let (Some(v), Some(Some((std::borrow::Cow::Borrowed(name), port)))) = (sent, &field) {
        if spelled_as(v.as_bytes(), name, *port) {
            return Ok(Some(v.clone()));
        }
    }
    Ok(match field.or(target).flatten() {
        None => None,
        Some((h, None)) => Some(HeaderValue::from_str(&h).map_err(|_| RouteError::InvalidHost)?),
        Some((h, Some(port))) => Some(
            HeaderValue::from_str(&format!("{h}:{port}")).map_err(|_| RouteError::InvalidHost)?,
        ),
    })
}

/// The request's own Host: the `Host` header (HTTP/1) or `:authority` (HTTP/2),
/// as sent (unchecked; [`routing_host`] is the checked, normalised one).
pub fn inbound_host<B>(req: &Request<B>) -> Option<HeaderValue> {
    req.headers().get(header::HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    })
}

/// What the forwarder sends: the client's body, counted against `limits.max_body_bytes`.
pub type ForwardBody = crate::http::limits::LimitedBody<Incoming>;

pub struct Forwarder {
    /// The upstream's connections (`http::pool`): http:// or https://
    /// (h1, or h2 / h2c with `upstream_http2`), or unix:/path.sock.
    pool: OriginPool<ForwardBody>,
    upstream: Upstream,
    timeout: Duration,
}

impl Forwarder {
    pub fn new(
        upstream: Upstream,
        connect_timeout: Duration,
        timeout: Duration,
        tls: &crate::http::tls::ClientTls,
    ) -> Self {
        let origin = crate::http::pool::origin(&upstream.scheme, &upstream.authority);
        let pool = match &upstream.unix_socket {
            Some(path) => OriginPool::unix(
                crate::http::client::UnixConnector::new(path),
                origin,
                upstream.http2,
            ),
            None => OriginPool::tcp(
                crate::http::client::connector(connect_timeout, tls, upstream.http2),
                origin,
                upstream.http2,
            ),
        };
        Self {
            pool,
            upstream,
            timeout,
        }
    }

    /// The upstream speaks HTTP/2 (`upstream_http2`).
    pub fn is_http2(&self) -> bool {
        self.upstream.http2
    }

    /// The upstream URI for a request: never the client's scheme or authority,
    /// so neither an absolute-form target nor a Host header can pick the
    /// destination. Path and query are kept byte for byte. HTTP/1.1 requests
    /// go out in origin-form (`/path?q`; `Host` names the upstream); HTTP/2
    /// ones carry the configured scheme and authority (`:scheme`, `:authority`).
    pub fn target(&self, uri: &Uri) -> Result<Uri, ForwardError> {
        let pq = match uri.path_and_query() {
            Some(pq) if pq.as_str().starts_with('/') => pq,
            Some(_) => return Err(ForwardError::BadTarget),
            None => &http::uri::PathAndQuery::from_static("/"),
        };
        let mut parts = http::uri::Parts::default();
        if self.upstream.http2 {
            parts.scheme = Some(self.upstream.scheme.clone());
            parts.authority = Some(self.upstream.authority.clone());
        }
        // Without a base path the parsed target is reused as it is (a
        // reference-count increment, not a copy and a re-parse).
        parts.path_and_query = Some(if self.upstream.base_path.is_empty() {
            pq.clone()
        } else {
            format!("{}{pq}", self.upstream.base_path)
                .parse()
                .map_err(|_| ForwardError::BadTarget)?
        });
        Uri::from_parts(parts).map_err(|_| ForwardError::BadTarget)
    }

    /// Sends the (already rewritten) request and returns the upstream's response
    /// with hop-by-hop fields removed. The timeout covers the time to response
    /// headers; the body then streams for as long as it takes.
    pub async fn send(
        &self,
        mut req: Request<ForwardBody>,
    ) -> Result<Response<PoolBody<ForwardBody>>, ForwardError> {
        // The pool sets `Host` (HTTP/1.1; we always remove the client's).
        *req.uri_mut() = self.target(req.uri())?;
        // The upstream's version is ours to choose, whatever the client spoke to us.
        *req.version_mut() = if self.upstream.http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        // What the request offers to upgrade to (only allowed protocols are
        // left by now, see `upgrade::requested`): a 101 must name one of them.
        let offered = req.headers().get(header::UPGRADE).cloned();
        // The fields the 101 must answer (Sec-WebSocket-Key; see `upgrade::confirms`).
        let asked = if offered.is_some() {
            let mut h = HeaderMap::new();
            for v in req.headers().get_all("sec-websocket-key") {
                h.append("sec-websocket-key", v.clone());
            }
            h
        } else {
            HeaderMap::new()
        };
        let mut resp = match tokio::time::timeout(self.timeout, self.pool.send(req)).await {
            Err(_) => return Err(ForwardError::Timeout(self.timeout)),
            Ok(Err(PoolError::Connect(e))) => return Err(ForwardError::Connect(e)),
            Ok(Err(PoolError::Request(e))) if inbound_body_failed(&e) => {
                return Err(ForwardError::BadBody(crate::http::client::error_chain(&e)))
            }
            Ok(Err(PoolError::Request(e))) => {
                return Err(ForwardError::Failed(crate::http::client::error_chain(&e)))
            }
            Ok(Ok(resp)) => resp,
        };
        // A 101 is relayed only for an upgrade we forwarded, to a protocol we
        // offered. Any other is refused; dropping the response drops hyper's
        // pending upgrade with it, which closes the upstream connection (it is
        // never pooled again: nothing inside it may reach anyone).
        let upgrade = if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            if !crate::upstream::upgrade::confirms(offered.as_ref(), &asked, resp.headers()) {
                let named = resp
                    .headers()
                    .get(header::UPGRADE)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .unwrap_or_default();
                return Err(ForwardError::UnexpectedUpgrade(named));
            }
            resp.headers().get(header::UPGRADE).cloned()
        } else {
            None
        };
        strip_hop_by_hop(resp.headers_mut());
        if let Some(u) = upgrade {
            crate::upstream::upgrade::restore_headers(resp.headers_mut(), u);
        }
        Ok(resp)
    }
}

/// Whether a client error was caused by the request body we were streaming
/// (hyper's "error from user's Body stream": the one user error that carries
/// a cause), as opposed to the upstream failing.
fn inbound_body_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_user() && std::error::Error::source(h).is_some() {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawConfig;

    fn identity() -> IdentitySettings {
        let mut c = RawConfig::default();
        c.introspection.url = "http://as/i".into();
        c.introspection.client_id = "c".into();
        c.introspection.client_secret = crate::config::Secret::new("s");
        c.validate().unwrap().identity
    }

    /// Issue 12 item 7: one host per request, normalised.
    #[test]
    fn routing_host_table() {
        let host = |uri: &str, hosts: &[&str]| {
            let mut b = Request::builder().uri(uri);
            for h in hosts {
                b = b.header(header::HOST, *h);
            }
            routing_host(&b.body(()).unwrap()).map(|h| h.map(|v| v.to_str().unwrap().to_owned()))
        };
        let ok = |v: &str| Ok(Some(v.to_owned()));
        assert_eq!(host("/x", &["Admin.Example.com."]), ok("admin.example.com"));
        assert_eq!(
            host("/x", &["admin.example.com.:8443"]),
            ok("admin.example.com:8443")
        );
        // Already normal: the field itself; a port with a leading zero is
        // written again in plain decimal.
        assert_eq!(host("/x", &["api.example.com"]), ok("api.example.com"));
        assert_eq!(host("/x", &["127.0.0.1:8080"]), ok("127.0.0.1:8080"));
        assert_eq!(
            host("/x", &["api.example.com:080"]),
            ok("api.example.com:80")
        );
        assert_eq!(host("/x", &["api.example.com:0"]), ok("api.example.com:0"));
        assert_eq!(host("/x", &[]), Ok(None));
        assert_eq!(host("/x", &[""]), Ok(None));
        assert_eq!(
            host("http://admin.example.com/x", &[]),
            ok("admin.example.com")
        );
        assert_eq!(
            host("http://admin.example.com/x", &["ADMIN.example.com.:80"]),
            ok("admin.example.com:80")
        );
        assert_eq!(
            host("https://admin.example.com/x", &["admin.example.com:443"]),
            ok("admin.example.com:443")
        );
        for (uri, hosts, want) in [
            (
                "/x",
                &["a.example", "b.example"][..],
                RouteError::DuplicateHost,
            ),
            (
                "/x",
                &["a.example", "a.example"][..],
                RouteError::DuplicateHost,
            ),
            (
                "http://admin.example.com/x",
                &["www.example.com"][..],
                RouteError::HostMismatch,
            ),
            (
                "http://admin.example.com/x",
                &[""][..],
                RouteError::HostMismatch,
            ),
            (
                "http://admin.example.com:8080/x",
                &["admin.example.com"][..],
                RouteError::HostMismatch,
            ),
            ("/x", &["a.example, b.example"][..], RouteError::InvalidHost),
            (
                "http://u@admin.example.com/x",
                &[][..],
                RouteError::InvalidHost,
            ),
        ] {
            assert_eq!(host(uri, hosts), Err(want), "{uri} {hosts:?}");
        }
    }

    #[test]
    fn request_rewrite() {
        let id = identity();
        let peer = Peer::new("10.0.0.9:5555".parse().unwrap(), "http");
        // A trusted front proxy: its X-Forwarded-For chain is appended to.
        let hop = Hop {
            peer: &peer,
            identity: &id,
            trusted: true,
            method_override: MethodOverride::Strip,
        };
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, X-Secret-Hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("content-length", "10"),
            ("X-AUTH-subject", "mallory"),
            ("x-auth-scope", "admin"),
            ("X-Remote-User", "root"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("host", "front.example"),
            ("authorization", "Bearer t"),
            ("accept", "application/json"),
        ] {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_static(v),
            );
        }
        let host = h.get("host").cloned();
        let p = Principal {
            subject: Some("alice\r\nX-Evil: 1".into()),
            client_id: Some("app".into()),
            scope: "read write".into(),
            claims: vec![(HeaderName::from_static("x-auth-email"), "a@b.c".into())],
        };
        rewrite_request_headers(&mut h, Version::HTTP_11, host, Some(&p), &hop);
        for gone in [
            "connection",
            "x-secret-hop",
            "keep-alive",
            "te",
            "upgrade",
            "http2-settings",
            "proxy-connection",
            "transfer-encoding",
            "content-length",
            "x-remote-user",
            "host",
        ] {
            assert!(h.get(gone).is_none(), "{gone} must be stripped");
        }
        assert_eq!(h.get_all("x-auth-subject").iter().count(), 1);
        assert_eq!(h["x-auth-subject"], "alice??X-Evil: 1");
        assert_eq!(h["x-auth-scope"], "read write");
        assert_eq!(h["x-auth-client-id"], "app");
        assert_eq!(h["x-auth-email"], "a@b.c");
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "front.example");
        assert_eq!(h["via"], "1.1 tokengate");
        assert_eq!(h["authorization"], "Bearer t");
        assert_eq!(h["accept"], "application/json");
    }

    fn rewritten(
        pairs: &[(&'static str, &'static str)],
        trusted: bool,
        method_override: MethodOverride,
    ) -> HeaderMap {
        let id = identity();
        let peer = Peer::new("[::ffff:10.0.0.9]:5555".parse().unwrap(), "https");
        let hop = Hop {
            peer: &peer,
            identity: &id,
            trusted,
            method_override,
        };
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_static(v),
            );
        }
        rewrite_request_headers(&mut h, Version::HTTP_11, None, None, &hop);
        h
    }

    /// What a client writes about itself or about the URL to serve never
    /// reaches the upstream as if a proxy had said it.
    #[test]
    fn client_supplied_forwarding_and_override_headers() {
        let sent = [
            ("x-forwarded-for", "203.0.113.66"),
            ("forwarded", "for=203.0.113.66;proto=https"),
            ("x-real-ip", "203.0.113.66"),
            ("x-forwarded-prefix", "/admin"),
            ("x-forwarded-port", "443"),
            ("x-original-url", "/admin/users"),
            ("X-Rewrite-URL", "/admin/users"),
            ("x-http-method-override", "DELETE"),
            ("X-HTTP-Method", "DELETE"),
            ("x-method-override", "DELETE"),
            ("accept", "*/*"),
        ];
        // From a client: rewritten from the peer, or gone.
        let h = rewritten(&sent, false, MethodOverride::Strip);
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["forwarded"], "for=10.0.0.9;proto=https");
        assert_eq!(h["x-real-ip"], "10.0.0.9");
        for gone in [
            "x-forwarded-prefix",
            "x-forwarded-port",
            "x-original-url",
            "x-rewrite-url",
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
        ] {
            assert!(h.get(gone).is_none(), "{gone} must be stripped: {h:?}");
        }
        assert_eq!(h["accept"], "*/*");

        // From a trusted proxy: chains appended to, its own values kept; the
        // URL overrides still go (tokengate did not route on them).
        let h = rewritten(&sent, true, MethodOverride::Strip);
        assert_eq!(h["x-forwarded-for"], "203.0.113.66, 10.0.0.9");
        assert_eq!(
            h["forwarded"],
            "for=203.0.113.66;proto=https, for=10.0.0.9;proto=https"
        );
        assert_eq!(h["x-real-ip"], "203.0.113.66");
        assert_eq!(h["x-forwarded-prefix"], "/admin");
        assert!(h.get("x-original-url").is_none());
        assert!(h.get("x-rewrite-url").is_none());
        assert!(h.get("x-http-method-override").is_none());

        // method_override = "route": the overrides were routed on, so they stay.
        let h = rewritten(&sent, false, MethodOverride::Route);
        assert_eq!(h["x-http-method-override"], "DELETE");
        assert_eq!(h["x-http-method"], "DELETE");
    }

    #[test]
    fn forwarded_quotes_ipv6() {
        let peer = Peer::new("[2001:db8::1]:443".parse().unwrap(), "http");
        assert_eq!(peer.forwarded, "for=\"[2001:db8::1]\";proto=http");
        assert_eq!(peer.ip, "2001:db8::1");
    }

    #[test]
    fn routing_method_table() {
        use http::Method;
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, HeaderValue::from_static(v));
            }
            h
        };
        let route = MethodOverride::Route;
        let del = h(&[("x-http-method-override", "DELETE")]);
        // Strip: the request's own method, whatever the headers say.
        assert_eq!(
            routing_method(&Method::POST, &del, None, MethodOverride::Strip),
            Ok(Method::POST)
        );
        assert_eq!(
            routing_method(&Method::POST, &del, None, route),
            Ok(Method::DELETE)
        );
        assert_eq!(
            routing_method(
                &Method::POST,
                &h(&[("x-http-method", " delete ")]),
                None,
                route
            ),
            Ok(Method::DELETE)
        );
        assert_eq!(
            routing_method(&Method::GET, &del, None, route),
            Err(OverrideError::NotPost)
        );
        assert_eq!(
            routing_method(
                &Method::POST,
                &h(&[
                    ("x-http-method-override", "DELETE"),
                    ("x-method-override", "PUT")
                ]),
                None,
                route
            ),
            Err(OverrideError::Unclear)
        );
        assert_eq!(
            routing_method(
                &Method::POST,
                &h(&[("x-http-method-override", "DE LETE")]),
                None,
                route
            ),
            Err(OverrideError::Unclear)
        );
        assert_eq!(
            routing_method(&Method::GET, &HeaderMap::new(), None, route),
            Ok(Method::GET)
        );
        // `_method` in the query (Symfony, Laravel, Express), in every
        // spelling PHP reads as `_method`.
        let none = HeaderMap::new();
        for q in [
            "_method=DELETE",
            "a=1&.method=delete",
            "%5Fmethod=DELETE",
            "+method=DELETE",
            "[method=DELETE",
            "_METHOD=DELETE",
        ] {
            assert_eq!(
                routing_method(&Method::POST, &none, Some(q), route),
                Ok(Method::DELETE),
                "{q}"
            );
            assert_eq!(
                routing_method(&Method::GET, &none, Some(q), route),
                Err(OverrideError::NotPost),
                "{q}"
            );
            assert_eq!(
                routing_method(&Method::POST, &none, Some(q), MethodOverride::Strip),
                Ok(Method::POST)
            );
        }
        assert_eq!(
            routing_method(&Method::POST, &del, Some("_method=PUT"), route),
            Err(OverrideError::Unclear)
        );
        assert_eq!(
            routing_method(
                &Method::POST,
                &none,
                Some("x_method=DELETE&method=PUT"),
                route
            ),
            Ok(Method::POST)
        );
        assert_eq!(strip_method_params("a=1&b=2"), None);
        assert_eq!(
            strip_method_params("a=1&_method=DELETE&b=%20"),
            Some(Some("a=1&b=%20".into()))
        );
        assert_eq!(strip_method_params("%2emethod=DELETE"), Some(None));
    }

    /// Regression (found by `tests/props.rs`): a `Connection` value with an
    /// obs-text byte was skipped whole, so the fields it listed were forwarded.
    #[test]
    fn connection_with_obs_text_still_strips_the_fields_it_lists() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-secret-hop, \x80junk").unwrap(),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret-hop").is_none(), "{h:?}");
        assert!(h.get("x-keep").is_some());
    }

    #[test]
    fn no_principal_still_strips_identity() {
        let id = identity();
        let peer = Peer::new("[::1]:1".parse().unwrap(), "http");
        let hop = Hop {
            peer: &peer,
            identity: &id,
            trusted: false,
            method_override: MethodOverride::Strip,
        };
        let mut h = HeaderMap::new();
        h.insert("x-auth-client-id", HeaderValue::from_static("spoof"));
        rewrite_request_headers(&mut h, Version::HTTP_2, None, None, &hop);
        assert!(h.get("x-auth-client-id").is_none());
        assert!(h.get("x-auth-subject").is_none());
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(h["via"], "2 tokengate");
    }
}
