//! `sitesync-daemon`: the per-laptop daemon.
//!
//! Not built yet (the daemon issue builds it: durable store and localhost
//! HTTP API). The binary exists so the README's run command already works and
//! says clearly that there is nothing to run yet.

fn main() {
    eprintln!(
        "sitesync-daemon {}: not yet — the domain model (crates/model) is in place; \
         the daemon and its HTTP API land with the daemon issue",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
