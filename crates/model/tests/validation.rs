//! Every validation rule, as a table: the mutation, the error code and field
//! it must produce, and the check that the document did not change.

mod common;

use common::*;
use sitesync_model::{
    ComponentId, ComponentPatch, ErrorKind, MilestoneUpdate, MilestoneValue as V, NewComponent, NewDrawing,
    OperationKind as K, ProjectPatch,
};

struct Case {
    name: &'static str,
    update: MilestoneUpdate,
    code: &'static str,
    field: Option<&'static str>,
    kind: ErrorKind,
}

#[test]
fn invalid_milestone_updates_are_refused_and_change_nothing() {
    let mut f = Fixture::new();
    let disc = f.component(1, DISCRETE);
    let pct = f.component(2, PERCENT);
    let qty = f.component(3, QUANTITY);
    let gone = f.component(4, DISCRETE);
    let ctx = f.writer.ctx(K::ComponentDelete);
    f.drawing.set_component_deleted(&ctx, gone, true).unwrap();
    let ctx = f.writer.ctx(K::MilestoneUpdate);
    f.drawing
        .update_milestone(&ctx, &update(qty, "install", V::Quantity(5.0)))
        .unwrap();

    let with_date = |c, k: &str, v, d: &str| MilestoneUpdate {
        effective_date: Some(d.into()),
        ..update(c, k, v)
    };
    let cases = [
        Case {
            name: "unknown key",
            update: update(disc, "paint", V::Completed(true)),
            code: "unknown_milestone",
            field: Some("milestone"),
            kind: ErrorKind::NotFound,
        },
        Case {
            name: "percent on discrete",
            update: update(disc, "erect", V::Percent(50.0)),
            code: "wrong_workflow",
            field: Some("percent"),
            kind: ErrorKind::Conflict,
        },
        Case {
            name: "completed on percentage",
            update: update(pct, "prime", V::Completed(true)),
            code: "wrong_workflow",
            field: Some("completed"),
            kind: ErrorKind::Conflict,
        },
        Case {
            name: "quantity on discrete",
            update: update(disc, "erect", V::Quantity(1.0)),
            code: "wrong_workflow",
            field: Some("quantity"),
            kind: ErrorKind::Conflict,
        },
        Case {
            name: "completed on quantity",
            update: update(qty, "install", V::Completed(true)),
            code: "wrong_workflow",
            field: Some("completed"),
            kind: ErrorKind::Conflict,
        },
        Case {
            name: "percent above 100",
            update: update(pct, "prime", V::Percent(100.5)),
            code: "out_of_range",
            field: Some("percent"),
            kind: ErrorKind::Invalid,
        },
        Case {
            name: "percent below 0",
            update: update(pct, "prime", V::Percent(-1.0)),
            code: "out_of_range",
            field: Some("percent"),
            kind: ErrorKind::Invalid,
        },
        Case {
            name: "percent NaN",
            update: update(pct, "prime", V::Percent(f64::NAN)),
            code: "out_of_range",
            field: Some("percent"),
            kind: ErrorKind::Invalid,
        },
        Case {
            name: "negative absolute quantity",
            update: update(qty, "install", V::Quantity(-2.0)),
            code: "negative_quantity",
            field: Some("quantity"),
            kind: ErrorKind::Invalid,
        },
        Case {
            name: "delta below zero",
            update: update(qty, "install", V::QuantityDelta(-5.5)),
            code: "negative_quantity",
            field: Some("quantity_delta"),
            kind: ErrorKind::Invalid,
        },
        Case {
            name: "infinite quantity",
            update: update(qty, "install", V::Quantity(f64::INFINITY)),
            code: "out_of_range",
            field: Some("quantity"),
            kind: ErrorKind::Invalid,
        },
        Case {
            name: "deleted component",
            update: update(gone, "erect", V::Completed(true)),
            code: "component_deleted",
            field: None,
            kind: ErrorKind::Conflict,
        },
        Case {
            name: "unknown component",
            update: update(ComponentId::from_u128(9), "erect", V::Completed(true)),
            code: "component_not_found",
            field: None,
            kind: ErrorKind::NotFound,
        },
        Case {
            name: "bad effective date",
            update: with_date(disc, "erect", V::Completed(true), "2026-02-30"),
            code: "invalid",
            field: Some("effective_date"),
            kind: ErrorKind::Invalid,
        },
        Case {
            name: "future effective date",
            update: with_date(disc, "erect", V::Completed(true), "2099-01-01"),
            code: "invalid",
            field: Some("effective_date"),
            kind: ErrorKind::Invalid,
        },
    ];
    for case in cases {
        let heads = f.drawing.automerge().get_heads();
        let before = f.drawing.components().unwrap();
        let ctx = f.writer.ctx(K::MilestoneUpdate);
        let err = f
            .drawing
            .update_milestone(&ctx, &case.update)
            .expect_err(case.name);
        assert_eq!(
            (err.code(), err.field(), err.kind()),
            (case.code, case.field, case.kind),
            "{}: {err}",
            case.name
        );
        assert_eq!(
            f.drawing.automerge().get_heads(),
            heads,
            "{}: document changed",
            case.name
        );
        assert_eq!(f.drawing.components().unwrap(), before, "{}", case.name);
    }
}

#[test]
fn invalid_components_are_refused_and_change_nothing() {
    let mut f = Fixture::new();
    let qty_t = f.template(QUANTITY);
    let disc_t = f.template(DISCRETE);
    let existing = f.component(1, DISCRETE);
    let good = NewComponent {
        tag: "PIPE-1".into(),
        kind: "pipe".into(),
        template_id: Some(QUANTITY),
        quantity_total: Some(12.5),
        unit: Some("m".into()),
        ..Default::default()
    };
    let cases: Vec<(&str, NewComponent, &sitesync_model::Template, &str, &str)> = vec![
        (
            "missing total",
            NewComponent {
                quantity_total: None,
                ..good.clone()
            },
            &qty_t,
            "missing_quantity_total",
            "quantity_total",
        ),
        (
            "zero total",
            NewComponent {
                quantity_total: Some(0.0),
                ..good.clone()
            },
            &qty_t,
            "out_of_range",
            "quantity_total",
        ),
        (
            "negative total",
            NewComponent {
                quantity_total: Some(-4.0),
                ..good.clone()
            },
            &qty_t,
            "out_of_range",
            "quantity_total",
        ),
        (
            "blank tag",
            NewComponent {
                tag: " ".into(),
                ..good.clone()
            },
            &qty_t,
            "invalid",
            "tag",
        ),
        (
            "blank kind",
            NewComponent {
                kind: "".into(),
                ..good.clone()
            },
            &qty_t,
            "invalid",
            "kind",
        ),
        (
            "negative hours",
            NewComponent {
                budget_hours: Some(-1.0),
                ..good.clone()
            },
            &qty_t,
            "out_of_range",
            "budget_hours",
        ),
        (
            "template mismatch",
            NewComponent {
                template_id: Some(DISCRETE),
                ..good.clone()
            },
            &qty_t,
            "invalid",
            "template_id",
        ),
        (
            "blank attribute name",
            NewComponent {
                attributes: [(" ".to_string(), "x".to_string())].into(),
                ..good.clone()
            },
            &qty_t,
            "invalid",
            "attributes",
        ),
        (
            "long attribute",
            NewComponent {
                attributes: [("note".to_string(), "x".repeat(1001))].into(),
                ..good.clone()
            },
            &qty_t,
            "invalid",
            "attributes.note",
        ),
    ];
    for (name, new, t, code, field) in cases {
        let heads = f.drawing.automerge().get_heads();
        let ctx = f.writer.ctx(K::ComponentCreate);
        let err = f
            .drawing
            .add_component(&ctx, ComponentId::from_u128(77), &new, t)
            .expect_err(name);
        assert_eq!((err.code(), err.field()), (code, Some(field)), "{name}: {err}");
        assert_eq!(
            f.drawing.automerge().get_heads(),
            heads,
            "{name}: document changed"
        );
    }
    // The same id twice.
    let ctx = f.writer.ctx(K::ComponentCreate);
    let dup = NewComponent {
        template_id: Some(DISCRETE),
        quantity_total: None,
        ..good.clone()
    };
    let err = f
        .drawing
        .add_component(&ctx, existing, &dup, &disc_t)
        .unwrap_err();
    assert_eq!(err.field(), Some("id"));

    // Patches: clearing a quantity template's total, editing a deleted component.
    let pipe = ComponentId::from_u128(78);
    let ctx = f.writer.ctx(K::ComponentCreate);
    f.drawing.add_component(&ctx, pipe, &good, &qty_t).unwrap();
    let ctx = f.writer.ctx(K::ComponentUpdate);
    let err = f
        .drawing
        .update_component(
            &ctx,
            pipe,
            &ComponentPatch {
                quantity_total: Some(None),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(err.code(), "missing_quantity_total");
    let ctx = f.writer.ctx(K::ComponentDelete);
    f.drawing.set_component_deleted(&ctx, pipe, true).unwrap();
    let heads = f.drawing.automerge().get_heads();
    let ctx = f.writer.ctx(K::ComponentUpdate);
    let err = f
        .drawing
        .update_component(
            &ctx,
            pipe,
            &ComponentPatch {
                tag: Some("NEW".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(
        (err.code(), err.kind()),
        ("component_deleted", ErrorKind::Conflict)
    );
    assert_eq!(f.drawing.automerge().get_heads(), heads);
}

#[test]
fn invalid_project_and_drawing_changes_are_refused() {
    let mut f = Fixture::new();
    let heads = f.project.automerge().get_heads();
    let ctx = f.writer.ctx(K::ProjectUpdate);
    let err = f
        .project
        .update(
            &ctx,
            &ProjectPatch {
                name: Some("".into()),
                code: None,
            },
        )
        .unwrap_err();
    assert_eq!(err.field(), Some("name"));

    let d2 = sitesync_model::DrawingId::from_u128(3);
    let ctx = f.writer.ctx(K::DrawingCreate);
    let err = f
        .project
        .add_drawing(
            &ctx,
            d2,
            &NewDrawing {
                number: "".into(),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(err.field(), Some("number"));
    let ctx = f.writer.ctx(K::DrawingCreate);
    let unknown_parent = NewDrawing {
        number: "P-2".into(),
        parent_id: Some(sitesync_model::DrawingId::from_u128(99)),
        ..Default::default()
    };
    let err = f.project.add_drawing(&ctx, d2, &unknown_parent).unwrap_err();
    assert_eq!(err.field(), Some("parent_id"));
    assert_eq!(f.project.automerge().get_heads(), heads);

    // A cycle: P-101 → P-2 → P-101.
    let ctx = f.writer.ctx(K::DrawingCreate);
    f.project
        .add_drawing(
            &ctx,
            d2,
            &NewDrawing {
                number: "P-2".into(),
                parent_id: Some(DRAWING),
                ..Default::default()
            },
        )
        .unwrap();
    let heads = f.project.automerge().get_heads();
    let ctx = f.writer.ctx(K::DrawingUpdate);
    let patch = sitesync_model::DrawingPatch {
        parent_id: Some(Some(d2)),
        ..Default::default()
    };
    let err = f.project.update_drawing(&ctx, DRAWING, &patch).unwrap_err();
    assert_eq!((err.code(), err.field()), ("invalid", Some("parent_id")));
    assert_eq!(f.project.automerge().get_heads(), heads);
}

#[test]
fn loading_refuses_what_is_not_a_sitesync_document() {
    let err = sitesync_model::DrawingDoc::load(b"not automerge", actor(9)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    let f = Fixture::new();
    let bytes = f.project.automerge().save();
    let err = sitesync_model::DrawingDoc::load(&bytes, actor(9)).unwrap_err();
    assert_eq!((err.code(), err.kind()), ("corrupt", ErrorKind::Corrupt), "{err}");
}
