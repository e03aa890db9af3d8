//! The claim state machine of one member, pure (Horust's way): inputs are
//! what etcd and the supervisor said, outputs are the effects the agent
//! carries out. It decides nothing about time except when to try a failed
//! claim again; the fencing deadlines live in the supervisor.
//!
//! The rule that keeps a unit from running twice: a member runs a unit
//! only between winning its claim (a create-if-absent transaction bound to
//! the member's lease) and releasing it, and releases it only after its
//! worker has stopped. A moved unit is therefore stopped here before its
//! claim goes, and started there only after the claim is gone.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::placement::{Candidate, Placement};

/// How long a claim that failed on an error (not lost to another member)
/// waits before it is tried again.
pub const CLAIM_RETRY: Duration = Duration::from_secs(1);

/// What the agent must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Create the unit's claim key with this member's lease, if absent.
    Claim { unit: String },
    /// Delete the unit's claim key if it is still the one with this token.
    Release { unit: String, token: i64 },
    /// Tell the supervisor to start the unit's worker.
    Run { unit: String, token: i64 },
    /// Tell the supervisor to stop the unit's worker.
    Stop { unit: String },
    /// Tell the supervisor the drain is complete.
    Drained,
}

/// How a claim transaction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Created: this member holds the unit; the revision is the token.
    Won { token: i64 },
    /// The key existed: `member` holds it.
    Taken { member: String, token: i64 },
    /// etcd did not answer or refused; try again later.
    Failed,
}

/// A unit this member holds or is trying to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mine {
    Claiming,
    Running { token: i64 },
    Stopping { token: i64 },
}

/// A claim key as seen in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub member: String,
    pub token: i64,
}

pub struct Claims<P> {
    me: String,
    placement: P,
    has_lease: bool,
    draining: bool,
    drained_told: bool,
    members: Vec<Candidate>,
    wanted: BTreeSet<String>,
    holders: BTreeMap<String, Holder>,
    mine: BTreeMap<String, Mine>,
    retry_at: BTreeMap<String, Instant>,
}

impl<P: Placement> Claims<P> {
    pub fn new(me: impl Into<String>, placement: P) -> Self {
        Claims {
            me: me.into(),
            placement,
            has_lease: false,
            draining: false,
            drained_told: false,
            members: Vec::new(),
            wanted: BTreeSet::new(),
            holders: BTreeMap::new(),
            mine: BTreeMap::new(),
            retry_at: BTreeMap::new(),
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn holders(&self) -> &BTreeMap<String, Holder> {
        &self.holders
    }

    /// Where placement puts each unit this member's configuration has,
    /// over the live members that are not draining (None: no candidate).
    pub fn placements(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.wanted
            .iter()
            .map(|unit| (unit.as_str(), self.placement.owner(unit, &self.members).map(|m| m.name.as_str())))
    }

    /// Units whose worker runs here (or is told to), with their tokens.
    pub fn running(&self) -> impl Iterator<Item = (&str, i64)> {
        self.mine.iter().filter_map(|(unit, state)| match state {
            Mine::Running { token } => Some((unit.as_str(), *token)),
            _ => None,
        })
    }

    /// Whether the unit is being claimed, runs, or is stopping here.
    pub fn is_active(&self, unit: &str) -> bool {
        self.mine.contains_key(unit)
    }

    /// The earliest moment a failed claim should be tried again.
    pub fn next_retry(&self) -> Option<Instant> {
        self.retry_at.values().min().copied()
    }

    pub fn lease_granted(&mut self, now: Instant) -> Vec<Effect> {
        self.has_lease = true;
        self.retry_at.clear();
        self.reconcile(now)
    }

    /// The lease is gone: whatever runs here must stop (the supervisor's
    /// own deadline will have stopped it already if etcd went silent).
    /// The claims went with the lease, or will when it expires.
    pub fn lease_lost(&mut self, now: Instant) -> Vec<Effect> {
        self.has_lease = false;
        self.holders.retain(|_, h| h.member != self.me);
        self.reconcile(now)
    }

    /// The full picture after a (re)connection: every member and claim key.
    pub fn snapshot(
        &mut self,
        members: Vec<Candidate>,
        holders: BTreeMap<String, Holder>,
        now: Instant,
    ) -> Vec<Effect> {
        self.members = members;
        self.holders = holders;
        self.reconcile(now)
    }

    pub fn member_joined(&mut self, member: Candidate, now: Instant) -> Vec<Effect> {
        self.members.retain(|m| m.name != member.name);
        self.members.push(member);
        self.reconcile(now)
    }

    pub fn member_left(&mut self, name: &str, now: Instant) -> Vec<Effect> {
        self.members.retain(|m| m.name != name);
        self.reconcile(now)
    }

    pub fn claim_seen(&mut self, unit: &str, holder: Holder, _now: Instant) -> Vec<Effect> {
        self.holders.insert(unit.to_string(), holder);
        self.reconcile_one(unit)
    }

    pub fn claim_gone(&mut self, unit: &str, _now: Instant) -> Vec<Effect> {
        self.holders.remove(unit);
        // The key is gone: a claim waiting to be tried again goes now.
        self.retry_at.remove(unit);
        self.reconcile_one(unit)
    }

    pub fn claim_finished(&mut self, unit: &str, outcome: ClaimOutcome, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.mine.get(unit) != Some(&Mine::Claiming) {
            return effects;
        }
        match outcome {
            ClaimOutcome::Won { token } => {
                self.holders.insert(unit.to_string(), Holder { member: self.me.clone(), token });
                if self.should_run(unit) {
                    self.mine.insert(unit.to_string(), Mine::Running { token });
                    effects.push(Effect::Run { unit: unit.to_string(), token });
                } else {
                    // Placement moved on while the claim was in flight.
                    self.mine.remove(unit);
                    effects.push(Effect::Release { unit: unit.to_string(), token });
                }
            }
            ClaimOutcome::Taken { member, token } => {
                self.mine.remove(unit);
                // The transaction's answer and the watch's events arrive by
                // different paths: the watch may already have shown this
                // claim gone (its holder released it), and recording the
                // holder now would wait for a release that came already.
                // Only a holder the watch has shown is trusted; without
                // one, the unit is looked at again shortly.
                match self.holders.get(unit) {
                    Some(known) if known.token >= token => {}
                    Some(_) => {
                        self.holders.insert(unit.to_string(), Holder { member, token });
                    }
                    None => {
                        self.retry_at.insert(unit.to_string(), now + CLAIM_RETRY);
                    }
                }
            }
            ClaimOutcome::Failed => {
                self.mine.remove(unit);
                self.retry_at.insert(unit.to_string(), now + CLAIM_RETRY);
            }
        }
        effects.extend(self.reconcile_one(unit));
        effects
    }

    /// The supervisor's answer to `Stop`.
    pub fn stopped(&mut self, unit: &str, _now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        if let Some(Mine::Stopping { token } | Mine::Running { token }) = self.mine.get(unit).copied() {
            self.mine.remove(unit);
            if self.has_lease {
                effects.push(Effect::Release { unit: unit.to_string(), token });
            }
        }
        effects.extend(self.reconcile_one(unit));
        effects
    }

    pub fn units_wanted(&mut self, units: impl IntoIterator<Item = String>, now: Instant) -> Vec<Effect> {
        self.wanted = units.into_iter().collect();
        self.reconcile(now)
    }

    pub fn drain(&mut self, now: Instant) -> Vec<Effect> {
        self.draining = true;
        self.reconcile(now)
    }

    /// A drain is called off: this member is a candidate again.
    pub fn undrain(&mut self, now: Instant) -> Vec<Effect> {
        self.draining = false;
        self.drained_told = false;
        self.reconcile(now)
    }

    /// Time passed: failed claims whose wait is over are tried again.
    pub fn tick(&mut self, now: Instant) -> Vec<Effect> {
        let due: Vec<String> = self.retry_at.iter().filter(|(_, at)| **at <= now).map(|(u, _)| u.clone()).collect();
        let mut effects = Vec::new();
        for unit in due {
            self.retry_at.remove(&unit);
            effects.extend(self.reconcile_one(&unit));
        }
        effects
    }

    fn should_run(&self, unit: &str) -> bool {
        self.has_lease
            && !self.draining
            && self.wanted.contains(unit)
            && self.placement.owner(unit, &self.members).is_some_and(|m| m.name == self.me)
    }

    /// Every unit against what changed for all of them (the members, the
    /// lease, a drain, the unit list).
    fn reconcile(&mut self, _now: Instant) -> Vec<Effect> {
        let others = self.mine.keys().filter(|unit| !self.wanted.contains(*unit));
        let units: Vec<String> = self.wanted.iter().chain(others).cloned().collect();
        let mut effects = Vec::new();
        for unit in units {
            self.reconcile_unit(&unit, &mut effects);
        }
        self.drained(&mut effects);
        effects
    }

    /// One unit whose own state changed (its claim key, its claim's or its
    /// worker's outcome): nothing about the others did, so only it is
    /// looked at. A member taking over a thousand units sees a few events
    /// per unit; looking at every unit at each would cost their square.
    fn reconcile_one(&mut self, unit: &str) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.reconcile_unit(unit, &mut effects);
        self.drained(&mut effects);
        effects
    }

    fn reconcile_unit(&mut self, unit: &str, effects: &mut Vec<Effect>) {
        let current = self.mine.get(unit).copied();
        if current.is_none() && !self.wanted.contains(unit) {
            return;
        }
        match (current, self.should_run(unit)) {
            (None, true) if !self.holders.contains_key(unit) && !self.retry_at.contains_key(unit) => {
                self.mine.insert(unit.to_string(), Mine::Claiming);
                effects.push(Effect::Claim { unit: unit.to_string() });
            }
            (Some(Mine::Running { token }), false) => {
                self.mine.insert(unit.to_string(), Mine::Stopping { token });
                effects.push(Effect::Stop { unit: unit.to_string() });
            }
            _ => {}
        }
    }

    fn drained(&mut self, effects: &mut Vec<Effect>) {
        if self.draining && self.mine.is_empty() && !self.drained_told {
            self.drained_told = true;
            effects.push(Effect::Drained);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::placement::Rendezvous;
    use super::*;

    fn member(name: &str) -> Candidate {
        Candidate { name: name.into(), weight: 1.0 }
    }

    /// A unit that rendezvous gives to `owner` among `among`.
    fn unit_owned_by(owner: &str, among: &[&str]) -> String {
        let members: Vec<_> = among.iter().map(|n| member(n)).collect();
        (0..).map(|i| format!("job#{i}")).find(|u| Rendezvous.owner(u, &members).unwrap().name == owner).unwrap()
    }

    fn ready(me: &str, among: &[&str], units: &[String]) -> (Claims<Rendezvous>, Vec<Effect>, Instant) {
        let now = Instant::now();
        let mut claims = Claims::new(me, Rendezvous);
        claims.units_wanted(units.iter().cloned(), now);
        claims.snapshot(among.iter().map(|n| member(n)).collect(), BTreeMap::new(), now);
        let effects = claims.lease_granted(now);
        (claims, effects, now)
    }

    fn claim(unit: &str) -> Effect {
        Effect::Claim { unit: unit.into() }
    }

    #[test]
    fn nothing_is_claimed_without_a_lease() {
        let now = Instant::now();
        let mut claims = Claims::new("a", Rendezvous);
        let u = unit_owned_by("a", &["a"]);
        assert!(claims.units_wanted([u.clone()], now).is_empty());
        assert!(claims.snapshot(vec![member("a")], BTreeMap::new(), now).is_empty());
        assert_eq!(claims.lease_granted(now), vec![claim(&u)]);
    }

    #[test]
    fn a_member_claims_only_what_placement_gives_it() {
        let mine = unit_owned_by("a", &["a", "b"]);
        let theirs = unit_owned_by("b", &["a", "b"]);
        let (_, effects, _) = ready("a", &["a", "b"], &[mine.clone(), theirs]);
        assert_eq!(effects, vec![claim(&mine)]);
    }

    #[test]
    fn a_won_claim_runs_with_its_revision_as_token() {
        let u = unit_owned_by("a", &["a"]);
        let (mut claims, _, now) = ready("a", &["a"], std::slice::from_ref(&u));
        let effects = claims.claim_finished(&u, ClaimOutcome::Won { token: 17 }, now);
        assert_eq!(effects, vec![Effect::Run { unit: u.clone(), token: 17 }]);
        assert_eq!(claims.running().collect::<Vec<_>>(), vec![(u.as_str(), 17)]);
    }

    #[test]
    fn a_claim_held_elsewhere_waits_until_its_key_is_gone() {
        let u = unit_owned_by("a", &["a", "b"]);
        let (mut claims, _, now) = ready("a", &["a", "b"], std::slice::from_ref(&u));
        assert!(claims.claim_seen(&u, Holder { member: "b".into(), token: 5 }, now).is_empty());
        let effects = claims.claim_finished(&u, ClaimOutcome::Taken { member: "b".into(), token: 5 }, now);
        assert!(effects.is_empty(), "{effects:?}");
        assert!(claims.tick(now + CLAIM_RETRY).is_empty(), "the holder is known: nothing to retry");
        assert_eq!(claims.claim_gone(&u, now), vec![claim(&u)]);
        // The transaction answers before the watch shows the holder: the
        // holder's key, once seen, is waited on as before.
        let effects = claims.claim_finished(&u, ClaimOutcome::Taken { member: "b".into(), token: 9 }, now);
        assert!(effects.is_empty(), "{effects:?}");
        assert!(claims.claim_seen(&u, Holder { member: "b".into(), token: 9 }, now).is_empty());
        assert!(claims.tick(now + CLAIM_RETRY).is_empty());
        assert_eq!(claims.claim_gone(&u, now), vec![claim(&u)]);
    }

    #[test]
    fn a_claim_lost_to_a_holder_the_watch_already_showed_gone_is_claimed_again() {
        // b held the unit and released it; this member's transaction read
        // b's key, but the watch's delete arrived first.
        let u = unit_owned_by("a", &["a", "b"]);
        let (mut claims, effects, now) = ready("a", &["a", "b"], std::slice::from_ref(&u));
        assert_eq!(effects, vec![claim(&u)]);
        assert!(claims.claim_seen(&u, Holder { member: "b".into(), token: 5 }, now).is_empty());
        assert!(claims.claim_gone(&u, now).is_empty(), "the claim is in flight");
        let effects = claims.claim_finished(&u, ClaimOutcome::Taken { member: "b".into(), token: 5 }, now);
        assert!(effects.is_empty(), "{effects:?}");
        assert!(!claims.holders().contains_key(&u), "b's claim is gone: it is not recorded again");
        assert_eq!(claims.tick(now + CLAIM_RETRY), vec![claim(&u)]);
    }

    #[test]
    fn a_failed_claim_is_tried_again_after_the_retry_wait_only() {
        let u = unit_owned_by("a", &["a"]);
        let (mut claims, _, now) = ready("a", &["a"], std::slice::from_ref(&u));
        assert!(claims.claim_finished(&u, ClaimOutcome::Failed, now).is_empty());
        assert!(claims.tick(now + CLAIM_RETRY / 2).is_empty());
        assert_eq!(claims.tick(now + CLAIM_RETRY), vec![claim(&u)]);
    }

    #[test]
    fn a_unit_moved_away_is_stopped_before_its_claim_is_released() {
        // With a and b, the unit is a's; when c joins and wins it, a stops
        // the worker, and releases the claim only once it has stopped.
        let u = (0..)
            .map(|i| format!("job#{i}"))
            .find(|u| {
                Rendezvous.owner(u, &[member("a"), member("b")]).unwrap().name == "a"
                    && Rendezvous.owner(u, &[member("a"), member("b"), member("c")]).unwrap().name == "c"
            })
            .unwrap();
        let (mut claims, _, now) = ready("a", &["a", "b"], std::slice::from_ref(&u));
        claims.claim_finished(&u, ClaimOutcome::Won { token: 3 }, now);
        assert_eq!(claims.member_joined(member("c"), now), vec![Effect::Stop { unit: u.clone() }]);
        // Nothing more while the worker stops, whatever else happens.
        assert!(claims.member_joined(member("c"), now).is_empty());
        assert_eq!(claims.stopped(&u, now), vec![Effect::Release { unit: u.clone(), token: 3 }]);
        assert!(!claims.is_active(&u));
    }

    #[test]
    fn a_member_leaving_hands_its_units_to_the_survivors_once_the_claim_is_gone() {
        let u = (0..)
            .map(|i| format!("job#{i}"))
            .find(|u| {
                Rendezvous.owner(u, &[member("a"), member("b")]).unwrap().name == "b"
                    && Rendezvous.owner(u, &[member("a")]).unwrap().name == "a"
            })
            .unwrap();
        let (mut claims, effects, now) = ready("a", &["a", "b"], std::slice::from_ref(&u));
        assert!(effects.is_empty());
        claims.claim_seen(&u, Holder { member: "b".into(), token: 4 }, now);
        // b's member key goes first (lease expiry deletes both, in any order).
        assert!(claims.member_left("b", now).is_empty(), "claimed while b's key still exists");
        assert_eq!(claims.claim_gone(&u, now), vec![claim(&u)]);
    }

    #[test]
    fn losing_the_lease_stops_everything_and_releases_nothing() {
        let u = unit_owned_by("a", &["a"]);
        let (mut claims, _, now) = ready("a", &["a"], std::slice::from_ref(&u));
        claims.claim_finished(&u, ClaimOutcome::Won { token: 9 }, now);
        assert_eq!(claims.lease_lost(now), vec![Effect::Stop { unit: u.clone() }]);
        assert!(claims.stopped(&u, now).is_empty(), "released with no lease");
        // A new lease claims it again (the old claim went with the old lease).
        assert_eq!(claims.lease_granted(now), vec![claim(&u)]);
    }

    #[test]
    fn a_claim_won_after_placement_moved_on_is_released_at_once() {
        let u = (0..)
            .map(|i| format!("job#{i}"))
            .find(|u| {
                Rendezvous.owner(u, &[member("a")]).unwrap().name == "a"
                    && Rendezvous.owner(u, &[member("a"), member("b")]).unwrap().name == "b"
            })
            .unwrap();
        let (mut claims, _, now) = ready("a", &["a"], std::slice::from_ref(&u));
        assert!(claims.member_joined(member("b"), now).is_empty());
        assert_eq!(
            claims.claim_finished(&u, ClaimOutcome::Won { token: 2 }, now),
            vec![Effect::Release { unit: u.clone(), token: 2 }]
        );
    }

    #[test]
    fn a_unit_dropped_from_the_configuration_is_stopped() {
        let u = unit_owned_by("a", &["a"]);
        let (mut claims, _, now) = ready("a", &["a"], std::slice::from_ref(&u));
        claims.claim_finished(&u, ClaimOutcome::Won { token: 9 }, now);
        assert_eq!(claims.units_wanted(Vec::new(), now), vec![Effect::Stop { unit: u.clone() }]);
        assert_eq!(claims.stopped(&u, now), vec![Effect::Release { unit: u, token: 9 }]);
    }

    #[test]
    fn a_drain_stops_every_unit_then_says_drained_once() {
        let u1 = unit_owned_by("a", &["a"]);
        let u2 = format!("{u1}-2");
        let (mut claims, _, now) = ready("a", &["a"], &[u1.clone(), u2.clone()]);
        claims.claim_finished(&u1, ClaimOutcome::Won { token: 1 }, now);
        claims.claim_finished(&u2, ClaimOutcome::Won { token: 2 }, now);
        let effects = claims.drain(now);
        assert_eq!(effects, vec![Effect::Stop { unit: u1.clone() }, Effect::Stop { unit: u2.clone() }]);
        assert_eq!(claims.stopped(&u1, now), vec![Effect::Release { unit: u1, token: 1 }]);
        assert_eq!(claims.stopped(&u2, now), vec![Effect::Release { unit: u2, token: 2 }, Effect::Drained]);
        assert!(claims.tick(now).is_empty());
    }

    #[test]
    fn an_undrained_member_claims_its_share_again_and_a_second_drain_says_drained_again() {
        let u = unit_owned_by("a", &["a"]);
        let (mut claims, _, now) = ready("a", &["a"], std::slice::from_ref(&u));
        claims.claim_finished(&u, ClaimOutcome::Won { token: 1 }, now);
        claims.drain(now);
        claims.stopped(&u, now);
        // The release's delete comes back through the watch.
        assert!(claims.claim_gone(&u, now).is_empty(), "claimed while draining");
        assert_eq!(claims.undrain(now), vec![claim(&u)]);
        claims.claim_finished(&u, ClaimOutcome::Won { token: 5 }, now);
        assert_eq!(claims.drain(now), vec![Effect::Stop { unit: u.clone() }]);
        assert_eq!(claims.stopped(&u, now), vec![Effect::Release { unit: u, token: 5 }, Effect::Drained]);
    }

    #[test]
    fn a_drain_with_a_claim_in_flight_waits_for_it() {
        let u = unit_owned_by("a", &["a"]);
        let (mut claims, _, now) = ready("a", &["a"], std::slice::from_ref(&u));
        assert!(claims.drain(now).is_empty());
        assert_eq!(
            claims.claim_finished(&u, ClaimOutcome::Won { token: 4 }, now),
            vec![Effect::Release { unit: u, token: 4 }, Effect::Drained]
        );
    }

    /// One input of the state machine, for the property below.
    #[derive(Debug, Clone)]
    enum Input {
        Seen { unit: usize, by_me: bool, token: i64 },
        Gone { unit: usize },
        Finished { unit: usize, outcome: u8, token: i64 },
        Stopped { unit: usize },
        Joined { member: usize },
        Left { member: usize },
        Later,
    }

    fn any_input() -> impl proptest::strategy::Strategy<Value = Input> {
        use proptest::prelude::*;
        prop_oneof![
            (0..12usize, any::<bool>(), 1..100i64).prop_map(|(unit, by_me, token)| Input::Seen { unit, by_me, token }),
            (0..12usize).prop_map(|unit| Input::Gone { unit }),
            (0..12usize, 0..3u8, 1..100i64).prop_map(|(unit, outcome, token)| Input::Finished { unit, outcome, token }),
            (0..12usize).prop_map(|unit| Input::Stopped { unit }),
            (0..3usize).prop_map(|member| Input::Joined { member }),
            (0..3usize).prop_map(|member| Input::Left { member }),
            Just(Input::Later),
        ]
    }

    proptest::proptest! {
        /// Events about one unit look at that unit only; whatever they
        /// were, a look at every unit afterwards finds nothing left to do.
        #[test]
        fn looking_at_one_unit_per_event_misses_nothing_a_look_at_all_would_do(
            inputs in proptest::collection::vec(any_input(), 1..60),
        ) {
            let names = ["a", "b", "c"];
            let units: Vec<String> = (0..12).map(|i| format!("job#{i}")).collect();
            let (mut claims, _, mut now) = ready("a", &["a", "b"], &units);
            for input in inputs {
                match input {
                    Input::Seen { unit, by_me, token } => {
                        let member = if by_me { "a" } else { "b" };
                        claims.claim_seen(&units[unit], Holder { member: member.into(), token }, now);
                    }
                    Input::Gone { unit } => {
                        claims.claim_gone(&units[unit], now);
                    }
                    Input::Finished { unit, outcome, token } => {
                        let outcome = match outcome {
                            0 => ClaimOutcome::Won { token },
                            1 => ClaimOutcome::Taken { member: "b".into(), token },
                            _ => ClaimOutcome::Failed,
                        };
                        claims.claim_finished(&units[unit], outcome, now);
                    }
                    Input::Stopped { unit } => {
                        claims.stopped(&units[unit], now);
                    }
                    Input::Joined { member } => {
                        claims.member_joined(Candidate { name: names[member].into(), weight: 1.0 }, now);
                    }
                    Input::Left { member } => {
                        claims.member_left(names[member], now);
                    }
                    Input::Later => {
                        now += CLAIM_RETRY;
                        claims.tick(now);
                    }
                }
                let full = claims.reconcile(now);
                proptest::prop_assert!(full.is_empty(), "left undone: {full:?}");
            }
        }
    }
}
