//! The `--demo` project: a small but realistic pipe rack — several drawings,
//! ~150 components, templates with real rules of credit, and some progress —
//! so a newcomer sees something meaningful at once. Seeded once per store.

use sitesync_model::{
    BulkOptions, MilestoneDef, MilestoneUpdate, MilestoneValue, NewComponent, NewDrawing, NewProject,
    NewTemplate, WorkflowType,
};

use crate::service::Result;
use crate::service::Service;

const SEEDED: &str = sitesync_sync::keys::DEMO_SEEDED;
const USER: &str = "demo";

fn template(name: &str, workflow_type: WorkflowType, milestones: &[(&str, &str, f64)]) -> NewTemplate {
    NewTemplate {
        name: name.into(),
        workflow_type,
        milestones: milestones
            .iter()
            .map(|(key, name, weight)| MilestoneDef {
                key: (*key).into(),
                name: (*name).into(),
                weight: *weight,
            })
            .collect(),
    }
}

/// Seeds the demo project unless this store already has it. Returns whether
/// it seeded.
pub fn seed_demo(svc: &Service) -> Result<bool> {
    let store = svc.repo().store();
    if store
        .get_meta(SEEDED)
        .map_err(sitesync_sync::RepoError::from)?
        .is_some()
    {
        return Ok(false);
    }
    let project = svc.create_project(
        USER,
        NewProject {
            name: "Demo: North Pipe Rack".into(),
            code: Some("DEMO-NPR".into()),
        },
    )?;
    let pid = project.id;
    let spool = svc.add_template(
        USER,
        pid,
        template(
            "Spool",
            WorkflowType::Discrete,
            &[
                ("receive", "Receive", 5.0),
                ("erect", "Erect", 30.0),
                ("connect", "Connect", 30.0),
                ("support", "Support", 15.0),
                ("punch", "Punch", 5.0),
                ("test", "Test", 10.0),
                ("restore", "Restore", 5.0),
            ],
        ),
    )?;
    let weld = svc.add_template(
        USER,
        pid,
        template(
            "Field weld",
            WorkflowType::Discrete,
            &[
                ("fit_up", "Fit-up", 10.0),
                ("weld", "Weld", 60.0),
                ("punch", "Punch", 10.0),
                ("test", "Test", 15.0),
                ("restore", "Restore", 5.0),
            ],
        ),
    )?;
    let footage = svc.add_template(
        USER,
        pid,
        template(
            "Pipe footage",
            WorkflowType::Quantity,
            &[("install", "Install", 80.0), ("test", "Test", 20.0)],
        ),
    )?;
    let coating = svc.add_template(
        USER,
        pid,
        template(
            "Coating",
            WorkflowType::Percentage,
            &[("prime", "Prime", 40.0), ("finish", "Finish coat", 60.0)],
        ),
    )?;
    let systems = ["Cooling water", "Steam", "Fuel gas"];
    let mut updates = Vec::new();
    for d in 0..6usize {
        let drawing = svc.add_drawing(
            USER,
            pid,
            NewDrawing {
                number: format!("NPR-ISO-{:03}", 101 + d),
                title: Some(format!("Rack bay {} isometric", d + 1)),
                revision: Some("B".into()),
                area: Some(format!("Bay {}", d / 2 + 1)),
                system: Some(systems[d % 3].into()),
                parent_id: None,
            },
        )?;
        for i in 0..25usize {
            let n = d * 25 + i;
            let (tpl, kind, tag, qty, unit, hours) = match i % 5 {
                0 | 1 => (&spool, "spool", format!("SP-{n:04}"), None, None, 12.0),
                2 | 3 => (&weld, "field_weld", format!("FW-{n:04}"), None, None, 4.0),
                _ if i % 10 == 4 => (
                    &footage,
                    "pipe",
                    format!("PIPE-{n:04}"),
                    Some(24.0),
                    Some("m"),
                    20.0,
                ),
                _ => (&coating, "coating", format!("CT-{n:04}"), None, None, 6.0),
            };
            let c = svc.add_component(
                USER,
                pid,
                drawing.info.id,
                NewComponent {
                    tag,
                    kind: kind.into(),
                    template_id: Some(tpl.id),
                    quantity_total: qty,
                    unit: unit.map(str::to_owned),
                    budget_hours: Some(hours),
                    attributes: [(
                        "line".to_string(),
                        format!("{}\"-{}-{:03}", 2 + n % 4, kind, n / 7),
                    )]
                    .into(),
                },
            )?;
            // Progress falls off from bay 1 (nearly done) to bay 6 (barely started).
            let done = tpl.milestones.len().saturating_sub(d + (i % 3));
            for m in tpl.milestones.iter().take(done) {
                let value = match tpl.workflow_type {
                    WorkflowType::Discrete => MilestoneValue::Completed(true),
                    WorkflowType::Percentage => MilestoneValue::Percent(if d < 2 { 100.0 } else { 50.0 }),
                    WorkflowType::Quantity => MilestoneValue::Quantity(24.0 - 4.0 * d as f64),
                };
                updates.push(MilestoneUpdate {
                    component_id: c.id,
                    milestone: m.key.clone(),
                    value,
                    effective_date: None,
                });
            }
        }
    }
    svc.bulk(
        USER,
        pid,
        updates,
        BulkOptions::default(),
        Some("demo progress".into()),
    )?;
    store
        .put_meta(SEEDED, pid.to_string().as_bytes())
        .map_err(sitesync_sync::RepoError::from)?;
    Ok(true)
}
