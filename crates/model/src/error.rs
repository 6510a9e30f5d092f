//! The model's one error type. Every variant carries the context a person
//! needs to fix the request: which field (as a JSON path relative to the
//! request body), which value, which rule.
//!
//! An error from a mutation means nothing was written.

use crate::ids::{ComponentId, DrawingId, OperationId, TemplateId};
use crate::template::WorkflowType;

/// How a caller should treat an error; the daemon maps it to an HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Well-formed but breaks a rule (HTTP 422).
    Invalid,
    /// Conflicts with the current state, e.g. the wrong workflow type for the
    /// milestone or a write to a deleted component (HTTP 409).
    Conflict,
    /// Names something that does not exist (HTTP 404).
    NotFound,
    /// More items than one request may carry (HTTP 413).
    TooLarge,
    /// The stored document itself is damaged or not ours. Never retried:
    /// retrying a corrupt read gives the same corrupt answer.
    Corrupt,
}

/// Errors from validating and applying mutations and from reading documents.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },

    #[error("{field}: {value} is outside {min}..={max}")]
    OutOfRange {
        field: String,
        value: f64,
        min: f64,
        max: f64,
    },

    #[error("{field}: a quantity cannot be negative (got {value}, the result would be {result})")]
    NegativeQuantity { field: String, value: f64, result: f64 },

    #[error("{field}: weight must be greater than 0 (got {weight})")]
    NonPositiveWeight { field: String, weight: f64 },

    #[error("{field}: milestone key {key:?} appears more than once")]
    DuplicateMilestoneKey { field: String, key: String },

    #[error("{field}: template {template:?} is a quantity template, so quantity_total (> 0) is required")]
    MissingQuantityTotal { field: String, template: String },

    #[error("{field}: component {component} has no milestone {key:?} (its milestones: {known})")]
    UnknownMilestone {
        field: String,
        component: ComponentId,
        key: String,
        known: String,
    },

    #[error("{field}: milestone {key:?} belongs to a {workflow} template, which takes {expected}")]
    WrongWorkflow {
        field: String,
        key: String,
        workflow: WorkflowType,
        expected: &'static str,
    },

    #[error("component {component} is deleted; restore it before changing it")]
    ComponentDeleted { component: ComponentId },

    #[error("drawing {drawing} is deleted; restore it before changing it")]
    DrawingDeleted { drawing: DrawingId },

    #[error("{field}: at most {max} items per request (got {got})")]
    TooMany { field: String, max: usize, got: usize },

    #[error("component {id} not found")]
    ComponentNotFound { id: ComponentId },

    #[error("drawing {id} not found")]
    DrawingNotFound { id: DrawingId },

    #[error("{field}: template {id} not found")]
    TemplateNotFound { field: String, id: TemplateId },

    #[error("operation {id} not found in this document")]
    OperationNotFound { id: OperationId },

    #[error("operation {id} is itself an undo; make the change again instead of undoing the undo")]
    UndoOfUndo { id: OperationId },

    #[error("operation {id} ({kind:?}) cannot be undone; delete what it made instead")]
    NotUndoable {
        id: OperationId,
        kind: crate::operation::OperationKind,
    },

    #[error("document is damaged at {at}: {detail}")]
    Corrupt { at: String, detail: String },

    #[error("document schema version {found} is newer than this build understands ({supported})")]
    UnsupportedSchema { found: i64, supported: i64 },
}

/// Matches every variant that names a request field, binding it to `$f`.
macro_rules! with_field {
    ($e:expr, $f:ident => $some:expr, $none:expr) => {
        match $e {
            ModelError::Invalid { field: $f, .. }
            | ModelError::OutOfRange { field: $f, .. }
            | ModelError::NegativeQuantity { field: $f, .. }
            | ModelError::NonPositiveWeight { field: $f, .. }
            | ModelError::DuplicateMilestoneKey { field: $f, .. }
            | ModelError::MissingQuantityTotal { field: $f, .. }
            | ModelError::UnknownMilestone { field: $f, .. }
            | ModelError::WrongWorkflow { field: $f, .. }
            | ModelError::TooMany { field: $f, .. }
            | ModelError::TemplateNotFound { field: $f, .. } => $some,
            _ => $none,
        }
    };
}

impl ModelError {
    /// The stable snake_case code used in API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "invalid",
            Self::OutOfRange { .. } => "out_of_range",
            Self::NegativeQuantity { .. } => "negative_quantity",
            Self::NonPositiveWeight { .. } => "non_positive_weight",
            Self::DuplicateMilestoneKey { .. } => "duplicate_milestone_key",
            Self::MissingQuantityTotal { .. } => "missing_quantity_total",
            Self::UnknownMilestone { .. } => "unknown_milestone",
            Self::WrongWorkflow { .. } => "wrong_workflow",
            Self::ComponentDeleted { .. } => "component_deleted",
            Self::DrawingDeleted { .. } => "drawing_deleted",
            Self::TooMany { .. } => "too_many",
            Self::ComponentNotFound { .. } => "component_not_found",
            Self::DrawingNotFound { .. } => "drawing_not_found",
            Self::TemplateNotFound { .. } => "template_not_found",
            Self::OperationNotFound { .. } => "operation_not_found",
            Self::UndoOfUndo { .. } => "undo_of_undo",
            Self::NotUndoable { .. } => "not_undoable",
            Self::Corrupt { .. } => "corrupt",
            Self::UnsupportedSchema { .. } => "unsupported_schema",
        }
    }

    /// How to treat the error (and which HTTP status the daemon answers).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid { .. }
            | Self::OutOfRange { .. }
            | Self::NegativeQuantity { .. }
            | Self::NonPositiveWeight { .. }
            | Self::DuplicateMilestoneKey { .. }
            | Self::MissingQuantityTotal { .. } => ErrorKind::Invalid,
            Self::WrongWorkflow { .. }
            | Self::ComponentDeleted { .. }
            | Self::DrawingDeleted { .. }
            | Self::UndoOfUndo { .. }
            | Self::NotUndoable { .. } => ErrorKind::Conflict,
            // An unknown milestone key names something that does not exist.
            Self::UnknownMilestone { .. }
            | Self::ComponentNotFound { .. }
            | Self::DrawingNotFound { .. }
            | Self::TemplateNotFound { .. }
            | Self::OperationNotFound { .. } => ErrorKind::NotFound,
            Self::TooMany { .. } => ErrorKind::TooLarge,
            Self::Corrupt { .. } | Self::UnsupportedSchema { .. } => ErrorKind::Corrupt,
        }
    }

    /// The JSON path of the request field at fault, when one field is.
    pub fn field(&self) -> Option<&str> {
        with_field!(self, field => Some(field.as_str()), None)
    }

    /// Prefixes the field path, e.g. `percent` → `updates[3].percent`, so an
    /// error from one item of a batch names the item.
    pub fn within(mut self, prefix: &str) -> Self {
        with_field!(&mut self, field => {
            *field = if field.is_empty() {
                prefix.to_owned()
            } else {
                format!("{prefix}.{field}")
            };
        }, ());
        self
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn corrupt(at: impl Into<String>, detail: impl ToString) -> Self {
        Self::Corrupt {
            at: at.into(),
            detail: detail.to_string(),
        }
    }
}

impl From<automerge::AutomergeError> for ModelError {
    /// Automerge only fails on our own writes when the document does not have
    /// the shape we put there: that is damage, not bad input.
    fn from(e: automerge::AutomergeError) -> Self {
        Self::corrupt("automerge", e)
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
