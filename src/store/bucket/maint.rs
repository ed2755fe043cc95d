//! What gc needs of the bucket beyond a local store's gc: which packs are too young to delete.

use super::Remote;
use crate::store::footer::PackId;
use crate::store::StoreError;
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

/// gc leaves a bucket's unreferenced pack alone until it is this old (by default; `haul images
/// gc --grace` sets it). Writers hold a lock
/// object while they write, and gc takes its own exclusively, so this is a second guard: for a
/// writer whose lock went stale, and for a server whose listings lag behind its writes.
pub const GRACE: Duration = Duration::from_secs(15 * 60);

/// Packs of the bucket written less than `grace` ago.
pub(crate) fn young_packs(
    remote: &Remote,
    grace: Duration,
) -> Result<BTreeSet<PackId>, StoreError> {
    let now = SystemTime::now();
    Ok(remote
        .list("packs/")?
        .into_iter()
        .filter(|o| {
            now.duration_since(o.modified)
                .map_or(true, |age| age < grace)
        })
        .filter_map(|o| {
            let name = o.key.rsplit('/').next()?;
            PackId::from_hex(name.strip_suffix(".pack")?)
        })
        .collect())
}
