//! Presence: who is viewing or editing what, relayed between devices and
//! never stored. This module owns the one rule that keeps it from storming
//! and the table every node keeps; it is pure (the caller passes the time).
//!
//! Each heartbeat carries its origin's sequence number ([`PresenceEntry::seq`],
//! strictly increasing per device). A node records and passes on an entry
//! only when it is newer than the last one it saw from the same (project,
//! device, user): in any loop of peers (relay → B → LAN → A → relay) every
//! heartbeat then crosses each node once and stops, where before it circled
//! forever (~11,000 messages a second from one `PUT /v1/presence`).
//!
//! The table is bounded: entries expire [`TTL_MS`] after they were last
//! heard (pruned on writes, at most once a second and whenever the table
//! is full), and a full table takes no new key until one expires. Each
//! connection passes on at most [`PER_SECOND`] entries a second
//! ([`budget`]). Entries are checked ([`check`]) before
//! anything records them, and every entry is kept with the organisation of
//! the connection it came from, so one organisation's presence is never
//! shown to, or passed on to, another's.

use std::collections::HashMap;

use crate::protocol::{PresenceEntry, WireId};
use crate::rate::Rate;

/// A heartbeat expires this long after it was last heard (ms).
pub const TTL_MS: i64 = 30_000;
/// Expired entries are pruned at most this often (ms), and whenever the
/// table is full: a write costs O(1), not a walk of the table.
pub const PRUNE_EVERY_MS: i64 = 1_000;
/// Presence entries one connection may pass on per second, sustained
/// ([`budget`]); a burst of twice as many is allowed. A LAN peer passing
/// on a whole site's heartbeats (one per user every few seconds) stays
/// far below it; past it, entries are dropped and counted, the
/// connection stays.
pub const PER_SECOND: u32 = 50;
/// Most (project, device, user) keys one node holds at once.
pub const MAX_ENTRIES: usize = 10_000;
/// Longest user name, in characters (as the HTTP API's `X-User`).
pub const MAX_USER_CHARS: usize = 200;

/// Why a presence entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    #[error("presence user must be 1 to {MAX_USER_CHARS} characters of plain text")]
    BadUser,
    #[error("presence activity {activity} is not 0 (viewing) or 1 (editing)")]
    BadActivity { activity: u8 },
}

/// Checks an entry's fields: a peer's bytes are bounded before they are kept.
pub fn check(entry: &PresenceEntry) -> Result<(), PresenceError> {
    let chars = entry.user.chars().count();
    if chars == 0 || chars > MAX_USER_CHARS || entry.user.chars().any(char::is_control) {
        return Err(PresenceError::BadUser);
    }
    if entry.activity > 1 {
        return Err(PresenceError::BadActivity {
            activity: entry.activity,
        });
    }
    Ok(())
}

/// What [`Board::offer`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Newer than anything heard for its key: recorded; pass it on.
    New,
    /// Already heard (or older): drop it.
    Seen,
    /// The table is full of live entries: dropped.
    Full,
    /// The connection sent more than its [`budget`]: dropped.
    Limited,
}

/// A connection's presence allowance: [`PER_SECOND`] entries a second,
/// in bursts of up to twice that.
pub fn budget(now_ms: i64) -> Rate {
    Rate::new(PER_SECOND, 2 * PER_SECOND, now_ms)
}

/// One live heartbeat as the table holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Heard {
    pub org: String,
    pub project: WireId,
    pub device: WireId,
    pub user: String,
    pub component: Option<WireId>,
    pub activity: u8,
    pub seq: u64,
    /// When this node last heard it (ms, the caller's clock).
    pub at_ms: i64,
}

/// An entry's key: its organisation too, so one organisation's entries
/// can never replace another's, whatever ids they claim.
type Key = (String, WireId, WireId, String);

/// The presence table of one node.
#[derive(Debug, Default)]
pub struct Board {
    entries: HashMap<Key, Heard>,
    /// When expired entries were last pruned.
    pruned_at_ms: i64,
}

impl Board {
    fn prune(&mut self, now_ms: i64) {
        self.entries.retain(|_, h| now_ms - h.at_ms < TTL_MS);
        self.pruned_at_ms = now_ms;
    }

    /// Offers `entry`, heard from a connection of organisation `org` (or
    /// made here), at `now_ms`. The caller has [`check`]ed it.
    pub fn offer(&mut self, org: &str, entry: &PresenceEntry, now_ms: i64) -> Offer {
        if now_ms - self.pruned_at_ms >= PRUNE_EVERY_MS {
            self.prune(now_ms);
        }
        let key = (org.to_owned(), entry.project, entry.device, entry.user.clone());
        match self.entries.get(&key) {
            Some(h) if h.seq >= entry.seq && now_ms - h.at_ms < TTL_MS => return Offer::Seen,
            Some(_) => {}
            None if self.entries.len() >= MAX_ENTRIES => {
                self.prune(now_ms);
                if self.entries.len() >= MAX_ENTRIES {
                    return Offer::Full;
                }
            }
            None => {}
        }
        self.entries.insert(
            key,
            Heard {
                org: org.to_owned(),
                project: entry.project,
                device: entry.device,
                user: entry.user.clone(),
                component: entry.component,
                activity: entry.activity,
                seq: entry.seq,
                at_ms: now_ms,
            },
        );
        Offer::New
    }

    /// The live entries of `project` heard from organisation `org`.
    pub fn live(&mut self, org: &str, project: WireId, now_ms: i64) -> Vec<Heard> {
        self.entries
            .values()
            .filter(|h| h.project == project && h.org == org && now_ms - h.at_ms < TTL_MS)
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(device: u8, user: &str, seq: u64) -> PresenceEntry {
        PresenceEntry {
            project: WireId([1; 16]),
            component: None,
            user: user.into(),
            device: WireId([device; 16]),
            activity: 0,
            seq,
        }
    }

    #[test]
    fn an_entry_is_new_once_and_then_only_when_newer() {
        let mut b = Board::default();
        assert_eq!(b.offer("acme", &entry(1, "ana", 5), 0), Offer::New);
        assert_eq!(b.offer("acme", &entry(1, "ana", 5), 1), Offer::Seen, "the echo");
        assert_eq!(
            b.offer("acme", &entry(1, "ana", 4), 2),
            Offer::Seen,
            "an older one"
        );
        assert_eq!(b.offer("acme", &entry(1, "ana", 6), 3), Offer::New);
        assert_eq!(
            b.offer("acme", &entry(2, "ana", 1), 3),
            Offer::New,
            "another device"
        );
        assert_eq!(b.len(), 2);
    }

    /// A loop of four nodes, each passing on what is new to it: one
    /// heartbeat is passed on once per node, and the loop goes quiet.
    #[test]
    fn a_loop_of_nodes_carries_a_heartbeat_once_around() {
        let mut boards: Vec<Board> = (0..4).map(|_| Board::default()).collect();
        let mut queue = vec![(0usize, entry(9, "ana", 1))];
        let mut passed = 0;
        while let Some((at, e)) = queue.pop() {
            if boards[at].offer("acme", &e, 0) == Offer::New {
                passed += 1;
                // A ring, both directions.
                queue.push(((at + 1) % 4, e.clone()));
                queue.push(((at + 3) % 4, e));
            }
            assert!(passed <= 4, "a storm");
        }
        assert_eq!(passed, 4);
    }

    #[test]
    fn entries_expire_and_the_table_is_bounded() {
        let mut b = Board::default();
        for n in 0..MAX_ENTRIES {
            assert_eq!(b.offer("acme", &entry(1, &format!("u{n}"), 1), 0), Offer::New);
        }
        assert_eq!(b.offer("acme", &entry(1, "one more", 1), 10), Offer::Full);
        // Expired entries are pruned on the next write, and a key heard
        // long ago is new again whatever its number.
        assert_eq!(b.offer("acme", &entry(1, "one more", 1), TTL_MS), Offer::New);
        assert_eq!(b.len(), 1);
        assert_eq!(
            b.offer("acme", &entry(1, "one more", 0), 2 * TTL_MS + 1),
            Offer::New
        );
    }

    /// The same ids claimed by another organisation are another key: they
    /// cannot replace (or hide) this organisation's entry.
    #[test]
    fn an_organisation_cannot_replace_anothers_entry() {
        let mut b = Board::default();
        assert_eq!(b.offer("acme", &entry(1, "ana", 5), 0), Offer::New);
        assert_eq!(b.offer("evil", &entry(1, "ana", 99), 1), Offer::New);
        let live = b.live("acme", WireId([1; 16]), 2);
        assert_eq!((live.len(), live[0].seq), (1, 5));
        assert_eq!(b.offer("acme", &entry(1, "ana", 5), 3), Offer::Seen);
    }

    #[test]
    fn a_connections_budget_allows_a_burst_then_its_rate() {
        let mut budget = budget(0);
        let burst = (0..1000).take_while(|_| budget.take(0)).count();
        assert_eq!(burst, 2 * PER_SECOND as usize);
        assert!(!budget.take(0));
        // A second later, a second's worth more.
        let more = (0..1000).take_while(|_| budget.take(1000)).count();
        assert_eq!(more, PER_SECOND as usize);
        // A clock that goes back gives nothing.
        assert!(!budget.take(500));
    }

    #[test]
    fn live_lists_one_organisations_entries_of_one_project() {
        let mut b = Board::default();
        b.offer("acme", &entry(1, "ana", 1), 0);
        b.offer("evil", &entry(2, "mallory", 1), 0);
        let live = b.live("acme", WireId([1; 16]), 1);
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].user, "ana");
        assert!(b.live("acme", WireId([1; 16]), TTL_MS).is_empty());
    }

    #[test]
    fn bad_entries_are_refused() {
        assert_eq!(check(&entry(1, "", 1)), Err(PresenceError::BadUser));
        assert_eq!(check(&entry(1, &"x".repeat(201), 1)), Err(PresenceError::BadUser));
        assert_eq!(check(&entry(1, "a\nb", 1)), Err(PresenceError::BadUser));
        let mut e = entry(1, "ana", 1);
        e.activity = 7;
        assert_eq!(check(&e), Err(PresenceError::BadActivity { activity: 7 }));
        check(&entry(1, &"é".repeat(200), 1)).unwrap();
    }
}
