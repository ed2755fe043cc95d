//! Bringing a bucket store's local cache up to the bucket: an index segment for every pack of
//! the bucket (its footer read by two range requests), a copy of every manifest, and no copy of
//! a manifest the bucket no longer has.

use super::Remote;
use crate::store::footer::{read_footer_with, CommittedPack, FormatError, PackId};
use crate::store::index::{decode_segment, seg_path, write_segment};
use crate::store::{check_job_name, fsutil, valid_set_id, StoreError};
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The packs of the bucket, by id, with their lengths.
pub(crate) fn list_packs(remote: &Remote) -> Result<BTreeMap<PackId, u64>, StoreError> {
    Ok(remote
        .list("packs/")?
        .into_iter()
        .filter_map(|o| {
            let name = o.key.rsplit('/').next()?;
            let id = PackId::from_hex(name.strip_suffix(".pack")?)?;
            (o.key == id.key()).then_some((id, o.size))
        })
        .collect())
}

/// The footer of a pack in the bucket, read by ranges.
pub(crate) fn remote_footer(
    remote: &Remote,
    id: &PackId,
    len: u64,
) -> Result<CommittedPack, FormatError> {
    let key = id.key();
    let footer = read_footer_with(len, |off, n| {
        remote
            .get_range(&key, off..off + n as u64)
            .map_err(|e| FormatError::Bucket(Box::new(e)))
    })?;
    Ok(CommittedPack {
        id: *id,
        len,
        footer,
    })
}

/// Writes the index segment of every pack of the bucket that the cache has no good segment
/// for. Returns the bucket's packs. A pack whose footer cannot be read is left without a
/// segment (the index then names it unreadable, and verify reports it).
pub(crate) fn pull_index(remote: &Remote, root: &Path) -> Result<BTreeSet<PackId>, StoreError> {
    let packs = list_packs(remote)?;
    let want: Vec<(PackId, u64)> = packs
        .iter()
        .filter(|(id, len)| {
            std::fs::read(seg_path(root, id))
                .ok()
                .and_then(|b| decode_segment(&b, id).ok())
                .is_none_or(|(l, _)| l != **len)
        })
        .map(|(id, len)| (*id, *len))
        .collect();
    want.par_iter()
        .for_each(|(id, len)| match remote_footer(remote, id, *len) {
            Ok(c) => {
                if let Err(e) = write_segment(root, &c) {
                    tracing::warn!("cannot cache the index segment of pack {id}: {e}");
                }
            }
            Err(e) => tracing::warn!("{}: pack {id}: footer unreadable: {e}", remote.url),
        });
    Ok(packs.into_keys().collect())
}

/// The manifests of the bucket: `(job, set id)` → size.
pub(crate) fn list_manifests(
    remote: &Remote,
) -> Result<BTreeMap<(String, String), u64>, StoreError> {
    Ok(remote
        .list("sets/")?
        .into_iter()
        .filter_map(|o| {
            let mut parts = o.key.strip_prefix("sets/")?.splitn(2, '/');
            let (job, id) = (parts.next()?, parts.next()?);
            (check_job_name(job).is_ok() && valid_set_id(id))
                .then(|| ((job.to_string(), id.to_string()), o.size))
        })
        .collect())
}

/// Copies into the cache every manifest it lacks (or holds at another size), and removes the
/// cached copies of manifests the bucket no longer has. `refetch`: fetch every manifest again
/// (verify compares what the bucket holds, not what the cache kept).
pub(crate) fn pull_manifests(
    remote: &Remote,
    root: &Path,
    refetch: bool,
) -> Result<(), StoreError> {
    let listed = list_manifests(remote)?;
    let sets = root.join("sets");
    let want: Vec<(&(String, String), &u64)> = listed
        .iter()
        .filter(|((job, id), size)| {
            refetch
                || std::fs::metadata(sets.join(job).join(id))
                    .map(|m| m.len())
                    .ok()
                    != Some(**size)
        })
        .collect();
    let fetched: Vec<Result<(), StoreError>> = want
        .par_iter()
        .map(|((job, id), _)| {
            let key = format!("sets/{job}/{id}");
            match remote.get(&key)? {
                Some(bytes) => {
                    let dir = sets.join(job);
                    fsutil::create_dir(&dir)?;
                    fsutil::write_cache(root, &dir.join(id), &bytes)
                }
                // Removed since the listing: nothing to cache.
                None => Ok(()),
            }
        })
        .collect();
    for r in fetched {
        r?;
    }
    // Copies of manifests removed from the bucket (by `rm`, `gc` or prune on another host).
    if let Ok(jobs) = std::fs::read_dir(&sets) {
        for j in jobs.flatten() {
            let job = j.file_name().to_string_lossy().into_owned();
            let Ok(files) = std::fs::read_dir(j.path()) else {
                continue;
            };
            for f in files.flatten() {
                let id = f.file_name().to_string_lossy().into_owned();
                if valid_set_id(&id) && !listed.contains_key(&(job.clone(), id)) {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
    }
    Ok(())
}
