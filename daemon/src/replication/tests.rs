//! Replication's tests.

use sitesync_model::NewProject;

use super::*;
use crate::events::EventBus;
use crate::service::Clock;

/// A replication over an in-memory repository, its first count done.
fn replication() -> (Arc<Service>, Arc<Replication>) {
    let service = Arc::new(Service::in_memory(Clock::system(), EventBus::new(100, 1)));
    let tls = ClientTls::new(&[]).unwrap();
    let repl = Replication::new(service.clone(), None, "t".into(), SyncTiming::default(), tls);
    // The first count runs in the background; once it has taken the
    // (empty) dirty set it takes nothing else, so the tests' own counts
    // are the only ones consuming what writes record.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while repl.pending.dirty.lock().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first count never started"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    (service, repl)
}

/// A local write adds its changes to the pending count; the documents
/// are not decoded to count them (an import of 500,000 components
/// wrote 10,000 drawings, and decoding them all took 28 s), and the
/// count is what counting every document from scratch gives.
#[test]
fn local_writes_add_to_the_pending_count_without_decoding() {
    let (service, repl) = replication();
    let new = NewProject {
        name: "P".into(),
        code: None,
    };
    let pid = service.create_project("ana", new).unwrap().id;
    let base = repl.pending_counts()[&pid.0];
    assert!(base > 0, "the project's creation is pending");
    for n in 0..5 {
        let new = sitesync_model::NewDrawing {
            number: format!("D-{n}"),
            ..Default::default()
        };
        service.add_drawing("ana", pid, new).unwrap();
    }
    service.repo().evict_all();
    let followed = repl.pending_counts();
    assert_eq!(service.repo().loaded(), 0, "no document decoded to count");
    assert_eq!(
        followed[&pid.0],
        base + 10,
        "each drawing: one change to the project, one creating its own document"
    );
    *repl.pending.dirty.lock().unwrap() = None;
    assert_eq!(repl.pending_counts(), followed, "counted from scratch");

    // The relay acknowledges the project document: what is left is
    // the drawings' own changes, the same followed or from scratch.
    let heads = service.repo().heads(pid.0).unwrap().unwrap();
    repl.acked(&[(pid.0, &heads)]);
    let after_ack = repl.pending_counts();
    assert_eq!(after_ack[&pid.0], 5);
    let new = sitesync_model::NewDrawing {
        number: "D-5".into(),
        ..Default::default()
    };
    service.add_drawing("ana", pid, new).unwrap();
    assert_eq!(repl.pending_counts()[&pid.0], 7);
    *repl.pending.dirty.lock().unwrap() = None;
    assert_eq!(repl.pending_counts()[&pid.0], 7, "counted from scratch");
}

/// Once nothing of a document is pending, further acknowledgements of
/// it are not recorded: a relay's every sync message carries its heads
/// (one store write each, for documents others changed), and one that
/// lags behind an Ack already recorded would count acknowledged
/// changes as pending again.
#[test]
fn acknowledgements_of_a_document_with_nothing_pending_change_nothing() {
    let (service, repl) = replication();
    let new = NewProject {
        name: "P".into(),
        code: None,
    };
    let pid = service.create_project("ana", new).unwrap().id;
    let older = service.repo().heads(pid.0).unwrap().unwrap();
    let patch = sitesync_model::ProjectPatch {
        name: Some("Q".into()),
        code: None,
    };
    service.update_project("ana", pid, patch).unwrap();
    let newer = service.repo().heads(pid.0).unwrap().unwrap();
    repl.acked(&[(pid.0, &newer)]);
    assert_eq!(repl.pending_counts()[&pid.0], 0);
    let recorded = || service.repo().store().get_meta(&acked_key(pid.0)).unwrap();
    let before = recorded();

    repl.acked(&[(pid.0, &older)]);
    assert_eq!(recorded(), before, "nothing written");
    assert_eq!(repl.pending_counts()[&pid.0], 0, "nothing pending again");
}

/// Counting races writes: a write can land after a count took the
/// entries but before it read the heads, and a write's entry can arrive
/// after a count that already read the document past it. Neither may
/// make a count decode a document, and both must count right. (The
/// background first count hit this in CI.)
#[test]
fn a_count_racing_a_write_neither_decodes_nor_miscounts() {
    let (service, repl) = replication();
    let new = NewProject {
        name: "P".into(),
        code: None,
    };
    let pid = service.create_project("ana", new).unwrap().id;
    let add = |n: usize| {
        let new = sitesync_model::NewDrawing {
            number: format!("D-{n}"),
            ..Default::default()
        };
        service.add_drawing("ana", pid, new).unwrap();
    };
    // The entries recorded since the last count, taken out.
    let take = || -> Vec<(Uuid, Vec<Grew>)> {
        let mut dirty = repl.pending.dirty.lock().unwrap();
        let taken = std::mem::take(dirty.as_mut().unwrap());
        taken.into_iter().map(|(doc, what)| (doc, what.grew)).collect()
    };
    let put = |entries: &[(Uuid, Vec<Grew>)]| {
        let mut dirty = repl.pending.dirty.lock().unwrap();
        for (doc, grew) in entries {
            let what = dirty.as_mut().unwrap().entry(*doc).or_default();
            what.grew.extend(grew.iter().cloned());
        }
    };
    let before = repl.pending_counts()[&pid.0];

    // Two drawings; the second one's entries arrive only after a count
    // (which reads the project's heads past the entries it has).
    add(0);
    add(1);
    let (mut now, mut late) = (Vec::new(), Vec::new());
    for (doc, mut grew) in take() {
        late.push((doc, vec![grew.pop().unwrap()]));
        now.push((doc, grew));
    }
    put(&now);
    service.repo().evict_all();
    repl.pending_counts();
    assert_eq!(
        service.repo().loaded(),
        0,
        "a write that outran the count decoded nothing"
    );
    put(&late);
    let counted = repl.pending_counts();
    assert_eq!(
        service.repo().loaded(),
        0,
        "the late entries carried on from the count"
    );
    assert_eq!(counted[&pid.0], before + 4, "two drawings: two changes each");

    // A count that covers a third drawing, whose entries then arrive again.
    add(2);
    let early = take();
    put(&early);
    repl.pending_counts();
    put(&early);
    service.repo().evict_all();
    let followed = repl.pending_counts();
    assert_eq!(service.repo().loaded(), 0, "entries the count covers are skipped");
    assert_eq!(followed[&pid.0], before + 6, "each change counted once");
    *repl.pending.dirty.lock().unwrap() = None;
    assert_eq!(repl.pending_counts(), followed, "counted from scratch");
}

/// The first pending count reads the repository; every durable write
/// marks documents pending from inside the repository's lock. Both at
/// once, many times over, must finish: with the count holding the
/// pending lock while it read the repository, they deadlocked.
#[test]
fn counting_pending_changes_never_blocks_a_write() {
    let (service, repl) = replication();
    let (done, finished) = std::sync::mpsc::channel();
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = std::thread::spawn(move || {
        for n in 0..300 {
            let new = NewProject {
                name: format!("P{n}"),
                code: None,
            };
            service.create_project("ana", new).unwrap();
        }
        done.send(()).unwrap();
    });
    let counter = {
        let (repl, writing) = (repl.clone(), writing.clone());
        std::thread::spawn(move || {
            // For as long as the writer writes.
            while writing.load(Ordering::Relaxed) {
                // Every call is a first count again.
                *repl.pending.dirty.lock().unwrap() = None;
                repl.pending_counts();
            }
        })
    };
    finished
        .recv_timeout(Duration::from_secs(60))
        .expect("the writer never finished: pending counting deadlocked with a write");
    writing.store(false, Ordering::Relaxed);
    writer.join().unwrap();
    counter.join().unwrap();
    assert_eq!(repl.pending_counts().len(), 300, "every project counted");
}

/// A peer's status is published when its state or how far apart it is
/// changes (the dashboard's "has everything" follows it live), not for
/// every latency sample or a comparison that found the same.
#[test]
fn a_peers_status_is_published_when_how_far_apart_changes() {
    let (service, repl) = replication();
    let id = Uuid::new_v4();
    repl.peers().insert(
        id,
        PeerSlot {
            view: PeerView::new(id, None, "lan", "inbound"),
            task: None,
        },
    );
    let apart = |n| {
        vec![SharedProject {
            project_id: Uuid::from_u128(1),
            documents: 3,
            documents_differing: n,
        }]
    };
    let published = || service.events.next_id();
    let before = published();
    repl.update(id, |v| v.latency_ms = Some(12));
    assert_eq!(published(), before, "a latency sample is not published");
    repl.update(id, |v| v.shared_projects = apart(2));
    assert_eq!(published(), before + 1, "how far apart changed");
    repl.update(id, |v| v.shared_projects = apart(2));
    assert_eq!(published(), before + 1, "the same comparison again");
    repl.update(id, |v| v.shared_projects = apart(0));
    assert_eq!(published(), before + 2, "now it has everything");
}
