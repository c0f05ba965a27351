//! The checker's test harness: the spec's examples with their stated results, snapshot
//! tests of the text output, simulated histories, and a property test holding the fast
//! checker against a brute-force reading of `shared/spec/history.md`.

mod brute;

use coherence_analysis::{
    check_file, text, AnomalyKind, CauseKind, Options, Results, Status, Verdict,
};
use coherence_store::NoProgress;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/spec/examples")
        .join(name)
}

fn check(name: &str, bound_ms: u64) -> Results {
    let options = Options {
        staleness_bound: bound_ms * 1_000_000,
        ..Options::default()
    };
    let mut r = check_file(&example(name), &options, &NoProgress).expect("the example reads");
    r.history = name.to_string();
    r
}

fn counts(r: &Results) -> BTreeMap<&'static str, u64> {
    r.anomaly_counts.clone()
}

/// All seven counts: the ones given, zero for the rest.
fn expect(pairs: &[(AnomalyKind, u64)]) -> BTreeMap<&'static str, u64> {
    AnomalyKind::ALL
        .iter()
        .map(|k| {
            let n = pairs.iter().find(|p| p.0 == *k).map_or(0, |p| p.1);
            (k.name(), n)
        })
        .collect()
}

use AnomalyKind::*;

#[test]
fn every_spec_example_is_covered() {
    let dir = example("");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("shared/spec/examples exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".jsonl"))
        .collect();
    names.sort();
    let covered = [
        "concurrent-ok.jsonl",
        "failover-lost-write.jsonl",
        "fill-race.jsonl",
        "indeterminate-write.jsonl",
        "phantom.jsonl",
        "session.jsonl",
        "stale-read.jsonl",
    ];
    for n in &names {
        assert!(
            covered.contains(&n.as_str()),
            "{n} is in shared/spec/examples but has no test here: add one"
        );
    }
}

#[test]
fn example_stale_read() {
    let r = check("stale-read.jsonl", 0);
    assert_eq!(counts(&r), expect(&[(StaleRead, 1)]));
    assert!(!r.valid);
    let a = &r.anomalies[0];
    assert_eq!(a.staleness_ns, Some(8_000_000));
    assert_eq!(a.indices, vec![0, 1, 2, 3]);
    assert_eq!(a.cycle_text, "write 0 →rt read 2 →rw write 0");
    // no anomaly with a bound of 8 ms or more (unknown overall: no final phase), still
    // stale just under it
    for bound in [8, 60_000] {
        let r = check("stale-read.jsonl", bound);
        assert_eq!(counts(&r), expect(&[]), "bound {bound} ms");
        assert_eq!(r.verdict, Verdict::Unknown, "bound {bound} ms");
    }
    assert_eq!(
        counts(&check("stale-read.jsonl", 7)),
        expect(&[(StaleRead, 1)])
    );
}

#[test]
fn example_concurrent_ok() {
    let r = check("concurrent-ok.jsonl", 0);
    // No anomaly; without a final phase convergence and lost writes cannot be judged,
    // so the history is unknown overall...
    assert_eq!(r.verdict, Verdict::Unknown);
    assert!(!r.valid, "an unknown history is not valid");
    assert_eq!(counts(&r), expect(&[]));
    let undecided: Vec<AnomalyKind> = r
        .checks
        .iter()
        .filter(|c| c.status == Status::Unknown)
        .map(|c| c.name)
        .collect();
    assert_eq!(undecided, vec![LostWrite, NonConvergence]);
    // ... and valid when those checks are left out.
    let chosen = Options {
        checks: Some(vec![
            StaleRead,
            PhantomRead,
            VersionFork,
            MonotonicRead,
            ReadYourWrites,
        ]),
        ..Options::default()
    };
    let r2 = check_file(&example("concurrent-ok.jsonl"), &chosen, &NoProgress).unwrap();
    assert_eq!(r2.verdict, Verdict::Valid, "{:?}", r2.unknown_reasons);
    assert!(r2.valid);
    let not_run: Vec<AnomalyKind> = r2
        .checks
        .iter()
        .filter(|c| c.status == Status::NotRun)
        .map(|c| c.name)
        .collect();
    assert_eq!(not_run, vec![LostWrite, NonConvergence]);
    assert_eq!(r.staleness.reads, 2, "the miss is no read of a value");
    assert_eq!(r.staleness.max_ns, 0);
}

#[test]
fn example_fill_race() {
    let r = check("fill-race.jsonl", 0);
    assert_eq!(counts(&r), expect(&[(StaleRead, 1), (NonConvergence, 1)]));
    let stale = r.anomalies.iter().find(|a| a.name == StaleRead).unwrap();
    assert_eq!(
        stale.ops.iter().find(|o| o.f == "read").unwrap().index,
        9,
        "the read at 20 ms"
    );
    for a in &r.anomalies {
        let cause = a.cause.as_ref().expect("a cause");
        assert_eq!(cause.kind, CauseKind::FillRace, "{}", a.summary);
        assert!(
            cause.indices.contains(&8),
            "the fill's completion is evidence"
        );
        assert!(
            cause.indices.contains(&6),
            "so is the invalidation it raced"
        );
    }
    assert_eq!(r.causes["stale-read"]["fill-race"], 1);
    assert_eq!(r.causes["non-convergence"]["fill-race"], 1);
}

#[test]
fn example_failover_lost_write() {
    let r = check("failover-lost-write.jsonl", 0);
    assert_eq!(counts(&r), expect(&[(LostWrite, 1), (VersionFork, 1)]));
    let lost = r.anomalies.iter().find(|a| a.name == LostWrite).unwrap();
    assert_eq!(lost.ops[0].write.as_deref(), Some("a"));
    let fork = r.anomalies.iter().find(|a| a.name == VersionFork).unwrap();
    assert_eq!((fork.key.as_str(), fork.ops[0].version), ("k", Some(1)));
    assert_eq!(fork.cycle.len(), 2, "a fork is a two-write ww cycle");
}

#[test]
fn example_session() {
    let r = check("session.jsonl", 5);
    assert_eq!(
        counts(&r),
        expect(&[(ReadYourWrites, 1), (MonotonicRead, 1)])
    );
    let ryw = r
        .anomalies
        .iter()
        .find(|a| a.name == ReadYourWrites)
        .unwrap();
    assert_eq!(ryw.process, Some(0));
    let mr = r
        .anomalies
        .iter()
        .find(|a| a.name == MonotonicRead)
        .unwrap();
    assert_eq!(mr.process, Some(1));
    let r0 = check("session.jsonl", 0);
    assert_eq!(
        counts(&r0),
        expect(&[(ReadYourWrites, 1), (MonotonicRead, 1), (StaleRead, 2)])
    );
}

#[test]
fn example_phantom() {
    let r = check("phantom.jsonl", 0);
    assert_eq!(counts(&r), expect(&[(PhantomRead, 1)]));
    assert!(r.anomalies[0].summary.contains("failed"));
}

#[test]
fn example_indeterminate_write() {
    let r = check("indeterminate-write.jsonl", 0);
    assert_eq!(counts(&r), expect(&[(MonotonicRead, 1)]));
    assert_eq!(
        r.anomalies[0].cycle_text,
        "write 0 →wr read 2 →po read 4 →rw write 0"
    );
}

#[test]
fn undecidable_checks_say_unknown_not_valid() {
    let r = check("stale-read.jsonl", 8);
    assert_eq!(r.verdict, Verdict::Unknown);
    assert!(!r.valid);
    assert!(
        r.unknown_reasons
            .iter()
            .any(|w| w.starts_with("non-convergence could not decide")),
        "{:?}",
        r.unknown_reasons
    );
    let status = |k: AnomalyKind| r.checks.iter().find(|c| c.name == k).unwrap().status;
    assert_eq!(status(NonConvergence), Status::Unknown, "no final-phase");
    assert_eq!(status(LostWrite), Status::Unknown, "no db-final-read");
    assert_eq!(status(StaleRead), Status::Valid);
    let r = check("fill-race.jsonl", 0);
    let status = |k: AnomalyKind| r.checks.iter().find(|c| c.name == k).unwrap().status;
    assert_eq!(status(LostWrite), Status::Valid);
    assert_eq!(status(NonConvergence), Status::Invalid);
}

#[test]
fn results_json_is_versioned_and_names_all_seven() {
    let r = check("phantom.jsonl", 0);
    let json: serde_json::Value = serde_json::to_value(&r).unwrap();
    assert_eq!(json["format"], "coherence-results");
    assert_eq!(json["format_version"], 2);
    assert_eq!(json["valid"], false);
    assert_eq!(json["verdict"], "invalid");
    let counts = json["anomaly-counts"].as_object().unwrap();
    assert_eq!(counts.len(), 7);
    for k in AnomalyKind::ALL {
        assert!(counts.contains_key(k.name()), "{}", k.name());
    }
}

#[test]
fn snapshot_text_output() {
    for (name, bound) in [
        ("stale-read.jsonl", 0),
        ("concurrent-ok.jsonl", 0),
        ("fill-race.jsonl", 0),
        ("failover-lost-write.jsonl", 0),
        ("session.jsonl", 5),
        ("phantom.jsonl", 0),
        ("indeterminate-write.jsonl", 0),
    ] {
        let r = check(name, bound);
        let snap = format!("{}-{}ms", name.trim_end_matches(".jsonl"), bound);
        insta::assert_snapshot!(snap, text::render(&r, 10));
    }
}

mod simulated {
    use super::*;
    use coherence_workloads::sim::{generate, Mode, SimConfig};

    fn simulate(mode: Mode, seed: u64, ops: u64) -> Results {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let mut w = coherence_store::HistoryWriter::create(&path).unwrap();
        let config = SimConfig {
            seed,
            ops,
            keys: 50,
            mode,
            ..SimConfig::default()
        };
        generate(&config, &mut w).unwrap();
        w.finish().unwrap();
        check_file(&path, &Options::default(), &NoProgress).unwrap()
    }

    #[test]
    fn correct_systems_are_valid_at_bound_zero() {
        for seed in 1..=5 {
            let r = simulate(Mode::Correct, seed, 20_000);
            assert!(
                r.valid,
                "seed {seed}: {:?}\n{}",
                r.anomaly_counts,
                text::render(&r, 3)
            );
            for c in &r.checks {
                assert_eq!(c.status, Status::Valid, "seed {seed}: {:?}", c);
            }
        }
    }

    #[test]
    fn buggy_systems_show_every_cache_anomaly_with_causes() {
        let r = simulate(Mode::Buggy, 7, 50_000);
        let c = &r.anomaly_counts;
        for name in [
            "stale-read",
            "non-convergence",
            "lost-write",
            "version-fork",
        ] {
            assert!(c[name] > 0, "{name}: {c:?}");
        }
        let causes = &r.causes["stale-read"];
        assert!(
            causes.get("fill-race").copied().unwrap_or(0) > 0,
            "{causes:?}"
        );
        // every explained stale read proves itself with a cycle and names a cause
        for a in r.anomalies.iter().filter(|a| a.name == StaleRead) {
            assert!(!a.cycle.is_empty(), "{}", a.summary);
            assert!(a.cause.is_some());
        }
    }
}

mod property {
    use super::brute;
    use coherence_analysis::{check_history, model::Builder, Options};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
        #[test]
        fn fast_checker_agrees_with_the_spec(steps in proptest::collection::vec(brute::step(), 1..60), bound in 0u64..3) {
            let bound = bound * 1_000_000;
            let lines = brute::history(&steps);
            let text = lines.join("\n") + "\n";
            let mut builder = Builder::new();
            coherence_store::reader::read_from(text.as_bytes(), std::path::Path::new("prop.jsonl"), &mut builder)
                .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            let history = builder.finish();
            let options = Options { staleness_bound: bound, ..Options::default() };
            let fast = check_history(&history, &options, "prop", vec![], 0).anomaly_counts;
            let slow = brute::counts(&text, bound);
            prop_assert_eq!(fast, slow, "history:\n{}", text);
        }
    }
}

#[test]
fn random_histories_exercise_every_anomaly() {
    // The property test means little if its histories never show an anomaly: check
    // that the generator reaches every one of them.
    use proptest::strategy::{Strategy, ValueTree};
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = proptest::collection::vec(brute::step(), 1..60);
    let mut seen: BTreeMap<&'static str, u64> = BTreeMap::new();
    for _ in 0..400 {
        let steps = strategy.new_tree(&mut runner).unwrap().current();
        let text = brute::history(&steps).join("\n") + "\n";
        for (name, n) in brute::counts(&text, 1_000_000) {
            *seen.entry(name).or_default() += n;
        }
    }
    for k in AnomalyKind::ALL {
        assert!(
            seen[k.name()] > 0,
            "no random history shows {}: {seen:?}",
            k.name()
        );
    }
}

mod causes {
    use super::*;
    use coherence_analysis::{check_history, model::Builder};

    /// Checks a history given as (time ms, process, type, f, key, node, value, extra).
    fn check_lines(lines: &[&str]) -> Results {
        let text: String = lines
            .iter()
            .enumerate()
            .map(|(i, l)| format!("{{\"index\":{i},{l}\n"))
            .collect();
        let mut b = Builder::new();
        coherence_store::reader::read_from(
            text.as_bytes(),
            std::path::Path::new("t.jsonl"),
            &mut b,
        )
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
        check_history(&b.finish(), &Options::default(), "t", vec![], 0)
    }

    fn stale_cause(r: &Results) -> CauseKind {
        let a = r
            .anomalies
            .iter()
            .find(|a| a.name == StaleRead)
            .expect("a stale read");
        a.cause.as_ref().expect("a cause").kind
    }

    const WRITE: [&str; 2] = [
        r#""time":0,"process":0,"type":"invoke","f":"write","key":"k","node":"db","value":{"write":"a"}}"#,
        r#""time":4000000,"process":0,"type":"ok","f":"write","key":"k","node":"db","value":{"version":1,"write":"a"}}"#,
    ];
    const READ_OLD: [&str; 2] = [
        r#""time":10000000,"process":1,"type":"invoke","f":"read","key":"k","node":"r1"}"#,
        r#""time":11000000,"process":1,"type":"ok","f":"read","key":"k","node":"r1","value":{"version":0,"write":"init"}}"#,
    ];

    #[test]
    fn fill_landing_after_the_invalidation_but_before_the_ack_is_a_fill_race() {
        // The invalidator deletes at commit, before the write is acknowledged; a fill of
        // the old version lands after that delete: the race, though before the ack.
        let r = check_lines(&[
            WRITE[0],
            r#""time":1000000,"process":2,"type":"invoke","f":"fill","key":"k","node":"r1","value":{"version":0,"write":"init"}}"#,
            r#""time":2000000,"process":"invalidator","type":"info","f":"invalidate","key":"k","node":"r1"}"#,
            r#""time":3000000,"process":2,"type":"ok","f":"fill","key":"k","node":"r1","value":{"version":0,"write":"init"}}"#,
            WRITE[1],
            READ_OLD[0],
            READ_OLD[1],
        ]);
        assert_eq!(stale_cause(&r), CauseKind::FillRace);
        let text = &r.anomalies[0].cause.as_ref().unwrap().text;
        assert!(
            text.contains("after r1 was invalidated at 2 ms (line 3)"),
            "{text}"
        );
    }

    #[test]
    fn fill_undone_by_a_later_invalidation_is_not_the_cause() {
        // The old fill lands before the delete, which removes it: no fill race, and the
        // read of the old version is unexplained by the history.
        let r = check_lines(&[
            WRITE[0],
            r#""time":1000000,"process":2,"type":"invoke","f":"fill","key":"k","node":"r1","value":{"version":0,"write":"init"}}"#,
            r#""time":1500000,"process":2,"type":"ok","f":"fill","key":"k","node":"r1","value":{"version":0,"write":"init"}}"#,
            r#""time":2000000,"process":"invalidator","type":"info","f":"invalidate","key":"k","node":"r1"}"#,
            WRITE[1],
            READ_OLD[0],
            READ_OLD[1],
        ]);
        assert_eq!(stale_cause(&r), CauseKind::Unexplained);
    }

    #[test]
    fn no_invalidation_of_the_node_is_a_lost_invalidation() {
        let r = check_lines(&[
            WRITE[0],
            WRITE[1],
            r#""time":5000000,"process":"invalidator","type":"info","f":"invalidate","key":"k","node":"r2"}"#,
            READ_OLD[0],
            READ_OLD[1],
        ]);
        assert_eq!(stale_cause(&r), CauseKind::LostInvalidation);
    }

    #[test]
    fn an_invalidation_for_an_older_version_does_not_count() {
        // The invalidator says which version it invalidated: one for version 0 that
        // lands after write a began is no invalidation of version 1, which was lost.
        let r = check_lines(&[
            WRITE[0],
            r#""time":1000000,"process":"invalidator","type":"info","f":"invalidate","key":"k","node":"r1","value":{"version":0}}"#,
            WRITE[1],
            READ_OLD[0],
            READ_OLD[1],
        ]);
        assert_eq!(stale_cause(&r), CauseKind::LostInvalidation);
        let r = check_lines(&[
            WRITE[0],
            WRITE[1],
            READ_OLD[0],
            READ_OLD[1],
            r#""time":12000000,"process":"invalidator","type":"info","f":"invalidate","key":"k","node":"r1","value":{"version":1}}"#,
        ]);
        assert_eq!(
            stale_cause(&r),
            CauseKind::LateInvalidation,
            "one for version 1 counts"
        );
        // Only a later write's invalidation arrived: this write's own was lost.
        let r = check_lines(&[
            WRITE[0],
            WRITE[1],
            READ_OLD[0],
            READ_OLD[1],
            r#""time":12000000,"process":"invalidator","type":"info","f":"invalidate","key":"k","node":"r1","value":{"version":2}}"#,
        ]);
        assert_eq!(stale_cause(&r), CauseKind::LostInvalidation);
    }

    #[test]
    fn an_invalidation_after_the_read_is_late() {
        let r = check_lines(&[
            WRITE[0],
            WRITE[1],
            READ_OLD[0],
            READ_OLD[1],
            r#""time":12000000,"process":"invalidator","type":"info","f":"invalidate","key":"k","node":"r1"}"#,
        ]);
        assert_eq!(stale_cause(&r), CauseKind::LateInvalidation);
    }

    #[test]
    fn a_read_marked_replica_is_a_replica_read() {
        let r = check_lines(&[
            WRITE[0],
            WRITE[1],
            r#""time":10000000,"process":1,"type":"invoke","f":"read","key":"k","node":"r1b","role":"replica"}"#,
            r#""time":11000000,"process":1,"type":"ok","f":"read","key":"k","node":"r1b","role":"replica","value":{"version":0,"write":"init"}}"#,
        ]);
        assert_eq!(stale_cause(&r), CauseKind::ReplicaRead);
    }

    #[test]
    fn a_node_promoted_by_a_failover_is_named() {
        let r = check_lines(&[
            WRITE[0],
            WRITE[1],
            r#""time":6000000,"process":"nemesis","type":"info","f":"failover","value":{"promoted":"r1","demoted":"r1x"}}"#,
            READ_OLD[0],
            READ_OLD[1],
        ]);
        assert_eq!(stale_cause(&r), CauseKind::FailoverPromoted);
    }

    #[test]
    fn a_database_read_elsewhere_is_replica_lag() {
        let r = check_lines(&[
            r#""time":0,"process":0,"type":"invoke","f":"write","key":"k","node":"db1","value":{"write":"a"}}"#,
            r#""time":4000000,"process":0,"type":"ok","f":"write","key":"k","node":"db1","value":{"version":1,"write":"a"}}"#,
            r#""time":10000000,"process":1,"type":"invoke","f":"db-read","key":"k","node":"db2"}"#,
            r#""time":11000000,"process":1,"type":"ok","f":"db-read","key":"k","node":"db2","value":{"version":0,"write":"init"}}"#,
        ]);
        assert_eq!(stale_cause(&r), CauseKind::DatabaseReplicaLag);
    }

    #[test]
    fn a_partition_during_a_lost_invalidation_is_mentioned() {
        let r = check_lines(&[
            r#""time":0,"process":"nemesis","type":"info","f":"start-partition","value":{"isolated":["r1"]}}"#,
            WRITE[0],
            WRITE[1],
            READ_OLD[0],
            READ_OLD[1],
            r#""time":12000000,"process":"nemesis","type":"info","f":"stop-partition"}"#,
        ]);
        assert_eq!(stale_cause(&r), CauseKind::LostInvalidation);
        let text = &r.anomalies[0].cause.as_ref().unwrap().text;
        assert!(
            text.contains("start-partition (line 1) was active"),
            "{text}"
        );
    }
}

#[test]
fn final_reads_that_miss_make_convergence_decidable() {
    // Regression: a final phase whose final reads all missed (an outbox relay had
    // deleted everything) was judged "unknown"; a miss is converged.
    use coherence_analysis::{check_history, model::Builder};
    let lines = [
        r#"{"index":0,"time":0,"process":0,"type":"invoke","f":"write","key":"k","node":"db","value":{"write":"a"}}"#,
        r#"{"index":1,"time":1,"process":0,"type":"ok","f":"write","key":"k","node":"db","value":{"version":1,"write":"a"}}"#,
        r#"{"index":2,"time":2,"process":"control","type":"info","f":"final-phase","value":{"quiesce_ms":0}}"#,
        r#"{"index":3,"time":3,"process":1,"type":"invoke","f":"final-read","key":"k","node":"r1"}"#,
        r#"{"index":4,"time":4,"process":1,"type":"ok","f":"final-read","key":"k","node":"r1","value":null}"#,
        r#"{"index":5,"time":5,"process":1,"type":"invoke","f":"db-final-read","key":"k","node":"db"}"#,
        r#"{"index":6,"time":6,"process":1,"type":"ok","f":"db-final-read","key":"k","node":"db","value":{"version":1,"write":"a","log":[[0,"init"],[1,"a"]]}}"#,
    ];
    let text = lines.join("\n") + "\n";
    let mut b = Builder::new();
    coherence_store::reader::read_from(text.as_bytes(), std::path::Path::new("t"), &mut b).unwrap();
    let r = check_history(&b.finish(), &Options::default(), "t", vec![], 0);
    let status = |k: AnomalyKind| r.checks.iter().find(|c| c.name == k).unwrap().status;
    assert_eq!(status(NonConvergence), Status::Valid, "{:?}", r.checks);
    assert_eq!(status(LostWrite), Status::Valid, "{:?}", r.checks);
    assert_eq!(status(VersionFork), Status::Valid, "{:?}", r.checks);
    // It holds no read at all: the read checks had nothing to judge.
    for k in [StaleRead, PhantomRead, MonotonicRead, ReadYourWrites] {
        assert_eq!(status(k), Status::Unknown, "{k:?}");
    }
}
