//! Stage engine: asking the authorization server about a token.
//!
//! - [`client`]: the RFC 7662 client (`oauth2` crate over `connections`), its
//!   settings ([`IntrospectionSettings`]) and the lenient response type ([`Introspection`]).
//! - `connections`: the AS's connections, a [`crate::http::pool`] for the endpoint's
//!   origin (replaced when discovery moves the endpoint).
//! - [`answer`]: the compact cached form of an answer ([`answer::Answer`], what the policy
//!   reads); repeating members shared through a bounded interner.
//! - `breaker`: the AS's rules for the shared circuit breaker (what counts as a failure,
//!   the canary).
//! - [`discovery`]: RFC 8414 / OIDC discovery of the introspection endpoint (and of
//!   the issuer's `jwks_uri`).
//! - [`jwt`]: JWT access tokens checked locally (RFC 9068): which token takes which
//!   path, the local check, `[jwt]` settings; RFC 9701 signed answers.
//! - [`jwks`]: the issuer's signing keys (cached, refreshed, refetched on an
//!   unknown `kid` at most once per interval; kept while the endpoint is down).

pub mod answer;
mod breaker;
pub mod client;
mod connections;
pub mod discovery;
pub mod jwks;
pub mod jwt;

pub use answer::{Answer, Interner};
pub use client::{
    probe_advice, AuthMethod, IntrospectError, Introspection, IntrospectionSettings, Introspector,
};
