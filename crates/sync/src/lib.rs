//! The sitesync engine: storage on sled, the document repository, the wire
//! protocol and per-peer sync sessions.
//!
//! Nothing lives here yet: the storage and repository land with the daemon
//! issue, the protocol with the replication issue. The crate exists now so the
//! workspace has the layout of DESIGN.md and later work slots in.

/// The version of the on-disk record format and wire protocol this build
/// speaks. Bumped when either changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;

/// Re-exported so the layers above depend on one model version.
pub use sitesync_model as model;
