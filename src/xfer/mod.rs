//! Page server and client (issue #7): a small framed protocol over TCP.

/// Errors of the `xfer` module.
#[derive(Debug, thiserror::Error)]
pub enum XferError {
    #[error("{0}")]
    Protocol(String),
}
