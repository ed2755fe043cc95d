//! `haul images ls`: every set of the store with its state, the damaged ones included.

use super::chains::{self, SetRef, SetState};
use super::{SetSummary, Store, StoreError};
use serde::Serialize;
use std::path::PathBuf;

/// A manifest that cannot be read, as `haul images ls` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DamagedSet {
    /// The manifest's file name: the set's id.
    pub id: String,
    /// The directory it is in: the set's job.
    pub job: String,
    pub path: PathBuf,
    /// Always [`SetState::Damaged`] (a row of `ls --json` says its state either way).
    pub state: SetState,
    /// Why it cannot be read.
    pub error: String,
}

/// Every set of a store (or of one job): the readable ones, oldest first, with their state;
/// and the damaged ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub sets: Vec<SetSummary>,
    pub damaged: Vec<DamagedSet>,
}

/// One row of `haul images ls --json`.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(untagged)]
pub enum ListRow<'a> {
    Set(&'a SetSummary),
    Damaged(&'a DamagedSet),
}

impl Listing {
    /// The table of `haul images ls`: a row per set, the damaged ones last, then what the
    /// incomplete and damaged ones mean.
    pub fn text(&self) -> String {
        use crate::util::{human_bytes, rfc3339_us};
        use std::fmt::Write;
        let mut s = String::new();
        let mut row = |cells: [&str; 7]| {
            let _ = writeln!(
                s,
                "{:<44} {:<8} {:<20} {:>7} {:>10} {:>10}  {}",
                cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6]
            );
        };
        row(["set", "kind", "created", "pid", "logical", "new", "state"]);
        for set in &self.sets {
            row([
                &set.id,
                &set.kind.to_string(),
                &rfc3339_us(set.created_us),
                &set.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                &human_bytes(set.figures.bytes_logical),
                &human_bytes(set.figures.bytes_new),
                &set.state.to_string(),
            ]);
        }
        for d in &self.damaged {
            row([&d.id, "?", "?", "?", "?", "?", &d.state.to_string()]);
        }
        let incomplete = self
            .sets
            .iter()
            .filter(|set| set.state == SetState::Incomplete)
            .count();
        if incomplete > 0 {
            let _ = writeln!(
                s,
                "{incomplete} incomplete: pre-dumps of a pre-copy that did not finish \
                 (`haul images gc` removes them)"
            );
        }
        for d in &self.damaged {
            let _ = writeln!(s, "DAMAGED {}: {}", d.path.display(), d.error);
        }
        s
    }

    /// The readable sets, then the damaged ones.
    pub fn rows(&self) -> Vec<ListRow<'_>> {
        self.sets
            .iter()
            .map(ListRow::Set)
            .chain(self.damaged.iter().map(ListRow::Damaged))
            .collect()
    }
}

impl Store {
    /// Every set (of one job, or all): the readable ones oldest first, each with its state
    /// (pre-dumps a pre-copy left are [`SetState::Incomplete`]), and the manifests that cannot
    /// be read (a checksum of any part fails), which are not skipped.
    pub fn list(&self, job: Option<&str>) -> Result<Listing, StoreError> {
        let mut l = Listing::default();
        for p in self.manifest_paths(job)? {
            match Store::read_meta(&p) {
                Ok(m) => l.sets.push(SetSummary::of(m)),
                Err(e) => {
                    let name = |p: Option<&std::path::Path>| {
                        p.and_then(|p| p.file_name())
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default()
                    };
                    l.damaged.push(DamagedSet {
                        id: name(Some(&p)),
                        job: name(p.parent()),
                        path: p.clone(),
                        state: SetState::Damaged,
                        error: e.to_string(),
                    });
                }
            }
        }
        l.sets
            .sort_by(|a, b| (a.created_us, &a.id).cmp(&(b.created_us, &b.id)));
        l.damaged.sort_by(|a, b| a.path.cmp(&b.path));
        let refs: Vec<SetRef<'_>> = l
            .sets
            .iter()
            .map(|s| SetRef {
                id: &s.id,
                kind: s.kind,
                parent: s.parent.as_deref(),
                created_us: s.created_us,
            })
            .collect();
        let states = chains::states(&self.inner.root, &refs, self.inner.remote.is_some());
        for (s, st) in l.sets.iter_mut().zip(states) {
            s.state = st;
        }
        Ok(l)
    }
}
