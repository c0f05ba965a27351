//! Faults and how they reach a node: locally, in a lab network namespace, or over SSH.
//!
//! Empty until the nemesis issue lands; the crate exists so that the workspace has
//! the layout of DESIGN.md and dependencies can point the right way from the start.

#![deny(missing_docs)]
