//! `--verify state`: the restored process, still stopped before it runs, is compared with what
//! the dump saw of it under the freeze (`ProcessImage::observed`, read by `proc::observe` on
//! both sides). Every field that differs is named; the restore then fails and the process is
//! killed before it runs a single instruction on state that is not its own.

use std::collections::BTreeMap;

use super::RestoreError;
use crate::image::{ImageSet, ProcessImage};

/// One field whose value after the restore is not the one recorded at the dump.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateDifference {
    pub field: String,
    /// The recorded value (`None`: the dump did not see this field).
    pub was: Option<String>,
    /// The value now (`None`: the restored process does not have this field).
    pub now: Option<String>,
}

impl std::fmt::Display for StateDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: was {}, now {}",
            self.field,
            shown(self.was.as_deref()),
            shown(self.now.as_deref())
        )
    }
}

/// A value as a message shows it: `(absent)`, or the value cut at 200 characters.
fn shown(v: Option<&str>) -> String {
    const MAX: usize = 200;
    match v {
        None => "(absent)".into(),
        Some(v) if v.chars().count() > MAX => {
            format!(
                "{}... ({} bytes)",
                v.chars().take(MAX).collect::<String>(),
                v.len()
            )
        }
        Some(v) => format!("{v:?}"),
    }
}

/// The differences as one text, one per line (for error messages and reports).
pub fn list(d: &[StateDifference]) -> String {
    d.iter()
        .map(|d| format!("\n  {d}"))
        .collect::<Vec<_>>()
        .concat()
}

/// Compares `recorded` with `now`: every field present on one side only, or with another
/// value, is a difference, unless `skip` says it is left out. Sorted by field name.
pub fn compare(
    recorded: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
    skip: impl Fn(&str) -> bool,
) -> Vec<StateDifference> {
    let mut out = Vec::new();
    let names: std::collections::BTreeSet<&String> = recorded.keys().chain(now.keys()).collect();
    for name in names {
        if skip(name) {
            continue;
        }
        let (was, is) = (recorded.get(name), now.get(name));
        if was != is {
            out.push(StateDifference {
                field: name.clone(),
                was: was.cloned(),
                now: is.cloned(),
            });
        }
    }
    out
}

/// Refuses a state check on an image that recorded no state (made before haul recorded it),
/// before anything is created.
pub(super) fn require_record(set: &ImageSet, p: &ProcessImage) -> Result<(), RestoreError> {
    if p.observed.is_empty() {
        return Err(RestoreError::Incompatible {
            set: set.id.clone(),
            reason: "--verify state: the image records no state to compare with (it was made \
                     by an older haul); restore it without the state check, or dump again"
                .into(),
        });
    }
    Ok(())
}

/// Reads the restored process `pid` (stopped, not yet run) and compares it with the image.
/// Every recorded field is compared: `proc::observe` leaves out, with its reasons, what names
/// the process itself (pid, tids, parent, pipe inodes) or moves by itself (usage counters,
/// timer expiry), and shows process group and session relative to the process (`self`), so a
/// restore under a new PID (`pid = any`) is compared on the same fields as one under its own.
/// `lazy`: the ranges a lazy restore left to its daemon (empty for an eager restore). `ids`
/// maps the group and session ids of the image to the ones the restore gave (a tree under new
/// PIDs, a group or session of the root's that is outside the tree): the fields are expected
/// to show those.
pub(super) fn check(
    set: &ImageSet,
    p: &ProcessImage,
    pid: i32,
    lazy: &[(u64, u64)],
    ids: &BTreeMap<i32, i32>,
) -> Result<(), RestoreError> {
    let now = crate::proc::observe(pid).map_err(|e| RestoreError::Step {
        set: set.id.clone(),
        step: super::Step::Run,
        source: Box::new(super::StepError::Verify(e)),
    })?;
    let in_lazy = |start: u64, end: u64| lazy.iter().any(|&(s, e)| start < e && s < end);
    let m = &p.mm;
    let unreadable = |f: &str| match f {
        // /proc reads these from the process's memory, and a read by another process cannot
        // fault in a page of a userfaultfd range (the kernel refuses remote faults there): in
        // a lazy restore they read empty until the daemon has copied their pages. Their
        // addresses are still compared (`mm`), and the daemon checks every page it copies.
        "cmdline" => in_lazy(m.arg_start, m.arg_end),
        "environ" => in_lazy(m.env_start, m.env_end),
        _ => false,
    };
    let mut was = p.observed.clone();
    for field in ["pgrp", "session"] {
        if let Some(v) = was.get_mut(field) {
            if let Some(new) = v.parse().ok().and_then(|id: i32| ids.get(&id)) {
                *v = if *new == pid {
                    "self".into()
                } else {
                    new.to_string()
                };
            }
        }
    }
    let differences = compare(&was, &now.fields, unreadable);
    if differences.is_empty() {
        return Ok(());
    }
    Err(RestoreError::StateDiffers {
        set: set.id.clone(),
        pid,
        differences,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_changed_missing_or_new_field_is_named_with_both_values() {
        let was = map(&[
            ("thread 0 SigBlk", "0000000000010000"),
            ("fd 3 pos", "12"),
            ("cwd", "/tmp"),
        ]);
        let now = map(&[
            ("thread 0 SigBlk", "0000000000000000"),
            ("cwd", "/tmp"),
            ("fd 4 target", "/dev/null"),
        ]);
        let d = compare(&was, &now, |_| false);
        let text: Vec<String> = d.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "fd 3 pos: was \"12\", now (absent)",
                "fd 4 target: was (absent), now \"/dev/null\"",
                "thread 0 SigBlk: was \"0000000000010000\", now \"0000000000000000\"",
            ]
        );
    }

    #[test]
    fn equal_states_have_no_difference_and_a_skipped_field_is_not_named() {
        let was = map(&[("oom_score_adj", "500"), ("cwd", "/")]);
        assert!(compare(&was, &was.clone(), |_| false).is_empty());
        let now = map(&[("oom_score_adj", "0"), ("cwd", "/")]);
        assert_eq!(compare(&was, &now, |_| false).len(), 1);
        assert!(compare(&was, &now, |f| f == "oom_score_adj").is_empty());
    }

    #[test]
    fn threads_are_compared_by_index_so_new_tids_do_not_differ() {
        // Two snapshots of the same threads under other tids: keys carry indexes only.
        let was = map(&[("thread 0 comm", "main"), ("thread 1 comm", "worker")]);
        let now = map(&[("thread 0 comm", "main"), ("thread 1 comm", "worker")]);
        assert!(compare(&was, &now, |_| false).is_empty());
        let swapped = map(&[("thread 0 comm", "main"), ("thread 1 comm", "other")]);
        let d = compare(&was, &swapped, |_| false);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].field, "thread 1 comm");
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let d = StateDifference {
            field: "environ".into(),
            was: Some("x".repeat(1000)),
            now: None,
        };
        let s = d.to_string();
        assert!(s.len() < 300, "{s}");
        assert!(s.ends_with("(1000 bytes), now (absent)"), "{s}");
    }
}
