//! runner (see DESIGN.md §1).

/// Errors of the `runner` module.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}
