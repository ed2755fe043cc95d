//! The file side of [`super::Shared`].

/// haul's copies of the open file descriptions the tree's processes made.
#[derive(Default)]
pub(crate) struct FdTable {}
