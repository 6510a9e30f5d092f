//! `sitesync-relay`: the store-and-forward relay in the cloud.
//!
//! Not built yet (the replication issue builds it). The binary exists so the
//! workspace layout is final and scripts can already name it.

fn main() {
    eprintln!(
        "sitesync-relay {}: the relay is not built yet (see the replication issue)",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
