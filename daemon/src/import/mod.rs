//! Importing a component list — CSV or a JSON array — into a project, as a
//! job.
//!
//! The file is read twice, streamed both times, never held whole:
//! 1. *reading*: every row is parsed, so a file that cannot be read as a
//!    whole (no usable header, broken JSON) fails before anything is
//!    written, and the second pass knows its total;
//! 2. *importing*: rows go in batches of [`BATCH`] through
//!    [`Session::plan`] (match each row to a component by id, else by
//!    drawing and tag; plan create / update / unchanged / rejected with the
//!    model's validation) and, unless it is a dry run,
//!    [`write_batch`] writes each batch as one durable write, holding the
//!    project ([`Service::hold`]) from its plan to its write.
//!
//! Every batch of a real import carries the same operation id, so undoing
//! that operation removes what the import created and restores what it
//! changed. A rejected row writes nothing and leaves the job `completed`;
//! `failed` is for a file that cannot be read at all. Header synonyms and
//! cell rules live in `sitesync_model::import`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use serde::Serialize;
use serde_json::json;
use sitesync_model::Spread as _;
use sitesync_model::import::{Mapping, Plan, RowError, RowInput, plan_row};
use sitesync_model::template::MAX_TEXT_LEN;
use sitesync_model::{
    Component, ComponentId, DrawingDoc, DrawingId, DrawingInfo, NewDrawing, OperationId, OperationKind,
    ProjectId, Template,
};
use sitesync_sync::{Doc, RepoError};
use uuid::Uuid;

use crate::index::ProjectIndex;
use crate::jobs::{Done, Failure, JobCtx};
use crate::service::{self, Service};

mod read;

pub use read::{FileError, read_rows};

/// Rows planned and written together: one durable write per batch.
pub const BATCH: usize = 500;

/// The file's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
}

/// An import to run.
pub struct Request {
    pub project: ProjectId,
    pub user: String,
    pub dry_run: bool,
    pub mapping: Mapping,
    pub format: Format,
    /// The uploaded file, in the job's directory.
    pub path: PathBuf,
}

/// What happened (or, in a dry run, would happen) to a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Create,
    Update,
    Unchanged,
    Rejected,
}

/// One row of the result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RowReport {
    /// The spreadsheet row number (the header is row 1); for JSON, the
    /// element's position (1 = first).
    pub row: u64,
    pub tag: Option<String>,
    pub action: Action,
    pub errors: Vec<RowError>,
}

/// A row's planned write.
pub struct Planned {
    pub id: ComponentId,
    pub plan: Plan,
    /// Index into the session's templates.
    pub template: usize,
    /// Index of the row's report in the batch.
    report: usize,
}

/// One batch's plan: the reports (actions as planned) and what to write.
pub struct BatchPlan {
    pub reports: Vec<RowReport>,
    /// Drawings this batch creates: (id, number).
    pub new_drawings: Vec<(DrawingId, String)>,
    pub writes: BTreeMap<DrawingId, Vec<Planned>>,
}

impl BatchPlan {
    /// The batch's write failed as a whole (the project changed under it,
    /// or a document is damaged): every row it would have written is
    /// rejected with that reason.
    pub fn reject_all(&mut self, error: RowError) {
        for planned in self.writes.values().flatten() {
            let report = &mut self.reports[planned.report];
            report.action = Action::Rejected;
            report.errors.push(error.clone());
        }
    }
}

/// Drawing numbers match ignoring case and surrounding space.
fn number_key(number: &str) -> String {
    number.trim().to_lowercase()
}

/// An import's memory across batches.
pub struct Session {
    pub project: ProjectId,
    pub user: String,
    pub dry_run: bool,
    /// The operation every batch writes under.
    pub op: OperationId,
    templates: Vec<Template>,
    /// Drawings this import created (or, dry, would create), by number key.
    new_drawings: HashMap<String, DrawingId>,
    /// The first row naming each (drawing, tag) and each component, so a
    /// second row for the same component is refused, not applied twice.
    keys: HashMap<(DrawingId, String), u64>,
    ids: HashMap<ComponentId, u64>,
    /// Whether any batch wrote (so the operation exists).
    pub wrote: bool,
}

impl Session {
    pub fn new(project: ProjectId, user: String, dry_run: bool, templates: Vec<Template>) -> Self {
        Self {
            project,
            user,
            dry_run,
            op: OperationId(Uuid::new_v4()),
            templates,
            new_drawings: HashMap::new(),
            keys: HashMap::new(),
            ids: HashMap::new(),
            wrote: false,
        }
    }

    pub fn template(&self, i: usize) -> &Template {
        &self.templates[i]
    }

    /// Plans a batch against the project as it is now: `drawings` and
    /// `components` are the project index's. Deleted drawings and
    /// components match nothing (importing after an undo creates afresh).
    pub fn plan(
        &mut self,
        drawings: &BTreeMap<DrawingId, DrawingInfo>,
        components: &ProjectIndex,
        rows: Vec<(u64, RowInput)>,
    ) -> BatchPlan {
        let live: HashMap<String, &DrawingInfo> = drawings
            .values()
            .filter(|d| !d.deleted)
            .map(|d| (number_key(&d.number), d))
            .collect();
        let drawing_of = |number: &str, new: &HashMap<String, DrawingId>| {
            let key = number_key(number);
            live.get(&key).map(|d| d.id).or_else(|| new.get(&key).copied())
        };
        // Components of the drawings this batch names, by tag.
        let named: HashSet<DrawingId> = rows
            .iter()
            .filter_map(|(_, r)| r.drawing.as_deref())
            .filter_map(|n| drawing_of(n, &self.new_drawings))
            .collect();
        let on_named: Vec<Component> = named.iter().flat_map(|d| components.live_on(*d)).collect();
        let by_tag: HashMap<(DrawingId, &str), &Component> = on_named
            .iter()
            .map(|c| ((c.drawing_id, c.tag.as_str()), c))
            .collect();

        let mut batch = BatchPlan {
            reports: Vec::with_capacity(rows.len()),
            new_drawings: Vec::new(),
            writes: BTreeMap::new(),
        };
        for (row, input) in rows {
            let index = batch.reports.len();
            batch.reports.push(RowReport {
                row,
                tag: input.tag.clone(),
                action: Action::Rejected,
                errors: Vec::new(),
            });
            match self.plan_row(row, &input, &drawing_of, components, &by_tag, drawings) {
                Err(errors) => batch.reports[index].errors = errors,
                Ok((did, new_drawing, id, plan, template)) => {
                    batch.reports[index].action = match &plan {
                        Plan::Create(_) => Action::Create,
                        Plan::Update(_) => Action::Update,
                        Plan::Unchanged => Action::Unchanged,
                    };
                    if let Some(number) = new_drawing
                        && !self.new_drawings.contains_key(&number_key(&number))
                    {
                        self.new_drawings.insert(number_key(&number), did);
                        batch.new_drawings.push((did, number));
                    }
                    if plan != Plan::Unchanged {
                        batch.writes.entry(did).or_default().push(Planned {
                            id,
                            plan,
                            template,
                            report: index,
                        });
                    }
                }
            }
        }
        batch
    }

    /// Plans one row: (drawing, the number of a drawing to create, the
    /// component id, the plan, its template index) or why not.
    #[allow(clippy::type_complexity)]
    fn plan_row(
        &mut self,
        row: u64,
        input: &RowInput,
        drawing_of: &dyn Fn(&str, &HashMap<String, DrawingId>) -> Option<DrawingId>,
        components: &ProjectIndex,
        by_tag: &HashMap<(DrawingId, &str), &Component>,
        drawings: &BTreeMap<DrawingId, DrawingInfo>,
    ) -> Result<(DrawingId, Option<String>, ComponentId, Plan, usize), Vec<RowError>> {
        if !input.errors.is_empty() {
            return Err(input.errors.clone());
        }
        let by_id = input.id.and_then(|id| components.get(id)).filter(|c| !c.deleted);
        let named = input
            .drawing
            .as_deref()
            .map(|n| drawing_of(n, &self.new_drawings));
        if let (Some(c), Some(Some(d))) = (&by_id, named)
            && c.drawing_id != d
        {
            let on = drawings
                .get(&c.drawing_id)
                .map_or("another drawing", |d| d.number.as_str());
            return Err(vec![RowError::new(
                Some(&input.column("drawing")),
                "drawing_change",
                format!(
                    "component {} is on drawing {on}; an import does not move components between drawings",
                    c.tag
                ),
            )]);
        }
        let did = match named {
            Some(d) => d,
            None => by_id.as_ref().map(|c| c.drawing_id),
        };
        let existing = by_id.as_ref().or_else(|| {
            let tag = input.tag.as_deref()?;
            by_tag.get(&(did?, tag)).copied()
        });
        // A drawing the file names that the project lacks is created.
        let new_drawing = match (&input.drawing, did) {
            (Some(number), None) => {
                if number.chars().count() > MAX_TEXT_LEN {
                    return Err(vec![RowError::new(
                        Some(&input.column("drawing")),
                        "invalid",
                        format!("a drawing number must be at most {MAX_TEXT_LEN} characters"),
                    )]);
                }
                Some(number.trim().to_owned())
            }
            _ => None,
        };
        let did = did.unwrap_or_else(|| DrawingId(Uuid::new_v4()));
        let tag = input.tag.clone().or_else(|| existing.map(|c| c.tag.clone()));
        let duplicate = |first: u64| {
            vec![RowError::new(
                None,
                "duplicate_row",
                format!("row {first} already imports this component; each component may appear once"),
            )]
        };
        if let Some(first) = existing.and_then(|c| self.ids.get(&c.id)) {
            return Err(duplicate(*first));
        }
        if let Some(first) = tag.as_ref().and_then(|t| self.keys.get(&(did, t.clone()))) {
            return Err(duplicate(*first));
        }
        let plan = plan_row(input, existing, &self.templates)?;
        let template = match (&plan, existing) {
            (Plan::Create(new), _) => new.template_id,
            (_, Some(c)) => Some(c.template_id),
            (_, None) => None,
        }
        .and_then(|t| self.templates.iter().position(|x| x.id == t))
        .ok_or_else(|| {
            vec![RowError::new(
                Some(&input.column("template")),
                "unknown_template",
                "the component's template is not in the project",
            )]
        })?;
        let id = existing.map_or_else(|| ComponentId(Uuid::new_v4()), |c| c.id);
        self.ids.insert(id, row);
        if let Some(tag) = tag {
            self.keys.insert((did, tag), row);
        }
        Ok((did, new_drawing, id, plan, template))
    }

    /// Forgets the drawings a failed batch would have created.
    pub fn forget(&mut self, batch: &BatchPlan) {
        for (did, _) in &batch.new_drawings {
            self.new_drawings.retain(|_, d| d != did);
        }
    }
}

/// Plans one batch of an import and, unless it is a dry run, writes it
/// as one durable write under the import's operation: drawings the
/// batch names that the project lacks, then each drawing's rows as one
/// commit. A write refused as a whole (the project changed under the
/// plan) rejects the batch's rows and writes nothing.
pub fn write_batch(
    service: &Service,
    session: &mut Session,
    rows: Vec<(u64, RowInput)>,
) -> service::Result<Vec<RowReport>> {
    let pid = session.project;
    let mut held = service.hold(pid)?;
    let index = held.index()?;
    let mut batch = session.plan(&index.drawings, index, rows);
    if session.dry_run || batch.writes.is_empty() {
        return Ok(batch.reports);
    }
    let ctx = held.ctx(&session.user, session.op, OperationKind::Import);
    let written = held.write(|tx| {
        for (did, number) in &batch.new_drawings {
            let new = NewDrawing {
                number: number.clone(),
                ..Default::default()
            };
            tx.project(pid)?.add_drawing(&ctx, *did, &new)?;
            let doc = DrawingDoc::create(pid, *did, &ctx, tx.actor())?;
            tx.insert(did.0, Doc::Drawing(doc));
            held.bind(tx, did.0);
        }
        // Each drawing's rows are one commit of its own document, so
        // the drawings are written side by side.
        let dids: Vec<DrawingId> = batch.writes.keys().copied().collect();
        let docs = tx.drawings(&dids)?;
        let session = &*session;
        let work: Vec<_> = docs.into_iter().zip(&batch.writes).collect();
        let written = held.workers().map(work, |(doc, (_, planned))| {
            let rows: Vec<_> = planned
                .iter()
                .map(|p| (p.id, &p.plan, session.template(p.template)))
                .collect();
            doc.apply_import(&ctx, &rows)
        });
        for w in written {
            w?;
        }
        Ok(())
    });
    match written {
        Ok(()) => {
            session.wrote = true;
            let created: Vec<DrawingId> = batch.new_drawings.iter().map(|(did, _)| *did).collect();
            let touched: Vec<(DrawingId, ComponentId)> = batch
                .writes
                .iter()
                .flat_map(|(did, planned)| planned.iter().map(|p| (*did, p.id)))
                .collect();
            held.refreshed(&created, &touched)?;
        }
        Err(RepoError::Model(e)) => {
            session.forget(&batch);
            batch.reject_all(sitesync_model::import::RowError::new(
                None,
                e.code(),
                e.to_string(),
            ));
        }
        Err(RepoError::NotFound { what, id }) => {
            session.forget(&batch);
            batch.reject_all(sitesync_model::import::RowError::new(
                None,
                "not_found",
                format!("{what} {id} is not on this device yet (still syncing?)"),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    Ok(batch.reports)
}

/// Runs an import job: reading, then importing. The result is docs/http.md's
/// `{"created", "updated", "unchanged", "rejected", "operation_id", "rows"}`
/// (plus `dry_run`).
pub fn run(service: &Service, ctx: &JobCtx<'_>, req: Request) -> Result<Done, Failure> {
    let size = std::fs::metadata(&req.path).map_err(FileError::Io)?.len();
    ctx.progress("reading", 0, size);
    let rows = read_rows(&req.path, req.format, &req.mapping, |n, _, at| {
        if n % 1000 == 0 {
            ctx.progress("reading", at.min(size), size);
        }
        Ok(())
    })?;
    ctx.progress("reading", size, size);

    let templates = service
        .templates(req.project)
        .map_err(|e| Failure::new(e.to_string()))?;
    let mut session = Session::new(req.project, req.user.clone(), req.dry_run, templates);
    if !req.dry_run {
        // Known before the first write, so an interrupted import can be undone.
        ctx.partial_result(json!({"operation_id": session.op, "dry_run": false}));
    }
    ctx.progress("importing", 0, rows);
    let mut reports: Vec<RowReport> = Vec::with_capacity(rows as usize);
    let mut batch = Vec::with_capacity(BATCH);
    let mut flush = |batch: &mut Vec<(u64, RowInput)>, reports: &mut Vec<RowReport>| -> Result<(), Failure> {
        let rows_in = std::mem::take(batch);
        let out = write_batch(service, &mut session, rows_in)
            .map_err(|e| Failure::new(format!("the import stopped: {e}")))?;
        reports.extend(out);
        Ok(())
    };
    read_rows(&req.path, req.format, &req.mapping, |row, input, _| {
        batch.push((row, input));
        if batch.len() == BATCH {
            flush(&mut batch, &mut reports)?;
            ctx.progress("importing", (reports.len() as u64).min(rows), rows);
        }
        Ok(())
    })?;
    if !batch.is_empty() {
        flush(&mut batch, &mut reports)?;
    }
    ctx.progress("importing", rows, rows);

    let count = |a: Action| reports.iter().filter(|r| r.action == a).count();
    let (created, updated, unchanged, rejected) = (
        count(Action::Create),
        count(Action::Update),
        count(Action::Unchanged),
        count(Action::Rejected),
    );
    let message = if req.dry_run {
        format!(
            "dry run: {created} to create, {updated} to update, {unchanged} unchanged, {rejected} rejected; nothing was written"
        )
    } else {
        format!("{created} created, {updated} updated, {unchanged} unchanged, {rejected} rejected")
    };
    Ok(Done {
        result: json!({
            "created": created,
            "updated": updated,
            "unchanged": unchanged,
            "rejected": rejected,
            "operation_id": (!req.dry_run && session.wrote).then_some(session.op),
            "dry_run": req.dry_run,
            "rows": reports,
        }),
        message: Some(message),
        file: None,
    })
}
