//! How values are encoded on Automerge so that merges mean what the merge table
//! of docs/design.md says. Everything else in the crate writes through here.
//!
//! * A **register** (a discrete or percentage milestone, a component or
//!   drawing field, a `deleted` mark) is one JSON string under one map key,
//!   written with a single `put`: `{v, ts, u, d, op, p, r, e}`. A write made
//!   after seeing others replaces them all; truly concurrent writes leave
//!   several values under the key. The winner is the highest
//!   `(ts, device, op, encoding)` — a total order, so every replica picks the
//!   same one — and the rest are the register's conflicts. Automerge's own
//!   winner (by op id) is deliberately not used: it ignores time.
//! * `ts` is hybrid-logical: `max(writer's clock, every ts under the key + 1)`,
//!   so a device whose clock lags still orders after what it has seen.
//! * `p` (the value the writer saw) makes history and undo answerable from
//!   the write itself.
//! * A **quantity milestone** is a map of entries, created with the
//!   component (so replicas never race to create it), one entry per
//!   operation and milestone, keyed by operation id: `{delta, ts, u, d, op, p, r, e, undo?}`. Quantity
//!   is the sum of the deltas of entries not undone. Undo re-puts the entry
//!   with an `undo` mark: idempotent, and concurrent undos cannot subtract
//!   twice. (An Automerge Counter would hold integers only, lose increments
//!   when two replicas create it, and double-subtract under concurrent undo.)

use std::cmp::Ordering;

use automerge::transaction::{Transactable, Transaction};
use automerge::{ObjId, ReadDoc, ScalarValue, Value};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::ids::{DeviceId, OperationId};
use crate::operation::WriteCtx;
use crate::time::Timestamp;

/// One write of a register.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Write<T> {
    /// The value written.
    pub v: T,
    /// Hybrid-logical time of the write, in ms.
    pub ts: i64,
    /// The user who wrote it.
    pub u: String,
    /// The device it was written on.
    pub d: DeviceId,
    /// The operation it belongs to.
    pub op: OperationId,
    /// The winning value the writer saw (the field's default when unset).
    pub p: T,
    /// The reason given, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r: Option<String>,
    /// The day the work was done, when recorded late (YYYY-MM-DD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
}

/// The state of a register: its winning write and the concurrent losers.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Register<T> {
    pub winner: Write<T>,
    pub conflicts: Vec<Write<T>>,
}

/// One entry of a quantity milestone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// Milli-units added (negative for a correction downwards).
    pub delta: i64,
    pub ts: i64,
    pub u: String,
    pub d: DeviceId,
    pub op: OperationId,
    /// The quantity (milli-units) the writer saw.
    pub p: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<UndoMark>,
}

/// Who undid a quantity entry, when, and what quantity they saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct UndoMark {
    pub op: OperationId,
    pub ts: i64,
    pub u: String,
    pub d: DeviceId,
    pub p: i64,
}

/// A quantity entry as merged: its key, its (immutable) write, and the undo
/// mark if any replica has undone it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct MergedEntry {
    pub key: String,
    pub entry: Entry,
    pub undo: Option<UndoMark>,
}

/// The next hybrid-logical timestamp: never behind the clock, always after
/// everything seen.
pub(crate) fn next_ts(now: Timestamp, seen: impl IntoIterator<Item = i64>) -> i64 {
    seen.into_iter()
        .map(|t| t.saturating_add(1))
        .fold(now.millis(), i64::max)
}

/// Decodes every concurrent value under `key` as JSON strings of `T`.
fn values<D: ReadDoc, T: DeserializeOwned>(doc: &D, obj: &ObjId, key: &str) -> Result<Vec<(T, String)>> {
    let all = doc.get_all(obj, key)?;
    decode(key, all.iter().map(|(v, _)| v))
}

/// Decodes register values (JSON strings of `T`), keeping each one's text.
fn decode<'v, T: DeserializeOwned>(
    key: &str,
    values: impl IntoIterator<Item = &'v Value<'v>>,
) -> Result<Vec<(T, String)>> {
    values
        .into_iter()
        .map(|value| {
            let raw = match value {
                Value::Scalar(s) => match s.as_ref() {
                    ScalarValue::Str(s) => s.to_string(),
                    other => {
                        return Err(ModelError::corrupt(key, format!("not a string: {other}")));
                    }
                },
                Value::Object(t) => {
                    return Err(ModelError::corrupt(
                        key,
                        format!("an object ({t}) where a value belongs"),
                    ));
                }
            };
            let parsed = serde_json::from_str(&raw).map_err(|e| ModelError::corrupt(key, e))?;
            Ok((parsed, raw))
        })
        .collect()
}

fn order<T>(a: &(Write<T>, String), b: &(Write<T>, String)) -> Ordering {
    (a.0.ts, a.0.d, a.0.op, &a.1).cmp(&(b.0.ts, b.0.d, b.0.op, &b.1))
}

/// Reads a register; `None` when it was never written.
pub(crate) fn read_register<D: ReadDoc, T: DeserializeOwned>(
    doc: &D,
    obj: &ObjId,
    key: &str,
) -> Result<Option<Register<T>>> {
    Ok(merge_register(values(doc, obj, key)?))
}

/// The register the concurrent writes `all` make: the highest wins.
fn merge_register<T>(mut all: Vec<(Write<T>, String)>) -> Option<Register<T>> {
    all.sort_by(|a, b| order(b, a));
    let mut all = all.into_iter().map(|(w, _)| w);
    all.next().map(|winner| Register {
        winner,
        conflicts: all.collect(),
    })
}

/// Writes a register after reading it: the new write replaces every value the
/// writer saw, carries the winner as `p` (or `default` when unset) and a
/// timestamp after all of them. Returns the write.
pub(crate) fn write_register<T>(
    tx: &mut Transaction<'_>,
    obj: &ObjId,
    key: &str,
    ctx: &WriteCtx,
    v: T,
    default: T,
    effective_date: Option<&str>,
) -> Result<Write<T>>
where
    T: Serialize + DeserializeOwned,
{
    let current: Vec<(Write<T>, String)> = values(tx, obj, key)?;
    let ts = next_ts(ctx.now, current.iter().map(|(w, _)| w.ts));
    let p = current
        .into_iter()
        .max_by(order)
        .map(|(w, _)| w.v)
        .unwrap_or(default);
    let write = Write {
        v,
        ts,
        u: ctx.user.clone(),
        d: ctx.device,
        op: ctx.op,
        p,
        r: ctx.reason.clone(),
        e: effective_date.map(str::to_owned),
    };
    tx.put(obj, key, encode(&write))?;
    Ok(write)
}

fn encode<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("register values serialize")
}

/// Reads every entry of a quantity milestone, merged.
pub(crate) fn read_entries<D: ReadDoc>(doc: &D, obj: &ObjId) -> Result<Vec<MergedEntry>> {
    Fields::read(doc, obj)?.entries()
}

/// Reads one entry of a quantity milestone, merged; `None` when unset.
pub(crate) fn read_entry<D: ReadDoc>(doc: &D, obj: &ObjId, key: &str) -> Result<Option<MergedEntry>> {
    let all = doc.get_all(obj, key)?;
    let vals = decode(key, all.iter().map(|(v, _)| v))?;
    Ok(merge_entry(key, vals))
}

/// The entry the concurrent values `vals` of `key` make: the smallest
/// text's write (every value carries the same write; only undo marks
/// differ), undone by the earliest mark any replica made.
fn merge_entry(key: &str, mut vals: Vec<(Entry, String)>) -> Option<MergedEntry> {
    vals.sort_by(|a, b| a.1.cmp(&b.1));
    let (entry, _) = vals.first().cloned()?;
    // Undo marks are never removed (an undo cannot be undone), so an
    // entry any replica has undone is undone; the earliest mark is shown.
    let undo = vals
        .iter()
        .filter_map(|(e, _)| e.undo.clone())
        .min_by(|a, b| (a.ts, a.d, a.op).cmp(&(b.ts, b.d, b.op)));
    Some(MergedEntry {
        key: key.to_owned(),
        entry,
        undo,
    })
}

/// What a view and a write need of a quantity milestone's entries, which
/// grow by one each write: their sum, the latest write among them (for
/// `updated_at`/`updated_by`) and the latest entry's time (a new entry's
/// comes after it). Kept per entries object between writes ([`Sums`]), so
/// a quantity write costs the same on a milestone of 10 entries as on one
/// of 10,000 (reading them all took ~40% of a write to a drawing with a
/// year of shift logs).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct EntriesSummary {
    /// Milli-units: Σ deltas not undone ([`quantity_of`]).
    pub sum: i64,
    /// The latest `ts` of an entry's write (undo marks aside).
    pub max_ts: Option<i64>,
    /// The latest write among the entries and their undo marks: (time,
    /// device, user), the largest such triple.
    pub latest: Option<(i64, DeviceId, String)>,
}

impl EntriesSummary {
    pub fn of(entries: &[MergedEntry]) -> Self {
        let latest = entries
            .iter()
            .flat_map(|e| {
                let write = Some((e.entry.ts, e.entry.d, e.entry.u.clone()));
                let undo = e.undo.as_ref().map(|m| (m.ts, m.d, m.u.clone()));
                write.into_iter().chain(undo)
            })
            .max();
        Self {
            sum: quantity_of(entries),
            max_ts: entries.iter().map(|e| e.entry.ts).max(),
            latest,
        }
    }

    /// Reads every entry of the object `obj` once.
    pub fn read<D: ReadDoc>(doc: &D, obj: &ObjId) -> Result<Self> {
        Ok(Self::of(&read_entries(doc, obj)?))
    }

    /// This summary after a new entry, `entry`, was written.
    fn wrote(&mut self, entry: &Entry) {
        self.sum = self.sum.saturating_add(entry.delta);
        self.max_ts = self.max_ts.max(Some(entry.ts));
        self.latest = self.latest.take().max(Some((entry.ts, entry.d, entry.u.clone())));
    }
}

/// Summaries of quantity entries objects, valid at one state of one
/// document (its owner checks the heads: [`crate::DrawingDoc`]).
pub(crate) type SumMap = std::collections::HashMap<ObjId, EntriesSummary>;

/// Where views and writes find quantity summaries.
pub(crate) enum Sums<'m> {
    /// A read: the summaries kept at the document's heads, if any; a miss
    /// reads the entries.
    Kept(Option<&'m SumMap>),
    /// A write: summaries kept, read on a miss and kept, and changed with
    /// every entry the transaction writes.
    Writing(&'m mut SumMap),
}

impl Sums<'_> {
    /// The summary of the entries object `obj`.
    pub fn get<D: ReadDoc>(&mut self, doc: &D, obj: &ObjId) -> Result<EntriesSummary> {
        match self {
            Sums::Kept(kept) => match kept.and_then(|k| k.get(obj)) {
                Some(s) => Ok(s.clone()),
                None => EntriesSummary::read(doc, obj),
            },
            Sums::Writing(map) => {
                if let Some(s) = map.get(obj) {
                    return Ok(s.clone());
                }
                let s = EntriesSummary::read(doc, obj)?;
                map.insert(obj.clone(), s.clone());
                Ok(s)
            }
        }
    }
}

/// The quantity (milli-units) of a quantity milestone: Σ deltas not undone.
pub(crate) fn quantity_of(entries: &[MergedEntry]) -> i64 {
    entries
        .iter()
        .filter(|e| e.undo.is_none())
        .map(|e| e.entry.delta)
        .fold(0i64, i64::saturating_add)
}

/// Records a quantity write of this operation: a new entry keyed by the
/// operation id, or — when the operation already wrote this milestone (a bulk
/// update listing it twice) — its own entry with the deltas added up. Only
/// this writer ever writes that key, so folding never races. `seen` is the
/// entries' summary before; it is brought up to date in `sums`. Returns the
/// entry.
pub(crate) fn add_entry(
    tx: &mut Transaction<'_>,
    obj: &ObjId,
    ctx: &WriteCtx,
    delta: i64,
    sums: &mut Sums<'_>,
    effective_date: Option<&str>,
) -> Result<Entry> {
    let key = ctx.op.to_string();
    let seen = sums.get(tx, obj)?;
    let ts = next_ts(ctx.now, seen.max_ts);
    let own = read_entry(tx, obj, &key)?;
    let entry = match &own {
        Some(own) => Entry {
            delta: own.entry.delta.saturating_add(delta),
            ts,
            e: effective_date.map(str::to_owned).or_else(|| own.entry.e.clone()),
            ..own.entry.clone()
        },
        None => Entry {
            delta,
            ts,
            u: ctx.user.clone(),
            d: ctx.device,
            op: ctx.op,
            p: seen.sum,
            r: ctx.reason.clone(),
            e: effective_date.map(str::to_owned),
            undo: None,
        },
    };
    tx.put(obj, key.as_str(), encode(&entry))?;
    if let Sums::Writing(map) = sums {
        if own.is_some() {
            // Rare (a bulk listing the milestone twice): read again when
            // next asked, rather than reason about the entry it replaced.
            map.remove(obj);
        } else {
            let mut after = seen;
            after.wrote(&entry);
            map.insert(obj.clone(), after);
        }
    }
    Ok(entry)
}

/// Marks an entry undone by this operation (no-op when already undone).
/// Returns whether it changed anything.
pub(crate) fn mark_undone(
    tx: &mut Transaction<'_>,
    obj: &ObjId,
    ctx: &WriteCtx,
    target: &MergedEntry,
    quantity_seen: i64,
) -> Result<bool> {
    if target.undo.is_some() {
        return Ok(false);
    }
    let mut entry = target.entry.clone();
    entry.undo = Some(UndoMark {
        op: ctx.op,
        ts: next_ts(ctx.now, [entry.ts]),
        u: ctx.user.clone(),
        d: ctx.device,
        p: quantity_seen,
    });
    tx.put(obj, target.key.as_str(), encode(&entry))?;
    Ok(true)
}

/// Quantities travel as numbers in the API and as integer milli-units in
/// documents, so sums are exact.
pub(crate) const MILLI: f64 = 1000.0;

/// Largest quantity magnitude accepted: far above any real count, far below
/// where i64 milli-units could overflow when summed.
pub(crate) const MAX_QUANTITY: f64 = 1e12;

/// Converts an API quantity to milli-units, checking it is a finite number
/// within ±[`MAX_QUANTITY`].
pub(crate) fn to_milli(field: &str, value: f64) -> Result<i64> {
    if !value.is_finite() || value.abs() > MAX_QUANTITY {
        return Err(ModelError::OutOfRange {
            field: field.to_owned(),
            value,
            min: -MAX_QUANTITY,
            max: MAX_QUANTITY,
        });
    }
    Ok((value * MILLI).round() as i64)
}

/// Converts milli-units back to an API number.
pub(crate) fn from_milli(m: i64) -> f64 {
    m as f64 / MILLI
}

/// Reads a plain (non-register) string stored once at creation.
pub(crate) fn read_str<D: ReadDoc>(doc: &D, obj: &ObjId, key: &str) -> Result<String> {
    match doc.get(obj, key)? {
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            ScalarValue::Str(s) => Ok(s.to_string()),
            other => Err(ModelError::corrupt(key, format!("not a string: {other}"))),
        },
        _ => Err(ModelError::corrupt(key, "missing")),
    }
}

/// The id of the map object under `key`.
pub(crate) fn read_map<D: ReadDoc>(doc: &D, obj: &ObjId, key: &str) -> Result<Option<ObjId>> {
    match doc.get(obj, key)? {
        Some((Value::Object(automerge::ObjType::Map), id)) => Ok(Some(id)),
        Some(_) => Err(ModelError::corrupt(key, "not a map")),
        None => Ok(None),
    }
}

/// Like [`read_map`] but the map must exist.
pub(crate) fn require_map<D: ReadDoc>(doc: &D, obj: &ObjId, key: &str) -> Result<ObjId> {
    read_map(doc, obj, key)?.ok_or_else(|| ModelError::corrupt(key, "missing map"))
}

/// One map object's keys and values, read in one pass.
///
/// Why: reading a component key by key (`get`/`get_all` per key, each a
/// seek through the document's op columns) cost ~7.5 ms per drawing of 50
/// components on the 100,000-component bench store, more than loading the
/// drawing; walking each object once with `map_range` cost ~1 ms. A key
/// with concurrent values (Automerge flags it) is read again with
/// `get_all`, which only conflicts pay for.
pub(crate) struct Fields {
    /// In key order.
    items: Vec<Field>,
}

/// One key of a [`Fields`].
struct Field {
    key: String,
    /// Automerge's winner: what `get` returns (plain fields, nested maps).
    winner: Value<'static>,
    /// The id of the object `winner` is, when it is one.
    object: Option<ObjId>,
    /// Every concurrent value, when there are several (registers merge
    /// them); `None` when `winner` is the only one.
    concurrent: Option<Vec<Value<'static>>>,
}

impl Fields {
    /// Reads every key of the map `obj`.
    pub fn read<D: ReadDoc>(doc: &D, obj: &ObjId) -> Result<Self> {
        let mut items = Vec::new();
        for item in doc.map_range(obj, ..) {
            let object = matches!(item.value, automerge::ValueRef::Object(_)).then(|| item.id());
            let concurrent = if item.conflict {
                Some(
                    doc.get_all(obj, item.key.as_ref())?
                        .into_iter()
                        .map(|(v, _)| v.into_owned())
                        .collect(),
                )
            } else {
                None
            };
            items.push(Field {
                key: item.key.into_owned(),
                winner: item.value.into_value(),
                object,
                concurrent,
            });
        }
        // `map_range` yields keys in order; sorting again is cheap and makes
        // the binary search below independent of that.
        items.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Self { items })
    }

    fn field(&self, key: &str) -> Option<&Field> {
        self.items
            .binary_search_by(|f| f.key.as_str().cmp(key))
            .ok()
            .map(|i| &self.items[i])
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.items.iter().map(|f| f.key.as_str())
    }

    /// Reads the register `key`; `None` when it was never written.
    pub fn register<T: DeserializeOwned>(&self, key: &str) -> Result<Option<Register<T>>> {
        let Some(f) = self.field(key) else {
            return Ok(None);
        };
        let all = match &f.concurrent {
            Some(all) => decode(key, all)?,
            None => decode(key, [&f.winner])?,
        };
        Ok(merge_register(all))
    }

    /// The winning value of the register `key`, or `default` when unset.
    pub fn value<T: DeserializeOwned>(&self, key: &str, default: T) -> Result<T> {
        Ok(self.register::<T>(key)?.map_or(default, |r| r.winner.v))
    }

    /// The id of the map object under `key` (see [`read_map`]).
    pub fn map(&self, key: &str) -> Result<Option<ObjId>> {
        match self.field(key) {
            Some(Field {
                winner: Value::Object(automerge::ObjType::Map),
                object: Some(id),
                ..
            }) => Ok(Some(id.clone())),
            Some(_) => Err(ModelError::corrupt(key, "not a map")),
            None => Ok(None),
        }
    }

    /// Like [`Fields::map`] but the map must exist.
    pub fn require_map(&self, key: &str) -> Result<ObjId> {
        self.map(key)?
            .ok_or_else(|| ModelError::corrupt(key, "missing map"))
    }

    /// A plain string stored once at creation (see [`read_str`]).
    pub fn str(&self, key: &str) -> Result<String> {
        match self.field(key).map(|f| &f.winner) {
            Some(Value::Scalar(s)) => match s.as_ref() {
                ScalarValue::Str(s) => Ok(s.to_string()),
                other => Err(ModelError::corrupt(key, format!("not a string: {other}"))),
            },
            _ => Err(ModelError::corrupt(key, "missing")),
        }
    }

    /// A plain integer stored once at creation.
    pub fn int(&self, key: &str) -> Result<i64> {
        match self.field(key).map(|f| &f.winner) {
            Some(Value::Scalar(s)) => match s.as_ref() {
                ScalarValue::Int(i) => Ok(*i),
                other => Err(ModelError::corrupt(key, format!("not an integer: {other}"))),
            },
            _ => Err(ModelError::corrupt(key, "missing")),
        }
    }

    /// These fields as the entries of a quantity milestone, merged.
    pub fn entries(&self) -> Result<Vec<MergedEntry>> {
        let mut out = Vec::new();
        for f in &self.items {
            let vals: Vec<(Entry, String)> = match &f.concurrent {
                Some(all) => decode(&f.key, all)?,
                None => decode(&f.key, [&f.winner])?,
            };
            out.extend(merge_entry(&f.key, vals));
        }
        Ok(out)
    }
}

/// Reads the registers of one object, remembering the latest write seen so
/// the object's `updated_at` / `updated_by` come out of the same pass.
pub(crate) struct FieldReader<'f> {
    fields: &'f Fields,
    latest: Option<(i64, String)>,
}

impl<'f> FieldReader<'f> {
    pub fn new(fields: &'f Fields) -> Self {
        Self { fields, latest: None }
    }

    /// The winning value of the register `key`, or `default` when unset.
    pub fn get<T: DeserializeOwned>(&mut self, key: &str, default: T) -> Result<T> {
        Ok(match self.fields.register::<T>(key)? {
            Some(reg) => {
                self.saw(reg.winner.ts, &reg.winner.u);
                reg.winner.v
            }
            None => default,
        })
    }

    /// Records a write seen elsewhere (a nested register, an entry).
    pub fn saw(&mut self, ts: i64, user: &str) {
        if self.latest.as_ref().is_none_or(|(t, _)| ts > *t) {
            self.latest = Some((ts, user.to_owned()));
        }
    }

    /// The latest write seen: (time, user), or the fallback time and no user.
    pub fn latest(&self, fallback: Timestamp) -> (Timestamp, String) {
        match &self.latest {
            Some((ts, u)) => (Timestamp(*ts), u.clone()),
            None => (fallback, String::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_ts_is_never_behind_the_clock_and_always_after_what_was_seen() {
        assert_eq!(next_ts(Timestamp(100), []), 100);
        assert_eq!(next_ts(Timestamp(100), [50, 70]), 100);
        assert_eq!(next_ts(Timestamp(100), [100]), 101);
        assert_eq!(next_ts(Timestamp(100), [5_000, 20]), 5_001);
        assert_eq!(next_ts(Timestamp(0), [i64::MAX]), i64::MAX);
    }

    #[test]
    fn milli_units_round_trip_and_reject_nonsense() {
        assert_eq!(to_milli("q", 12.5), Ok(12_500));
        assert_eq!(to_milli("q", 0.0004), Ok(0));
        assert_eq!(from_milli(12_500), 12.5);
        for bad in [f64::NAN, f64::INFINITY, 2e12] {
            assert_eq!(to_milli("q", bad).unwrap_err().code(), "out_of_range");
        }
    }
}
