//! The monotonic clock as a number that several processes of the same boot agree on (a
//! migration's pause is timed by the checkpoint worker and by haul itself).

/// `CLOCK_MONOTONIC` in microseconds: `clock_gettime(2)` (through nix). The same clock the
/// workload of `haul bench migrate` logs, so its ticks and haul's marks line up. Never fails on
/// Linux; 0 if it somehow did.
pub fn monotonic_us() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => (t.tv_sec() as u64) * 1_000_000 + (t.tv_nsec() as u64) / 1_000,
        Err(_) => 0,
    }
}
