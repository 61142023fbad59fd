//! The one timer a connection keeps for all its deadlines.

use std::pin::Pin;

use tokio::time::{Instant, Sleep};

/// A connection's one timer (client side in `front.rs`, upstream side in `pool.rs`). Its deadline moves with
/// every request, but the registered [`Sleep`] moves only when it fires before the deadline or the deadline comes
/// earlier, so a request usually costs no timer work (a fresh `Sleep` per request costs a timer-wheel insertion
/// and removal).
pub struct Timer {
    sleep: Pin<Box<Sleep>>,
    deadline: Instant,
}

impl Timer {
    #[must_use]
    pub fn new(deadline: Instant) -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            deadline,
        }
    }

    pub fn set(&mut self, deadline: Instant) {
        self.deadline = deadline;
        if deadline < self.sleep.deadline() {
            self.sleep.as_mut().reset(deadline);
        }
    }

    /// Completes once the deadline has passed.
    pub async fn expired(&mut self) {
        loop {
            self.sleep.as_mut().await;
            if Instant::now() >= self.deadline {
                return;
            }
            self.sleep.as_mut().reset(self.deadline);
        }
    }
}
