//! What the decoded documents in memory weigh, and the budget they share.
//!
//! A repository keeps documents decoded while they are in use
//! ([`crate::Repo`]); a count of documents alone does not bound memory,
//! because one drawing with years of history weighs as much as hundreds
//! of fresh ones, and a relay keeps one repository per organisation. So
//! every cached document carries an estimate of its heap ([`weight`]), and
//! repositories draw on one [`CacheBudget`]: a relay's spaces share one,
//! a daemon's repository has its own. A repository whose write or read
//! leaves the budget over evicts its own least recently used documents;
//! the budget's clock orders uses across repositories, so an owner of
//! several (the relay) can shed the ones idle longest
//! ([`CacheBudget::tick`], [`crate::Repo::last_used`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use sitesync_model::automerge::{Automerge, ReadDoc};
use uuid::Uuid;

/// Heap per operation, per change and per actor of a decoded document, as
/// measured with a counting allocator on sitesync's own documents
/// (`tests/cache_weight.rs` checks the estimate stays within 0.5–2× of
/// the measured heap): a drawing of 50 components, 607 ops and 51
/// changes, holds 91 KB; each further milestone write (one change of one
/// op, with its operation metadata) ~500 bytes. The change graph keeps a
/// clock per actor and fragment, so actors cost more the more there are.
const BYTES_PER_OP: usize = 100;
const BYTES_PER_CHANGE: usize = 400;
const BYTES_PER_ACTOR: usize = 80;

/// The estimated heap of a decoded document, from counts Automerge keeps
/// (reading them costs nothing).
pub fn weight(doc: &Automerge) -> usize {
    let s = doc.stats();
    let (ops, changes, actors) = (s.num_ops as usize, s.num_changes as usize, s.num_actors as usize);
    ops.saturating_mul(BYTES_PER_OP)
        .saturating_add(changes.saturating_mul(BYTES_PER_CHANGE))
        .saturating_add(actors.saturating_mul(BYTES_PER_ACTOR + actors / 4))
}

/// Bytes of decoded documents that repositories sharing this budget may
/// keep in memory together, and the clock their uses are ordered by.
#[derive(Debug)]
pub struct CacheBudget {
    max_bytes: usize,
    /// The sum of the weights of every document the sharing repositories
    /// hold decoded.
    used: AtomicUsize,
    clock: AtomicU64,
}

impl CacheBudget {
    pub fn new(max_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            max_bytes,
            used: AtomicUsize::new(0),
            clock: AtomicU64::new(0),
        })
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// The estimated bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn over(&self) -> bool {
        self.used() > self.max_bytes
    }

    /// The next use, later than every use before it in any repository
    /// sharing this budget.
    pub fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn add(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    fn sub(&self, bytes: usize) {
        // Never below zero, even if a caller's accounting were off by one.
        let _ = self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
            Some(u.saturating_sub(bytes))
        });
    }
}

/// A value whose weight is known (a cached document).
pub(crate) trait Weighed {
    fn weight(&self) -> usize;
}

/// A map of cached documents that keeps its budget's account: every
/// insert, removal and [`Weighted::update`] adds or takes its weight.
pub(crate) struct Weighted<V: Weighed> {
    map: HashMap<Uuid, V>,
    bytes: usize,
    budget: Arc<CacheBudget>,
}

impl<V: Weighed> Weighted<V> {
    pub fn new(budget: Arc<CacheBudget>) -> Self {
        Self {
            map: HashMap::new(),
            bytes: 0,
            budget,
        }
    }

    /// What this map's documents weigh together.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn budget(&self) -> &CacheBudget {
        &self.budget
    }

    pub fn insert(&mut self, id: Uuid, value: V) {
        self.add(value.weight());
        if let Some(old) = self.map.insert(id, value) {
            self.take(old.weight());
        }
    }

    pub fn remove(&mut self, id: &Uuid) -> Option<V> {
        let value = self.map.remove(id)?;
        self.take(value.weight());
        Some(value)
    }

    pub fn clear(&mut self) {
        self.take(self.bytes);
        self.map.clear();
    }

    pub fn extend(&mut self, values: impl IntoIterator<Item = (Uuid, V)>) {
        for (id, v) in values {
            self.insert(id, v);
        }
    }

    /// Changes a value in place; its weight is taken again afterwards.
    pub fn update<T>(&mut self, id: &Uuid, f: impl FnOnce(&mut V) -> T) -> Option<T> {
        let value = self.map.get_mut(id)?;
        let before = value.weight();
        let out = f(value);
        let after = value.weight();
        self.take(before);
        self.add(after);
        Some(out)
    }

    /// A value to change in ways that keep its weight (use
    /// [`Weighted::update`] for any that does not).
    pub fn get_mut(&mut self, id: &Uuid) -> Option<&mut V> {
        self.map.get_mut(id)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&Uuid, &mut V)> {
        self.map.iter_mut()
    }

    fn add(&mut self, bytes: usize) {
        self.bytes += bytes;
        self.budget.add(bytes);
    }

    fn take(&mut self, bytes: usize) {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        self.budget.sub(bytes);
    }
}

impl<V: Weighed> std::ops::Deref for Weighted<V> {
    type Target = HashMap<Uuid, V>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl<V: Weighed> Drop for Weighted<V> {
    /// A dropped repository gives its share back to a budget others keep.
    fn drop(&mut self) {
        self.take(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct W(usize);
    impl Weighed for W {
        fn weight(&self) -> usize {
            self.0
        }
    }

    /// The budget's account follows every way a map changes, across maps
    /// sharing it.
    #[test]
    fn the_account_follows_inserts_updates_removals_and_drops() {
        let budget = CacheBudget::new(100);
        let mut a = Weighted::new(budget.clone());
        let mut b = Weighted::new(budget.clone());
        let (x, y) = (Uuid::from_u128(1), Uuid::from_u128(2));
        a.insert(x, W(40));
        b.insert(y, W(50));
        assert_eq!((a.bytes(), b.bytes(), budget.used()), (40, 50, 90));
        assert!(!budget.over());
        a.update(&x, |w| w.0 = 70);
        assert_eq!(budget.used(), 120);
        assert!(budget.over());
        a.insert(x, W(10)); // replaces
        assert_eq!((a.bytes(), budget.used()), (10, 60));
        assert_eq!(b.remove(&y).map(|w| w.0), Some(50));
        assert_eq!(budget.used(), 10);
        b.extend([(y, W(5)), (x, W(5))]);
        b.clear();
        assert_eq!((b.bytes(), budget.used()), (0, 10));
        drop(a);
        assert_eq!(budget.used(), 0);
        assert!(budget.tick() < budget.tick());
    }
}
