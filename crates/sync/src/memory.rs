//! Returning freed memory to the operating system.
//!
//! glibc's allocator keeps memory a program frees in its arenas (one per
//! thread, up to eight per core) and gives back only the top of each heap.
//! A relay or daemon that syncs a whole project allocates and frees
//! hundreds of MB of decoded documents and sync buffers, and the freed
//! pages stayed resident: a relay that had served a 20,000-component
//! project to two daemons and then held 1,000 idle connections had 668 MB
//! resident, and 119 MB after one `malloc_trim(0)` (called from gdb). So the
//! binaries trim now and then. Elsewhere than glibc this does nothing.

use std::time::Duration;

/// How often [`trim_periodically`] trims: often enough that an idle process
/// soon shows its real size, rarely enough to cost nothing (a trim of an
/// already trimmed heap takes well under a millisecond).
pub const TRIM_EVERY: Duration = Duration::from_secs(2);

/// Gives freed heap pages back to the operating system; returns whether any
/// were released.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks the allocator's own free lists,
        // under its locks; it is safe to call from any thread at any time.
        unsafe { libc::malloc_trim(0) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Spawns a task that [`trim`]s every `every` until the runtime shuts down.
/// Call from inside a tokio runtime.
pub fn trim_periodically(every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Freed memory goes back: after freeing many small blocks (which glibc
    /// never returns by itself, unlike large mmapped ones), trimming
    /// releases pages.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn trimming_after_freeing_releases_pages() {
        let mut blocks: Vec<Vec<u8>> = (0..200_000).map(|i| vec![i as u8; 512]).collect();
        // Keep every 64th block so the freed ones sit between live ones,
        // below the top of the heap, as fragmentation leaves them.
        let kept: Vec<Vec<u8>> = blocks.iter().step_by(64).cloned().collect();
        blocks.clear();
        blocks.shrink_to_fit();
        assert!(trim(), "some freed pages were released");
        assert_eq!(kept.len(), 3125);
    }
}
