//! docs/design.md's "Documents" and "Merge semantics", one behaviour per test:
//! derived values, every row of the merge table, commit metadata, bulk
//! updates, undo, history and the operations list.

mod common;

use common::*;
use sitesync_model::history::component_history;
use sitesync_model::operation::OpMeta;
use sitesync_model::{
    BulkOptions, ComponentPatch, DrawingDoc, DrawingId, GroupBy, InOrder, MilestoneValue as V, NewDrawing,
    OperationKind as K, Spread, Status, apply_bulk, operations, rollup,
};

fn completed(f: &Fixture, c: sitesync_model::ComponentId, key: &str) -> Option<bool> {
    let comp = f.drawing.component(c).unwrap();
    comp.milestones.iter().find(|m| m.key == key).unwrap().completed
}

#[test]
fn weighted_completion_is_exact() {
    let mut f = Fixture::new();
    let c = f.component(1, DISCRETE);
    assert_eq!(f.drawing.component(c).unwrap().status, Status::NotStarted);
    for key in ["receive", "weld"] {
        let ctx = f.writer.ctx(K::MilestoneUpdate);
        f.drawing
            .update_milestone(&ctx, &update(c, key, V::Completed(true)))
            .unwrap();
    }
    let comp = f.drawing.component(c).unwrap();
    assert_eq!(comp.completion_percent, 70.0);
    assert_eq!(comp.status, Status::InProgress);
    let ctx = f.writer.ctx(K::MilestoneUpdate);
    let comp = f
        .drawing
        .update_milestone(&ctx, &update(c, "erect", V::Completed(true)))
        .unwrap();
    assert_eq!((comp.completion_percent, comp.status), (100.0, Status::Completed));
}

#[test]
fn percentage_and_quantity_completion() {
    let mut f = Fixture::new();
    let p = f.component(1, PERCENT);
    let q = f.component(2, QUANTITY);
    let ctx = f.writer.ctx(K::MilestoneUpdate);
    let comp = f
        .drawing
        .update_milestone(&ctx, &update(p, "prime", V::Percent(50.0)))
        .unwrap();
    assert_eq!(comp.completion_percent, 25.0);
    assert_eq!(comp.milestones[0].percent, Some(50.0));
    assert_eq!(comp.milestones[0].completed, None);

    // install 40 of 100 (weight 70), test 150 of 100 capped at 1 (weight 30).
    let ctx = f.writer.ctx(K::MilestoneUpdate);
    f.drawing
        .update_milestone(&ctx, &update(q, "install", V::QuantityDelta(40.0)))
        .unwrap();
    let ctx = f.writer.ctx(K::MilestoneUpdate);
    let comp = f
        .drawing
        .update_milestone(&ctx, &update(q, "test", V::Quantity(150.0)))
        .unwrap();
    assert_eq!(comp.completion_percent, 58.0);
    assert_eq!(comp.milestones[0].quantity, Some(40.0));
    assert_eq!(comp.milestones[1].quantity, Some(150.0));
    // Fractional quantities are exact (milli-units).
    let ctx = f.writer.ctx(K::MilestoneUpdate);
    let comp = f
        .drawing
        .update_milestone(&ctx, &update(q, "install", V::QuantityDelta(0.1)))
        .unwrap();
    let ctx = f.writer.ctx(K::MilestoneUpdate);
    let comp2 = f
        .drawing
        .update_milestone(&ctx, &update(q, "install", V::QuantityDelta(0.2)))
        .unwrap();
    assert_eq!(comp.milestones[0].quantity, Some(40.1));
    assert_eq!(comp2.milestones[0].quantity, Some(40.3));
}

#[test]
fn rollups_weight_by_budget_hours_and_group() {
    let mut f = Fixture::new();
    let a = f.component(1, DISCRETE);
    let b = f.component(2, DISCRETE);
    let c = f.component(3, DISCRETE);
    let ctx = f.writer.ctx(K::ComponentUpdate);
    let patch = ComponentPatch {
        budget_hours: Some(Some(10.0)),
        attributes: Some([("area".to_string(), Some("B7".to_string()))].into()),
        ..Default::default()
    };
    f.drawing.update_component(&ctx, a, &patch).unwrap();
    for key in ["receive", "erect", "weld"] {
        let ctx = f.writer.ctx(K::MilestoneUpdate);
        f.drawing
            .update_milestone(&ctx, &update(a, key, V::Completed(true)))
            .unwrap();
    }
    // c is deleted: it counts nowhere.
    let ctx = f.writer.ctx(K::ComponentDelete);
    f.drawing.set_component_deleted(&ctx, c, true).unwrap();
    let ctx = f.writer.ctx(K::MilestoneUpdate);
    let _ = f
        .drawing
        .update_milestone(&ctx, &update(b, "receive", V::Completed(true)));

    let comps = f.drawing.components().unwrap();
    let info = f.project.drawing(DRAWING).unwrap();
    let items = comps.iter().map(|c| (c, Some(&info)));
    let p = rollup(items.clone(), Some(GroupBy::Area));
    // a: 10 h at 100 %; b: 1 h (unset) at 10 %. (1000 + 10) / 11.
    assert_eq!(p.component_count, 2);
    assert_eq!(p.budget_hours, 11.0);
    assert_eq!(p.earned_hours, 10.1);
    assert_eq!(p.completion_percent, 91.818182);
    // Area: a's attribute B7 wins over the drawing's A1; b falls back to A1.
    let keys: Vec<_> = p
        .groups
        .iter()
        .map(|g| (g.key.clone().unwrap(), g.completion_percent))
        .collect();
    assert_eq!(keys, vec![("A1".to_string(), 10.0), ("B7".to_string(), 100.0)]);
    let by_system = rollup(items.clone(), Some(GroupBy::System));
    assert_eq!(by_system.groups.len(), 1);
    assert_eq!(by_system.groups[0].key.as_deref(), Some("Cooling"));
    let by_drawing = rollup(items.clone(), Some(GroupBy::Drawing));
    assert_eq!(by_drawing.groups[0].key, Some(DRAWING.to_string()));
    assert_eq!(by_drawing.groups[0].label.as_deref(), Some("P-101"));
    assert_eq!(rollup(items.clone(), Some(GroupBy::Template)).groups.len(), 1);
    assert_eq!(
        rollup(items, Some(GroupBy::Kind)).groups[0].key.as_deref(),
        Some("spool")
    );
    let nothing = std::iter::empty::<(sitesync_model::Component, Option<&sitesync_model::DrawingInfo>)>();
    assert_eq!(rollup(nothing, None).completion_percent, 0.0);
}

#[test]
fn concurrent_quantity_entries_both_count() {
    let mut f = Fixture::new();
    let q = f.component(1, QUANTITY);
    let ctx = f.writer.ctx(K::MilestoneUpdate);
    f.drawing
        .update_milestone(&ctx, &update(q, "install", V::Quantity(10.0)))
        .unwrap();
    let mut a = replica(&f.drawing, 2);
    let mut b = replica(&f.drawing, 3);
    let (mut wa, mut wb) = (Writer::new("ana", 2), Writer::new("ben", 3));
    // A sets 30 having seen 10 (an entry of +20); B adds 5 concurrently.
    a.update_milestone(
        &wa.ctx(K::MilestoneUpdate),
        &update(q, "install", V::Quantity(30.0)),
    )
    .unwrap();
    b.update_milestone(
        &wb.ctx(K::MilestoneUpdate),
        &update(q, "install", V::QuantityDelta(5.0)),
    )
    .unwrap();
    exchange(&mut a, &mut b);
    for doc in [&a, &b] {
        assert_eq!(doc.component(q).unwrap().milestones[0].quantity, Some(35.0));
    }
}

#[test]
fn concurrent_register_writes_later_timestamp_wins_loser_in_conflicts() {
    let mut f = Fixture::new();
    let c = f.component(1, DISCRETE);
    let p = f.component(2, PERCENT);
    let mut a = replica(&f.drawing, 2);
    let mut b = replica(&f.drawing, 3);
    let (mut wa, mut wb) = (Writer::new("ana", 2), Writer::new("ben", 3));
    wb.now += 60_000; // ben writes a minute later
    a.update_milestone(
        &wa.ctx(K::MilestoneUpdate),
        &update(c, "erect", V::Completed(true)),
    )
    .unwrap();
    b.update_milestone(
        &wb.ctx(K::MilestoneUpdate),
        &update(c, "erect", V::Completed(false)),
    )
    .unwrap();
    b.update_milestone(&wb.ctx(K::MilestoneUpdate), &update(p, "prime", V::Percent(40.0)))
        .unwrap();
    a.update_milestone(&wa.ctx(K::MilestoneUpdate), &update(p, "prime", V::Percent(90.0)))
        .unwrap();
    exchange(&mut a, &mut b);
    for doc in [&a, &b] {
        let m = &doc.component(c).unwrap().milestones[1];
        assert_eq!((m.completed, m.updated_by.as_deref()), (Some(false), Some("ben")));
        assert_eq!(m.conflicts.len(), 1);
        assert_eq!(m.conflicts[0].value, serde_json::json!(true));
        assert_eq!(m.conflicts[0].updated_by, "ana");
        let m = &doc.component(p).unwrap().milestones[0];
        assert_eq!(m.percent, Some(40.0));
        assert_eq!(m.conflicts[0].value, serde_json::json!(90.0));
    }
    assert_eq!(a.components().unwrap(), b.components().unwrap());
    // The next write of the milestone clears its conflicts.
    let comp = a
        .update_milestone(
            &wa.ctx(K::MilestoneUpdate),
            &update(c, "erect", V::Completed(true)),
        )
        .unwrap();
    assert!(comp.milestones[1].conflicts.is_empty());
}

#[test]
fn equal_timestamps_break_ties_the_same_way_everywhere() {
    let mut f = Fixture::new();
    let c = f.component(1, DISCRETE);
    let mut a = replica(&f.drawing, 2);
    let mut b = replica(&f.drawing, 3);
    let (mut wa, mut wb) = (Writer::new("ana", 2), Writer::new("ben", 3));
    wb.now = wa.now;
    a.update_milestone(
        &wa.ctx(K::MilestoneUpdate),
        &update(c, "weld", V::Completed(true)),
    )
    .unwrap();
    b.update_milestone(
        &wb.ctx(K::MilestoneUpdate),
        &update(c, "weld", V::Completed(false)),
    )
    .unwrap();
    // Merge in opposite orders.
    let mut a2 = replica(&a, 4);
    let mut b2 = replica(&b, 5);
    a2.automerge_mut().merge(&mut b.automerge_mut().clone()).unwrap();
    b2.automerge_mut().merge(&mut a.automerge_mut().clone()).unwrap();
    let (ma, mb) = (
        &a2.component(c).unwrap().milestones[2],
        &b2.component(c).unwrap().milestones[2],
    );
    assert_eq!(ma, mb);
    assert_eq!(ma.conflicts.len(), 1);
}

#[test]
fn a_lagging_clock_still_orders_after_what_it_has_seen() {
    let mut f = Fixture::new();
    let c = f.component(1, DISCRETE);
    let mut a = replica(&f.drawing, 2);
    let (mut fast, mut slow) = (Writer::new("ana", 2), Writer::new("ben", 3));
    fast.now += 3_600_000; // an hour ahead
    a.update_milestone(
        &fast.ctx(K::MilestoneUpdate),
        &update(c, "erect", V::Completed(true)),
    )
    .unwrap();
    let mut b = replica(&a, 3);
    // ben saw ana's write, then corrects it with a clock an hour behind.
    let comp = b
        .update_milestone(
            &slow.ctx(K::MilestoneUpdate),
            &update(c, "erect", V::Completed(false)),
        )
        .unwrap();
    assert_eq!(comp.milestones[1].completed, Some(false));
    exchange(&mut a, &mut b);
    assert_eq!(a.component(c).unwrap().milestones[1].completed, Some(false));
    assert!(a.component(c).unwrap().milestones[1].conflicts.is_empty());
}

#[test]
fn edit_and_delete_deletes_keeps_the_edit_and_restore_brings_it_back() {
    let mut f = Fixture::new();
    let c = f.component(1, DISCRETE);
    let mut a = replica(&f.drawing, 2);
    let mut b = replica(&f.drawing, 3);
    let (mut wa, mut wb) = (Writer::new("ana", 2), Writer::new("ben", 3));
    a.set_component_deleted(&wa.ctx(K::ComponentDelete), c, true)
        .unwrap();
    let patch = ComponentPatch {
        tag: Some("C-0001-REV".into()),
        ..Default::default()
    };
    b.update_component(&wb.ctx(K::ComponentUpdate), c, &patch)
        .unwrap();
    b.update_milestone(
        &wb.ctx(K::MilestoneUpdate),
        &update(c, "erect", V::Completed(true)),
    )
    .unwrap();
    exchange(&mut a, &mut b);
    let comp = a.component(c).unwrap();
    assert!(comp.deleted);
    assert_eq!(comp.tag, "C-0001-REV");
    let err = a
        .update_milestone(
            &wa.ctx(K::MilestoneUpdate),
            &update(c, "weld", V::Completed(true)),
        )
        .unwrap_err();
    assert_eq!(err.code(), "component_deleted");
    let comp = a
        .set_component_deleted(&wa.ctx(K::ComponentRestore), c, false)
        .unwrap();
    assert!(!comp.deleted);
    assert_eq!(
        (comp.tag.as_str(), comp.milestones[1].completed),
        ("C-0001-REV", Some(true))
    );
}

#[test]
fn edits_of_different_fields_and_milestones_are_all_kept() {
    let mut f = Fixture::new();
    let c = f.component(1, DISCRETE);
    let mut a = replica(&f.drawing, 2);
    let mut b = replica(&f.drawing, 3);
    let (mut wa, mut wb) = (Writer::new("ana", 2), Writer::new("ben", 3));
    let tag = ComponentPatch {
        tag: Some("NEW-TAG".into()),
        attributes: Some([("area".into(), Some("A2".into()))].into()),
        ..Default::default()
    };
    let kind = ComponentPatch {
        kind: Some("support".into()),
        attributes: Some([("spec".into(), Some("CS150".into()))].into()),
        ..Default::default()
    };
    a.update_component(&wa.ctx(K::ComponentUpdate), c, &tag).unwrap();
    b.update_component(&wb.ctx(K::ComponentUpdate), c, &kind).unwrap();
    a.update_milestone(
        &wa.ctx(K::MilestoneUpdate),
        &update(c, "erect", V::Completed(true)),
    )
    .unwrap();
    b.update_milestone(
        &wb.ctx(K::MilestoneUpdate),
        &update(c, "weld", V::Completed(true)),
    )
    .unwrap();
    exchange(&mut a, &mut b);
    let comp = b.component(c).unwrap();
    assert_eq!((comp.tag.as_str(), comp.kind.as_str()), ("NEW-TAG", "support"));
    assert_eq!(comp.attributes.len(), 2);
    assert_eq!(comp.completion_percent, 90.0);
    assert!(comp.milestones.iter().all(|m| m.conflicts.is_empty()));
}

#[test]
fn every_commit_records_who_where_when_and_which_operation() {
    let mut f = Fixture::new();
    let c = f.component(1, DISCRETE);
    let ctx = f
        .writer
        .ctx(K::MilestoneUpdate)
        .with_reason(Some("daily report".into()));
    f.drawing
        .update_milestone(&ctx, &update(c, "erect", V::Completed(true)))
        .unwrap();
    let changes = f.drawing.automerge().get_changes(&[]);
    for ch in &changes {
        assert!(ch.timestamp() >= T0, "commit time must be set");
        let meta = OpMeta::decode(ch.message().unwrap()).unwrap();
        assert_eq!((meta.user.as_str(), meta.device), ("ana", device(1)));
    }
    let last = OpMeta::decode(changes.last().unwrap().message().unwrap()).unwrap();
    assert_eq!(
        (last.op, last.kind, last.reason.as_deref()),
        (ctx.op, K::MilestoneUpdate, Some("daily report"))
    );
    assert_eq!(changes.last().unwrap().timestamp(), ctx.now.millis());
}

/// A second drawing document in the same project, for multi-document bulk.
fn second_drawing(f: &mut Fixture) -> (DrawingDoc, sitesync_model::ComponentId) {
    extra_drawing(f, 0)
}

/// Drawing `3 + n` (number `P-10{2 + n}`) with one spool component.
fn extra_drawing(f: &mut Fixture, n: u128) -> (DrawingDoc, sitesync_model::ComponentId) {
    let d2 = DrawingId::from_u128(3 + n);
    f.project
        .add_drawing(
            &f.writer.ctx(K::DrawingCreate),
            d2,
            &NewDrawing {
                number: format!("P-10{}", 2 + n),
                ..Default::default()
            },
        )
        .unwrap();
    let mut doc = DrawingDoc::create(PROJECT, d2, &f.writer.ctx(K::DrawingCreate), actor(1)).unwrap();
    let id = sitesync_model::ComponentId::from_u128(5000 + n);
    let t = f.template(DISCRETE);
    let new = sitesync_model::NewComponent {
        tag: format!("X-{}", 1 + n),
        kind: "spool".into(),
        template_id: Some(DISCRETE),
        ..Default::default()
    };
    doc.add_component(&f.writer.ctx(K::ComponentCreate), id, &new, &t)
        .unwrap();
    (doc, id)
}

/// Runs the documents' work in reverse, each on a thread of its own, and
/// hands the results back in order: a bulk must not be able to tell it
/// from running them in turn (the daemon spreads bulks over its cores).
struct Reversed;

impl Spread for Reversed {
    fn map<T: Send, R: Send>(&self, items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
        let f = &f;
        let mut out: Vec<R> = std::thread::scope(|s| {
            let running: Vec<_> = items
                .into_iter()
                .rev()
                .map(|item| s.spawn(move || f(item)))
                .collect();
            running.into_iter().map(|t| t.join().unwrap()).collect()
        });
        out.reverse();
        out
    }
}

/// A bulk with the default options, its documents in order.
fn bulk(
    docs: &mut [&mut DrawingDoc],
    updates: &[sitesync_model::MilestoneUpdate],
    ctx: &sitesync_model::WriteCtx,
) -> sitesync_model::error::Result<sitesync_model::BulkOutcome> {
    apply_bulk(docs, updates, &BulkOptions::default(), ctx, &InOrder)
}

/// The bulk options besides the default.
const VALIDATE_ONLY: BulkOptions = BulkOptions {
    validate_only: true,
    atomic: false,
};
const ATOMIC: BulkOptions = BulkOptions {
    validate_only: false,
    atomic: true,
};
const BOTH: BulkOptions = BulkOptions {
    validate_only: true,
    atomic: true,
};

#[test]
fn bulk_validate_only_and_atomic_write_nothing() {
    let mut f = Fixture::new();
    let c = f.component(1, DISCRETE);
    let q = f.component(2, QUANTITY);
    let updates = vec![
        update(c, "erect", V::Completed(true)),
        update(q, "install", V::QuantityDelta(3.0)),
        update(q, "install", V::QuantityDelta(-2.0)), // sees the +3 before it
        update(c, "erect", V::Percent(5.0)),          // wrong workflow
    ];
    let heads = f.drawing.automerge().get_heads();
    for options in [VALIDATE_ONLY, ATOMIC, BOTH] {
        let ctx = f.writer.ctx(K::BulkUpdate);
        let out = apply_bulk(&mut [&mut f.drawing], &updates, &options, &ctx, &InOrder).unwrap();
        assert_eq!(
            (out.applied, out.failed, out.operation_id),
            (0, 1, None),
            "{options:?}"
        );
        assert_eq!(out.validate_only, options.validate_only);
        assert_eq!(out.refused_atomic(&options), options.atomic);
        assert_eq!(out.results[2].after.as_ref().unwrap().quantity, Some(1.0));
        let err = out.results[3].error.as_ref().unwrap();
        assert_eq!(
            (err.code.as_str(), err.field.as_deref()),
            ("wrong_workflow", Some("updates[3].percent"))
        );
        assert_eq!(f.drawing.automerge().get_heads(), heads, "{options:?} wrote");
    }
}

#[test]
fn bulk_applies_valid_updates_one_commit_per_document_same_operation() {
    let mut f = Fixture::new();
    let c = f.component(1, DISCRETE);
    let (mut other, x) = second_drawing(&mut f);
    let mut updates = vec![
        update(c, "erect", V::Completed(true)),
        update(x, "weld", V::Completed(true)),
    ];
    updates.push(update(
        sitesync_model::ComponentId::from_u128(404),
        "weld",
        V::Completed(true),
    ));
    let n0 = (
        f.drawing.automerge().get_changes(&[]).len(),
        other.automerge().get_changes(&[]).len(),
    );
    let ctx = f
        .writer
        .ctx(K::BulkUpdate)
        .with_reason(Some("daily report".into()));
    let out = bulk(&mut [&mut f.drawing, &mut other], &updates, &ctx).unwrap();
    assert_eq!((out.applied, out.failed, out.operation_id), (2, 1, Some(ctx.op)));
    assert_eq!(out.results[2].error.as_ref().unwrap().code, "component_not_found");
    let n1 = (
        f.drawing.automerge().get_changes(&[]).len(),
        other.automerge().get_changes(&[]).len(),
    );
    assert_eq!((n1.0 - n0.0, n1.1 - n0.1), (1, 1), "one commit per document");
    for doc in [&f.drawing, &other] {
        let last = doc.automerge().get_changes(&[]).last().cloned().unwrap();
        let meta = OpMeta::decode(last.message().unwrap()).unwrap();
        assert_eq!((meta.op, meta.count), (ctx.op, 1));
    }
    assert_eq!(completed(&f, c, "erect"), Some(true));
    let ops = operations([f.drawing.automerge(), other.automerge()]);
    let op = ops.iter().find(|o| o.id == ctx.op).unwrap();
    assert_eq!(
        (op.kind, op.count, op.reason.as_deref()),
        (K::BulkUpdate, 2, Some("daily report"))
    );
}

#[test]
fn a_bulk_spread_over_threads_is_the_bulk_run_in_order() {
    let mut f = Fixture::new();
    let c = f.component(1, DISCRETE);
    let p = f.component(2, PERCENT);
    let q = f.component(3, QUANTITY);
    let others: Vec<(DrawingDoc, sitesync_model::ComponentId)> =
        (0..3).map(|n| extra_drawing(&mut f, n)).collect();
    let (x0, x1, x2) = (others[0].1, others[1].1, others[2].1);
    let updates = vec![
        update(q, "install", V::QuantityDelta(2.0)),
        update(x2, "weld", V::Completed(true)),
        update(c, "erect", V::Completed(true)),
        update(
            sitesync_model::ComponentId::from_u128(404),
            "weld",
            V::Completed(true),
        ),
        update(x0, "weld", V::Completed(true)),
        // Adds to the first entry: later updates of a document see earlier ones.
        update(q, "install", V::QuantityDelta(3.0)),
        update(p, "prime", V::Completed(true)),
        update(x1, "nope", V::Completed(true)),
        update(x0, "weld", V::Completed(false)),
    ];
    let all = |f: &Fixture| -> Vec<DrawingDoc> {
        std::iter::once(f.drawing.clone())
            .chain(others.iter().map(|(d, _)| d.clone()))
            .collect()
    };
    for options in [BulkOptions::default(), VALIDATE_ONLY, ATOMIC] {
        let ctx = f.writer.ctx(K::BulkUpdate);
        let (mut in_order, mut spread) = (all(&f), all(&f));
        let a = apply_bulk(
            &mut in_order.iter_mut().collect::<Vec<_>>(),
            &updates,
            &options,
            &ctx,
            &InOrder,
        )
        .unwrap();
        let b = apply_bulk(
            &mut spread.iter_mut().collect::<Vec<_>>(),
            &updates,
            &options,
            &ctx,
            &Reversed,
        )
        .unwrap();
        assert_eq!(a, b, "{options:?}");
        let written = !(options.validate_only || options.atomic);
        assert_eq!(
            (b.applied, b.failed),
            (if written { 6 } else { 0 }, 3),
            "{options:?}"
        );
        assert_eq!(
            b.results.iter().map(|r| r.index).collect::<Vec<_>>(),
            (0..9).collect::<Vec<_>>()
        );
        let codes: Vec<&str> = [3, 6, 7]
            .iter()
            .map(|&i| b.results[i].error.as_ref().unwrap().code.as_str())
            .collect();
        assert_eq!(
            codes,
            ["component_not_found", "wrong_workflow", "unknown_milestone"]
        );
        assert_eq!(b.results[5].after.as_ref().unwrap().quantity, Some(5.0));
        for (x, y) in in_order.iter().zip(&spread) {
            // The same changes, byte for byte: the same hashes.
            assert_eq!(
                x.automerge().get_heads(),
                y.automerge().get_heads(),
                "{options:?}"
            );
        }
        let unchanged = all(&f);
        let changed = in_order
            .iter()
            .zip(&unchanged)
            .filter(|(x, y)| x.automerge().get_heads() != y.automerge().get_heads())
            .count();
        // x1 holds only the refused update.
        assert_eq!(
            changed,
            if written { 3 } else { 0 },
            "{options:?}: one commit per document written"
        );
    }
}

#[test]
fn bulk_of_ten_thousand_is_one_commit_and_more_is_refused() {
    let mut f = Fixture::new();
    let q = f.component(1, QUANTITY);
    let updates = vec![update(q, "install", V::QuantityDelta(0.001)); sitesync_model::MAX_BULK_UPDATES];
    let before = f.drawing.automerge().get_changes(&[]).len();
    let ctx = f.writer.ctx(K::BulkUpdate);
    let out = bulk(&mut [&mut f.drawing], &updates, &ctx).unwrap();
    assert_eq!(out.applied, 10_000);
    assert_eq!(f.drawing.automerge().get_changes(&[]).len(), before + 1);
    assert_eq!(f.drawing.component(q).unwrap().milestones[0].quantity, Some(10.0));
    let too_many = vec![update(q, "install", V::QuantityDelta(1.0)); 10_001];
    let err = bulk(&mut [&mut f.drawing], &too_many, &f.writer.ctx(K::BulkUpdate)).unwrap_err();
    assert_eq!(
        (err.code(), err.kind()),
        ("too_many", sitesync_model::ErrorKind::TooLarge)
    );
}

#[test]
fn undo_restores_only_what_still_holds_the_operations_write() {
    let mut f = Fixture::new();
    let c = f.component(1, DISCRETE);
    let q = f.component(2, QUANTITY);
    let ctx = f.writer.ctx(K::MilestoneUpdate);
    f.drawing
        .update_milestone(&ctx, &update(c, "receive", V::Completed(true)))
        .unwrap();
    let bulk_ctx = f.writer.ctx(K::BulkUpdate);
    let updates = vec![
        update(c, "erect", V::Completed(true)),
        update(c, "erect", V::Completed(true)), // twice: undo restores what was before the op
        update(c, "weld", V::Completed(true)),
        update(c, "receive", V::Completed(false)),
        update(q, "install", V::QuantityDelta(7.0)),
    ];
    bulk(&mut [&mut f.drawing], &updates, &bulk_ctx).unwrap();
    // Somebody writes weld afterwards, back to the same value.
    let ctx = f.writer.ctx(K::MilestoneUpdate);
    f.drawing
        .update_milestone(&ctx, &update(c, "weld", V::Completed(true)))
        .unwrap();
    let ctx = f.writer.ctx(K::MilestoneUpdate);
    f.drawing
        .update_milestone(&ctx, &update(q, "install", V::QuantityDelta(2.0)))
        .unwrap();

    let undo = f.writer.ctx(K::Undo);
    let report = f.drawing.undo(&undo, bulk_ctx.op).unwrap();
    assert_eq!(report.reverted, 3, "erect, receive, the quantity entry");
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].milestone.as_deref(), Some("weld"));
    assert_eq!(report.skipped[0].component_id, Some(c));
    let comp = f.drawing.component(c).unwrap();
    let values: Vec<_> = comp.milestones.iter().map(|m| m.completed.unwrap()).collect();
    assert_eq!(values, vec![true, false, true]);
    assert_eq!(f.drawing.component(q).unwrap().milestones[0].quantity, Some(2.0));

    // Undo again: registers now changed since; the entry is not subtracted twice.
    let again = f.drawing.undo(&f.writer.ctx(K::Undo), bulk_ctx.op).unwrap();
    assert_eq!(f.drawing.component(q).unwrap().milestones[0].quantity, Some(2.0));
    assert_eq!(again.skipped.len(), 3);
    // An undo cannot be undone; an unknown operation is reported.
    let err = f.drawing.undo(&f.writer.ctx(K::Undo), undo.op).unwrap_err();
    assert_eq!(err.code(), "undo_of_undo");
    let err = f
        .drawing
        .undo(&f.writer.ctx(K::Undo), sitesync_model::OperationId::from_u128(1))
        .unwrap_err();
    assert_eq!(err.code(), "operation_not_found");
    let ops = operations([f.drawing.automerge()]);
    assert_eq!(
        ops.iter().find(|o| o.id == bulk_ctx.op).unwrap().undone_by,
        Some(undo.op)
    );
}

#[test]
fn undo_of_creation_deletes_and_concurrent_undos_subtract_once() {
    let mut f = Fixture::new();
    let q = f.component(1, QUANTITY);
    let ctx = f.writer.ctx(K::MilestoneUpdate);
    f.drawing
        .update_milestone(&ctx, &update(q, "install", V::QuantityDelta(9.0)))
        .unwrap();
    let mut a = replica(&f.drawing, 2);
    let mut b = replica(&f.drawing, 3);
    a.undo(&Writer::new("ana", 2).ctx(K::Undo), ctx.op).unwrap();
    b.undo(&Writer::new("ben", 3).ctx(K::Undo), ctx.op).unwrap();
    exchange(&mut a, &mut b);
    assert_eq!(a.component(q).unwrap().milestones[0].quantity, Some(0.0));
    assert_eq!(a.components().unwrap(), b.components().unwrap());

    // Undo of a component's creation soft-deletes it.
    let created_by = f.writer.ctx(K::ComponentCreate);
    let t = f.template(DISCRETE);
    let id = sitesync_model::ComponentId::from_u128(77);
    let new = sitesync_model::NewComponent {
        tag: "T".into(),
        kind: "spool".into(),
        template_id: Some(DISCRETE),
        ..Default::default()
    };
    f.drawing.add_component(&created_by, id, &new, &t).unwrap();
    let report = f.drawing.undo(&f.writer.ctx(K::Undo), created_by.op).unwrap();
    assert_eq!(report.reverted, 1);
    assert!(f.drawing.component(id).unwrap().deleted);

    // Project documents: undo of a drawing's creation and of a rename.
    let rename = f.writer.ctx(K::ProjectUpdate);
    f.project
        .update(
            &rename,
            &sitesync_model::ProjectPatch {
                name: Some("South Rack".into()),
                code: None,
            },
        )
        .unwrap();
    f.project.undo(&f.writer.ctx(K::Undo), rename.op).unwrap();
    assert_eq!(f.project.info().unwrap().name, "North Rack");
    let made = f.writer.ctx(K::DrawingCreate);
    let d = DrawingId::from_u128(44);
    f.project
        .add_drawing(
            &made,
            d,
            &NewDrawing {
                number: "P-9".into(),
                ..Default::default()
            },
        )
        .unwrap();
    f.project.undo(&f.writer.ctx(K::Undo), made.op).unwrap();
    assert!(f.project.drawing(d).unwrap().deleted);
}

#[test]
fn history_lists_every_write_with_old_and_new_including_other_replicas() {
    let mut f = Fixture::new();
    let c = f.component(1, DISCRETE);
    let q = f.component(2, QUANTITY);
    let ctx = f
        .writer
        .ctx(K::MilestoneUpdate)
        .with_reason(Some("walkdown".into()));
    f.drawing
        .update_milestone(&ctx, &update(c, "erect", V::Completed(true)))
        .unwrap();
    let mut b = replica(&f.drawing, 3);
    let mut wb = Writer::new("ben", 3);
    wb.now = f.writer.now + 5_000;
    let patch = ComponentPatch {
        tag: Some("C-1B".into()),
        ..Default::default()
    };
    b.update_component(&wb.ctx(K::ComponentUpdate), c, &patch)
        .unwrap();
    b.update_milestone(
        &wb.ctx(K::MilestoneUpdate),
        &update(q, "install", V::Quantity(12.5)),
    )
    .unwrap();
    exchange(&mut f.drawing, &mut b);

    let h = component_history(f.drawing.automerge(), c).unwrap();
    let rows: Vec<_> = h
        .iter()
        .map(|r| {
            (
                r.user.as_str(),
                r.milestone.as_deref(),
                r.field.as_str(),
                r.old.clone(),
                r.new.clone(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (
                "ben",
                None,
                "tag",
                serde_json::json!("C-0001"),
                serde_json::json!("C-1B")
            ),
            (
                "ana",
                Some("erect"),
                "completed",
                serde_json::json!(false),
                serde_json::json!(true)
            ),
            (
                "ana",
                None,
                "created",
                serde_json::Value::Null,
                serde_json::json!(true)
            ),
        ]
    );
    assert_eq!(h[1].reason.as_deref(), Some("walkdown"));
    assert_eq!(h[1].operation_id, ctx.op);
    assert_eq!(h[0].device_id, device(3));
    let hq = component_history(f.drawing.automerge(), q).unwrap();
    assert_eq!(
        (hq[0].old.clone(), hq[0].new.clone()),
        (serde_json::json!(0.0), serde_json::json!(12.5))
    );
    assert_eq!(component_history(b.automerge(), c).unwrap(), h);
}

/// A write that loses to a concurrent one changes no winning value, but the
/// view lists it among the conflicts: a sync that brings only that write
/// still names its component as changed, or the daemon's index keeps a
/// view without the conflict (replicas then disagree on what they show).
#[test]
fn a_losing_write_arriving_by_sync_names_its_component_as_changed() {
    let mut f = Fixture::new();
    let c = f.component(1, DISCRETE);
    let mut a = replica(&f.drawing, 2);
    let mut b = replica(&f.drawing, 3);
    let (mut wa, mut wb) = (Writer::new("ana", 2), Writer::new("ben", 3));
    wa.now += 60_000; // ana's write wins: it is a minute later
    a.update_milestone(
        &wa.ctx(K::MilestoneUpdate),
        &update(c, "erect", V::Completed(true)),
    )
    .unwrap();
    b.update_milestone(
        &wb.ctx(K::MilestoneUpdate),
        &update(c, "erect", V::Completed(false)),
    )
    .unwrap();
    let before = a.automerge().get_heads();
    let shown = a.component(c).unwrap();
    a.automerge_mut().merge(&mut b.automerge_mut().clone()).unwrap();
    assert_ne!(a.component(c).unwrap(), shown, "the view gained a conflict");
    assert_eq!(a.changed_components(&before), vec![c]);
}

/// Three concurrent writes of one milestone, merged in every order: each
/// merge that changes the view (its winner, picked by time, or its
/// conflicts) names the component, even when Automerge's own winner (by op
/// id) stays put and its diff reports nothing.
#[test]
fn every_merge_that_changes_a_view_names_its_component() {
    let mut f = Fixture::new();
    let c = f.component(1, DISCRETE);
    let mut docs: Vec<_> = (2..5).map(|n| replica(&f.drawing, n)).collect();
    for (i, (doc, name)) in docs.iter_mut().zip(["ana", "ben", "cy"]).enumerate() {
        let mut w = Writer::new(name, i as u128 + 2);
        w.now += 1_000 * i as i64; // cy's write is the latest: it wins
        doc.update_milestone(
            &w.ctx(K::MilestoneUpdate),
            &update(c, "erect", V::Completed(i % 2 == 0)),
        )
        .unwrap();
    }
    for order in [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]] {
        let mut into = docs[order[0]].clone();
        for &from in &order[1..] {
            let before = into.automerge().get_heads();
            let shown = into.component(c).unwrap();
            into.automerge_mut()
                .merge(&mut docs[from].automerge_mut().clone())
                .unwrap();
            assert_ne!(
                into.component(c).unwrap(),
                shown,
                "order {order:?}: a conflict is added"
            );
            assert_eq!(into.changed_components(&before), vec![c], "order {order:?}");
        }
    }
}

#[test]
fn components_of_reads_the_asked_components_in_order() {
    let mut f = Fixture::new();
    let a = f.component(1, DISCRETE);
    let b = f.component(2, PERCENT);
    let c = f.component(3, QUANTITY);
    let ctx = f.writer.ctx(K::MilestoneUpdate);
    f.drawing
        .update_milestone(&ctx, &update(b, "prime", V::Percent(50.0)))
        .unwrap();
    let got = f.drawing.components_of(&[c, a, b]).unwrap();
    let one_by_one: Vec<_> = [c, a, b]
        .iter()
        .map(|id| f.drawing.component(*id).unwrap())
        .collect();
    assert_eq!(got, one_by_one);
    assert_eq!(got[2].completion_percent, 25.0);

    let missing = sitesync_model::ComponentId(uuid::Uuid::from_u128(99));
    assert!(matches!(
        f.drawing.components_of(&[a, missing]),
        Err(sitesync_model::ModelError::ComponentNotFound { id }) if id == missing
    ));
}

/// The operations index stores a long history a step at a time: the steps
/// must hold every record once, in order, and each step's heads must be
/// where the rest starts — also across concurrent branches merged in.
#[test]
fn operation_record_steps_cut_the_history_where_the_rest_starts() {
    use sitesync_model::history::{operation_record_steps, operation_records_since};
    let mut f = Fixture::new();
    let c = f.component(1, DISCRETE);
    let q = f.component(2, QUANTITY);
    let start = f.drawing.automerge().get_heads();
    let mut b = replica(&f.drawing, 3);
    let mut wb = Writer::new("ben", 3);
    for n in 0..6 {
        let ctx = f.writer.ctx(K::MilestoneUpdate);
        f.drawing
            .update_milestone(&ctx, &update(c, "erect", V::Completed(n % 2 == 0)))
            .unwrap();
        b.update_milestone(
            &wb.ctx(K::MilestoneUpdate),
            &update(q, "install", V::Quantity(1.0)),
        )
        .unwrap();
        if n == 2 {
            exchange(&mut f.drawing, &mut b);
        }
    }
    exchange(&mut f.drawing, &mut b);
    let doc = f.drawing.automerge();
    let mut heads_now = doc.get_heads();
    heads_now.sort();
    for from in [Vec::new(), start] {
        let all = operation_records_since(doc, &from);
        assert!(all.len() >= 12, "every write is a record");
        for step in [1, 2, 3, 5, 100] {
            let steps = operation_record_steps(doc, &from, step);
            let joined: Vec<_> = steps.iter().flat_map(|s| s.records.clone()).collect();
            assert_eq!(joined, all, "step {step}: every record once, in order");
            assert_eq!(
                steps.last().unwrap().heads,
                heads_now,
                "step {step}: ends at the heads"
            );
            for (k, s) in steps.iter().enumerate() {
                let rest: Vec<_> = steps[k + 1..].iter().flat_map(|s| s.records.clone()).collect();
                assert_eq!(
                    operation_records_since(doc, &s.heads),
                    rest,
                    "step {step}: the records after step {k} start at its heads"
                );
            }
        }
    }
    assert!(
        operation_record_steps(doc, &heads_now, 4).is_empty(),
        "nothing new, no step"
    );
}
