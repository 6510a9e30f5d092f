//! The daemon's derived state: per project, the drawing list and every
//! component view (built from the documents on first use, then kept current
//! by the service on every write and every sync), and per drawing, its
//! components' history rows.
//!
//! Nothing here is durable: every structure is rebuilt from the documents,
//! so it can never disagree with them after a restart.
//!
//! Costs that must not grow with the project: a write touches only its own
//! components' entries and its drawing's [`Tally`], and project totals are
//! a sum over drawings, never a walk over components. A listing filters and
//! sorts references and clones only the page it returns.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use sitesync_model::automerge::ChangeHash;
use sitesync_model::history::{index_changes, sort_newest_first};
use sitesync_model::{
    Component, ComponentId, DrawingDoc, DrawingId, DrawingInfo, GroupBy, HistoryEntry, ModelError, Progress,
    ProjectId, Status, Tally, rollup,
};
use sitesync_sync::{Repo, RepoError};

use crate::extract::{Page, Paged};

/// Derived state of one project.
pub struct ProjectIndex {
    pub drawings: BTreeMap<DrawingId, DrawingInfo>,
    components: HashMap<ComponentId, Component>,
    /// Per drawing: the ids of its components and the tally of the live
    /// ones, recomputed from those few entries when one of them changes.
    members: HashMap<DrawingId, Members>,
}

#[derive(Default)]
struct Members {
    ids: Vec<ComponentId>,
    tally: Tally,
}

/// What [`ProjectIndex::put`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    Deleted,
}

impl Change {
    /// The event name.
    pub fn event(self) -> &'static str {
        match self {
            Self::Created => "component.created",
            Self::Updated => "component.updated",
            Self::Deleted => "component.deleted",
        }
    }
}

impl ProjectIndex {
    /// Reads the project's drawing list and every drawing's components.
    pub fn build(repo: &Repo, pid: ProjectId) -> Result<Self, RepoError> {
        let drawings: BTreeMap<_, _> = repo
            .read_project(pid, |p| p.drawings())??
            .into_iter()
            .map(|d| (d.id, d))
            .collect();
        let mut index = Self {
            drawings,
            components: HashMap::new(),
            members: HashMap::new(),
        };
        let ids: Vec<DrawingId> = index.drawings.keys().copied().collect();
        for id in ids {
            // A drawing listed before its document arrived (sync) has no
            // components yet.
            match repo.read_drawing(id, |d| d.components()) {
                Ok(list) => {
                    for c in list? {
                        index.put(c);
                    }
                }
                Err(RepoError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(index)
    }

    pub fn get(&self, cid: ComponentId) -> Option<&Component> {
        self.components.get(&cid)
    }

    /// Every component, deleted ones included.
    pub fn all(&self) -> &HashMap<ComponentId, Component> {
        &self.components
    }

    /// Components not deleted.
    pub fn live(&self) -> impl Iterator<Item = &Component> {
        self.components.values().filter(|c| !c.deleted)
    }

    /// Puts a fresh view in, keeping its drawing's tally current. Returns
    /// what changed, or `None` when the view is what the index held.
    pub fn put(&mut self, c: Component) -> Option<Change> {
        let change = match self.components.get(&c.id) {
            None => Change::Created,
            Some(old) if old == &c => return None,
            Some(old) if !old.deleted && c.deleted => Change::Deleted,
            Some(_) => Change::Updated,
        };
        let members = self.members.entry(c.drawing_id).or_default();
        if change == Change::Created {
            members.ids.push(c.id);
        }
        self.components.insert(c.id, c);
        let mut tally = Tally::default();
        for id in &members.ids {
            if let Some(c) = self.components.get(id).filter(|c| !c.deleted) {
                tally.add(c);
            }
        }
        members.tally = tally;
        Some(change)
    }

    /// The live components of one drawing, summed.
    pub fn drawing_tally(&self, did: DrawingId) -> Tally {
        self.members.get(&did).map(|m| m.tally).unwrap_or_default()
    }

    /// The project's rollup: grouped ones walk the components, the totals
    /// are a sum of the drawings' tallies.
    pub fn rollup(&self, group_by: Option<GroupBy>) -> Progress {
        match group_by {
            None => {
                let mut total = Tally::default();
                for m in self.members.values() {
                    total.merge(&m.tally);
                }
                total.progress()
            }
            Some(_) => rollup(
                self.live().map(|c| (c, self.drawings.get(&c.drawing_id))),
                group_by,
            ),
        }
    }

    /// One page of the components matching `q`, in its order. Filters and
    /// sorts references; only the page is cloned.
    pub fn query(&self, q: &ComponentQuery, page: Page) -> Paged<Component> {
        let needle = q.q.as_ref().map(|s| s.to_lowercase());
        let mut hits: Vec<&Component> = self
            .components
            .values()
            .filter(|c| q.include_deleted || !c.deleted)
            .filter(|c| q.drawing_id.is_none_or(|d| c.drawing_id == d))
            .filter(|c| q.status.is_none_or(|s| c.status == s))
            .filter(|c| q.kind.as_ref().is_none_or(|k| &c.kind == k))
            .filter(|c| needle.as_ref().is_none_or(|n| c.tag.to_lowercase().contains(n)))
            .filter(|c| q.attributes.iter().all(|(k, v)| c.attributes.get(k) == Some(v)))
            .filter(|c| q.min_completion.is_none_or(|m| c.completion_percent >= m))
            .filter(|c| q.max_completion.is_none_or(|m| c.completion_percent <= m))
            .collect();
        hits.sort_unstable_by(|a, b| q.sort.compare(a, b));
        page.of_cloned(&hits)
    }
}

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

    fn compare(self, a: &Component, b: &Component) -> Ordering {
        let by_tag = |a: &Component, b: &Component| a.tag.cmp(&b.tag).then(a.id.cmp(&b.id));
        let by_completion =
            |a: &Component, b: &Component| a.completion_percent.total_cmp(&b.completion_percent);
        let by_updated = |a: &Component, b: &Component| a.updated_at.cmp(&b.updated_at);
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

/// History rows of one drawing document, indexed up to `heads`. Built from
/// the change log on first use, then extended with only the changes made
/// since, so a history request never rescans the whole log.
#[derive(Default)]
pub struct HistoryIndex {
    heads: Vec<ChangeHash>,
    rows: HashMap<ComponentId, Vec<HistoryEntry>>,
}

impl HistoryIndex {
    pub fn catch_up(&mut self, doc: &DrawingDoc) -> Result<(), ModelError> {
        let am = doc.automerge();
        // A head we indexed but the document lacks (a damaged record was
        // skipped on reload) means the rows no longer match: start over.
        if self.heads.iter().any(|h| am.get_change_meta_by_hash(h).is_none()) {
            self.heads.clear();
            self.rows.clear();
        }
        let new = am.get_changes(&self.heads);
        if new.is_empty() {
            return Ok(());
        }
        for (cid, row) in index_changes(am, &new)? {
            self.rows.entry(cid).or_default().push(row);
        }
        for rows in self.rows.values_mut() {
            sort_newest_first(rows);
        }
        self.heads = am.get_heads();
        Ok(())
    }

    /// A component's rows, newest first.
    pub fn rows(&self, cid: ComponentId) -> Vec<HistoryEntry> {
        self.rows.get(&cid).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component(n: u128, drawing: u128, hours: f64, completion: f64, deleted: bool) -> Component {
        Component {
            id: ComponentId::from_u128(n),
            project_id: ProjectId::from_u128(1),
            drawing_id: DrawingId::from_u128(drawing),
            tag: format!("T-{n:03}"),
            kind: "spool".into(),
            template_id: sitesync_model::TemplateId::from_u128(9),
            workflow_type: sitesync_model::WorkflowType::Discrete,
            quantity_total: None,
            unit: None,
            budget_hours: Some(hours),
            attributes: BTreeMap::new(),
            completion_percent: completion,
            status: Status::of(completion),
            deleted,
            created_at: sitesync_model::Timestamp(1),
            updated_at: sitesync_model::Timestamp(n as i64),
            updated_by: "u".into(),
            milestones: Vec::new(),
        }
    }

    fn empty() -> ProjectIndex {
        ProjectIndex {
            drawings: BTreeMap::new(),
            components: HashMap::new(),
            members: HashMap::new(),
        }
    }

    /// The kept totals equal a full rollup after any sequence of puts
    /// (creates, updates, deletes, restores, across drawings).
    #[test]
    fn kept_totals_match_a_full_rollup() {
        let mut index = empty();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        for _ in 0..2_000 {
            let n = u128::from(next(300));
            let c = component(
                n,
                n % 7,
                (next(40) as f64) / 4.0,
                (next(5) * 25) as f64,
                next(6) == 0,
            );
            index.put(c);
            let full = rollup(index.all().values().map(|c| (c, None)), None);
            let kept = index.rollup(None);
            assert_eq!(kept.component_count, full.component_count);
            assert!((kept.completion_percent - full.completion_percent).abs() < 1e-6);
            assert!((kept.earned_hours - full.earned_hours).abs() < 1e-6);
            assert!((kept.budget_hours - full.budget_hours).abs() < 1e-6);
        }
        for d in 0..7 {
            let did = DrawingId::from_u128(d);
            let live: Vec<&Component> = index.live().filter(|c| c.drawing_id == did).collect();
            let full = rollup(live.iter().map(|c| (*c, None)), None);
            assert_eq!(index.drawing_tally(did).count, full.component_count);
        }
    }

    #[test]
    fn put_says_what_changed() {
        let mut index = empty();
        assert_eq!(index.put(component(1, 1, 2.0, 0.0, false)), Some(Change::Created));
        assert_eq!(index.put(component(1, 1, 2.0, 0.0, false)), None);
        assert_eq!(
            index.put(component(1, 1, 2.0, 50.0, false)),
            Some(Change::Updated)
        );
        assert_eq!(index.put(component(1, 1, 2.0, 50.0, true)), Some(Change::Deleted));
        assert_eq!(
            index.put(component(1, 1, 2.0, 50.0, false)),
            Some(Change::Updated)
        );
        assert_eq!(index.drawing_tally(DrawingId::from_u128(1)).earned, 1.0);
    }

    #[test]
    fn a_query_pages_in_order_without_overlap() {
        let mut index = empty();
        for n in 0..25 {
            index.put(component(n, n % 3, 1.0, ((n * 7) % 5 * 25) as f64, n == 4));
        }
        let q = ComponentQuery {
            sort: Sort::CompletionDesc,
            ..Default::default()
        };
        let mut seen = Vec::new();
        let mut page = Page::parse(Some("10"), None).unwrap();
        loop {
            let p = index.query(&q, page);
            assert_eq!(p.total, 24);
            seen.extend(p.items.iter().map(|c| (c.completion_percent, c.tag.clone())));
            match p.next_cursor {
                Some(cursor) => page = Page::parse(Some("10"), Some(&cursor)).unwrap(),
                None => break,
            }
        }
        assert_eq!(seen.len(), 24);
        let mut sorted = seen.clone();
        sorted.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        assert_eq!(seen, sorted);
    }
}
