//! dump (see DESIGN.md §1).

/// Errors of the `dump` module.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}
