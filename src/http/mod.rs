//! Leaf: HTTP plumbing every stage shares.
//!
//! - [`headers`]: `Connection` header tokens and the hop-by-hop headers an upgrade restores.
//! - [`limits`]: header size, connection count, body size, idle timeout.
//! - [`tls`]: TLS termination with a reloadable certificate; outbound roots (`ca_file`) and
//!   the AS client certificate (mTLS).
//! - [`client`]: the pooled hyper-util + rustls clients for the AS and the upstream; the
//!   unix connector.
//! - [`Body`]: the response body every stage answers with.

pub mod client;
pub mod headers;
pub mod limits;
pub mod tls;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;

/// The response body type of every answer tokengate gives: the upstream's
/// streamed body or a small rendered one.
pub type Body = BoxBody<Bytes, hyper::Error>;
