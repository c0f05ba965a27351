//! Faults and how they reach a node: locally, in a lab network namespace, or over SSH.
//!
//! [`remote`] is how a command reaches a node and how files move to and from it; the
//! lab starts and inspects its servers through it, and [`ssh`] reaches staging nodes
//! ([`staging`] names them). [`partition`] holds partitions as pure values (grudges)
//! with their named shapes; [`clock`] holds clock skews as values; [`fault`] applies
//! and heals faults on nodes and keeps the heal journal; [`schedule`] plans a campaign's
//! faults from its seed and [`runner`] runs that plan on a cluster, healing as it goes.

#![deny(missing_docs)]

pub mod clock;
pub mod fault;
pub mod partition;
pub mod remote;
pub mod runner;
pub mod schedule;
pub mod ssh;
pub mod staging;

/// Reads a duration written for people in a campaign file: `"0"`, `"500ms"`, `"5s"`.
pub(crate) use coherence_store::duration::deserialize as duration;
