//! Progress reporting as a trait with no-op defaults, so that library code never
//! depends on a terminal. The binary implements it with a progress bar.

/// Receives progress of long work. Every method has a no-op default.
pub trait Progress: Sync {
    /// Work starts; `total` is its size in bytes when known.
    fn start(&self, _total: Option<u64>) {}
    /// `done` more bytes were processed.
    fn advance(&self, _done: u64) {}
    /// Work moves to a new phase (e.g. "checking").
    fn phase(&self, _name: &str) {}
    /// Work is over.
    fn finish(&self) {}
}

/// A [`Progress`] that reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}
