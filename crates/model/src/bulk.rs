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

use crate::crdt;
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

/// How a batch's independent per-document work is run: [`InOrder`] here
/// and in tests, on threads in the daemon (`sitesync_sync::workers`). The
/// model never starts a thread itself, so it stays a pure function of its
/// inputs; `map` must return one result per item, in the items' order, and
/// the outcome of a batch is then the same however the work was spread.
pub trait Spread: Sync {
    /// `f` over every item; the results in the items' order.
    fn map<T: Send, R: Send>(&self, items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R>;
}

/// Runs every item in turn on the calling thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct InOrder;

impl Spread for InOrder {
    fn map<T: Send, R: Send>(&self, items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
        items.into_iter().map(f).collect()
    }
}

/// One document's share of a batch: its place in `docs`, its open
/// transaction, the quantity summaries the transaction brought forward, and,
/// per update it holds, the update's index in the request and what applying
/// it gave.
type DocPart<'d> = (
    usize,
    automerge::transaction::Transaction<'d>,
    crdt::SumMap,
    Vec<(usize, Result<(MilestoneView, MilestoneView)>)>,
);

/// Applies `updates` to the drawing documents that hold their components.
///
/// `docs` are the documents the caller found the components in; an update
/// whose component is in none of them fails with `component_not_found`.
/// Each document's updates run in request order inside its own transaction,
/// and documents are independent, so `spread` may run them at once (a bulk
/// of 10,000 touches ~500 drawings). Returns `Err` only for a batch over
/// the size limit (nothing examined) or a damaged document (nothing
/// written; the first damage in request order is reported).
pub fn apply_bulk(
    docs: &mut [&mut DrawingDoc],
    updates: &[MilestoneUpdate],
    options: &BulkOptions,
    ctx: &WriteCtx,
    spread: &impl Spread,
) -> Result<BulkOutcome> {
    if updates.len() > MAX_BULK_UPDATES {
        return Err(ModelError::TooMany {
            field: "updates".into(),
            max: MAX_BULK_UPDATES,
            got: updates.len(),
        });
    }
    let ids = spread.map(docs.iter().map(|d| &**d).collect(), DrawingDoc::component_ids);
    let mut home: HashMap<ComponentId, usize> = HashMap::new();
    for (i, ids) in ids.into_iter().enumerate() {
        for id in ids? {
            home.insert(id, i);
        }
    }
    let mut mine: Vec<Vec<usize>> = vec![Vec::new(); docs.len()];
    let mut outcomes: Vec<(usize, Result<(MilestoneView, MilestoneView)>)> = Vec::new();
    for (index, u) in updates.iter().enumerate() {
        match home.get(&u.component_id) {
            Some(&i) => mine[i].push(index),
            None => outcomes.push((index, Err(ModelError::ComponentNotFound { id: u.component_id }))),
        }
    }
    let work: Vec<(usize, &mut DrawingDoc, Vec<usize>)> = docs
        .iter_mut()
        .zip(mine)
        .enumerate()
        .filter(|(_, (_, mine))| !mine.is_empty())
        .map(|(i, (d, mine))| (i, &mut **d, mine))
        .collect();
    let parts: Vec<DocPart<'_>> = spread.map(work, |(i, doc, mine)| {
        let mut sums = doc.take_sums();
        let mut tx = doc.automerge_mut().transaction();
        // Each document keeps its own copy of a template; none changes here.
        let mut templates = drawing::Templates::default();
        let mut results = Vec::with_capacity(mine.len());
        for index in mine {
            let mut writing = crdt::Sums::Writing(&mut sums);
            let outcome = drawing::apply_update(&mut tx, ctx, &updates[index], &mut templates, &mut writing);
            let damaged = matches!(
                outcome,
                Err(ModelError::Corrupt { .. } | ModelError::UnsupportedSchema { .. })
            );
            results.push((index, outcome));
            if damaged {
                break;
            }
        }
        (i, tx, sums, results)
    });
    let mut txs = Vec::with_capacity(parts.len());
    for (i, tx, sums, results) in parts {
        let count = results.iter().filter(|(_, r)| r.is_ok()).count();
        txs.push((i, tx, sums, count));
        outcomes.extend(results);
    }
    outcomes.sort_by_key(|(index, _)| *index);
    let mut results = Vec::with_capacity(outcomes.len());
    let mut failed = 0;
    for (index, outcome) in outcomes {
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
    let mut commits = Vec::with_capacity(txs.len());
    // Summaries brought forward, for the documents whose writes commit.
    let mut kept = Vec::with_capacity(txs.len());
    for (i, tx, sums, count) in txs {
        if write && count > 0 {
            applied += count;
            commits.push((tx, count));
            kept.push((i, sums));
        } else {
            // Rolled back: the document is as it was, the summaries are not.
            tx.rollback();
        }
    }
    // A commit hashes its change: worth spreading too.
    spread.map(commits, |(tx, count)| {
        tx.commit_with(ctx.commit_options(count));
    });
    for (i, sums) in kept {
        docs[i].keep_sums(sums);
    }
    Ok(BulkOutcome {
        operation_id: (applied > 0).then_some(ctx.op),
        applied,
        failed,
        validate_only: options.validate_only,
        results,
    })
}
