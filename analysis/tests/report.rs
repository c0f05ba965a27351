//! The HTML report: its structure on a spec example, escaping of everything a history
//! can put in it, self-containment (nothing loaded from anywhere), and its size bound.

use coherence_analysis::model::History;
use coherence_analysis::report::{self, RunContext};
use coherence_analysis::{check_file_keeping, AnomalyKind, Options, Results};
use coherence_store::NoProgress;
use std::path::{Path, PathBuf};

mod hostile;

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/spec/examples")
        .join(name)
}

fn checked(path: &Path) -> (History, Results) {
    let (h, r, _) =
        check_file_keeping(path, &Options::default(), &NoProgress).expect("the history reads");
    (h, r)
}

/// The report's context as `coherence check --out` gathers it: the hash from the read.
fn context(path: &Path) -> RunContext {
    let (_, _, summary) =
        check_file_keeping(path, &Options::default(), &NoProgress).expect("the history reads");
    RunContext::gather(path, Some(summary.sha256)).expect("the run context")
}

fn render(path: &Path) -> String {
    let (h, r) = checked(path);
    report::render(&h, &r, &context(path))
}

/// The document's outline: section ids and headings, in order, tags stripped.
fn outline(html: &str) -> String {
    let mut out = String::new();
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        rest = &rest[start..];
        let tag_end = rest.find('>').unwrap();
        let tag = &rest[1..tag_end];
        if let Some(id) = tag
            .strip_prefix("section id=\"")
            .and_then(|t| t.split('"').next())
        {
            out.push_str(&format!("section #{id}\n"));
        }
        for h in ["h1", "h2", "h3"] {
            if tag == h || tag.starts_with(&format!("{h} ")) {
                let close = format!("</{h}>");
                let body_end = rest.find(&close).unwrap();
                let body = &rest[tag_end + 1..body_end];
                let mut text = String::new();
                let mut in_tag = false;
                for c in body.chars() {
                    match c {
                        '<' => in_tag = true,
                        '>' => in_tag = false,
                        c if !in_tag => text.push(c),
                        _ => {}
                    }
                }
                out.push_str(&format!("  {h} {text}\n"));
            }
        }
        rest = &rest[tag_end + 1..];
    }
    out
}

#[test]
fn report_of_the_fill_race_has_verdict_checks_and_explained_anomaly() {
    let html = render(&example("fill-race.jsonl"));
    let (_, r) = checked(&example("fill-race.jsonl"));
    let total: u64 = r.anomaly_counts.values().sum();
    assert!(total >= 1);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains(&format!(
        r#"<div id="verdict" class="verdict invalid">INVALID: {total} anomalies found</div>"#
    )));
    assert_eq!(
        html.matches(r#"<div class="anomaly""#).count(),
        total as usize
    );
    for kind in AnomalyKind::ALL {
        assert!(
            html.contains(&format!(r#"<tr id="check-{}">"#, kind.name())),
            "no row for {}",
            kind.name()
        );
    }
    // The anomaly with its history lines, cycle in words, diagram and cause.
    assert!(html.contains("history lines 5, 6, 7, 8, 9, 10, 11"));
    assert!(html.contains("write 4 →rt read 9 →rw write 4"));
    assert!(html.contains("read 9 saw version 0, which write 4 replaced (version 1)"));
    assert!(html.contains("likely cause (fill-race)"));
    let diagram = &html[html.find(r#"<div class="cycle">"#).unwrap()..];
    let diagram = &diagram[..diagram.find("</svg>").unwrap()];
    for label in [">write 4<", ">read 9<", ">rt<", ">rw<"] {
        assert!(
            diagram.contains(label),
            "{label} missing in the cycle diagram"
        );
    }
    assert_eq!(diagram.matches("<path ").count(), 2, "one arrow per edge");
    // Integrity: the history's hash, recomputable.
    let sum = report::sha256_file(&example("fill-race.jsonl")).unwrap();
    assert_eq!(sum.len(), 64);
    assert!(html.contains(&sum));
    assert!(html.contains("sha256sum fill-race.jsonl"));
    insta::assert_snapshot!("fill-race-outline", outline(&html));
}

#[test]
fn valid_and_unknown_histories_get_their_banners() {
    // concurrent-ok has no final phase: its verdict is unknown (shared/spec/examples).
    let html = render(&example("concurrent-ok.jsonl"));
    assert!(
        html.contains("verdict unknown\">UNKNOWN"),
        "banner UNKNOWN missing"
    );
    assert!(html.contains("non-convergence could not decide"));
    assert!(html.contains("<p>None found.</p>"));

    // A write, a read of it, then a final phase in which the cache misses and the
    // database holds it: every check has evidence and decides, and nothing is wrong.
    let dir = tempfile::tempdir().unwrap();
    let valid = dir.path().join("valid.jsonl");
    let lines = [
        r#"{"index":0,"time":0,"process":0,"type":"invoke","f":"write","key":"k","node":"db","value":{"write":"a"}}"#,
        r#"{"index":1,"time":1,"process":0,"type":"ok","f":"write","key":"k","node":"db","value":{"version":1,"write":"a"}}"#,
        r#"{"index":2,"time":2,"process":0,"type":"invoke","f":"read","key":"k","node":"r1"}"#,
        r#"{"index":3,"time":3,"process":0,"type":"ok","f":"read","key":"k","node":"r1","value":{"version":1,"write":"a"}}"#,
        r#"{"index":4,"time":4,"process":"control","type":"info","f":"final-phase","value":{"quiesce_ms":0}}"#,
        r#"{"index":5,"time":5,"process":1,"type":"invoke","f":"final-read","key":"k","node":"r1"}"#,
        r#"{"index":6,"time":6,"process":1,"type":"ok","f":"final-read","key":"k","node":"r1","value":null}"#,
        r#"{"index":7,"time":7,"process":1,"type":"invoke","f":"db-final-read","key":"k","node":"db"}"#,
        r#"{"index":8,"time":8,"process":1,"type":"ok","f":"db-final-read","key":"k","node":"db","value":{"version":1,"write":"a","log":[[0,"init"],[1,"a"]]}}"#,
    ];
    std::fs::write(&valid, lines.join("\n") + "\n").unwrap();
    let html = render(&valid);
    assert!(
        html.contains(r#"<div id="verdict" class="verdict valid">VALID: no anomaly found</div>"#),
        "banner VALID missing"
    );
    assert!(html.contains("<p>None found.</p>"));
}

const EVIL: &str = "<img src=x onerror=alert(1)>";

#[test]
fn everything_a_history_shows_is_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("evil.jsonl");
    let key = format!("{EVIL}</script>");
    let node = "<b>r1</b>";
    let lines = [
        serde_json::json!({"index":0,"time":0,"process":0,"type":"invoke","f":"write","key":key,"node":"db","value":{"write":"a"},"region":"<i>r</i>"}),
        serde_json::json!({"index":1,"time":1000000,"process":0,"type":"ok","f":"write","key":key,"node":"db","value":{"version":1,"write":"a"}}),
        serde_json::json!({"index":2,"time":2000000,"process":"nemesis","type":"info","f":"start-partition","value":{"nodes":[EVIL]}}),
        serde_json::json!({"index":3,"time":10000000,"process":1,"type":"invoke","f":"read","key":key,"node":node,"region":"<i>r</i>"}),
        serde_json::json!({"index":4,"time":11000000,"process":1,"type":"ok","f":"read","key":key,"node":node,"value":{"version":0,"write":"init"}}),
        serde_json::json!({"index":5,"time":12000000,"process":2,"type":"invoke","f":"read","key":key,"node":node}),
        serde_json::json!({"index":6,"time":13000000,"process":2,"type":"fail","f":"read","key":key,"node":node,"error":format!("{EVIL} </script><script>alert(2)</script>")}),
        serde_json::json!({"index":7,"time":14000000,"process":"nemesis","type":"info","f":"stop-partition"}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text).unwrap();
    let (h, r) = checked(&path);
    assert_eq!(r.anomaly_counts["stale-read"], 1, "the read is stale");
    let html = report::render(&h, &r, &context(&path));
    // Shown, as text.
    assert!(
        html.contains("&lt;img src=x onerror=alert(1)&gt;&lt;/script&gt;"),
        "the key"
    );
    assert!(html.contains("&lt;b&gt;r1&lt;/b&gt;"), "the node");
    assert!(html.contains("&lt;i&gt;r&lt;/i&gt;"), "the region");
    assert!(
        html.contains("&lt;script&gt;alert(2)&lt;/script&gt;"),
        "the error"
    );
    // Never as markup.
    for raw in ["<img", "</script", "<script", "<b>r1", "<i>r"] {
        assert!(!html.contains(raw), "{raw} appears unescaped");
    }
}

/// Nothing the report names is fetched: no URL, no script, no external stylesheet or
/// font, no attribute that loads anything.
fn assert_self_contained(html: &str) {
    for bad in [
        "http://",
        "https://",
        "src=",
        "<script",
        "<link",
        "@import",
        "url(",
        "href=\"/",
        "@font-face",
    ] {
        assert!(!html.contains(bad), "the report contains {bad:?}");
    }
    // Links only within the page.
    for (i, _) in html.match_indices("href=\"") {
        assert!(html[i + 6..].starts_with('#'), "a link out of the page");
    }
    assert!(html.contains("@media print"), "no print stylesheet");
}

#[test]
fn reports_are_self_contained() {
    for name in [
        "fill-race.jsonl",
        "failover-lost-write.jsonl",
        "session.jsonl",
    ] {
        assert_self_contained(&render(&example(name)));
    }
}

fn simulated(dir: &Path, ops: u64) -> PathBuf {
    use coherence_sim::{generate, Mode, SimConfig};
    let path = dir.join(format!("sim-{ops}.jsonl"));
    let mut w = coherence_store::HistoryWriter::create(&path).unwrap();
    let config = SimConfig {
        seed: 3,
        ops,
        mode: Mode::Buggy,
        ..SimConfig::default()
    };
    generate(&config, &mut w).unwrap();
    w.finish().unwrap();
    path
}

#[test]
fn report_size_does_not_grow_with_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let (small_ops, large_ops) = (20_000u64, 200_000u64);
    let small = render(&simulated(dir.path(), small_ops));
    let large_path = simulated(dir.path(), large_ops);
    let (h, r) = checked(&large_path);
    assert!(
        r.anomaly_counts.values().sum::<u64>() > 50,
        "enough anomalies to hit the cap"
    );
    assert!(r.stats.nemesis_events > 0, "faults to shade");
    let large = report::render(&h, &r, &context(&large_path));
    assert_self_contained(&large);
    // Every anomaly kind the history has is explained, up to the cap.
    assert_eq!(
        large.matches(r#"<div class="anomaly""#).count(),
        report::ANOMALY_LIMIT
    );
    // What one more operation costs, extrapolated to 5,000,000 operations.
    let per_op =
        (large.len() as f64 - small.len() as f64).max(0.0) / (large_ops - small_ops) as f64;
    let at_5m = large.len() as f64 + per_op * (5_000_000 - large_ops) as f64;
    eprintln!(
        "report: {} bytes at {small_ops} ops, {} bytes at {large_ops} ops; {per_op:.4} bytes per more op; {at_5m:.0} bytes extrapolated to 5 M ops",
        small.len(),
        large.len()
    );
    assert!(
        large.len() < 1_000_000,
        "{} bytes at {large_ops} ops",
        large.len()
    );
    assert!(
        at_5m < 5_000_000.0,
        "{at_5m:.0} bytes extrapolated to 5 M ops"
    );
}

#[test]
fn fault_spans_pair_openers_with_closers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("faults.jsonl");
    let ev = |i: u64, t: u64, f: &str| {
        serde_json::json!({"index":i,"time":t,"process":"nemesis","type":"info","f":f}).to_string()
    };
    let text = [
        ev(0, 10, "start-partition"),
        ev(1, 20, "kill"),
        ev(2, 30, "bump-clock"),
        ev(3, 40, "restart"),
        ev(4, 50, "failover"),
        ev(5, 60, "reset-clock"),
        ev(6, 70, "stop-partition"),
        ev(7, 80, "pause"),
        ev(8, 100, "strobe-clock"),
    ]
    .join("\n");
    std::fs::write(&path, text + "\n").unwrap();
    let (h, r) = checked(&path);
    let spans: Vec<(String, u64, u64, bool)> = report::fault_spans(&h, &r.faults)
        .into_iter()
        .map(|s| (s.f, s.start_ns, s.end_ns, s.interval))
        .collect();
    let s = |f: &str, a, b, i| (f.to_string(), a, b, i);
    assert_eq!(
        spans,
        vec![
            s("start-partition", 10, 70, true),
            s("kill", 20, 40, true),
            s("bump-clock", 30, 60, true),
            s("failover", 50, 50, false),
            // never closed: open to the end of the run
            s("pause", 80, 100, true),
            s("strobe-clock", 100, 100, true),
        ]
    );
}

/// The per-node timeline has a row per node and marks where an anomaly was observed.
#[test]
fn the_node_timeline_marks_anomalies_on_their_node() {
    let html = render(&example("fill-race.jsonl"));
    let start = html.find("Operations per node, with anomalies").unwrap();
    let section = &html[start..];
    let (h, r) = checked(&example("fill-race.jsonl"));
    let anomaly = r.anomalies.first().expect("fill-race has an anomaly");
    let node = anomaly.node.clone().unwrap();
    assert!(
        section.contains(&format!(">{node}</text>")),
        "no row for {node}"
    );
    assert!(
        section.contains(&format!("{} of {}", anomaly.name.name(), anomaly.key)),
        "no mark for the anomaly"
    );
    for op in &h.ops {
        if op.node != coherence_analysis::model::NONE {
            let name = h.node_name(op.node);
            assert!(
                section.contains(&format!(">{name}</text>")),
                "no row for {name}"
            );
        }
    }
}

/// Latency by outcome: failed and unknown operations get their own series.
#[test]
fn latency_is_shown_by_outcome_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.jsonl");
    let lines = [
        serde_json::json!({"index":0,"time":0,"process":0,"type":"invoke","f":"read","key":"k","node":"r1"}),
        serde_json::json!({"index":1,"time":1000000,"process":0,"type":"ok","f":"read","key":"k","node":"r1","value":null}),
        serde_json::json!({"index":2,"time":2000000,"process":1,"type":"invoke","f":"read","key":"k","node":"r1"}),
        serde_json::json!({"index":3,"time":9000000,"process":1,"type":"fail","f":"read","key":"k","node":"r1","error":"refused"}),
        serde_json::json!({"index":4,"time":10000000,"process":2,"type":"invoke","f":"read","key":"k","node":"r1"}),
        serde_json::json!({"index":5,"time":30000000,"process":2,"type":"info","f":"read","key":"k","node":"r1","error":"timed out"}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text).unwrap();
    let html = render(&path);
    let start = html.find("Latency, 99th percentile by outcome").unwrap();
    let chart = &html[start..html[start..].find("</svg>").unwrap() + start];
    // plotters writes a legend label as its own text element.
    for label in ["ok", "fail", "info"] {
        assert!(
            chart.contains(&format!("\n{label}\n</text>")),
            "no {label} series in the outcome chart"
        );
    }
}

/// Regression: maud escapes `<>&"` only, so NUL, ESC and `ESC[2J` from node names, keys
/// and write ids reached the page raw. They are shown as escapes, one rule everywhere.
#[test]
fn report_of_names_with_control_characters_shows_them_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let path = hostile::control_characters(dir.path());
    let (h, r) = checked(&path);
    assert_eq!(r.anomaly_counts["stale-read"], 1, "{:?}", r.anomaly_counts);
    let mut ctx = context(&path);
    // A run directory's campaign and run.json can hold them too. TOML refuses them, so
    // such a campaign is withheld, with the parser's reason (escaped too)...
    let campaign = format!("name = \"c{}\"\n\t# tab\r\n", "\u{1b}[2J");
    ctx.set_campaign(campaign.as_bytes());
    assert!(ctx.campaign_withheld.is_some());
    let html = report::render(&h, &r, &ctx);
    assert_eq!(hostile::raw_controls(&html), None);
    // ... and one shown would be escaped but for its tabs and line ends.
    ctx.campaign = Some(campaign);
    ctx.run = Some(
        serde_json::json!({"seed": hostile::CTRL, "nodes": [{"name": hostile::CTRL, "addr": "a"}]}),
    );
    let html = report::render(&h, &r, &ctx);
    assert_eq!(hostile::raw_controls(&html), None);
    assert!(!html.chars().any(|c| c < ' ' && c != '\n' && c != '\t'));
    assert!(html.contains("\n\t# tab\n"), "tabs and line ends kept");
    let shown = hostile::CTRL_SHOWN;
    for (what, text) in [
        ("the key", format!("k{shown}")),
        ("the node", format!("r1{shown}")),
        ("the region", format!("reg{shown}")),
        ("the write id", format!("ghost{shown}")),
        ("the fault", format!("start-part{shown}")),
        ("the fault's error", format!("failed to heal: {shown}")),
        ("the client's error", format!("<code>{shown}</code>")),
        ("the file name", r"h\u{1b}[2J\u{1}.jsonl".to_string()),
        ("the campaign", r"name = &quot;c\u{1b}[2J&quot;".to_string()),
    ] {
        assert!(html.contains(&text), "{what}: {text} not in the page");
    }
}

/// Regression: one key of 1 MB made report.html 123 MB and results.json 289 MB (every
/// anomaly, sentence and table quoted it whole). Results cut it; the cut shows its size.
#[test]
fn a_one_megabyte_key_is_cut_in_the_report_and_the_results() {
    let dir = tempfile::tempdir().unwrap();
    let path = hostile::huge_key(dir.path(), 8);
    let (h, r) = checked(&path);
    assert_eq!(r.anomaly_counts["stale-read"], 8);
    let html = report::render(&h, &r, &context(&path));
    let json = serde_json::to_vec_pretty(&r).unwrap();
    eprintln!(
        "a {} byte key: report.html {} bytes, results.json {} bytes",
        hostile::HUGE,
        html.len(),
        json.len()
    );
    assert!(html.len() < 1_000_000, "report.html: {} bytes", html.len());
    assert!(json.len() < 2_000_000, "results.json: {} bytes", json.len());
    let cut = hostile::huge_cut();
    assert!(html.contains(&cut), "the page says where the key is cut");
    assert_eq!(hostile::raw_controls(&html), None, "its end is escaped");
    // results.json stays JSON, its keys the same; the cut key is a string that says so.
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let key = v["per_key"][0]["key"].as_str().unwrap();
    assert!(
        key.starts_with("kkkk") && key.ends_with(&cut),
        "{}",
        &key[key.len() - 40..]
    );
    assert!(key.len() < 300, "{} bytes", key.len());
    let anomaly = &v["anomalies"][0];
    assert_eq!(anomaly["key"], key);
    let summary = anomaly["summary"].as_str().unwrap();
    assert!(summary.contains(&format!("\"{cut}")), "{summary}");
    assert!(summary.len() < 600, "{summary}");

    // A campaign file of 1 MiB is shown up to 256 KiB, saying so.
    let mut ctx = context(&path);
    ctx.campaign = Some("# a comment of a campaign\n".repeat(hostile::HUGE / 26 + 1));
    let size = ctx.campaign.as_ref().unwrap().len();
    let with_campaign = report::render(&h, &r, &ctx);
    assert!(with_campaign.contains(&format!(
        "The file is {size} bytes; the first 256 KiB are shown."
    )));
    assert!(with_campaign.contains(&format!("… ({size} bytes)</pre>")));
    assert!(with_campaign.len() < html.len() + report::CAMPAIGN_LIMIT + 1000);
}

/// The report speaks of faults in words, from the one vocabulary of faults, and draws
/// each kind in its own labelled lane, in its own colour.
#[test]
fn faults_read_in_words_and_each_kind_has_its_lane() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    let nem = |i: u64, t: u64, f: &str, v: serde_json::Value| {
        serde_json::json!({"index":i,"time":t,"process":"nemesis","type":"info","f":f,"value":v})
            .to_string()
    };
    let halves = serde_json::json!({"kind": "partition", "shape": {"shape": "halves"},
        "grudge": {"db1": ["db2", "r1a"], "r1b": ["db2", "r1a"], "db2": ["db1", "r1b"], "r1a": ["db1", "r1b"]},
        "rules": [{"node": "db1", "args": ["INPUT", "-s", "10.77.0.12", "-j", "DROP", "-m", "comment", "--comment", "coherence:t-0"]}]});
    // As in a real run, the rules make the value larger than results keep of a value
    // (4 KiB): the words are made from the whole value, before it is cut.
    let mut halves = halves;
    let rules: Vec<serde_json::Value> = (0..80)
        .map(|i| serde_json::json!({"node": "db1", "args": ["INPUT", "-s", format!("10.77.0.{i}"), "-j", "DROP", "-m", "comment", "--comment", format!("coherence:2026-12-02T085022Z-{i}")]}))
        .collect();
    halves["rules"] = serde_json::Value::Array(rules);
    assert!(halves.to_string().len() > 4096);
    let kill =
        serde_json::json!({"kind": "kill", "node": "r1b", "service": "redis", "pids": [4242]});
    let ms = 1_000_000u64;
    let text = [
        nem(
            0,
            0,
            "nemesis-plan",
            serde_json::json!({"faults": ["partition-halves", "kill-redis"], "scheduled": 2}),
        ),
        nem(
            1,
            100 * ms,
            "start-partition",
            serde_json::json!({"seq": 0, "fault": halves}),
        ),
        nem(
            2,
            4080 * ms,
            "stop-partition",
            serde_json::json!({"seq": 0, "healed": true, "error": null, "traces": []}),
        ),
        nem(
            3,
            5000 * ms,
            "kill",
            serde_json::json!({"seq": 1, "fault": kill}),
        ),
        nem(
            4,
            6700 * ms,
            "restart",
            serde_json::json!({"seq": 1, "healed": true, "error": null, "traces": []}),
        ),
    ]
    .join("\n");
    std::fs::write(&path, text + "\n").unwrap();
    let html = render(&path);
    let table = &html[html.find("id=\"faults\"").expect("a faults table")..];
    let table = &table[..table.find("</table>").unwrap()];
    assert!(
        table.contains("partition into halves {db1, r1b} | {db2, r1a}, healed after 3.98 s"),
        "{table}"
    );
    assert!(
        table.contains("kill redis on r1b (pid 4242), restarted after 1.7 s"),
        "{table}"
    );
    assert!(
        !table.contains("-j"),
        "no iptables arguments in the schedule: {table}"
    );
    // One lane per kind, labelled, each bar in its kind's colour with its words.
    let lanes = &html[html.find("id=\"fault-lanes\"").expect("fault lanes")..];
    let lanes = &lanes[..lanes.find("</svg>").unwrap()];
    for (label, colour) in [("partitions", "#e9dca0"), ("kills", "#e9a4a0")] {
        assert!(
            lanes.contains(&format!(">{label}</text>")),
            "no lane {label}: {lanes}"
        );
        assert!(
            lanes.contains(&format!("fill=\"{colour}\"")),
            "no {colour} bar: {lanes}"
        );
    }
    assert_eq!(lanes.matches("class=\"fault\"").count(), 2, "{lanes}");
    // The events table says the same in words; the JSON as logged is one click away.
    assert!(html.contains("healed, and nothing of it left in place"));
    assert!(html.contains("<summary>as logged</summary>"));
}

/// An anomaly that is no cycle says why, in the words its detector gives.
#[test]
fn a_phantom_read_says_it_is_no_cycle() {
    let html = render(&example("phantom.jsonl"));
    assert!(
        html.contains("A phantom read is no cycle: no committed write produced the value it saw."),
        "the phantom's note is missing"
    );
}

#[test]
fn the_invalidation_lag_is_shown_per_region_and_node_with_its_charts() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/slow-invalidation.jsonl");
    let html = render(&path);
    let section = html
        .split("<section id=\"invalidation-lag\">")
        .nth(1)
        .expect("an invalidation lag section")
        .split("</section>")
        .next()
        .unwrap();
    assert!(section.contains("region r1"), "{section}");
    assert!(section.contains("<td>r1a</td>"), "{section}");
    assert!(
        section.contains("389 ms"),
        "the lag of the example: {section}"
    );
    assert_eq!(
        section.matches("<svg").count(),
        2,
        "a histogram and a nines curve"
    );
    assert!(section.contains("nines invalidated within Δ"), "{section}");
    // A history without an observer says why it has no lag.
    let html = render(&example("fill-race.jsonl"));
    assert!(html.contains("No cache observer watched this run"));
}
