//! The access decision, and the route table that picks which rules apply.
//!
//! Pure: (introspection, route, now) → [`Principal`] or [`Deny`]; (method, host,
//! path) → [`Route`]. No I/O. The decision runs on *every* request, cache hits
//! included: the cache stores the introspection, never the decision (the bug
//! class of Oathkeeper's GHSA-qvp4-rpmr-xwrr).

/// Sender-constrained tokens: the binding stage, checked after the decision
/// (who may present the token, where [`evaluate`] says whether it is good).
pub mod binding;

use crate::introspection::answer::Answer;
use http::{HeaderName, Method};
use std::borrow::Cow;
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
    /// upstream would read ` admin\t` as `admin`, another user. Also a mapped
    /// list with an element that holds whitespace (`["staff admin"]` would
    /// read as `staff` and `admin`).
    #[error("the {0} claim starts or ends with whitespace, or is a list with an element holding whitespace")]
    UnsafeIdentity(&'static str),
    #[error("missing scope(s) of require_scopes / require_any_scope: {required}")]
    InsufficientScope {
        /// Scopes that would satisfy the route, space-separated, for the
        /// challenge: every `require_scopes` entry, then the
        /// `require_any_scope` alternatives when none of them is held.
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
    /// The token must carry at least one of these (if non-empty), besides
    /// all of `scopes` (`require_any_scope`).
    pub any_scopes: Vec<String>,
    /// The token's `client_id` must be one of these (if non-empty).
    pub clients: Vec<String>,
    /// The issuers this route admits (`[[routes]] issuers`, or `issuer`),
    /// by name (`"default"` for `[introspection]`); empty: the default one
    /// only. The first introspects opaque tokens; a JWT picks among them by
    /// its `iss`. Not a check on the answer (that is `issuer`): it picks
    /// where to ask.
    pub issuer_names: Vec<String>,
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
    if !req.scopes.is_empty() || !req.any_scopes.is_empty() {
        let have = i.scopes();
        let held = |want: &String| have.iter().any(|s| s.as_str() == want);
        let all_of = req.scopes.iter().all(held);
        let one_of = req.any_scopes.is_empty() || req.any_scopes.iter().any(held);
        if !all_of || !one_of {
            // The challenge names a set of scopes that would pass (RFC 6750
            // §3: the scope "necessary to access"): all of require_scopes,
            // and the alternatives of require_any_scope when the token holds
            // none of them (a client may ask its AS for any one).
            let mut required = req.scopes.clone();
            if !one_of {
                required.extend(
                    req.any_scopes
                        .iter()
                        .filter(|s| !req.scopes.contains(s))
                        .cloned(),
                );
            }
            return Err(Deny::InsufficientScope {
                required: required.join(" "),
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
    // A list is passed on space-separated: an element holding a space would
    // read as two (`["staff admin"]` as `staff` and `admin`).
    if claims.iter().any(|(_, v)| padded(v))
        || claim_headers
            .iter()
            .any(|(_, claim)| i.claim_list_is_ambiguous(claim))
    {
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
    /// Whether the route applies, with the path read under `spelling` (the
    /// prefix is read the same way, so `/API/` still matches `/API/x` when
    /// both are folded).
    fn matches(&self, method: &Method, host: Option<&str>, path: &str, spelling: Spelling) -> bool {
        self.method_matches(method)
            && self.host.as_deref().is_none_or(|h| host == Some(h))
            && prefix_matches(&spelling.prefix(&self.path_prefix), path)
    }

    /// A route that lists GET also takes HEAD: every framework runs the GET
    /// view for a HEAD request (RFC 9110 §9.3.2 asks it to), so a GET-only
    /// rule that HEAD could step around would not protect that view.
    fn method_matches(&self, method: &Method) -> bool {
        self.methods.is_empty()
            || self.methods.contains(method)
            || (method == Method::HEAD && self.methods.contains(&Method::GET))
    }
}

/// The ordered route table plus the default (`[policy]`) for unmatched requests.
#[derive(Debug, Clone)]
pub struct RouteTable {
    pub routes: Vec<Route>,
    pub default: Route,
}

/// Why a request cannot be routed: a server behind us could read its path,
/// method or host as something that falls under another route than ours, so
/// we refuse rather than guess (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The path matches different routes depending on how it is decoded or
    /// spelt (percent-encoding, `;` parameters, dot segments, case, Unicode
    /// compatibility forms, trailing dots).
    #[error("the request path matches different routes depending on how it is decoded")]
    AmbiguousPath,
    /// A lower-case (or mixed-case) spelling of a standard or configured
    /// method: methods are case-sensitive (RFC 9110 §9.1), but Werkzeug and
    /// others upper-case them.
    #[error("the method is a lower-case spelling of a standard or configured method")]
    MethodCase,
    /// Not a host name, IP literal or `host:port`.
    #[error("the Host is not a valid host name")]
    InvalidHost,
    /// More than one `Host` field (RFC 9112 §3.2: 400).
    #[error("the request has more than one Host")]
    DuplicateHost,
    /// `Host` names another authority than the request target (absolute form)
    /// or `:authority` (HTTP/2, RFC 9113 §8.3.1).
    #[error("the Host differs from the request's authority")]
    HostMismatch,
}

/// The methods of RFC 9110 §9 plus PATCH (RFC 5789): a lower-case spelling of
/// one of these is refused even when no route names it.
const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

impl RouteTable {
    /// Picks the first matching route (or the default).
    ///
    /// The path is read the ways the servers behind us read it: percent-decoded
    /// (everything, all but `%2F`/`%5C`, nothing, or repeatedly), with and
    /// without each segment's `;parameters` (Tomcat, Jetty, Spring drop them),
    /// with and without case and Unicode compatibility folding (IIS, NTFS,
    /// .NET best-fit mappings), and with and without the trailing dots and
    /// spaces Windows drops from a name; every reading is dot-segment
    /// normalised. If two readings fall under different routes the request
    /// is refused ([`RouteError::AmbiguousPath`]); so `/public/../admin/x`,
    /// `/admin;x/y` and `/%61dmin/x` cannot dodge the `/admin/` rule. A
    /// `..;x` segment is refused outright. The forwarded path is always the
    /// original bytes.
    ///
    /// The host is compared lower-case, without port and without a trailing
    /// dot; a lower-case spelling of a standard or configured method is
    /// refused ([`RouteError::MethodCase`]); HEAD matches a route that lists GET.
    pub fn select(
        &self,
        method: &Method,
        host: Option<&str>,
        raw_path: &str,
    ) -> Result<&Route, RouteError> {
        self.check_method_case(method)?;
        let host = match host {
            Some(h) => normalize_host(h)?.map(|(host, _port)| host),
            None => None,
        };
        let host = host.as_deref();
        let pick = |path: &str, spelling: Spelling| {
            self.routes
                .iter()
                .position(|r| r.matches(method, host, path, spelling))
        };
        // The common case: nothing to decode, fold or normalise, so every
        // reading is the path itself. No allocation, one match.
        if is_plain(raw_path) && is_normal(raw_path) && self.prefixes_are_plain() {
            return Ok(pick(raw_path, Spelling::AS_IS).map_or(&self.default, |i| &self.routes[i]));
        }
        // IIS's `%u0061` and overlong UTF-8 (`%c0%af` is `/` to old
        // decoders): non-standard spellings of ASCII that only some servers
        // decode. No client sends them but to dodge a rule.
        if raw_path.contains('%')
            && (has_u_escape(raw_path)
                || has_overlong_utf8(&percent_decode_bytes(raw_path, DecodeMode::All)))
        {
            return Err(RouteError::AmbiguousPath);
        }
        let mut decoded: Vec<String> = Vec::with_capacity(4);
        for mode in [
            DecodeMode::None,
            DecodeMode::KeepSlashes,
            DecodeMode::All,
            DecodeMode::Repeated,
        ] {
            let d = decode(raw_path, mode)?;
            if !decoded.contains(&d) {
                decoded.push(d);
            }
        }
        let spellings = Spelling::needed(&decoded, &self.routes);
        let mut first: Option<Option<usize>> = None;
        for d in &decoded {
            for &s in &spellings {
                let route = pick(&s.read(d)?, s);
                match first {
                    None => first = Some(route),
                    Some(f) if f != route => return Err(RouteError::AmbiguousPath),
                    Some(_) => {}
                }
            }
        }
        Ok(first.flatten().map_or(&self.default, |i| &self.routes[i]))
    }

    /// `delete` is DELETE to Werkzeug but an unknown method to us: refused
    /// rather than routed either way (no legitimate client sends it; a
    /// case-sensitive upstream would answer 405/501 anyway). Lower-case
    /// extension methods no route names pass: no route depends on their case.
    fn check_method_case(&self, method: &Method) -> Result<(), RouteError> {
        let m = method.as_str();
        if !m.bytes().any(|b| b.is_ascii_lowercase()) {
            return Ok(());
        }
        let upper = m.to_ascii_uppercase();
        let named = STANDARD_METHODS.contains(&upper.as_str())
            || self
                .routes
                .iter()
                .flat_map(|r| &r.methods)
                .any(|rm| rm.as_str() == upper);
        if named {
            Err(RouteError::MethodCase)
        } else {
            Ok(())
        }
    }

    fn prefixes_are_plain(&self) -> bool {
        self.routes.iter().all(|r| is_plain(&r.path_prefix))
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
                Access::Token(q) => {
                    write!(
                        f,
                        "token scopes=[{}] audience=[{}] issuer={} clients=[{}]",
                        q.scopes.join(" "),
                        q.audience.join(" "),
                        q.issuer.as_deref().unwrap_or("*"),
                        q.clients.join(" "),
                    )?;
                    if !q.any_scopes.is_empty() {
                        write!(f, " any_scope=[{}]", q.any_scopes.join(" "))?;
                    }
                    // Only when one is named: a single-AS table prints as before.
                    if !q.issuer_names.is_empty() {
                        write!(f, " as={}", q.issuer_names.join(","))?;
                    }
                    writeln!(f)?
                }
            }
        }
        Ok(())
    }
}

/// A normalised host name (or bracketed IP literal) and its port, if any.
pub type HostPort<'a> = (Cow<'a, str>, Option<u16>);

/// A `Host` (or `:authority`, or `X-Forwarded-Host`) as routing compares it:
/// lower-case, without the trailing dot of a fully qualified name (DNS and
/// every server read `admin.example.com.` as `admin.example.com`), split
/// from its port. `Ok(None)` for an empty value (RFC 9112 §3.2 allows an
/// empty Host). Anything that is not a host name, an IP literal or
/// `host:port` is refused: `%`-escapes, userinfo, lists, spaces and
/// non-ASCII are spellings that some server would read as another name.
/// Borrowed when the value already is in that form (the host the proxy path
/// normalised once more in [`RouteTable::select`]): no allocation per request.
pub fn normalize_host(h: &str) -> Result<Option<HostPort<'_>>, RouteError> {
    // Every request's Host goes through here (twice on the proxy path), and
    // nearly all are already plain: one pass over the bytes for those.
    match plain_host(h) {
        Some(hp) => Ok(Some(hp)),
        None => normalize_host_full(h),
    }
}

/// `h` when it is already in normal form and needs no other reading: lower-case
/// labels of `[a-z0-9_-]` joined by single dots (none first or last), then an
/// optional `:port` of 1 to 5 digits. `None` for anything else (upper case, a
/// trailing dot, an IP literal in brackets, spaces, ...), which
/// [`normalize_host_full`] then decides; for what this accepts, it gives the
/// same answer (`plain_host_agrees_with_the_full_reading`).
fn plain_host(h: &str) -> Option<HostPort<'_>> {
    let bytes = h.as_bytes();
    let mut after_dot = true;
    let mut end = bytes.len();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => after_dot = false,
            b'.' if !after_dot => after_dot = true,
            b':' => {
                end = i;
                break;
            }
            _ => return None,
        }
    }
    // Empty, or ending in a dot.
    if after_dot {
        return None;
    }
    let (name, rest) = h.split_at(end);
    let port = match rest.strip_prefix(':') {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok()?)
        }
        Some(_) => return None,
    };
    Some((Cow::Borrowed(name), port))
}

fn normalize_host_full(h: &str) -> Result<Option<HostPort<'_>>, RouteError> {
    let h = h.trim();
    if h.is_empty() {
        return Ok(None);
    }
    let (host, port) = if h.starts_with('[') {
        // `[::1]` or `[::1]:8080`.
        let end = h.find(']').ok_or(RouteError::InvalidHost)?;
        let (literal, rest) = h.split_at(end + 1);
        let inner = &literal[1..literal.len() - 1];
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(RouteError::InvalidHost);
        }
        let port = match rest {
            "" => None,
            r => Some(r.strip_prefix(':').ok_or(RouteError::InvalidHost)?),
        };
        (literal, port)
    } else {
        match h.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (h, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().map_err(|_| RouteError::InvalidHost)?)
        }
        Some(_) => return Err(RouteError::InvalidHost),
    };
    if host.starts_with('[') {
        return Ok(Some((lower_case(host), port)));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let valid = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err(RouteError::InvalidHost);
    }
    Ok(Some((lower_case(name), port)))
}

fn lower_case(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// Whether every reading of `path` is `path` itself: only lower-case ASCII
/// letters, digits and the punctuation no server decodes, folds or strips
/// (no `%`, `;`, `\`, `:`, upper case, space, non-ASCII), and no segment that
/// ends in a dot.
fn is_plain(path: &str) -> bool {
    path.bytes().all(|b| {
        b.is_ascii_lowercase()
            || b.is_ascii_digit()
            || matches!(
                b,
                b'/' | b'.'
                    | b'-'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b'='
                    | b'@'
            )
    }) && !path.ends_with('.')
        && !path.contains("./")
}

/// One way a server may spell a (decoded) path before it matches it. Each
/// flag is a transformation some real server applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Spelling {
    /// Drop each segment's `;parameters` (Servlet containers, Spring).
    params: bool,
    /// Unicode compatibility form and case folding (IIS and other
    /// case-insensitive stacks; .NET best-fit and NFKC mappings turn
    /// full-width `／` and `ａ` into `/` and `a`).
    fold: bool,
    /// Drop trailing dots and spaces from each segment (Windows file names:
    /// `admin.` is `admin`), and an NTFS stream suffix (`admin::$INDEX_ALLOCATION`
    /// and `admin:$i30:$INDEX_ALLOCATION` are the directory `admin` to IIS).
    trim: bool,
}

impl Spelling {
    const AS_IS: Self = Self {
        params: false,
        fold: false,
        trim: false,
    };

    /// Every combination of the transformations that could change a reading
    /// of these paths or of a route's prefix (most requests need one or two).
    fn needed(paths: &[String], routes: &[Route]) -> Vec<Self> {
        let any = |f: &dyn Fn(&str) -> bool| {
            paths.iter().any(|p| f(p)) || routes.iter().any(|r| f(&r.path_prefix))
        };
        // NFKC can produce `;`, `.` and `/` from non-ASCII characters.
        let wide = any(&|s| !s.is_ascii());
        let params = wide || any(&|s| s.contains(';'));
        let fold = wide || any(&|s| s.bytes().any(|b| b.is_ascii_uppercase()));
        // A segment's name may end in a dot only once its `;parameters` are
        // gone (`admin.;x`), so both the segment and its head are looked at
        // (found by the route_select fuzz target).
        let trim = wide
            || any(&|s| {
                s.split(['/', '\\']).any(|seg| {
                    let head = seg.split(';').next().unwrap_or(seg);
                    seg.contains(':')
                        || [seg, head]
                            .iter()
                            .any(|x| x.ends_with(['.', ' ']) && *x != "." && *x != "..")
                })
            });
        let options = |needed: bool| {
            if needed {
                &[false, true][..]
            } else {
                &[false][..]
            }
        };
        let mut out = Vec::with_capacity(8);
        for &params in options(params) {
            for &fold in options(fold) {
                for &trim in options(trim) {
                    out.push(Self { params, fold, trim });
                }
            }
        }
        out
    }

    /// The dot-segment-normalised path under this spelling. A segment that
    /// is a dot segment in disguise (`..;x`, `.;`, `...`, `.. `) is refused:
    /// some servers resolve it as `..`, others serve it as a name, and no
    /// legitimate client sends one.
    fn read(self, path: &str) -> Result<String, RouteError> {
        let folded = if self.fold {
            fold(path).into()
        } else {
            std::borrow::Cow::Borrowed(path)
        };
        // A decoded NUL or other control character: C-string upstreams stop
        // at the NUL (`/admin%00/x` is `/admin` to them), and no client
        // means one.
        if folded.chars().any(char::is_control) {
            return Err(RouteError::AmbiguousPath);
        }
        let mut segments: Vec<&str> = Vec::new();
        // An empty segment before a `..`: we collapse `//`, but a server that
        // keeps empty segments (RFC 3986 §5.2.4 as written, the WHATWG URL
        // parser) resolves `/admin//../public` to `/admin/public`.
        let mut empty_seen = false;
        for (i, seg) in folded.split(['/', '\\']).enumerate() {
            let seg = match seg.split_once(';') {
                Some((head, _)) if self.params => {
                    if head == "." || head == ".." {
                        return Err(RouteError::AmbiguousPath);
                    }
                    head
                }
                _ => seg,
            };
            let seg = if self.trim && seg != "." && seg != ".." {
                // The NTFS stream suffix first (`admin.::$DATA` is `admin.`,
                // then `admin`); a segment that is only a suffix is kept.
                let seg = match seg.split_once(':') {
                    Some((name, _)) if !name.is_empty() => name,
                    _ => seg,
                };
                let trimmed = seg.trim_end_matches(['.', ' ']);
                if trimmed.is_empty() && !seg.is_empty() {
                    return Err(RouteError::AmbiguousPath);
                }
                trimmed
            } else {
                seg
            };
            match seg {
                "" => empty_seen |= i > 0,
                "." => {}
                ".." if empty_seen => return Err(RouteError::AmbiguousPath),
                // `..` above the root: we would read `/../x` as `/x`, but an
                // upstream with a base path (`upstream = "http://svc/api"`)
                // resolves `/api/../x` outside it. No client means that either.
                ".." => {
                    if segments.pop().is_none() {
                        return Err(RouteError::AmbiguousPath);
                    }
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
        Ok(out)
    }

    /// A route's prefix under this spelling, so that a prefix written `/API/`
    /// still matches `/API/x` in the folded reading.
    fn prefix(self, prefix: &str) -> std::borrow::Cow<'_, str> {
        if self == Self::AS_IS || is_plain(prefix) {
            return prefix.into();
        }
        // A prefix that cannot be read (config `..;` in a prefix) matches as written.
        self.read(prefix).map_or(prefix.into(), Into::into)
    }
}

/// NFKC, then lower case: full-width `／ＡＤＭＩＮ` → `/admin`, `ſ` → `s`,
/// the Kelvin sign → `k`. The dotted and dotless Turkish i fold to `i`, as
/// .NET's invariant upper-casing makes `ı` equal to `i`.
fn fold(s: &str) -> String {
    let nfkc = icu_normalizer::ComposingNormalizerBorrowed::new_nfkc().normalize(s);
    let mut out = String::with_capacity(nfkc.len());
    for c in nfkc.chars() {
        match c {
            'İ' | 'ı' => out.push('i'),
            c => out.extend(c.to_lowercase()),
        }
    }
    out
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
    /// The path as it is (a server that routes before decoding).
    None,
    /// Leaves `%2F` and `%5C` encoded, as many servers do.
    KeepSlashes,
    All,
    /// Decodes until nothing changes: a chain of servers (or a careless
    /// framework) that decodes twice reads `%2561` as `a`.
    Repeated,
}

/// Rounds of [`DecodeMode::Repeated`] before a path counts as ambiguous.
const MAX_DECODE_ROUNDS: usize = 4;

fn decode(s: &str, mode: DecodeMode) -> Result<String, RouteError> {
    match mode {
        DecodeMode::None => Ok(s.to_owned()),
        DecodeMode::KeepSlashes | DecodeMode::All => Ok(percent_decode(s, mode)),
        DecodeMode::Repeated => {
            let mut cur = s.to_owned();
            for _ in 0..MAX_DECODE_ROUNDS {
                let next = percent_decode(&cur, DecodeMode::All);
                if next == cur {
                    return Ok(cur);
                }
                cur = next;
            }
            // Still decoding after that many rounds: no client means that.
            Err(RouteError::AmbiguousPath)
        }
    }
}

/// `%u` and four hex digits.
fn has_u_escape(s: &str) -> bool {
    s.as_bytes().windows(6).any(|w| {
        w[0] == b'%' && (w[1] == b'u' || w[1] == b'U') && w[2..].iter().all(u8::is_ascii_hexdigit)
    })
}

/// A UTF-8 lead byte that can only start an overlong (non-shortest) form:
/// `C0`/`C1` before a continuation byte, `E0` before `80..9F`, `F0` before `80..8F`.
fn has_overlong_utf8(b: &[u8]) -> bool {
    b.windows(2).any(|w| {
        matches!(
            (w[0], w[1]),
            (0xC0 | 0xC1, 0x80..=0xBF) | (0xE0, 0x80..=0x9F) | (0xF0, 0x80..=0x8F)
        )
    })
}

fn percent_decode(s: &str, mode: DecodeMode) -> String {
    String::from_utf8_lossy(&percent_decode_bytes(s, mode)).into_owned()
}

fn percent_decode_bytes(s: &str, mode: DecodeMode) -> Vec<u8> {
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
    out
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
#[expect(clippy::type_complexity, reason = "table tests of boxed closures")]
mod tests {
    use super::*;

    /// Parsed, then in its cached form (interned, as the cache makes it):
    /// every decision below goes through the conversion.
    fn tok(json: &str) -> Answer {
        let parsed = serde_json::from_str(json).unwrap();
        Answer::new(parsed, &crate::introspection::answer::Interner::default())
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
            ..Requirements::default()
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
    fn any_scope_table() {
        let now = 1_000;
        let any = Requirements {
            any_scopes: vec!["read".into(), "admin".into()],
            ..Requirements::default()
        };
        let both = Requirements {
            scopes: vec!["base".into()],
            any_scopes: vec!["read".into(), "admin".into(), "base".into()],
            ..Requirements::default()
        };
        let deny = |required: &str| {
            Err(Deny::InsufficientScope {
                required: required.into(),
            })
        };
        let cases: Vec<(&str, &str, &Requirements, Result<(), Deny>)> = vec![
            (
                "one of two",
                r#"{"active":true,"scope":"x admin"}"#,
                &any,
                Ok(()),
            ),
            (
                "the other",
                r#"{"active":true,"scope":"read"}"#,
                &any,
                Ok(()),
            ),
            (
                "should fail because none held: every alternative in the challenge",
                r#"{"active":true,"scope":"write"}"#,
                &any,
                deny("read admin"),
            ),
            (
                "should fail because no scope at all",
                r#"{"active":true}"#,
                &any,
                deny("read admin"),
            ),
            (
                "should fail because a prefix is not the scope",
                r#"{"active":true,"scope":"reader"}"#,
                &any,
                deny("read admin"),
            ),
            (
                "all-of and one-of",
                r#"{"active":true,"scope":"base admin"}"#,
                &both,
                Ok(()),
            ),
            (
                "a scope in both lists counts for both",
                r#"{"active":true,"scope":"base"}"#,
                &both,
                Ok(()),
            ),
            (
                "should fail because all-of is missing though one-of is held",
                r#"{"active":true,"scope":"read"}"#,
                &both,
                deny("base"),
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
        let cases: &[(&str, &str, Option<&str>, &str, Result<&str, RouteError>)] = &[
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
                Err(RouteError::AmbiguousPath),
            ),
            (
                "encoded traversal to a public path is refused",
                "GET",
                None,
                "/admin/..%2Fpublic/x",
                Err(RouteError::AmbiguousPath),
            ),
            (
                "encoded dots are refused when they change the route",
                "GET",
                None,
                "/admin/%2e%2e/public/x",
                Err(RouteError::AmbiguousPath),
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

    /// Issue 12 item 3: the attack table is `/` public, `/admin/` protected
    /// (Jetty served `/admin;x/y` as `/admin/*`; Tomcat resolves
    /// `/public/..;/admin/x` to `/admin/x`; IIS is case-insensitive and drops
    /// trailing dots; some stacks decode twice or NFKC-normalise).
    #[test]
    fn path_spellings_cannot_dodge_a_protected_prefix() {
        let table = RouteTable {
            routes: vec![
                route("admin", "/admin/", &[], None, false),
                route("public", "/", &[], None, true),
            ],
            default: route("default", "/", &[], None, false),
        };
        let amb = Err(RouteError::AmbiguousPath);
        let cases: &[(&str, &str, Result<&str, RouteError>)] = &[
            (
                "should refuse ;params on the protected segment",
                "/admin;x/y",
                amb,
            ),
            (
                "should refuse ..; (Tomcat's ..)",
                "/public/..;/admin/x",
                amb,
            ),
            (
                "should refuse ..; even when it stays public",
                "/public/a/..;/b",
                amb,
            ),
            ("should refuse .;", "/public/.;x/a", amb),
            ("should refuse an encoded ;", "/admin%3Bx/y", amb),
            (
                "should refuse an encoded ; (lower-case hex)",
                "/admin%3bx/y",
                amb,
            ),
            ("should refuse ..%3B", "/public/..%3B/admin/x", amb),
            ("should refuse upper case", "/ADMIN/x", amb),
            ("should refuse mixed case", "/Admin/x", amb),
            ("should refuse a trailing dot", "/admin./x", amb),
            (
                "should refuse trailing dots and spaces",
                "/admin.%20./x",
                amb,
            ),
            ("should refuse a trailing encoded space", "/admin%20/x", amb),
            (
                "should refuse a trailing dot before ;params (fuzz)",
                "/admin.;ic/;/a",
                amb,
            ),
            ("should refuse a dots-only segment", "/.../admin", amb),
            (
                "should refuse `.. ` (Windows reads ..)",
                "/public/..%20/admin",
                amb,
            ),
            ("should refuse double encoding", "/%2561dmin/x", amb),
            ("should refuse triple encoding", "/%252561dmin/x", amb),
            (
                "should refuse endless encoding",
                "/%2525252525252561dmin/x",
                amb,
            ),
            ("should refuse full-width a", "/%EF%BD%81dmin/x", amb),
            (
                "should refuse full-width upper case",
                "/%EF%BC%A1DMIN/x",
                amb,
            ),
            (
                "should refuse a full-width slash before",
                "/%EF%BC%8Fadmin/x",
                amb,
            ),
            (
                "should refuse a full-width slash after",
                "/admin%EF%BC%8Fx",
                amb,
            ),
            (
                "should refuse full-width dots",
                "/public/%EF%BC%8E%EF%BC%8E/admin/x",
                amb,
            ),
            ("should refuse a full-width ;", "/admin%EF%BC%9Bx/y", amb),
            ("should refuse dotless i", "/adm%C4%B1n/x", amb),
            (
                "should refuse a NUL (C strings end there)",
                "/admin%00/x",
                amb,
            ),
            (
                "should refuse other control characters",
                "/public/%0Ax",
                amb,
            ),
            ("should refuse .. above the root", "/../admin/x", amb),
            (
                "should refuse encoded .. above the root",
                "/public/%2e%2e/%2e%2e/x",
                amb,
            ),
            (
                "should refuse .. above the root even when public",
                "/../x",
                amb,
            ),
            (
                "should refuse an empty segment before ..",
                "/admin//../public/x",
                amb,
            ),
            (
                "should refuse an encoded empty segment before ..",
                "/admin/%2F%2E%2E/public/x",
                amb,
            ),
            ("should refuse IIS %u escapes", "/%u0061dmin/x", amb),
            (
                "should refuse overlong /",
                "/public/..%c0%af..%c0%afadmin/x",
                amb,
            ),
            (
                "should refuse overlong .",
                "/public/%c0%ae%c0%ae/admin/x",
                amb,
            ),
            ("should refuse a 3-byte overlong", "/public/%e0%80%afx", amb),
            ("double slashes alone pass", "//public//x", Ok("public")),
            ("Latin-1 escapes pass", "/caf%E9/x", Ok("public")),
            (
                "long s off the prefix passes",
                "/admin/x/../../%C5%BFecret",
                Ok("public"),
            ),
            ("plain admin is admin", "/admin/x", Ok("admin")),
            (
                "params below the prefix keep the route",
                "/admin/x;v=1",
                Ok("admin"),
            ),
            (
                "jsessionid on a public path passes",
                "/x;jsessionid=A1",
                Ok("public"),
            ),
            (
                "upper case off the prefix passes",
                "/api/Users/ABC",
                Ok("public"),
            ),
            (
                "upper case below the prefix keeps the route",
                "/admin/Users",
                Ok("admin"),
            ),
            ("a file extension passes", "/docs/a.json", Ok("public")),
            ("UTF-8 off the prefix passes", "/caf%C3%A9/x", Ok("public")),
            (
                "UTF-8 below the prefix keeps the route",
                "/admin/%C3%A9",
                Ok("admin"),
            ),
            ("a literal percent passes", "/search/100%25", Ok("public")),
        ];
        for (name, path, want) in cases {
            let got = table
                .select(&Method::GET, None, path)
                .map(|r| r.name.as_str());
            assert_eq!(got, *want, "{name}: {path}");
        }
    }

    /// The folded and trimmed readings read the prefix the same way: a prefix
    /// written in upper case keeps matching its own spelling.
    #[test]
    fn prefixes_are_read_like_paths() {
        let table = RouteTable {
            routes: vec![route("api", "/API/", &[], None, false)],
            default: route("default", "/", &[], None, true),
        };
        let pick = |p: &str| table.select(&Method::GET, None, p).map(|r| r.name.as_str());
        assert_eq!(pick("/API/x"), Ok("api"));
        assert_eq!(pick("/api/x"), Err(RouteError::AmbiguousPath));
        assert_eq!(pick("/other"), Ok("default"));
    }

    /// Issue 12 item 4 (routing half): `delete` is DELETE to Werkzeug; HEAD runs
    /// the GET view.
    #[test]
    fn method_games() {
        let table = RouteTable {
            routes: vec![
                route("admin-delete", "/admin/", &["DELETE"], None, false),
                route("reports-get", "/reports/", &["GET"], None, false),
                route("purge", "/cache/", &["PURGE"], None, false),
                route("public", "/", &[], None, true),
            ],
            default: route("default", "/", &[], None, false),
        };
        let pick = |m: &str, p: &str| {
            table
                .select(&Method::from_bytes(m.as_bytes()).unwrap(), None, p)
                .map(|r| r.name.as_str())
        };
        let cases: &[(&str, &str, Result<&str, RouteError>)] = &[
            ("DELETE", "/admin/x", Ok("admin-delete")),
            ("delete", "/admin/x", Err(RouteError::MethodCase)),
            ("Delete", "/admin/x", Err(RouteError::MethodCase)),
            ("get", "/x", Err(RouteError::MethodCase)),
            ("connect", "/x", Err(RouteError::MethodCase)),
            ("purge", "/cache/x", Err(RouteError::MethodCase)),
            ("PURGE", "/cache/x", Ok("purge")),
            ("propfind", "/x", Ok("public")),
            ("GET", "/reports/x", Ok("reports-get")),
            ("HEAD", "/reports/x", Ok("reports-get")),
            ("POST", "/reports/x", Ok("public")),
            ("HEAD", "/admin/x", Ok("public")),
        ];
        for (m, p, want) in cases {
            assert_eq!(pick(m, p), *want, "{m} {p}");
        }
    }

    /// The one-pass reading of a plain host answers exactly as the full one,
    /// and leaves everything else to it.
    #[test]
    fn plain_host_agrees_with_the_full_reading() {
        let plain = [
            "admin.example.com",
            "127.0.0.1:8080",
            "my_host",
            "a-b.c:1",
            "x:65535",
            "x:00080",
        ];
        for h in plain {
            let fast = plain_host(h);
            assert!(fast.is_some(), "{h:?} is plain");
            assert_eq!(
                fast.clone().map(Some).ok_or(()),
                normalize_host_full(h).map_err(|_| ()),
                "{h:?}"
            );
            assert!(
                matches!(fast, Some((Cow::Borrowed(_), _))),
                "{h:?} borrowed"
            );
        }
        let not_plain = [
            "", " a", "a ", "A.b", "a.", ".a", "a..b", "a:", "a:b", "a:1:2", "a:99999", "a:123456",
            "[::1]", "[::1]:80", "a%2eb", "u@a", "a,b", "bücher", ":80", "a.:80",
        ];
        for h in not_plain {
            assert_eq!(plain_host(h), None, "{h:?} goes to the full reading");
        }
    }

    /// Issue 12 item 7: the host is compared as every server reads it.
    #[test]
    fn host_normalisation() {
        let ok = |h: &str, host: &str, port: Option<u16>| {
            assert_eq!(
                normalize_host(h).map(|n| n.map(|(h, p)| (h.into_owned(), p))),
                Ok(Some((host.to_owned(), port))),
                "{h:?}"
            )
        };
        ok("admin.example.com", "admin.example.com", None);
        ok("Admin.Example.COM.", "admin.example.com", None);
        ok("admin.example.com.:8443", "admin.example.com", Some(8443));
        ok(" admin.example.com ", "admin.example.com", None);
        ok("[::1]:8080", "[::1]", Some(8080));
        ok("[::FFFF:127.0.0.1]", "[::ffff:127.0.0.1]", None);
        ok("127.0.0.1:80", "127.0.0.1", Some(80));
        ok("my_host", "my_host", None);
        assert_eq!(normalize_host(""), Ok(None));
        for bad in [
            "admin.example.com..",
            ".admin.example.com",
            "a..b",
            "admin example.com",
            "admin%2eexample.com",
            "user@admin.example.com",
            "admin.example.com, www.example.com",
            "admin.example.com:",
            "admin.example.com:99999",
            "admin.example.com:8x",
            "a:b:c",
            "[::1",
            "[::1]x",
            "[zz::1]",
            "[]",
            "bücher.example",
            "ａdmin.example.com",
        ] {
            assert_eq!(normalize_host(bad), Err(RouteError::InvalidHost), "{bad:?}");
        }
        let table = RouteTable {
            routes: vec![
                route("admin", "/", &[], Some("admin.example.com"), false),
                route("www", "/", &[], Some("www.example.com"), true),
            ],
            default: route("default", "/", &[], None, false),
        };
        let pick = |h: &str| {
            table
                .select(&Method::GET, Some(h), "/x")
                .map(|r| r.name.as_str())
        };
        assert_eq!(pick("admin.example.com."), Ok("admin"));
        assert_eq!(pick("ADMIN.example.com.:443"), Ok("admin"));
        assert_eq!(pick("www.example.com"), Ok("www"));
        assert_eq!(pick("admin.example.com%2e"), Err(RouteError::InvalidHost));
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
