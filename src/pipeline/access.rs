//! What the access log line reports besides method, path, status and
//! latency; each stage fills in what it learns.

use crate::cache::CacheStatus;
use http::Method;

/// What the access log line reports besides method, path, status and latency.
#[derive(Default)]
pub(super) struct AccessInfo {
    pub(super) route: Option<String>,
    pub(super) cache: Option<CacheStatus>,
    pub(super) subject: Option<String>,
    pub(super) fingerprint: Option<String>,
    /// Forward-auth mode: the original request's method and path (no query),
    /// logged instead of the sub-request's (which is always e.g. `GET /_tokengate`).
    pub(super) original: Option<(Method, String)>,
    /// How the token was bound (set by `authorize` once the binding check
    /// passed; `None` on a public route): the value of `identity.binding_header`.
    pub(super) binding: Option<crate::policy::binding::Binding>,
    /// The authorization stage let the request through (a public route, or a
    /// token that passed); read by the request span's `tokengate.decision`.
    pub(super) authorized: bool,
}
