//! Fixtures for the model's tests: a project with the three kinds of
//! template, a drawing, replicas with their own actors, and a deterministic
//! clock and id source.

#![allow(dead_code)]

use sitesync_model::automerge::{ActorId, Automerge};
use sitesync_model::{
    ComponentId, DeviceId, DrawingDoc, DrawingId, MilestoneDef, MilestoneUpdate, MilestoneValue,
    NewComponent, NewDrawing, NewProject, NewTemplate, OperationId, OperationKind, ProjectDoc, ProjectId,
    Template, TemplateId, Timestamp, WorkflowType, WriteCtx,
};

pub const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

pub fn device(n: u128) -> DeviceId {
    DeviceId::from_u128(0xD0 << 64 | n)
}

pub fn actor(n: u8) -> ActorId {
    ActorId::from(vec![n; 16])
}

/// A writer: one user on one device, with its own clock and op counter.
#[derive(Clone)]
pub struct Writer {
    pub user: String,
    pub device: DeviceId,
    pub now: i64,
    pub next_op: u128,
}

impl Writer {
    pub fn new(user: &str, n: u128) -> Self {
        Self {
            user: user.into(),
            device: device(n),
            now: T0,
            next_op: n << 32,
        }
    }

    /// A context for a new operation; the clock moves on 1 s per operation.
    pub fn ctx(&mut self, kind: OperationKind) -> WriteCtx {
        self.now += 1000;
        self.next_op += 1;
        WriteCtx::new(
            self.user.clone(),
            self.device,
            OperationId::from_u128(self.next_op),
            kind,
            Timestamp(self.now),
        )
    }
}

pub fn milestones(specs: &[(&str, f64)]) -> Vec<MilestoneDef> {
    specs
        .iter()
        .map(|(k, w)| MilestoneDef {
            key: (*k).into(),
            name: k[..1].to_uppercase() + &k[1..],
            weight: *w,
        })
        .collect()
}

pub const PROJECT: ProjectId = ProjectId::from_u128(1);
pub const DRAWING: DrawingId = DrawingId::from_u128(2);
pub const DISCRETE: TemplateId = TemplateId::from_u128(10);
pub const PERCENT: TemplateId = TemplateId::from_u128(11);
pub const QUANTITY: TemplateId = TemplateId::from_u128(12);

/// A project with a spool (discrete), coating (percentage) and pipe
/// footage (quantity) template and one drawing, plus that drawing's doc.
pub struct Fixture {
    pub project: ProjectDoc,
    pub drawing: DrawingDoc,
    pub writer: Writer,
}

impl Fixture {
    pub fn new() -> Self {
        let mut w = Writer::new("ana", 1);
        let mut project = ProjectDoc::create(
            PROJECT,
            &NewProject {
                name: "North Rack".into(),
                code: Some("NR-1".into()),
            },
            &w.ctx(OperationKind::ProjectCreate),
            actor(1),
        )
        .unwrap();
        let spool = NewTemplate {
            name: "Spool".into(),
            workflow_type: WorkflowType::Discrete,
            milestones: milestones(&[("receive", 10.0), ("erect", 30.0), ("weld", 60.0)]),
        };
        let coat = NewTemplate {
            name: "Coating".into(),
            workflow_type: WorkflowType::Percentage,
            milestones: milestones(&[("prime", 50.0), ("finish", 50.0)]),
        };
        let pipe = NewTemplate {
            name: "Pipe footage".into(),
            workflow_type: WorkflowType::Quantity,
            milestones: milestones(&[("install", 70.0), ("test", 30.0)]),
        };
        for (id, t) in [(DISCRETE, spool), (PERCENT, coat), (QUANTITY, pipe)] {
            project
                .add_template(&w.ctx(OperationKind::TemplateCreate), id, t)
                .unwrap();
        }
        project
            .add_drawing(
                &w.ctx(OperationKind::DrawingCreate),
                DRAWING,
                &NewDrawing {
                    number: "P-101".into(),
                    area: Some("A1".into()),
                    system: Some("Cooling".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        let drawing =
            DrawingDoc::create(PROJECT, DRAWING, &w.ctx(OperationKind::DrawingCreate), actor(1)).unwrap();
        Self {
            project,
            drawing,
            writer: w,
        }
    }

    pub fn template(&self, id: TemplateId) -> Template {
        self.project.template(id, "template_id").unwrap()
    }

    /// Adds a component of the given template; quantity ones get a total of 100.
    pub fn component(&mut self, n: u128, template: TemplateId) -> ComponentId {
        let id = ComponentId::from_u128(1000 + n);
        let t = self.template(template);
        let new = NewComponent {
            tag: format!("C-{n:04}"),
            kind: t.name.to_lowercase(),
            template_id: Some(template),
            quantity_total: (t.workflow_type == WorkflowType::Quantity).then_some(100.0),
            ..Default::default()
        };
        let ctx = self.writer.ctx(OperationKind::ComponentCreate);
        self.drawing.add_component(&ctx, id, &new, &t).unwrap();
        id
    }
}

pub fn update(c: ComponentId, key: &str, value: MilestoneValue) -> MilestoneUpdate {
    MilestoneUpdate {
        component_id: c,
        milestone: key.into(),
        value,
        effective_date: None,
    }
}

/// A replica of a drawing document with its own actor (another device).
pub fn replica(doc: &DrawingDoc, n: u8) -> DrawingDoc {
    let bytes = doc.automerge().save();
    DrawingDoc::load(&bytes, actor(n)).unwrap()
}

/// Merges both ways so both documents hold everything.
pub fn exchange(a: &mut DrawingDoc, b: &mut DrawingDoc) {
    a.automerge_mut().merge(&mut b.automerge_mut().clone()).unwrap();
    b.automerge_mut().merge(&mut a.automerge_mut().clone()).unwrap();
}

/// Runs Automerge's sync protocol between two documents until both are quiet.
pub fn sync_protocol(a: &mut Automerge, b: &mut Automerge) {
    use sitesync_model::automerge::sync::{State, SyncDoc};
    let (mut sa, mut sb) = (State::new(), State::new());
    for _ in 0..100 {
        let ma = a.generate_sync_message(&mut sa);
        let mb = b.generate_sync_message(&mut sb);
        if ma.is_none() && mb.is_none() {
            return;
        }
        if let Some(m) = ma {
            b.receive_sync_message(&mut sb, m).unwrap();
        }
        if let Some(m) = mb {
            a.receive_sync_message(&mut sa, m).unwrap();
        }
    }
    panic!("sync did not converge in 100 rounds");
}
