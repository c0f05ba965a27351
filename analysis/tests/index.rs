//! The run index: every run of the store, newest first, its verdict and counts read from
//! its results, linked to its report; everything escaped.

use coherence_analysis::{check_file, index, Options};
use coherence_store::NoProgress;
use std::path::{Path, PathBuf};

mod hostile;

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/spec/examples")
        .join(name)
}

/// A run directory in `store` holding `example`'s history, checked unless `died`.
fn run(store: &Path, campaign: &str, name: &str, example_name: &str, died: bool) {
    let dir = store.join(campaign).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(example(example_name), dir.join("history.jsonl")).unwrap();
    if !died {
        let r = check_file(&dir.join("history.jsonl"), &Options::default(), &NoProgress).unwrap();
        std::fs::write(dir.join("results.json"), serde_json::to_vec(&r).unwrap()).unwrap();
    }
}

#[test]
fn the_index_lists_every_run_newest_first_with_its_verdict() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path();
    run(
        s,
        "lab-writer",
        "2026-11-23T100000Z",
        "fill-race.jsonl",
        false,
    );
    run(
        s,
        "lab-outbox",
        "2026-11-23T110000Z",
        "concurrent-ok.jsonl",
        false,
    );
    run(
        s,
        "lab-outbox",
        "2026-11-23T120000Z",
        "stale-read.jsonl",
        true,
    );
    run(
        s,
        "<img src=x onerror=alert(1)>",
        "2026-11-23T090000Z",
        "concurrent-ok.jsonl",
        false,
    );
    std::fs::create_dir_all(s.join("lab-writer/not-a-run")).unwrap();
    let path = index::write(s).unwrap();
    assert_eq!(path, s.join("index.html"));
    let html = std::fs::read_to_string(&path).unwrap();

    let at = |needle: &str| {
        html.find(needle)
            .unwrap_or_else(|| panic!("{needle} missing:\n{html}"))
    };
    // Newest first, across campaigns.
    assert!(at("2026-11-23T120000Z") < at("2026-11-23T110000Z"));
    assert!(at("2026-11-23T110000Z") < at("2026-11-23T100000Z"));
    assert!(at("2026-11-23T100000Z") < at("2026-11-23T090000Z"));
    assert!(
        !html.contains("not-a-run"),
        "a directory without a history is no run"
    );
    // Verdicts and counts from each run's results; a run that died has none.
    assert!(
        html.contains(r#"<td class="no results">no results</td>"#),
        "{html}"
    );
    assert!(
        html.contains(r#"<td class="invalid">invalid</td>"#),
        "{html}"
    );
    assert!(html.contains("stale-read 1"), "{html}");
    assert!(html.contains(r#"href="lab-writer/2026-11-23T100000Z/report.html""#));
    // Escaped.
    assert!(!html.contains("<img"), "{html}");
    assert!(
        html.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{html}"
    );
    assert!(!html.contains("http") && !html.contains("<script"));
}

/// Regression: a run directory's name (and anything a results.json says) reached the
/// index raw: control characters are shown escaped, and links are percent-encoded.
#[test]
fn the_index_shows_control_characters_in_names_escaped_and_links_encoded() {
    let store = tempfile::tempdir().unwrap();
    let campaign = format!("camp{}", hostile::CTRL.replace('\0', ""));
    let dir = store.path().join(&campaign).join("2026-11-23T100000Z");
    std::fs::create_dir_all(&dir).unwrap();
    let history = hostile::control_characters(&dir);
    std::fs::rename(&history, dir.join("history.jsonl")).unwrap();
    let r = check_file(&dir.join("history.jsonl"), &Options::default(), &NoProgress).unwrap();
    let mut results = serde_json::to_value(&r).unwrap();
    results["anomaly-counts"][format!("evil{}", hostile::CTRL)] = 3.into();
    std::fs::write(dir.join("results.json"), results.to_string()).unwrap();
    let html = std::fs::read_to_string(index::write(store.path()).unwrap()).unwrap();
    assert_eq!(hostile::raw_controls(&html), None);
    assert!(!html.chars().any(|c| c < ' ' && c != '\n'), "{html:?}");
    let shown = hostile::CTRL_SHOWN.replace(r"\0", "");
    assert!(html.contains(&format!("<td>camp{shown}</td>")), "{html}");
    assert!(
        html.contains(&format!("evil{} 3", hostile::CTRL_SHOWN)),
        "{html}"
    );
    assert!(
        html.contains(
            r#"href="camp%1B%01%EF%BF%BE%7F%0A%0D%1B[2J/2026-11-23T100000Z/report.html""#
        ),
        "{html}"
    );
}
