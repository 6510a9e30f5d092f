//! End-to-end tests for sitesync: they start the real `sitesync-daemon` and
//! `sitesync-relay` binaries, bind port 0 and talk to them as users do.
//!
//! Empty until the daemon exists; the helpers (process guards, a
//! fault-injecting TCP proxy) land with the daemon and replication issues.
