//! Bulk milestone updates: up to [`MAX_BULK_UPDATES`] updates in one
//! operation, with a result per update, `validate_only` and `atomic`.
//!
//! Every update runs inside one open transaction per drawing document, in
//! request order, so later updates see earlier ones (two deltas on one
//! milestone add up) and `before`/`after` are exact. At the end the
//! transactions are all committed — one Automerge commit per document, all
//! with the same operation id — or all rolled back (`validate_only`, or
//! `atomic` with any failure). The caller stores the committed documents in
//! one batch.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::drawing::{self, DrawingDoc, MilestoneUpdate, MilestoneView};
use crate::error::{ModelError, Result};
use crate::ids::{ComponentId, OperationId};
use crate::operation::WriteCtx;

/// The most updates one bulk request may carry.
pub const MAX_BULK_UPDATES: usize = 10_000;

/// How to apply a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkOptions {
    /// Check and report, write nothing.
    #[serde(default)]
    pub validate_only: bool,
    /// All or nothing: any invalid update means nothing is written.
    #[serde(default)]
    pub atomic: bool,
}

/// An error as shown in a batch result.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl From<&ModelError> for ErrorBody {
    fn from(e: &ModelError) -> Self {
        Self {
            code: e.code().to_owned(),
            message: e.to_string(),
            field: e.field().map(str::to_owned),
        }
    }
}

/// Whether one update of a batch is (or would be) applied.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    Ok,
    Error,
}

/// The result of one update of a batch.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ItemResult {
    pub index: usize,
    pub status: ItemStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<MilestoneView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<MilestoneView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// The answer to a bulk update.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BulkOutcome {
    /// The operation's id when anything was written, else null.
    pub operation_id: Option<OperationId>,
    /// Updates written (0 for `validate_only` and for a failed atomic batch).
    pub applied: usize,
    pub failed: usize,
    pub validate_only: bool,
    pub results: Vec<ItemResult>,
}

impl BulkOutcome {
    /// Whether the batch was atomic and refused as a whole (HTTP 422).
    pub fn refused_atomic(&self, options: &BulkOptions) -> bool {
        options.atomic && self.failed > 0
    }
}

/// Applies `updates` to the drawing documents that hold their components.
///
/// `docs` are the documents the caller found the components in; an update
/// whose component is in none of them fails with `component_not_found`.
/// Returns `Err` only for a batch over the size limit (nothing examined) or a
/// damaged document (nothing written).
pub fn apply_bulk(
    docs: &mut [&mut DrawingDoc],
    updates: &[MilestoneUpdate],
    options: &BulkOptions,
    ctx: &WriteCtx,
) -> Result<BulkOutcome> {
    if updates.len() > MAX_BULK_UPDATES {
        return Err(ModelError::TooMany {
            field: "updates".into(),
            max: MAX_BULK_UPDATES,
            got: updates.len(),
        });
    }
    let mut home: HashMap<ComponentId, usize> = HashMap::new();
    for (i, doc) in docs.iter().enumerate() {
        for id in doc.component_ids()? {
            home.insert(id, i);
        }
    }
    let mut txs: Vec<_> = docs.iter_mut().map(|d| d.automerge_mut().transaction()).collect();
    let mut counts = vec![0usize; txs.len()];
    let mut results = Vec::with_capacity(updates.len());
    let mut failed = 0;
    // Each document keeps its own copy of a template; none changes here.
    let mut templates: Vec<drawing::Templates> = txs.iter().map(|_| Default::default()).collect();
    for (index, u) in updates.iter().enumerate() {
        let outcome = match home.get(&u.component_id) {
            Some(&i) => {
                drawing::apply_update(&mut txs[i], ctx, u, &mut templates[i]).inspect(|_| counts[i] += 1)
            }
            None => Err(ModelError::ComponentNotFound { id: u.component_id }),
        };
        results.push(match outcome {
            Ok((before, after)) => ItemResult {
                index,
                status: ItemStatus::Ok,
                before: Some(before),
                after: Some(after),
                error: None,
            },
            Err(e @ (ModelError::Corrupt { .. } | ModelError::UnsupportedSchema { .. })) => {
                // Dropping the transactions rolls every one of them back.
                return Err(e);
            }
            Err(e) => {
                failed += 1;
                let e = e.within(&format!("updates[{index}]"));
                ItemResult {
                    index,
                    status: ItemStatus::Error,
                    before: None,
                    after: None,
                    error: Some(ErrorBody::from(&e)),
                }
            }
        });
    }
    let refused = options.atomic && failed > 0;
    let write = !(options.validate_only || refused);
    let mut applied = 0;
    for (tx, count) in txs.into_iter().zip(counts) {
        if write && count > 0 {
            tx.commit_with(ctx.commit_options(count));
            applied += count;
        } else {
            tx.rollback();
        }
    }
    Ok(BulkOutcome {
        operation_id: (applied > 0).then_some(ctx.op),
        applied,
        failed,
        validate_only: options.validate_only,
        results,
    })
}
