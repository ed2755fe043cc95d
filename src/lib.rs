//! haul: checkpoint and restore live Linux processes natively, driven by TOML job files.
//!
//! The layout follows `DESIGN.md` §1: data flows job → runner → dump → store → restore/lazy →
//! report, and `sys` is the only door to the kernel: the compiler refuses unsafe code anywhere
//! else (`deny(unsafe_code)` here, allowed again only in `sys`).
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod bench;
pub mod dump;
pub mod error;
pub mod image;
pub mod job;
pub mod lazy;
pub mod proc;
pub mod report;
pub mod restore;
pub mod runner;
pub mod store;
pub mod sys;
pub mod track;
pub mod util;
pub mod xfer;

pub use error::{Error, Result};
