//! The model's documents in a repository: what a daemon holds ([`Doc`]:
//! a project, a drawing, or raw until sync brings its kind), and reads
//! and writes by kind. A relay's repository holds raw Automerge documents
//! and never names these types.

use std::collections::HashMap;

use sitesync_model::automerge::Automerge;
use sitesync_model::schema::{DocKind, kind_of};
use sitesync_model::{DrawingDoc, DrawingId, ModelError, ProjectDoc, ProjectId};
use uuid::Uuid;

use sitesync_model::Spread as _;

use super::{Document, Repo, RepoError, Tx};

/// A loaded document of either kind, or raw.
pub enum Doc {
    Project(ProjectDoc),
    Drawing(DrawingDoc),
    /// Not (yet) readable as either: a document arriving by sync is held
    /// raw until its first changes say what it is.
    Raw(Automerge),
}

impl Document for Doc {
    fn automerge(&self) -> &Automerge {
        match self {
            Self::Project(d) => d.automerge(),
            Self::Drawing(d) => d.automerge(),
            Self::Raw(d) => d,
        }
    }

    fn automerge_mut(&mut self) -> &mut Automerge {
        match self {
            Self::Project(d) => d.automerge_mut(),
            Self::Drawing(d) => d.automerge_mut(),
            Self::Raw(d) => d,
        }
    }

    /// Reads `doc` as its kind says; a document with no kind yet stays raw.
    fn read(doc: Automerge) -> Result<Self, ModelError> {
        if doc.get_heads().is_empty() {
            return Ok(Self::Raw(doc));
        }
        Ok(match kind_of(&doc) {
            Ok(DocKind::Project) => Self::Project(ProjectDoc::from_automerge(doc)?),
            Ok(DocKind::Drawing) => Self::Drawing(DrawingDoc::from_automerge(doc)?),
            // Partially synced (the kind's change not here yet).
            Err(_) => Self::Raw(doc),
        })
    }

    fn raw(doc: Automerge) -> Self {
        Self::Raw(doc)
    }

    /// Re-reads a raw document once sync has brought its kind.
    fn upgrade(self) -> Result<Self, ModelError> {
        match self {
            Self::Raw(doc) => Self::read(doc),
            other => Ok(other),
        }
    }
}

impl Repo<Doc> {
    /// Reads a project document.
    pub fn read_project<T>(&self, id: ProjectId, f: impl FnOnce(&ProjectDoc) -> T) -> Result<T, RepoError> {
        self.read(id.0, |doc| match doc {
            Doc::Project(d) => Ok(f(d)),
            _ => Err(RepoError::NotFound {
                what: "project",
                id: id.0,
            }),
        })?
    }

    /// Reads a drawing document.
    pub fn read_drawing<T>(&self, id: DrawingId, f: impl FnOnce(&DrawingDoc) -> T) -> Result<T, RepoError> {
        self.read(id.0, |doc| match doc {
            Doc::Drawing(d) => Ok(f(d)),
            _ => Err(RepoError::NotFound {
                what: "drawing",
                id: id.0,
            }),
        })?
    }

    /// Reads several drawings at once: each `(drawing, item)` is given to
    /// `f` with its document, on [`RepoConfig::workers`] threads; the
    /// results come back in the items' order. Fails, reading nothing, when
    /// a drawing cannot be had (the first such in order). What the index
    /// re-reads after a bulk (`perf`: 15% of a bulk of 10,000).
    pub fn read_drawings<I: Send, T: Send>(
        &self,
        items: Vec<(DrawingId, I)>,
        f: impl Fn(&DrawingDoc, I) -> T + Sync,
    ) -> Result<Vec<T>, RepoError> {
        let mut cache = self.lock();
        let ids: Vec<Uuid> = items.iter().map(|(d, _)| d.0).collect();
        self.load_missing(&mut cache, &ids);
        let outcome = (|| {
            for id in &ids {
                // Marks each used, and reports what cannot be loaded.
                self.slot(&mut cache, *id)?;
            }
            let work = items
                .into_iter()
                .map(|(d, item)| match &cache.slots[&d.0].doc {
                    Doc::Drawing(doc) => Ok((doc, item)),
                    _ => Err(RepoError::NotFound {
                        what: "drawing",
                        id: d.0,
                    }),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(self.config.workers.map(work, |(doc, item)| f(doc, item)))
        })();
        self.trim(&mut cache);
        outcome
    }
}

impl Tx<'_, Doc> {
    /// The project document, for changing.
    pub fn project(&mut self, id: ProjectId) -> Result<&mut ProjectDoc, RepoError> {
        // Touched only once loaded: a caller may tolerate NotFound and go on.
        let slot = self.repo.slot(self.cache, id.0)?;
        self.touched.insert(id.0);
        match &mut slot.doc {
            Doc::Project(d) => Ok(d),
            _ => Err(RepoError::NotFound {
                what: "project",
                id: id.0,
            }),
        }
    }

    /// A drawing document, for changing.
    pub fn drawing(&mut self, id: DrawingId) -> Result<&mut DrawingDoc, RepoError> {
        let slot = self.repo.slot(self.cache, id.0)?;
        self.touched.insert(id.0);
        match &mut slot.doc {
            Doc::Drawing(d) => Ok(d),
            _ => Err(RepoError::NotFound {
                what: "drawing",
                id: id.0,
            }),
        }
    }

    /// Several drawing documents at once (a bulk update spans drawings), in
    /// the order of `ids` (an id named twice comes once, first). Those the
    /// cache lacks are loaded several at a time.
    pub fn drawings(&mut self, ids: &[DrawingId]) -> Result<Vec<&mut DrawingDoc>, RepoError> {
        let uuids: Vec<Uuid> = ids.iter().map(|d| d.0).collect();
        self.repo.load_missing(self.cache, &uuids);
        for id in ids {
            self.drawing(*id)?;
        }
        let mut held: HashMap<Uuid, &mut DrawingDoc> = self
            .cache
            .slots
            .iter_mut()
            .filter_map(|(id, s)| match &mut s.doc {
                Doc::Drawing(d) => Some((*id, d)),
                _ => None,
            })
            .collect();
        Ok(uuids.iter().filter_map(|id| held.remove(id)).collect())
    }
}
