//! Fuzzing on stable Rust. No nightly toolchain is available here, so
//! instead of libFuzzer's coverage guidance this crate mutates a seed
//! corpus of real inputs (valid frames, real Automerge sync messages, real
//! tokens, real spreadsheets) with a seeded RNG, and runs each input
//! through one decoder under `catch_unwind`. A panic is a finding: the
//! input is saved under `regressions/<target>/`, and every saved input is
//! replayed by this crate's tests on every `cargo test`.
//!
//! Targets and what each must hold for every input:
//!
//! | target | decoder | property |
//! |---|---|---|
//! | `frame` | `protocol::decode` | no panic; what decodes re-encodes to a frame that decodes the same |
//! | `sync_message` | `sync_check::check_sync_message`, then Automerge | no panic in the check; what it accepts, Automerge decodes, applies to a document and answers without a panic |
//! | `token` | `Token::parse`, `Certificate::decode`, `Revocations::decode` | no panic; what decodes verifies (or not) and answers lookups without one |
//! | `import_csv`, `import_json` | the daemon's `import::read_rows` | no panic; a clear error or rows |
//!
//! Data flow: [`Target::seeds`] → [`mutate`] (seeded) → [`Target::run`]
//! under `catch_unwind` → a [`Finding`] or the next input.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sitesync_sync::credentials::{Certificate, OrgKey, Revocations, Token};
use sitesync_sync::model::automerge::sync::{Message as SyncMessage, State as SyncState, SyncDoc as _};
use sitesync_sync::model::automerge::transaction::Transactable as _;
use sitesync_sync::model::automerge::{AutoCommit, Automerge, ROOT};
use sitesync_sync::protocol::{self, Message, PresenceEntry, WireId};
use sitesync_sync::sync_check::{SyncLimits, check_sync_message};

/// One decoder under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Frame,
    SyncMessage,
    Token,
    ImportCsv,
    ImportJson,
}

impl Target {
    pub const ALL: [Target; 5] = [
        Target::Frame,
        Target::SyncMessage,
        Target::Token,
        Target::ImportCsv,
        Target::ImportJson,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::Frame => "frame",
            Target::SyncMessage => "sync_message",
            Target::Token => "token",
            Target::ImportCsv => "import_csv",
            Target::ImportJson => "import_json",
        }
    }

    pub fn from_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Real inputs to start mutating from.
    pub fn seeds(self) -> Vec<Vec<u8>> {
        match self {
            Target::Frame => frame_seeds(),
            Target::SyncMessage => sync_seeds(),
            Target::Token => token_seeds(),
            Target::ImportCsv => vec![
                b"DWG NO,TAG,TYPE,TEMPLATE,QTY,LOCATION,TEST PKG,Line Class\nISO-1,P-1,pipe,Pipe,12.5,A1,TP-1,CS150\nISO-1,P-2,pipe,Pipe,-3,A1,,\n".to_vec(),
                b"\xef\xbb\xbfTAG,attr:x,'=y\n\"a,b\",\"c\"\"d\",'=HYPERLINK(1)\n\n".to_vec(),
            ],
            Target::ImportJson => vec![
                br#"[{"tag":"P-1","drawing":"ISO-1","template":"Pipe","quantity_total":12.5,"area":"A1"},{"tag":"P-2","attr:x":"y"}]"#.to_vec(),
                br#"[{"id":"00000000-0000-0000-0000-000000000001","tag":"T","quantity_total":null}]"#.to_vec(),
            ],
        }
    }

    /// Runs one input; a panic inside is the finding.
    pub fn run(self, input: &[u8]) {
        match self {
            Target::Frame => run_frame(input),
            Target::SyncMessage => run_sync(input),
            Target::Token => run_token(input),
            Target::ImportCsv => run_import(input, sitesync_daemon::import::Format::Csv),
            Target::ImportJson => run_import(input, sitesync_daemon::import::Format::Json),
        }
    }

    /// Where this target's regression inputs are kept.
    pub fn regressions(self) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("regressions")
            .join(self.name())
    }
}

fn frame_seeds() -> Vec<Vec<u8>> {
    let id = |n: u8| WireId([n; 16]);
    [
        Message::Hello {
            peer: id(1),
            device_name: "laptop".into(),
            credentials: vec![1, 2, 3],
            nonce: [9; 32],
        },
        Message::Summary {
            project: id(2),
            docs: vec![(id(4), vec![[1; 32]]), (id(5), vec![])],
        },
        Message::Sync {
            project: id(2),
            doc: id(4),
            message: vec![0x42, 0, 0, 0, 0],
        },
        Message::Ack {
            doc: id(4),
            heads: vec![[3; 32]],
        },
        Message::Presence(PresenceEntry {
            project: id(2),
            component: Some(id(6)),
            user: "ana".into(),
            device: id(1),
            activity: 1,
            seq: 7,
        }),
        Message::Ping { nonce: 7 },
        Message::Error {
            code: "x".into(),
            message: "y".into(),
            fatal: true,
        },
    ]
    .iter()
    .map(protocol::encode)
    .collect()
}

fn run_frame(input: &[u8]) {
    if let Ok(message) = protocol::decode(input) {
        let again = protocol::encode(&message);
        assert_eq!(
            protocol::decode(&again).ok(),
            Some(message),
            "a decoded frame re-encodes"
        );
    }
}

/// Real sync messages of a first contact (whole document) and of later
/// rounds (Bloom filters, single changes), plus the issue's 15 bytes.
fn sync_seeds() -> Vec<Vec<u8>> {
    let mut a = AutoCommit::new();
    for i in 0..12 {
        a.put(ROOT, format!("k{i}"), "x".repeat(40 * i)).expect("put");
        a.commit();
    }
    let mut a = a.document().clone();
    let mut b = Automerge::new();
    let (mut sa, mut sb) = (SyncState::new(), SyncState::new());
    let mut out = vec![vec![
        0x42, 0x00, 0x00, 0x01, 0x00, 0x08, 0x08, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0x00, 0x00,
    ]];
    for round in 0..2 {
        if round == 1 {
            let mut more = AutoCommit::load(&a.save()).expect("load");
            more.put(ROOT, "late", 1).expect("put");
            more.commit();
            a = more.document().clone();
        }
        for _ in 0..8 {
            let mut quiet = true;
            if let Some(m) = a.generate_sync_message(&mut sa) {
                let bytes = m.encode();
                let _ = b.receive_sync_message(&mut sb, SyncMessage::decode(&bytes).expect("own"));
                out.push(bytes);
                quiet = false;
            }
            if let Some(m) = b.generate_sync_message(&mut sb) {
                let bytes = m.encode();
                let _ = a.receive_sync_message(&mut sa, SyncMessage::decode(&bytes).expect("own"));
                out.push(bytes);
                quiet = false;
            }
            if quiet {
                break;
            }
        }
    }
    out
}

/// A small document with a few changes, for accepted messages to meet.
fn sync_peer() -> Automerge {
    let mut doc = AutoCommit::new();
    doc.put(ROOT, "a", 1).expect("put");
    doc.commit();
    doc.put(ROOT, "b", "two").expect("put");
    doc.commit();
    doc.document().clone()
}

fn run_sync(input: &[u8]) {
    if check_sync_message(input, &SyncLimits::default()).is_err() {
        return;
    }
    // Accepted: Automerge must now decode, apply and answer it unharmed.
    let Ok(message) = SyncMessage::decode(input) else {
        return;
    };
    for mut doc in [Automerge::new(), sync_peer()] {
        let mut state = SyncState::new();
        let _ = doc.receive_sync_message(&mut state, message.clone());
        let _ = doc.generate_sync_message(&mut state);
    }
}

fn token_seeds() -> Vec<Vec<u8>> {
    let org = OrgKey::from_secret("acme", [1; 32]);
    let all = org.issue(uuid::Uuid::from_u128(1), &[], 4_000_000_000_000, [2; 32]);
    let some = org.issue(
        uuid::Uuid::from_u128(2),
        &[uuid::Uuid::from_u128(7), uuid::Uuid::from_u128(8)],
        1,
        [3; 32],
    );
    let revoked: Vec<uuid::Uuid> = (1..40).map(uuid::Uuid::from_u128).collect();
    vec![
        all.encode().into_bytes(),
        some.encode().into_bytes(),
        all.cert().encode(),
        some.cert().encode(),
        Revocations::sign(&org, 1, &revoked[..1]).encode(),
        Revocations::sign(&org, 39, &revoked).encode(),
    ]
}

fn run_token(input: &[u8]) {
    let org = OrgKey::from_secret("acme", [1; 32]);
    if let Ok(token) = Token::parse(&String::from_utf8_lossy(input)) {
        let _ = token.cert().verify("acme", &org.public(), 0);
        let _ = token.sign(b"transcript");
    }
    if let Ok(cert) = Certificate::decode(input) {
        let _ = cert.verify("acme", &org.public(), 0);
        let _ = cert.scope();
    }
    if let Ok(list) = Revocations::decode(input) {
        let _ = list.verify("acme", &org.public());
        let _ = list.contains(uuid::Uuid::from_u128(7));
        assert_eq!(Revocations::decode(&list.encode()).as_ref(), Ok(&list));
    }
}

fn run_import(input: &[u8], format: sitesync_daemon::import::Format) {
    let file = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(file.path(), input).expect("writing the input");
    let mapping = Default::default();
    let _ = sitesync_daemon::import::read_rows(file.path(), format, &mapping, |_, _, _| Ok(()));
}

/// Values that sit on the edges of lengths and counts.
const INTERESTING: [&[u8]; 8] = [
    &[0x00],
    &[0xff],
    &[0x7f],
    &[0x80],
    &[0xff, 0xff, 0xff, 0xff, 0x0f],
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
    &[0xfd, 0, 0, 0, 0, 0, 0, 0, 1],
    &[0x85, 0x6f, 0x4a, 0x83],
];

/// A new input from the seeds: one seed, mutated one to eight times (or,
/// now and then, random bytes).
pub fn mutate(seeds: &[Vec<u8>], rng: &mut StdRng) -> Vec<u8> {
    if seeds.is_empty() || rng.random_ratio(1, 20) {
        let n = rng.random_range(0..64);
        return (0..n).map(|_| rng.random()).collect();
    }
    let mut data = seeds[rng.random_range(0..seeds.len())].clone();
    for _ in 0..rng.random_range(1..=8) {
        let len = data.len();
        match rng.random_range(0..8) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] = rng.random();
            }
            2 => {
                let i = rng.random_range(0..=len);
                let value = INTERESTING[rng.random_range(0..INTERESTING.len())];
                data.splice(i..i, value.iter().copied());
            }
            3 if len > 0 => {
                let i = rng.random_range(0..len);
                let end = (i + rng.random_range(1..=16)).min(len);
                data.drain(i..end);
            }
            4 if len > 0 => {
                let i = rng.random_range(0..len);
                let end = (i + rng.random_range(1..=32)).min(len);
                let copy: Vec<u8> = data[i..end].to_vec();
                let at = rng.random_range(0..=len);
                data.splice(at..at, copy);
            }
            5 => {
                let other = &seeds[rng.random_range(0..seeds.len())];
                if !other.is_empty() {
                    let from = rng.random_range(0..other.len());
                    let at = rng.random_range(0..=len);
                    data.truncate(at);
                    data.extend_from_slice(&other[from..]);
                }
            }
            6 if len > 0 => {
                data.truncate(rng.random_range(0..len));
            }
            _ if len > 0 => {
                let i = rng.random_range(0..len);
                let value = INTERESTING[rng.random_range(0..INTERESTING.len())];
                let end = (i + value.len()).min(len);
                data.splice(i..end, value.iter().copied());
            }
            _ => {}
        }
    }
    data
}

/// An input that made a target panic.
#[derive(Debug)]
pub struct Finding {
    pub target: Target,
    pub input: Vec<u8>,
    pub message: String,
}

/// Runs `input` through `target`, turning a panic into a [`Finding`].
pub fn try_input(target: Target, input: &[u8]) -> Result<(), Finding> {
    catch_unwind(AssertUnwindSafe(|| target.run(input))).map_err(|panic| Finding {
        target,
        input: input.to_vec(),
        message: panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into()),
    })
}

/// How one target's run went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Inputs run without a panic.
    pub survived: u64,
}

/// Runs `target` with inputs from `seed` until `done(runs)` says stop or
/// an input panics.
pub fn run(target: Target, seed: u64, mut done: impl FnMut(u64) -> bool) -> Result<Tally, Finding> {
    let seeds = target.seeds();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = Tally::default();
    for s in &seeds {
        try_input(target, s)?;
        tally.survived += 1;
    }
    while !done(tally.survived) {
        let input = mutate(&seeds, &mut rng);
        try_input(target, &input)?;
        tally.survived += 1;
    }
    Ok(tally)
}

/// Saves a finding's input as a regression input; returns its path.
pub fn save(finding: &Finding) -> std::io::Result<PathBuf> {
    let dir = finding.target.regressions();
    std::fs::create_dir_all(&dir)?;
    // FNV-1a: a stable name, so one input is saved once.
    let hash = finding.input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    let path = dir.join(format!("{hash:016x}.bin"));
    std::fs::write(&path, &finding.input)?;
    Ok(path)
}

/// Every saved regression input of `target`.
pub fn regression_inputs(target: Target) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let dir = target.regressions();
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.is_file() {
            let bytes = std::fs::read(&path)?;
            out.push((path, bytes));
        }
    }
    out.sort();
    Ok(out)
}
