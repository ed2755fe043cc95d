//! Job files (DESIGN.md §2): schema, defaults, validation, placeholders and diagnostics that name
//! file, line, column and field.

pub mod schema;
pub mod units;

pub use schema::*;
pub use units::{Compression, Dur, Size};

/// Errors of the `job` module.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}
