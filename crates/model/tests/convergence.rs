//! Convergence: three replicas apply random mutations with skewed clocks and
//! exchange changes in random orders and groupings — whole-document merge,
//! raw incremental changes, and Automerge's sync protocol. Afterwards:
//!
//! * every replica has identical heads and identical derived views
//!   (components with conflicts, rollups, histories, operations);
//! * the quantity of every quantity milestone is the sum of every delta any
//!   replica recorded, less the deltas of undone operations (the model);
//! * no acknowledged write disappears: each is in its component's history on
//!   every replica, and a milestone's current value is its latest write or
//!   one of its listed conflicts.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use proptest::prelude::*;
use sitesync_model::automerge::sync::{State, SyncDoc};
use sitesync_model::history::component_history;
use sitesync_model::{
    BulkOptions, ComponentId, ComponentPatch, DrawingDoc, GroupBy, InOrder, MilestoneValue as V, OperationId,
    OperationKind as K, apply_bulk, operations, rollup,
};

const REPLICAS: usize = 3;

/// The components every replica starts with: (id, template, milestone keys).
fn components() -> Vec<(ComponentId, sitesync_model::TemplateId, &'static [&'static str])> {
    vec![
        (
            ComponentId::from_u128(1001),
            DISCRETE,
            &["receive", "erect", "weld"],
        ),
        (
            ComponentId::from_u128(1002),
            DISCRETE,
            &["receive", "erect", "weld"],
        ),
        (ComponentId::from_u128(1003), PERCENT, &["prime", "finish"]),
        (ComponentId::from_u128(1004), QUANTITY, &["install", "test"]),
        (ComponentId::from_u128(1005), QUANTITY, &["install", "test"]),
    ]
}

#[derive(Clone, Debug)]
enum Edit {
    /// A milestone write; the value is interpreted by the component's workflow.
    Milestone {
        comp: usize,
        key: usize,
        value: i64,
        absolute: bool,
    },
    Delete {
        comp: usize,
    },
    Restore {
        comp: usize,
    },
    Tag {
        comp: usize,
        n: u8,
    },
    Attribute {
        comp: usize,
        name: usize,
        value: Option<u8>,
    },
    /// Undo the n-th most recent operation this replica knows.
    Undo {
        nth: usize,
    },
}

#[derive(Clone, Debug)]
enum Step {
    Edit {
        replica: usize,
        edit: Edit,
        clock_step: i64,
    },
    Merge {
        from: usize,
        to: usize,
    },
    Changes {
        from: usize,
        to: usize,
    },
    Sync {
        a: usize,
        b: usize,
    },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        6 => (0..5usize, 0..3usize, -10i64..60, any::<bool>())
            .prop_map(|(comp, key, value, absolute)| Edit::Milestone { comp, key, value, absolute }),
        1 => (0..5usize).prop_map(|comp| Edit::Delete { comp }),
        1 => (0..5usize).prop_map(|comp| Edit::Restore { comp }),
        1 => (0..5usize, any::<u8>()).prop_map(|(comp, n)| Edit::Tag { comp, n }),
        1 => (0..5usize, 0..2usize, proptest::option::of(any::<u8>()))
            .prop_map(|(comp, name, value)| Edit::Attribute { comp, name, value }),
        1 => (0..6usize).prop_map(|nth| Edit::Undo { nth }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let r = || 0..REPLICAS;
    prop_oneof![
        8 => (r(), edit(), -2_000i64..5_000).prop_map(|(replica, edit, clock_step)| Step::Edit { replica, edit, clock_step }),
        1 => (r(), r()).prop_map(|(from, to)| Step::Merge { from, to }),
        1 => (r(), r()).prop_map(|(from, to)| Step::Changes { from, to }),
        1 => (r(), r()).prop_map(|(a, b)| Step::Sync { a, b }),
    ]
}

/// What the test knows independently of the documents.
#[derive(Default)]
struct Model {
    /// Every acknowledged quantity delta: (component, milestone) → [(op, milli)].
    deltas: BTreeMap<(ComponentId, String), Vec<(OperationId, i64)>>,
    /// Acknowledged register writes of milestones: (component, milestone, op).
    writes: Vec<(ComponentId, String, OperationId)>,
    /// Operations some replica undid.
    undone: BTreeSet<OperationId>,
}

struct World {
    docs: Vec<DrawingDoc>,
    writers: Vec<Writer>,
    sync: BTreeMap<(usize, usize), State>,
    model: Model,
}

impl World {
    fn new(clock_offsets: [i64; REPLICAS]) -> Self {
        let mut f = Fixture::new();
        for (i, (_, t, _)) in components().into_iter().enumerate() {
            f.component(i as u128 + 1, t);
        }
        let docs = (0..REPLICAS).map(|i| replica(&f.drawing, 10 + i as u8)).collect();
        let writers = (0..REPLICAS)
            .map(|i| {
                let mut w = Writer::new(["ana", "ben", "cy"][i], 10 + i as u128);
                w.now += clock_offsets[i];
                w
            })
            .collect();
        Self {
            docs,
            writers,
            sync: BTreeMap::new(),
            model: Model::default(),
        }
    }

    fn edit(&mut self, r: usize, edit: Edit, clock_step: i64) {
        let w = &mut self.writers[r];
        w.now += clock_step; // clocks may even step backwards
        let doc = &mut self.docs[r];
        let comps = components();
        match edit {
            Edit::Milestone {
                comp,
                key,
                value,
                absolute,
            } => {
                let (id, template, keys) = comps[comp];
                let key = keys[key % keys.len()].to_string();
                let v = match template {
                    t if t == DISCRETE => V::Completed(value % 2 == 0),
                    t if t == PERCENT => V::Percent(value.clamp(0, 100) as f64),
                    _ if absolute => V::Quantity(value as f64 / 4.0),
                    _ => V::QuantityDelta(value as f64 / 4.0),
                };
                let kind = if comp % 2 == 0 {
                    K::BulkUpdate
                } else {
                    K::MilestoneUpdate
                };
                let ctx = w.ctx(kind);
                // Three ways to write: on its own, in a bulk, and listed
                // twice in a bulk (a quantity entry then adds up its deltas).
                let milestone = |c: &sitesync_model::Component| {
                    c.milestones.iter().find(|m| m.key == key).cloned().unwrap()
                };
                let written = match value.rem_euclid(3) {
                    0 => {
                        let before = doc.component(id).map(|c| milestone(&c));
                        doc.update_milestone(&ctx, &update(id, &key, v))
                            .ok()
                            .map(|c| (before.unwrap(), milestone(&c)))
                    }
                    n => {
                        let out = apply_bulk(
                            &mut [&mut *doc],
                            &vec![update(id, &key, v); n as usize],
                            &BulkOptions::default(),
                            &ctx,
                            &InOrder,
                        )
                        .unwrap();
                        // The updates that applied, in order (a later one
                        // may fail where the first did not).
                        let ok: Vec<_> = out.results.iter().filter(|r| r.after.is_some()).collect();
                        match (ok.first(), ok.last()) {
                            (Some(first), Some(last)) => {
                                Some((first.before.clone().unwrap(), last.after.clone().unwrap()))
                            }
                            _ => None,
                        }
                    }
                };
                if let Some((before, after)) = written {
                    match v {
                        V::Quantity(_) | V::QuantityDelta(_) => {
                            let before = before.quantity.unwrap();
                            let after = after.quantity.unwrap();
                            let milli = ((after - before) * 1000.0).round() as i64;
                            self.model
                                .deltas
                                .entry((id, key))
                                .or_default()
                                .push((ctx.op, milli));
                        }
                        _ => self.model.writes.push((id, key, ctx.op)),
                    }
                }
            }
            Edit::Delete { comp } => {
                let _ = doc.set_component_deleted(&w.ctx(K::ComponentDelete), comps[comp].0, true);
            }
            Edit::Restore { comp } => {
                let _ = doc.set_component_deleted(&w.ctx(K::ComponentRestore), comps[comp].0, false);
            }
            Edit::Tag { comp, n } => {
                let patch = ComponentPatch {
                    tag: Some(format!("T-{n}")),
                    ..Default::default()
                };
                let _ = doc.update_component(&w.ctx(K::ComponentUpdate), comps[comp].0, &patch);
            }
            Edit::Attribute { comp, name, value } => {
                let name = ["area", "spec"][name].to_string();
                let patch = ComponentPatch {
                    attributes: Some([(name, value.map(|v| format!("v{v}")))].into()),
                    ..Default::default()
                };
                let _ = doc.update_component(&w.ctx(K::ComponentUpdate), comps[comp].0, &patch);
            }
            Edit::Undo { nth } => {
                let ops = operations([doc.automerge()]);
                let candidates: Vec<_> = ops
                    .iter()
                    .filter(|o| {
                        !matches!(
                            o.kind,
                            K::Undo
                                | K::ProjectCreate
                                | K::TemplateCreate
                                | K::DrawingCreate
                                | K::ComponentCreate
                        )
                    })
                    .collect();
                if let Some(op) = candidates.get(nth) {
                    let target = op.id;
                    doc.undo(&w.ctx(K::Undo), target).unwrap();
                    self.model.undone.insert(target);
                }
            }
        }
        // Views read through the quantity summaries a replica keeps between
        // its writes are the views read from the entries themselves.
        let doc = &self.docs[r];
        let unkept = DrawingDoc::from_automerge(doc.automerge().clone()).unwrap();
        assert_eq!(
            doc.components().unwrap(),
            unkept.components().unwrap(),
            "views from kept quantity summaries"
        );
    }

    fn merge(&mut self, from: usize, to: usize) {
        if from == to {
            return;
        }
        let seen = Seen::of(&self.docs[to]);
        let mut src = self.docs[from].automerge().clone();
        self.docs[to].automerge_mut().merge(&mut src).unwrap();
        seen.assert_changes_named(&self.docs[to]);
    }

    /// Ships only the changes `to` lacks, as raw bytes, like a store-and-forward hop.
    fn changes(&mut self, from: usize, to: usize) {
        if from == to {
            return;
        }
        let have = self.docs[to].automerge().get_heads();
        let bytes = self.docs[from].automerge().save_after(&have);
        let seen = Seen::of(&self.docs[to]);
        self.docs[to].automerge_mut().load_incremental(&bytes).unwrap();
        seen.assert_changes_named(&self.docs[to]);
    }

    /// Runs the sync protocol with per-pair states kept across calls (as a
    /// peer connection would), sometimes only partially: a "cut" connection.
    fn sync(&mut self, a: usize, b: usize, rounds: usize) {
        if a == b {
            return;
        }
        let mut sa = self.sync.remove(&(a, b)).unwrap_or_default();
        let mut sb = self.sync.remove(&(b, a)).unwrap_or_default();
        for _ in 0..rounds {
            let ma = self.docs[a].automerge().generate_sync_message(&mut sa);
            let mb = self.docs[b].automerge().generate_sync_message(&mut sb);
            if ma.is_none() && mb.is_none() {
                break;
            }
            if let Some(m) = ma {
                let seen = Seen::of(&self.docs[b]);
                self.docs[b]
                    .automerge_mut()
                    .receive_sync_message(&mut sb, m)
                    .unwrap();
                seen.assert_changes_named(&self.docs[b]);
            }
            if let Some(m) = mb {
                let seen = Seen::of(&self.docs[a]);
                self.docs[a]
                    .automerge_mut()
                    .receive_sync_message(&mut sa, m)
                    .unwrap();
                seen.assert_changes_named(&self.docs[a]);
            }
        }
        self.sync.insert((a, b), sa);
        self.sync.insert((b, a), sb);
    }

    fn heal(&mut self) {
        // A ring of full syncs, twice round, reaches everyone.
        for _ in 0..2 {
            for a in 0..REPLICAS {
                self.sync(a, (a + 1) % REPLICAS, 100);
            }
        }
    }
}

/// A replica's heads and views before it receives changes. The daemon keeps
/// its index current by re-reading only the components
/// `changed_components` names after a sync, so every component whose view
/// the changes altered (winner, conflicts, status...) must be named.
struct Seen {
    heads: Vec<sitesync_model::automerge::ChangeHash>,
    views: BTreeMap<ComponentId, sitesync_model::Component>,
}

impl Seen {
    fn of(doc: &DrawingDoc) -> Self {
        Self {
            heads: doc.automerge().get_heads(),
            views: doc.components().unwrap().into_iter().map(|c| (c.id, c)).collect(),
        }
    }

    fn assert_changes_named(&self, doc: &DrawingDoc) {
        let named: BTreeSet<_> = doc.changed_components(&self.heads).into_iter().collect();
        for view in doc.components().unwrap() {
            if self.views.get(&view.id) != Some(&view) {
                assert!(
                    named.contains(&view.id),
                    "{} changed but was not named: before {:?}, after {view:?}",
                    view.id,
                    self.views.get(&view.id)
                );
            }
        }
    }
}

fn check(world: &World) -> Result<(), TestCaseError> {
    let first = &world.docs[0];
    let comps = first.components().unwrap();
    let heads = first.automerge().get_heads();
    let ops = operations([first.automerge()]);
    let progress = rollup(comps.iter().map(|c| (c, None)), Some(GroupBy::Kind));
    let histories: Vec<_> = components()
        .iter()
        .map(|(id, ..)| component_history(first.automerge(), *id).unwrap())
        .collect();
    for (i, doc) in world.docs.iter().enumerate().skip(1) {
        prop_assert_eq!(&doc.automerge().get_heads(), &heads, "heads of replica {}", i);
        prop_assert_eq!(&doc.components().unwrap(), &comps, "components of replica {}", i);
        prop_assert_eq!(
            &operations([doc.automerge()]),
            &ops,
            "operations of replica {}",
            i
        );
        let p = rollup(
            doc.components().unwrap().iter().map(|c| (c, None)),
            Some(GroupBy::Kind),
        );
        prop_assert_eq!(&p, &progress);
        for (h, (id, ..)) in histories.iter().zip(components()) {
            prop_assert_eq!(
                &component_history(doc.automerge(), id).unwrap(),
                h,
                "history of {}",
                id
            );
        }
    }
    // The sum rule.
    for c in &comps {
        for m in c.milestones.iter().filter(|m| m.quantity.is_some()) {
            let expected: i64 = world
                .model
                .deltas
                .get(&(c.id, m.key.clone()))
                .into_iter()
                .flatten()
                .filter(|(op, _)| !world.model.undone.contains(op))
                .map(|(_, d)| d)
                .sum();
            prop_assert_eq!(
                (m.quantity.unwrap() * 1000.0).round() as i64,
                expected,
                "quantity of {} {}",
                c.tag,
                m.key
            );
        }
    }
    // Nothing acknowledged disappears.
    for (id, key, op) in &world.model.writes {
        let idx = components().iter().position(|(c, ..)| c == id).unwrap();
        prop_assert!(
            histories[idx]
                .iter()
                .any(|h| h.operation_id == *op && h.milestone.as_deref() == Some(key.as_str())),
            "write {} of {} {} missing from history",
            op,
            id,
            key
        );
    }
    for c in &comps {
        let history = &histories[components().iter().position(|x| x.0 == c.id).unwrap()];
        for m in &c.milestones {
            if m.quantity.is_some() || m.updated_at.is_none() {
                continue;
            }
            // The shown value is the latest write's or (when concurrent) listed.
            let current = m
                .completed
                .map(serde_json::Value::from)
                .or(m.percent.map(serde_json::Value::from))
                .unwrap();
            let latest = history
                .iter()
                .find(|r| r.milestone.as_deref() == Some(m.key.as_str()))
                .unwrap();
            prop_assert!(
                latest.new == current || m.conflicts.iter().any(|x| x.value == latest.new),
                "{} {}: latest write {:?} neither current {:?} nor in conflicts",
                c.tag,
                m.key,
                latest.new,
                current
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn replicas_converge(
        offsets in proptest::array::uniform3(-3_600_000i64..3_600_000),
        steps in proptest::collection::vec(step(), 1..60),
        partial_rounds in 1usize..4,
    ) {
        let mut world = World::new(offsets);
        for s in steps {
            match s {
                Step::Edit { replica, edit, clock_step } => world.edit(replica, edit, clock_step),
                Step::Merge { from, to } => world.merge(from, to),
                Step::Changes { from, to } => world.changes(from, to),
                // A connection that may be cut after a few rounds.
                Step::Sync { a, b } => world.sync(a, b, partial_rounds),
            }
        }
        world.heal();
        check(&world)?;
    }
}
