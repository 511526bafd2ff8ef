//! A linearizability checker for histories of operations on independent registers.
//!
//! # Model
//!
//! Every key is a register holding `Option<Value>`; it starts absent (`None`). Three
//! operations act on it:
//!
//! * `Read` returns the current value (`None`: the key is absent);
//! * `Write(v)` sets it to `v`;
//! * `Cas { expected, new }` sets it to `new` if it holds `expected` and reports whether it
//!   did. A CAS that reported `false` is a read that saw something other than `expected` and
//!   wrote nothing.
//!
//! # History
//!
//! A [`History`] is a list of [`Operation`]s, each with the process that issued it, its key, the
//! tick of its invocation, the tick of its completion and an [`Outcome`]:
//!
//! * `Ok(ret)`: it took effect, atomically, at some instant between invocation and completion,
//!   and returned `ret`;
//! * `Failed`: it definitely did not take effect (an error that guarantees no effect). It
//!   constrains nothing and is dropped;
//! * `Unknown`: timed out or otherwise indeterminate. It may have taken effect at any instant
//!   after its invocation, or never: its completion time is treated as infinity, and the
//!   search may place it anywhere after its invocation or leave it out. An unknown read
//!   constrains nothing and is dropped; an unknown write or CAS is kept, since it may explain a
//!   value read later. (This is openraft's "a timeout means unknown, never did-not-happen".)
//!
//! Ticks are any monotonic counter (the [`Recorder`] uses one shared counter; the Jepsen parser
//! uses line numbers). At equal ticks a call is ordered before a return, i.e. the two ops are
//! taken as concurrent, which can only make the checker more permissive.
//!
//! # Algorithm
//!
//! Linearizability is local (Herlihy & Wing's P-compositionality): a history of independent
//! registers is linearizable iff each key's sub-history is, so keys are checked one at a time.
//!
//! For one key, the search is Wing & Gong's, with Lowe's memoisation, as in porcupine:
//! the call and return events are laid out by time in a doubly linked list. Walking from the
//! head, every call met before the first return is a candidate to take effect next; a candidate
//! whose step is legal in the model from the current state is *lifted* (its call and return
//! are unlinked, the state advances, and the walk restarts from the head). Meeting a return
//! means that op must already have taken effect but could not: the search backtracks by
//! re-linking the most recently lifted op and trying the next candidate after it. The history
//! is linearizable once every op with a definite outcome has been lifted (unknown ops still in
//! the list are taken to have never happened, or equally to have happened after everything).
//!
//! Three prunings keep the search close to linear on real histories:
//!
//! * Memoisation (Lowe): the search never revisits a (set of lifted ops, register state) pair,
//!   since two partial linearizations with the same set and state have the same futures.
//! * Dominance over unknown ops: a node is pruned if a node with the same definite ops lifted,
//!   the same state and a *subset* of its unknown ops lifted was reached, because unknown ops
//!   are never required and never block (see `Memo`). Without this, every subset of the
//!   timed-out ops pending at once is explored.
//! * Forced moves: when a pending op with a definite outcome can take effect now and never
//!   changes the register (a read of the current value, a rejected CAS), it is the only move
//!   tried from that node (see `Events::first_move`).
//!
//! The last two are checked against a brute-force search in `tests/linearizability_checker.rs`.
//!
//! The search is bounded by a step budget and a wall-clock deadline ([`Limits`]); exhausting
//! either gives [`Verdict::Inconclusive`] instead of hanging. When no linearization exists, the
//! explanation gives the deepest partial linearization reached, the register value after it,
//! and the op whose completion could not be reached with any order of the pending ops.
//!
//! The module is shared by several test binaries (`mod checker;`), each using part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The name of a register.
pub type Key = String;
/// A register's value. Strings, because that is what etcd stores and what Jepsen prints.
pub type Value = String;
/// The client process (or thread, task) that issued an operation; for explanations only.
pub type ProcessId = u64;
/// A point in the history's total order of events.
pub type Tick = u64;

/// Index of an operation in its [`History`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub usize);

/// What a client asked of a register.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write(Value),
    /// Set to `new` if the register holds `expected` (`None`: if it is absent).
    Cas {
        expected: Option<Value>,
        new: Value,
    },
}

/// What a completed operation returned; must match the [`Op`]'s kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ret {
    /// The value a read observed (`None`: absent).
    Read(Option<Value>),
    /// A write took effect.
    Written,
    /// Whether a CAS applied.
    Cas(bool),
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It took effect between invoke and completion and returned this.
    Ok(Ret),
    /// It definitely had no effect.
    Failed,
    /// It may have taken effect at any time after its invoke, or never.
    Unknown,
}

impl Outcome {
    pub fn read(value: Option<&str>) -> Self {
        Outcome::Ok(Ret::Read(value.map(str::to_owned)))
    }

    pub fn written() -> Self {
        Outcome::Ok(Ret::Written)
    }

    pub fn cas(applied: bool) -> Self {
        Outcome::Ok(Ret::Cas(applied))
    }

    /// Whether this outcome is a possible answer to `op`. A mismatch is a bug in the test that
    /// built the history, not in the system under test.
    fn fits(&self, op: &Op) -> bool {
        matches!(
            (op, self),
            (_, Outcome::Failed | Outcome::Unknown)
                | (Op::Read, Outcome::Ok(Ret::Read(_)))
                | (Op::Write(_), Outcome::Ok(Ret::Written))
                | (Op::Cas { .. }, Outcome::Ok(Ret::Cas(_)))
        )
    }
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub id: OpId,
    pub process: ProcessId,
    pub key: Key,
    pub op: Op,
    pub invoke: Tick,
    /// When the outcome was learnt; `None` if never. Ignored for `Unknown` outcomes, which
    /// stay open forever.
    pub complete: Option<Tick>,
    pub outcome: Outcome,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} p{} ", self.id.0, self.process)?;
        match &self.op {
            Op::Read => write!(f, "read")?,
            Op::Write(v) => write!(f, "write {v:?}")?,
            Op::Cas { expected, new } => write!(f, "cas {} -> {new:?}", show(expected.as_ref()))?,
        }
        match &self.outcome {
            Outcome::Ok(Ret::Read(v)) => write!(f, " => {}", show(v.as_ref()))?,
            Outcome::Ok(Ret::Written) => write!(f, " => ok")?,
            Outcome::Ok(Ret::Cas(applied)) => write!(f, " => {applied}")?,
            Outcome::Failed => write!(f, " => failed")?,
            Outcome::Unknown => write!(f, " => unknown")?,
        }
        match (&self.outcome, self.complete) {
            (Outcome::Unknown, _) | (_, None) => write!(f, " [t{}, open]", self.invoke),
            (_, Some(c)) => write!(f, " [t{}, t{c}]", self.invoke),
        }
    }
}

fn show(value: Option<&Value>) -> String {
    value.map_or_else(|| "absent".to_owned(), |v| format!("{v:?}"))
}

/// A recorded history: operations in invocation order, `ops[i].id == OpId(i)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    pub ops: Vec<Operation>,
}

impl History {
    /// Appends an operation with explicit times; for histories built by hand.
    pub fn push(
        &mut self,
        process: ProcessId,
        key: impl Into<Key>,
        op: Op,
        invoke: Tick,
        complete: Option<Tick>,
        outcome: Outcome,
    ) -> OpId {
        let id = OpId(self.ops.len());
        self.ops.push(Operation {
            id,
            process,
            key: key.into(),
            op,
            invoke,
            complete,
            outcome,
        });
        id
    }
}

/// Records a history from concurrent clients. Cheap to clone; all clones share one history and
/// one clock, so the ticks of all clients are totally ordered.
///
/// Call [`Recorder::invoke`] before sending a request and [`Recorder::complete`] after its
/// answer arrives; an operation never completed counts as `Unknown`.
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    inner: Arc<Mutex<Recording>>,
}

#[derive(Debug, Default)]
struct Recording {
    clock: Tick,
    history: History,
}

impl Recording {
    fn tick(&mut self) -> Tick {
        self.clock += 1;
        self.clock
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn invoke(&self, process: ProcessId, key: impl Into<Key>, op: Op) -> OpId {
        let mut rec = self.lock();
        let now = rec.tick();
        rec.history
            .push(process, key, op, now, None, Outcome::Unknown)
    }

    /// Records how `id` ended. Panics if it was already completed or the outcome does not fit
    /// the operation: both are bugs in the test, not in the system under test.
    pub fn complete(&self, id: OpId, outcome: Outcome) {
        let mut rec = self.lock();
        let now = rec.tick();
        let op = &mut rec.history.ops[id.0];
        assert!(op.complete.is_none(), "operation {op} completed twice");
        assert!(
            outcome.fits(&op.op),
            "outcome {outcome:?} does not fit {op}"
        );
        op.complete = Some(now);
        op.outcome = outcome;
    }

    /// A snapshot of the history so far.
    pub fn history(&self) -> History {
        self.lock().history.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recording> {
        // A client task that panicked mid-record leaves a consistent history: each update is a
        // single push or field assignment, so a poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The checker's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable {
        key: Key,
        explanation: String,
    },
    /// The search ran out of budget on `key` before deciding.
    Inconclusive {
        key: Key,
        reason: String,
    },
}

impl Verdict {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }

    /// `linearizable`, `not-linearizable` (the labels of the Jepsen fixtures) or `inconclusive`.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Linearizable => "linearizable",
            Verdict::NotLinearizable { .. } => "not-linearizable",
            Verdict::Inconclusive { .. } => "inconclusive",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => write!(f, "linearizable"),
            Verdict::NotLinearizable { key, explanation } => {
                write!(f, "not linearizable on key {key:?}: {explanation}")
            }
            Verdict::Inconclusive { key, reason } => {
                write!(f, "inconclusive on key {key:?}: {reason}")
            }
        }
    }
}

/// Bounds on one [`check_with_limits`] call, shared by all its keys.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Search steps (one candidate tried or one backtrack each). Each step may add one memo
    /// entry of about `ops / 4` bytes plus ~100, so this also bounds memory.
    pub max_steps: u64,
    pub max_duration: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_steps: 5_000_000,
            max_duration: Duration::from_secs(30),
        }
    }
}

/// Checks `history` with the default [`Limits`].
pub fn check(history: &History) -> Verdict {
    check_with_limits(history, Limits::default())
}

/// Checks each key's sub-history in key order. A violation on any key wins over running out of
/// budget on another.
///
/// Panics if an outcome does not fit its op or an op completes before it was invoked (a bug in
/// whatever built the history).
pub fn check_with_limits(history: &History, limits: Limits) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in &history.ops {
        assert!(op.outcome.fits(&op.op), "outcome does not fit its op: {op}");
        match (&op.outcome, op.complete) {
            (Outcome::Ok(_), None) => panic!("op has a result but no completion time: {op}"),
            (Outcome::Ok(_), Some(c)) => {
                assert!(op.invoke <= c, "op completes before invoke: {op}")
            }
            _ => {}
        }
        by_key.entry(&op.key).or_default().push(op);
    }
    let mut budget = Budget {
        steps_taken: 0,
        max_steps: limits.max_steps,
        // `None`: a duration too long to represent, i.e. no deadline.
        deadline: Instant::now().checked_add(limits.max_duration),
    };
    let mut inconclusive = None;
    for (key, ops) in by_key {
        match check_key(&ops, &mut budget) {
            KeyVerdict::Linearizable => {}
            KeyVerdict::NotLinearizable(explanation) => {
                return Verdict::NotLinearizable {
                    key: key.to_owned(),
                    explanation,
                }
            }
            KeyVerdict::OutOfBudget(reason) => {
                inconclusive.get_or_insert(Verdict::Inconclusive {
                    key: key.to_owned(),
                    reason,
                });
            }
        }
    }
    inconclusive.unwrap_or(Verdict::Linearizable)
}

struct Budget {
    steps_taken: u64,
    max_steps: u64,
    deadline: Option<Instant>,
}

impl Budget {
    /// Takes one step; `false` once the budget is spent. Reads the clock every 1024 steps,
    /// starting with the first.
    fn step(&mut self) -> bool {
        if self.steps_taken >= self.max_steps {
            return false;
        }
        let read_clock = self.steps_taken.is_multiple_of(1024);
        self.steps_taken += 1;
        !read_clock || self.deadline.is_none_or(|d| Instant::now() < d)
    }
}

enum KeyVerdict {
    Linearizable,
    NotLinearizable(String),
    OutOfBudget(String),
}

/// A register state with values interned per key: `None` is absent, `Some(i)` the `i`th value.
type State = Option<u32>;

/// An op as the search sees it, with its outcome folded in.
#[derive(Clone, Copy, Debug)]
enum Step {
    Read(State),
    Write(u32),
    CasApplied {
        expected: State,
        new: u32,
    },
    CasRejected {
        expected: State,
    },
    /// A CAS of unknown outcome, if it takes effect: applies iff the register holds `expected`.
    CasMaybe {
        expected: State,
        new: u32,
    },
}

impl Step {
    /// The state after this op from `state`, or `None` if its result contradicts `state`.
    fn apply(self, state: State) -> Option<State> {
        match self {
            Step::Read(seen) => (seen == state).then_some(state),
            Step::Write(v) => Some(Some(v)),
            Step::CasApplied { expected, new } => (expected == state).then_some(Some(new)),
            Step::CasRejected { expected } => (expected != state).then_some(state),
            Step::CasMaybe { expected, new } => {
                Some(if expected == state { Some(new) } else { state })
            }
        }
    }
}

struct Interner<'a> {
    ids: HashMap<&'a str, u32>,
    names: Vec<&'a str>,
}

impl<'a> Interner<'a> {
    fn id(&mut self, value: &'a str) -> u32 {
        *self.ids.entry(value).or_insert_with(|| {
            self.names.push(value);
            u32::try_from(self.names.len() - 1).expect("fewer than 2^32 values per key")
        })
    }

    fn state(&mut self, value: Option<&'a Value>) -> State {
        value.map(|v| self.id(v))
    }

    fn show(&self, state: State) -> String {
        state.map_or_else(
            || "absent".to_owned(),
            |i| format!("{:?}", self.names[i as usize]),
        )
    }
}

/// An op that constrains the search; ops that constrain nothing were left out.
struct Candidate<'a> {
    op: &'a Operation,
    step: Step,
    /// Its outcome is known, so it must be linearized before its return.
    definite: bool,
}

impl Candidate<'_> {
    /// Whether it must take effect, can do so from `state`, and never changes the register
    /// wherever it takes effect: a read, a rejected CAS, or a CAS from `v` to `v`. (Not a
    /// write of the current value: placed later, it could overwrite something else.)
    fn preserves(&self, state: State) -> bool {
        let never_changes = match self.step {
            Step::Read(_) | Step::CasRejected { .. } => true,
            Step::CasApplied { expected, new } => expected == Some(new),
            Step::Write(_) | Step::CasMaybe { .. } => false,
        };
        self.definite && never_changes && self.step.apply(state) == Some(state)
    }
}

fn candidate<'a>(op: &'a Operation, values: &mut Interner<'a>) -> Option<Candidate<'a>> {
    let definite = matches!(op.outcome, Outcome::Ok(_));
    let step = match (&op.op, &op.outcome) {
        (_, Outcome::Failed) | (Op::Read, Outcome::Unknown) => return None,
        (Op::Read, Outcome::Ok(Ret::Read(seen))) => Step::Read(values.state(seen.as_ref())),
        (Op::Write(v), _) => Step::Write(values.id(v)),
        (Op::Cas { expected, new }, Outcome::Ok(Ret::Cas(true))) => Step::CasApplied {
            expected: values.state(expected.as_ref()),
            new: values.id(new),
        },
        (Op::Cas { expected, .. }, Outcome::Ok(Ret::Cas(false))) => Step::CasRejected {
            expected: values.state(expected.as_ref()),
        },
        (Op::Cas { expected, new }, _) => Step::CasMaybe {
            expected: values.state(expected.as_ref()),
            new: values.id(new),
        },
        (Op::Read, _) => unreachable!("outcomes were checked to fit their ops"),
    };
    Some(Candidate { op, step, definite })
}

/// Marks the end of the event list.
const NIL: usize = usize::MAX;
/// The list's head sentinel.
const HEAD: usize = 0;

/// The event list: node 0 is the head, the others are call and return events in time order.
/// Unlinked nodes keep their own links, so re-linking in reverse order of unlinking restores
/// the list exactly (dancing links).
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each node, the candidate it belongs to (unused for the head).
    owner: Vec<usize>,
    is_call: Vec<bool>,
    /// For each candidate, its call node and return node (`None`: open forever).
    call_node: Vec<usize>,
    return_node: Vec<Option<usize>>,
}

impl Events {
    fn new(candidates: &[Candidate<'_>]) -> Self {
        // (time, is_return, candidate): at equal times calls come first.
        let mut events: Vec<(Tick, bool, usize)> = Vec::with_capacity(candidates.len() * 2);
        for (i, c) in candidates.iter().enumerate() {
            events.push((c.op.invoke, false, i));
            if c.definite {
                let complete = c.op.complete.expect("a definite outcome has a completion");
                events.push((complete, true, i));
            }
        }
        events.sort_unstable();
        let nodes = events.len() + 1;
        let mut list = Events {
            next: (1..=nodes)
                .map(|n| if n == nodes { NIL } else { n })
                .collect(),
            prev: (0..nodes).map(|n| n.wrapping_sub(1)).collect(),
            owner: vec![usize::MAX; nodes],
            is_call: vec![false; nodes],
            call_node: vec![0; candidates.len()],
            return_node: vec![None; candidates.len()],
        };
        for (i, &(_, is_return, c)) in events.iter().enumerate() {
            let node = i + 1;
            list.owner[node] = c;
            list.is_call[node] = !is_return;
            if is_return {
                list.return_node[c] = Some(node);
            } else {
                list.call_node[c] = node;
            }
        }
        list
    }

    fn unlink(&mut self, n: usize) {
        let (p, q) = (self.prev[n], self.next[n]);
        self.next[p] = q;
        if q != NIL {
            self.prev[q] = p;
        }
    }

    fn relink(&mut self, n: usize) {
        let (p, q) = (self.prev[n], self.next[n]);
        self.next[p] = n;
        if q != NIL {
            self.prev[q] = n;
        }
    }

    fn lift(&mut self, candidate: usize) {
        self.unlink(self.call_node[candidate]);
        if let Some(r) = self.return_node[candidate] {
            self.unlink(r);
        }
    }

    fn unlift(&mut self, candidate: usize) {
        if let Some(r) = self.return_node[candidate] {
            self.relink(r);
        }
        self.relink(self.call_node[candidate]);
    }

    /// The candidates whose calls precede the first return still in the list, and the
    /// candidate that return belongs to.
    fn pending(&self) -> (Vec<usize>, Option<usize>) {
        let mut out = Vec::new();
        let mut n = self.next[HEAD];
        while n != NIL && self.is_call[n] {
            out.push(self.owner[n]);
            n = self.next[n];
        }
        (out, (n != NIL).then(|| self.owner[n]))
    }

    /// Where the search goes from a node with register `state`: the call of the first pending
    /// op that [`Candidate::preserves`] it, if any, as the only move (`true`); else the first
    /// call, to try every pending op in turn (`false`).
    ///
    /// Why one move suffices: such an op `r` must take effect at some point, and if some order
    /// `s` completes the history from here, `r` followed by `s` without `r` does too. `r`
    /// changes nothing wherever it goes, so the register goes through the same values, and
    /// lifting `r` early only removes its return, which can only let more ops go first. (The
    /// memo's dominance argument still holds: a node explored this way fails only if the node
    /// after `r` does.)
    fn first_move(&self, candidates: &[Candidate<'_>], state: State) -> (usize, bool) {
        let mut n = self.next[HEAD];
        while n != NIL && self.is_call[n] {
            if candidates[self.owner[n]].preserves(state) {
                return (n, true);
            }
            n = self.next[n];
        }
        (self.next[HEAD], false)
    }
}

/// The candidates lifted so far: one bitset for those with a definite outcome, one for those of
/// unknown outcome, since the memo treats them differently.
struct Lifted {
    /// For each candidate, its bit's index in the bitset of its class.
    slot: Vec<(bool, usize)>,
    definite: Vec<u64>,
    unknown: Vec<u64>,
}

impl Lifted {
    fn new(candidates: &[Candidate<'_>]) -> Self {
        let (mut definite, mut unknown) = (0, 0);
        let slot: Vec<(bool, usize)> = candidates
            .iter()
            .map(|c| {
                let count = if c.definite {
                    &mut definite
                } else {
                    &mut unknown
                };
                *count += 1;
                (c.definite, *count - 1)
            })
            .collect();
        Lifted {
            slot,
            definite: vec![0; definite.div_ceil(64)],
            unknown: vec![0; unknown.div_ceil(64)],
        }
    }

    fn set(&mut self, candidate: usize, on: bool) {
        let (definite, i) = self.slot[candidate];
        let words = if definite {
            &mut self.definite
        } else {
            &mut self.unknown
        };
        if on {
            words[i / 64] |= 1 << (i % 64);
        } else {
            words[i / 64] &= !(1 << (i % 64));
        }
    }
}

/// The search nodes already reached. A node (definite set D, unknown set U, state s) is
/// *dominated* by a reached node (D, U', s) with U' a subset of U: whatever order completes the
/// history from the former also completes it from the latter, which merely keeps more unknown
/// ops available (they are never required, and have no return to block on). So a dominated
/// node is pruned; with no unknown ops this is plain (set, state) memoisation.
#[derive(Default)]
struct Memo {
    /// Keyed by the definite bitset followed by one word for the state; each value holds the
    /// minimal unknown sets reached with that key.
    reached: HashMap<Vec<u64>, Vec<Vec<u64>>>,
    /// Scratch space for building keys without allocating.
    key: Vec<u64>,
}

impl Memo {
    /// Records reaching `state` with `lifted`; `false` if a node reached before dominates it.
    fn visit(&mut self, lifted: &Lifted, state: State) -> bool {
        self.key.clear();
        self.key.extend_from_slice(&lifted.definite);
        self.key.push(state.map_or(u64::MAX, u64::from));
        let unknown = &lifted.unknown;
        match self.reached.get_mut(self.key.as_slice()) {
            Some(minimal) => {
                if minimal.iter().any(|u| is_subset(u, unknown)) {
                    return false;
                }
                minimal.retain(|u| !is_subset(unknown, u));
                minimal.push(unknown.clone());
            }
            None => {
                self.reached.insert(self.key.clone(), vec![unknown.clone()]);
            }
        }
        true
    }
}

fn is_subset(a: &[u64], b: &[u64]) -> bool {
    a.iter().zip(b).all(|(x, y)| x & !y == 0)
}

/// The deepest dead end reached, for the explanation.
struct DeadEnd {
    prefix: Vec<usize>,
    state: State,
    /// The op whose return was reached without it having taken effect (`None`: end of list).
    blocked: Option<usize>,
    pending: Vec<usize>,
}

fn check_key(ops: &[&Operation], budget: &mut Budget) -> KeyVerdict {
    let mut values = Interner {
        ids: HashMap::new(),
        names: Vec::new(),
    };
    let candidates: Vec<Candidate<'_>> = ops
        .iter()
        .filter_map(|op| candidate(op, &mut values))
        .collect();
    let mut list = Events::new(&candidates);
    let mut definite_left = candidates.iter().filter(|c| c.definite).count();

    let mut state: State = None;
    let mut lifted = Lifted::new(&candidates);
    let mut memo = Memo::default();
    // The lifted candidates in order, each with the state before it.
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut deepest: Option<DeadEnd> = None;
    let mut steps: u64 = 0;
    // The call node to try next, and whether it is the only move worth trying from here.
    let (mut node, mut forced) = list.first_move(&candidates, state);

    loop {
        if definite_left == 0 {
            return KeyVerdict::Linearizable;
        }
        if !budget.step() {
            return KeyVerdict::OutOfBudget(format!(
                "search budget spent after {steps} steps on {} ops; deepest partial \
                 linearization placed {} of them",
                candidates.len(),
                deepest
                    .as_ref()
                    .map_or(stack.len(), |d| d.prefix.len().max(stack.len())),
            ));
        }
        steps += 1;

        if node != NIL && list.is_call[node] {
            let c = list.owner[node];
            if let Some(next_state) = candidates[c].step.apply(state) {
                lifted.set(c, true);
                if memo.visit(&lifted, next_state) {
                    stack.push((c, state));
                    state = next_state;
                    list.lift(c);
                    definite_left -= usize::from(candidates[c].definite);
                    (node, forced) = list.first_move(&candidates, state);
                    continue;
                }
                lifted.set(c, false);
            }
            node = if forced { NIL } else { list.next[node] };
            continue;
        }

        // A dead end: the first return in the list closes an op that had to take effect by
        // now and cannot.
        if deepest
            .as_ref()
            .is_none_or(|d| stack.len() > d.prefix.len())
        {
            let (pending, blocked) = list.pending();
            deepest = Some(DeadEnd {
                prefix: stack.iter().map(|&(c, _)| c).collect(),
                state,
                blocked,
                pending,
            });
        }
        let Some((c, before)) = stack.pop() else {
            let dead_end = deepest.expect("a dead end was just recorded");
            return KeyVerdict::NotLinearizable(explain(&candidates, &values, &dead_end, steps));
        };
        lifted.set(c, false);
        list.unlift(c);
        definite_left += usize::from(candidates[c].definite);
        node = if candidates[c].preserves(before) {
            // See `Events::first_move`: the node `c` was lifted from is dead too.
            NIL
        } else {
            list.next[list.call_node[c]]
        };
        forced = false;
        state = before;
    }
}

fn explain(candidates: &[Candidate<'_>], values: &Interner<'_>, d: &DeadEnd, steps: u64) -> String {
    const SHOWN: usize = 8;
    let mut out = format!(
        "no order of its {} ops is legal (searched {steps} steps).\nThe deepest partial \
         linearization places {} ops",
        candidates.len(),
        d.prefix.len()
    );
    if d.prefix.len() > SHOWN {
        out += &format!(
            ", ending with:\n  ... {} earlier ops",
            d.prefix.len() - SHOWN
        );
    } else {
        out += ":";
    }
    for &c in d.prefix.iter().skip(d.prefix.len().saturating_sub(SHOWN)) {
        out += &format!("\n  {}", candidates[c].op);
    }
    out += &format!("\nleaving the register {}.", values.show(d.state));
    match d.blocked {
        Some(b) => {
            out += &format!(
                "\nThen {} cannot be placed: no order of the ops pending before it completes \
                 lets it take effect. Pending:",
                candidates[b].op
            );
        }
        None => out += "\nThen the ops left cannot be placed. Pending:",
    }
    for &c in d.pending.iter().take(2 * SHOWN) {
        out += &format!("\n  {}", candidates[c].op);
    }
    if d.pending.len() > 2 * SHOWN {
        out += &format!("\n  ... {} more", d.pending.len() - 2 * SHOWN);
    }
    out
}

/// The key that [`parse_jepsen_log`] files every operation under.
pub const JEPSEN_KEY: &str = "jepsen";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Parses a Jepsen etcd register log (see `fixtures/jepsen-etcd-histories/README.md`) into a
/// single-key history whose ticks are line numbers.
///
/// `:ok` completes an op; `:fail` on a CAS is a CAS that returned false (the value was not the
/// expected one); `:fail` on a read or write had no effect; `:info` is a timeout, `Unknown`,
/// open forever. An op still open at the end of the log is `Unknown` too. Lines not of the
/// `INFO jepsen.util - P :type :f value` shape are ignored.
pub fn parse_jepsen_log(text: &str) -> Result<History, ParseError> {
    let mut history = History::default();
    let mut open: HashMap<ProcessId, OpId> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let err = |message: String| ParseError {
            line: line_no,
            message,
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        let [_, "jepsen.util", "-", process, kind, f, rest @ ..] = words.as_slice() else {
            continue;
        };
        let process: ProcessId = process
            .parse()
            .map_err(|_| err(format!("bad process {process:?}")))?;
        let arg = rest.join(" ");
        let tick = line_no as Tick;
        if *kind == ":invoke" {
            let op = match *f {
                ":read" => Op::Read,
                ":write" => Op::Write(
                    jepsen_value(&arg).ok_or_else(|| err(format!("bad write value {arg:?}")))?,
                ),
                ":cas" => {
                    let (expected, new) =
                        jepsen_cas(&arg).ok_or_else(|| err(format!("bad cas args {arg:?}")))?;
                    Op::Cas { expected, new }
                }
                _ => return Err(err(format!("unknown function {f}"))),
            };
            let id = history.push(process, JEPSEN_KEY, op, tick, None, Outcome::Unknown);
            if let Some(previous) = open.insert(process, id) {
                return Err(err(format!(
                    "process {process} invokes while {} is open",
                    history.ops[previous.0]
                )));
            }
            continue;
        }
        let id = open
            .remove(&process)
            .ok_or_else(|| err(format!("process {process} completes with nothing open")))?;
        let op = &mut history.ops[id.0];
        let invoked_f = match op.op {
            Op::Read => ":read",
            Op::Write(_) => ":write",
            Op::Cas { .. } => ":cas",
        };
        if *f != invoked_f {
            return Err(err(format!("{kind} {f} completes the open op {op}")));
        }
        let outcome = match (*kind, &op.op) {
            (":ok", Op::Read) => Outcome::Ok(Ret::Read(
                jepsen_value_or_nil(&arg).ok_or_else(|| err(format!("bad read value {arg:?}")))?,
            )),
            (":ok", Op::Write(_)) => Outcome::written(),
            (":ok", Op::Cas { .. }) => Outcome::cas(true),
            (":fail", Op::Cas { .. }) => Outcome::cas(false),
            (":fail", Op::Read | Op::Write(_)) => Outcome::Failed,
            (":info", _) => Outcome::Unknown,
            _ => return Err(err(format!("unknown event type {kind}"))),
        };
        op.complete = Some(tick);
        op.outcome = outcome;
    }
    Ok(history)
}

fn jepsen_value_or_nil(word: &str) -> Option<Option<Value>> {
    match word {
        "nil" => Some(None),
        _ => jepsen_value(word).map(Some),
    }
}

fn jepsen_value(word: &str) -> Option<Value> {
    let ok = !word.is_empty()
        && word != "nil"
        && !word.starts_with(':')
        && !word.contains(|c: char| c.is_whitespace() || "[]".contains(c));
    ok.then(|| word.to_owned())
}

fn jepsen_cas(arg: &str) -> Option<(Option<Value>, Value)> {
    let inner = arg.strip_prefix('[')?.strip_suffix(']')?;
    let mut words = inner.split_whitespace();
    let (expected, new) = (words.next()?, words.next()?);
    if words.next().is_some() {
        return None;
    }
    Some((jepsen_value_or_nil(expected)?, jepsen_value(new)?))
}
