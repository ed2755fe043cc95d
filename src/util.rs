//! Small helpers shared by several modules: hex, human-readable sizes, clocks.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Lower-case hexadecimal of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Parses hexadecimal (either case); None on odd length or a non-hex character.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros() as u64
}

/// A duration in whole microseconds, saturating.
pub fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// `1.5 GiB`-style rendering of a byte count.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `1.234s` / `12.3ms` / `45µs` rendering of microseconds.
pub fn human_us(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.3}s", us as f64 / 1e6)
    } else if us >= 1_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{us}µs")
    }
}

/// RFC 3339 timestamp (UTC, seconds) of a time in microseconds since the epoch.
pub fn rfc3339_us(us: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_micros(us)).to_string()
}

/// `uname -r` of this machine, or "unknown".
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// This machine's host name, or "unknown".
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Whether transparent huge pages are on for all anonymous memory (`[always]` in
/// `/sys/kernel/mm/transparent_hugepage/enabled`), not only where a process asked for them.
/// Unreadable (no THP in the kernel): false.
pub fn thp_always() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| s.contains("[always]"))
}

/// `path` made absolute (against the current directory) with `.` and `..` removed lexically, for
/// paths that are shown to people and written into reports.
pub fn clean_path(path: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    use std::path::Component;
    let abs = std::path::absolute(path)?;
    let mut out = std::path::PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}

/// `e` and its sources, "outer: inner: innermost", without repeating a message a transparent
/// wrapper already showed.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let m = inner.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = inner.source();
    }
    s
}

/// The entries of `first` and `then`, each sorted by `key` with no key twice, merged in key
/// order in one pass. For a key in both, `then`'s entry is kept (the later one wins).
pub fn merge_sorted_by_key<T: Copy, K: Ord>(
    first: &[T],
    then: &[T],
    key: impl Fn(&T) -> K,
) -> Vec<T> {
    let mut out = Vec::with_capacity(first.len() + then.len());
    let (mut i, mut j) = (0, 0);
    while i < first.len() && j < then.len() {
        match key(&first[i]).cmp(&key(&then[j])) {
            std::cmp::Ordering::Less => {
                out.push(first[i]);
                i += 1;
            }
            o => {
                out.push(then[j]);
                i += usize::from(o == std::cmp::Ordering::Equal);
                j += 1;
            }
        }
    }
    out.extend_from_slice(&first[i..]);
    out.extend_from_slice(&then[j..]);
    out
}

/// Merges `small` into `big` in place, both sorted by `key` with no key twice, from the back
/// (the merged list is `big`'s vector: it grows by `small.len()`, and no list of the merged
/// size is allocated anew). For a key in both, `small`'s entry is kept if `small_wins`, else
/// `big`'s. Meant for a few entries into many: a large new vector costs a page fault per 4 KiB
/// written, where the reserve of a large one moves its pages (`mremap`).
pub fn merge_into_sorted_by_key<T: Copy, K: Ord>(
    big: &mut Vec<T>,
    small: &[T],
    small_wins: bool,
    key: impl Fn(&T) -> K,
) {
    let n = big.len();
    if small.is_empty() {
        return;
    }
    // The tail's first content is never read: every slot at or above the write position
    // is written before the merge is over.
    big.extend_from_slice(small);
    // Read positions (exclusive) in `big[..n]` and `small`; write position (exclusive). The
    // write position stays above `i` while `small` has entries left (k = i + j + keys met
    // twice): no entry of `big` is overwritten before it is read.
    let (mut i, mut j, mut k) = (n, small.len(), n + small.len());
    while j > 0 {
        k -= 1;
        if i == 0 {
            big[k] = small[j - 1];
            j -= 1;
            continue;
        }
        match key(&big[i - 1]).cmp(&key(&small[j - 1])) {
            std::cmp::Ordering::Greater => {
                big[k] = big[i - 1];
                i -= 1;
            }
            std::cmp::Ordering::Less => {
                big[k] = small[j - 1];
                j -= 1;
            }
            std::cmp::Ordering::Equal => {
                big[k] = if small_wins { small[j - 1] } else { big[i - 1] };
                i -= 1;
                j -= 1;
            }
        }
    }
    // `big[..i]` is in place; keys met twice left as many slots unwritten before `k`.
    if k > i {
        big.drain(i..k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let b = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&b), "0001abff");
        assert_eq!(unhex("0001ABff").as_deref(), Some(&b[..]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn clean_path_drops_dot_dot() {
        let p = clean_path(std::path::Path::new("/a/b/../c/./d")).unwrap();
        assert_eq!(p, std::path::PathBuf::from("/a/c/d"));
    }

    #[test]
    fn human_bytes_uses_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1 << 30), "1.0 GiB");
    }

    #[test]
    fn an_in_place_merge_equals_the_merge_into_a_new_list() {
        let key = |x: &(u32, char)| x.0;
        type List = &'static [(u32, char)];
        let cases: &[(List, List)] = &[
            (&[], &[]),
            (&[(1, 'a')], &[]),
            (&[], &[(1, 'b')]),
            (
                &[(1, 'a'), (3, 'a'), (5, 'a')],
                &[(0, 'b'), (2, 'b'), (6, 'b')],
            ),
            (&[(1, 'a'), (2, 'a'), (3, 'a')], &[(2, 'b')]),
            (&[(2, 'a')], &[(1, 'b'), (2, 'b'), (3, 'b')]),
            (
                &[(1, 'a'), (2, 'a'), (3, 'a')],
                &[(1, 'b'), (2, 'b'), (3, 'b')],
            ),
            (&[(5, 'a'), (6, 'a')], &[(1, 'b'), (2, 'b')]),
            (&[(1, 'a'), (2, 'a')], &[(5, 'b'), (6, 'b')]),
            (
                &[(1, 'a'), (4, 'a'), (9, 'a')],
                &[(4, 'b'), (9, 'b'), (10, 'b')],
            ),
        ];
        for &(a, b) in cases {
            // Either list as the one merged into, and either one winning a key met twice.
            for (big, small, small_wins) in [(a, b, true), (b, a, false)] {
                let want = if small_wins {
                    merge_sorted_by_key(big, small, key)
                } else {
                    merge_sorted_by_key(small, big, key)
                };
                let mut got = big.to_vec();
                merge_into_sorted_by_key(&mut got, small, small_wins, key);
                assert_eq!(got, want, "{big:?} <- {small:?} (small wins: {small_wins})");
            }
        }
    }
}
