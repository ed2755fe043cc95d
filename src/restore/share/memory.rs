//! The memory side of [`super::Shared`].

/// Where the shared memory objects made so far can be mapped from.
#[derive(Default)]
pub(crate) struct MemTable {}
