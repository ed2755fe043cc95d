//! Restoring terminals: pty pairs, and a shell job onto the terminal of `haul restore` or a new pty.

use super::error::{StepError, StepResult};
use super::share::Shared;
use crate::image::tty::TtyImage;
use crate::image::{FdImage, ProcessImage};
use crate::sys::remote::Inject;

/// Gives `f` its terminal again at its number.
pub(super) fn make(
    _rs: &mut dyn Inject,
    _p: &ProcessImage,
    f: &FdImage,
    _s: &TtyImage,
    _shared: &mut Shared,
) -> StepResult {
    Err(StepError::NotYet {
        what: format!("fd {}: a terminal", f.fd),
    })
}
