//! Stage engine: the call to the upstream.
//!
//! - [`forward`]: hop-by-hop and identity header rewrite, streaming call to the upstream
//!   (HTTP/1.1 or HTTP/2, over TCP or a unix socket).
//! - [`upgrade`]: HTTP/1.1 Upgrade (WebSocket) tunnels: only `upgrade_protocols` (never h2c)
//!   are offered upstream, a 101 must confirm one of them; a tunnel keeps its connection
//!   slot and is closed at the token's `exp`, after `limits.tunnel_idle_timeout`, and at shutdown.

pub mod forward;
pub mod upgrade;
