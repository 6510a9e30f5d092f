//! A token bucket, pure: the caller passes the time. Limits that are rates
//! (a connection's presence, an organisation's messages on a relay) are
//! one of these, so each is a number and a burst, tested once here.

/// `per_second` tokens a second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct Rate {
    per_second: f64,
    burst: f64,
    tokens: f64,
    at_ms: i64,
}

impl Rate {
    /// Full at `now_ms`.
    pub fn new(per_second: u32, burst: u32, now_ms: i64) -> Self {
        Self {
            per_second: f64::from(per_second.max(1)),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            at_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: i64) {
        let elapsed = (now_ms - self.at_ms).max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.at_ms = now_ms.max(self.at_ms);
    }

    /// Takes one token at `now_ms`; false (and nothing taken) when none is
    /// left: the caller drops what it was for.
    pub fn take(&mut self, now_ms: i64) -> bool {
        self.refill(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes one token at `now_ms` even when none is left, and says how
    /// long (ms) the caller should wait before going on, so the rate is
    /// kept by pacing instead of dropping: 0 while within it.
    pub fn pace(&mut self, now_ms: i64) -> u64 {
        self.refill(now_ms);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            0
        } else {
            (-self.tokens / self.per_second * 1000.0).ceil() as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let mut r = Rate::new(50, 100, 0);
        assert_eq!((0..1000).take_while(|_| r.take(0)).count(), 100);
        assert_eq!((0..1000).take_while(|_| r.take(1000)).count(), 50);
        // A clock that goes back gives nothing.
        assert!(!r.take(500));
    }

    #[test]
    fn pacing_keeps_the_rate_by_waiting() {
        let mut r = Rate::new(10, 10, 0);
        let waits: Vec<u64> = (0..12).map(|_| r.pace(0)).collect();
        assert_eq!(&waits[..10], &[0; 10]);
        assert_eq!(waits[10], 100, "one token of debt: a tenth of a second");
        assert_eq!(waits[11], 200);
        // Waiting as told pays the debt off.
        assert_eq!(r.pace(300), 0);
    }
}
