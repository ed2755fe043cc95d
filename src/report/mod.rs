//! report (see DESIGN.md §1).

/// Errors of the `report` module.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}
