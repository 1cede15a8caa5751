//! The AS's connections: the introspection client's [`crate::http::pool`]
//! for the endpoint's origin.

use bytes::Bytes;
use http_body_util::Full;
use std::sync::Arc;

/// The AS's connections (`http::pool`, as the upstream's): one origin at a
/// time, the endpoint's, which discovery may move; a move starts a new pool
/// and the old one's connections close when their last request is done.
pub(super) struct AsConnections {
    connector: crate::http::client::Connector,
    current: std::sync::RwLock<Option<Arc<AsPool>>>,
}

type AsPool = crate::http::pool::OriginPool<Full<Bytes>>;

impl AsConnections {
    pub(super) fn new(connector: crate::http::client::Connector) -> Self {
        Self {
            connector,
            current: std::sync::RwLock::new(None),
        }
    }

    /// The pool for `uri`'s origin: the current one, or a new one that
    /// replaces it (the endpoint moved). `None`: `uri` names no origin.
    pub(super) fn for_uri(&self, uri: &http::Uri) -> Option<Arc<AsPool>> {
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return None;
        };
        let same = |p: &AsPool| p.serves(scheme, authority);
        // A poisoned lock only means a writer panicked mid-swap of an `Arc`.
        if let Some(o) = &*self.current.read().unwrap_or_else(|e| e.into_inner()) {
            if same(o) {
                return Some(o.clone());
            }
        }
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        match &*current {
            Some(o) if same(o) => Some(o.clone()),
            _ => {
                let pool = Arc::new(AsPool::tcp(
                    self.connector.clone(),
                    crate::http::pool::origin(scheme, authority),
                    false,
                ));
                *current = Some(pool.clone());
                Some(pool)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conns() -> AsConnections {
        let tls = crate::http::tls::ClientTls::new(&[], None).unwrap();
        AsConnections::new(crate::http::client::connector(
            std::time::Duration::from_secs(1),
            &tls,
            false,
        ))
    }

    #[test]
    fn one_pool_per_origin_replaced_when_the_endpoint_moves() {
        let c = conns();
        let a = c
            .for_uri(&"http://as:8080/introspect".parse().unwrap())
            .unwrap();
        // Another path on the same origin: the same connections.
        let again = c.for_uri(&"http://as:8080/other".parse().unwrap()).unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        // Discovery moved the endpoint: new connections.
        let moved = c
            .for_uri(&"https://as2/introspect".parse().unwrap())
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &moved));
        let back = c
            .for_uri(&"http://as:8080/introspect".parse().unwrap())
            .unwrap();
        assert!(!Arc::ptr_eq(&moved, &back));
        // A target with no origin has no pool (the caller's transport error).
        assert!(c.for_uri(&"/introspect".parse().unwrap()).is_none());
    }
}
