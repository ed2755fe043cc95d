//! proc (see DESIGN.md §1).

/// Errors of the `proc` module.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}
