//! Writes a simulated history: `cargo run --release -p coherence-sim --example
//! simulate -- OUT.jsonl [OPS] [correct|buggy] [SEED]`.

use coherence_sim::{generate, Mode, SimConfig};
use coherence_store::HistoryWriter;
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(
        args.next()
            .ok_or("usage: simulate OUT [OPS] [MODE] [SEED]")?,
    );
    let mut config = SimConfig::default();
    if let Some(ops) = args.next() {
        config.ops = ops.parse()?;
    }
    if let Some(mode) = args.next() {
        config.mode = mode.parse::<Mode>()?;
    }
    if let Some(seed) = args.next() {
        config.seed = seed.parse()?;
    }
    let started = Instant::now();
    let mut out = HistoryWriter::create(&path)?;
    let summary = generate(&config, &mut out)?;
    out.finish()?;
    let elapsed = started.elapsed();
    let bytes = std::fs::metadata(&path)?.len();
    println!("{summary}");
    println!(
        "{:.2} s, {} bytes, {:.3} events/op, {:.1} bytes/line",
        elapsed.as_secs_f64(),
        bytes,
        summary.events as f64 / summary.ops.max(1) as f64,
        bytes as f64 / summary.events.max(1) as f64
    );
    Ok(())
}
