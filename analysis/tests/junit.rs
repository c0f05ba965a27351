//! JUnit XML: well-formed, one test case per checker, failures carrying counts and
//! explanations, unknown checks skipped, and everything from the history escaped.

use coherence_analysis::{check_file, junit, Options, Results};
use coherence_store::NoProgress;
use quick_xml::events::Event;
use quick_xml::Reader;
use std::path::{Path, PathBuf};

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
    assert_eq!(cases, 8, "one per checker, and the verdict");
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
        .filter(|c| c.status == coherence_analysis::results::Status::Unknown)
        .count();
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
