//! Workloads of coherence: the clients, operation generators and cache-aside logic that
//! drive a system under test (each a [`workload::Workload`] that the shared harness
//! runs and records, chosen by `[workload] kind` through the [`registry`]), and a
//! seedable simulator of cache-aside systems ([`sim`]) that writes realistic history
//! files without any servers, for testing and benchmarking the checker.

#![deny(missing_docs)]

pub mod cache_aside;
pub mod campaign;
pub mod pgpass;
pub mod recorder;
pub mod registry;
pub mod sim;
pub mod workload;

pub use sim::{generate, Mode, SimConfig, SimSummary};
