//! Saved index entries: a record per drawing (`index/<project>/<drawing>`)
//! holding the heads its entries were read at and the packed views, read
//! back at start for every drawing whose document still has those heads.

use std::io::{Read as _, Write as _};

use sitesync_model::automerge::ChangeHash;
use sitesync_model::{Component, DrawingId, ProjectId};
use sitesync_sync::Repo;

use super::*;

/// The layout of a saved record, and of the packed views in it. Bump it
/// when [`Component`] or how a view is derived changes: a record of another
/// format is ignored (its drawing is read from the document again), never
/// decoded. `the_packed_view_format_is_pinned` fails when the packed bytes
/// change, as a reminder.
pub(super) const SAVED_FORMAT: u32 = 2;

/// A decoded view is at most this large, so a record that is not what its
/// format says (a missed bump) cannot make a length allocate the machine.
pub(super) const SAVED_VIEW_LIMIT: usize = 1 << 24;

pub(super) fn saved_name(pid: ProjectId, did: DrawingId) -> String {
    sitesync_sync::keys::index(pid.0, did.0)
}

/// A drawing's entries as [`ProjectIndex::take_unsaved`] took them.
pub struct Unsaved {
    pub project: ProjectId,
    pub drawing: DrawingId,
    pub(super) heads: Vec<ChangeHash>,
    pub(super) views: Vec<Box<[u8]>>,
}

impl Unsaved {
    /// The metadata record: the format (4 bytes, little-endian), then,
    /// deflated, the head count and the sorted heads, the view count, then
    /// each packed view after its length. Deflated because views repeat
    /// their ids, times and milestone names: at 100,000 components, ~50 MB
    /// packed, 4.6 MB deflated.
    pub fn record(&self) -> (String, Vec<u8>) {
        let mut heads = self.heads.clone();
        heads.sort();
        let mut raw =
            Vec::with_capacity(4 + 32 * heads.len() + self.views.iter().map(|v| v.len() + 4).sum::<usize>());
        raw.extend_from_slice(&(heads.len() as u32).to_le_bytes());
        for h in &heads {
            raw.extend_from_slice(&h.0);
        }
        raw.extend_from_slice(&(self.views.len() as u32).to_le_bytes());
        for v in &self.views {
            raw.extend_from_slice(&(v.len() as u32).to_le_bytes());
            raw.extend_from_slice(v);
        }
        let mut out = flate2::write::DeflateEncoder::new(
            SAVED_FORMAT.to_le_bytes().to_vec(),
            flate2::Compression::fast(),
        );
        out.write_all(&raw).expect("writing to memory");
        (
            saved_name(self.project, self.drawing),
            out.finish().expect("writing to memory"),
        )
    }
}

/// The packed views of a drawing's saved record (still to read with
/// [`saved_views`]), if the record holds exactly the document's `heads`
/// in this format. Anything else (no record, stale, damaged, another
/// format) is `None`: the caller reads the document, the truth.
pub(super) fn saved(
    repo: &Repo,
    pid: ProjectId,
    did: DrawingId,
    mut heads: Vec<ChangeHash>,
) -> Option<Vec<u8>> {
    let record = match repo.store().get_meta(&saved_name(pid, did)) {
        Ok(record) => record?,
        Err(e) => {
            tracing::warn!(drawing = %did, error = %e, "saved index entries unreadable; reading the drawing");
            return None;
        }
    };
    heads.sort();
    open_saved(&record, &heads)
}

/// [`saved`] of a record in hand.
pub(super) fn open_saved(record: &[u8], heads: &[ChangeHash]) -> Option<Vec<u8>> {
    let (format, deflated) = record.split_first_chunk::<4>()?;
    if u32::from_le_bytes(*format) != SAVED_FORMAT {
        return None;
    }
    let mut raw = Vec::new();
    flate2::read::DeflateDecoder::new(deflated)
        .read_to_end(&mut raw)
        .ok()?;
    let (count, rest) = raw.split_first_chunk::<4>()?;
    let count = u32::from_le_bytes(*count) as usize;
    let saved_heads = rest.get(..32 * count)?;
    if count != heads.len()
        || saved_heads
            .chunks_exact(32)
            .zip(heads)
            .any(|(saved, h)| saved != h.0)
    {
        return None;
    }
    raw.drain(..4 + 32 * count);
    Some(raw)
}

/// One view of a saved record: its entry fields read straight from its
/// packed bytes, or (a view packed as JSON, with a conflict) decoded whole.
pub(super) enum SavedView<'r> {
    Packed(Head<'r>, &'r [u8]),
    Whole(Component, &'r [u8]),
}

/// The views in `packed` (a record's views, as [`saved`] gives them), if
/// every one reads back as one of drawing `did`'s; all or nothing, so a
/// damaged record never leaves part of itself in the index.
pub(super) fn saved_views(packed: &[u8], did: DrawingId) -> Option<Vec<SavedView<'_>>> {
    let (count, mut packed) = packed.split_first_chunk::<4>()?;
    let count = u32::from_le_bytes(*count) as usize;
    let mut views = Vec::with_capacity(count.min(4096));
    while let Some((len, rest)) = packed.split_first_chunk::<4>() {
        let (view, rest) = rest.split_at_checked(u32::from_le_bytes(*len) as usize)?;
        packed = rest;
        let view = match view.split_first()? {
            (0, bincode) => SavedView::Packed(Head::read_packed(bincode)?, view),
            _ => SavedView::Whole(decode(view)?, view),
        };
        let drawing = match &view {
            SavedView::Packed(head, _) => head.drawing_id,
            SavedView::Whole(c, _) => c.drawing_id,
        };
        if drawing != did {
            return None;
        }
        views.push(view);
    }
    (packed.is_empty() && views.len() == count).then_some(views)
}
