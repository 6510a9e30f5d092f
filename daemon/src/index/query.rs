//! What a component listing asks for: its filters and its order.

use std::cmp::Ordering;

use sitesync_model::{DrawingId, Status};

use super::*;

/// Filters and order of a component listing.
#[derive(Clone, Debug, Default)]
pub struct ComponentQuery {
    pub drawing_id: Option<DrawingId>,
    pub status: Option<Status>,
    pub kind: Option<String>,
    pub q: Option<String>,
    pub attributes: Vec<(String, String)>,
    pub min_completion: Option<f64>,
    pub max_completion: Option<f64>,
    pub include_deleted: bool,
    pub sort: Sort,
}

/// Component list order; ties go by tag, then id, so every order is total
/// and pages never overlap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sort {
    #[default]
    Tag,
    TagDesc,
    Completion,
    CompletionDesc,
    UpdatedAt,
    UpdatedAtDesc,
}

impl Sort {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "tag" => Self::Tag,
            "-tag" => Self::TagDesc,
            "completion" => Self::Completion,
            "-completion" => Self::CompletionDesc,
            "updated_at" => Self::UpdatedAt,
            "-updated_at" => Self::UpdatedAtDesc,
            _ => return None,
        })
    }

    pub(super) fn compare(self, a: &Slot, b: &Slot) -> Ordering {
        let by_tag = |a: &Slot, b: &Slot| a.tag.cmp(&b.tag).then(a.id.cmp(&b.id));
        let by_completion = |a: &Slot, b: &Slot| a.completion_percent.total_cmp(&b.completion_percent);
        let by_updated = |a: &Slot, b: &Slot| a.updated_at.cmp(&b.updated_at);
        match self {
            Self::Tag => by_tag(a, b),
            Self::TagDesc => by_tag(b, a),
            Self::Completion => by_completion(a, b).then(by_tag(a, b)),
            Self::CompletionDesc => by_completion(b, a).then(by_tag(a, b)),
            Self::UpdatedAt => by_updated(a, b).then(by_tag(a, b)),
            Self::UpdatedAtDesc => by_updated(b, a).then(by_tag(a, b)),
        }
    }
}
