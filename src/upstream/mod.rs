//! Stage engine: the call to the upstream.
//!
//! - [`forward`]: hop-by-hop and identity header rewrite, streaming call to the upstream
//!   (HTTP/1.1 or HTTP/2, over TCP or a unix socket).
//! - [`pool`]: the upstream's connections over `hyper::client::conn`: a LIFO of idle HTTP/1.1
//!   connections (one upstream, no keys), one shared HTTP/2 connection, the retry of a request
//!   the upstream's closing of an idle connection kept from being sent.
//! - [`upgrade`]: HTTP/1.1 Upgrade (WebSocket) tunnels: only `upgrade_protocols` (never h2c)
//!   are offered upstream, a 101 must confirm one of them; a tunnel keeps its connection
//!   slot and is closed at the token's `exp`, after `limits.tunnel_idle_timeout`, and at shutdown.

pub mod forward;
pub mod pool;
pub mod upgrade;
