//! Restoring files whose contents the image stores: memfds (with their seals), deleted files, `/dev/shm` files.

use super::error::{StepError, StepResult};
use super::share::Shared;
use crate::image::stored::StoredFile;
use crate::image::{FdImage, ProcessImage};
use crate::sys::remote::Inject;

/// Makes stored file `f` again at its number with its contents.
pub(super) fn make(
    _rs: &mut dyn Inject,
    _p: &ProcessImage,
    f: &FdImage,
    _s: &StoredFile,
    _shared: &mut Shared,
) -> StepResult {
    Err(StepError::NotYet {
        what: format!("fd {}: a stored file", f.fd),
    })
}
