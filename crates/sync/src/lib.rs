//! The sitesync engine: durable storage, the document repository, and the
//! wire protocol's messages and framing (the sync session state machine and
//! credentials land with the rest of the replication issue).
//!
//! Data flow: the daemon asks the [`repo::Repo`] for documents; the repo
//! loads them from the [`store::DocStore`] on demand, runs the model's pure
//! mutations on them, and appends the new Automerge changes to the store in
//! one flushed batch before the write is acknowledged.

pub mod credentials;
pub mod host;
pub mod link;
pub mod memory;
pub mod protocol;
pub mod repo;
pub mod session;
pub mod store;
pub mod workers;

pub use repo::{Arrived, Doc, Persisted, Repo, RepoConfig, RepoError, Tx};
pub use store::{Backend, DocStore, MemBackend, RedbBackend, StoreError};
pub use workers::Workers;

/// Re-exported so the layers above depend on one model version.
pub use sitesync_model as model;
