//! Spreadsheet import, the pure part: which column means what (header
//! synonyms and an explicit mapping), a row's cells turned into typed values
//! with per-cell errors, and the plan for one row against the component it
//! matched — create, update or unchanged — validated by the same rules as
//! the API. [`DrawingDoc::apply_import`] writes a drawing's planned rows as
//! one commit.
//!
//! The daemon reads the file, matches rows to components and drives the
//! batches; nothing here does IO.
//!
//! Cell rules: values are trimmed; an empty cell means "no value" — on a new
//! component the field is unset, on an existing one it is left as it is (an
//! import never erases data a partial spreadsheet lacks).

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::crdt;
use crate::drawing::{self, Component, ComponentPatch, DrawingDoc, NewComponent};
use crate::error::{ModelError, Result};
use crate::ids::ComponentId;
use crate::operation::WriteCtx;
use crate::schema;
use crate::template::Template;

/// Columns an export writes that an import reads past: derived or
/// bookkeeping values, never input (progress goes through the milestone
/// API). Matched after normalisation.
const EXPORT_ONLY: &[&str] = &[
    "COMPLETION PERCENT",
    "STATUS",
    "WORKFLOW TYPE",
    "CREATED AT",
    "UPDATED AT",
    "UPDATED BY",
    "DELETED",
    "MILESTONES",
];

/// Prefix of an export's per-milestone columns (`milestone:erect`); read past
/// on import.
pub const MILESTONE_PREFIX: &str = "milestone:";

/// Prefix that makes a column an attribute whatever its name
/// (`attr:qty` is the attribute `qty`, not the quantity).
pub const ATTRIBUTE_PREFIX: &str = "attr:";

/// What a column means.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    Id,
    Drawing,
    Tag,
    Kind,
    Template,
    QuantityTotal,
    Unit,
    BudgetHours,
    /// A component attribute of this name (`area`, `system` and
    /// `test_package` are attributes too).
    Attribute(String),
    /// Read past: blank headers, export-only columns, mapped to null.
    Ignored,
}

impl Field {
    /// The name errors and the plan use for this field (the model's field
    /// path: `quantity_total`, `attributes.area`).
    pub fn path(&self) -> String {
        match self {
            Self::Id => "id".into(),
            Self::Drawing => "drawing".into(),
            Self::Tag => "tag".into(),
            Self::Kind => "kind".into(),
            Self::Template => "template".into(),
            Self::QuantityTotal => "quantity_total".into(),
            Self::Unit => "unit".into(),
            Self::BudgetHours => "budget_hours".into(),
            Self::Attribute(name) => format!("attributes.{name}"),
            Self::Ignored => String::new(),
        }
    }
}

/// Upper case, `_`, `-` and `.` as spaces, runs of spaces as one: so
/// `Dwg_No.`, `DWG NO` and `dwg-no` all read `DWG NO`.
fn normalize(header: &str) -> String {
    header
        .chars()
        .map(|c| if matches!(c, '_' | '-' | '.') { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase()
}

/// What a header means: docs/http.md's synonyms, the canonical names, the
/// export-only columns; anything else is an attribute named as written.
pub fn resolve(header: &str) -> Field {
    let trimmed = header.trim();
    if trimmed.is_empty() {
        return Field::Ignored;
    }
    // `get`, not indexing: a header's first bytes may end inside a
    // character (`attr\u{feff}x`), which indexing panics on.
    let starts_with = |prefix: &str| {
        trimmed
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    };
    if trimmed.len() > ATTRIBUTE_PREFIX.len() && starts_with(ATTRIBUTE_PREFIX) {
        return Field::Attribute(trimmed[ATTRIBUTE_PREFIX.len()..].trim().to_owned());
    }
    if starts_with(MILESTONE_PREFIX) {
        return Field::Ignored;
    }
    if let Some(name) = trimmed.strip_prefix("attributes.") {
        return Field::Attribute(name.trim().to_owned());
    }
    let n = normalize(trimmed);
    match n.as_str() {
        "ID" | "COMPONENT ID" => Field::Id,
        "DRAWING" | "DWG" | "DWG NO" | "DRAWING NO" | "DRAWING NUMBER" | "DWG NUMBER" => Field::Drawing,
        "TAG" | "TAG NO" | "TAG NUMBER" => Field::Tag,
        "KIND" | "TYPE" | "COMPONENT TYPE" => Field::Kind,
        "TEMPLATE" | "TEMPLATE ID" | "TEMPLATE NAME" => Field::Template,
        "QUANTITY TOTAL" | "QTY" | "QUANTITY" => Field::QuantityTotal,
        "UNIT" | "UOM" => Field::Unit,
        "BUDGET HOURS" | "HOURS" => Field::BudgetHours,
        "AREA" | "LOCATION" | "ZONE" => Field::Attribute("area".into()),
        "SYSTEM" => Field::Attribute("system".into()),
        "TEST PKG" | "TEST PACKAGE" => Field::Attribute("test_package".into()),
        n if EXPORT_ONLY.contains(&n) => Field::Ignored,
        _ => Field::Attribute(trimmed.to_owned()),
    }
}

/// A file-level problem: the import cannot start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HeaderError {
    #[error("the file has no header row")]
    NoHeader,
    #[error(
        "columns {first} ({first_name:?}) and {second} ({second_name:?}) both mean {field}; keep one or rename one with ?mapping="
    )]
    Duplicate {
        first: usize,
        first_name: String,
        second: usize,
        second_name: String,
        field: String,
    },
    #[error("the file needs a tag column (TAG) or an id column (ID); its columns are: {columns}")]
    NoKey { columns: String },
    #[error("mapping names column {column:?}, which the file does not have (its columns are: {columns})")]
    UnknownMappedColumn { column: String, columns: String },
}

/// An explicit mapping: source column (as in the file, matched ignoring
/// case and surrounding space) → target name (resolved like a header:
/// `tag`, `QTY`, `attr:line_class`, ...), or null to read the column past.
pub type Mapping = BTreeMap<String, Option<String>>;

/// What a header means under `mapping`, if the mapping names it.
fn mapped(header: &str, mapping: &Mapping) -> Option<Field> {
    mapping
        .iter()
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(header.trim()))
        .map(|(_, v)| v.as_deref().map_or(Field::Ignored, resolve))
}

/// What a header (or a JSON key) means: the mapping's word first, then
/// [`resolve`].
pub fn field_of(header: &str, mapping: &Mapping) -> Field {
    mapped(header, mapping).unwrap_or_else(|| resolve(header))
}

/// The meaning of every column of a file with a header row (CSV).
#[derive(Clone, Debug)]
pub struct Columns {
    headers: Vec<String>,
    fields: Vec<Field>,
}

impl Columns {
    /// Resolves a header row: mapping first, then synonyms. Refuses two
    /// columns meaning the same field, a mapping naming no column, and a file
    /// with neither a tag nor an id column.
    pub fn new(headers: Vec<String>, mapping: &Mapping) -> Result<Self, HeaderError> {
        if headers.iter().all(|h| h.trim().is_empty()) {
            return Err(HeaderError::NoHeader);
        }
        let listed = || headers.join(", ");
        for column in mapping.keys() {
            if !headers
                .iter()
                .any(|h| h.trim().eq_ignore_ascii_case(column.trim()))
            {
                return Err(HeaderError::UnknownMappedColumn {
                    column: column.clone(),
                    columns: listed(),
                });
            }
        }
        let fields: Vec<Field> = headers.iter().map(|h| field_of(h, mapping)).collect();
        for (i, f) in fields.iter().enumerate() {
            if *f == Field::Ignored {
                continue;
            }
            if let Some(j) = fields[..i].iter().position(|g| g == f) {
                return Err(HeaderError::Duplicate {
                    first: j + 1,
                    first_name: headers[j].clone(),
                    second: i + 1,
                    second_name: headers[i].clone(),
                    field: f.path(),
                });
            }
        }
        if !fields.iter().any(|f| matches!(f, Field::Tag | Field::Id)) {
            return Err(HeaderError::NoKey { columns: listed() });
        }
        Ok(Self { headers, fields })
    }

    /// How many columns the header has.
    pub fn len(&self) -> usize {
        self.headers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }

    /// The header of column `i` (0-based), as written in the file.
    pub fn header(&self, i: usize) -> &str {
        &self.headers[i]
    }

    /// A data row's cells, in header order, as typed input.
    pub fn row<'a>(&'a self, cells: impl IntoIterator<Item = &'a str>) -> RowInput {
        let mut input = RowInput::default();
        for ((field, header), value) in self.fields.iter().zip(&self.headers).zip(cells) {
            input.set(field, header, value);
        }
        input
    }
}

/// One problem with one row.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RowError {
    /// The column at fault as the file names it; null when the row as a
    /// whole is.
    pub column: Option<String>,
    pub code: String,
    pub message: String,
}

impl RowError {
    pub fn new(column: Option<&str>, code: &str, message: impl Into<String>) -> Self {
        Self {
            column: column.map(str::to_owned),
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// A row's values, typed, with the problems found reading them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RowInput {
    pub id: Option<ComponentId>,
    pub drawing: Option<String>,
    pub tag: Option<String>,
    pub kind: Option<String>,
    pub template: Option<String>,
    pub quantity_total: Option<f64>,
    pub unit: Option<String>,
    pub budget_hours: Option<f64>,
    pub attributes: BTreeMap<String, String>,
    pub errors: Vec<RowError>,
    /// Field path → the file's header for it, so errors found later (by the
    /// model's validation) name the user's own column.
    headers: BTreeMap<String, String>,
}

fn number(header: &str, value: &str, errors: &mut Vec<RowError>) -> Option<f64> {
    match value.parse::<f64>() {
        Ok(v) if v.is_finite() => Some(v),
        _ => {
            errors.push(RowError::new(
                Some(header),
                "invalid_number",
                format!("{value:?} is not a number"),
            ));
            None
        }
    }
}

impl RowInput {
    /// Records one cell. An empty cell is no value; a second value for the
    /// same field (possible in JSON, where keys are per object) is an error.
    pub fn set(&mut self, field: &Field, header: &str, value: &str) {
        let value = value.trim();
        if value.is_empty() || *field == Field::Ignored {
            return;
        }
        let path = field.path();
        if let Some(first) = self.headers.get(&path) {
            self.errors.push(RowError::new(
                Some(header),
                "duplicate_column",
                format!("{header:?} and {first:?} both give {path}"),
            ));
            return;
        }
        self.headers.insert(path, header.to_owned());
        let text = Some(value.to_owned());
        match field {
            Field::Id => match value.parse() {
                Ok(id) => self.id = Some(id),
                Err(_) => self.errors.push(RowError::new(
                    Some(header),
                    "invalid_id",
                    format!("{value:?} is not a component id (a UUID)"),
                )),
            },
            Field::Drawing => self.drawing = text,
            Field::Tag => self.tag = text,
            Field::Kind => self.kind = text,
            Field::Template => self.template = text,
            Field::QuantityTotal => {
                self.quantity_total = number(header, value, &mut self.errors);
                if let Some(q) = self.quantity_total.filter(|q| *q < 0.0) {
                    self.errors.push(RowError::new(
                        Some(header),
                        "negative_quantity",
                        format!("a quantity cannot be negative (got {q})"),
                    ));
                }
            }
            Field::Unit => self.unit = text,
            Field::BudgetHours => self.budget_hours = number(header, value, &mut self.errors),
            Field::Attribute(name) => {
                self.attributes.insert(name.clone(), value.to_owned());
            }
            Field::Ignored => {}
        }
    }

    /// The file's header for a model field path (`quantity_total`,
    /// `attributes.area`), or the path itself when the row has no such
    /// column.
    pub fn column(&self, path: &str) -> String {
        self.headers.get(path).cloned().unwrap_or_else(|| path.to_owned())
    }

    /// A model validation error as a row error on the user's column.
    pub fn error_from(&self, e: &ModelError) -> RowError {
        let column = e.field().map(|f| self.column(f));
        let text = e.to_string();
        // The model's message starts with its field path; the column says it.
        let message = match e.field() {
            Some(f) => text.strip_prefix(&format!("{f}: ")).unwrap_or(&text).to_owned(),
            None => text,
        };
        RowError {
            column,
            code: e.code().to_owned(),
            message,
        }
    }

    fn missing(&self, path: &str, what: &str) -> RowError {
        RowError::new(
            Some(&self.column(path)),
            "missing_value",
            format!("a new component needs {what}"),
        )
    }
}

/// The template a cell names: its id, else its exact name.
pub fn find_template<'a>(templates: &'a [Template], cell: &str) -> Option<&'a Template> {
    templates
        .iter()
        .find(|t| t.id.to_string().eq_ignore_ascii_case(cell))
        .or_else(|| templates.iter().find(|t| t.name == cell))
}

/// What importing a row will do.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    Create(NewComponent),
    Update(ComponentPatch),
    Unchanged,
}

/// Quantities are stored in thousandths; compare as stored.
fn same_quantity(a: f64, b: Option<f64>) -> bool {
    b.is_some_and(|b| crdt::to_milli("", a).ok() == crdt::to_milli("", b).ok())
}

/// Plans one row: a create when it matched nothing, else the fields that
/// differ from `existing` (unchanged when none do). Validated by the rules
/// every write follows, so an accepted plan writes cleanly.
///
/// `existing` is the matched component (by id, else by drawing and tag);
/// `templates` the project's.
pub fn plan_row(
    input: &RowInput,
    existing: Option<&Component>,
    templates: &[Template],
) -> Result<Plan, Vec<RowError>> {
    if !input.errors.is_empty() {
        return Err(input.errors.clone());
    }
    let template = match &input.template {
        None => None,
        Some(cell) => Some(find_template(templates, cell).ok_or_else(|| {
            let names: Vec<&str> = templates.iter().map(|t| t.name.as_str()).collect();
            vec![RowError::new(
                Some(&input.column("template")),
                "unknown_template",
                format!(
                    "no template is named or has the id {cell:?} (the project's templates: {})",
                    names.join(", ")
                ),
            )]
        })?),
    };
    match existing {
        None => plan_create(input, template),
        Some(c) => plan_update(input, c, template, templates),
    }
}

fn plan_create(input: &RowInput, template: Option<&Template>) -> Result<Plan, Vec<RowError>> {
    let mut errors = Vec::new();
    if input.drawing.is_none() {
        errors.push(input.missing("drawing", "a drawing (DWG)"));
    }
    if input.tag.is_none() {
        errors.push(input.missing("tag", "a tag (TAG)"));
    }
    if template.is_none() {
        errors.push(input.missing("template", "a template (TEMPLATE: its name or id)"));
    }
    let (Some(template), Some(tag), true) = (template, &input.tag, errors.is_empty()) else {
        return Err(errors);
    };
    let new = NewComponent {
        tag: tag.clone(),
        // A sheet without a type column: the template names the kind.
        kind: input.kind.clone().unwrap_or_else(|| template.name.clone()),
        template_id: Some(template.id),
        quantity_total: input.quantity_total,
        unit: input.unit.clone(),
        budget_hours: input.budget_hours,
        attributes: input.attributes.clone(),
    };
    drawing::validate_new(&new, template).map_err(|e| vec![input.error_from(&e)])?;
    Ok(Plan::Create(new))
}

fn plan_update(
    input: &RowInput,
    c: &Component,
    template: Option<&Template>,
    templates: &[Template],
) -> Result<Plan, Vec<RowError>> {
    if c.deleted {
        return Err(vec![RowError::new(
            None,
            "component_deleted",
            format!(
                "component {} is deleted; restore it before importing changes to it",
                c.id
            ),
        )]);
    }
    let own = templates.iter().find(|t| t.id == c.template_id);
    if let Some(t) = template
        && t.id != c.template_id
    {
        let name = own.map_or_else(|| c.template_id.to_string(), |t| t.name.clone());
        return Err(vec![RowError::new(
            Some(&input.column("template")),
            "template_change",
            format!(
                "component {} keeps its template ({name}); to use {:?}, delete it and import it as a new component",
                c.tag, t.name
            ),
        )]);
    }
    let differs = |new: &Option<String>, old: &str| new.as_deref().filter(|n| *n != old).map(str::to_owned);
    let mut attributes = BTreeMap::new();
    for (k, v) in &input.attributes {
        if c.attributes.get(k) != Some(v) {
            attributes.insert(k.clone(), Some(v.clone()));
        }
    }
    let patch = ComponentPatch {
        tag: differs(&input.tag, &c.tag),
        kind: differs(&input.kind, &c.kind),
        quantity_total: input
            .quantity_total
            .filter(|q| !same_quantity(*q, c.quantity_total))
            .map(Some),
        unit: differs(&input.unit, c.unit.as_deref().unwrap_or_default()).map(Some),
        budget_hours: input
            .budget_hours
            .filter(|h| Some(*h) != c.budget_hours)
            .map(Some),
        attributes: (!attributes.is_empty()).then_some(attributes),
    };
    if patch == ComponentPatch::default() {
        return Ok(Plan::Unchanged);
    }
    if let Some(t) = own {
        drawing::validate_patch(&patch, t).map_err(|e| vec![input.error_from(&e)])?;
    }
    Ok(Plan::Update(patch))
}

impl DrawingDoc {
    /// Writes planned rows — creates and updates of this drawing's
    /// components — as one commit. All or nothing: rows were planned
    /// (validated) first, so a failure here is a mismatch or damage, and
    /// nothing of the document is written. Returns how many rows it wrote.
    pub fn apply_import(
        &mut self,
        ctx: &WriteCtx,
        rows: &[(ComponentId, &Plan, &Template)],
    ) -> Result<usize> {
        let mut seen = HashSet::new();
        schema::transact(self.automerge_mut(), ctx, |tx| {
            let mut n = 0;
            for (id, plan, template) in rows {
                if !seen.insert(*id) {
                    return Err(ModelError::invalid(
                        "id",
                        format!("component {id} is imported twice"),
                    ));
                }
                match plan {
                    Plan::Create(new) => drawing::create_component(tx, ctx, *id, new, template)?,
                    Plan::Update(patch) => {
                        drawing::update_component(tx, ctx, *id, patch)?;
                    }
                    Plan::Unchanged => continue,
                }
                n += 1;
            }
            Ok((n, n))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{DeviceId, DrawingId, OperationId, ProjectId, TemplateId};
    use crate::operation::OperationKind;
    use crate::template::{MilestoneDef, WorkflowType};
    use crate::time::Timestamp;
    use automerge::ActorId;
    use uuid::Uuid;

    fn headers(h: &[&str]) -> Vec<String> {
        h.iter().map(|s| s.to_string()).collect()
    }

    fn template(name: &str, workflow_type: WorkflowType) -> Template {
        Template {
            id: TemplateId(Uuid::new_v4()),
            name: name.into(),
            workflow_type,
            milestones: vec![MilestoneDef {
                key: "install".into(),
                name: "Install".into(),
                weight: 1.0,
            }],
        }
    }

    #[test]
    fn field_spreadsheet_headers_mean_what_crews_mean() {
        let cases = [
            ("DWG", Field::Drawing),
            ("Dwg No.", Field::Drawing),
            ("drawing", Field::Drawing),
            ("TAG", Field::Tag),
            ("Type", Field::Kind),
            ("QTY", Field::QuantityTotal),
            ("quantity_total", Field::QuantityTotal),
            ("Quantity", Field::QuantityTotal),
            ("LOCATION", Field::Attribute("area".into())),
            ("zone", Field::Attribute("area".into())),
            ("System", Field::Attribute("system".into())),
            ("TEST PKG", Field::Attribute("test_package".into())),
            ("TEST_PACKAGE", Field::Attribute("test_package".into())),
            ("budget_hours", Field::BudgetHours),
            ("Line Class", Field::Attribute("Line Class".into())),
            ("attr:qty", Field::Attribute("qty".into())),
            ("milestone:erect", Field::Ignored),
            // Found by the fuzzer: a prefix's length ending inside a
            // character panicked.
            ("attr\u{feff}T:x", Field::Attribute("attr\u{feff}T:x".into())),
            ("milest\u{f6}ne:x", Field::Attribute("milest\u{f6}ne:x".into())),
            ("completion_percent", Field::Ignored),
            ("  ", Field::Ignored),
        ];
        for (header, want) in cases {
            assert_eq!(resolve(header), want, "{header}");
        }
    }

    #[test]
    fn a_header_row_is_refused_with_a_reason() {
        let none = Mapping::new();
        assert_eq!(
            Columns::new(headers(&["", " "]), &none).unwrap_err(),
            HeaderError::NoHeader
        );
        assert!(matches!(
            Columns::new(headers(&["DWG", "Drawing", "TAG"]), &none),
            Err(HeaderError::Duplicate {
                first: 1,
                second: 2,
                ..
            })
        ));
        assert!(matches!(
            Columns::new(headers(&["DWG", "QTY"]), &none),
            Err(HeaderError::NoKey { .. })
        ));
        let mapping = Mapping::from([("Line".to_owned(), Some("tag".to_owned()))]);
        assert!(matches!(
            Columns::new(headers(&["DWG", "TAG"]), &mapping),
            Err(HeaderError::UnknownMappedColumn { .. })
        ));
    }

    #[test]
    fn a_mapping_renames_and_drops_columns() {
        let mapping = Mapping::from([
            ("Line No".to_owned(), Some("tag".to_owned())),
            ("tag".to_owned(), Some("attr:old_tag".to_owned())),
            ("Remarks".to_owned(), None),
        ]);
        let cols = Columns::new(headers(&["DWG", "line no", "TAG", "Remarks"]), &mapping).unwrap();
        let row = cols.row(["D-1", "L-7", "T-1", "ignore me"]);
        assert_eq!(row.tag.as_deref(), Some("L-7"));
        assert_eq!(row.attributes.get("old_tag").map(String::as_str), Some("T-1"));
        assert!(!row.attributes.contains_key("Remarks"));
    }

    #[test]
    fn cells_are_typed_with_errors_on_the_users_column() {
        let cols = Columns::new(headers(&["DWG", "TAG", "QTY", "ID", "ZONE"]), &Mapping::new()).unwrap();
        let row = cols.row(["D-1", " T-1 ", "ten", "not-a-uuid", ""]);
        assert_eq!(row.tag.as_deref(), Some("T-1"));
        assert!(!row.attributes.contains_key("area"), "an empty cell is no value");
        let codes: Vec<(&str, &str)> = row
            .errors
            .iter()
            .map(|e| (e.column.as_deref().unwrap(), e.code.as_str()))
            .collect();
        assert_eq!(codes, [("QTY", "invalid_number"), ("ID", "invalid_id")]);
    }

    #[test]
    fn a_row_plans_a_create_an_update_or_nothing() {
        let pipe = template("Pipe", WorkflowType::Quantity);
        let templates = vec![pipe.clone()];
        let cols = Columns::new(
            headers(&["DWG", "TAG", "TEMPLATE", "QTY", "AREA"]),
            &Mapping::new(),
        )
        .unwrap();

        let negative = cols.row(["D-1", "P-1", "Pipe", "-5", "A1"]);
        let errs = plan_row(&negative, None, &templates).unwrap_err();
        assert_eq!(errs[0].column.as_deref(), Some("QTY"));
        assert_eq!(errs[0].code, "negative_quantity");
        let zero = cols.row(["D-1", "P-1", "Pipe", "0", "A1"]);
        let errs = plan_row(&zero, None, &templates).unwrap_err();
        assert_eq!(
            (errs[0].column.as_deref(), errs[0].code.as_str()),
            (Some("QTY"), "out_of_range")
        );

        let unknown = cols.row(["D-1", "P-1", "Valve", "5", "A1"]);
        let errs = plan_row(&unknown, None, &templates).unwrap_err();
        assert_eq!(
            (errs[0].column.as_deref(), errs[0].code.as_str()),
            (Some("TEMPLATE"), "unknown_template")
        );

        let row = cols.row(["D-1", "P-1", "Pipe", "12.5", "A1"]);
        let Plan::Create(new) = plan_row(&row, None, &templates).unwrap() else {
            panic!("a new row creates")
        };
        assert_eq!(new.kind, "Pipe", "no TYPE column: the template names the kind");

        // The created component, as a drawing reads it back.
        let ctx = WriteCtx::new(
            "ana",
            DeviceId(Uuid::new_v4()),
            OperationId(Uuid::new_v4()),
            OperationKind::Import,
            Timestamp(1_700_000_000_000),
        );
        let mut doc = DrawingDoc::create(
            ProjectId(Uuid::new_v4()),
            DrawingId(Uuid::new_v4()),
            &ctx,
            ActorId::random(),
        )
        .unwrap();
        let id = ComponentId(Uuid::new_v4());
        let plan = Plan::Create(new);
        assert_eq!(doc.apply_import(&ctx, &[(id, &plan, &pipe)]).unwrap(), 1);
        let existing = doc.component(id).unwrap();

        assert_eq!(
            plan_row(&row, Some(&existing), &templates).unwrap(),
            Plan::Unchanged
        );
        let changed = cols.row(["D-1", "P-1", "", "20", "A2"]);
        let Plan::Update(patch) = plan_row(&changed, Some(&existing), &templates).unwrap() else {
            panic!("a changed row updates")
        };
        assert_eq!(patch.quantity_total, Some(Some(20.0)));
        assert_eq!(patch.attributes.unwrap()["area"].as_deref(), Some("A2"));
        assert_eq!(patch.tag, None);

        // A diff since the creation names just the component written.
        let heads = doc.automerge().get_heads();
        let second = ComponentId(Uuid::new_v4());
        let again = Plan::Create(NewComponent {
            tag: "P-2".into(),
            ..match &plan {
                Plan::Create(n) => n.clone(),
                _ => unreachable!(),
            }
        });
        doc.apply_import(&ctx, &[(second, &again, &pipe)]).unwrap();
        assert_eq!(doc.changed_components(&heads), vec![second]);
        assert_eq!(doc.changed_components(&[]).len(), 2);

        let other = template("Valve", WorkflowType::Discrete);
        let moved = cols.row(["D-1", "P-1", "Valve", "20", "A2"]);
        let errs = plan_row(&moved, Some(&existing), &[pipe, other]).unwrap_err();
        assert_eq!(errs[0].code, "template_change");
    }
}
