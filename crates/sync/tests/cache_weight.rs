//! The cache's estimate of a decoded document's heap
//! ([`sitesync_sync::cache::weight`]) against the heap a counting
//! allocator measures, on sitesync's own documents: fresh, with years of
//! history, and written by many devices. One test in this binary, so no
//! other thread allocates while it measures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use sitesync_model::automerge::{ActorId, Automerge};
use sitesync_model::{
    ComponentId, DeviceId, DrawingDoc, DrawingId, MilestoneDef, MilestoneUpdate, MilestoneValue,
    NewComponent, OperationId, OperationKind, ProjectId, Template, TemplateId, Timestamp, WorkflowType,
    WriteCtx,
};
use sitesync_sync::cache::weight;
use uuid::Uuid;

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// (measured heap, estimated weight) of `saved` once loaded.
fn measure(saved: &[u8]) -> (usize, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    let doc = Automerge::load(saved).unwrap();
    let heap = (LIVE.load(Ordering::Relaxed) - before) as usize;
    (heap, weight(&doc))
}

fn ctx(device: u128, n: i64) -> WriteCtx {
    WriteCtx::new(
        "ana",
        DeviceId::from_u128(device),
        OperationId(Uuid::from_u128(n as u128 + 1)),
        OperationKind::MilestoneUpdate,
        Timestamp(1_800_000_000_000 + n),
    )
}

const KEYS: [&str; 4] = ["fit", "weld", "test", "paint"];

fn template() -> Template {
    Template {
        id: TemplateId(Uuid::from_u128(7)),
        name: "Spool".into(),
        workflow_type: WorkflowType::Discrete,
        milestones: KEYS
            .iter()
            .map(|k| MilestoneDef {
                key: k.to_string(),
                name: k.to_string(),
                weight: 0.25,
            })
            .collect(),
    }
}

fn toggle(d: &mut DrawingDoc, device: u128, n: i64, ids: &[ComponentId]) {
    let update = MilestoneUpdate {
        component_id: ids[n as usize % ids.len()],
        milestone: KEYS[n as usize % KEYS.len()].into(),
        value: MilestoneValue::Completed(n % 2 == 0),
        effective_date: None,
    };
    d.update_milestone(&ctx(device, n), &update).unwrap();
}

#[test]
fn the_estimate_is_within_half_and_twice_the_measured_heap() {
    let t = template();
    let mut d = DrawingDoc::create(
        ProjectId::from_u128(1),
        DrawingId(Uuid::from_u128(2)),
        &ctx(1, 0),
        ActorId::random(),
    )
    .unwrap();
    let ids: Vec<ComponentId> = (0..50).map(|i| ComponentId(Uuid::from_u128(100 + i))).collect();
    for (i, id) in ids.iter().enumerate() {
        let new = NewComponent {
            tag: format!("SP-{i:04}"),
            kind: "spool".into(),
            template_id: Some(t.id),
            quantity_total: None,
            unit: None,
            budget_hours: Some(4.0),
            attributes: [("area".to_string(), "A1".to_string())].into(),
        };
        d.add_component(&ctx(1, i as i64), *id, &new, &t).unwrap();
    }
    let mut shapes = vec![("a fresh drawing of 50 components", d.automerge().save())];
    for n in 0..5_000 {
        toggle(&mut d, 1, n, &ids);
        if n == 999 {
            shapes.push(("the drawing after 1,000 writes", d.automerge().save()));
        }
    }
    shapes.push(("the drawing after 5,000 writes", d.automerge().save()));
    // 300 devices, each writing a little, merged.
    let mut many = d.automerge().fork();
    for device in 0..300u128 {
        let mut theirs = DrawingDoc::from_automerge(many.fork().with_actor(ActorId::random())).unwrap();
        for n in 0..3 {
            toggle(&mut theirs, 10 + device, device as i64 * 3 + n, &ids);
        }
        many.merge(&mut theirs.automerge().clone()).unwrap();
    }
    shapes.push(("the drawing written by 300 more devices", many.save()));

    for (what, saved) in shapes {
        let (heap, estimate) = measure(&saved);
        let ratio = estimate as f64 / heap as f64;
        println!("{what}: heap {heap} B, estimate {estimate} B ({ratio:.2}×)");
        assert!(
            (0.5..=2.0).contains(&ratio),
            "{what}: estimated {estimate} bytes, measured {heap} ({ratio:.2}×)"
        );
    }
}
