//! Restoring event notification fds: epoll instances (after every fd they watch) and inotify
//! instances.

use super::error::{StepError, StepResult};
use super::share::Shared;
use crate::image::events::{EpollImage, InotifyImage};
use crate::image::{FdImage, ProcessImage};
use crate::sys::remote::Inject;

/// The order in which the epoll fds of `p` (and the fds that share one) are restored, once
/// every other fd is in place: an epoll watched by another comes before it.
pub(super) fn epoll_order<'a>(_p: &ProcessImage, later: Vec<&'a FdImage>) -> Vec<&'a FdImage> {
    later
}

/// Makes epoll instance `f` again at its number, with every target registered.
pub(super) fn make_epoll(
    _rs: &mut dyn Inject,
    _p: &ProcessImage,
    f: &FdImage,
    _e: &EpollImage,
    _shared: &mut Shared,
) -> StepResult {
    Err(StepError::NotYet {
        what: format!("fd {}: an epoll instance", f.fd),
    })
}

/// Makes inotify instance `f` again at its number, with its watches.
pub(super) fn make_inotify(
    _rs: &mut dyn Inject,
    _p: &ProcessImage,
    f: &FdImage,
    _i: &InotifyImage,
    _shared: &mut Shared,
) -> StepResult {
    Err(StepError::NotYet {
        what: format!("fd {}: an inotify instance", f.fd),
    })
}
