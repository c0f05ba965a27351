//! Faults and how they reach a node: locally, in a lab network namespace, or over SSH.
//!
//! [`remote`] is how a command reaches a node; the lab starts and inspects its servers
//! through it. [`partition`] holds partitions as pure values (grudges) with their named
//! shapes; [`clock`] holds clock skews as values; [`fault`] applies and heals faults on
//! nodes and keeps the heal journal.

#![deny(missing_docs)]

pub mod clock;
pub mod fault;
pub mod partition;
pub mod remote;
pub mod schedule;
