//! Fleet membership: each instance's share of the write budget follows who is alive.
//!
//! Every instance of a fleet holds a lease in a small table (sluice keeps it in DynamoDB, the
//! pattern of the Kinesis Client Library): an item it renews every heartbeat with the time it
//! expires and the number of live members it counted at its last read. Each instance paces to
//! budget ÷ live members. This module decides, from one read of the table, what an instance may
//! pace to; it does no I/O.
//!
//! The rule that keeps the sum of the shares within the budget:
//! - a member that sees more members than before lowers its share at once (before it reports
//!   the new count), and one that sees fewer raises it at once: the one that left stopped
//!   writing before its lease went (a clean exit deletes it; a lapsed lease holds itself, below);
//! - a member that joins writes nothing until every other live member reports a count at least
//!   as large as its own: by then each of them has already lowered its share to make room;
//! - a member whose own lease may have lapsed in the others' eyes (no renewal for
//!   `lease_duration - heartbeat_interval`) holds at once and joins again as a new member.
//!
//! No fallback grants more than the last share: when the table cannot be read, the last share
//! stays, and holds once the lease can no longer be renewed.

use std::time::Duration;

/// One member's lease as read from the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member's id: unique per live instance, and the table's sort key.
    pub id: String,
    /// When the lease ends, in milliseconds since the Unix epoch (the writer's clock).
    pub expires_at_ms: u64,
    /// How many live members the member counted at its last read (itself included); 0 before
    /// its first read.
    pub seen: u32,
}

/// What an instance may pace to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// Write nothing yet (joining, or the lease lapsed).
    Hold,
    /// Pace to budget ÷ this many members.
    OneOf(u32),
}

impl Share {
    /// The fraction of the budget: 0 while held.
    pub fn fraction(self) -> f64 {
        match self {
            Share::Hold => 0.0,
            Share::OneOf(n) => 1.0 / f64::from(n.max(1)),
        }
    }
}

/// One instance's membership state.
#[derive(Debug, Clone)]
pub struct Membership {
    me: String,
    lease_duration: Duration,
    heartbeat_interval: Duration,
    /// Counted by every other member at least once since the last join.
    active: bool,
    /// The live members at the last successful read (this one included): what the next
    /// renewal reports as `seen`.
    live: u32,
    /// The `seen` the last successful renewal wrote (0 before the first).
    reported: u32,
    /// What this member paces to: budget ÷ this. Set at each read, to the larger of the live
    /// members and `reported`: a member that sees fewer members raises its share only at a read
    /// after it has reported the lower count, so a joiner that trusted the higher count it read
    /// before is visible to that read.
    denominator: u32,
    /// When the last renewal was sent (ms since the epoch), if it succeeded.
    renewed_at_ms: Option<u64>,
}

impl Membership {
    /// A new member `me`, not yet active (it holds until every other member has counted it). Its
    /// lease lasts `lease_duration` from each renewal, which it sends every `heartbeat_interval`.
    pub fn new(
        me: impl Into<String>,
        lease_duration: Duration,
        heartbeat_interval: Duration,
    ) -> Self {
        Membership {
            me: me.into(),
            lease_duration,
            heartbeat_interval,
            active: false,
            live: 1,
            reported: 0,
            denominator: 1,
            renewed_at_ms: None,
        }
    }

    /// This member's id, as written in its lease.
    pub fn id(&self) -> &str {
        &self.me
    }

    /// The live members at the last read, this one included.
    pub fn live(&self) -> u32 {
        self.live
    }

    /// The count to report with the next renewal: the live members at the last read.
    pub fn seen(&self) -> u32 {
        self.live
    }

    /// A renewal sent at `sent_at_ms` and reporting `seen` succeeded: the lease runs to
    /// `sent_at_ms + lease_duration`.
    pub fn renewed(&mut self, sent_at_ms: u64, seen: u32) {
        self.renewed_at_ms = Some(self.renewed_at_ms.map_or(sent_at_ms, |r| r.max(sent_at_ms)));
        self.reported = seen;
    }

    /// A renewal reporting `seen` failed or timed out: it may still have been written, so the
    /// count it carried may be what the others read. Until a renewal is known to have written a
    /// lower count, this member does not pace above a share of `seen`.
    pub fn renewal_unknown(&mut self, seen: u32) {
        self.reported = self.reported.max(seen);
    }

    /// Whether this member paces below what the last read allows, and has already reported the
    /// lower count: the next read raises its share, so it is worth making soon.
    pub fn raise_pending(&self) -> bool {
        self.active && self.denominator > self.live && self.reported <= self.live
    }

    /// The expiry to write with a renewal sent at `now_ms`.
    pub fn expiry(&self, now_ms: u64) -> u64 {
        now_ms + self.lease_duration.as_millis() as u64
    }

    /// Whether the lease may have lapsed in the others' eyes by `now_ms`: no renewal succeeded
    /// for `lease_duration - heartbeat_interval` (one heartbeat of margin for clocks and calls).
    pub fn lapsed(&self, now_ms: u64) -> bool {
        self.lapse_at_ms().is_none_or(|t| now_ms >= t)
    }

    /// When the lease may lapse in the others' eyes ([`Membership::lapsed`]); None before the
    /// first renewal.
    pub fn lapse_at_ms(&self) -> Option<u64> {
        let margin = self.lease_duration.saturating_sub(self.heartbeat_interval);
        self.renewed_at_ms.map(|r| r + margin.as_millis() as u64)
    }

    /// The share after a read of every member at `now_ms`.
    pub fn on_read(&mut self, members: &[Member], now_ms: u64) -> Share {
        if self.lapsed(now_ms) {
            // Others may have dropped this member already: join again.
            self.active = false;
        }
        let others: Vec<&Member> = members
            .iter()
            .filter(|m| m.id != self.me && m.expires_at_ms > now_ms)
            .collect();
        self.live = others.len() as u32 + 1;
        self.denominator = self.live.max(self.reported);
        if !self.active && !self.lapsed(now_ms) {
            self.active = others.iter().all(|m| m.seen >= self.live);
        }
        self.share()
    }

    /// The share now, without a new read: held while joining or once the lease may have lapsed.
    pub fn share_at(&mut self, now_ms: u64) -> Share {
        if self.lapsed(now_ms) {
            self.active = false;
        }
        self.share()
    }

    fn share(&self) -> Share {
        if self.active {
            Share::OneOf(self.denominator)
        } else {
            Share::Hold
        }
    }
}

/// Members whose lease ended more than `after` before `now_ms`: crashed or killed instances
/// whose items a live member may delete so reads stay small.
pub fn stale(members: &[Member], now_ms: u64, after: Duration) -> impl Iterator<Item = &Member> {
    let after = after.as_millis() as u64;
    members
        .iter()
        .filter(move |m| m.expires_at_ms.saturating_add(after) < now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LEASE: Duration = Duration::from_secs(15);
    const BEAT: Duration = Duration::from_secs(3);

    fn m(id: &str, expires_at_ms: u64, seen: u32) -> Member {
        Member {
            id: id.into(),
            expires_at_ms,
            seen,
        }
    }

    #[test]
    fn a_joiner_holds_until_every_member_has_counted_it() {
        let mut c = Membership::new("c", LEASE, BEAT);
        c.renewed(1_000, 0);
        let now = 2_000;
        // a and b still count two members: c would push the fleet over.
        let read = [m("a", 20_000, 2), m("b", 20_000, 2), m("c", 16_000, 0)];
        assert_eq!(c.on_read(&read, now), Share::Hold);
        // a has counted c, b not yet.
        let read = [m("a", 20_000, 3), m("b", 20_000, 2), m("c", 16_000, 3)];
        assert_eq!(c.on_read(&read, now), Share::Hold);
        let read = [m("a", 20_000, 3), m("b", 20_000, 3), m("c", 16_000, 3)];
        assert_eq!(c.on_read(&read, now), Share::OneOf(3));
        // Once counted it stays active while others report older counts again.
        let read = [m("a", 20_000, 2), m("b", 20_000, 3), m("c", 16_000, 3)];
        assert_eq!(c.on_read(&read, now), Share::OneOf(3));
    }

    #[test]
    fn a_member_makes_room_at_once_and_takes_a_leavers_share_at_once() {
        let mut a = Membership::new("a", LEASE, BEAT);
        a.renewed(0, 0);
        assert_eq!(a.on_read(&[m("a", 15_000, 0)], 1), Share::OneOf(1));
        a.renewed(1, a.seen());
        // b joins (seen 0): a lowers its share at this read.
        let read = [m("a", 15_000, 1), m("b", 15_000, 0)];
        assert_eq!(a.on_read(&read, 2), Share::OneOf(2));
        assert_eq!(a.seen(), 2);
        a.renewed(3, a.seen());
        // b's lease ended (crash): a reports the lower count first, and takes the whole budget
        // at the read after.
        let read = [m("a", 15_000, 2), m("b", 10_000, 2)];
        assert_eq!(a.on_read(&read, 10_001), Share::OneOf(2));
        a.renewed(10_002, a.seen());
        assert_eq!(a.share_at(10_003), Share::OneOf(2), "not before a read");
        assert_eq!(a.on_read(&read, 10_004), Share::OneOf(1));
    }

    #[test]
    fn a_member_that_cannot_renew_holds_before_the_others_drop_it_and_rejoins() {
        let mut a = Membership::new("a", LEASE, BEAT);
        a.renewed(0, 0);
        let read = [m("a", 15_000, 1), m("b", 15_000, 2)];
        assert_eq!(a.on_read(&read, 1), Share::OneOf(2));
        // No renewal since 0: at 12 s (15 s lease − one 3 s heartbeat) it holds.
        assert_eq!(a.share_at(11_999), Share::OneOf(2));
        assert_eq!(a.share_at(12_000), Share::Hold);
        // A renewal again: it must be counted again before it writes.
        a.renewed(13_000, 2);
        let read = [m("a", 28_000, 2), m("b", 30_000, 1)];
        assert_eq!(a.on_read(&read, 13_500), Share::Hold);
        let read = [m("a", 28_000, 2), m("b", 30_000, 2)];
        assert_eq!(a.on_read(&read, 14_000), Share::OneOf(2));
    }

    #[test]
    fn a_renewal_that_timed_out_may_have_landed_and_is_trusted_by_joiners() {
        // a and b write half each. c joins; a counts 3 and reports it, but the renewal times
        // out after landing. c leaves. a reads two members again: it must not take half while
        // the table still says it counts 3, or j, trusting that 3, would join beside it.
        let mut a = Membership::new("a", LEASE, BEAT);
        a.renewed(0, 0);
        let two = [m("a", 15_000, 2), m("b", 15_000, 2)];
        assert_eq!(a.on_read(&two, 1), Share::OneOf(2));
        a.renewed(2, 2);
        let three = [m("a", 15_000, 2), m("b", 15_000, 2), m("c", 15_000, 0)];
        assert_eq!(a.on_read(&three, 3), Share::OneOf(3));
        a.renewal_unknown(a.seen()); // seen 3, landed, but a cannot know
        let after_c = [m("a", 15_000, 3), m("b", 15_000, 3)];
        assert_eq!(a.on_read(&after_c, 4), Share::OneOf(3));
        let mut j = Membership::new("j", LEASE, BEAT);
        j.renewed(5, 0);
        let with_j = [m("a", 15_000, 3), m("b", 15_000, 3), m("j", 20_000, 0)];
        assert_eq!(j.on_read(&with_j, 5), Share::OneOf(3));
        // Shares in use: a 1/3, b (at most) 1/3, j 1/3.
        a.renewed(6, a.seen());
        assert_eq!(a.on_read(&with_j, 7), Share::OneOf(3));
    }

    #[test]
    fn never_renewed_is_held() {
        let mut a = Membership::new("a", LEASE, BEAT);
        assert_eq!(a.on_read(&[], 0), Share::Hold);
    }

    #[test]
    fn stale_members_are_those_long_expired() {
        let read = [m("a", 1_000, 1), m("b", 100_000, 1)];
        let s: Vec<_> = stale(&read, 62_000, Duration::from_secs(60))
            .map(|m| m.id.as_str())
            .collect();
        assert_eq!(s, ["a"]);
    }

    /// A fleet simulated step by step: members join, leave cleanly (stop writing, then delete
    /// the lease) or crash; each live member reads the table and renews its lease as separate
    /// steps, in any interleaving, and a renewal may fail; time moves a second at a time and a
    /// member whose calls fail still runs its timer. At no instant do the shares of the members
    /// that write add up to more than the budget.
    #[derive(Debug, Clone)]
    enum Event {
        Join,
        Leave(usize),
        Crash(usize),
        Read(usize),
        Renew(usize, Outcome),
        Tick,
    }

    #[derive(Debug, Clone, Copy)]
    enum Outcome {
        Ok,
        LandedButTimedOut,
        Failed,
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            2 => Just(Event::Join),
            1 => (0usize..8).prop_map(Event::Leave),
            1 => (0usize..8).prop_map(Event::Crash),
            6 => (0usize..8).prop_map(Event::Read),
            6 => ((0usize..8), prop_oneof![
                8 => Just(Outcome::Ok),
                1 => Just(Outcome::LandedButTimedOut),
                1 => Just(Outcome::Failed),
            ]).prop_map(|(i, o)| Event::Renew(i, o)),
            4 => Just(Event::Tick),
        ]
    }

    struct Node {
        state: Membership,
        /// Stopped (killed): writes nothing, its item stays in the table until it expires.
        crashed: bool,
        share: Share,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn the_shares_of_writing_members_never_exceed_the_budget(
            events in proptest::collection::vec(event(), 1..200)
        ) {
            let mut table: std::collections::BTreeMap<String, (u64, u32)> = Default::default();
            let mut nodes: Vec<Node> = Vec::new();
            let mut now = 0u64;
            let mut next = 0;
            for e in events {
                match e {
                    Event::Join => {
                        let id = format!("n{next}");
                        next += 1;
                        let mut s = Membership::new(id.clone(), LEASE, BEAT);
                        table.insert(id, (s.expiry(now), 0));
                        s.renewed(now, 0);
                        nodes.push(Node { state: s, crashed: false, share: Share::Hold });
                    }
                    Event::Leave(i) if i < nodes.len() && !nodes[i].crashed => {
                        let n = nodes.remove(i);
                        table.remove(n.state.id());
                    }
                    Event::Crash(i) if i < nodes.len() => {
                        nodes[i].crashed = true;
                        nodes[i].share = Share::Hold;
                    }
                    Event::Read(i) if i < nodes.len() && !nodes[i].crashed => {
                        let read: Vec<Member> = table
                            .iter()
                            .map(|(id, (e, s))| Member { id: id.clone(), expires_at_ms: *e, seen: *s })
                            .collect();
                        let n = &mut nodes[i];
                        n.share = n.state.on_read(&read, now);
                    }
                    Event::Renew(i, outcome) if i < nodes.len() && !nodes[i].crashed => {
                        let n = &mut nodes[i];
                        let seen = n.state.seen();
                        match outcome {
                            Outcome::Ok => {
                                table.insert(n.state.id().to_owned(), (n.state.expiry(now), seen));
                                n.state.renewed(now, seen);
                            }
                            // A time-out whose write landed anyway.
                            Outcome::LandedButTimedOut => {
                                table.insert(n.state.id().to_owned(), (n.state.expiry(now), seen));
                                n.state.renewal_unknown(seen);
                            }
                            Outcome::Failed => n.state.renewal_unknown(seen),
                        }
                        n.share = n.state.share_at(now);
                    }
                    Event::Tick => {
                        now += 1000;
                        for n in nodes.iter_mut().filter(|n| !n.crashed) {
                            n.share = n.state.share_at(now);
                        }
                    }
                    _ => {}
                }
                let total: f64 = nodes.iter().map(|n| n.share.fraction()).sum();
                let shares: Vec<Share> = nodes.iter().map(|n| n.share).collect();
                prop_assert!(total <= 1.0 + 1e-9, "shares {shares:?} add up to {total}");
            }
        }
    }
}
