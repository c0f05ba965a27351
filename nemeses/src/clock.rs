//! Clock skew as a value: how far a node's wall clock is moved, and whether it stays
//! there (a bump) or jumps forth and back (a strobe). How a node's clock is actually
//! moved is the [`crate::fault::Nodes`]'s business (the lab preloads a shim into its
//! servers; a staging node would have its clock set over SSH).

use serde::{Deserialize, Serialize};
use std::fmt;

/// How a node's wall clock (`CLOCK_REALTIME`, what `gettimeofday` and `time` return) is
/// moved. Monotonic clocks are never moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum Skew {
    /// The clock reads `offset_ms` later than true time (earlier when negative).
    Bump {
        /// The offset, in milliseconds.
        offset_ms: i64,
    },
    /// The clock jumps `offset_ms` away and back every `period_ms`: the offset applies
    /// during every other period of true time, counted from the Unix epoch (when
    /// `floor(unix_time / period)` is even).
    Strobe {
        /// The offset while it applies, in milliseconds.
        offset_ms: i64,
        /// How long the clock stays on each side, in milliseconds (more than 0).
        period_ms: u64,
    },
}

impl Skew {
    /// The offset, in milliseconds (while it applies, for a strobe).
    pub fn offset_ms(&self) -> i64 {
        match *self {
            Skew::Bump { offset_ms } | Skew::Strobe { offset_ms, .. } => offset_ms,
        }
    }

    /// The strobe's period in milliseconds; `None` for a bump.
    pub fn period_ms(&self) -> Option<u64> {
        match *self {
            Skew::Bump { .. } => None,
            Skew::Strobe { period_ms, .. } => Some(period_ms),
        }
    }

    /// The offset in milliseconds a skewed clock shows at the true Unix time
    /// `unix_ms`.
    pub fn offset_at(&self, unix_ms: i64) -> i64 {
        match *self {
            Skew::Bump { offset_ms } => offset_ms,
            Skew::Strobe {
                offset_ms,
                period_ms,
            } => {
                if unix_ms.div_euclid(period_ms.max(1) as i64) % 2 == 0 {
                    offset_ms
                } else {
                    0
                }
            }
        }
    }
}

impl fmt::Display for Skew {
    /// `+2000 ms`, or `-1500 ms every 400 ms` for a strobe.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:+} ms", self.offset_ms())?;
        if let Some(period) = self.period_ms() {
            write!(f, " every {period} ms")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_strobe_applies_its_offset_every_other_period() {
        let s = Skew::Strobe {
            offset_ms: -700,
            period_ms: 250,
        };
        assert_eq!(s.offset_at(0), -700);
        assert_eq!(s.offset_at(249), -700);
        assert_eq!(s.offset_at(250), 0);
        assert_eq!(s.offset_at(499), 0);
        assert_eq!(s.offset_at(500), -700);
        let b = Skew::Bump { offset_ms: 3000 };
        assert_eq!(b.offset_at(250), 3000);
        assert_eq!(b.period_ms(), None);
    }

    #[test]
    fn skews_read_as_their_mode_and_numbers() {
        let s = Skew::Strobe {
            offset_ms: -1500,
            period_ms: 400,
        };
        assert_eq!(s.to_string(), "-1500 ms every 400 ms");
        assert_eq!(Skew::Bump { offset_ms: 2000 }.to_string(), "+2000 ms");
        let json = serde_json::to_value(s).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"mode": "strobe", "offset_ms": -1500, "period_ms": 400})
        );
        assert_eq!(serde_json::from_value::<Skew>(json).unwrap(), s);
    }
}
