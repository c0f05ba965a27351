//! A progress bar on a terminal for long reads; nothing at all elsewhere (CI, pipes).

use coherence_store::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::Path;

/// Files smaller than this are read too fast to need a bar.
const LARGE: u64 = 32 << 20;

/// An indicatif bar behind the [`Progress`] trait, or nothing.
pub struct Bar(Option<ProgressBar>);

impl Bar {
    /// A bar for reading `path`, shown only on a terminal, outside CI, for large files.
    pub fn for_file(path: &Path) -> Bar {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let show =
            std::io::stderr().is_terminal() && std::env::var_os("CI").is_none() && size >= LARGE;
        if !show {
            return Bar(None);
        }
        let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:10} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("a valid template"),
        );
        bar.set_message("reading");
        Bar(Some(bar))
    }
}

impl Progress for Bar {
    fn advance(&self, done: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(done);
        }
    }

    fn phase(&self, name: &str) {
        if let Some(bar) = &self.0 {
            bar.set_message(name.to_string());
        }
    }

    fn finish(&self) {}
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
