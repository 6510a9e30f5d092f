//! Applying a peer's sync message to a document: Automerge's
//! `receive_sync_message`, without its walk over the whole history.
//!
//! automerge 0.12 trims the hashes it has sent a peer (`State::sent_hashes`)
//! to those the peer's heads do not yet include by walking every ancestor
//! of those heads, every time a message arrives, however few hashes there
//! are to trim (`ChangeGraph::remove_ancestors`, which has no early exit).
//! On a drawing with 25,000 writes of history that walk was 67% of a
//! daemon's CPU while it synced single writes through a relay (`perf`), and
//! the relay and every peer pay it too: each message costs the age of the
//! document. [`receive`] does what Automerge's does, step for step, but
//! finds which sent hashes the peer now has from the changes *after* its
//! heads (`get_changes_meta`, which Automerge computes from vector clocks it
//! caches every 16 changes): the cost follows what the peer lacks, not the
//! history. `tests/receive.rs` checks it leaves document and state exactly
//! as Automerge's does, over random histories and message orders.
//!
//! Pure: a document, a state and a message in, the same changed out.

use std::collections::{BTreeSet, HashSet};

use sitesync_model::automerge::sync::{Capability, Message, MessageFlags, State};
use sitesync_model::automerge::{Automerge, AutomergeError, ChangeHash};

/// Applies `message` from a peer to `doc` and to the peer's `state`, as
/// `SyncDoc::receive_sync_message` does.
pub fn receive(doc: &mut Automerge, state: &mut State, message: Message) -> Result<(), AutomergeError> {
    state.in_flight = false;
    let before_heads = doc.get_heads();
    let Message {
        heads: message_heads,
        changes: message_changes,
        need: message_need,
        have: message_have,
        flags: message_flags,
        ..
    } = message;

    if let Some(flags) = message_flags {
        // A peer that sends flags speaks the second message version.
        let mut caps = vec![Capability::MessageV2];
        if flags.contains(MessageFlags::SUPPORTS_SYNC_RESET) {
            caps.push(Capability::SyncReset);
        }
        state.their_capabilities = Some(caps);
        if flags.contains(MessageFlags::SYNC_RESET) {
            state.sent_hashes.clear();
        }
        state.peer_read_only = flags.contains(MessageFlags::READ_ONLY);
    }

    let changes_is_empty = message_changes.is_empty();
    if !changes_is_empty && !state.read_only {
        let joined: Vec<u8> = message_changes.iter().flatten().copied().collect();
        doc.load_incremental(&joined)?;
        let before: HashSet<&ChangeHash> = before_heads.iter().collect();
        let after: HashSet<ChangeHash> = doc.get_heads().into_iter().collect();
        state.shared_heads = advance_heads(&before, &after, &state.shared_heads);
    }

    // The hashes sent that the peer's heads now include are forgotten.
    forget_sent_they_have(doc, &message_heads, &mut state.sent_hashes);

    if changes_is_empty && message_heads == before_heads {
        state.last_sent_heads.clone_from(&message_heads);
    }

    let known_heads: Vec<&ChangeHash> = message_heads.iter().filter(|h| has(doc, h)).collect();
    if known_heads.len() == message_heads.len() {
        state.shared_heads.clone_from(&message_heads);
        // A peer that has lost all its data: start over, as if new.
        if message_heads.is_empty() {
            state.last_sent_heads = Default::default();
            state.sent_hashes = Default::default();
        }
    } else {
        let mut shared: Vec<ChangeHash> = state.shared_heads.iter().chain(known_heads).copied().collect();
        shared.sort();
        shared.dedup();
        state.shared_heads = shared;
    }

    state.their_have = Some(message_have);
    state.their_heads = Some(message_heads);
    state.their_need = Some(message_need);
    Ok(())
}

/// Removes from `sent` the hashes that are ancestors of `their_heads` (those
/// of them this document has), as Automerge's `filter_changes` does: a hash
/// stays when it is one of the changes after those heads, or not one of
/// this document's at all.
fn forget_sent_they_have(doc: &Automerge, their_heads: &[ChangeHash], sent: &mut BTreeSet<ChangeHash>) {
    if sent.is_empty() {
        return;
    }
    let known: Vec<ChangeHash> = their_heads.iter().filter(|h| has(doc, h)).copied().collect();
    if known.is_empty() {
        // No ancestors: nothing to forget.
        return;
    }
    let after: HashSet<ChangeHash> = doc.get_changes_meta(&known).into_iter().map(|c| c.hash).collect();
    sent.retain(|h| after.contains(h) || !has(doc, h));
}

/// Whether `doc` has the change `hash`.
fn has(doc: &Automerge, hash: &ChangeHash) -> bool {
    doc.get_change_meta_by_hash(hash).is_some()
}

/// The heads shared with a peer after applying its changes: our new heads,
/// and those shared before that are still heads (Automerge's
/// `advance_heads`).
fn advance_heads(
    old_heads: &HashSet<&ChangeHash>,
    new_heads: &HashSet<ChangeHash>,
    old_shared: &[ChangeHash],
) -> Vec<ChangeHash> {
    let mut advanced: Vec<ChangeHash> = new_heads
        .iter()
        .filter(|h| !old_heads.contains(h))
        .chain(old_shared.iter().filter(|h| new_heads.contains(h)))
        .copied()
        .collect();
    advanced.sort();
    advanced.dedup();
    advanced
}
