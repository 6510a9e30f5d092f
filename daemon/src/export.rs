//! Exporting a project's components to CSV, JSON or XLSX: which columns
//! (a selection, one column per milestone, completion and status), the
//! cells of a component, and the writers — streamed, a batch of components
//! at a time, never the whole project at once. The same code serves the
//! export job (to a file) and `GET .../components.csv` (to the response).
//!
//! Round trip: the headers are the import's own names (`drawing`, `tag`,
//! `template` by name, `quantity_total`, attributes by name, `attr:<name>`
//! when a name would mean a field), and the derived columns
//! (`milestone:<key>`, `completion_percent`, `status`, `updated_*`) are ones
//! an import reads past, so an exported file re-imports as unchanged.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufWriter, Write};
use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use sitesync_model::import::{ATTRIBUTE_PREFIX, Field, MILESTONE_PREFIX, resolve};
use sitesync_model::{Component, ComponentId, DrawingId, ProjectId, Template, TemplateId};

use crate::jobs::{Done, Failure, JobCtx};
use crate::service::Service;
use crate::service::{Result, ServiceError};

/// Components fetched and written together.
const BATCH: usize = 500;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Json,
    Xlsx,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Json => "json",
            Self::Xlsx => "xlsx",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Csv => "text/csv; charset=utf-8",
            Self::Json => "application/json",
            Self::Xlsx => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        }
    }
}

/// One exported column.
#[derive(Clone, Debug, PartialEq)]
pub enum Column {
    Id,
    Drawing,
    Tag,
    Kind,
    Template,
    QuantityTotal,
    Unit,
    BudgetHours,
    Attribute(String),
    Milestone(String),
    CompletionPercent,
    Status,
    UpdatedAt,
    UpdatedBy,
}

/// The fixed columns by name, in default order (attributes and milestones go
/// between `budget_hours` and `completion_percent`).
const FIXED: [(&str, Column); 12] = [
    ("id", Column::Id),
    ("drawing", Column::Drawing),
    ("tag", Column::Tag),
    ("kind", Column::Kind),
    ("template", Column::Template),
    ("quantity_total", Column::QuantityTotal),
    ("unit", Column::Unit),
    ("budget_hours", Column::BudgetHours),
    ("completion_percent", Column::CompletionPercent),
    ("status", Column::Status),
    ("updated_at", Column::UpdatedAt),
    ("updated_by", Column::UpdatedBy),
];

impl Column {
    /// The header: what an import reads back as the same thing.
    pub fn header(&self) -> String {
        match self {
            Self::Attribute(name) => {
                // A name that would read back as a field gets the prefix.
                if resolve(name) == Field::Attribute(name.clone()) {
                    name.clone()
                } else {
                    format!("{ATTRIBUTE_PREFIX}{name}")
                }
            }
            Self::Milestone(key) => format!("{MILESTONE_PREFIX}{key}"),
            other => FIXED
                .iter()
                .find(|(_, c)| c == other)
                .map(|(n, _)| (*n).to_owned())
                .unwrap_or_default(),
        }
    }
}

/// What an export needs to know of the project before its first row.
pub struct Outline {
    pub project: ProjectId,
    /// Drawing numbers.
    pub drawings: HashMap<DrawingId, String>,
    pub templates: Vec<Template>,
    /// Every attribute name a live component has.
    pub attributes: BTreeSet<String>,
    /// Live components in export order: by drawing number, then tag.
    pub order: Vec<ComponentId>,
}

impl Outline {
    /// The outline of project `pid` as it is now: its drawings, templates
    /// and attribute names, and its live components in export order.
    pub fn of(service: &Service, pid: ProjectId) -> Result<Self> {
        let templates = service.templates(pid)?;
        let mut held = service.hold(pid)?;
        let index = held.index()?;
        let drawings: HashMap<DrawingId, String> = index
            .drawings
            .values()
            .map(|d| (d.id, d.number.clone()))
            .collect();
        let mut attributes = BTreeSet::new();
        let mut order: Vec<(&str, &str, ComponentId)> = Vec::with_capacity(index.len());
        for c in index.live() {
            attributes.extend(c.attributes.iter().map(|(k, _)| k.to_string()));
            let number = drawings.get(&c.drawing_id).map_or("", String::as_str);
            order.push((number, &c.tag, c.id));
        }
        order.sort();
        let order = order.into_iter().map(|(_, _, id)| id).collect();
        Ok(Self {
            project: pid,
            drawings,
            templates,
            attributes,
            order,
        })
    }

    /// Every milestone key of the project's templates, in template order.
    fn milestone_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        for t in &self.templates {
            for m in &t.milestones {
                if !keys.contains(&m.key) {
                    keys.push(m.key.clone());
                }
            }
        }
        keys
    }

    /// The columns to write: all by default, else the requested ones in the
    /// order given. A request names fixed columns, attributes (by name or
    /// `attr:<name>`), milestones (`milestone:<key>`), or `attributes` /
    /// `milestones` for all of them. Unknown names are refused (422) with
    /// the field at fault.
    pub fn columns(&self, requested: Option<&[String]>) -> Result<Vec<Column>> {
        let attributes = || self.attributes.iter().cloned().map(Column::Attribute);
        let milestones = || self.milestone_keys().into_iter().map(Column::Milestone);
        let Some(requested) = requested else {
            let (head, tail) = FIXED.split_at(8);
            return Ok(head
                .iter()
                .map(|(_, c)| c.clone())
                .chain(attributes())
                .chain(milestones())
                .chain(tail.iter().map(|(_, c)| c.clone()))
                .collect());
        };
        if requested.is_empty() {
            return Err(ServiceError::Invalid {
                field: "columns".into(),
                message: "name at least one column, or leave columns out for all".into(),
            });
        }
        let keys = self.milestone_keys();
        let mut out: Vec<Column> = Vec::new();
        for (i, name) in requested.iter().enumerate() {
            let name = name.trim();
            let found: Vec<Column> = if let Some((_, c)) = FIXED.iter().find(|(n, _)| *n == name) {
                vec![c.clone()]
            } else if name == "attributes" {
                attributes().collect()
            } else if name == "milestones" {
                milestones().collect()
            } else if let Some(key) = name.strip_prefix(MILESTONE_PREFIX) {
                if !keys.iter().any(|k| k == key) {
                    return Err(ServiceError::Invalid {
                        field: format!("columns[{i}]"),
                        message: format!(
                            "no template of this project has milestone {key:?} (its milestones: {})",
                            keys.join(", ")
                        ),
                    });
                }
                vec![Column::Milestone(key.to_owned())]
            } else {
                let attr = name.strip_prefix(ATTRIBUTE_PREFIX).unwrap_or(name);
                if !self.attributes.contains(attr) {
                    return Err(ServiceError::Invalid {
                        field: format!("columns[{i}]"),
                        message: format!(
                            "unknown column {name:?}: use {}, an attribute name, milestone:<key>, attributes or milestones",
                            FIXED.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                        ),
                    });
                }
                vec![Column::Attribute(attr.to_owned())]
            };
            for c in found {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
        Ok(out)
    }
}

/// One cell, typed so XLSX gets numbers and booleans, not text.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Empty,
    Text(String),
    Number(f64),
    Bool(bool),
}

impl Cell {
    fn text(&self) -> String {
        match self {
            Self::Empty => String::new(),
            Self::Text(s) => s.clone(),
            Self::Number(n) => n.to_string(),
            Self::Bool(b) => b.to_string(),
        }
    }

    fn json(&self) -> Value {
        match self {
            Self::Empty => Value::Null,
            Self::Text(s) => json!(s),
            Self::Number(n) => json!(n),
            Self::Bool(b) => json!(b),
        }
    }
}

/// The cells of one component under `columns`.
pub fn cells(
    columns: &[Column],
    c: &Component,
    outline: &Outline,
    templates: &HashMap<TemplateId, &str>,
) -> Vec<Cell> {
    let text = |s: &str| Cell::Text(s.to_owned());
    let opt_num = |n: Option<f64>| n.map_or(Cell::Empty, Cell::Number);
    columns
        .iter()
        .map(|col| match col {
            Column::Id => Cell::Text(c.id.to_string()),
            Column::Drawing => outline
                .drawings
                .get(&c.drawing_id)
                .map_or(Cell::Empty, |n| text(n)),
            Column::Tag => text(&c.tag),
            Column::Kind => text(&c.kind),
            Column::Template => templates
                .get(&c.template_id)
                .map_or_else(|| Cell::Text(c.template_id.to_string()), |n| text(n)),
            Column::QuantityTotal => opt_num(c.quantity_total),
            Column::Unit => c.unit.as_deref().map_or(Cell::Empty, text),
            Column::BudgetHours => opt_num(c.budget_hours),
            Column::Attribute(name) => c.attributes.get(name).map_or(Cell::Empty, |v| text(v)),
            Column::Milestone(key) => match c.milestones.iter().find(|m| &m.key == key) {
                None => Cell::Empty,
                Some(m) => match (m.completed, m.percent, m.quantity) {
                    (Some(done), _, _) => Cell::Bool(done),
                    (_, Some(p), _) => Cell::Number(p),
                    (_, _, Some(q)) => Cell::Number(q),
                    _ => Cell::Empty,
                },
            },
            Column::CompletionPercent => Cell::Number(c.completion_percent),
            Column::Status => Cell::Text(
                serde_json::to_value(c.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            ),
            Column::UpdatedAt => Cell::Text(c.updated_at.to_rfc3339()),
            Column::UpdatedBy => text(&c.updated_by),
        })
        .collect()
}

/// Where rows go.
pub trait Sink {
    fn row(&mut self, cells: &[Cell]) -> std::io::Result<()>;
    /// Completes the output (the JSON array's end, the XLSX's assembly).
    fn finish(self: Box<Self>) -> std::io::Result<()>;
}

/// CSV with a header row.
pub struct CsvSink<W: Write> {
    writer: csv::Writer<W>,
}

impl<W: Write> CsvSink<W> {
    pub fn new(out: W, headers: &[String]) -> std::io::Result<Self> {
        let mut writer = csv::Writer::from_writer(out);
        writer.write_record(headers.iter().map(|h| escape_formula(h).into_owned()))?;
        Ok(Self { writer })
    }
}

/// The characters a spreadsheet reads as the start of a formula.
const FORMULA_START: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

fn quoted_formula(text: &str) -> bool {
    text.trim_start_matches('\'').starts_with(FORMULA_START)
}

/// A text cell as a CSV may hold it: one that a spreadsheet would run as
/// a formula (`=HYPERLINK(...)`, `+`, `-`, `@`, tab, CR) gets a leading
/// `'`, so Excel and LibreOffice show it as text. Text that already starts
/// with quotes before such a character gets one more, so
/// [`unescape_formula`] gives back exactly what was exported. Numbers are
/// cells of their own ([`Cell::Number`]) and are never quoted.
pub fn escape_formula(text: &str) -> std::borrow::Cow<'_, str> {
    if quoted_formula(text) {
        format!("'{text}").into()
    } else {
        text.into()
    }
}

/// Undoes [`escape_formula`] on a cell read from a CSV file, so an
/// exported file imports as unchanged.
pub fn unescape_formula(cell: &str) -> &str {
    match cell.strip_prefix('\'') {
        Some(rest) if quoted_formula(rest) => rest,
        _ => cell,
    }
}

impl<W: Write> Sink for CsvSink<W> {
    fn row(&mut self, cells: &[Cell]) -> std::io::Result<()> {
        Ok(self.writer.write_record(cells.iter().map(|c| match c {
            Cell::Text(s) => escape_formula(s).into_owned(),
            other => other.text(),
        }))?)
    }

    fn finish(mut self: Box<Self>) -> std::io::Result<()> {
        self.writer.flush()
    }
}

/// A JSON array of objects keyed by the headers (what the import reads).
struct JsonSink<W: Write> {
    out: W,
    headers: Vec<String>,
    first: bool,
}

impl<W: Write> Sink for JsonSink<W> {
    fn row(&mut self, cells: &[Cell]) -> std::io::Result<()> {
        let object: Map<String, Value> = self
            .headers
            .iter()
            .zip(cells)
            .filter(|(_, c)| **c != Cell::Empty)
            .map(|(h, c)| (h.clone(), c.json()))
            .collect();
        self.out.write_all(if self.first { b"[\n" } else { b",\n" })?;
        self.first = false;
        serde_json::to_writer(&mut self.out, &object)?;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> std::io::Result<()> {
        self.out.write_all(if self.first { b"[]\n" } else { b"\n]\n" })?;
        self.out.flush()
    }
}

/// XLSX in constant-memory mode: rows stream to a temporary file in the
/// job's directory; `finish` assembles the workbook.
struct XlsxSink {
    workbook: rust_xlsxwriter::Workbook,
    path: std::path::PathBuf,
    row: u32,
}

fn xlsx_err(e: rust_xlsxwriter::XlsxError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl XlsxSink {
    fn new(path: &Path, headers: &[String]) -> std::io::Result<Self> {
        let mut workbook = rust_xlsxwriter::Workbook::new();
        if let Some(dir) = path.parent() {
            workbook.set_tempdir(dir).map_err(xlsx_err)?;
        }
        let bold = rust_xlsxwriter::Format::new().set_bold();
        let sheet = workbook.add_worksheet_with_constant_memory().map_err(xlsx_err)?;
        sheet.set_name("Components").map_err(xlsx_err)?;
        for (i, h) in headers.iter().enumerate() {
            sheet
                .write_string_with_format(0, i as u16, h, &bold)
                .map_err(xlsx_err)?;
        }
        sheet.set_freeze_panes(1, 0).map_err(xlsx_err)?;
        Ok(Self {
            workbook,
            path: path.to_owned(),
            row: 1,
        })
    }
}

impl Sink for XlsxSink {
    fn row(&mut self, cells: &[Cell]) -> std::io::Result<()> {
        let sheet = self.workbook.worksheet_from_index(0).map_err(xlsx_err)?;
        for (i, cell) in cells.iter().enumerate() {
            let col = i as u16;
            match cell {
                Cell::Empty => {}
                Cell::Text(s) => {
                    sheet.write_string(self.row, col, s).map_err(xlsx_err)?;
                }
                Cell::Number(n) => {
                    sheet.write_number(self.row, col, *n).map_err(xlsx_err)?;
                }
                Cell::Bool(b) => {
                    sheet.write_boolean(self.row, col, *b).map_err(xlsx_err)?;
                }
            }
        }
        self.row += 1;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> std::io::Result<()> {
        self.workbook.save(&self.path).map_err(xlsx_err)
    }
}

/// A sink writing `format` to `path`.
fn file_sink(format: Format, path: &Path, headers: Vec<String>) -> std::io::Result<Box<dyn Sink>> {
    let file = || std::fs::File::create(path).map(|f| BufWriter::with_capacity(1 << 16, f));
    Ok(match format {
        Format::Csv => Box::new(CsvSink::new(file()?, &headers)?),
        Format::Json => Box::new(JsonSink {
            out: file()?,
            headers,
            first: true,
        }),
        Format::Xlsx => Box::new(XlsxSink::new(path, &headers)?),
    })
}

/// Writes every component of the outline to `sink`, a batch at a time,
/// calling `progress(written)` after each batch.
pub fn write_rows(
    service: &Service,
    outline: &Outline,
    columns: &[Column],
    sink: &mut dyn Sink,
    mut progress: impl FnMut(u64),
) -> Result<u64> {
    let templates: HashMap<TemplateId, &str> = outline
        .templates
        .iter()
        .map(|t| (t.id, t.name.as_str()))
        .collect();
    let io = |source| ServiceError::Io {
        doing: "writing the export",
        source,
    };
    let mut written = 0;
    for ids in outline.order.chunks(BATCH) {
        for c in service.components_by_id(outline.project, ids)? {
            sink.row(&cells(columns, &c, outline, &templates)).map_err(io)?;
            written += 1;
        }
        progress(written);
    }
    Ok(written)
}

/// An export to run.
pub struct Request {
    /// The components as the export was requested; their values are read
    /// as the job writes them.
    pub outline: Outline,
    /// The columns, checked when the export was requested.
    pub columns: Vec<Column>,
    pub format: Format,
    /// The file's name for downloads (`<project>-components.<ext>`).
    pub file_name: String,
}

/// Runs an export job: writing (rows to the file), then saving. The result
/// is `{"format", "rows", "bytes", "file_name", "download"}`.
pub fn run(service: &Service, ctx: &JobCtx<'_>, req: Request) -> Result<Done, Failure> {
    let Request {
        outline,
        columns,
        format,
        file_name,
    } = req;
    let total = outline.order.len() as u64;
    let path = ctx.dir.join(&file_name);
    let headers: Vec<String> = columns.iter().map(Column::header).collect();
    let io = |e: std::io::Error| Failure::new(format!("writing the export failed: {e}"));
    ctx.progress("writing", 0, total);
    let mut sink = file_sink(format, &path, headers).map_err(io)?;
    let rows = write_rows(service, &outline, &columns, sink.as_mut(), |n| {
        ctx.progress("writing", n.min(total), total)
    })
    .map_err(|e| Failure::new(e.to_string()))?;
    ctx.progress("saving", 0, 1);
    sink.finish().map_err(io)?;
    ctx.progress("saving", 1, 1);
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    Ok(Done {
        result: json!({
            "format": format.extension(),
            "rows": rows,
            "bytes": bytes,
            "file_name": file_name,
            "download": format!("/v1/jobs/{}/download", ctx.id),
        }),
        message: Some(format!("{rows} components exported")),
        file: Some(file_name),
    })
}

/// Bytes written on a blocking thread, sent to an async response body in
/// 64 KiB pieces. A gone receiver (the client hung up) fails the write, so
/// the work stops.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Vec<u8>>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    const PIECE: usize = 64 * 1024;

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(Self::PIECE));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= Self::PIECE {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// The pieces of a streamed CSV, in order; an error ends it.
pub type CsvStream = tokio_stream::wrappers::ReceiverStream<std::io::Result<Vec<u8>>>;

/// Every live component of `outline` as a stream of CSV pieces with all
/// columns, produced a batch at a time on a blocking thread while the
/// reader takes them (the API sends it as a response body). A failure
/// part-way ends the stream with an error, so the client sees a broken
/// transfer rather than a short file.
pub fn stream_csv(service: std::sync::Arc<Service>, outline: Outline) -> Result<CsvStream> {
    let columns = outline.columns(None)?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let failed = tx.clone();
    tokio::task::spawn_blocking(move || {
        let headers: Vec<String> = columns.iter().map(Column::header).collect();
        let out = ChannelWriter {
            tx,
            buf: Vec::with_capacity(ChannelWriter::PIECE),
        };
        let result = CsvSink::new(out, &headers)
            .map_err(|e| e.to_string())
            .and_then(|mut sink| {
                write_rows(&service, &outline, &columns, &mut sink, |_| {}).map_err(|e| e.to_string())?;
                Box::new(sink).finish().map_err(|e| e.to_string())
            });
        if let Err(e) = result {
            tracing::warn!(error = %e, "components.csv ended early");
            let _ = failed.blocking_send(Err(std::io::Error::other(e)));
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// A file name safe for Content-Disposition and every file system.
pub fn file_name(project_name: &str, format: Format) -> String {
    let base: String = project_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let base = base.trim_matches('_');
    let base = if base.is_empty() { "project" } else { base };
    format!("{base}-components.{}", format.extension())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sitesync_model::import::resolve;

    #[test]
    fn every_header_reads_back_as_its_column_or_is_read_past() {
        for (name, col) in FIXED {
            let back = resolve(&col.header());
            let expect_ignored = matches!(
                col,
                Column::CompletionPercent | Column::Status | Column::UpdatedAt | Column::UpdatedBy
            );
            assert_eq!(back == Field::Ignored, expect_ignored, "{name}");
            assert_eq!(col.header(), name);
        }
        for attr in ["area", "Line Class", "qty", "status", "DWG"] {
            assert_eq!(
                resolve(&Column::Attribute(attr.into()).header()),
                Field::Attribute(attr.into()),
                "{attr}"
            );
        }
        assert_eq!(
            resolve(&Column::Milestone("erect".into()).header()),
            Field::Ignored
        );
    }

    #[test]
    fn file_names_are_safe() {
        assert_eq!(
            file_name("LNG Train 2 / Area 7", Format::Xlsx),
            "LNG_Train_2___Area_7-components.xlsx"
        );
        assert_eq!(file_name("//", Format::Csv), "project-components.csv");
    }

    /// A formula in a text cell is quoted for spreadsheets, and the quote
    /// comes off again on import, for every text (quotes included).
    #[test]
    fn formulas_are_quoted_on_export_and_unquoted_on_import() {
        for (text, exported) in [
            (
                "=HYPERLINK(\"http://x\",\"y\")",
                "'=HYPERLINK(\"http://x\",\"y\")",
            ),
            ("+1", "'+1"),
            ("-3", "'-3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("\rx", "'\rx"),
            ("'=x", "''=x"),
            ("''-x", "'''-x"),
            ("P-101", "P-101"),
            ("'quoted", "'quoted"),
            ("", ""),
            ("'", "'"),
        ] {
            assert_eq!(escape_formula(text), exported, "{text:?}");
            assert_eq!(unescape_formula(exported), text, "{exported:?}");
        }
    }
}
