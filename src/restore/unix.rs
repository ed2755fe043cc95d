//! Restoring unix sockets that are not unbound pairs: bound, listening, connected.

use super::error::{StepError, StepResult};
use super::share::Shared;
use crate::image::unix::UnixSocket;
use crate::image::{FdImage, ProcessImage};
use crate::sys::remote::Inject;

/// Makes unix socket `f` again at its number (bound, listening or connected as the image says).
pub(super) fn make(
    _rs: &mut dyn Inject,
    _p: &ProcessImage,
    f: &FdImage,
    _s: &UnixSocket,
    _shared: &mut Shared,
) -> StepResult {
    Err(StepError::NotYet {
        what: format!("fd {}: a unix socket", f.fd),
    })
}
