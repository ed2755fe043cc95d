//! Seccomp filters of a process's threads.
//!
//! Each distinct filter (its BPF program and flags) is stored once, in `filters`; each
//! filtered thread lists the filters it runs under, oldest first, by index. Threads that share
//! a chain (inherited at `clone`, or synced with `SECCOMP_FILTER_FLAG_TSYNC`) list the same
//! indices. A restore installs the chain all threads share in the main thread before it makes
//! the others (so they inherit it, sharing it as the dump had it), then each thread's own rest.

use serde::{Deserialize, Serialize};

/// The seccomp state of a process's threads (only those under seccomp are listed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompImage {
    /// Every distinct filter of the process's threads.
    pub filters: Vec<Filter>,
    /// The threads under seccomp, by dumped tid.
    pub threads: Vec<ThreadSeccomp>,
}

/// One seccomp filter as `PTRACE_SECCOMP_GET_FILTER` and `PTRACE_SECCOMP_GET_METADATA`
/// report it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// `SECCOMP_FILTER_FLAG_*` the kernel reports (`SECCOMP_FILTER_FLAG_LOG`).
    #[serde(default)]
    pub flags: u64,
    /// The raw BPF program: `struct sock_filter`s of 8 bytes each, native endian.
    pub program: Vec<u8>,
}

/// One thread under seccomp.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadSeccomp {
    pub tid: i32,
    /// Strict mode (`SECCOMP_MODE_STRICT`): only read, write, exit and sigreturn; no filters.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
    /// Its filters, oldest first, as indices into [`SeccompImage::filters`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<usize>,
}

impl SeccompImage {
    /// Adds the filters of thread `tid` (oldest first), each stored once: a filter equal to
    /// one already stored (same program, same flags) is referred to by its index.
    pub fn add_thread(&mut self, tid: i32, filters: Vec<Filter>) {
        let chain = filters
            .into_iter()
            .map(|f| match self.filters.iter().position(|g| *g == f) {
                Some(i) => i,
                None => {
                    self.filters.push(f);
                    self.filters.len() - 1
                }
            })
            .collect();
        self.threads.push(ThreadSeccomp {
            tid,
            strict: false,
            chain,
        });
    }

    /// Records thread `tid` in strict mode.
    pub fn add_strict(&mut self, tid: i32) {
        self.threads.push(ThreadSeccomp {
            tid,
            strict: true,
            chain: Vec::new(),
        });
    }

    /// The thread `tid`, if it is under seccomp.
    pub fn thread(&self, tid: i32) -> Option<&ThreadSeccomp> {
        self.threads.iter().find(|t| t.tid == tid)
    }

    /// The filters of thread `tid`, oldest first (none for a thread not under filters).
    pub fn chain_of(&self, tid: i32) -> &[usize] {
        self.thread(tid).map(|t| &t.chain[..]).unwrap_or(&[])
    }

    /// How many filters, oldest first, every one of `tids` runs under (the chain they share):
    /// 0 when one of them has none or is in strict mode.
    pub fn shared_len(&self, tids: &[i32]) -> usize {
        let mut chains = tids.iter().map(|&t| self.chain_of(t));
        let Some(first) = chains.next() else {
            return 0;
        };
        chains.fold(first.len(), |n, c| {
            first
                .iter()
                .zip(c)
                .take(n)
                .take_while(|(a, b)| a == b)
                .count()
        })
    }

    /// A filter by index, or None for an index no filter has (a damaged image).
    pub fn filter(&self, i: usize) -> Option<&Filter> {
        self.filters.get(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(n: u8, flags: u64) -> Filter {
        Filter {
            flags,
            program: vec![n; 8],
        }
    }

    #[test]
    fn equal_filters_are_stored_once_and_chains_keep_their_order() {
        let mut s = SeccompImage::default();
        s.add_thread(10, vec![f(1, 0), f(2, 2)]);
        s.add_thread(11, vec![f(1, 0), f(2, 2)]);
        s.add_thread(12, vec![f(1, 0), f(2, 2), f(3, 0)]);
        // The same program with other flags is another filter; the same one twice is kept twice.
        s.add_thread(13, vec![f(2, 0), f(2, 0)]);
        assert_eq!(s.filters, vec![f(1, 0), f(2, 2), f(3, 0), f(2, 0)]);
        assert_eq!(s.chain_of(10), &[0, 1]);
        assert_eq!(s.chain_of(11), &[0, 1]);
        assert_eq!(s.chain_of(12), &[0, 1, 2]);
        assert_eq!(s.chain_of(13), &[3, 3]);
        assert_eq!(s.chain_of(99), &[] as &[usize]);
    }

    #[test]
    fn the_shared_chain_is_the_longest_common_prefix() {
        let mut s = SeccompImage::default();
        s.add_thread(10, vec![f(1, 0), f(2, 0)]);
        s.add_thread(11, vec![f(1, 0), f(2, 0), f(3, 0)]);
        s.add_thread(12, vec![f(1, 0), f(2, 0)]);
        assert_eq!(s.shared_len(&[10, 11, 12]), 2);
        assert_eq!(s.shared_len(&[11]), 3);
        s.add_thread(13, vec![f(1, 0), f(3, 0)]);
        assert_eq!(s.shared_len(&[10, 11, 12, 13]), 1);
        // A thread without filters (or in strict mode) shares none.
        assert_eq!(s.shared_len(&[10, 14]), 0);
        s.add_strict(15);
        assert_eq!(s.shared_len(&[15, 10]), 0);
        assert_eq!(s.shared_len(&[]), 0);
    }

    #[test]
    fn a_set_with_seccomp_filters_is_written_as_version_2_which_older_builds_refuse() {
        use crate::image::encode::{decode_header, decode_manifest, encode_manifest};
        let mut set = crate::image::ImageSet {
            id: "j-1".into(),
            job: "j".into(),
            created_us: 5,
            kind: crate::image::SetKind::Dump,
            parent: None,
            kernel: "6.18".into(),
            process: Some(crate::image::ProcessImage {
                pid: 42,
                ..Default::default()
            }),
            tree: Default::default(),
            pages: crate::image::PageTable::new(),
            figures: Default::default(),
        };
        let plain = encode_manifest(&set).unwrap();
        assert_eq!(decode_header(&plain).unwrap().version, 1);
        let mut s = SeccompImage::default();
        s.add_thread(42, vec![f(1, 2)]);
        set.process.as_mut().unwrap().seccomp = Some(s);
        let b = encode_manifest(&set).unwrap();
        assert_eq!(decode_header(&b).unwrap().version, 2);
        assert_eq!(decode_manifest(&b).unwrap(), set);
    }

    #[test]
    fn an_image_round_trips_through_json() {
        let mut s = SeccompImage::default();
        s.add_thread(10, vec![f(1, 2)]);
        s.add_strict(11);
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<SeccompImage>(&j).unwrap(), s);
    }
}
