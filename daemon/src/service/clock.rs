//! The device's hybrid-logical clock.

use std::sync::atomic::{AtomicI64, Ordering};

use sitesync_model::Timestamp;

/// The device's hybrid-logical clock: never behind the wall clock, never
/// repeating or going back, so one device's writes are strictly ordered.
pub struct Clock {
    last: AtomicI64,
    wall: fn() -> i64,
}

impl Clock {
    pub fn system() -> Self {
        Self::with_source(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
        })
    }

    /// A clock reading time from `wall` (tests pass a fixed one).
    pub fn with_source(wall: fn() -> i64) -> Self {
        Self {
            last: AtomicI64::new(0),
            wall,
        }
    }

    /// Moves the clock past a time seen in another device's change, so this
    /// device's next write orders after everything it has seen.
    pub fn observe(&self, seen: Timestamp) {
        self.last.fetch_max(seen.0, Ordering::SeqCst);
    }

    pub fn now(&self) -> Timestamp {
        let wall = (self.wall)();
        let prev = self
            .last
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(wall.max(last + 1))
            })
            .expect("closure always returns Some");
        Timestamp(wall.max(prev + 1))
    }
}
