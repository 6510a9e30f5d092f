//! The service's tests, over in-memory stores.

use std::time::Duration;

use sitesync_model::automerge::ActorId;
use sitesync_model::history::{component_history, summarize};
use sitesync_model::{
    Component, DrawingDoc, MilestoneDef, MilestoneUpdate, MilestoneValue, NewComponent, NewDrawing,
    NewProject, NewTemplate, OperationInfo, ProjectDoc, Template, WorkflowType,
};
use sitesync_sync::{Doc, DocStore, MemBackend, RepoConfig};

use super::received::INDEX_BATCH;
use super::*;
use crate::index::ComponentQuery;
use crate::paging::Page;

/// Every operation of the project, newest first: one page of them all.
fn all_operations(svc: &Service, pid: ProjectId) -> Vec<OperationInfo> {
    let page = Page {
        offset: 0,
        limit: 1_000_000,
    };
    svc.operations(pid, page).unwrap().items
}

/// A component's whole history, read two rows a page, following the
/// cursors: each page is the next slice, and the last has no cursor.
fn all_history(svc: &Service, pid: ProjectId, cid: ComponentId) -> Vec<sitesync_model::HistoryEntry> {
    let mut page = Page { offset: 0, limit: 2 };
    let mut rows = Vec::new();
    loop {
        let got = svc.history(pid, cid, page).unwrap();
        assert!(got.items.len() <= 2);
        rows.extend(got.items);
        match got.next_cursor {
            Some(c) => page.offset = Page::decode_cursor(&c).unwrap(),
            None => {
                assert_eq!(rows.len(), got.total, "the total counts every row");
                return rows;
            }
        }
    }
}

/// A service on `dir` with a small cache, as the restart tests want.
fn open_small(dir: &std::path::Path) -> Result<Service, crate::StartError> {
    crate::open_service(
        dir,
        crate::CacheLimits {
            documents: 512,
            ..Default::default()
        },
    )
}

fn service() -> Service {
    service_with(Clock::system())
}

fn service_with(clock: Clock) -> Service {
    Service::in_memory(clock, EventBus::new(100, 1))
}

#[test]
fn a_store_from_before_sync_gets_its_bindings_once() {
    let svc = service();
    let (pid, did) = (ProjectId(new_id()), DrawingId(new_id()));
    // As an older version wrote it: documents and the project marker only.
    svc.repo
        .write(|tx| {
            let ctx = svc.ctx("ana", OperationKind::ProjectCreate);
            let new = NewProject {
                name: "Old".into(),
                code: None,
            };
            let mut project = ProjectDoc::create(pid, &new, &ctx, tx.actor())?;
            let drawing = NewDrawing {
                number: "ISO-1".into(),
                ..NewDrawing::default()
            };
            project.add_drawing(&ctx, did, &drawing)?;
            tx.insert(
                did.0,
                Doc::Drawing(DrawingDoc::create(pid, did, &ctx, tx.actor())?),
            );
            tx.insert(pid.0, Doc::Project(project));
            tx.put_meta(&keys::legacy_project(pid.0), b"");
            Ok(())
        })
        .unwrap();
    let host = RepoHost::new(svc.repo.clone());
    assert!(
        host.summary(pid.0).unwrap().is_empty(),
        "nothing to offer peers yet"
    );
    svc.set_org("acme");
    svc.migrate_store().unwrap();
    let mut docs: Vec<Uuid> = host.summary(pid.0).unwrap().into_iter().map(|(d, _)| d).collect();
    docs.sort();
    let mut want = vec![pid.0, did.0];
    want.sort();
    assert_eq!(docs, want);
    assert_eq!(host.project_of(did.0).unwrap(), Some(pid.0));
    assert_eq!(host.project_org(pid.0).unwrap().as_deref(), Some("acme"));
    // A second start changes nothing.
    svc.migrate_store().unwrap();
    assert_eq!(host.summary(pid.0).unwrap().len(), 2);
    // The old marker is merged into `proj/` and gone; the project lists.
    assert_eq!(
        svc.repo.store().get_meta(&keys::legacy_project(pid.0)).unwrap(),
        None
    );
    assert_eq!(
        svc.projects().unwrap().iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![pid]
    );
}

/// A store the previous daemon wrote holds both `project/<id>` and
/// `proj/<id>` for every project: after the migration only `proj/` is
/// left, with its organisation, and every project still lists.
#[test]
fn a_store_with_both_project_records_keeps_one() {
    let svc = service();
    svc.set_org("acme");
    let (p, _) = project_with_template(&svc);
    let (q, _) = project_with_template(&svc);
    for pid in [p.id, q.id] {
        svc.repo
            .store()
            .put_meta(&keys::legacy_project(pid.0), b"")
            .unwrap();
    }
    let host = RepoHost::new(svc.repo.clone());
    let listed = |svc: &Service| {
        let mut ids: Vec<ProjectId> = svc.projects().unwrap().iter().map(|p| p.id).collect();
        ids.sort();
        ids
    };
    let mut want = vec![p.id, q.id];
    want.sort();
    assert_eq!(listed(&svc), want);
    svc.migrate_store().unwrap();
    assert_eq!(listed(&svc), want);
    for pid in [p.id, q.id] {
        assert_eq!(
            svc.repo.store().get_meta(&keys::legacy_project(pid.0)).unwrap(),
            None
        );
        assert_eq!(host.project_org(pid.0).unwrap().as_deref(), Some("acme"));
    }
    assert!(
        svc.repo
            .store()
            .meta_names(keys::LEGACY_PROJECT)
            .unwrap()
            .is_empty()
    );
}

/// A drawing that arrives before its project's document marks the project
/// held (`proj/`), but the project lists only once its document is here.
#[test]
fn a_project_lists_once_its_own_document_arrives() {
    let (a, b) = (service(), service());
    let (pid, did, _) = drawing_with_components(&a, 1);
    receive(&a, &b, pid, did.0);
    let host = RepoHost::new(b.repo.clone());
    assert!(
        host.projects().unwrap().contains(&pid.0),
        "held from its first document"
    );
    assert!(b.projects().unwrap().is_empty(), "its document has not arrived");
    receive(&a, &b, pid, pid.0);
    assert_eq!(
        b.projects().unwrap().iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![pid]
    );
}

/// A project with three drawings of `each` components (4 budget hours,
/// one discrete milestone `erect`), in drawing order.
fn three_drawings(svc: &Service, each: usize) -> (ProjectView, Vec<Component>) {
    let (p, t) = project_with_template(svc);
    let mut components = Vec::new();
    for n in 0..3 {
        components.extend(drawing_of(svc, p.id, &t, n, each).1);
    }
    (p, components)
}

/// Drawing `D<n>` of project `pid`, with `each` components `C<n>-<m>` of
/// template `t` (4 budget hours each).
fn drawing_of(
    svc: &Service,
    pid: ProjectId,
    t: &Template,
    n: usize,
    each: usize,
) -> (DrawingId, Vec<Component>) {
    let d = svc
        .add_drawing(
            "ana",
            pid,
            NewDrawing {
                number: format!("D{n}"),
                ..Default::default()
            },
        )
        .unwrap();
    let components = (0..each)
        .map(|m| {
            let new = NewComponent {
                tag: format!("C{n}-{m}"),
                kind: "spool".into(),
                template_id: Some(t.id),
                budget_hours: Some(4.0),
                ..Default::default()
            };
            svc.add_component("ana", pid, d.info.id, new).unwrap()
        })
        .collect();
    (d.info.id, components)
}

fn project_with_template(svc: &Service) -> (ProjectView, Template) {
    let p = svc
        .create_project(
            "ana",
            NewProject {
                name: "P".into(),
                code: None,
            },
        )
        .unwrap();
    let t = svc
        .add_template(
            "ana",
            p.id,
            NewTemplate {
                name: "Spool".into(),
                workflow_type: WorkflowType::Discrete,
                milestones: vec![MilestoneDef {
                    key: "erect".into(),
                    name: "Erect".into(),
                    weight: 1.0,
                }],
            },
        )
        .unwrap();
    (p, t)
}

#[test]
fn the_history_index_matches_a_full_scan_as_writes_arrive() {
    let svc = service();
    let (pid, did, ids) = drawing_with_components(&svc, 1);
    let cid = ids[0];
    let full = |svc: &Service| {
        svc.repo()
            .read_drawing(did, |doc| component_history(doc.automerge(), cid).unwrap())
            .unwrap()
    };
    assert_eq!(all_history(&svc, pid, cid), full(&svc));
    for (i, done) in [true, false, true].into_iter().enumerate() {
        let u = MilestoneUpdate {
            component_id: cid,
            milestone: "erect".into(),
            value: MilestoneValue::Completed(done),
            effective_date: None,
        };
        svc.update_milestone(if i % 2 == 0 { "ana" } else { "ben" }, pid, u, None)
            .unwrap();
        let h = all_history(&svc, pid, cid);
        assert_eq!(h, full(&svc), "after write {i}");
        assert_eq!(h.len(), i + 2);
    }
}

/// A history request reads what is new from a copy outside the locks and
/// adds it only when the index has not moved meanwhile: a read from
/// older heads (another request got there first) adds nothing twice.
#[test]
fn a_history_read_from_stale_heads_adds_nothing() {
    use crate::index::HistoryIndex;
    let svc = service();
    let (pid, did, ids) = drawing_with_components(&svc, 1);
    let cid = ids[0];
    let copy = |svc: &Service| svc.repo().read_drawing(did, |d| d.automerge().clone()).unwrap();
    let before = copy(&svc);
    erect(&svc, pid, cid);
    let mut index = HistoryIndex::default();
    index.absorb(HistoryIndex::read(&copy(&svc), &[]).unwrap());
    let rows = index
        .page(
            cid,
            Page {
                offset: 0,
                limit: 100,
            },
        )
        .items;
    assert_eq!(rows.len(), 2, "created, then erected");
    // Read from nothing, like a request that started before the first.
    index.absorb(HistoryIndex::read(&before, &[]).unwrap());
    assert_eq!(
        index
            .page(
                cid,
                Page {
                    offset: 0,
                    limit: 100
                }
            )
            .items,
        rows,
        "nothing twice"
    );
    assert_eq!(
        index.heads(),
        copy(&svc).get_heads().as_slice(),
        "still at the newer heads"
    );
    // And through the service, the same rows a full scan gives.
    assert_eq!(all_history(&svc, pid, cid), rows);
}

/// After a restart the index reads each drawing's entries from its
/// saved record when the document has not changed since the save, and
/// from the document when it has: a write after the last save (then a
/// crash, which saves nothing) shows after the restart.
#[test]
fn a_restart_reads_saved_entries_and_rereads_drawings_changed_since() {
    let dir = tempfile::tempdir().unwrap();
    let svc = open_small(dir.path()).unwrap();
    let (p, components) = three_drawings(&svc, 2);
    assert_eq!(svc.save_index().unwrap(), 3, "every drawing with components");
    assert_eq!(svc.save_index().unwrap(), 0, "nothing changed since");
    // Not saved: the process stops before the next save.
    let erected = MilestoneUpdate {
        component_id: components[2].id,
        milestone: "erect".into(),
        value: MilestoneValue::Completed(true),
        effective_date: None,
    };
    svc.update_milestone("ben", p.id, erected, None).unwrap();
    let all = |svc: &Service| {
        svc.components(
            p.id,
            &ComponentQuery::default(),
            Page {
                offset: 0,
                limit: 100,
            },
        )
        .unwrap()
        .items
    };
    let before = all(&svc);
    assert_eq!(before.iter().filter(|c| c.completion_percent == 100.0).count(), 1);
    drop(svc);

    let svc = open_small(dir.path()).unwrap();
    let (_, built) = ProjectIndex::build(svc.repo(), p.id).unwrap();
    assert_eq!(built, crate::index::Built { saved: 2, read: 1 });
    assert_eq!(all(&svc), before);
    assert_eq!(svc.progress(p.id, None).unwrap().earned_hours, 4.0);
    // The re-read drawing is saved again; then every drawing reads back.
    assert_eq!(svc.save_index().unwrap(), 1);
    drop(svc);
    let svc = open_small(dir.path()).unwrap();
    let (_, built) = ProjectIndex::build(svc.repo(), p.id).unwrap();
    assert_eq!(built, crate::index::Built { saved: 3, read: 0 });
    assert_eq!(all(&svc), before);
}

/// Without commits reported by the repository, the list reads the
/// documents that changed, and is still the full scan's.
#[test]
fn the_operations_list_reads_documents_when_commits_are_not_reported() {
    let repo = Repo::new(
        DocStore::new(MemBackend::default()),
        ActorId::random(),
        RepoConfig::default(),
    );
    let svc = Service::new(repo, DeviceId(new_id()), Clock::system(), EventBus::new(100, 1));
    let (pid, did, ids) = drawing_with_components(&svc, 2);
    let docs = [pid.0, did.0];
    assert_eq!(svc.oplog.behind(&svc.repo, docs[0], &docs).unwrap().len(), 2);
    let full = |svc: &Service| {
        summarize(docs.iter().flat_map(|id| {
            svc.repo
                .read_raw(*id, sitesync_model::history::operation_records)
                .unwrap()
                .unwrap()
        }))
    };
    assert_eq!(all_operations(&svc, pid), full(&svc));
    assert!(svc.oplog.behind(&svc.repo, docs[0], &docs).unwrap().is_empty());
    let u = MilestoneUpdate {
        component_id: ids[1],
        milestone: "erect".into(),
        value: MilestoneValue::Completed(true),
        effective_date: None,
    };
    svc.update_milestone("ana", pid, u, None).unwrap();
    assert_eq!(svc.oplog.behind(&svc.repo, docs[0], &docs).unwrap(), vec![did.0]);
    assert_eq!(all_operations(&svc, pid), full(&svc));
}

/// The operations list is what a full read of every document gives,
/// after each write; after a restart it comes from the saved records
/// without reading a single drawing, and a write made since is read
/// from its own drawing.
#[test]
fn the_operations_list_matches_a_full_scan_and_a_restart_reads_no_drawing() {
    let dir = tempfile::tempdir().unwrap();
    let svc = open_small(dir.path()).unwrap();
    let (p, components) = three_drawings(&svc, 1);
    let full = |svc: &Service| {
        let mut docs = vec![p.id.0];
        docs.extend(components.iter().map(|c| c.drawing_id.0));
        summarize(docs.into_iter().flat_map(|id| {
            svc.repo
                .read_raw(id, sitesync_model::history::operation_records)
                .unwrap()
                .unwrap()
        }))
    };
    // Followed from their first change: nothing to read for the list.
    let mut docs = vec![p.id.0];
    docs.extend(components.iter().map(|c| c.drawing_id.0));
    assert_eq!(
        svc.oplog.behind(&svc.repo, docs[0], &docs).unwrap(),
        Vec::<Uuid>::new()
    );
    assert_eq!(all_operations(&svc, p.id), full(&svc));
    let erect = |c: &Component, done: bool| MilestoneUpdate {
        component_id: c.id,
        milestone: "erect".into(),
        value: MilestoneValue::Completed(done),
        effective_date: None,
    };
    for (i, c) in components.iter().enumerate() {
        let (_, op) = svc.update_milestone("ben", p.id, erect(c, true), None).unwrap();
        assert!(svc.oplog.behind(&svc.repo, docs[0], &docs).unwrap().is_empty());
        let listed = all_operations(&svc, p.id);
        assert_eq!(listed, full(&svc), "after write {i}");
        assert_eq!(listed[0].id, op, "the newest first");
    }
    let undone = svc.operations(p.id, Page { offset: 0, limit: 1 }).unwrap().items[0].id;
    svc.undo("ana", p.id, OperationId(undone.0)).unwrap();
    let before = all_operations(&svc, p.id);
    assert_eq!(before, full(&svc));
    assert!(before.iter().any(|o| o.id == undone && o.undone_by.is_some()));
    svc.save_index().unwrap();
    drop(svc);

    let svc = open_small(dir.path()).unwrap();
    svc.progress(p.id, None).unwrap();
    let loaded = svc.documents_loaded();
    assert_eq!(all_operations(&svc, p.id), before);
    assert_eq!(svc.documents_loaded(), loaded, "no document read for the list");
    let (_, op) = svc
        .update_milestone("ana", p.id, erect(&components[1], false), None)
        .unwrap();
    let after = all_operations(&svc, p.id);
    assert_eq!(after[0].id, op);
    assert_eq!(after, full(&svc));
}

/// Brings `doc` from `from` into `to` as a sync connection does
/// (`RepoHost::receive`): durable, and queued for the index by the
/// repository's change feed, but not indexed yet.
fn arrive(from: &Service, to: &Service, project: ProjectId, doc: Uuid) {
    let saved = from.repo.read_raw(doc, |am| am.save()).unwrap().unwrap();
    let sender = sitesync_sync::Sender {
        peer: from.device.0,
        project: project.0,
    };
    to.repo
        .sync_doc(doc, sender, None, |am| {
            am.load_incremental(&saved).unwrap();
            // The bookkeeping `RepoHost::receive` writes with it.
            let mut records = binding_records(project.0, doc);
            records.push(project_record(project.0, ""));
            ((), records)
        })
        .unwrap();
}

/// [`arrive`], then indexes everything received, as the indexer thread
/// does.
fn receive(from: &Service, to: &Service, project: ProjectId, doc: Uuid) {
    arrive(from, to, project, doc);
    while to.index_received() > 0 {}
}

/// A project on `a` with one drawing of `n` components, each with the
/// one milestone `erect`; received whole by `b`.
fn shared_drawing(a: &Service, b: &Service, n: usize) -> (ProjectId, DrawingId, Vec<ComponentId>) {
    let (pid, did, ids) = drawing_with_components(a, n);
    receive(a, b, pid, pid.0);
    receive(a, b, pid, did.0);
    (pid, did, ids)
}

/// A project on `svc` with one drawing, `D1`, of `n` components `C0`…,
/// each of 2 budget hours and the one milestone `erect`.
fn drawing_with_components(svc: &Service, n: usize) -> (ProjectId, DrawingId, Vec<ComponentId>) {
    let (p, t) = project_with_template(svc);
    let d = svc
        .add_drawing(
            "ana",
            p.id,
            NewDrawing {
                number: "D1".into(),
                ..Default::default()
            },
        )
        .unwrap();
    let ids = (0..n)
        .map(|i| {
            let new = NewComponent {
                tag: format!("C{i}"),
                kind: "spool".into(),
                template_id: Some(t.id),
                budget_hours: Some(2.0),
                ..Default::default()
            };
            svc.add_component("ana", p.id, d.info.id, new).unwrap().id
        })
        .collect();
    (p.id, d.info.id, ids)
}

fn erect(svc: &Service, pid: ProjectId, cid: ComponentId) {
    let u = MilestoneUpdate {
        component_id: cid,
        milestone: "erect".into(),
        value: MilestoneValue::Completed(true),
        effective_date: None,
    };
    svc.update_milestone("ana", pid, u, None).unwrap();
}

/// The change feed queues a received document before the sync step that
/// made it durable returns (so before its sender hears an Ack), moving
/// the clock past its changes; the index shows it once the indexer has
/// taken it, with events naming the device it came from.
#[test]
fn a_received_change_is_queued_as_it_lands_and_indexed_with_its_origin() {
    let a = service();
    // `b`'s wall clock is far behind `a`'s.
    let b = service_with(Clock::with_source(|| 1_000));
    let (pid, did, ids) = shared_drawing(&a, &b, 1);
    assert_eq!(b.component(pid, ids[0]).unwrap().completion_percent, 0.0);
    let next = b.events.next_id();
    erect(&a, pid, ids[0]);
    let written = a
        .repo
        .read_raw(did.0, |am| am.get_last_local_change().map(|c| c.timestamp()));
    let written = written.unwrap().flatten().expect("a's change");
    arrive(&a, &b, pid, did.0);
    assert!(b.received.waiting(did.0), "queued as it became durable");
    assert!(b.now().0 > written, "b's next write orders after a's");
    assert_eq!(
        b.component(pid, ids[0]).unwrap().completion_percent,
        0.0,
        "not indexed until the indexer takes it"
    );
    assert_eq!(b.index_received(), 1);
    assert!(!b.received.waiting(did.0));
    assert_eq!(b.component(pid, ids[0]).unwrap().completion_percent, 100.0);
    assert_eq!(b.progress(pid, None).unwrap().earned_hours, 2.0);
    // The event names the device the change came from.
    let events = b.events.subscribe(Some(next - 1)).backlog;
    let updated = events
        .iter()
        .find(|e| e.kind == "component.updated")
        .expect("an update event");
    let data: serde_json::Value = serde_json::from_str(&updated.data).unwrap();
    assert_eq!(data["origin"], a.device().to_string());
}

/// Documents arriving faster than anything indexes them wait in the
/// queue, and the indexer takes at most [`INDEX_BATCH`] of them per hold
/// of the service's lock, so a request waits for at most one batch;
/// nothing received is missed.
#[test]
fn the_indexer_takes_one_batch_per_hold_of_the_lock() {
    let (a, b) = (service(), service());
    let (p, t) = project_with_template(&a);
    receive(&a, &b, p.id, p.id.0);
    let drawings = INDEX_BATCH + 10;
    for n in 0..drawings {
        let (did, _) = drawing_of(&a, p.id, &t, n, 1);
        arrive(&a, &b, p.id, did.0);
    }
    arrive(&a, &b, p.id, p.id.0);
    assert_eq!(b.received.len(), drawings + 1);
    assert_eq!(b.index_received(), INDEX_BATCH);
    assert_eq!(b.received.len(), drawings + 1 - INDEX_BATCH);
    while b.index_received() > 0 {}
    assert_eq!(b.project(p.id).unwrap().component_count, drawings);
}

/// With the indexer thread running, a remote change reaches the index
/// and its events with no request taking the lock.
#[test]
fn the_indexer_thread_indexes_remote_changes_on_its_own() {
    let a = service();
    let b = Arc::new(service());
    b.start_indexer().unwrap();
    let (pid, did, ids) = shared_drawing(&a, &b, 1);
    assert_eq!(b.component(pid, ids[0]).unwrap().completion_percent, 0.0);
    let next = b.events.next_id();
    erect(&a, pid, ids[0]);
    arrive(&a, &b, pid, did.0);
    // Only the event ring is read here: no lock is taken.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while b.events.next_id() == next {
        assert!(std::time::Instant::now() < deadline, "no event after 10 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    let events = b.events.subscribe(Some(next - 1)).backlog;
    assert!(
        events.iter().any(|e| e.kind == "component.updated"),
        "{:?}",
        events.iter().map(|e| e.kind).collect::<Vec<_>>()
    );
    // The thread holds the service only while indexing: it is dropped.
    let weak = Arc::downgrade(&b);
    drop(b);
    while weak.strong_count() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the indexer kept the service"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// An index save that runs while a received change waits for the indexer
/// must not record the document's new heads beside entries that do not
/// have its changes yet: after a crash, the restart would trust those
/// entries.
#[test]
fn an_index_save_while_a_received_change_waits_leaves_that_drawing_due() {
    let dir = tempfile::tempdir().unwrap();
    let a = service();
    let b = open_small(dir.path()).unwrap();
    let (pid, did, ids) = shared_drawing(&a, &b, 2);
    assert_eq!(b.progress(pid, None).unwrap().earned_hours, 0.0);
    assert_eq!(b.save_index().unwrap(), 1);
    erect(&a, pid, ids[0]);
    receive(&a, &b, pid, did.0);
    erect(&a, pid, ids[1]);
    arrive(&a, &b, pid, did.0);
    // The first change is indexed; the second is durable but not
    // indexed, so the drawing is not saved yet.
    assert_eq!(b.save_index().unwrap(), 0);
    // Killed before the second change is indexed or saved.
    drop(b);
    let b = open_small(dir.path()).unwrap();
    assert_eq!(b.progress(pid, None).unwrap().earned_hours, 4.0);
    for id in ids {
        assert_eq!(b.component(pid, id).unwrap().completion_percent, 100.0);
    }
}

/// While a sync is taking documents in, the periodic save leaves the
/// operations index for later, at most [`Saving::MAX_DEFERRED`] saves in
/// a row; the first save after the documents stop coming indexes them,
/// and a listing never waits for it.
#[test]
fn the_periodic_save_indexes_operations_once_documents_stop_arriving() {
    let (a, b) = (service(), service());
    let (pid, did, ids) = shared_drawing(&a, &b, 1);
    let indexed = |svc: &Service| -> u64 {
        svc.repo
            .store()
            .get_meta(&keys::op_count(pid.0))
            .unwrap()
            .map_or(0, |v| String::from_utf8(v).unwrap().parse().unwrap())
    };
    b.save_index().unwrap();
    assert_eq!(indexed(&b), 0, "the drawing has just arrived");
    b.save_index().unwrap();
    let first = indexed(&b);
    assert!(first > 0, "nothing arrived since the last save");
    let toggle = |k: usize| MilestoneUpdate {
        component_id: ids[0],
        milestone: "erect".into(),
        value: MilestoneValue::Completed(k.is_multiple_of(2)),
        effective_date: None,
    };
    for k in 0..Saving::MAX_DEFERRED as usize {
        a.update_milestone("ana", pid, toggle(k), None).unwrap();
        receive(&a, &b, pid, did.0);
        b.save_index().unwrap();
        assert_eq!(indexed(&b), first, "save {k} while writes keep arriving");
    }
    a.update_milestone("ana", pid, toggle(99), None).unwrap();
    receive(&a, &b, pid, did.0);
    b.save_index().unwrap();
    let caught = indexed(&b);
    assert_eq!(
        caught,
        first + Saving::MAX_DEFERRED as u64 + 1,
        "never left behind longer than MAX_DEFERRED saves"
    );
    // A listing catches up by itself meanwhile.
    a.update_milestone("ana", pid, toggle(100), None).unwrap();
    receive(&a, &b, pid, did.0);
    b.save_index().unwrap();
    assert_eq!(indexed(&b), caught, "deferred again");
    assert_eq!(all_operations(&b, pid).len() as u64, caught + 1);
}

/// A background catch-up pauses after each batch, unless a listing is
/// waiting for it: from then on it runs flat out, and the listing gets
/// every operation.
#[test]
fn a_waiting_listing_lifts_the_background_catch_ups_pauses() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let svc = Arc::new(service());
    let (pid, _, ids) = drawing_with_components(&svc, 3);
    for id in &ids {
        erect(&svc, pid, *id);
    }
    let docs = svc.project_docs(pid).unwrap();
    let pauses = Arc::new(AtomicUsize::new(0));
    let oplog: Arc<std::sync::OnceLock<Arc<crate::oplog::OpLog>>> = Arc::default();
    let lister: Arc<Mutex<Option<std::thread::JoinHandle<usize>>>> = Arc::default();
    let hook = {
        let (pauses, oplog, lister, svc, docs) = (
            pauses.clone(),
            oplog.clone(),
            lister.clone(),
            svc.clone(),
            docs.clone(),
        );
        move |_| {
            if pauses.fetch_add(1, Ordering::SeqCst) > 0 {
                return;
            }
            // At the first pause, a listing arrives and waits.
            let log = oplog.get().unwrap().clone();
            let (svc, docs) = (svc.clone(), docs.clone());
            let page = Page {
                offset: 0,
                limit: 1000,
            };
            *lister.lock().unwrap() = Some(std::thread::spawn(move || {
                log.list(&svc.repo, pid.0, &docs, page).unwrap().items.len()
            }));
            while !oplog.get().unwrap().listing_waits() {
                std::thread::yield_now();
            }
        }
    };
    let log = Arc::new(crate::oplog::OpLog::with_batches_of(1).pausing_with(hook));
    oplog.set(log.clone()).ok().unwrap();
    log.catch_up(&svc.repo, pid.0, &docs, crate::oplog::Pace::Background)
        .unwrap();
    assert_eq!(pauses.load(Ordering::SeqCst), 1, "no pause once a listing waited");
    let listed = lister.lock().unwrap().take().expect("a listing").join().unwrap();
    assert_eq!(listed, all_operations(&svc, pid).len());
    assert!(listed > ids.len(), "{listed} operations");
}

#[test]
fn the_clock_never_repeats_or_goes_back() {
    let clock = Clock::with_source(|| 1_000);
    let a = clock.now();
    let b = clock.now();
    assert_eq!((a, b), (Timestamp(1_000), Timestamp(1_001)));
}

/// A long history on one drawing keeps its meaning through the folds
/// that come less often as it grows: history, undo, the operations list
/// and the components read the same before and after a restart, and
/// another device receiving the drawing converges on it.
#[test]
fn a_long_history_reads_the_same_through_folds_restarts_and_sync() {
    let dir = tempfile::tempdir().unwrap();
    let svc = open_small(dir.path()).unwrap();
    let (pid, did, ids) = drawing_with_components(&svc, 4);
    let writes = 600;
    let mut undone = 0;
    for k in 0..writes {
        let u = MilestoneUpdate {
            component_id: ids[k % ids.len()],
            milestone: "erect".into(),
            value: MilestoneValue::Completed((k / ids.len()).is_multiple_of(2)),
            effective_date: None,
        };
        let user = ["ana", "ben", "chen"][k % 3];
        let (_, op) = svc.update_milestone(user, pid, u, None).unwrap();
        if k % 97 == 96 {
            let report = svc.undo("dara", pid, op).unwrap().report;
            assert_eq!(report.reverted, 1, "undo of write {k}");
            undone += 1;
        }
    }
    let loaded = svc
        .repo()
        .store()
        .load(did.0, ActorId::random())
        .unwrap()
        .unwrap();
    assert!(
        loaded.change_records < writes / 4,
        "folded along the way: {} records left",
        loaded.change_records
    );
    let read = |svc: &Service| {
        let components = svc
            .components(pid, &ComponentQuery::default(), Page::default())
            .unwrap()
            .items;
        let history: Vec<_> = ids.iter().map(|c| all_history(svc, pid, *c)).collect();
        let operations = all_operations(svc, pid);
        (components, history, operations)
    };
    let (components, history, operations) = read(&svc);
    let full = svc
        .repo()
        .read_drawing(did, |d| component_history(d.automerge(), ids[0]).unwrap())
        .unwrap();
    assert_eq!(history[0], full, "the history index is the full scan's");
    // Creating the component, then its writes and the undos of them.
    let rows: usize = history.iter().map(Vec::len).sum();
    assert_eq!(rows, ids.len() + writes + undone);
    assert_eq!(
        operations.iter().filter(|o| o.undone_by.is_some()).count(),
        undone
    );
    drop(svc);

    let svc = open_small(dir.path()).unwrap();
    let (after_components, after_history, after_operations) = read(&svc);
    assert_eq!(after_components, components);
    assert_eq!(after_history, history);
    assert_eq!(after_operations.len(), operations.len());

    let other = service();
    receive(&svc, &other, pid, pid.0);
    receive(&svc, &other, pid, did.0);
    let heads = |s: &Service| s.repo().heads(did.0).unwrap();
    assert_eq!(heads(&other), heads(&svc));
    let theirs = other
        .components(pid, &ComponentQuery::default(), Page::default())
        .unwrap()
        .items;
    assert_eq!(theirs, components, "the other device reads the same");
    assert_eq!(
        other.progress(pid, None).unwrap().earned_hours,
        svc.progress(pid, None).unwrap().earned_hours
    );
}

/// The full list of the project's operations, read from its documents.
fn operations_scan(svc: &Service, pid: ProjectId) -> Vec<OperationInfo> {
    summarize(svc.project_docs(pid).unwrap().into_iter().flat_map(|id| {
        svc.repo
            .read_raw(id, sitesync_model::history::operation_records)
            .unwrap()
            .unwrap_or_default()
    }))
}

/// A page of the operations list is the slice of the full list, with its
/// total and the cursor of the next; a document whose indexed heads it no
/// longer has (a damaged record skipped at load) has the project's index
/// rebuilt, never counted twice, however many batches a catch-up takes.
#[test]
fn the_operations_list_pages_and_rebuilds_when_a_document_disagrees() {
    let svc = service();
    let (p, components) = three_drawings(&svc, 2);
    for (k, c) in components.iter().enumerate() {
        let u = MilestoneUpdate {
            component_id: c.id,
            milestone: "erect".into(),
            value: MilestoneValue::Completed(true),
            effective_date: None,
        };
        svc.update_milestone("ana", p.id, u, None).unwrap();
        if k == 2 {
            let ids: Vec<_> = components.iter().map(|c| c.id).collect();
            let updates = ids
                .iter()
                .map(|id| MilestoneUpdate {
                    component_id: *id,
                    milestone: "erect".into(),
                    value: MilestoneValue::Completed(false),
                    effective_date: None,
                })
                .collect();
            svc.bulk("ben", p.id, updates, Default::default(), None).unwrap();
        }
    }
    let full = operations_scan(&svc, p.id);
    assert_eq!(all_operations(&svc, p.id), full);
    let page = svc.operations(p.id, Page { offset: 3, limit: 4 }).unwrap();
    assert_eq!(page.items, full[3..7].to_vec());
    assert_eq!(page.total, full.len());
    let next = Page::decode_cursor(page.next_cursor.as_deref().unwrap()).unwrap();
    assert_eq!(next, 7);
    let last = svc
        .operations(
            p.id,
            Page {
                offset: full.len() - 2,
                limit: 4,
            },
        )
        .unwrap();
    assert_eq!(last.items, full[full.len() - 2..].to_vec());
    assert_eq!(last.next_cursor, None);

    // The first drawing's record claims heads its document never had.
    let did = components[0].drawing_id.0;
    let bogus =
        serde_json::json!({"v": 2, "heads": [sitesync_model::automerge::ChangeHash([7; 32]).to_string()]});
    let store = svc.repo.store();
    store
        .put_meta(&keys::oplog(did), &serde_json::to_vec(&bogus).unwrap())
        .unwrap();
    // The service forgets what it followed only on a restart; a new
    // operations list over the same store stands for one. It stores each
    // change apart, so the project's document is stored before the
    // drawing is found to disagree: the rebuild must not add it again; and
    // the rebuild follows each drawing change by change, a bulk's
    // operation merged across drawings one record at a time.
    let oplog = crate::oplog::OpLog::with_batches_of(1);
    let docs = svc.project_docs(p.id).unwrap();
    let listed = oplog
        .list(
            &svc.repo,
            p.id.0,
            &docs,
            Page {
                offset: 0,
                limit: 1000,
            },
        )
        .unwrap();
    assert_eq!(listed.items, full, "rebuilt, not counted twice");
    assert_eq!(listed.total, full.len());
}

/// A store of an earlier daemon, whose `oplog/<doc>` records held the
/// documents' records themselves, lists the same operations without
/// reading a document, and is written in the new layout.
#[test]
fn an_earlier_daemons_operation_records_are_indexed_without_reading_documents() {
    let dir = tempfile::tempdir().unwrap();
    let svc = open_small(dir.path()).unwrap();
    let (p, components) = three_drawings(&svc, 1);
    for c in &components {
        let u = MilestoneUpdate {
            component_id: c.id,
            milestone: "erect".into(),
            value: MilestoneValue::Completed(true),
            effective_date: None,
        };
        let (_, op) = svc.update_milestone("ana", p.id, u, None).unwrap();
        svc.undo("ben", p.id, op).unwrap();
    }
    let full = operations_scan(&svc, p.id);
    // As the earlier daemon left it: every document's records and heads
    // in its own record, and no index.
    let store = svc.repo.store();
    for prefix in [keys::OPX, keys::OPAT, keys::OPUNDO, keys::OPCOUNT] {
        for name in store.meta_names(prefix).unwrap() {
            store.delete_meta(&format!("{prefix}{name}")).unwrap();
        }
    }
    for doc in svc.project_docs(p.id).unwrap() {
        let (records, heads) = svc
            .repo
            .read_raw(doc, |am| {
                (sitesync_model::history::operation_records(am), am.get_heads())
            })
            .unwrap()
            .unwrap();
        let legacy = serde_json::json!({
            "heads": heads.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "records": records.iter().map(|(m, at)| (m, at.0)).collect::<Vec<_>>(),
        });
        store
            .put_meta(&keys::oplog(doc), &serde_json::to_vec(&legacy).unwrap())
            .unwrap();
    }
    // Looking at what is behind indexes nothing, and forgets nothing: an
    // operations list that has not followed these documents yet (as after
    // a restart) still indexes the earlier records afterwards.
    let docs = svc.project_docs(p.id).unwrap();
    let unfollowed = crate::oplog::OpLog::default();
    assert!(unfollowed.behind(&svc.repo, p.id.0, &docs).unwrap().is_empty());
    let page = Page {
        offset: 0,
        limit: 1000,
    };
    assert_eq!(
        unfollowed.list(&svc.repo, p.id.0, &docs, page).unwrap().items,
        full
    );
    svc.save_index().unwrap();
    drop(svc);

    let svc = open_small(dir.path()).unwrap();
    svc.progress(p.id, None).unwrap();
    let loaded = svc.documents_loaded();
    assert_eq!(all_operations(&svc, p.id), full);
    assert_eq!(svc.documents_loaded(), loaded, "no document read for the list");
    let saved = svc.repo.store().get_meta(&keys::oplog(p.id.0)).unwrap().unwrap();
    let saved: serde_json::Value = serde_json::from_slice(&saved).unwrap();
    assert_eq!(saved["v"], 2, "rewritten in the new layout: {saved}");
}
