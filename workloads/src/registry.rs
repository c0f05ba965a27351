//! Every workload there is, by the name `[workload] kind` gives it in a campaign
//! (`cache-aside` when absent). Adding one is a module implementing
//! [`crate::workload::Workload`] and one line in the list below.

use crate::campaign;
use crate::workload::{Endpoints, Workload};
use std::sync::Arc;

/// Declares [`Kind`], one variant per line, and how each opens.
macro_rules! kinds {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal => $open:path, )+) => {
        /// Which workload a campaign runs (`[workload] kind`).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
        pub enum Kind {
            $( $(#[$doc])* #[serde(rename = $name)] $variant, )+
        }

        impl Kind {
            /// Every kind's name, as campaigns write it.
            pub const NAMES: &[&str] = &[$($name),+];

            /// The kind's name, as campaigns write it.
            pub fn name(self) -> &'static str {
                match self {
                    $( Kind::$variant => $name, )+
                }
            }

            /// The workload `work` configures, against `ends`.
            pub fn open(self, work: &campaign::Workload, ends: &Endpoints) -> Arc<dyn Workload> {
                match self {
                    $( Kind::$variant => Arc::new($open(work, ends)), )+
                }
            }
        }
    };
}

kinds! {
    /// Our own cache-aside client ([`crate::cache_aside`]), the default.
    #[default]
    CacheAside = "cache-aside" => crate::cache_aside::CacheAside::new,
    /// The user's own service, driven through its HTTP API ([`crate::http`]).
    Http = "http" => crate::http::HttpWorkload::new,
    /// No workload of ours: samples the caches after each commit ([`crate::watch`],
    /// `coherence watch`).
    Watch = "watch" => crate::watch::Watch::new,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_named_as_campaigns_write_them() {
        assert_eq!(Kind::default().name(), "cache-aside");
        assert_eq!(Kind::NAMES, &["cache-aside", "http", "watch"]);
        let kind: Kind = serde_json::from_str("\"cache-aside\"").unwrap();
        assert_eq!(kind, Kind::CacheAside);
    }
}
