//! Locks that hold across hosts, as objects in the bucket (flock only holds on one host).
//!
//! A set writer holds a `shared` lock object while it writes, gc an `exclusive` one. Taking a
//! lock: write one's own object, then list `locks/`; on a conflict (an exclusive lock of
//! another, or for gc any other lock) delete one's own and try again until the timeout. Two
//! that take conflicting locks at once both see each other (the bucket lists what was written
//! before, S3 being strongly consistent), so both back off and neither goes ahead unseen: gc
//! never runs while a writer may be deduplicating against a pack it would delete.
//!
//! A lock older than [`STALE`] is taken for one a crashed process left: it is ignored, and gc
//! removes it.

use super::Remote;
use crate::store::StoreError;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Age after which a lock object is taken for a crashed holder's.
pub const STALE: Duration = Duration::from_secs(6 * 3600);

/// A lock object, deleted when dropped.
pub struct BucketLock {
    remote: Arc<Remote>,
    key: String,
}

impl std::fmt::Debug for BucketLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BucketLock({})", self.key)
    }
}

impl Drop for BucketLock {
    fn drop(&mut self) {
        if let Err(e) = self.remote.delete(&self.key) {
            tracing::warn!(
                "cannot remove lock object {} ({e}); it is ignored once {} old",
                self.key,
                humantime::format_duration(STALE)
            );
        }
    }
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Whether a listed lock object is live (not stale).
fn live(modified: SystemTime) -> bool {
    SystemTime::now()
        .duration_since(modified)
        .map(|age| age < STALE)
        .unwrap_or(true)
}

/// Takes a lock: exclusive for gc, shared for writers; waits up to `timeout`.
pub fn take(
    remote: &Arc<Remote>,
    exclusive: bool,
    what: &str,
    timeout: Duration,
) -> Result<BucketLock, StoreError> {
    static N: AtomicU64 = AtomicU64::new(0);
    let kind = if exclusive { "exclusive" } else { "shared" };
    let key = format!(
        "locks/{kind}-{}-{}-{}-{}",
        host(),
        std::process::id(),
        crate::util::now_us(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let body = format!(
        "{{\"what\":{},\"host\":{},\"pid\":{}}}\n",
        serde_json::Value::from(what),
        serde_json::Value::from(host()),
        std::process::id()
    );
    let start = Instant::now();
    let mut attempt = 0u32;
    loop {
        remote.put(&key, body.clone().into_bytes())?;
        let lock = BucketLock {
            remote: remote.clone(),
            key: key.clone(),
        };
        let others = remote.list("locks/")?;
        let conflict = others.iter().find(|o| {
            o.key != key && live(o.modified) && (exclusive || o.key.starts_with("locks/exclusive-"))
        });
        let Some(c) = conflict else {
            return Ok(lock);
        };
        let holder = c.key.clone();
        drop(lock);
        if start.elapsed() >= timeout {
            return Err(StoreError::Locked {
                path: PathBuf::from(format!("{} (lock object {holder})", remote.url)),
                what: what.into(),
                waited: timeout,
            });
        }
        attempt += 1;
        // Back off with a little jitter, so that two who met do not meet again.
        let jitter = (crate::util::now_us() % 97) + u64::from(attempt.min(10)) * 20;
        std::thread::sleep(Duration::from_millis(100 + jitter));
    }
}

/// Removes lock objects older than [`STALE`]; returns how many.
pub fn remove_stale(remote: &Remote) -> Result<u64, StoreError> {
    let mut n = 0;
    for o in remote.list("locks/")? {
        if !live(o.modified) {
            remote.delete(&o.key)?;
            n += 1;
        }
    }
    Ok(n)
}
