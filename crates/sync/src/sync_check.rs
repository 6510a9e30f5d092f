//! Checks an Automerge sync message from a peer before Automerge sees it.
//!
//! automerge 0.12 trusts what it decodes. A `have` Bloom filter claiming
//! 2³² probes decodes fine, and the next `generate_sync_message` on that
//! document asks for 17 GB (the process aborts); a filter with entries but
//! no bits divides by zero; a compressed change or a deflated document
//! column inflates with no bound (16 MiB of frame → gigabytes). So every
//! sync message a session receives is walked here first, in the exact
//! layout Automerge's own parser reads, and refused unless each part is
//! within [`SyncLimits`]:
//!
//! ```text
//! message  = version(0x42|0x43) hashes(heads) hashes(need) count(have…) count(chunk…) [flags]
//! have     = hashes(last_sync) bytes(bloom)
//! bloom    = ε | uleb(entries) uleb(bits_per_entry) uleb(probes) bits[ceil(entries·bits/8)]
//! chunk    = magic(85 6f 4a 83) checksum[4] type uleb(len) data[len]     (one or more per entry)
//!            type 0 document: actors, heads, change and op column specs, column data, suffix
//!            type 1 change: passed as is (its columns may not be deflated)
//!            type 2 compressed change: inflated here, within the budget
//!            type 3 bundle: refused (sitesync peers never send one)
//! ```
//!
//! Inflation is counted into a sink, never kept: the check allocates
//! nothing in proportion to what a peer claims. Pure: bytes in, a verdict
//! out.

use std::io::Read as _;

/// What a sync message may hold. Each bound is far above anything a
/// sitesync peer sends and far below what hurts the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncLimits {
    /// Hashes in one list (heads, need, a have's last_sync, a document's heads).
    pub max_hashes: u64,
    /// `have` entries (Automerge sends one).
    pub max_haves: u64,
    /// Bloom filter probes per hash (Automerge uses 7).
    pub max_probes: u32,
    /// Bloom filter bits per entry (Automerge uses 10).
    pub max_bits_per_entry: u32,
    /// Change or document chunks in one message.
    pub max_chunks: u64,
    /// Actors named by one document chunk, and columns per column list.
    pub max_actors: u64,
    pub max_columns: u64,
    /// Bytes all compressed parts of one message may inflate to.
    pub max_inflated: u64,
    /// Bytes of the trailing flags field (Automerge sends 3).
    pub max_flags: u64,
}

/// Bytes one sync message may inflate to: a whole drawing document of the
/// benchmark's 500,000-component project inflates to under 1 MB.
pub const MAX_INFLATED: u64 = 64 * 1024 * 1024;

impl Default for SyncLimits {
    fn default() -> Self {
        Self {
            max_hashes: 65_536,
            max_haves: 16,
            max_probes: 64,
            max_bits_per_entry: 64,
            max_chunks: 262_144,
            max_actors: 65_536,
            max_columns: 256,
            max_inflated: MAX_INFLATED,
            max_flags: 64,
        }
    }
}

/// Why a sync message was refused: the part at fault and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncCheckError {
    #[error("sync message ends inside {part}")]
    Truncated { part: &'static str },
    #[error("sync message: {part} is not a valid LEB128 number")]
    BadNumber { part: &'static str },
    #[error("sync message: unknown message type byte {byte:#04x}")]
    UnknownType { byte: u8 },
    #[error("sync message: {part} lists {count} items, more than the limit of {max}")]
    TooMany {
        part: &'static str,
        count: u64,
        max: u64,
    },
    #[error("sync message: Bloom filter {detail}")]
    BadBloom { detail: String },
    #[error("sync message: change chunk {index}: {detail}")]
    BadChunk { index: u64, detail: String },
    #[error("sync message: compressed parts inflate past the {max}-byte limit")]
    InflatesTooFar { max: u64 },
    #[error("sync message: {extra} bytes after the message")]
    Trailing { extra: usize },
}

const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// The column spec bit that marks a deflated column.
const DEFLATE_BIT: u32 = 0b1000;

/// A cursor over the message's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, part: &'static str) -> Result<&'a [u8], SyncCheckError> {
        if n > self.bytes.len() as u64 {
            return Err(SyncCheckError::Truncated { part });
        }
        let (head, rest) = self.bytes.split_at(n as usize);
        self.bytes = rest;
        Ok(head)
    }

    fn byte(&mut self, part: &'static str) -> Result<u8, SyncCheckError> {
        Ok(self.take(1, part)?[0])
    }

    /// An unsigned LEB128 number, as Automerge reads it (at most 64 bits).
    fn uleb(&mut self, part: &'static str) -> Result<u64, SyncCheckError> {
        let mut value: u64 = 0;
        for shift in (0..).step_by(7).take(10) {
            let b = self.byte(part)?;
            let low = u64::from(b & 0x7f);
            if shift == 63 && low > 1 {
                return Err(SyncCheckError::BadNumber { part });
            }
            value |= low << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(SyncCheckError::BadNumber { part })
    }

    fn uleb_u32(&mut self, part: &'static str) -> Result<u32, SyncCheckError> {
        u32::try_from(self.uleb(part)?).map_err(|_| SyncCheckError::BadNumber { part })
    }

    fn count(&mut self, part: &'static str, max: u64) -> Result<u64, SyncCheckError> {
        let count = self.uleb(part)?;
        if count > max {
            return Err(SyncCheckError::TooMany { part, count, max });
        }
        Ok(count)
    }

    fn hashes(&mut self, part: &'static str, limits: &SyncLimits) -> Result<(), SyncCheckError> {
        let n = self.count(part, limits.max_hashes)?;
        self.take(n * 32, part)?;
        Ok(())
    }

    fn prefixed(&mut self, part: &'static str) -> Result<&'a [u8], SyncCheckError> {
        let len = self.uleb(part)?;
        self.take(len, part)
    }
}

/// Checks `bytes` as one Automerge sync message within `limits`.
pub fn check_sync_message(bytes: &[u8], limits: &SyncLimits) -> Result<(), SyncCheckError> {
    let mut r = Reader { bytes };
    match r.byte("the message type")? {
        0x42 | 0x43 => {}
        byte => return Err(SyncCheckError::UnknownType { byte }),
    }
    r.hashes("heads", limits)?;
    r.hashes("need", limits)?;
    let haves = r.count("have", limits.max_haves)?;
    for _ in 0..haves {
        r.hashes("a have's last_sync", limits)?;
        check_bloom(r.prefixed("a have's Bloom filter")?, limits)?;
    }
    let chunks = r.count("changes", limits.max_chunks)?;
    let mut budget = Budget {
        left: limits.max_inflated,
        max: limits.max_inflated,
    };
    for index in 0..chunks {
        let mut entry = Reader {
            bytes: r.prefixed("a change")?,
        };
        if entry.bytes.is_empty() {
            return Err(SyncCheckError::BadChunk {
                index,
                detail: "empty".into(),
            });
        }
        while !entry.bytes.is_empty() {
            check_chunk(&mut entry, limits, &mut budget).map_err(|e| match e {
                ChunkFault::Inflated => SyncCheckError::InflatesTooFar {
                    max: limits.max_inflated,
                },
                ChunkFault::Bad(detail) => SyncCheckError::BadChunk { index, detail },
            })?;
        }
    }
    if !r.bytes.is_empty() {
        let flags = r.prefixed("flags")?;
        if flags.len() as u64 > limits.max_flags {
            return Err(SyncCheckError::TooMany {
                part: "flags",
                count: flags.len() as u64,
                max: limits.max_flags,
            });
        }
    }
    if !r.bytes.is_empty() {
        return Err(SyncCheckError::Trailing { extra: r.bytes.len() });
    }
    Ok(())
}

fn check_bloom(bytes: &[u8], limits: &SyncLimits) -> Result<(), SyncCheckError> {
    if bytes.is_empty() {
        return Ok(());
    }
    let bad = |detail: String| SyncCheckError::BadBloom { detail };
    let mut r = Reader { bytes };
    let entries = r.uleb_u32("the Bloom filter's entries")?;
    let bits_per_entry = r.uleb_u32("the Bloom filter's bits per entry")?;
    let probes = r.uleb_u32("the Bloom filter's probes")?;
    if probes == 0 || probes > limits.max_probes {
        return Err(bad(format!(
            "claims {probes} probes per hash (1 to {} allowed)",
            limits.max_probes
        )));
    }
    if bits_per_entry == 0 || bits_per_entry > limits.max_bits_per_entry {
        return Err(bad(format!(
            "claims {bits_per_entry} bits per entry (1 to {} allowed)",
            limits.max_bits_per_entry
        )));
    }
    // Automerge's own size rule; with entries there is at least one byte,
    // so its `% (8 · len)` never divides by zero.
    let capacity = (u64::from(entries) * u64::from(bits_per_entry)).div_ceil(8);
    if entries > 0 && capacity as usize != r.bytes.len() {
        return Err(bad(format!(
            "holds {} bytes of bits where {entries} entries need {capacity}",
            r.bytes.len()
        )));
    }
    Ok(())
}

/// What is left of a message's inflation budget.
struct Budget {
    left: u64,
    max: u64,
}

enum ChunkFault {
    Inflated,
    Bad(String),
}

impl From<SyncCheckError> for ChunkFault {
    fn from(e: SyncCheckError) -> Self {
        ChunkFault::Bad(e.to_string())
    }
}

impl Budget {
    /// Inflates `deflated` into a counting sink, charging what it yields.
    fn inflate(&mut self, deflated: &[u8]) -> Result<(), ChunkFault> {
        let decoder = flate2::bufread::DeflateDecoder::new(deflated);
        // One byte past the budget tells "too much" from "exactly enough".
        let mut limited = decoder.take(self.left + 1);
        let n = std::io::copy(&mut limited, &mut std::io::sink())
            .map_err(|e| ChunkFault::Bad(format!("does not inflate: {e}")))?;
        if n > self.left {
            return Err(ChunkFault::Inflated);
        }
        self.left -= n;
        debug_assert!(self.left <= self.max);
        Ok(())
    }
}

/// One chunk from the front of `r`.
fn check_chunk(r: &mut Reader<'_>, limits: &SyncLimits, budget: &mut Budget) -> Result<(), ChunkFault> {
    if r.take(4, "a chunk's magic bytes")? != MAGIC {
        return Err(ChunkFault::Bad(
            "does not start with Automerge's magic bytes".into(),
        ));
    }
    r.take(4, "a chunk's checksum")?;
    let kind = r.byte("a chunk's type")?;
    let data = r.prefixed("a chunk's data")?;
    match kind {
        0 => check_document(data, limits, budget),
        1 => Ok(()),
        2 => budget.inflate(data),
        3 => Err(ChunkFault::Bad(
            "is a bundle, which sitesync peers never send".into(),
        )),
        other => Err(ChunkFault::Bad(format!("has unknown type {other}"))),
    }
}

/// A document chunk's layout: the deflated columns are inflated within the
/// budget; the rest is only measured.
fn check_document(data: &[u8], limits: &SyncLimits, budget: &mut Budget) -> Result<(), ChunkFault> {
    let mut r = Reader { bytes: data };
    let actors = r.count("a document's actors", limits.max_actors)?;
    for _ in 0..actors {
        r.prefixed("a document's actor id")?;
    }
    r.hashes("a document's heads", limits)?;
    let mut columns = Vec::new();
    for part in ["a document's change columns", "a document's op columns"] {
        let n = r.count(part, limits.max_columns)?;
        let mut list = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let spec = r.uleb_u32(part)?;
            let len = r.uleb(part)?;
            list.push((spec, len));
        }
        columns.push(list);
    }
    for list in &columns {
        for &(spec, len) in list {
            let bytes = r.take(len, "a document's column data")?;
            if spec & DEFLATE_BIT != 0 {
                budget.inflate(bytes)?;
            }
        }
    }
    // What follows (the heads' indices) is read by Automerge as numbers.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sitesync_model::automerge::sync::{State, SyncDoc as _};
    use sitesync_model::automerge::transaction::Transactable as _;
    use sitesync_model::automerge::{AutoCommit, Automerge, ROOT};

    fn doc_with(n: usize) -> Automerge {
        let mut doc = AutoCommit::new();
        for i in 0..n {
            doc.put(ROOT, format!("k{i}"), "x".repeat(300)).unwrap();
            doc.commit();
        }
        doc.document().clone()
    }

    /// Every message a real exchange produces passes: first contact (the
    /// whole document, deflated columns and all), incremental changes,
    /// and the Bloom-filter rounds in between.
    #[test]
    fn real_exchanges_pass() {
        let mut a = doc_with(40);
        let mut b = Automerge::new();
        let (mut sa, mut sb) = (State::new(), State::new());
        let mut seen = 0;
        for round in 0..3 {
            if round == 1 {
                let mut more = AutoCommit::load(&a.save()).unwrap();
                for i in 0..5 {
                    more.put(ROOT, format!("m{i}"), i as i64).unwrap();
                    more.commit();
                }
                a = more.document().clone();
            }
            for _ in 0..10 {
                let mut quiet = true;
                if let Some(m) = a.generate_sync_message(&mut sa) {
                    let bytes = m.encode();
                    check_sync_message(&bytes, &SyncLimits::default()).unwrap();
                    b.receive_sync_message(
                        &mut sb,
                        sitesync_model::automerge::sync::Message::decode(&bytes).unwrap(),
                    )
                    .unwrap();
                    quiet = false;
                    seen += 1;
                }
                if let Some(m) = b.generate_sync_message(&mut sb) {
                    let bytes = m.encode();
                    check_sync_message(&bytes, &SyncLimits::default()).unwrap();
                    a.receive_sync_message(
                        &mut sa,
                        sitesync_model::automerge::sync::Message::decode(&bytes).unwrap(),
                    )
                    .unwrap();
                    quiet = false;
                    seen += 1;
                }
                if quiet {
                    break;
                }
            }
        }
        assert!(seen >= 4);
        assert_eq!(a.get_heads(), b.get_heads());
    }

    /// The issue's 15 bytes: a have whose Bloom filter claims 2³² probes.
    #[test]
    fn a_bloom_filter_claiming_four_billion_probes_is_refused() {
        let bytes = [
            0x42, 0x00, 0x00, 0x01, 0x00, 0x08, 0x08, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0x00, 0x00,
        ];
        let e = check_sync_message(&bytes, &SyncLimits::default()).unwrap_err();
        assert!(
            matches!(&e, SyncCheckError::BadBloom { detail } if detail.contains("4294967295 probes")),
            "{e}"
        );
    }

    fn message_with_bloom(bloom: &[u8]) -> Vec<u8> {
        let mut m = vec![0x42, 0, 0, 1, 0, bloom.len() as u8];
        m.extend_from_slice(bloom);
        m.push(0);
        m
    }

    #[test]
    fn bloom_filters_are_checked_part_by_part() {
        let limits = SyncLimits::default();
        // Entries but no bits: Automerge would divide by zero.
        let e = check_sync_message(&message_with_bloom(&[1, 0, 7]), &limits).unwrap_err();
        assert!(matches!(e, SyncCheckError::BadBloom { .. }), "{e}");
        // Too few bits for the entries claimed.
        let e = check_sync_message(&message_with_bloom(&[8, 10, 7, 0xff]), &limits).unwrap_err();
        assert!(matches!(e, SyncCheckError::BadBloom { .. }), "{e}");
        // A well-formed filter: 1 entry, 10 bits → 2 bytes.
        check_sync_message(&message_with_bloom(&[1, 10, 7, 0xff, 0x03]), &limits).unwrap();
        // The empty filter.
        check_sync_message(&message_with_bloom(&[]), &limits).unwrap();
    }

    #[test]
    fn counts_past_the_limits_are_refused_before_anything_is_read() {
        let limits = SyncLimits::default();
        // 2^40 heads claimed in a 10-byte message.
        let e =
            check_sync_message(&[0x42, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20, 0, 0, 0], &limits).unwrap_err();
        assert!(matches!(e, SyncCheckError::TooMany { part: "heads", .. }), "{e}");
        // A million empty haves would each become an allocation in Automerge.
        let e = check_sync_message(&[0x42, 0, 0, 0x80, 0x89, 0x7a], &limits).unwrap_err();
        assert!(matches!(e, SyncCheckError::TooMany { part: "have", .. }), "{e}");
        // Truncation, an unknown type, trailing bytes, an overlong number.
        assert!(matches!(
            check_sync_message(&[0x42, 2], &limits),
            Err(SyncCheckError::Truncated { .. })
        ));
        assert!(matches!(
            check_sync_message(&[0x44], &limits),
            Err(SyncCheckError::UnknownType { byte: 0x44 })
        ));
        assert!(matches!(
            check_sync_message(&[0x42, 0, 0, 0, 0, 1, 0, 9], &limits),
            Err(SyncCheckError::Trailing { extra: 1 })
        ));
        assert!(matches!(
            check_sync_message(
                &[0x42, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
                &limits
            ),
            Err(SyncCheckError::BadNumber { .. })
        ));
    }

    /// `n` as unsigned LEB128.
    fn uleb(mut n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    fn chunk(kind: u8, data: &[u8]) -> Vec<u8> {
        let mut c = MAGIC.to_vec();
        c.extend_from_slice(&[0; 4]);
        c.push(kind);
        c.extend(uleb(data.len() as u64));
        c.extend_from_slice(data);
        c
    }

    fn message_with_chunk(chunk: &[u8]) -> Vec<u8> {
        let mut m = vec![0x43, 0, 0, 0, 1];
        m.extend(uleb(chunk.len() as u64));
        m.extend_from_slice(chunk);
        m
    }

    fn deflate(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// A compressed change of 64 KiB that would inflate to 100 MiB.
    #[test]
    fn a_compressed_change_inflating_past_the_budget_is_refused() {
        let bomb = deflate(&vec![0u8; 100 * 1024 * 1024]);
        assert!(bomb.len() < 200 * 1024);
        let m = message_with_chunk(&chunk(2, &bomb));
        let e = check_sync_message(&m, &SyncLimits::default()).unwrap_err();
        assert_eq!(e, SyncCheckError::InflatesTooFar { max: MAX_INFLATED });
        // Within a larger budget it passes the check (Automerge would then
        // refuse it as a change, which is its business).
        let roomy = SyncLimits {
            max_inflated: 200 * 1024 * 1024,
            ..SyncLimits::default()
        };
        check_sync_message(&m, &roomy).unwrap();
    }

    /// A document chunk with one deflated op column that inflates too far.
    #[test]
    fn a_document_column_inflating_past_the_budget_is_refused() {
        let column = deflate(&vec![7u8; 80 * 1024 * 1024]);
        let mut doc = vec![0, 0, 0, 1];
        doc.push(0x10 | DEFLATE_BIT as u8); // column 1, deflated
        doc.extend(uleb(column.len() as u64));
        doc.extend_from_slice(&column);
        let m = message_with_chunk(&chunk(0, &doc));
        let e = check_sync_message(&m, &SyncLimits::default()).unwrap_err();
        assert_eq!(e, SyncCheckError::InflatesTooFar { max: MAX_INFLATED });
    }

    #[test]
    fn bundles_and_unknown_chunks_are_refused() {
        for kind in [3u8, 9] {
            let m = message_with_chunk(&chunk(kind, &[0]));
            let e = check_sync_message(&m, &SyncLimits::default()).unwrap_err();
            assert!(matches!(e, SyncCheckError::BadChunk { index: 0, .. }), "{e}");
        }
        let mut bad_magic = chunk(1, &[0]);
        bad_magic[0] = 0;
        let e = check_sync_message(&message_with_chunk(&bad_magic), &SyncLimits::default()).unwrap_err();
        assert!(e.to_string().contains("magic"), "{e}");
    }
}
