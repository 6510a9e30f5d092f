//! Running a write's independent per-document work on the machine's cores.
//!
//! A bulk of 10,000 milestone updates touches ~500 drawings, an import
//! batch of 500 rows ~10, and each drawing costs milliseconds to load,
//! apply, encode and re-read, while a second core sat idle (`perf` of the
//! benchmark's bulk: every sample on one thread). [`Workers`] runs such
//! work on scoped threads, a few items at a time from a shared queue, and
//! returns the results in the items' order, so callers (and
//! [`sitesync_model::apply_bulk`], through [`Spread`]) get exactly what
//! running it in order gives. One item, or one thread, runs inline: a
//! single write pays nothing.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use sitesync_model::Spread;

/// How many threads share a batch of per-document work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workers {
    threads: NonZeroUsize,
}

impl Workers {
    /// At most `threads` threads (the caller's included); 0 means 1.
    pub fn new(threads: usize) -> Self {
        Self {
            threads: NonZeroUsize::new(threads).unwrap_or(NonZeroUsize::MIN),
        }
    }

    /// One thread per core the process may use.
    pub fn per_core() -> Self {
        Self {
            threads: std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
        }
    }

    /// How many threads share a batch.
    pub fn threads(&self) -> usize {
        self.threads.get()
    }
}

impl Default for Workers {
    fn default() -> Self {
        Self::per_core()
    }
}

impl Spread for Workers {
    fn map<T: Send, R: Send>(&self, items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
        let threads = self.threads.get().min(items.len());
        if threads <= 1 {
            return items.into_iter().map(f).collect();
        }
        let n = items.len();
        let queue = Mutex::new(items.into_iter().enumerate());
        let work = || {
            let mut done = Vec::new();
            loop {
                // The lock is held only to take the next item.
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                let Some((i, item)) = next else { return done };
                done.push((i, f(item)));
            }
        };
        let mut done: Vec<(usize, R)> = std::thread::scope(|s| {
            let helpers: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
            let mut done = work();
            for h in helpers {
                // A panic in `f` is the caller's panic, as if run in order.
                done.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
            }
            done
        });
        debug_assert_eq!(done.len(), n);
        done.sort_unstable_by_key(|(i, _)| *i);
        done.into_iter().map(|(_, r)| r).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn results_come_back_in_the_items_order_whatever_the_threads() {
        for threads in [0, 1, 2, 3, 8] {
            let items: Vec<u64> = (0..257).collect();
            let out = Workers::new(threads).map(items, |x| {
                // Uneven work, so threads finish out of order.
                std::thread::sleep(std::time::Duration::from_micros(x % 7 * 50));
                x * x
            });
            assert_eq!(
                out,
                (0..257).map(|x| x * x).collect::<Vec<_>>(),
                "threads = {threads}"
            );
        }
        assert!(Workers::new(4).map(Vec::<u8>::new(), |x| x).is_empty());
    }

    #[test]
    fn work_is_shared_between_threads() {
        let seen = Mutex::new(HashSet::new());
        Workers::new(2).map((0..64).collect::<Vec<u32>>(), |_| {
            seen.lock().unwrap().insert(std::thread::current().id());
            // Long enough that one thread cannot take every item first.
            std::thread::sleep(std::time::Duration::from_millis(2));
        });
        assert_eq!(seen.into_inner().unwrap().len(), 2);
    }

    #[test]
    fn one_item_runs_on_the_calling_thread() {
        let caller = std::thread::current().id();
        let ran_on = Workers::new(4).map(vec![()], |()| std::thread::current().id());
        assert_eq!(ran_on, vec![caller]);
    }

    #[test]
    #[should_panic(expected = "item 3")]
    fn a_panic_in_the_work_reaches_the_caller() {
        Workers::new(2).map((0..8).collect::<Vec<u32>>(), |i| {
            std::thread::sleep(std::time::Duration::from_millis(1));
            assert_ne!(i, 3, "item 3");
        });
    }
}
