//! haul: checkpoint and restore live Linux processes natively, driven by TOML job files.
//!
//! The layout follows `DESIGN.md` §1: data flows job → runner → dump → store → restore/lazy →
//! report, and `sys` is the only door to the kernel: the compiler refuses unsafe code anywhere
//! else (`deny(unsafe_code)` here, allowed again only in `sys`).
//!
//! `runner` orchestrates: a job's stages (`haul run`), the commands of the binary that run
//! stages by hand (`runner::command`: `haul dump`, `haul restore`), and the checkpoint worker
//! process that holds the ptrace session and serves a lazy dump's frozen source
//! (`runner::worker`). Each module returns its own error; [`Error`] gathers them only where the
//! runner and the binary meet.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod bench;
pub mod doctor;
pub mod dump;
pub mod error;
pub mod image;
pub mod job;
pub mod lazy;
pub mod netlock;
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
