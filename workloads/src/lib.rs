//! Workloads of coherence: the clients, operation generators and cache-aside logic that
//! drive a system under test (each a [`workload::Workload`] that the shared harness
//! runs and records, chosen by `[workload] kind` through the [`registry`]). The
//! simulator of histories is its own crate, `coherence-sim`.

#![deny(missing_docs)]

pub mod cache_aside;
pub mod campaign;
pub mod commits;
pub mod http;
pub mod observe;
pub mod pgpass;
pub mod registry;
pub mod watch;
pub mod workload;
