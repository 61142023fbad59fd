//! Open client connections by source address: the per-source limit, and [`ConnectionRegistry::close_source`]
//! for the self-protection loop, which must cut every connection of an address it has just banned.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio_util::sync::CancellationToken;

use crate::addr::canonical;

#[derive(Debug, Default)]
pub struct ConnectionRegistry {
    next_id: AtomicU64,
    by_source: Mutex<HashMap<IpAddr, HashMap<u64, CancellationToken>>>,
}

/// Held by a connection task; dropping it unregisters the connection.
#[derive(Debug)]
pub struct ConnectionGuard {
    registry: Arc<ConnectionRegistry>,
    source: IpAddr,
    id: u64,
    /// Cancelled when the connection must close now (source banned, or shutdown deadline passed).
    pub closed: CancellationToken,
}

impl ConnectionRegistry {
    /// Registers a connection unless `source` already holds `max_per_source` of them.
    pub fn try_register(self: &Arc<Self>, source: IpAddr, max_per_source: u32) -> Option<ConnectionGuard> {
        let source = canonical(source);
        let mut map = self.by_source.lock().unwrap_or_else(PoisonError::into_inner);
        let conns = map.entry(source).or_default();
        if conns.len() >= usize::try_from(max_per_source).unwrap_or(usize::MAX) {
            if conns.is_empty() {
                map.remove(&source);
            }
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let closed = CancellationToken::new();
        conns.insert(id, closed.clone());
        Some(ConnectionGuard {
            registry: self.clone(),
            source,
            id,
            closed,
        })
    }

    /// Closes every open connection of `source` at once (in-flight requests included); returns how many.
    pub fn close_source(&self, source: IpAddr) -> usize {
        let map = self.by_source.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&canonical(source)).map_or(0, |conns| {
            conns.values().for_each(CancellationToken::cancel);
            conns.len()
        })
    }

    /// Closes every connection; used when the shutdown grace period has run out.
    pub fn close_all(&self) {
        let map = self.by_source.lock().unwrap_or_else(PoisonError::into_inner);
        map.values()
            .flat_map(HashMap::values)
            .for_each(CancellationToken::cancel);
    }

    #[must_use]
    pub fn open_connections(&self, source: IpAddr) -> usize {
        let map = self.by_source.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&canonical(source)).map_or(0, HashMap::len)
    }

    #[must_use]
    pub fn total(&self) -> usize {
        let map = self.by_source.lock().unwrap_or_else(PoisonError::into_inner);
        map.values().map(HashMap::len).sum()
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut map = self
            .registry
            .by_source
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(conns) = map.get_mut(&self.source) {
            conns.remove(&self.id);
            if conns.is_empty() {
                map.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_limit_and_close_source() {
        let reg = Arc::new(ConnectionRegistry::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "::ffff:192.0.2.2".parse().unwrap();
        let g1 = reg.try_register(a, 2).unwrap();
        let g2 = reg.try_register(a, 2).unwrap();
        assert!(reg.try_register(a, 2).is_none());
        let g3 = reg.try_register(b, 2).unwrap();
        assert_eq!(reg.close_source("192.0.2.1".parse().unwrap()), 2);
        assert!(g1.closed.is_cancelled() && g2.closed.is_cancelled() && !g3.closed.is_cancelled());
        assert_eq!(reg.open_connections("192.0.2.2".parse().unwrap()), 1);
        drop(g1);
        assert!(reg.try_register(a, 2).is_some());
        drop((g2, g3));
        assert_eq!(reg.total(), 0);
    }
}
