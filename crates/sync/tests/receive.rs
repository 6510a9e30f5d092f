//! `receive::receive` against Automerge's own `receive_sync_message`: three
//! replicas edit and sync in random orders (messages delivered, dropped,
//! repeated, a peer's state lost as after a restart with a wiped store),
//! and every message one replica receives is applied both ways, from the
//! same document and state. Document heads and every field of the sync
//! state must come out identical.

use proptest::prelude::*;
use sitesync_model::automerge::sync::{Message, State, SyncDoc};
use sitesync_model::automerge::transaction::Transactable;
use sitesync_model::automerge::{ActorId, Automerge, ROOT};
use sitesync_sync::receive::receive;

const REPLICAS: usize = 3;

#[derive(Clone, Debug)]
enum Step {
    /// Replica `r` writes `n` small changes.
    Edit { r: usize, n: u8 },
    /// `from` generates a message for `to`; it is delivered (`deliver`),
    /// or lost, and delivered twice when `twice`.
    Send {
        from: usize,
        to: usize,
        deliver: bool,
        twice: bool,
    },
    /// `r` forgets its sync state with `peer` (a restart without it).
    Forget { r: usize, peer: usize },
}

fn step() -> impl Strategy<Value = Step> {
    let r = || 0..REPLICAS;
    prop_oneof![
        2 => (r(), 1..4u8).prop_map(|(r, n)| Step::Edit { r, n }),
        6 => (r(), r(), prop::bool::weighted(0.85), prop::bool::weighted(0.1))
            .prop_map(|(from, to, deliver, twice)| Step::Send { from, to, deliver, twice }),
        1 => (r(), r()).prop_map(|(r, peer)| Step::Forget { r, peer }),
    ]
}

struct World {
    docs: Vec<Automerge>,
    /// `states[r][peer]`: replica r's state with peer.
    states: Vec<Vec<State>>,
    written: u64,
}

impl World {
    fn new() -> Self {
        let mut first = Automerge::new().with_actor(ActorId::from([1u8; 16].as_slice()));
        let mut tx = first.transaction();
        tx.put(ROOT, "created", 1).unwrap();
        tx.commit();
        let docs = (0..REPLICAS)
            .map(|i| {
                first
                    .fork()
                    .with_actor(ActorId::from([i as u8 + 10; 16].as_slice()))
            })
            .collect();
        Self {
            docs,
            states: (0..REPLICAS)
                .map(|_| (0..REPLICAS).map(|_| State::new()).collect())
                .collect(),
            written: 0,
        }
    }

    fn receive_both_ways(&mut self, to: usize, from: usize, message: Message) -> Result<(), TestCaseError> {
        let mut theirs_doc = self.docs[to].clone();
        let mut theirs_state = self.states[to][from].clone();
        let theirs = theirs_doc.receive_sync_message(&mut theirs_state, message.clone());
        let ours = receive(&mut self.docs[to], &mut self.states[to][from], message);
        prop_assert_eq!(ours.is_ok(), theirs.is_ok());
        prop_assert_eq!(self.docs[to].get_heads(), theirs_doc.get_heads(), "heads");
        prop_assert_eq!(&self.states[to][from], &theirs_state, "sync state");
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128),
        ..ProptestConfig::default()
    })]

    #[test]
    fn receive_leaves_what_automerges_receive_leaves(steps in prop::collection::vec(step(), 1..80)) {
        let mut w = World::new();
        for s in steps {
            match s {
                Step::Edit { r, n } => {
                    for _ in 0..n {
                        w.written += 1;
                        let mut tx = w.docs[r].transaction();
                        tx.put(ROOT, format!("k{}", w.written % 7), w.written as i64).unwrap();
                        tx.commit();
                    }
                }
                Step::Send { from, to, deliver, twice } => {
                    if from == to {
                        continue;
                    }
                    let doc = &w.docs[from];
                    let Some(message) = doc.generate_sync_message(&mut w.states[from][to]) else {
                        continue;
                    };
                    if deliver {
                        w.receive_both_ways(to, from, message.clone())?;
                        if twice {
                            w.receive_both_ways(to, from, message)?;
                        }
                    }
                }
                Step::Forget { r, peer } => w.states[r][peer] = State::new(),
            }
        }
        // Whatever happened, a reconnect (which keeps what a state
        // persists, and forgets messages in flight) syncs to the end.
        for states in &mut w.states {
            for state in states.iter_mut() {
                *state = State::decode(&state.encode()).unwrap();
            }
        }
        for _ in 0..20 {
            for from in 0..REPLICAS {
                for to in 0..REPLICAS {
                    if from != to
                        && let Some(m) = w.docs[from].generate_sync_message(&mut w.states[from][to])
                    {
                        w.receive_both_ways(to, from, m)?;
                    }
                }
            }
        }
        let heads = w.docs[0].get_heads();
        for d in &w.docs[1..] {
            prop_assert_eq!(d.get_heads(), heads.clone());
        }
    }
}
