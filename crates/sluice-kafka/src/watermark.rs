//! Commit watermarks: per partition, the offset that is safe to commit.
//!
//! Records are written out of order (a fast record can finish before a slow one taken earlier),
//! but a Kafka commit says "everything before this offset is done". So per partition the tracker
//! keeps the offsets received and not yet done; the commit point is the lowest of them, or, when
//! none is outstanding, one past the highest offset received. It never passes an unwritten record.
//!
//! Each assignment of a partition has a generation. A revoke ends it: records of the old
//! generation that finish later are ignored (the new owner reads them again from the commit
//! point, and idempotent keys make the second write harmless).

use std::collections::{BTreeSet, HashMap};

/// A topic partition.
pub type Tp = (String, i32);

#[derive(Debug, Default)]
struct Partition {
    generation: u64,
    /// Received, not yet done.
    outstanding: BTreeSet<i64>,
    /// One past the highest offset received (None before the first).
    next: Option<i64>,
    /// The last offset committed (or found committed).
    committed: Option<i64>,
}

impl Partition {
    fn commit_point(&self) -> Option<i64> {
        self.outstanding.first().copied().or(self.next)
    }
}

/// Every assigned partition's outstanding offsets and commit point. A plain tracker with no IO: the
/// caller commits what [`Watermarks::to_commit`] returns and reports it back with
/// [`Watermarks::committed`].
#[derive(Debug, Default)]
pub struct Watermarks {
    parts: HashMap<Tp, Partition>,
    generations: u64,
}

impl Watermarks {
    /// A partition is ours (again): a new generation, nothing outstanding.
    pub fn assign(&mut self, tp: Tp) -> u64 {
        self.generations += 1;
        let generation = self.generations;
        self.parts.insert(
            tp,
            Partition {
                generation,
                ..Default::default()
            },
        );
        generation
    }

    /// The partition is no longer ours. Returns its final commit point (if it moved past what
    /// was committed) and how many records were still outstanding (abandoned).
    pub fn revoke(&mut self, tp: &Tp) -> (Option<i64>, usize) {
        match self.parts.remove(tp) {
            Some(p) => {
                let point = p.commit_point().filter(|&c| Some(c) > p.committed);
                (point, p.outstanding.len())
            }
            None => (None, 0),
        }
    }

    /// The current generation of a partition, if it is assigned.
    pub fn generation(&self, tp: &Tp) -> Option<u64> {
        self.parts.get(tp).map(|p| p.generation)
    }

    /// A record was received. False when the partition is not (or no longer) ours.
    pub fn received(&mut self, tp: &Tp, generation: u64, offset: i64) -> bool {
        match self.parts.get_mut(tp) {
            Some(p) if p.generation == generation => {
                p.outstanding.insert(offset);
                p.next = Some(p.next.map_or(offset + 1, |n| n.max(offset + 1)));
                true
            }
            _ => false,
        }
    }

    /// A record is done (written, or dead-lettered). False when it belongs to an ended
    /// generation or was not outstanding.
    pub fn done(&mut self, tp: &Tp, generation: u64, offset: i64) -> bool {
        match self.parts.get_mut(tp) {
            Some(p) if p.generation == generation => p.outstanding.remove(&offset),
            _ => false,
        }
    }

    /// Records received and not done, over every partition.
    pub fn outstanding(&self) -> usize {
        self.parts.values().map(|p| p.outstanding.len()).sum()
    }

    /// Records outstanding in one partition.
    pub fn outstanding_in(&self, tp: &Tp) -> usize {
        self.parts.get(tp).map_or(0, |p| p.outstanding.len())
    }

    /// Partitions whose commit point moved past the last commit, with that point.
    pub fn to_commit(&self) -> Vec<(Tp, i64)> {
        let mut out: Vec<(Tp, i64)> = self
            .parts
            .iter()
            .filter_map(|(tp, p)| {
                p.commit_point()
                    .filter(|&c| Some(c) > p.committed)
                    .map(|c| (tp.clone(), c))
            })
            .collect();
        out.sort();
        out
    }

    /// Records that these points are committed (after the broker said so).
    pub fn committed(&mut self, points: &[(Tp, i64)]) {
        for (tp, offset) in points {
            if let Some(p) = self.parts.get_mut(tp) {
                p.committed = Some(p.committed.map_or(*offset, |c| c.max(*offset)));
            }
        }
    }

    /// The commit point of a partition now (for tests and metrics).
    pub fn commit_point(&self, tp: &Tp) -> Option<i64> {
        self.parts.get(tp).and_then(Partition::commit_point)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> Tp {
        ("logs".into(), p)
    }

    #[test]
    fn the_commit_point_waits_for_the_lowest_unfinished_offset() {
        let mut w = Watermarks::default();
        let g = w.assign(tp(0));
        for o in 10..15 {
            assert!(w.received(&tp(0), g, o));
        }
        assert_eq!(w.commit_point(&tp(0)), Some(10));
        // 11..=14 finish first: nothing can be committed past 10.
        for o in 11..15 {
            assert!(w.done(&tp(0), g, o));
        }
        assert_eq!(w.to_commit(), vec![(tp(0), 10)]);
        assert!(w.done(&tp(0), g, 10));
        assert_eq!(w.to_commit(), vec![(tp(0), 15)], "one past the highest");
        w.committed(&[(tp(0), 15)]);
        assert!(w.to_commit().is_empty(), "nothing new since");
        assert!(!w.done(&tp(0), g, 10), "done twice");
    }

    #[test]
    fn a_revoke_ends_the_generation_and_reports_what_was_abandoned() {
        let mut w = Watermarks::default();
        let g1 = w.assign(tp(1));
        w.received(&tp(1), g1, 0);
        w.received(&tp(1), g1, 1);
        w.received(&tp(1), g1, 2);
        w.done(&tp(1), g1, 0);
        w.done(&tp(1), g1, 2);
        assert_eq!(w.revoke(&tp(1)), (Some(1), 1));
        assert!(!w.done(&tp(1), g1, 1), "late finish of a revoked record");
        // Assigned again: a new generation; the old one's acks stay ignored.
        let g2 = w.assign(tp(1));
        assert_ne!(g1, g2);
        assert!(!w.received(&tp(1), g1, 5));
        assert!(w.received(&tp(1), g2, 1));
        assert!(!w.done(&tp(1), g1, 1));
        assert!(w.done(&tp(1), g2, 1));
        assert_eq!(w.to_commit(), vec![(tp(1), 2)]);
    }

    #[test]
    fn partitions_are_independent() {
        let mut w = Watermarks::default();
        let a = w.assign(tp(0));
        let b = w.assign(tp(1));
        w.received(&tp(0), a, 100);
        w.received(&tp(1), b, 7);
        w.done(&tp(1), b, 7);
        assert_eq!(w.to_commit(), vec![(tp(0), 100), (tp(1), 8)]);
        assert_eq!(w.outstanding(), 1);
        assert_eq!(w.outstanding_in(&tp(0)), 1);
    }

    /// Random out-of-order completion: the commit point never passes an unfinished offset and
    /// ends one past the last.
    #[test]
    fn random_completion_order_never_commits_past_an_unfinished_record() {
        use rand::seq::SliceRandom;
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        for _ in 0..200 {
            let mut w = Watermarks::default();
            let g = w.assign(tp(0));
            let n = rng.random_range(1..300i64);
            let mut pending: Vec<i64> = (0..n).collect();
            for &o in &pending {
                w.received(&tp(0), g, o);
            }
            pending.shuffle(&mut rng);
            let mut unfinished: BTreeSet<i64> = (0..n).collect();
            for o in pending {
                w.done(&tp(0), g, o);
                unfinished.remove(&o);
                let point = w.commit_point(&tp(0)).unwrap();
                assert!(unfinished.first().is_none_or(|&u| point <= u));
                if rng.random_bool(0.3) {
                    let c = w.to_commit();
                    w.committed(&c);
                }
            }
            assert_eq!(w.commit_point(&tp(0)), Some(n));
        }
    }
}
