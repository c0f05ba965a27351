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

/// Every anomaly's count: the ones given, zero for the rest.
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
    // (and the observer checks do not apply: the history has no cache observer)
    assert_eq!(
        not_run,
        vec![
            LostWrite,
            NonConvergence,
            MissingInvalidation,
            SlowInvalidation
        ]
    );
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

/// The project's own examples of the observer checks (`docs/examples/README.md` states
/// their results).
fn observer_example(name: &str) -> Results {
    let options = Options {
        invalidation_bound: Some(200_000_000),
        ..Options::default()
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/examples")
        .join(name);
    check_file(&path, &options, &NoProgress).expect("the example reads")
}

fn status_of(r: &Results, k: AnomalyKind) -> Status {
    r.checks.iter().find(|c| c.name == k).unwrap().status
}

#[test]
fn example_missing_invalidation() {
    let r = observer_example("missing-invalidation.jsonl");
    assert_eq!(r.verdict, Verdict::Invalid);
    assert_eq!(
        counts(&r),
        expect(&[
            (StaleRead, 1),
            (NonConvergence, 1),
            (MissingInvalidation, 1)
        ])
    );
    assert_eq!(status_of(&r, SlowInvalidation), Status::Valid);
    let a = r
        .anomalies
        .iter()
        .find(|a| a.name == MissingInvalidation)
        .unwrap();
    assert_eq!(
        a.node.as_deref(),
        Some("r1a"),
        "counted under the watched node"
    );
    assert!(a.summary.contains("no invalidation"), "{}", a.summary);
    assert_eq!(a.cause.as_ref().unwrap().kind, CauseKind::Unexplained);
    assert_eq!(r.per_node["r1a"].anomalies["missing-invalidation"], 1);
    assert_eq!(r.causes["stale-read"]["lost-invalidation"], 1);
    let lag = r
        .invalidation_lag
        .as_ref()
        .expect("the history has an observer");
    assert_eq!(
        (lag.all.awaited, lag.all.missing, lag.all.invalidated),
        (1, 1, 0)
    );
    assert_eq!(lag.all.within.last().unwrap().fraction, 0.0);
    assert_eq!(lag.per_region["r1"].missing, 1);
}

#[test]
fn example_unversioned() {
    // The same history as missing-invalidation.jsonl, with no version anywhere: the
    // commit order gives them, and the same anomalies come out; plus what no commit shows.
    let r = observer_example("unversioned.jsonl");
    assert_eq!(r.verdict, Verdict::Invalid);
    assert_eq!(
        counts(&r),
        expect(&[
            (StaleRead, 1),
            (NonConvergence, 1),
            (MissingInvalidation, 1),
            (LostWrite, 1),
            (PhantomRead, 1)
        ])
    );
    let versioned = observer_example("missing-invalidation.jsonl");
    for kind in [StaleRead, NonConvergence, MissingInvalidation] {
        let a = |r: &Results| {
            let a = r.anomalies.iter().find(|a| a.name == kind).unwrap();
            (
                a.staleness_ns,
                a.cause.as_ref().map(|c| c.kind),
                a.node.clone(),
            )
        };
        assert_eq!(a(&r), a(&versioned), "{kind:?}");
    }
    let lost = r.anomalies.iter().find(|a| a.name == LostWrite).unwrap();
    assert!(lost.summary.contains("never committed"), "{}", lost.summary);
}

#[test]
fn example_slow_invalidation() {
    let r = observer_example("slow-invalidation.jsonl");
    assert_eq!(r.verdict, Verdict::Invalid);
    assert_eq!(counts(&r), expect(&[(StaleRead, 1), (SlowInvalidation, 1)]));
    assert_eq!(status_of(&r, MissingInvalidation), Status::Valid);
    assert_eq!(r.causes["stale-read"]["late-invalidation"], 1);
    let lag = &r.invalidation_lag.as_ref().unwrap().per_node["r1a"];
    assert_eq!((lag.invalidated, lag.missing), (1, 0));
    // From the change stream's commit (11 ms) to the observed deletion (400 ms).
    assert_eq!(lag.p50_ns, 389_000_000);
    assert_eq!(lag.max_ns, 389_000_000);
    let within: Vec<f64> = lag.within.iter().map(|w| w.fraction).collect();
    assert_eq!(
        within,
        vec![0.0, 0.0, 0.0, 1.0],
        "10 ms, 100 ms, 200 ms, 1 s"
    );
    // Without a bound, slow-invalidation does not apply, and says why.
    let r = check_file(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/slow-invalidation.jsonl"),
        &Options::default(),
        &NoProgress,
    )
    .unwrap();
    let c = r
        .checks
        .iter()
        .find(|c| c.name == SlowInvalidation)
        .unwrap();
    assert_eq!(c.status, Status::NotRun);
    assert!(c
        .reason
        .as_deref()
        .unwrap()
        .contains("no invalidation bound"));
}

#[test]
fn a_killed_node_leaves_its_invalidations_undecided_not_missing() {
    // The missing-invalidation example, with r1a killed and restarted in between: it
    // came back empty (or resynced), which its observer cannot see, so the missing
    // invalidation is not proven.
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/examples/missing-invalidation.jsonl");
    let mut events: Vec<serde_json::Value> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let at = events
        .iter()
        .position(|e| e["time"].as_u64().unwrap() >= 100_000_000)
        .unwrap();
    let kill = serde_json::json!({"time": 100_000_000u64, "process": "nemesis", "type": "info", "f": "kill",
        "value": {"seq": 0, "fault": {"kill": {"node": "r1a", "service": "redis", "pids": [1]}}}});
    let restart = serde_json::json!({"time": 200_000_000u64, "process": "nemesis", "type": "info", "f": "restart",
        "value": {"seq": 0, "healed": true}});
    events.insert(at, restart);
    events.insert(at, kill);
    let text: String = events
        .iter_mut()
        .enumerate()
        .map(|(i, e)| {
            e["index"] = i.into();
            format!("{e}\n")
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("killed.jsonl");
    std::fs::write(&file, text).unwrap();
    let r = check_file(&file, &Options::default(), &NoProgress).unwrap();
    assert_eq!(r.anomaly_counts["missing-invalidation"], 0);
    let c = r
        .checks
        .iter()
        .find(|c| c.name == MissingInvalidation)
        .unwrap();
    assert_eq!(c.status, Status::Unknown, "{c:?}");
    assert!(
        c.reason
            .as_deref()
            .unwrap()
            .contains("killed or failed over"),
        "{c:?}"
    );
}

#[test]
fn example_observer_gap_is_unknown_not_valid() {
    let r = observer_example("observer-gap.jsonl");
    assert_eq!(counts(&r), expect(&[]));
    assert_eq!(status_of(&r, MissingInvalidation), Status::Unknown);
    assert_eq!(status_of(&r, SlowInvalidation), Status::Unknown);
    assert_eq!(r.verdict, Verdict::Unknown);
    let c = r
        .checks
        .iter()
        .find(|c| c.name == MissingInvalidation)
        .unwrap();
    assert!(c.reason.as_deref().unwrap().contains("blind"), "{c:?}");
    assert_eq!(r.invalidation_lag.as_ref().unwrap().all.undecided, 1);
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
fn results_json_is_versioned_and_names_every_anomaly() {
    let r = check("phantom.jsonl", 0);
    let json: serde_json::Value = serde_json::to_value(&r).unwrap();
    assert_eq!(json["format"], "coherence-results");
    assert_eq!(json["format_version"], 3);
    assert_eq!(json["valid"], false);
    assert_eq!(json["verdict"], "invalid");
    let counts = json["anomaly-counts"].as_object().unwrap();
    assert_eq!(counts.len(), AnomalyKind::ALL.len());
    assert_eq!(counts.len(), 9);
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
    use coherence_analysis::check::{self, Context};
    use coherence_analysis::model::Builder;
    use coherence_sim::{generate, FaultLevel, Mode, SimConfig};

    /// How the checker's causes compare with the simulator's truth.
    #[derive(Default, Debug)]
    struct Scores {
        right: u64,
        unexplained: u64,
        wrong: u64,
        /// (truth, named) -> count, for the message.
        confusion: BTreeMap<(String, String), u64>,
    }

    impl Scores {
        fn total(&self) -> u64 {
            self.right + self.unexplained + self.wrong
        }
    }

    /// Simulates with the truth recorded, checks, and scores the cause of every stale
    /// read and non-converged entry against what really happened.
    fn score(faults: FaultLevel, seed: u64, ops: u64) -> Scores {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let mut w = coherence_store::HistoryWriter::create(&path).unwrap();
        let config = SimConfig {
            seed,
            ops,
            keys: 200,
            faults,
            truth: true,
            ..SimConfig::default()
        };
        let summary = generate(&config, &mut w).unwrap();
        w.finish().unwrap();
        let truth: std::collections::HashMap<u64, &str> =
            summary.truth.iter().map(|t| (t.index, t.cause)).collect();
        let mut b = Builder::new();
        coherence_store::read_history(&path, &mut b, &NoProgress).unwrap();
        let h = b.finish();
        let ctx = Context::new(&h, 0);
        let findings = check::check(&ctx);
        let mut s = Scores::default();
        for f in &findings.findings {
            let Some(cause) = f.cause() else { continue };
            let index = h.ops[f.op() as usize].invoke_index;
            let true_cause = truth.get(&index).copied().unwrap_or("(no truth)");
            let named = cause.kind.name();
            if named == true_cause {
                s.right += 1;
            } else if cause.kind == CauseKind::Unexplained {
                s.unexplained += 1;
            } else {
                s.wrong += 1;
            }
            if named != true_cause {
                *s.confusion
                    .entry((true_cause.to_string(), named.to_string()))
                    .or_default() += 1;
            }
        }
        s
    }

    /// The checker's likely causes, held to the simulator's record of what really made
    /// each value stale, with no faults, some and many (3 × 50,000 operations): at least
    /// 95 % right, and `unexplained` rather than a wrong guess for the rest (measured:
    /// 98.9–99.8 % right, at most 1 % wrong, in cases the history leaves ambiguous; the
    /// bound on wrong guesses is 2 %).
    #[test]
    fn causes_are_the_true_mechanism() {
        for (faults, seed) in [
            (FaultLevel::None, 11),
            (FaultLevel::Some, 12),
            (FaultLevel::Many, 13),
        ] {
            let s = score(faults, seed, 50_000);
            let total = s.total().max(1) as f64;
            eprintln!(
                "{faults:?}: {} causes, {:.1} % right, {:.1} % unexplained, {:.1} % wrong; misses {:?}",
                s.total(),
                100.0 * s.right as f64 / total,
                100.0 * s.unexplained as f64 / total,
                100.0 * s.wrong as f64 / total,
                s.confusion
            );
            assert!(
                s.total() >= 100,
                "{faults:?}: too few anomalies to judge: {s:?}"
            );
            assert!(
                s.right as f64 >= 0.95 * total,
                "{faults:?}: only {} of {} causes right: {:?}",
                s.right,
                s.total(),
                s.confusion
            );
            assert!(
                s.wrong as f64 <= 0.02 * total,
                "{faults:?}: {} of {} causes wrong: {:?}",
                s.wrong,
                s.total(),
                s.confusion
            );
        }
    }

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
                // The simulator records no observers: their checks do not apply.
                let observer = matches!(c.name, MissingInvalidation | SlowInvalidation);
                let want = if observer {
                    Status::NotRun
                } else {
                    Status::Valid
                };
                assert_eq!(c.status, want, "seed {seed}: {:?}", c);
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
    use coherence_analysis::{check, check_history, detect, model::Builder, Options};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
        #[test]
        fn fast_checker_agrees_with_the_spec(steps in proptest::collection::vec(brute::step(), 1..60), bound in 0u64..3) {
            let bound = bound * 1_000_000;
            let lines = brute::history(&steps);
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            let mut builder = Builder::new();
            coherence_store::reader::read_from(text.as_bytes(), std::path::Path::new("prop.jsonl"), &mut builder)
                .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            let history = builder.finish();
            let options = Options { staleness_bound: bound, invalidation_bound: Some(brute::INVALIDATION_BOUND), ..Options::default() };
            let results = check_history(&history, &options, "prop", vec![], 0);
            let slow = brute::counts(&text, bound);
            prop_assert_eq!(&results.anomaly_counts, &slow, "history:\n{}", text);
            // The verdict and each check's status, by the definitions too.
            let (verdict, statuses) = brute::verdict(&text, bound);
            let fast: std::collections::BTreeMap<&str, &str> = results.checks.iter().map(|c| (c.name.name(), c.status.name())).collect();
            prop_assert_eq!(fast, statuses, "history:\n{}", text);
            prop_assert_eq!(results.verdict.name(), verdict, "{:?}\nhistory:\n{}", results.unknown_reasons, text);
        }

        /// Each detector on its own, held to the definition of its anomaly: the same
        /// findings (key, offending operation, version at stake), and the same status
        /// from what it judged.
        #[test]
        fn each_detector_agrees_with_the_spec(steps in proptest::collection::vec(brute::step(), 1..60), bound in 0u64..3) {
            let bound = bound * 1_000_000;
            let lines = brute::history(&steps);
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            let mut builder = Builder::new();
            coherence_store::reader::read_from(text.as_bytes(), std::path::Path::new("prop.jsonl"), &mut builder)
                .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            let h = builder.finish();
            let ctx = check::Context::new(&h, bound).with_invalidation_bound(Some(brute::INVALIDATION_BOUND));
            let mut slow = brute::findings(&text, bound);
            let (_, statuses) = brute::verdict(&text, bound);
            for &d in detect::DETECTORS {
                let name = d.kind().name();
                let found = check::check_with(&ctx, &[d]);
                let per_op = brute::counted_per_op(name);
                let mut fast: Vec<brute::Found> = found
                    .findings
                    .iter()
                    .map(|f| {
                        prop_assert_eq!(f.kind, d.kind());
                        Ok((
                            h.keys.name(f.key).to_string(),
                            per_op.then_some(f.index),
                            f.version(),
                        ))
                    })
                    .collect::<Result<_, TestCaseError>>()?;
                fast.sort();
                let want = slow.get_mut(name).expect("the spec defines it");
                want.sort();
                prop_assert_eq!(&fast, &*want, "{}: history:\n{}", name, text);
                let status = if d.applies(&ctx).is_err() {
                    "not-run"
                } else if !fast.is_empty() {
                    "invalid"
                } else if found.judged[0].undecided(&h).is_some() {
                    "unknown"
                } else {
                    "valid"
                };
                prop_assert_eq!(status, statuses[name], "{}: {:?}\nhistory:\n{}", name, found.judged, text);
            }
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
    // And every status of every check, and the verdicts invalid and unknown (a random
    // history is hardly ever wholly valid; the simulated correct systems are).
    let mut statuses: BTreeMap<(&'static str, &'static str), u64> = BTreeMap::new();
    let mut verdicts: BTreeMap<&'static str, u64> = BTreeMap::new();
    for _ in 0..400 {
        let steps = strategy.new_tree(&mut runner).unwrap().current();
        let text = brute::history(&steps).join("\n") + "\n";
        let (verdict, checks) = brute::verdict(&text, 0);
        *verdicts.entry(verdict).or_default() += 1;
        for (name, status) in checks {
            *statuses.entry((name, status)).or_default() += 1;
        }
    }
    for k in AnomalyKind::ALL {
        for status in ["valid", "invalid", "unknown"] {
            assert!(
                statuses.contains_key(&(k.name(), status)),
                "no random history has {} {status}: {statuses:?}",
                k.name()
            );
        }
    }
    for v in ["invalid", "unknown"] {
        assert!(
            verdicts.get(v).is_some_and(|&n| n > 0),
            "no random history is {v}: {verdicts:?}"
        );
    }
    // Values without versions: some get their version from the commit order, some name
    // writes no commit shows (phantom reads, lost writes), and some orders are not
    // certain; and some such histories are decided (valid or invalid) all the same.
    let (mut placed, mut phantoms, mut lost, mut blind, mut decided) = (0, 0, 0, 0, 0);
    for _ in 0..400 {
        let steps = strategy.new_tree(&mut runner).unwrap().current();
        let text = brute::history(&steps).join("\n") + "\n";
        let (p, ph, l, b) = brute::resolution(&text);
        placed += p;
        phantoms += ph;
        lost += l;
        blind += b as usize;
        if p > 0 && !b && brute::verdict(&text, 0).0 != "unknown" {
            decided += 1;
        }
    }
    assert!(
        placed > 0 && phantoms > 0 && lost > 0 && blind > 0 && decided > 0,
        "placed {placed}, phantoms {phantoms}, lost {lost}, blind {blind}, decided {decided}"
    );
    // Cache observers' read-backs (`sample`): some histories' invalidation findings
    // rest on them (taking the samples out changes what is found; rare, so more
    // histories).
    let invalidations = |text: &str| {
        let c = brute::counts(text, 0);
        (c["missing-invalidation"], c["slow-invalidation"])
    };
    let mut by_samples = 0;
    for _ in 0..1500 {
        let steps = strategy.new_tree(&mut runner).unwrap().current();
        let text = brute::history(&steps).join("\n") + "\n";
        let without: String = text
            .lines()
            .filter(|l| !l.contains(r#""f":"sample""#))
            .map(|l| format!("{l}\n"))
            .collect();
        if without != text && invalidations(&text) != invalidations(&renumber(&without)) {
            by_samples += 1;
        }
    }
    assert!(
        by_samples > 0,
        "no random history's findings rest on a sample"
    );
}

/// The lines of `text` with their indexes made consecutive again.
fn renumber(text: &str) -> String {
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["index"] = serde_json::json!(i);
            format!("{v}\n")
        })
        .collect()
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

    /// A service's history: topology (r1a in r1), observers, a write acknowledged at
    /// 4 ms, r1a invalidated at 5 ms, then `middle`, then a read through the service of
    /// r1 at 10 ms returning the old value.
    fn service_history(middle: &[&str]) -> Results {
        let mut lines = vec![
            r#""time":0,"process":"control","type":"info","f":"topology","value":{"caches":[{"node":"r1a","region":"r1"}],"databases":[{"node":"db"}]}}"#,
            r#""time":0,"process":"control","type":"info","f":"observe","value":{"caches":["r1a"],"databases":["db"]}}"#,
            r#""time":0,"process":0,"type":"invoke","f":"write","key":"k","node":"app:r1","value":{"write":"a"},"region":"r1"}"#,
            r#""time":3000000,"process":"cdc:db","type":"info","f":"commit","key":"k","node":"db","value":{"write":"a","lsn":"0/1"}}"#,
            r#""time":4000000,"process":0,"type":"ok","f":"write","key":"k","node":"app:r1","value":{"write":"a"},"region":"r1"}"#,
            r#""time":5000000,"process":"monitor:r1a","type":"info","f":"invalidate","key":"k","node":"r1a"}"#,
        ];
        lines.extend(middle);
        lines.extend([
            r#""time":10000000,"process":1,"type":"invoke","f":"read","key":"k","node":"app:r1","region":"r1"}"#,
            r#""time":11000000,"process":1,"type":"ok","f":"read","key":"k","node":"app:r1","value":{"write":"init"},"region":"r1"}"#,
        ]);
        check_lines(&lines)
    }

    #[test]
    fn a_set_the_observer_saw_after_the_invalidation_is_the_services_fill_race() {
        // No client recorded a fill; r1a's observer saw the key set after it was
        // invalidated for the write: the service filled the old row back.
        let r = service_history(&[
            r#""time":6000000,"process":"monitor:r1a","type":"info","f":"set","key":"k","node":"r1a"}"#,
        ]);
        assert_eq!(stale_cause(&r), CauseKind::FillRace);
        let text = &r.anomalies[0].cause.as_ref().unwrap().text;
        assert!(
            text.contains("r1a (the cache app:r1 reads through)'s cache observer saw the key set at 6 ms (line 7)")
                && text.contains("no client of the history recorded that fill"),
            "{text}"
        );
    }

    #[test]
    fn a_service_read_with_no_observed_set_is_not_a_fill_race() {
        // Invalidated in time and nothing set after: the history does not show why.
        let r = service_history(&[]);
        assert_ne!(stale_cause(&r), CauseKind::FillRace);
    }

    /// A history with one watched node n: `before` (evidence), a write of version 1
    /// invoked at 10 ms and acknowledged at 11 ms, then the final phase at 20 ms.
    fn awaited(before: &[&str]) -> Results {
        let mut lines = vec![
            r#""time":0,"process":"control","type":"info","f":"observe","value":{"caches":["n"],"databases":["db"]}}"#,
        ];
        lines.extend(before);
        lines.extend([
            r#""time":10000000,"process":0,"type":"invoke","f":"write","key":"k","node":"db","value":{"write":"a"}}"#,
            r#""time":11000000,"process":0,"type":"ok","f":"write","key":"k","node":"db","value":{"version":1,"write":"a"}}"#,
            r#""time":20000000,"process":"control","type":"info","f":"final-phase","value":{"quiesce_ms":0}}"#,
        ]);
        check_lines(&lines)
    }

    fn missing(r: &Results) -> Vec<&str> {
        r.anomalies
            .iter()
            .filter(|a| a.name == AnomalyKind::MissingInvalidation)
            .map(|a| a.summary.as_str())
            .collect()
    }

    #[test]
    fn a_read_back_shows_what_a_node_held() {
        // The observer saw the key set and read it back: n held version 0, and no
        // invalidation followed the commit of version 1.
        let r = awaited(&[
            r#""time":1000000,"process":"monitor:n","type":"info","f":"set","key":"k","node":"n"}"#,
            r#""time":2000000,"process":"monitor:n","type":"info","f":"sample","key":"k","node":"n","value":{"from":1500000,"held":{"version":0,"write":"init"}}}"#,
        ]);
        let found = missing(&r);
        assert_eq!(found.len(), 1, "{:?}", r.anomaly_counts);
        assert!(
            found[0].contains("held version 0 (its observer's read-back at line 3)"),
            "{}",
            found[0]
        );
        // A read-back of nothing shows nothing held: no invalidation was awaited.
        let r = awaited(&[
            r#""time":1000000,"process":"monitor:n","type":"info","f":"set","key":"k","node":"n"}"#,
            r#""time":2000000,"process":"monitor:n","type":"info","f":"sample","key":"k","node":"n","value":{"from":1500000,"held":null}}"#,
        ]);
        assert!(missing(&r).is_empty());
    }

    #[test]
    fn a_fill_whose_value_was_removed_before_it_completed_shows_nothing_held() {
        // The fill's SET landed (set at 2 ms) and was deleted (3 ms) before the fill's
        // answer came (4 ms): n did not hold version 0 when the write came.
        let fill = [
            r#""time":1000000,"process":2,"type":"invoke","f":"fill","key":"k","node":"n","value":{"version":0,"write":"init"}}"#,
            r#""time":2000000,"process":"monitor:n","type":"info","f":"set","key":"k","node":"n"}"#,
            r#""time":3000000,"process":"monitor:n","type":"info","f":"invalidate","key":"k","node":"n"}"#,
            r#""time":4000000,"process":2,"type":"ok","f":"fill","key":"k","node":"n","value":{"version":0,"write":"init"}}"#,
        ];
        assert!(missing(&awaited(&fill)).is_empty());
        // Without the deletion, it is evidence: the missing invalidation is found.
        let kept = [fill[0], fill[1], fill[3]];
        assert_eq!(missing(&awaited(&kept)).len(), 1);
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

    /// r1b replicates r1a; db2 is a standby of db1.
    const TOPOLOGY: &str = r#""time":0,"process":"control","type":"info","f":"topology","value":{"caches":[{"node":"r1a","region":"r1"},{"node":"r1b","region":"r1","replica_of":"r1a"}],"databases":[{"node":"db1"},{"node":"db2","standby_of":"db1"}]}}"#;
    const WRITE_DB1: [&str; 2] = [
        r#""time":0,"process":0,"type":"invoke","f":"write","key":"k","node":"db1","value":{"write":"a"}}"#,
        r#""time":4000000,"process":0,"type":"ok","f":"write","key":"k","node":"db1","value":{"version":1,"write":"a"}}"#,
    ];
    const READ_R1B: [&str; 2] = [
        r#""time":10000000,"process":1,"type":"invoke","f":"read","key":"k","node":"r1b"}"#,
        r#""time":11000000,"process":1,"type":"ok","f":"read","key":"k","node":"r1b","value":{"version":0,"write":"init"}}"#,
    ];

    #[test]
    fn a_replica_read_follows_its_primarys_invalidation() {
        // Regression: a read of replica r1b whose primary r1a was invalidated 2 ms after
        // the read was called a lost invalidation ("no invalidation of r1b"): the
        // primary's invalidation was late.
        let r = check_lines(&[
            TOPOLOGY,
            WRITE_DB1[0],
            WRITE_DB1[1],
            READ_R1B[0],
            READ_R1B[1],
            r#""time":12000000,"process":"invalidator","type":"info","f":"invalidate","key":"k","node":"r1a","value":{"version":1}}"#,
        ]);
        assert_eq!(stale_cause(&r), CauseKind::LateInvalidation);
        let text = &r.anomalies[0].cause.as_ref().unwrap().text;
        assert!(text.contains("r1a (the primary r1b replicates)"), "{text}");
        // Invalidated before the read: the deletion was still replicating.
        let r = check_lines(&[
            TOPOLOGY,
            WRITE_DB1[0],
            WRITE_DB1[1],
            r#""time":8000000,"process":"invalidator","type":"info","f":"invalidate","key":"k","node":"r1a","value":{"version":1}}"#,
            READ_R1B[0],
            READ_R1B[1],
        ]);
        assert_eq!(stale_cause(&r), CauseKind::ReplicaRead);
        let text = &r.anomalies[0].cause.as_ref().unwrap().text;
        assert!(text.contains("replica lag: r1b replicates r1a"), "{text}");
        // Never: lost, on the primary.
        let r = check_lines(&[
            TOPOLOGY,
            WRITE_DB1[0],
            WRITE_DB1[1],
            r#""time":8000000,"process":"invalidator","type":"info","f":"invalidate","key":"other","node":"r1a"}"#,
            READ_R1B[0],
            READ_R1B[1],
        ]);
        assert_eq!(stale_cause(&r), CauseKind::LostInvalidation);
        let text = &r.anomalies[0].cause.as_ref().unwrap().text;
        assert!(
            text.contains("no invalidation of r1a (the primary r1b replicates)"),
            "{text}"
        );
    }

    #[test]
    fn a_cache_failover_is_not_blamed_for_a_stale_database_read() {
        // Regression: any event whose f contained "failover" counted as a promotion of
        // anything, so a Redis Sentinel failover was blamed for a stale PostgreSQL read.
        let r = check_lines(&[
            TOPOLOGY,
            WRITE_DB1[0],
            WRITE_DB1[1],
            r#""time":5000000,"process":"nemesis","type":"info","f":"start-failover","value":{"seq":0}}"#,
            r#""time":6000000,"process":"nemesis","type":"info","f":"failover","value":{"seq":0,"region":"r1","promoted":"r1b","demoted":"r1a"}}"#,
            r#""time":7000000,"process":"nemesis","type":"info","f":"stop-failover","value":{"seq":0,"healed":true}}"#,
            r#""time":10000000,"process":1,"type":"invoke","f":"db-read","key":"k","node":"db1"}"#,
            r#""time":11000000,"process":1,"type":"ok","f":"db-read","key":"k","node":"db1","value":{"version":0,"write":"init"}}"#,
        ]);
        assert_eq!(stale_cause(&r), CauseKind::Unexplained);
        // A database failover that promoted the node read is named.
        let r = check_lines(&[
            TOPOLOGY,
            WRITE_DB1[0],
            WRITE_DB1[1],
            r#""time":6000000,"process":"nemesis","type":"info","f":"failover","value":{"service":"postgres","promoted":"db2","demoted":"db1"}}"#,
            r#""time":10000000,"process":1,"type":"invoke","f":"db-read","key":"k","node":"db2"}"#,
            r#""time":11000000,"process":1,"type":"ok","f":"db-read","key":"k","node":"db2","value":{"version":0,"write":"init"}}"#,
        ]);
        assert_eq!(stale_cause(&r), CauseKind::FailoverPromoted);
        // Before that failover, db2 was a standby: replica lag.
        let r = check_lines(&[
            TOPOLOGY,
            WRITE_DB1[0],
            WRITE_DB1[1],
            r#""time":10000000,"process":1,"type":"invoke","f":"db-read","key":"k","node":"db2"}"#,
            r#""time":11000000,"process":1,"type":"ok","f":"db-read","key":"k","node":"db2","value":{"version":0,"write":"init"}}"#,
        ]);
        assert_eq!(stale_cause(&r), CauseKind::DatabaseReplicaLag);
    }

    #[test]
    fn a_fill_from_a_lagging_standby_is_named_as_such() {
        // Regression: a fill of a value read from a lagging standby was called a fill
        // race (or a lost invalidation).
        let r = check_lines(&[
            TOPOLOGY,
            WRITE_DB1[0],
            r#""time":3000000,"process":"invalidator","type":"info","f":"invalidate","key":"k","node":"r1a","value":{"version":1}}"#,
            WRITE_DB1[1],
            r#""time":5000000,"process":2,"type":"invoke","f":"db-read","key":"k","node":"db2"}"#,
            r#""time":6000000,"process":2,"type":"ok","f":"db-read","key":"k","node":"db2","value":{"version":0,"write":"init"}}"#,
            r#""time":7000000,"process":2,"type":"invoke","f":"fill","key":"k","node":"r1a","value":{"version":0,"write":"init"}}"#,
            r#""time":8000000,"process":2,"type":"ok","f":"fill","key":"k","node":"r1a","value":{"version":0,"write":"init"}}"#,
            r#""time":10000000,"process":1,"type":"invoke","f":"read","key":"k","node":"r1a"}"#,
            r#""time":11000000,"process":1,"type":"ok","f":"read","key":"k","node":"r1a","value":{"version":0,"write":"init"}}"#,
        ]);
        // The db-read itself was stale (replica lag); the cache read after the fill:
        let stale: Vec<&coherence_analysis::explain::Anomaly> =
            r.anomalies.iter().filter(|a| a.name == StaleRead).collect();
        assert_eq!(stale.len(), 2);
        assert_eq!(
            stale[0].cause.as_ref().unwrap().kind,
            CauseKind::DatabaseReplicaLag
        );
        let cause = stale[1].cause.as_ref().unwrap();
        assert_eq!(cause.kind, CauseKind::DatabaseReplicaFill);
        assert!(
            cause.text.contains("from db2 (db-read 4 at 5 ms)"),
            "{}",
            cause.text
        );
    }

    #[test]
    fn clock_faults_are_fault_context_too() {
        // Regression: the checker's pairing did not know the clock faults (the report's
        // did), so a clock bump was shaded in the report but never named.
        let r = check_lines(&[
            r#""time":0,"process":"nemesis","type":"info","f":"bump-clock","value":{"seq":0,"fault":{"kind":"clock-skew","node":"r1","mode":"bump","offset_ms":3000}}}"#,
            WRITE[0],
            WRITE[1],
            r#""time":4500000,"process":"invalidator","type":"info","f":"invalidate","key":"other","node":"r1"}"#,
            READ_OLD[0],
            READ_OLD[1],
            r#""time":12000000,"process":"nemesis","type":"info","f":"reset-clock","value":{"seq":0,"healed":true}}"#,
        ]);
        let text = &r.anomalies[0].cause.as_ref().unwrap().text;
        assert!(text.contains("bump-clock (line 1) was in force"), "{text}");
    }

    #[test]
    fn without_any_invalidation_recorded_a_lost_one_is_not_guessed() {
        // A history that records no invalidation at all (a client that does not log
        // them) cannot tell a lost invalidation from one it never saw.
        let r = check_lines(&[WRITE[0], WRITE[1], READ_OLD[0], READ_OLD[1]]);
        assert_eq!(stale_cause(&r), CauseKind::Unexplained);
        let text = &r.anomalies[0].cause.as_ref().unwrap().text;
        assert!(text.contains("records no invalidation at all"), "{text}");
    }

    #[test]
    fn a_partition_during_a_lost_invalidation_is_mentioned() {
        let r = check_lines(&[
            r#""time":0,"process":"nemesis","type":"info","f":"start-partition","value":{"isolated":["r1"]}}"#,
            WRITE[0],
            WRITE[1],
            // The history records invalidations (of another key).
            r#""time":4500000,"process":"invalidator","type":"info","f":"invalidate","key":"other","node":"r1"}"#,
            READ_OLD[0],
            READ_OLD[1],
            r#""time":12000000,"process":"nemesis","type":"info","f":"stop-partition"}"#,
        ]);
        assert_eq!(stale_cause(&r), CauseKind::LostInvalidation);
        let text = &r.anomalies[0].cause.as_ref().unwrap().text;
        assert!(
            text.contains("start-partition (line 1) was in force"),
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

/// Values without versions (docs/history.md, *Values without versions*): a history
/// whose clients log only write ids, plus the commit observer's events, checks exactly
/// as the versioned history it came from.
mod unversioned {
    use super::*;
    use coherence_analysis::{check_history, model::Builder};
    use coherence_sim::{generate, FaultLevel, Mode, SimConfig};
    use proptest::prelude::*;
    use serde_json::{json, Value};

    /// A simulated history, as JSON events.
    fn simulated(mode: Mode, faults: FaultLevel, seed: u64) -> Vec<Value> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let mut w = coherence_store::HistoryWriter::create(&path).unwrap();
        let config = SimConfig {
            seed,
            ops: 1500,
            keys: 30,
            mode,
            faults,
            ..SimConfig::default()
        };
        generate(&config, &mut w).unwrap();
        w.finish().unwrap();
        std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The history with a commit observer: an `observe` event first, and the `commit`
    /// of every write the database committed (each acknowledged one, each a read saw,
    /// and each in a final log), each key's in version order, just before the final
    /// phase. Without
    /// the final logs (a client that knows no versions has none to send).
    fn with_commits(events: &[Value], stated: bool) -> Vec<Value> {
        // (key, version, write): a forked version was committed by two writes.
        let mut commits: std::collections::BTreeSet<(String, i64, String)> = Default::default();
        for e in events {
            let (f, kind) = (e["f"].as_str().unwrap(), e["type"].as_str().unwrap());
            let key = e["key"].as_str().unwrap_or_default().to_string();
            if kind == "ok" && f == "write" {
                let v = &e["value"];
                commits.insert((
                    key.clone(),
                    v["version"].as_i64().unwrap(),
                    v["write"].as_str().unwrap().into(),
                ));
            }
            // A write of unknown outcome that a read saw committed (and a failover
            // may have lost since): the change stream showed it.
            let v = &e["value"];
            if ["read", "db-read", "final-read", "fill"].contains(&f)
                && v["write"].as_str().is_some_and(|w| w != "init")
            {
                if let Some(version) = v["version"].as_i64() {
                    commits.insert((key.clone(), version, v["write"].as_str().unwrap().into()));
                }
            }
            if kind == "ok" && f == "db-final-read" {
                for entry in e["value"]["log"].as_array().into_iter().flatten() {
                    let (v, w) = (entry[0].as_i64().unwrap(), entry[1].as_str().unwrap());
                    if v > 0 {
                        commits.insert((key.clone(), v, w.into()));
                    }
                }
            }
        }
        let mut out = vec![
            json!({"process": "control", "type": "info", "f": "observe", "time": 0, "value": {"caches": [], "databases": ["db"]}}),
        ];
        for e in events {
            if e["f"] == "final-phase" {
                for (key, version, write) in &commits {
                    let mut value = json!({"write": write, "lsn": "0/1"});
                    if stated {
                        value["version"] = json!(version);
                    }
                    out.push(json!({"process": "cdc:db", "type": "info", "f": "commit", "key": key, "node": "db", "time": e["time"], "value": value}));
                }
            }
            let mut e = e.clone();
            if e["f"] == "db-final-read" && e["type"] == "ok" {
                e["value"].as_object_mut().unwrap().remove("log");
            }
            out.push(e);
        }
        for (i, e) in out.iter_mut().enumerate() {
            e["index"] = json!(i);
        }
        out
    }

    /// The same history with every client value naming only its write.
    fn stripped(events: &[Value]) -> Vec<Value> {
        events
            .iter()
            .map(|e| {
                let mut e = e.clone();
                if e["process"].is_i64()
                    && e["value"].get("version").is_some()
                    && e["value"]["write"].is_string()
                {
                    e["value"].as_object_mut().unwrap().remove("version");
                }
                e
            })
            .collect()
    }

    fn check(events: &[Value]) -> Value {
        let text: String = events.iter().map(|e| format!("{e}\n")).collect();
        let mut b = Builder::new();
        coherence_store::reader::read_from(
            text.as_bytes(),
            std::path::Path::new("h.jsonl"),
            &mut b,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let results = check_history(&b.finish(), &Options::default(), "h", vec![], 0);
        serde_json::to_value(&results).unwrap()
    }

    fn same(mode: Mode, faults: FaultLevel, seed: u64, stated: bool) -> Result<(), TestCaseError> {
        let versioned = with_commits(&simulated(mode, faults, seed), stated);
        let unversioned = stripped(&versioned);
        prop_assert!(unversioned != versioned);
        let (a, b) = (check(&versioned), check(&unversioned));
        for field in [
            "verdict",
            "anomaly_counts",
            "checks",
            "anomalies",
            "unknown_reasons",
            "staleness",
        ] {
            prop_assert_eq!(
                &a[field],
                &b[field],
                "{} differs ({:?}, {:?}, seed {})",
                field,
                mode,
                faults,
                seed
            );
        }
        prop_assert_eq!(a, b);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
        /// Versions stated in the commit events (a table with a version column): the
        /// same results even with database failovers, lost writes and forks.
        #[test]
        fn stated_commit_versions_check_as_the_versioned_history(seed in any::<u64>(), buggy in any::<bool>()) {
            let mode = if buggy { Mode::Buggy } else { Mode::Correct };
            same(mode, FaultLevel::Some, seed, true)?;
        }

        /// Versions from places in the commit order (no version column), where the
        /// database never forks.
        #[test]
        fn commit_order_checks_as_the_versioned_history(seed in any::<u64>(), buggy in any::<bool>()) {
            let mode = if buggy { Mode::Buggy } else { Mode::Correct };
            same(mode, FaultLevel::None, seed, false)?;
        }
    }

    /// What no commit shows, and a blind commit observer.
    #[test]
    fn uncommitted_writes_are_lost_and_their_reads_phantoms_unless_the_observer_was_blind() {
        let lines = |gap: bool| {
            let mut l = vec![
                r#"{"process":"control","type":"info","f":"observe","time":0,"value":{"caches":[],"databases":["db"]}}"#.to_string(),
                r#"{"process":1,"type":"invoke","f":"write","key":"k","time":1,"value":{"write":"a"}}"#.into(),
                r#"{"process":1,"type":"ok","f":"write","key":"k","time":2,"value":{"write":"a"}}"#.into(),
                r#"{"process":"cdc:db","type":"info","f":"commit","key":"k","node":"db","time":2,"value":{"write":"a"}}"#.into(),
                r#"{"process":1,"type":"invoke","f":"write","key":"k","time":3,"value":{"write":"b"}}"#.into(),
                r#"{"process":1,"type":"ok","f":"write","key":"k","time":4,"value":{"write":"b"}}"#.into(),
                r#"{"process":2,"type":"invoke","f":"read","key":"k","node":"c1","time":5}"#.into(),
                r#"{"process":2,"type":"ok","f":"read","key":"k","node":"c1","time":6,"value":{"write":"b"}}"#.into(),
                r#"{"process":2,"type":"invoke","f":"read","key":"k","node":"c1","time":7}"#.into(),
                r#"{"process":2,"type":"ok","f":"read","key":"k","node":"c1","time":8,"value":{"write":"init"}}"#.into(),
            ];
            if gap {
                l.push(r#"{"process":"cdc:db","type":"info","f":"observer-gap","node":"db","time":9,"value":{"node":"db","from":3,"to":9}}"#.into());
            }
            l.iter()
                .enumerate()
                .map(|(i, l)| l.replacen('{', &format!("{{\"index\":{i},"), 1) + "\n")
                .collect::<String>()
        };
        let check = |text: &str| {
            let mut b = Builder::new();
            coherence_store::reader::read_from(
                text.as_bytes(),
                std::path::Path::new("h.jsonl"),
                &mut b,
            )
            .unwrap();
            check_history(&b.finish(), &Options::default(), "h", vec![], 0)
        };
        let r = check(&lines(false));
        let c = counts(&r);
        assert_eq!(
            (c["lost-write"], c["phantom-read"], c["stale-read"]),
            (1, 1, 1),
            "{c:?}"
        );
        assert_eq!(r.verdict, Verdict::Invalid);
        let shown = serde_json::to_string(&r.anomalies).unwrap();
        assert!(
            shown.contains("no commit in the database's change stream shows it"),
            "{shown}"
        );
        assert!(shown.contains(r#"returned {\"write\": \"b\"}"#), "{shown}");
        // The observer blind from before b's commit: b may have been committed unseen.
        let r = check(&lines(true));
        let c = counts(&r);
        assert_eq!((c["lost-write"], c["phantom-read"]), (0, 0), "{c:?}");
        assert_eq!(r.verdict, Verdict::Invalid, "the stale read of init stands");
        let status = |k: AnomalyKind| r.checks.iter().find(|s| s.name == k).unwrap().status;
        assert_eq!(status(LostWrite), Status::Unknown);
        assert_eq!(status(PhantomRead), Status::Unknown);
        assert!(
            r.unknown_reasons
                .iter()
                .any(|u| u.contains("commit observer of db was blind")),
            "{:?}",
            r.unknown_reasons
        );
    }

    #[test]
    fn values_without_versions_need_a_commit_observer() {
        let text = concat!(
            r#"{"index":0,"time":0,"process":1,"type":"invoke","f":"read","key":"k","node":"c1"}"#,
            "\n",
            r#"{"index":1,"time":1,"process":1,"type":"ok","f":"read","key":"k","node":"c1","value":{"write":"a"}}"#,
            "\n",
        );
        let mut b = Builder::new();
        let err = coherence_store::reader::read_from(
            text.as_bytes(),
            std::path::Path::new("h.jsonl"),
            &mut b,
        )
        .unwrap_err();
        let shown = format!("{err:#}");
        assert!(shown.contains("h.jsonl:2:"), "{shown}");
        assert!(
            shown.contains("no commit observer watched the database"),
            "{shown}"
        );
    }
}
