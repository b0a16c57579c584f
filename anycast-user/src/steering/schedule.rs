//! The decisions of a site's deciding host, waiting for their moment: every host of a site
//! of several (the deciding one included) installs each at the moment it names, so that
//! their Maglev tables are alike at every instant (`task.rs`). Plain data: the steering
//! task owns one and feeds it the decisions it makes or polls.

use crate::model::SiteDecision;

#[derive(Debug, Default)]
pub struct Schedule {
    /// Not installed yet, in the order decided (and so of their moments).
    pending: Vec<SiteDecision>,
    /// The latest decision taken in: (deciding host, epoch, seq).
    seen: Option<(String, u64, u64)>,
}

impl Schedule {
    /// Takes `d` in, unless it is one taken in before (a report polled again carries the
    /// decisions still pending). A decision of another deciding host than the last one's
    /// voids what that one had pending: it took over, or the first host came back.
    pub fn push(&mut self, d: SiteDecision) {
        if let Some((by, epoch, seq)) = &self.seen
            && *by == d.by
            && (d.epoch, d.seq) <= (*epoch, *seq)
        {
            return;
        }
        self.seen = Some((d.by.clone(), d.epoch, d.seq));
        self.pending.retain(|x| x.by == d.by && x.at <= d.at);
        self.pending.push(d);
    }

    /// What is still to be installed (what the deciding host's report carries).
    pub fn pending(&self) -> &[SiteDecision] {
        &self.pending
    }

    /// The moment of the next decision (ms since the Unix epoch).
    pub fn next_at(&self) -> Option<u64> {
        self.pending.first().map(|d| d.at)
    }

    /// The latest decision due at `now_ms`; the earlier due ones are past and dropped.
    pub fn take_due(&mut self, now_ms: u64) -> Option<SiteDecision> {
        let last = self.pending.iter().rposition(|d| d.at <= now_ms)?;
        self.pending.drain(..=last).next_back()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(by: &str, seq: u64, at: u64) -> SiteDecision {
        SiteDecision { by: by.into(), epoch: 1, seq, at, ..Default::default() }
    }

    fn ids(s: &Schedule) -> Vec<(String, u64)> {
        s.pending().iter().map(|d| (d.by.clone(), d.seq)).collect()
    }

    #[test]
    fn decisions_are_installed_at_their_moment_the_latest_due_one_wins() {
        let mut s = Schedule::default();
        for (seq, at) in [(1, 100), (2, 350), (3, 600)] {
            s.push(decision("a1", seq, at));
        }
        assert_eq!(s.next_at(), Some(100));
        assert_eq!(s.take_due(99), None, "nothing due yet");
        // Two past due at once (a late wake-up): only the later one is installed.
        assert_eq!(s.take_due(400).map(|d| d.seq), Some(2));
        assert_eq!(ids(&s), [("a1".to_owned(), 3)]);
        assert_eq!(s.take_due(600).map(|d| d.seq), Some(3));
        assert_eq!(s.next_at(), None);
    }

    #[test]
    fn a_report_polled_again_adds_nothing_and_an_old_decision_never_comes_back() {
        let mut s = Schedule::default();
        // Each poll of the deciding host carries what it still has pending.
        for report in [vec![(1, 100)], vec![(1, 100), (2, 350)], vec![(2, 350), (3, 600)]] {
            for (seq, at) in report {
                s.push(decision("a1", seq, at));
            }
        }
        assert_eq!(ids(&s).iter().map(|(_, q)| *q).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(s.take_due(700).map(|d| d.seq), Some(3));
        // A late copy of an installed decision (a replayed or delayed report) is ignored.
        s.push(decision("a1", 2, 350));
        assert_eq!(s.take_due(u64::MAX), None);
    }

    #[test]
    fn another_deciding_host_voids_what_the_last_one_had_pending() {
        let mut s = Schedule::default();
        s.push(decision("a1", 7, 100));
        s.push(decision("a1", 8, 350));
        // a1 went stale: a2 decides now.
        s.push(decision("a2", 1, 400));
        assert_eq!(ids(&s), [("a2".to_owned(), 1)]);
        // a1 comes back (first in the list, it decides again, a new epoch after a restart).
        s.push(SiteDecision { epoch: 2, ..decision("a1", 1, 600) });
        assert_eq!(ids(&s), [("a1".to_owned(), 1)]);
    }
}
