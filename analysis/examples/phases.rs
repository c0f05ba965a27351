//! Times the phases of a check, for finding where time goes (the end-to-end figures
//! come from `cargo bench --bench check`):
//! `cargo run --release -p coherence-analysis --example phases HISTORY`.

use coherence_analysis::check::{check, Context};
use coherence_analysis::{model::Builder, results, Options};
use coherence_store::{read_history, EventRef, NoProgress};
use std::time::Instant;

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: phases HISTORY");
        std::process::exit(2);
    };
    let path = std::path::Path::new(&path);

    let t = Instant::now();
    let mut events = 0u64;
    let mut count = |_: &EventRef<'_>| -> Result<(), String> {
        events += 1;
        Ok(())
    };
    if let Err(e) = read_history(path, &mut count, &NoProgress) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    eprintln!("read and validate: {:?} ({events} events)", t.elapsed());

    let t = Instant::now();
    let mut builder = Builder::new();
    read_history(path, &mut builder, &NoProgress).expect("read twice");
    let history = builder.finish();
    eprintln!("read, validate and build: {:?}", t.elapsed());

    let t = Instant::now();
    let ctx = Context::new(&history, 0);
    let findings = check(&ctx);
    eprintln!(
        "check: {:?} ({} findings)",
        t.elapsed(),
        findings.findings.len()
    );

    let t = Instant::now();
    let r = results::build(&ctx, findings, &Options::default(), "history", vec![], 0);
    eprintln!(
        "results: {:?} ({} explained)",
        t.elapsed(),
        r.anomalies.len()
    );
}
