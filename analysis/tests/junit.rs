//! JUnit XML: well-formed, one test case per checker, failures carrying counts and
//! explanations, unknown checks skipped, and everything from the history escaped.

use coherence_analysis::{check_file, junit, Options, Results};
use coherence_store::NoProgress;
use quick_xml::events::Event;
use quick_xml::Reader;
use std::path::{Path, PathBuf};

mod hostile;

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/spec/examples")
        .join(name)
}

fn checked(path: &Path) -> Results {
    check_file(path, &Options::default(), &NoProgress).expect("the history reads")
}

/// Every element name and its text, read back by an XML parser (which fails on a
/// malformed document).
fn parse(xml: &str) -> Vec<(String, String)> {
    let mut reader = Reader::from_str(xml);
    let mut out = Vec::new();
    let mut open: Vec<String> = Vec::new();
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Start(e) => {
                let name = String::from_utf8(e.name().as_ref().to_vec()).unwrap();
                out.push((name.clone(), String::new()));
                open.push(name);
            }
            Event::Empty(e) => {
                out.push((
                    String::from_utf8(e.name().as_ref().to_vec()).unwrap(),
                    String::new(),
                ));
            }
            Event::Text(t) => {
                let text = t.xml10_content().unwrap().into_owned();
                push_text(&mut out, &open, &text);
            }
            Event::GeneralRef(r) => {
                let text = match r.decode().unwrap().as_ref() {
                    "lt" => "<",
                    "gt" => ">",
                    "amp" => "&",
                    "quot" => "\"",
                    "apos" => "'",
                    other => panic!("unexpected entity &{other};"),
                };
                push_text(&mut out, &open, text);
            }
            Event::End(_) => {
                open.pop();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    out
}

fn push_text(out: &mut [(String, String)], open: &[String], text: &str) {
    if let Some(last) = open.last() {
        if let Some(entry) = out.iter_mut().rev().find(|(n, _)| n == last) {
            entry.1.push_str(text);
        }
    }
}

#[test]
fn one_case_per_checker_and_failures_carry_counts_and_explanations() {
    let r = checked(&example("fill-race.jsonl"));
    let xml = junit::render(&r);
    let elements = parse(&xml);
    let cases = elements.iter().filter(|(n, _)| n == "testcase").count();
    assert_eq!(
        cases,
        coherence_analysis::AnomalyKind::ALL.len() + 1,
        "one per checker, and the verdict"
    );
    let failures: Vec<&(String, String)> =
        elements.iter().filter(|(n, _)| n == "failure").collect();
    let invalid = r
        .checks
        .iter()
        .filter(|c| c.status == coherence_analysis::results::Status::Invalid)
        .count();
    assert!(invalid > 0);
    assert_eq!(
        failures.len(),
        invalid + 1,
        "each invalid check, and the verdict"
    );
    assert!(xml.contains(r#"name="stale-read""#));
    assert!(xml.contains(&format!(
        r#"message="{} stale-read anomal"#,
        r.anomaly_counts["stale-read"]
    )));
    let body = &failures[0].1;
    assert!(body.contains("history lines "), "{body}");
    assert!(body.contains("cycle: "), "{body}");
    assert!(body.contains("likely cause: "), "{body}");
}

#[test]
fn an_unknown_history_has_no_failure_skips_its_undecided_checks_and_errs_its_verdict() {
    let r = checked(&example("concurrent-ok.jsonl"));
    let xml = junit::render(&r);
    let elements = parse(&xml);
    assert!(!elements.iter().any(|(n, _)| n == "failure"), "{xml}");
    // The verdict is unknown: an error, so a CI gate reading JUnit does not go green.
    let errors: Vec<&(String, String)> = elements.iter().filter(|(n, _)| n == "error").collect();
    assert_eq!(errors.len(), 1, "{xml}");
    assert!(
        errors[0].1.contains("non-convergence could not decide"),
        "{}",
        errors[0].1
    );
    assert!(xml.contains(r#"errors="1""#), "{xml}");
    let unknown = r
        .checks
        .iter()
        .filter(|c| {
            matches!(
                c.status,
                coherence_analysis::results::Status::Unknown
                    | coherence_analysis::results::Status::NotRun
            )
        })
        .count();
    // The undecided checks, and those that do not apply (no observer watched).
    assert_eq!(
        elements.iter().filter(|(n, _)| n == "skipped").count(),
        unknown
    );
}

#[test]
fn everything_from_the_history_is_escaped() {
    let evil = "<img src=x onerror=alert(1)>]]></failure>";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("evil.jsonl");
    let lines = [
        serde_json::json!({"index":0,"time":0,"process":0,"type":"invoke","f":"write","key":evil,"node":"db","value":{"write":"a"}}),
        serde_json::json!({"index":1,"time":1000000,"process":0,"type":"ok","f":"write","key":evil,"node":"db","value":{"version":1,"write":"a"}}),
        serde_json::json!({"index":2,"time":10000000,"process":1,"type":"invoke","f":"read","key":evil,"node":"<b>r1</b>"}),
        serde_json::json!({"index":3,"time":11000000,"process":1,"type":"ok","f":"read","key":evil,"node":"<b>r1</b>","value":{"version":0,"write":"init"}}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text).unwrap();
    let r = checked(&path);
    assert_eq!(r.anomaly_counts["stale-read"], 1);
    let xml = junit::render(&r);
    assert!(!xml.contains("<img"), "{xml}");
    assert!(!xml.contains("<b>"), "{xml}");
    let elements = parse(&xml);
    let failure = elements.iter().find(|(n, _)| n == "failure").unwrap();
    assert!(
        failure.1.contains(evil),
        "the key reads back as text: {}",
        failure.1
    );
}

/// Regression: quick-xml escapes `<>&'"` only, so a node name holding NUL or ESC made
/// junit.xml ill-formed (XML 1.0 forbids them). Every string is shown escaped.
#[test]
fn junit_of_names_with_control_characters_is_well_formed_xml() {
    let dir = tempfile::tempdir().unwrap();
    let r = checked(&hostile::control_characters(dir.path()));
    assert_eq!(r.anomaly_counts["stale-read"], 1, "{:?}", r.anomaly_counts);
    assert_eq!(
        r.anomaly_counts["phantom-read"], 1,
        "{:?}",
        r.anomaly_counts
    );
    let xml = junit::render(&r);
    assert_eq!(hostile::raw_controls(&xml), None);
    // No character XML 1.0 forbids (it allows tab, newline, carriage return below 0x20).
    assert!(
        !xml.chars()
            .any(|c| (c < ' ' && !"\t\n\r".contains(c)) || c == '\u{fffe}' || c == '\u{ffff}'),
        "{xml}"
    );
    let elements = parse(&xml);
    let failures: String = elements
        .iter()
        .filter(|(n, _)| n == "failure")
        .map(|(_, t)| t.as_str())
        .collect();
    assert!(
        failures.contains(&format!("\"k{}\"", hostile::CTRL_SHOWN)),
        "the key reads back, escaped: {failures}"
    );
    assert!(
        failures.contains(&format!("on r1{}", hostile::CTRL_SHOWN)),
        "the node: {failures}"
    );
    assert!(
        failures.contains(&format!("\"ghost{}\"", hostile::CTRL_SHOWN)),
        "the write id: {failures}"
    );
    assert!(
        xml.contains(r"h\u{1b}[2J\u{1}.jsonl"),
        "the file name: {xml}"
    );

    // Unknown when the anomalies' checks are left out: the reasons (the faults' errors,
    // the signal) are the error's text.
    let options = Options {
        checks: Some(vec![coherence_analysis::AnomalyKind::NonConvergence]),
        ..Options::default()
    };
    let r = check_file(
        &hostile::control_characters(dir.path()),
        &options,
        &NoProgress,
    )
    .unwrap();
    assert_eq!(r.verdict, coherence_analysis::Verdict::Unknown);
    let xml = junit::render(&r);
    assert_eq!(hostile::raw_controls(&xml), None);
    let elements = parse(&xml);
    let error = &elements.iter().find(|(n, _)| n == "error").unwrap().1;
    for reason in [
        format!("failed to heal: {}", hostile::CTRL_SHOWN),
        format!("a requested {} fault did not happen", hostile::CTRL_SHOWN),
        format!("interrupted by {}", hostile::CTRL_SHOWN),
    ] {
        assert!(error.contains(&reason), "{reason} in {error}");
    }
}
