//! The vDSO step: the kernel's `[vvar]`, `[vvar_vclock]`, `[vdso]` unit moved to the dumped
//! addresses, keeping its relative layout (checked by the compatibility check).

use super::error::{StepError, StepResult};
use crate::image::{ProcessImage, VmaKind};
use crate::sys::remote::{self, Inject};

/// The moves (`from`, `end`, `to`) that take the unit `now` (`(start, end, path)` of the
/// current mappings) to the dumped vDSO at `dumped`: moving up, the highest part first; moving
/// down, the lowest first, so that no part lands on one that has not moved yet.
pub(super) fn vdso_moves(
    now: &[(u64, u64, String)],
    dumped: u64,
) -> StepResult<Vec<(u64, u64, u64)>> {
    let Some(vdso) = now.iter().find(|m| m.2 == "[vdso]") else {
        return Err(StepError::NoVdso);
    };
    let delta = dumped.wrapping_sub(vdso.0);
    if delta == 0 {
        return Ok(Vec::new());
    }
    let mut unit: Vec<(u64, u64)> = now
        .iter()
        .filter(|m| matches!(m.2.as_str(), "[vdso]" | "[vvar]" | "[vvar_vclock]"))
        .map(|m| (m.0, m.1))
        .collect();
    unit.sort_unstable();
    if (delta as i64) > 0 {
        unit.reverse();
    }
    Ok(unit
        .into_iter()
        .map(|(s, e)| (s, e, s.wrapping_add(delta)))
        .collect())
}

/// Moves the vDSO unit of the process to where the image had it (nothing if it had none).
pub(super) fn move_vdso(
    rs: &mut dyn Inject,
    now: &[(u64, u64, String)],
    p: &ProcessImage,
) -> StepResult {
    let Some(dumped) = p.vmas.iter().find(|v| v.kind == VmaKind::Vdso) else {
        return Ok(());
    };
    for (s, e, to) in vdso_moves(now, dumped.start)? {
        let got = remote::mremap_fixed(rs, s, e - s, to)?;
        if got != to {
            return Err(StepError::Moved {
                from: s,
                want: to,
                got,
            });
        }
    }
    Ok(())
}
