//! Restoring TCP and UDP sockets that are not connected: re-bound at their address and port, listening again.

use super::error::{StepError, StepResult};
use super::share::Shared;
use crate::image::inet::InetSocket;
use crate::image::{FdImage, ProcessImage};
use crate::sys::remote::Inject;

/// Makes inet socket `f` again at its number.
pub(super) fn make(
    _rs: &mut dyn Inject,
    _p: &ProcessImage,
    f: &FdImage,
    _s: &InetSocket,
    _shared: &mut Shared,
) -> StepResult {
    Err(StepError::NotYet {
        what: format!("fd {}: an inet socket", f.fd),
    })
}
