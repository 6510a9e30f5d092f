//! The sitesync engine: durable storage, the document repository, the wire
//! protocol's messages and framing, the sync session state machine, its
//! links over WebSockets, and credentials.
//!
//! Data flow: the daemon asks the [`repo::Repo`] for documents; the repo
//! loads them from the [`store::DocStore`] on demand, runs the model's pure
//! mutations on them, and appends the new Automerge changes to the store in
//! one flushed batch before the write is acknowledged; then it tells its
//! change feed ([`repo::Subscriber`]s, told each [`repo::Persisted`]). A repository holds its
//! documents as its owner reads them ([`repo::Document`]): the daemon's as
//! the model's project and drawing documents ([`repo::Doc`]), the relay's
//! as raw Automerge, which it never interprets.
//!
//! From a peer: [`accept`] (or a dialled WebSocket) → [`link::drive`] →
//! [`session::Session`], which decodes frames ([`protocol`]), checks sync
//! messages ([`sync_check`]) and presence ([`presence`]) before anything
//! keeps them or Automerge sees them, and reaches documents through
//! [`host::RepoHost`].

pub mod accept;
pub mod cache;
pub mod credentials;
pub mod host;
pub mod keys;
pub mod link;
pub mod memory;
pub mod presence;
pub mod protocol;
pub mod rate;
pub mod receive;
pub mod repo;
pub mod session;
pub mod store;
pub mod sync_check;
pub mod tls;
pub mod workers;

pub use repo::{Arrived, Commit, Doc, Document, Origin, Persisted, Repo, RepoConfig, RepoError, Sender, Tx};
pub use store::{Backend, DocStore, MemBackend, RedbBackend, StoreError};
pub use workers::Workers;

/// Re-exported so the layers above depend on one model version.
pub use sitesync_model as model;

/// The log filter of both binaries when `SITESYNC_LOG` is unset. Automerge
/// opens an `info` span (`#[instrument]`) for every change it loads and
/// every column it parses, and with `info` enabled the log formats their
/// fields each time: ~4% of the CPU of a relay, and of a daemon, applying
/// synced changes (`perf`, single writes replicated). Its warnings stay.
pub const DEFAULT_LOG_FILTER: &str = "info,automerge=warn";

/// The log filter of both binaries: `SITESYNC_LOG`'s value, or
/// [`DEFAULT_LOG_FILTER`] when it is unset or empty. A value that is not a
/// filter is an error naming it, never silently replaced.
pub fn log_filter(value: Option<&str>) -> Result<tracing_subscriber::EnvFilter, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER)),
        Some(v) => tracing_subscriber::EnvFilter::try_new(v).map_err(|e| {
            format!("SITESYNC_LOG={v:?} is not a log filter ({e}); e.g. SITESYNC_LOG=debug or {DEFAULT_LOG_FILTER}")
        }),
    }
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    #[test]
    fn a_bad_log_filter_is_an_error_naming_it() {
        let e = super::log_filter(Some("info,=,[")).unwrap_err();
        assert!(e.contains("SITESYNC_LOG=\"info,=,[\""), "{e}");
        super::log_filter(Some("debug")).unwrap();
        super::log_filter(None).unwrap();
    }

    /// Automerge's spans are off by default; this crate's `info` and
    /// Automerge's warnings are not.
    #[test]
    fn the_default_log_filter_leaves_automerge_spans_off() {
        let filter = tracing_subscriber::EnvFilter::new(super::DEFAULT_LOG_FILTER);
        let subscriber = tracing_subscriber::fmt().with_env_filter(filter).finish();
        tracing::subscriber::with_default(subscriber, || {
            assert!(!tracing::span_enabled!(target: "automerge::storage::load", Level::INFO));
            assert!(tracing::event_enabled!(target: "automerge::sync", Level::WARN));
            assert!(tracing::event_enabled!(target: "sitesync_sync::link", Level::INFO));
        });
    }
}
