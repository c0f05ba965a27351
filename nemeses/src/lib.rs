//! Faults and how they reach a node: locally, in a lab network namespace, or over SSH.
//!
//! So far this holds the [`remote`] seam: how a command reaches a node. The lab starts
//! and inspects its servers through it; the faults of the nemesis issue will too.

#![deny(missing_docs)]

pub mod remote;
