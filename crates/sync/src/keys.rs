//! Every metadata record name in a store, in one place. The store keeps
//! documents and, beside them, metadata records named by a prefix and an
//! id; the engine, the daemon and the relay each own some. Naming them all
//! here makes a collision (or a second record meaning the same thing, as
//! `project/` once did beside `proj/`) visible in review, and a test checks
//! that no prefix is the start of another.
//!
//! | record | value | owner | why |
//! |---|---|---|---|
//! | `heads/<doc>` | the document's stored heads | repo | a summary and a start need no document decoded |
//! | `proj/<project>` | organisation name (empty: not yet claimed) | host, daemon | which projects are held here, and whose |
//! | `bind/<doc>` | project id | host | a document belongs to one project, forever |
//! | `pdoc/<project>/<doc>` | — | host | a project's documents, for summaries |
//! | `sync/<peer>/<doc>` | Automerge's encoded sync state | host | a reconnect resends only what the peer lacks |
//! | `device_id` | this store's device id | store | one id for a device across restarts |
//! | `acked/<doc>` | heads a relay acknowledged | daemon | what is no longer pending (relaxed) |
//! | `revoked/<org>` | the signed revocation list last heard | daemon | revocations reach LAN peers |
//! | `index/<project>/<drawing>` | saved index entries and their heads | daemon | a restart reads only drawings changed since (relaxed) |
//! | `oplog/<doc>` | heads the document's commit records are indexed up to (an earlier daemon: the records) | daemon | the operations list without reading documents (relaxed) |
//! | `opx/<project>/<order>` | one operation, merged over its documents | daemon | the operations list a page at a time, newest first (relaxed) |
//! | `opat/<project>/<op>` | the operation's `<order>` | daemon | later records of an operation merge into its entry (relaxed) |
//! | `opundo/<project>/<op>` | the operation that undid it | daemon | `undone_by` without a scan (relaxed) |
//! | `opcount/<project>` | how many operations | daemon | the list's total without a scan (relaxed) |
//! | `job/<id>` | a job's record | daemon | jobs survive a restart, as interrupted |
//! | `demo_seeded` | — | daemon | `--demo` seeds once |
//! | `project/<project>` | — | (none) | an earlier daemon's "project held"; migrated into `proj/` at open |

use uuid::Uuid;

/// `heads/<doc>`.
pub const HEADS: &str = "heads/";
/// `proj/<project>`.
pub const PROJECT: &str = "proj/";
/// `bind/<doc>`.
pub const BINDING: &str = "bind/";
/// `pdoc/<project>/<doc>`.
pub const PROJECT_DOC: &str = "pdoc/";
/// `sync/<peer>/<doc>`.
pub const SYNC_STATE: &str = "sync/";
/// The store's device id.
pub const DEVICE_ID: &str = "device_id";
/// `acked/<doc>`.
pub const ACKED: &str = "acked/";
/// `revoked/<org>`.
pub const REVOKED: &str = "revoked/";
/// `index/<project>/<drawing>`.
pub const INDEX: &str = "index/";
/// `oplog/<doc>`.
pub const OPLOG: &str = "oplog/";
/// `opx/<project>/<order>`.
pub const OPX: &str = "opx/";
/// `opat/<project>/<op>`.
pub const OPAT: &str = "opat/";
/// `opundo/<project>/<op>`.
pub const OPUNDO: &str = "opundo/";
/// `opcount/<project>`.
pub const OPCOUNT: &str = "opcount/";
/// `job/<id>`.
pub const JOB: &str = "job/";
/// Set once the demo project was seeded.
pub const DEMO_SEEDED: &str = "demo_seeded";
/// An earlier daemon's record of a project held here, now `proj/`; read
/// only to migrate it.
pub const LEGACY_PROJECT: &str = "project/";

/// Every prefix and name above, for the collision test and for tools.
pub const ALL: &[&str] = &[
    HEADS,
    PROJECT,
    BINDING,
    PROJECT_DOC,
    SYNC_STATE,
    DEVICE_ID,
    ACKED,
    REVOKED,
    INDEX,
    OPLOG,
    OPX,
    OPAT,
    OPUNDO,
    OPCOUNT,
    JOB,
    DEMO_SEEDED,
    LEGACY_PROJECT,
];

pub fn heads(doc: Uuid) -> String {
    format!("{HEADS}{doc}")
}

pub fn project(project: Uuid) -> String {
    format!("{PROJECT}{project}")
}

pub fn binding(doc: Uuid) -> String {
    format!("{BINDING}{doc}")
}

/// `pdoc/<project>/`: the prefix of one project's documents.
pub fn project_docs(project: Uuid) -> String {
    format!("{PROJECT_DOC}{project}/")
}

pub fn project_doc(project: Uuid, doc: Uuid) -> String {
    format!("{PROJECT_DOC}{project}/{doc}")
}

pub fn sync_state(peer: Uuid, doc: Uuid) -> String {
    format!("{SYNC_STATE}{peer}/{doc}")
}

pub fn acked(doc: Uuid) -> String {
    format!("{ACKED}{doc}")
}

pub fn revoked(org: &str) -> String {
    format!("{REVOKED}{org}")
}

pub fn index(project: Uuid, drawing: Uuid) -> String {
    format!("{INDEX}{project}/{drawing}")
}

pub fn oplog(doc: Uuid) -> String {
    format!("{OPLOG}{doc}")
}

pub fn op_entry(project: Uuid, order: &str) -> String {
    format!("{OPX}{project}/{order}")
}

pub fn op_at(project: Uuid, op: Uuid) -> String {
    format!("{OPAT}{project}/{op}")
}

pub fn op_undone(project: Uuid, op: Uuid) -> String {
    format!("{OPUNDO}{project}/{op}")
}

pub fn op_count(project: Uuid) -> String {
    format!("{OPCOUNT}{project}")
}

pub fn job(id: Uuid) -> String {
    format!("{JOB}{id}")
}

pub fn legacy_project(project: Uuid) -> String {
    format!("{LEGACY_PROJECT}{project}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record of one kind is never listed as another's: no name is the
    /// start of another.
    #[test]
    fn no_record_name_is_the_start_of_another() {
        for a in ALL {
            for b in ALL {
                assert!(a == b || !b.starts_with(a), "{b:?} starts with {a:?}");
            }
        }
    }
}
