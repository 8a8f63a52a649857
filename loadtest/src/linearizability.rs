//! A linearizability checker for key-value histories (Wing & Gong's search with
//! Lowe's memoisation, as in Porcupine).
//!
//! Every operation touches one key, so the history is checked key by key: a
//! history is linearizable exactly when each key's sub-history is (locality).
//! For each key the search tries to order the operations so that every one takes
//! effect between its invocation and its return and the register model explains
//! every reply; it backtracks when a return is reached before its operation could
//! be placed, and remembers `(operations placed, state)` pairs it has already
//! explored.
//!
//! UNKNOWN OUTCOMES. An operation without a return may take effect at any point
//! after its invocation, or never: it gets a return time of infinity (it can
//! always be placed last, which is the same as never) and any output is accepted.
//! Reads with unknown outcomes constrain nothing and are dropped.
//!
//! BUDGET. The search is exponential in the worst case. It stops at a deadline and
//! answers [`Verdict::Unknown`] rather than hanging.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use crate::history::{Input, Operation, Output};

/// The checker's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's history is linearizable.
    Linearizable,
    /// A key's history is not; the operations around the first one that could
    /// not be placed.
    Violation { key: String, around: Vec<Operation> },
    /// The time budget ran out before an answer.
    Unknown,
}

/// The register model: a key holds an integer or nothing.
type State = Option<i64>;

/// Applies `input` to `state`; `None` when `output` is impossible from `state`.
fn step(state: State, input: &Input, output: Option<&Output>) -> Option<State> {
    let (next, expected) = match input {
        Input::Get => (state, Output::Value(state)),
        Input::Set(v) => (Some(*v), Output::Ok),
        Input::Del => (None, Output::Int(i64::from(state.is_some()))),
        Input::Swap(v) => (Some(*v), Output::Value(state)),
        Input::Incr => {
            let n = state.unwrap_or(0).checked_add(1)?;
            (Some(n), Output::Int(n))
        }
        Input::SetIfAbsent(v) => match state {
            None => (Some(*v), Output::Ok),
            Some(_) => (state, Output::Value(None)),
        },
    };
    match output {
        None => Some(next),
        Some(out) if *out == expected => Some(next),
        Some(_) => None,
    }
}

/// Checks a whole history within `budget`.
pub fn check(history: &[Operation], budget: Duration) -> Verdict {
    let deadline = Instant::now() + budget;
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        if op.output.is_none() && op.input == Input::Get {
            continue;
        }
        by_key.entry(&op.key).or_default().push(op);
    }
    for (key, ops) in by_key {
        match check_key(&ops, deadline) {
            KeyVerdict::Ok => {}
            KeyVerdict::Timeout => return Verdict::Unknown,
            KeyVerdict::Violation(stuck) => {
                let culprit = ops[stuck];
                let end = culprit.return_ns.unwrap_or(u64::MAX);
                let mut around: Vec<Operation> = ops
                    .iter()
                    .filter(|o| {
                        o.call_ns <= end && o.return_ns.unwrap_or(u64::MAX) >= culprit.call_ns.saturating_sub(1)
                    })
                    .map(|o| (*o).clone())
                    .collect();
                around.sort_by_key(|o| o.call_ns);
                return Verdict::Violation {
                    key: key.to_string(),
                    around,
                };
            }
        }
    }
    Verdict::Linearizable
}

enum KeyVerdict {
    Ok,
    Timeout,
    /// Index of an operation no linearization could place in time.
    Violation(usize),
}

/// One event of the search list: an operation's call or return.
#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    /// Index of the matching event (call <-> return).
    partner: usize,
    prev: usize,
    next: usize,
}

const NIL: usize = usize::MAX;

fn check_key(ops: &[&Operation], deadline: Instant) -> KeyVerdict {
    // Events sorted by time; at equal times calls come first (they may overlap).
    let mut times: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        times.push((op.call_ns, false, i));
        times.push((op.return_ns.unwrap_or(u64::MAX), true, i));
    }
    times.sort_by_key(|&(t, is_return, i)| (t, is_return, i));
    let n = times.len();
    // events[0] is a sentinel head.
    let mut events = vec![Event {
        op: NIL,
        is_call: false,
        partner: NIL,
        prev: NIL,
        next: 1,
    }];
    let mut call_at = vec![0; ops.len()];
    let mut return_at = vec![0; ops.len()];
    for (k, &(_, is_return, op)) in times.iter().enumerate() {
        let idx = k + 1;
        if is_return {
            return_at[op] = idx;
        } else {
            call_at[op] = idx;
        }
        events.push(Event {
            op,
            is_call: !is_return,
            partner: NIL,
            prev: idx - 1,
            next: if k + 1 < n { idx + 1 } else { NIL },
        });
    }
    for op in 0..ops.len() {
        events[call_at[op]].partner = return_at[op];
        events[return_at[op]].partner = call_at[op];
    }
    let unlink = |events: &mut Vec<Event>, i: usize| {
        let (p, nx) = (events[i].prev, events[i].next);
        events[p].next = nx;
        if nx != NIL {
            events[nx].prev = p;
        }
    };
    let relink = |events: &mut Vec<Event>, i: usize| {
        let (p, nx) = (events[i].prev, events[i].next);
        events[p].next = i;
        if nx != NIL {
            events[nx].prev = i;
        }
    };

    let words = ops.len().div_ceil(64);
    let mut placed = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut cursor = events[0].next;
    let mut best_depth = 0;
    let mut best_stuck = 0;
    let mut steps = 0u64;
    loop {
        if events[0].next == NIL {
            return KeyVerdict::Ok;
        }
        steps += 1;
        if steps.is_multiple_of(4096) && Instant::now() > deadline {
            return KeyVerdict::Timeout;
        }
        let ev = events[cursor];
        if ev.is_call {
            let op = ops[ev.op];
            if let Some(next) = step(state, &op.input, op.output.as_ref()) {
                placed[ev.op / 64] |= 1 << (ev.op % 64);
                if seen.insert((placed.clone(), next)) {
                    stack.push((cursor, state));
                    state = next;
                    unlink(&mut events, ev.partner);
                    unlink(&mut events, cursor);
                    cursor = events[0].next;
                    continue;
                }
                placed[ev.op / 64] &= !(1 << (ev.op % 64));
            }
            cursor = ev.next;
        } else {
            // A return reached before its operation was placed: backtrack.
            if stack.len() >= best_depth {
                best_depth = stack.len();
                best_stuck = ev.op;
            }
            let Some((call, previous)) = stack.pop() else {
                return KeyVerdict::Violation(best_stuck);
            };
            let op = events[call].op;
            placed[op / 64] &= !(1 << (op % 64));
            state = previous;
            let partner = events[call].partner;
            relink(&mut events, call);
            relink(&mut events, partner);
            cursor = events[call].next;
        }
    }
}

/// Renders a verdict for people: the counterexample as a timeline.
pub fn describe(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Linearizable => "linearizable".into(),
        Verdict::Unknown => "unknown (time budget exhausted)".into(),
        Verdict::Violation { key, around } => {
            let mut s = format!("NOT linearizable: key {key}; operations around the first that cannot be placed:\n");
            for op in around {
                let ret = op
                    .return_ns
                    .map_or("  (unknown)".to_string(), |r| format!("{:>10.3} ms", r as f64 / 1e6));
                s.push_str(&format!(
                    "  client {:>3}  {:>10.3} ms -> {ret}  {:?} -> {:?}\n",
                    op.client,
                    op.call_ns as f64 / 1e6,
                    op.input,
                    op.output
                ));
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u32, call: u64, ret: Option<u64>, input: Input, output: Option<Output>) -> Operation {
        Operation {
            client,
            key: "k".into(),
            input,
            output,
            call_ns: call,
            return_ns: ret,
        }
    }

    fn verdict(ops: &[Operation]) -> Verdict {
        check(ops, Duration::from_secs(5))
    }

    #[test]
    fn sequential_and_concurrent_histories_pass() {
        let ok = [
            op(1, 0, Some(10), Input::Set(1), Some(Output::Ok)),
            op(2, 20, Some(30), Input::Get, Some(Output::Value(Some(1)))),
            op(1, 25, Some(40), Input::Set(2), Some(Output::Ok)),
            // Concurrent with the SET of 2: may see either value.
            op(3, 26, Some(35), Input::Get, Some(Output::Value(Some(1)))),
            op(2, 50, Some(60), Input::Incr, Some(Output::Int(3))),
            op(3, 70, Some(80), Input::Swap(9), Some(Output::Value(Some(3)))),
            op(1, 90, Some(95), Input::Del, Some(Output::Int(1))),
            op(2, 96, Some(99), Input::Get, Some(Output::Value(None))),
            op(3, 100, Some(110), Input::SetIfAbsent(4), Some(Output::Ok)),
            op(1, 120, Some(130), Input::SetIfAbsent(5), Some(Output::Value(None))),
            op(2, 140, Some(150), Input::Get, Some(Output::Value(Some(4)))),
        ];
        assert_eq!(verdict(&ok), Verdict::Linearizable);
    }

    #[test]
    fn stale_read_is_rejected() {
        let stale = [
            op(1, 0, Some(10), Input::Set(1), Some(Output::Ok)),
            op(1, 20, Some(30), Input::Set(2), Some(Output::Ok)),
            // Starts after SET 2 returned, yet reads 1.
            op(2, 40, Some(50), Input::Get, Some(Output::Value(Some(1)))),
        ];
        match verdict(&stale) {
            Verdict::Violation { key, around } => {
                assert_eq!(key, "k");
                assert!(
                    around.iter().any(|o| o.input == Input::Get),
                    "counterexample shows the read"
                );
            }
            other => panic!("stale read accepted: {other:?}"),
        }
    }

    #[test]
    fn two_winning_compare_and_sets_are_rejected() {
        let both = [
            op(1, 0, Some(10), Input::SetIfAbsent(1), Some(Output::Ok)),
            op(2, 20, Some(30), Input::SetIfAbsent(2), Some(Output::Ok)),
        ];
        assert!(matches!(verdict(&both), Verdict::Violation { .. }));
    }

    #[test]
    fn lost_write_is_rejected() {
        let lost = [
            op(1, 0, Some(10), Input::Incr, Some(Output::Int(1))),
            op(2, 20, Some(30), Input::Incr, Some(Output::Int(2))),
            // The final read misses the acknowledged second increment.
            op(3, 40, Some(50), Input::Get, Some(Output::Value(Some(1)))),
        ];
        assert!(matches!(verdict(&lost), Verdict::Violation { .. }));
    }

    #[test]
    fn value_read_before_it_was_written_is_rejected() {
        let early = [
            op(2, 0, Some(10), Input::Get, Some(Output::Value(Some(7)))),
            op(1, 20, Some(30), Input::Set(7), Some(Output::Ok)),
        ];
        assert!(matches!(verdict(&early), Verdict::Violation { .. }));
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_have_happened() {
        let happened = [
            op(1, 0, None, Input::Set(5), None),
            op(2, 10, Some(20), Input::Get, Some(Output::Value(Some(5)))),
        ];
        assert_eq!(verdict(&happened), Verdict::Linearizable);
        let never = [
            op(1, 0, None, Input::Set(5), None),
            op(2, 10, Some(20), Input::Get, Some(Output::Value(None))),
        ];
        assert_eq!(verdict(&never), Verdict::Linearizable);
        // But an unknown write cannot take effect before it was invoked.
        let before_call = [
            op(2, 0, Some(10), Input::Get, Some(Output::Value(Some(5)))),
            op(1, 20, None, Input::Set(5), None),
        ];
        assert!(matches!(verdict(&before_call), Verdict::Violation { .. }));
    }

    #[test]
    fn many_concurrent_operations_finish_within_budget() {
        let mut ops = Vec::new();
        for i in 0..400u64 {
            let t = i * 10;
            ops.push(op(
                (i % 8) as u32,
                t,
                Some(t + 35),
                Input::Incr,
                Some(Output::Int(i as i64 + 1)),
            ));
        }
        assert_eq!(check(&ops, Duration::from_secs(10)), Verdict::Linearizable);
    }
}
