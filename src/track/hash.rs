//! The hash tracker: no kernel help. Every resident page of the areas is a candidate each round,
//! and the caller keeps the pages whose content differs from what it stored last round
//! ([`Tracker::compares_content`]). Works everywhere; costs a read and a hash of every resident
//! page per round, and the final round does it under the freeze.

use super::{Area, Dirty, TrackError, Tracker, TrackerKind};

/// See the module documentation.
#[derive(Debug, Default)]
pub struct HashTracker;

impl HashTracker {
    pub fn new() -> HashTracker {
        HashTracker
    }
}

impl Tracker for HashTracker {
    fn kind(&self) -> TrackerKind {
        TrackerKind::Hash
    }

    fn start(&mut self, _areas: &[Area]) -> Result<(), TrackError> {
        Ok(())
    }

    fn collect(&mut self, areas: &[Area]) -> Result<Dirty, TrackError> {
        Ok(Dirty::from_ranges(areas.to_vec()))
    }

    fn compares_content(&self) -> bool {
        true
    }

    fn stop(&mut self) -> Result<(), TrackError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_area_is_a_candidate_and_the_caller_compares_contents() {
        let mut t = HashTracker::new();
        let areas = [
            Area {
                start: 0x5000,
                end: 0x7000,
            },
            Area {
                start: 0x1000,
                end: 0x3000,
            },
            Area {
                start: 0x3000,
                end: 0x4000,
            },
        ];
        t.start(&areas).unwrap();
        let d = t.collect(&areas).unwrap();
        // Sorted and merged: the adjacent areas become one range.
        assert_eq!(
            d.ranges(),
            &[
                Area {
                    start: 0x1000,
                    end: 0x4000
                },
                areas[0]
            ]
        );
        assert_eq!(d.pages(), 5);
        assert!(t.compares_content());
        assert_eq!(t.kind(), TrackerKind::Hash);
        assert!(t.collect(&[]).unwrap().ranges().is_empty());
    }
}
