//! A lazy dump's frozen source behind the page server: the worker binds the server, hands it
//! the source's memory ([`crate::dump::LiveReader`]), and follows its events until the
//! restore has every page (the source is killed) or the migration is rolled back (thawed).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::dump::{FrozenSource, LiveReader};

/// The page server reads the lazy pages from the frozen source.
impl crate::xfer::LivePages for LiveReader {
    fn read_pages(&self, addrs: &[u64], out: &mut [u8]) -> Result<(), crate::restore::BoxError> {
        self.read(addrs, out).map_err(|source| {
            Box::new(super::WorkerError::LiveRead {
                pid: self.pid(),
                source,
            }) as crate::restore::BoxError
        })
    }
}

/// How a frozen source ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceEndKind {
    /// The restore said every page is resident (`Done`): the source was killed.
    Killed,
    /// Rolled back: the source was resumed and runs on.
    Thawed,
    /// The source went away on its own (killed by someone else) while serving.
    Gone,
}

/// How serving a frozen source ended, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceEnd {
    pub kind: SourceEndKind,
    /// In a few words: why it ended that way.
    pub detail: String,
    /// How long the source was served (µs).
    pub served_us: u64,
}

/// Serves `src` through `serving` until the restore says every page is resident (the source
/// is killed), or no restore is connected for `timeout` (never came, or left before `Done`),
/// or `stop` is set: then the source is thawed. Never returns with the source stopped.
pub fn serve_frozen(
    src: FrozenSource,
    serving: &crate::xfer::SourceServing,
    timeout: Duration,
    stop: &AtomicBool,
) -> SourceEnd {
    use crate::xfer::SourceEvent;
    let t0 = Instant::now();
    let end = |kind, detail: String| SourceEnd {
        kind,
        detail,
        served_us: crate::util::us(t0.elapsed()),
    };
    let thaw = |src: FrozenSource, why: String| -> SourceEnd {
        let pid = src.pid();
        match src.thaw() {
            Ok(()) => end(
                SourceEndKind::Thawed,
                format!("{why}: pid {pid} resumed (migration rolled back)"),
            ),
            Err(e) => end(
                SourceEndKind::Gone,
                format!("{why}; resuming pid {pid}: {e}"),
            ),
        }
    };
    let mut clients = 0usize;
    let mut ever = false;
    let mut alone_since = Instant::now();
    loop {
        if stop.load(Ordering::Relaxed) {
            return thaw(
                src,
                "asked to stop before the restore had every page".into(),
            );
        }
        if !src.alive() {
            let pid = src.pid();
            drop(src);
            return end(
                SourceEndKind::Gone,
                format!("pid {pid} was killed while it served its pages"),
            );
        }
        match serving.events.recv_timeout(Duration::from_millis(50)) {
            Ok(SourceEvent::Connected) => {
                clients += 1;
                ever = true;
            }
            Ok(SourceEvent::Disconnected) => {
                clients = clients.saturating_sub(1);
                if clients == 0 {
                    alone_since = Instant::now();
                }
            }
            Ok(SourceEvent::Done { reply, written }) => {
                let pid = src.pid();
                let (kind, detail) = match src.kill() {
                    Ok(()) => (
                        SourceEndKind::Killed,
                        format!("the restore has every page: pid {pid} killed"),
                    ),
                    Err(e) => (
                        SourceEndKind::Gone,
                        format!("the restore has every page; killing pid {pid}: {e}"),
                    ),
                };
                let _ = reply.send(detail.clone());
                // Let the connection write its answer before this process ends.
                let _ = written.recv_timeout(Duration::from_secs(2));
                return end(kind, detail);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return thaw(src, "the page server stopped".into());
            }
        }
        if clients == 0 && alone_since.elapsed() >= timeout {
            let why = if ever {
                format!("the restore's connection was lost and not back within {timeout:?}")
            } else {
                format!("no restore connected within {timeout:?}")
            };
            return thaw(src, why);
        }
    }
}
