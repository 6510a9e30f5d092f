//! The engine's pure core stays pure: the protocol, credentials, checks,
//! receiving sync messages, presence, rate and the session state machine take values and return
//! values (ARCHITECTURE.md, "Pure core"). This test reads their source and
//! fails on anything that would do IO, keep time, pick randomness or reach
//! the edges of the crate — the rule a newcomer would otherwise learn only
//! from review.

/// The modules of the pure core.
const PURE: &[&str] = &[
    "protocol",
    "credentials",
    "sync_check",
    "receive",
    "presence",
    "rate",
    "session",
];

/// What the pure core must never name: async runtimes, sockets, files,
/// threads, storage engines, TLS, clocks and randomness, and the crate's
/// own edges (storage, repository, host, links, TLS, threads, memory).
const FORBIDDEN: &[&str] = &[
    "tokio",
    "axum",
    "tungstenite",
    "rustls",
    "redb",
    "sled",
    "libc",
    "std::fs",
    "std::net",
    "std::thread",
    "std::process",
    "Instant::now",
    "SystemTime",
    "rand::",
    "OsRng",
    "crate::store",
    "crate::repo",
    "crate::host",
    "crate::link",
    "crate::tls",
    "crate::accept",
    "crate::workers",
    "crate::memory",
    "crate::cache",
];

#[test]
fn the_pure_core_names_no_io_clock_randomness_or_edge() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for module in PURE {
        let path = dir.join(format!("{module}.rs"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Tests beside the code may use anything.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (n, line) in code.lines().enumerate() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            for bad in FORBIDDEN {
                if line.contains(bad) {
                    found.push(format!("src/{module}.rs:{}: {bad}: {line}", n + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "the pure core reaches outside itself (move the IO to an edge, or pass it in as a value):\n{}",
        found.join("\n")
    );
}
