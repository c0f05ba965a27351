//! JUnit XML for CI: one test case per checker. An invalid check is a failure carrying
//! its count and its first explanations; a check the history cannot decide is skipped
//! with the reason; a valid one passes.
//!
//! quick-xml escapes `<`, `>`, `&`, `'` and `"`, nothing else: a control character
//! would reach the document as it is, and XML 1.0 forbids most of them (NUL, ESC,
//! U+0001, U+FFFE, ...), so a parser refuses the file. Every string of the results is
//! therefore escaped first ([`shown`]); what remains is printable.

use crate::bound::shown;
use crate::results::{Results, Status, Verdict};
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use quick_xml::Writer;

/// How many explanations a failure carries at most.
const EXPLAINED: usize = 3;

/// The results as a JUnit XML document.
pub fn render(results: &Results) -> String {
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    let failures = results
        .checks
        .iter()
        .filter(|c| c.status == Status::Invalid)
        .count();
    let skipped = results
        .checks
        .iter()
        .filter(|c| matches!(c.status, Status::Unknown | Status::NotRun))
        .count();
    // One more case, the verdict: passes when valid, fails when invalid, an error when
    // unknown (the run could not vouch for the system: faults that did not happen,
    // checks that could not decide, no evidence).
    let (failures, errors) = match results.verdict {
        Verdict::Invalid => (failures + 1, 0),
        Verdict::Unknown => (failures, 1),
        Verdict::Valid => (failures, 0),
    };
    let (tests, failures, skipped, errors) = (
        (results.checks.len() + 1).to_string(),
        failures.to_string(),
        skipped.to_string(),
        errors.to_string(),
    );
    let suite_name = format!("coherence: {}", shown(&results.history));
    // Writing into a Vec cannot fail.
    let mut put = |e: Event| w.write_event(e).expect("writing to memory");
    put(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)));
    let mut suites = BytesStart::new("testsuites");
    suites.push_attribute(("name", "coherence"));
    suites.push_attribute(("tests", tests.as_str()));
    suites.push_attribute(("failures", failures.as_str()));
    suites.push_attribute(("errors", errors.as_str()));
    suites.push_attribute(("skipped", skipped.as_str()));
    put(Event::Start(suites));
    let mut suite = BytesStart::new("testsuite");
    suite.push_attribute(("name", suite_name.as_str()));
    suite.push_attribute(("tests", tests.as_str()));
    suite.push_attribute(("failures", failures.as_str()));
    suite.push_attribute(("errors", errors.as_str()));
    suite.push_attribute(("skipped", skipped.as_str()));
    put(Event::Start(suite));
    let mut properties = vec![
        ("verdict", results.verdict.name().to_string()),
        ("staleness_bound", results.staleness_bound.clone()),
        ("tool_version", results.tool_version.to_string()),
        ("events", results.stats.events.to_string()),
    ];
    properties.retain(|(_, v)| !v.is_empty());
    put(Event::Start(BytesStart::new("properties")));
    for (name, value) in &properties {
        let mut p = BytesStart::new("property");
        p.push_attribute(("name", *name));
        p.push_attribute(("value", value.as_str()));
        put(Event::Empty(p));
    }
    put(Event::End(BytesEnd::new("properties")));
    for check in &results.checks {
        let name = check.name.name();
        let mut case = BytesStart::new("testcase");
        case.push_attribute(("classname", "coherence.checks"));
        case.push_attribute(("name", name));
        match check.status {
            Status::Valid => put(Event::Empty(case)),
            Status::Unknown | Status::NotRun => {
                put(Event::Start(case));
                let mut s = BytesStart::new("skipped");
                let message = shown(
                    check
                        .reason
                        .as_deref()
                        .unwrap_or("the history cannot decide"),
                );
                s.push_attribute(("message", message.as_str()));
                put(Event::Empty(s));
                put(Event::End(BytesEnd::new("testcase")));
            }
            Status::Invalid => {
                put(Event::Start(case));
                let message = format!(
                    "{} {name} anomal{} (staleness bound {})",
                    check.count,
                    if check.count == 1 { "y" } else { "ies" },
                    results.staleness_bound
                );
                let mut f = BytesStart::new("failure");
                f.push_attribute(("message", message.as_str()));
                f.push_attribute(("type", name));
                put(Event::Start(f));
                let mut body = String::new();
                for a in results
                    .anomalies
                    .iter()
                    .filter(|a| a.name == check.name)
                    .take(EXPLAINED)
                {
                    let lines: Vec<String> =
                        a.indices.iter().map(|i| (i + 1).to_string()).collect();
                    body.push_str(&format!(
                        "{}\n  history lines {}\n  cycle: {}\n",
                        shown(&a.summary),
                        lines.join(", "),
                        shown(&a.cycle_text)
                    ));
                    if let Some(cause) = &a.cause {
                        body.push_str(&format!("  likely cause: {}\n", shown(&cause.text)));
                    }
                    body.push('\n');
                }
                if check.count as usize > EXPLAINED {
                    body.push_str(&format!(
                        "… and {} more; see results.json and report.html\n",
                        check.count as usize - EXPLAINED.min(check.count as usize)
                    ));
                }
                put(Event::Text(BytesText::new(&body)));
                put(Event::End(BytesEnd::new("failure")));
                put(Event::End(BytesEnd::new("testcase")));
            }
        }
    }
    let mut case = BytesStart::new("testcase");
    case.push_attribute(("classname", "coherence.run"));
    case.push_attribute(("name", "verdict"));
    match results.verdict {
        Verdict::Valid => put(Event::Empty(case)),
        Verdict::Invalid => {
            put(Event::Start(case));
            let total: u64 = results.anomaly_counts.values().sum();
            let message = format!("invalid: {total} anomalies proven");
            let mut f = BytesStart::new("failure");
            f.push_attribute(("message", message.as_str()));
            f.push_attribute(("type", "invalid"));
            put(Event::Empty(f));
            put(Event::End(BytesEnd::new("testcase")));
        }
        Verdict::Unknown => {
            put(Event::Start(case));
            let message = format!(
                "unknown: {}",
                shown(results.unknown_reasons.first().map_or("", String::as_str))
            );
            let mut e = BytesStart::new("error");
            e.push_attribute(("message", message.as_str()));
            e.push_attribute(("type", "unknown"));
            put(Event::Start(e));
            let body: String = results
                .unknown_reasons
                .iter()
                .map(|r| format!("{}\n", shown(r)))
                .collect();
            put(Event::Text(BytesText::new(&body)));
            put(Event::End(BytesEnd::new("error")));
            put(Event::End(BytesEnd::new("testcase")));
        }
    }
    put(Event::End(BytesEnd::new("testsuite")));
    put(Event::End(BytesEnd::new("testsuites")));
    let mut text = String::from_utf8(w.into_inner()).expect("UTF-8 in, UTF-8 out");
    text.push('\n');
    text
}
