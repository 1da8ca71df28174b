//! What constrained decoding may generate: the one abstraction the beam engine
//! ([`crate::search::beam`]) searches under. A constraint walks token by token from a root
//! state and says, at each state, which tokens may come next:
//! - [`DocidTrie`]: the docids of a table (atomic, semantic, title, n-gram rows), each ending
//!   with eos — DSI/NCI/GENRE decoding;
//! - [`FmConstraint`]: any token sequence that occurs in the corpus, read from the FM-index
//!   shards — SEAL's decoding of n-grams.
use std::borrow::Cow;
use std::fmt::Debug;
use std::hash::Hash;

use crate::search::fm_index::{FmIndex, Rows};
use crate::search::trie::{DocidTrie, NodeId};

pub trait Constraint: Sync {
    /// Where a prefix stands (a trie node; the FM-index rows of the prefix in every shard).
    type State: Clone + Eq + Hash + Debug + Send + Sync;

    /// The state of the empty prefix.
    fn root(&self) -> Self::State;

    /// The tokens that may follow the prefix at `state`, ascending, distinct.
    fn allowed(&self, state: &Self::State) -> Cow<'_, [u32]>;

    /// The state after `token`, if allowed.
    fn child(&self, state: &Self::State, token: u32) -> Option<Self::State>;

    /// The token that finishes a sequence, if sequences finish on one (else they finish at
    /// [`Self::max_len`]).
    fn eos(&self) -> Option<u32>;

    /// The most tokens a sequence may have (eos included): the most decoding steps.
    fn max_len(&self) -> usize;
}

impl Constraint for DocidTrie {
    type State = NodeId;

    fn root(&self) -> NodeId {
        DocidTrie::ROOT
    }
    fn allowed(&self, state: &NodeId) -> Cow<'_, [u32]> {
        Cow::Borrowed(DocidTrie::allowed(self, *state))
    }
    fn child(&self, state: &NodeId, token: u32) -> Option<NodeId> {
        DocidTrie::child(self, *state, token)
    }
    fn eos(&self) -> Option<u32> {
        Some(DocidTrie::eos(self))
    }
    fn max_len(&self) -> usize {
        self.max_depth()
    }
}

/// Token sequences of the corpus behind FM-index shards (their union): SEAL's constraint.
pub struct FmConstraint<'a> {
    pub shards: &'a [FmIndex],
    /// Tokens per sequence at most (SEAL: 10).
    pub max_len: usize,
    /// Whether a sequence may finish with eos where it ends a document. SEAL decodes with
    /// min_length = max_length, so never (its n-grams hold no eos).
    pub allow_eos: bool,
    eos: u32,
    /// Every token of the corpus but eos: the root's continuations.
    root_tokens: Vec<u32>,
}

/// The FM-index rows of a prefix in every shard (empty where it does not occur).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FmState(pub Vec<Rows>);

impl FmState {
    /// Occurrences of the prefix in the corpus.
    pub fn count(&self) -> u64 {
        self.0.iter().map(Rows::count).sum()
    }
}

impl<'a> FmConstraint<'a> {
    pub fn new(shards: &'a [FmIndex], max_len: usize, allow_eos: bool) -> Self {
        let eos = shards.first().map_or(1, |s| s.meta.eos);
        let mut root_tokens: Vec<u32> =
            shards.iter().flat_map(|s| s.root_continuations().iter().map(|c| c.token)).collect();
        root_tokens.sort_unstable();
        root_tokens.dedup();
        FmConstraint { shards, max_len, allow_eos, eos, root_tokens }
    }

    /// The state of a whole sequence.
    pub fn state_of(&self, seq: &[u32]) -> FmState {
        FmState(self.shards.iter().map(|s| s.rows(seq)).collect())
    }
}

impl Constraint for FmConstraint<'_> {
    type State = FmState;

    fn root(&self) -> FmState {
        FmState(self.shards.iter().map(FmIndex::all).collect())
    }

    fn allowed(&self, state: &FmState) -> Cow<'_, [u32]> {
        if state.0.iter().zip(self.shards).all(|(r, s)| *r == s.all()) {
            return Cow::Borrowed(&self.root_tokens);
        }
        let mut tokens: Vec<u32> = Vec::new();
        for (rows, shard) in state.0.iter().zip(self.shards) {
            if !rows.is_empty() {
                tokens.extend(shard.continuations(*rows).into_iter().map(|c| c.token));
            }
        }
        if self.shards.len() > 1 {
            tokens.sort_unstable();
            tokens.dedup();
        }
        if !self.allow_eos {
            tokens.retain(|&t| t != self.eos);
        }
        Cow::Owned(tokens)
    }

    fn child(&self, state: &FmState, token: u32) -> Option<FmState> {
        if token == self.eos && !self.allow_eos {
            return None;
        }
        let next = FmState(state.0.iter().zip(self.shards).map(|(r, s)| s.extend(*r, token)).collect());
        (next.count() > 0).then_some(next)
    }

    fn eos(&self) -> Option<u32> {
        self.allow_eos.then_some(self.eos)
    }

    fn max_len(&self) -> usize {
        self.max_len
    }
}
