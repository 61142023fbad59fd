//! Open client connections by source address: the per-source limit, and [`ConnectionRegistry::close_source`]
//! for the self-protection loop, which must cut every connection of an address it has just banned, and
//! [`ConnectionRegistry::drain_all`] for shutdown.

use std::{
    collections::HashMap,
    net::IpAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    task::{Context, Poll, Waker},
};

use crate::addr::canonical;

#[derive(Debug, Default)]
pub struct ConnectionRegistry {
    next_id: AtomicU64,
    by_source: Mutex<Sources>,
}

#[derive(Debug, Default)]
struct Sources {
    conns: HashMap<IpAddr, HashMap<u64, Arc<Closer>>>,
    /// Set by [`ConnectionRegistry::drain_all`]: a connection registered afterwards starts out draining.
    draining: bool,
}

/// Held by a connection task; dropping it unregisters the connection.
#[derive(Debug)]
pub struct ConnectionGuard {
    registry: Arc<ConnectionRegistry>,
    source: IpAddr,
    id: u64,
    /// Tells the connection to finish its request and go (shutdown) or to close now (source banned, or the
    /// shutdown grace period over).
    pub closer: Arc<Closer>,
}

impl ConnectionRegistry {
    /// Registers a connection unless `source` already holds `max_per_source` of them.
    pub fn try_register(self: &Arc<Self>, source: IpAddr, max_per_source: u32) -> Option<ConnectionGuard> {
        let source = canonical(source);
        let mut sources = self.lock();
        let draining = sources.draining;
        let conns = sources.conns.entry(source).or_default();
        if conns.len() >= usize::try_from(max_per_source).unwrap_or(usize::MAX) {
            if conns.is_empty() {
                sources.conns.remove(&source);
            }
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let closer = Arc::new(Closer::default());
        if draining {
            closer.drain();
        }
        conns.insert(id, closer.clone());
        Some(ConnectionGuard {
            registry: self.clone(),
            source,
            id,
            closer,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sources> {
        self.by_source.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes every open connection of `source` at once (in-flight requests included); returns how many.
    pub fn close_source(&self, source: IpAddr) -> usize {
        let sources = self.lock();
        sources.conns.get(&canonical(source)).map_or(0, |conns| {
            for c in conns.values() {
                c.close();
            }
            conns.len()
        })
    }

    /// Lets every connection, open now or accepted later, finish its request in flight and then close.
    pub fn drain_all(&self) {
        let mut sources = self.lock();
        sources.draining = true;
        sources
            .conns
            .values()
            .flat_map(HashMap::values)
            .for_each(|c| c.drain());
    }

    /// Closes every connection; used when the shutdown grace period has run out.
    pub fn close_all(&self) {
        let sources = self.lock();
        sources
            .conns
            .values()
            .flat_map(HashMap::values)
            .for_each(|c| c.close());
    }

    #[must_use]
    pub fn open_connections(&self, source: IpAddr) -> usize {
        self.lock().conns.get(&canonical(source)).map_or(0, HashMap::len)
    }

    #[must_use]
    pub fn total(&self) -> usize {
        self.lock().conns.values().map(HashMap::len).sum()
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut sources = self.registry.lock();
        if let Some(conns) = sources.conns.get_mut(&self.source) {
            conns.remove(&self.id);
            if conns.is_empty() {
                sources.conns.remove(&self.source);
            }
        }
    }
}

/// A connection's way out: open, then draining (finish the request in flight, take no other), then closed (go
/// now). It only ever moves forward.
///
/// Why not a `CancellationToken` (two of them): every poll of its wait takes the token's lock and the `Notify`'s,
/// and a connection waits on it around every request. Here a poll is one atomic load; the lock is taken only to
/// register a task the first time, and to wake tasks when the state moves.
#[derive(Debug, Default)]
pub struct Closer {
    /// 0 (open, the default), [`DRAINING`] or [`CLOSED`].
    state: AtomicU8,
    /// Tasks to wake at the next move. An entry is left by each wait that was polled since the last move (a
    /// connection has at most three: the front, hyper's side, a tunnel), so the list stays short.
    wakers: Mutex<Vec<Waker>>,
}

const DRAINING: u8 = 1;
const CLOSED: u8 = 2;

impl Closer {
    pub fn drain(&self) {
        self.advance(DRAINING);
    }

    pub fn close(&self) {
        self.advance(CLOSED);
    }

    #[must_use]
    pub fn is_draining(&self) -> bool {
        self.state.load(Ordering::SeqCst) >= DRAINING
    }

    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.state.load(Ordering::SeqCst) >= CLOSED
    }

    /// Completes once the connection must stop taking requests (draining or closed).
    #[must_use]
    pub fn draining(&self) -> Wait<'_> {
        Wait::new(self, DRAINING)
    }

    /// Completes once the connection must close now.
    #[must_use]
    pub fn closed(&self) -> Wait<'_> {
        Wait::new(self, CLOSED)
    }

    fn advance(&self, to: u8) {
        if self.state.fetch_max(to, Ordering::SeqCst) < to {
            let wakers = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(PoisonError::into_inner));
            wakers.into_iter().for_each(Waker::wake);
        }
    }
}

/// The future of [`Closer::draining`] and [`Closer::closed`].
#[derive(Debug)]
pub struct Wait<'a> {
    closer: &'a Closer,
    target: u8,
    /// The state and waker of this wait's entry in `closer.wakers`. The entry is live while the state has not
    /// moved (a move wakes and removes every entry), so a poll with the same waker needs no lock.
    registered: Option<(u8, Waker)>,
}

impl<'a> Wait<'a> {
    fn new(closer: &'a Closer, target: u8) -> Self {
        Self {
            closer,
            target,
            registered: None,
        }
    }
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let state = self.closer.state.load(Ordering::SeqCst);
        if state >= self.target {
            return Poll::Ready(());
        }
        if let Some((seen, waker)) = &self.registered
            && *seen == state
            && waker.will_wake(cx.waker())
        {
            return Poll::Pending;
        }
        self.closer
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(cx.waker().clone());
        self.registered = Some((state, cx.waker().clone()));
        // A move between the load above and the registration woke a list this entry was not yet in.
        if self.closer.state.load(Ordering::SeqCst) >= self.target {
            return Poll::Ready(());
        }
        Poll::Pending
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
        assert!(g1.closer.is_closed() && g2.closer.is_closed() && !g3.closer.is_closed());
        assert_eq!(reg.open_connections("192.0.2.2".parse().unwrap()), 1);
        drop(g1);
        assert!(reg.try_register(a, 2).is_some());
        drop((g2, g3));
        assert_eq!(reg.total(), 0);
    }

    #[tokio::test]
    async fn closer_wakes_waiting_tasks_as_it_moves() {
        let reg = Arc::new(ConnectionRegistry::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let g = reg.try_register(a, 2).unwrap();
        let closer = g.closer.clone();
        let waits = {
            let closer = closer.clone();
            tokio::spawn(async move {
                closer.draining().await;
                let drained_first = !closer.is_closed();
                closer.closed().await;
                drained_first
            })
        };
        // Both waits must be pending (registered) before anything moves.
        tokio::task::yield_now().await;
        assert!(!waits.is_finished());
        reg.drain_all();
        tokio::task::yield_now().await;
        assert!(closer.is_draining() && !closer.is_closed());
        // A connection registered after the drain started drains from birth.
        let late = reg.try_register(a, 2).unwrap();
        assert!(late.closer.is_draining());
        reg.close_source(a);
        let drained_first = tokio::time::timeout(std::time::Duration::from_secs(5), waits)
            .await
            .expect("the waits were woken")
            .unwrap();
        assert!(drained_first);
        assert!(late.closer.is_closed());
    }
}
