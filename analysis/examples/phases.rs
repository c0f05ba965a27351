//! Times the phases of a check (development aid): `cargo run --release --example phases FILE`.
use coherence_analysis::{
    check::{check, Context},
    model::Builder,
    results, Options,
};
use std::time::Instant;
fn main() {
    let path = std::env::args().nth(1).expect("a history file");
    let t = Instant::now();
    let mut n = 0u64;
    let mut count = |_: &coherence_store::EventRef<'_>| -> Result<(), String> {
        n += 1;
        Ok(())
    };
    coherence_store::read_history(path.as_ref(), &mut count, &coherence_store::NoProgress).unwrap();
    eprintln!("read only: {:?} ({n} events)", t.elapsed());
    let t = Instant::now();
    let mut b = Builder::new();
    coherence_store::read_history(path.as_ref(), &mut b, &coherence_store::NoProgress).unwrap();
    eprintln!("read+build: {:?}", t.elapsed());
    let t = Instant::now();
    let h = b.finish();
    eprintln!("finish: {:?}", t.elapsed());
    let t = Instant::now();
    let ctx = Context::new(&h, 0);
    let f = check(&ctx);
    eprintln!("check: {:?} ({} findings)", t.elapsed(), f.findings.len());
    let t = Instant::now();
    let f2 = coherence_analysis::check::Findings {
        findings: f.findings.clone(),
        staleness: f.staleness.clone(),
        ..Default::default()
    };
    let r = results::build(&ctx, f, &Options::default(), "x", vec![], 0);
    eprintln!("results: {:?}", t.elapsed());
    let t = Instant::now();
    let _ = results::build(
        &ctx,
        f2,
        &Options {
            anomaly_limit: 0,
            ..Options::default()
        },
        "x",
        vec![],
        0,
    );
    eprintln!("results without explanations: {:?}", t.elapsed());
    let t = Instant::now();
    let s = serde_json::to_string(&r).unwrap();
    eprintln!("json: {:?} ({} bytes)", t.elapsed(), s.len());
}
