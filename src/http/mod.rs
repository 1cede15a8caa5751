//! Leaf: HTTP plumbing every stage shares.
//!
//! - [`headers`]: `Connection` header tokens and the hop-by-hop headers an upgrade restores.
//! - [`limits`]: header size, connection count, body size, idle timeout.
//! - [`tls`]: TLS termination with a reloadable certificate; outbound roots (`ca_file`) and
//!   the AS client certificate (mTLS).
//! - [`client`]: the pooled hyper-util + rustls clients for discovery and JWKS; the
//!   connectors (TCP + rustls, unix) every pool connects with.
//! - [`pool`]: one origin's connections over `hyper::client::conn` (the upstream's, the
//!   AS's): a LIFO of idle HTTP/1.1 connections, one shared HTTP/2 connection.
//! - [`trace`]: the traced request's context (`[tracing]`): child spans for the calls a
//!   request makes, W3C `traceparent` on outgoing requests; free when tracing is off.
//! - [`Body`]: the response body every stage answers with.
//! - [`peer_in`]: whether a peer address is in a `trusted_proxies` list.

pub mod client;
pub mod headers;
pub mod limits;
pub mod pool;
pub mod tls;
pub mod trace;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;

/// The response body type of every answer tokengate gives: the upstream's
/// streamed body or a small rendered one.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// Whether `peer` is in one of `nets` (`trusted_proxies` lists). An IPv4
/// client on a dual-stack socket arrives as ::ffff:a.b.c.d and matches its
/// IPv4 network.
pub fn peer_in(nets: &[ipnet::IpNet], peer: std::net::IpAddr) -> bool {
    let peer = match peer {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, std::net::IpAddr::V4),
        v4 => v4,
    };
    nets.iter().any(|net| net.contains(&peer))
}
