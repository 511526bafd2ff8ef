//! Proves the linearizability checker (`tests/checker`) before the cluster tests trust it:
//! on the 102 labelled Jepsen etcd histories, on small hand-made histories whose verdict is
//! obvious, and on random histories cut from real sequential executions.

mod checker;

use checker::{
    check, check_with_limits, parse_jepsen_log, History, Limits, Op, Outcome, Recorder, Verdict,
};
use proptest::prelude::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `BULWARK_JEPSEN_FIXTURES`, else `fixtures/jepsen-etcd-histories` in the crate or next to it.
fn fixtures_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BULWARK_JEPSEN_FIXTURES") {
        return dir.into();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        root.join("fixtures/jepsen-etcd-histories"),
        root.join("../shared/fixtures/jepsen-etcd-histories"),
    ];
    candidates
        .iter()
        .find(|d| d.join("EXPECTED").is_file())
        .unwrap_or_else(|| panic!("Jepsen fixtures not found in {candidates:?}"))
        .clone()
}

fn jepsen_history(name: &str) -> History {
    let path = fixtures_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    parse_jepsen_log(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_jepsen_etcd_history_gets_its_expected_label() {
    let dir = fixtures_dir();
    let expected_text = std::fs::read_to_string(dir.join("EXPECTED")).expect("EXPECTED");
    let expected: Vec<(&str, &str)> = expected_text
        .lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .map(|(file, label)| (file, label.trim()))
        .collect();
    assert_eq!(expected.len(), 102, "EXPECTED should label 102 histories");

    let mut logs: Vec<String> = std::fs::read_dir(&dir)
        .expect("fixtures dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".log"))
        .collect();
    logs.sort();
    let mut labelled: Vec<String> = expected.iter().map(|(f, _)| f.to_string()).collect();
    labelled.sort();
    assert_eq!(logs, labelled, "every .log file is labelled exactly once");

    let started = Instant::now();
    let mut mismatches = Vec::new();
    for (file, label) in &expected {
        let verdict = check(&jepsen_history(file));
        if verdict.label() != *label {
            mismatches.push(format!("{file}: expected {label}, got {verdict}"));
        }
    }
    eprintln!(
        "checked {} Jepsen histories in {:?}",
        expected.len(),
        started.elapsed()
    );
    assert!(
        mismatches.is_empty(),
        "{} of {} histories mislabelled:\n{}",
        mismatches.len(),
        expected.len(),
        mismatches.join("\n\n")
    );
}

#[test]
fn a_violation_is_explained_with_the_op_that_cannot_be_placed() {
    let Verdict::NotLinearizable { key, explanation } = check(&jepsen_history("etcd_000.log"))
    else {
        panic!("etcd_000.log is labelled not-linearizable");
    };
    assert_eq!(key, checker::JEPSEN_KEY);
    assert!(
        explanation.contains("deepest partial linearization"),
        "{explanation}"
    );
    assert!(explanation.contains("cannot be placed"), "{explanation}");
}

#[test]
fn a_spent_budget_is_inconclusive_not_a_verdict() {
    let history = jepsen_history("etcd_002.log");
    let tiny = Limits {
        max_steps: 10,
        max_duration: Duration::from_secs(60),
    };
    assert_eq!(check_with_limits(&history, tiny).label(), "inconclusive");
    let no_time = Limits {
        max_steps: u64::MAX,
        max_duration: Duration::ZERO,
    };
    assert_eq!(check_with_limits(&history, no_time).label(), "inconclusive");
    let unbounded = Limits {
        max_steps: u64::MAX,
        max_duration: Duration::MAX,
    };
    assert_eq!(
        check_with_limits(&history, unbounded),
        Verdict::Linearizable
    );
}

fn write(v: &str) -> Op {
    Op::Write(v.to_owned())
}

fn cas(expected: Option<&str>, new: &str) -> Op {
    Op::Cas {
        expected: expected.map(str::to_owned),
        new: new.to_owned(),
    }
}

/// Records `op` on `key` as one complete, non-overlapping operation.
fn done(r: &Recorder, process: u64, key: &str, op: Op, outcome: Outcome) {
    let id = r.invoke(process, key, op);
    r.complete(id, outcome);
}

#[test]
fn a_stale_read_after_a_completed_write_is_not_linearizable() {
    let r = Recorder::new();
    done(&r, 1, "x", write("1"), Outcome::written());
    done(&r, 2, "x", Op::Read, Outcome::read(None));
    let verdict = check(&r.history());
    let Verdict::NotLinearizable { key, explanation } = &verdict else {
        panic!("stale read accepted: {verdict}");
    };
    assert_eq!(key, "x");
    assert!(
        explanation.contains("#1 p2 read => absent"),
        "{explanation}"
    );
}

#[test]
fn a_read_concurrent_with_a_write_may_see_either_value() {
    for seen in [None, Some("1")] {
        let r = Recorder::new();
        let w = r.invoke(1, "x", write("1"));
        let rd = r.invoke(2, "x", Op::Read);
        r.complete(w, Outcome::written());
        r.complete(rd, Outcome::read(seen));
        assert_eq!(
            check(&r.history()),
            Verdict::Linearizable,
            "read saw {seen:?}"
        );
    }
}

#[test]
fn a_timed_out_write_may_show_up_in_a_later_read() {
    let r = Recorder::new();
    let w = r.invoke(1, "x", write("1"));
    r.complete(w, Outcome::Unknown);
    done(&r, 2, "x", Op::Read, Outcome::read(None));
    done(&r, 2, "x", Op::Read, Outcome::read(Some("1")));
    assert_eq!(check(&r.history()), Verdict::Linearizable);
}

#[test]
fn a_timed_out_write_may_never_take_effect() {
    let r = Recorder::new();
    done(&r, 1, "x", write("0"), Outcome::written());
    let w = r.invoke(1, "x", write("1"));
    r.complete(w, Outcome::Unknown);
    for process in 2..5 {
        done(&r, process, "x", Op::Read, Outcome::read(Some("0")));
    }
    assert_eq!(check(&r.history()), Verdict::Linearizable);
}

#[test]
fn a_timed_out_write_cannot_take_effect_before_it_was_invoked() {
    let r = Recorder::new();
    done(&r, 1, "x", Op::Read, Outcome::read(Some("1")));
    let w = r.invoke(2, "x", write("1"));
    r.complete(w, Outcome::Unknown);
    assert_eq!(check(&r.history()).label(), "not-linearizable");
}

#[test]
fn an_operation_never_completed_counts_as_unknown() {
    let r = Recorder::new();
    r.invoke(1, "x", write("1"));
    r.invoke(2, "x", Op::Read); // an unknown read constrains nothing
    done(&r, 3, "x", Op::Read, Outcome::read(Some("1")));
    done(&r, 3, "x", Op::Read, Outcome::read(Some("1")));
    assert_eq!(check(&r.history()), Verdict::Linearizable);
}

#[test]
fn a_successful_cas_from_a_value_nobody_wrote_is_not_linearizable() {
    let r = Recorder::new();
    done(&r, 1, "x", write("1"), Outcome::written());
    let c = r.invoke(2, "x", cas(Some("7"), "2"));
    let w = r.invoke(3, "x", write("3"));
    r.complete(c, Outcome::cas(true));
    r.complete(w, Outcome::written());
    assert_eq!(check(&r.history()).label(), "not-linearizable");
}

#[test]
fn a_rejected_cas_saw_another_value() {
    let r = Recorder::new();
    done(&r, 1, "x", write("1"), Outcome::written());
    done(&r, 2, "x", cas(Some("1"), "2"), Outcome::cas(false));
    assert_eq!(check(&r.history()).label(), "not-linearizable");

    let r = Recorder::new();
    done(&r, 1, "x", cas(None, "1"), Outcome::cas(true));
    done(&r, 2, "x", cas(None, "2"), Outcome::cas(false));
    done(&r, 3, "x", Op::Read, Outcome::read(Some("1")));
    assert_eq!(check(&r.history()), Verdict::Linearizable);
}

#[test]
fn a_timed_out_cas_applies_only_if_its_expected_value_was_there() {
    let r = Recorder::new();
    done(&r, 1, "x", write("1"), Outcome::written());
    let c = r.invoke(2, "x", cas(Some("1"), "2"));
    r.complete(c, Outcome::Unknown);
    done(&r, 3, "x", Op::Read, Outcome::read(Some("2")));
    assert_eq!(check(&r.history()), Verdict::Linearizable);

    let r = Recorder::new();
    done(&r, 1, "x", write("1"), Outcome::written());
    let c = r.invoke(2, "x", cas(Some("9"), "2"));
    r.complete(c, Outcome::Unknown);
    done(&r, 3, "x", Op::Read, Outcome::read(Some("2")));
    assert_eq!(check(&r.history()).label(), "not-linearizable");
}

#[test]
fn failed_operations_had_no_effect() {
    let r = Recorder::new();
    done(&r, 1, "x", write("1"), Outcome::Failed);
    done(&r, 2, "x", Op::Read, Outcome::Failed);
    done(&r, 2, "x", Op::Read, Outcome::read(None));
    assert_eq!(check(&r.history()), Verdict::Linearizable);
}

#[test]
fn keys_are_checked_independently() {
    // As one register this would be a stale read; as two it is fine.
    let r = Recorder::new();
    done(&r, 1, "a", write("1"), Outcome::written());
    done(&r, 2, "b", Op::Read, Outcome::read(None));
    done(&r, 2, "a", Op::Read, Outcome::read(Some("1")));
    assert_eq!(check(&r.history()), Verdict::Linearizable);

    // A violation is reported on the key that has it.
    done(&r, 3, "c", Op::Read, Outcome::read(None));
    done(&r, 1, "b", write("2"), Outcome::written());
    done(&r, 3, "b", Op::Read, Outcome::read(None));
    let verdict = check(&r.history());
    assert!(
        matches!(&verdict, Verdict::NotLinearizable { key, .. } if key == "b"),
        "{verdict}"
    );
}

#[test]
fn the_recorder_is_shared_by_concurrent_clients() {
    // Clients of a real linearizable register (a mutex) must produce a linearizable history.
    let register = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let recorder = Recorder::new();
    let clients: Vec<_> = (0..4u64)
        .map(|process| {
            let (register, recorder) = (register.clone(), recorder.clone());
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    let value = format!("{}", (process + i) % 3);
                    let op = match i % 3 {
                        0 => Op::Read,
                        1 => write(&value),
                        _ => cas(Some(&value), &format!("{}", (i + 1) % 3)),
                    };
                    let id = recorder.invoke(process, "k", op.clone());
                    let outcome = {
                        let mut held = register.lock().unwrap();
                        match op {
                            Op::Read => Outcome::read(held.as_deref()),
                            Op::Write(v) => {
                                *held = Some(v);
                                Outcome::written()
                            }
                            Op::Cas { expected, new } => {
                                let applied = *held == expected;
                                if applied {
                                    *held = Some(new);
                                }
                                Outcome::cas(applied)
                            }
                        }
                    };
                    recorder.complete(id, outcome);
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("client thread");
    }
    let history = recorder.history();
    assert_eq!(history.ops.len(), 200);
    assert_eq!(check(&history), Verdict::Linearizable);
}

#[test]
fn the_jepsen_parser_reads_every_event_shape() {
    let log = "\
some banner line that is not an event
INFO  jepsen.util - 0\t:invoke\t:write\t1
INFO  jepsen.util - 1\t:invoke\t:read\tnil
INFO  jepsen.util - 0\t:ok\t:write\t1
INFO  jepsen.util - 1\t:ok\t:read\t1
INFO  jepsen.util - 2\t:invoke\t:cas\t[1 2]
INFO  jepsen.util - 2\t:info\t:cas\t:timed-out
INFO  jepsen.util - 3\t:invoke\t:cas\t[5 6]
INFO  jepsen.util - 3\t:fail\t:cas\t[5 6]
INFO  jepsen.util - 4\t:invoke\t:read\tnil
INFO  jepsen.util - 4\t:fail\t:read\t:timed-out
INFO  jepsen.util - 5\t:invoke\t:write\t3
";
    let history = parse_jepsen_log(log).expect("parses");
    let shown: Vec<String> = history.ops.iter().map(|op| op.to_string()).collect();
    assert_eq!(
        shown,
        [
            "#0 p0 write \"1\" => ok [t2, t4]",
            "#1 p1 read => \"1\" [t3, t5]",
            "#2 p2 cas \"1\" -> \"2\" => unknown [t6, open]",
            "#3 p3 cas \"5\" -> \"6\" => false [t8, t9]",
            "#4 p4 read => failed [t10, t11]",
            "#5 p5 write \"3\" => unknown [t12, open]",
        ]
    );
    assert_eq!(check(&history), Verdict::Linearizable);

    for bad in [
        "INFO  jepsen.util - 0\t:ok\t:read\t1",
        "INFO  jepsen.util - 0\t:invoke\t:cas\t[1]",
        "INFO  jepsen.util - 0\t:invoke\t:read\tnil\nINFO  jepsen.util - 0\t:ok\t:write\t1",
        "INFO  jepsen.util - 0\t:invoke\t:read\tnil\nINFO  jepsen.util - 0\t:invoke\t:read\tnil",
    ] {
        assert!(parse_jepsen_log(bad).is_err(), "accepted {bad:?}");
    }
}

/// One operation of a generated sequential execution.
#[derive(Clone, Debug)]
struct GenOp {
    key: usize,
    kind: u8,
    value: u8,
    expected: Option<u8>,
    /// 0..6: completed; 6: timed out but applied; 7: timed out, never applied; 8: failed.
    fate: u8,
    /// How far the invoke and the completion stretch from the instant the op took effect.
    before: u64,
    after: u64,
}

fn gen_op() -> impl Strategy<Value = GenOp> {
    (
        0..3usize,
        0..3u8,
        0..4u8,
        proptest::option::of(0..4u8),
        0..9u8,
        0..40u64,
        0..40u64,
    )
        .prop_map(|(key, kind, value, expected, fate, before, after)| GenOp {
            key,
            kind,
            value,
            expected,
            fate,
            before,
            after,
        })
}

/// Runs `ops` one after the other on real registers, the `i`th taking effect at tick `10 i`,
/// and records each as invoked `before` ticks earlier and completed `after` ticks later.
fn history_of(ops: &[GenOp]) -> History {
    let mut registers: [Option<String>; 3] = Default::default();
    let mut history = History::default();
    for (i, g) in ops.iter().enumerate() {
        let at = 100 + 10 * i as u64;
        let register = &mut registers[g.key];
        let applied = g.fate < 7;
        let (op, ret) = match g.kind {
            0 => (Op::Read, Outcome::read(register.as_deref())),
            1 => {
                let v = g.value.to_string();
                if applied {
                    *register = Some(v.clone());
                }
                (Op::Write(v), Outcome::written())
            }
            _ => {
                let expected = g.expected.map(|e| e.to_string());
                let new = g.value.to_string();
                let swap = *register == expected;
                if applied && swap {
                    *register = Some(new.clone());
                }
                (Op::Cas { expected, new }, Outcome::cas(swap))
            }
        };
        let outcome = match g.fate {
            0..6 => ret,
            6 | 7 => Outcome::Unknown,
            _ => Outcome::Failed,
        };
        history.push(
            i as u64 % 5,
            format!("k{}", g.key),
            op,
            at - g.before,
            Some(at + g.after),
            outcome,
        );
    }
    history
}

/// `n` cases and no regression files (proptest cannot place them for an integration test); a
/// failure prints its minimal input, to be turned into a hand-made test.
fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases(200))]

    #[test]
    fn a_history_of_a_real_execution_is_linearizable(ops in proptest::collection::vec(gen_op(), 0..40)) {
        let history = history_of(&ops);
        prop_assert_eq!(check(&history), Verdict::Linearizable);
    }

    #[test]
    fn a_read_of_a_value_nobody_wrote_is_caught(
        ops in proptest::collection::vec(gen_op(), 1..40),
        pick in any::<prop::sample::Index>(),
    ) {
        let mut history = history_of(&ops);
        let reads: Vec<usize> = history
            .ops
            .iter()
            .filter(|o| matches!(o.outcome, Outcome::Ok(checker::Ret::Read(_))))
            .map(|o| o.id.0)
            .collect();
        prop_assume!(!reads.is_empty());
        let victim = reads[pick.index(reads.len())];
        history.ops[victim].outcome = Outcome::read(Some("never written"));
        let verdict = check(&history);
        let key = history.ops[victim].key.clone();
        prop_assert!(
            matches!(&verdict, Verdict::NotLinearizable { key: k, .. } if *k == key),
            "{}", verdict
        );
    }
}

/// An independent, memo-free, exponential checker for tiny histories: for each key, tries
/// every order of the ops that respects real time (an unknown op never blocks another and may
/// be left out), stepping a plain `Option<String>` register.
fn brute_force_linearizable(history: &History) -> bool {
    let mut keys: Vec<&str> = history.ops.iter().map(|o| o.key.as_str()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter().all(|key| {
        let ops: Vec<&checker::Operation> = history
            .ops
            .iter()
            .filter(|o| o.key == key)
            .filter(|o| {
                !matches!(
                    (&o.op, &o.outcome),
                    (_, Outcome::Failed) | (Op::Read, Outcome::Unknown)
                )
            })
            .collect();
        search(&ops, &mut vec![false; ops.len()], None)
    })
}

fn search(ops: &[&checker::Operation], done: &mut Vec<bool>, register: Option<String>) -> bool {
    let definite = |o: &checker::Operation| matches!(o.outcome, Outcome::Ok(_));
    if (0..ops.len()).all(|i| done[i] || !definite(ops[i])) {
        return true;
    }
    for i in 0..ops.len() {
        let blocked = (0..ops.len()).any(|j| {
            !done[j] && definite(ops[j]) && ops[j].complete.expect("completed") < ops[i].invoke
        });
        if done[i] || blocked {
            continue;
        }
        let next = match (&ops[i].op, &ops[i].outcome) {
            (Op::Read, Outcome::Ok(checker::Ret::Read(v))) => {
                (*v == register).then(|| register.clone())
            }
            (Op::Write(v), _) => Some(Some(v.clone())),
            (Op::Cas { expected, new }, Outcome::Ok(checker::Ret::Cas(true))) => {
                (*expected == register).then(|| Some(new.clone()))
            }
            (Op::Cas { expected, .. }, Outcome::Ok(checker::Ret::Cas(false))) => {
                (*expected != register).then(|| register.clone())
            }
            (Op::Cas { expected, new }, _) => Some(if *expected == register {
                Some(new.clone())
            } else {
                register.clone()
            }),
            (Op::Read, _) => unreachable!("filtered out"),
        };
        if let Some(next) = next {
            done[i] = true;
            if search(ops, done, next) {
                return true;
            }
            done[i] = false;
        }
    }
    false
}

/// (kind: read, write or CAS; value read or CAS expected; value written; fate: result, unknown
/// or failed, and CAS result; invoke tick; duration).
type ArbitraryOp = (u8, Option<u8>, u8, u8, u64, u64);

/// An arbitrary operation on one key, with arbitrary times and result: most such histories
/// are not linearizable, some are.
fn arbitrary_op() -> impl Strategy<Value = ArbitraryOp> {
    (
        0..3u8,
        proptest::option::of(0..3u8),
        0..3u8,
        0..10u8,
        0..20u64,
        0..12u64,
    )
}

fn arbitrary_history(ops: &[ArbitraryOp]) -> History {
    let mut history = History::default();
    for (i, &(kind, a, b, fate, invoke, duration)) in ops.iter().enumerate() {
        let (op, ret) = match kind {
            0 => (Op::Read, Outcome::read(a.map(|v| v.to_string()).as_deref())),
            1 => (write(&b.to_string()), Outcome::written()),
            _ => (
                Op::Cas {
                    expected: a.map(|v| v.to_string()),
                    new: b.to_string(),
                },
                Outcome::cas(fate % 2 == 0),
            ),
        };
        let outcome = match fate {
            0..7 => ret,
            7 | 8 => Outcome::Unknown,
            _ => Outcome::Failed,
        };
        history.push(i as u64, "k", op, invoke, Some(invoke + duration), outcome);
    }
    history
}

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn the_checker_agrees_with_brute_force_on_tiny_histories(
        ops in proptest::collection::vec(arbitrary_op(), 0..10)
    ) {
        let history = arbitrary_history(&ops);
        let expected = brute_force_linearizable(&history);
        let verdict = check(&history);
        prop_assert_eq!(verdict.is_linearizable(), expected, "{}", verdict);
        prop_assert_ne!(verdict.label(), "inconclusive");
    }

    #[test]
    fn the_checker_agrees_with_brute_force_on_corrupted_real_histories(
        ops in proptest::collection::vec(gen_op(), 1..12),
        pick in any::<prop::sample::Index>(),
        corruption in arbitrary_op(),
    ) {
        let mut history = history_of(&ops);
        let victim = pick.index(history.ops.len());
        let (_, a, b, fate, _, _) = corruption;
        history.ops[victim].outcome = match (&history.ops[victim].op, fate) {
            (_, 9) => Outcome::Unknown,
            (Op::Read, _) => Outcome::read(a.map(|v| v.to_string()).as_deref()),
            (Op::Write(_), _) => Outcome::Failed,
            (Op::Cas { .. }, _) => Outcome::cas(b % 2 == 0),
        };
        let expected = brute_force_linearizable(&history);
        let verdict = check(&history);
        prop_assert_eq!(verdict.is_linearizable(), expected, "{}", verdict);
        prop_assert_ne!(verdict.label(), "inconclusive");
    }
}
