//! [`RepoHost`]: the session's [`Host`] over the repository, shared by the
//! relay and the daemon. It owns the sync bookkeeping stored beside the
//! documents (`proj/`, `bind/`, `pdoc/`, `sync/`: see [`crate::keys`]), as
//! metadata records written in the same batch as the changes they
//! describe.

use std::sync::Arc;

use sitesync_model::automerge::Automerge;
use sitesync_model::automerge::ChangeHash;
use sitesync_model::automerge::sync::{
    Message as SyncMessage, MessageVersion, State as SyncState, SyncDoc as _,
};
use uuid::Uuid;

use crate::repo::{Arrived, Doc, Document, Repo, RepoError, Sender};
use crate::session::{Host, HostError, Incoming};

use crate::keys;

fn project_key(project: Uuid) -> String {
    keys::project(project)
}

fn bind_key(doc: Uuid) -> String {
    keys::binding(doc)
}

fn sync_key(peer: Uuid, doc: Uuid) -> String {
    keys::sync_state(peer, doc)
}

/// The records that bind a new document to its project forever. A daemon
/// writes them with every document it creates.
pub fn binding_records(project: Uuid, doc: Uuid) -> Vec<(String, Vec<u8>)> {
    vec![
        (bind_key(doc), project.to_string().into_bytes()),
        (keys::project_doc(project, doc), Vec::new()),
    ]
}

/// The record listing a held project as `org`'s (empty: not yet claimed by
/// an organisation; the first one to sync it claims it).
pub fn project_record(project: Uuid, org: &str) -> (String, Vec<u8>) {
    (project_key(project), org.as_bytes().to_vec())
}

fn storage(e: RepoError) -> HostError {
    HostError::Storage {
        detail: e.to_string(),
    }
}

/// The session host over a repository (of a daemon's typed documents,
/// or a relay's raw ones: sync reads and writes only Automerge).
pub struct RepoHost<D: Document = Doc> {
    repo: Arc<Repo<D>>,
}

impl<D: Document> Clone for RepoHost<D> {
    fn clone(&self) -> Self {
        Self {
            repo: self.repo.clone(),
        }
    }
}

impl<D: Document> RepoHost<D> {
    pub fn new(repo: Arc<Repo<D>>) -> Self {
        Self { repo }
    }

    pub fn repo(&self) -> &Arc<Repo<D>> {
        &self.repo
    }

    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, HostError> {
        self.repo.store().get_meta(name).map_err(|e| storage(e.into()))
    }

    /// The organisation a held project belongs to (`Some("")` when held but
    /// not yet claimed by one).
    pub fn project_org(&self, project: Uuid) -> Result<Option<String>, HostError> {
        Ok(self
            .meta(&project_key(project))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// How many documents are held.
    pub fn documents(&self) -> Result<usize, HostError> {
        Ok(self
            .repo
            .store()
            .meta_names(keys::BINDING)
            .map_err(|e| storage(e.into()))?
            .len())
    }
}

impl<D: Document> Host for RepoHost<D> {
    fn projects(&self) -> Result<Vec<Uuid>, HostError> {
        Ok(self
            .repo
            .store()
            .meta_names(keys::PROJECT)
            .map_err(|e| storage(e.into()))?
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect())
    }

    fn may_share(&self, org: &str, project: Uuid) -> Result<bool, HostError> {
        Ok(match self.project_org(project)? {
            None => true,
            Some(owner) => owner.is_empty() || owner == org,
        })
    }

    fn holds(&self, org: &str, project: Uuid) -> Result<bool, HostError> {
        Ok(self
            .project_org(project)?
            .is_some_and(|owner| owner.is_empty() || owner == org))
    }

    fn summary(&self, project: Uuid) -> Result<Vec<(Uuid, Vec<ChangeHash>)>, HostError> {
        let names = self
            .repo
            .store()
            .meta_names(&keys::project_docs(project))
            .map_err(|e| storage(e.into()))?;
        let mut out = Vec::with_capacity(names.len());
        for doc in names.iter().filter_map(|n| n.parse::<Uuid>().ok()) {
            if let Some(heads) = self.repo.heads(doc).map_err(storage)? {
                out.push((doc, heads));
            }
        }
        Ok(out)
    }

    fn project_of(&self, doc: Uuid) -> Result<Option<Uuid>, HostError> {
        Ok(self
            .meta(&bind_key(doc))?
            .and_then(|v| String::from_utf8_lossy(&v).parse().ok()))
    }

    fn heads(&self, doc: Uuid) -> Result<Vec<ChangeHash>, HostError> {
        Ok(self.repo.heads(doc).map_err(storage)?.unwrap_or_default())
    }

    fn generate(&self, doc: Uuid, state: &mut SyncState) -> Result<Option<SyncMessage>, HostError> {
        match self
            .repo
            .read_raw(doc, |am| am.generate_sync_message(state))
            .map_err(storage)?
        {
            Some(m) => Ok(m),
            None => Ok(Automerge::new().generate_sync_message(state)),
        }
    }

    fn receive(
        &self,
        ctx: &Incoming<'_>,
        state: &mut SyncState,
        message: SyncMessage,
    ) -> Result<Option<Vec<ChangeHash>>, HostError> {
        let bound = self.project_of(ctx.doc)?;
        if let Some(bound) = bound
            && bound != ctx.project
        {
            return Err(HostError::WrongProject {
                doc: ctx.doc,
                bound,
                claimed: ctx.project,
            });
        }
        let mut records = Vec::new();
        if bound.is_none() {
            records.extend(binding_records(ctx.project, ctx.doc));
        }
        match self.project_org(ctx.project)? {
            Some(org) if !org.is_empty() => {}
            // The first organisation to bring a project owns it.
            _ => records.push(project_record(ctx.project, ctx.org)),
        }
        // Automerge sends a peer that has none of a document (or lacks a
        // third of it) the whole document, as one saved chunk.
        let arrived = (message.version == MessageVersion::V2 && message.changes.len() == 1)
            .then(|| message.changes.iter().next())
            .flatten()
            .map(|bytes| Arrived {
                bytes: bytes.to_vec(),
                heads: message.heads.clone(),
            });
        let from = Sender {
            peer: ctx.peer,
            project: ctx.project,
        };
        let ((applied, before), heads) = self
            .repo
            .sync_doc(ctx.doc, from, arrived, |am| {
                let before = am.get_heads();
                let applied = crate::receive::receive(am, state, message);
                records.push((sync_key(ctx.peer, ctx.doc), state.encode()));
                ((applied, before), records)
            })
            .map_err(storage)?;
        applied.map_err(|e| HostError::BadChanges {
            doc: ctx.doc,
            detail: e.to_string(),
        })?;
        Ok((heads != before).then_some(heads))
    }

    fn load_state(&self, peer: Uuid, doc: Uuid) -> Result<Option<Vec<u8>>, HostError> {
        self.meta(&sync_key(peer, doc))
    }
}
