//! sys (see DESIGN.md §1).

/// Errors of the `sys` module.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}
