//! The JobsHub: the hub's behaviour, whatever transport or protocol carries
//! a connection. Its methods (`JoinDispatchGroup`, `JoinContractorGroup`
//! and their `Leave` pairs), who may call them (the domain's
//! `Principal::may_join`), each connection's membership, and the replay of
//! what a joining connection missed (`afterSequence`), read from the
//! EventLog. The groups themselves are kept by the hub task
//! ([`crate::hub`]); the connection loop ([`crate::connection`]) only
//! carries calls here and sends what comes back.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde_json::{json, Value};
use smartscheduler_application::tailer::FollowedPosition;
use smartscheduler_application::{AcknowledgeAssignment, AcknowledgeError};
use smartscheduler_domain::ports::EventLog;
use smartscheduler_domain::{
    Chain, ContractorId, EventId, Group, Principal, PublishedEvent, Region, Sequence, ValidationError,
};

use crate::hub::{ConnKey, Frame, HubHandle, HubStopped};

/// A refused or failed hub call: the text the client's `invoke` rejects with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CallError(pub String);

/// What a call did: its answer, and the events a join replays (to be sent
/// before the answer, in order).
pub(crate) struct Called {
    pub result: Result<Value, CallError>,
    pub replay: Vec<PublishedEvent>,
}

impl Called {
    fn answer(result: Result<Value, CallError>) -> Self {
        Self { result, replay: Vec::new() }
    }
}

/// The hub's methods, authorization and replay, shared by every connection.
#[derive(Clone)]
pub struct JobsHub {
    /// The hub task, which keeps the groups.
    groups: HubHandle,
    /// For replays.
    event_log: Arc<dyn EventLog>,
    /// With several nodes: a replay stops where this node's follower is; it
    /// brings the rest live.
    followed: Option<Arc<FollowedPosition>>,
    /// Most events one join replays.
    max_replay: u32,
    /// Groups one connection may be in.
    max_groups: usize,
    /// Behind `AcknowledgeEvent`; `None`: the method is refused.
    acknowledge: Option<AcknowledgeAssignment>,
}

/// What this connection has joined, and what it must not receive twice.
#[derive(Default)]
pub(crate) struct Membership {
    groups: HashSet<Group>,
    /// Per group: live events at or below this were already covered by a replay.
    floors: HashMap<Group, i64>,
    /// Sequences sent by replays, skipped when they arrive live.
    replayed: BTreeSet<i64>,
    /// Whether the connection ever left a group (or had a join undone):
    /// frames queued before the hub heard of it may still be on their way.
    has_left: bool,
}

impl Membership {
    /// Takes `group` out: its frames still queued are not wanted.
    pub(crate) fn remove(&mut self, group: &Group) {
        self.groups.remove(group);
        self.floors.remove(group);
        self.has_left = true;
    }

    pub(crate) fn wants(&mut self, frame: &Frame) -> bool {
        // The hub queues a frame only to members of its groups. A connection
        // that has left none and applies no replay floor wants it all.
        if !self.has_left && self.floors.is_empty() && self.replayed.is_empty() {
            return true;
        }
        // A message that is not an event has no place in the sequence.
        if !frame.sequenced {
            return frame.groups.iter().any(|g| self.groups.contains(g));
        }
        // Forget replayed sequences that live delivery has passed.
        while let Some(&first) = self.replayed.first() {
            if first < frame.sequence {
                self.replayed.pop_first();
            } else {
                break;
            }
        }
        if self.replayed.remove(&frame.sequence) {
            return false;
        }
        frame
            .groups
            .iter()
            .any(|g| self.groups.contains(g) && frame.sequence > self.floors.get(g).copied().unwrap_or(i64::MIN))
    }
}

impl JobsHub {
    /// The hub's behaviour over `groups`, replaying from `event_log`.
    pub fn new(groups: HubHandle, event_log: Arc<dyn EventLog>, max_replay: u32, max_groups: usize) -> Self {
        Self { groups, event_log, followed: None, max_replay, max_groups, acknowledge: None }
    }

    /// Replays stop where this node's follower is (several nodes).
    #[must_use]
    pub fn bounded_by(mut self, followed: Arc<FollowedPosition>) -> Self {
        self.followed = Some(followed);
        self
    }

    /// Serves `AcknowledgeEvent` with `acknowledge`.
    #[must_use]
    pub fn with_acknowledgements(mut self, acknowledge: AcknowledgeAssignment) -> Self {
        self.acknowledge = Some(acknowledge);
        self
    }

    /// Runs the hub method `target` for the connection `key` of
    /// `principal`, whose membership is `membership`.
    ///
    /// # Errors
    /// [`HubStopped`]: the connection should close.
    pub(crate) async fn call(
        &self,
        key: ConnKey,
        principal: &Principal,
        membership: &mut Membership,
        target: &str,
        args: &[Value],
    ) -> Result<Called, HubStopped> {
        let method = target.to_ascii_lowercase();
        if method == "acknowledgeevent" {
            return Ok(Called::answer(self.acknowledge(principal, target, args).await));
        }
        let parsed = match method.as_str() {
            "joindispatchgroup" | "leavedispatchgroup" => region_group(target, args),
            "joincontractorgroup" | "leavecontractorgroup" => contractor_group(target, args),
            _ => return Ok(Called::answer(Err(CallError(format!("Unknown hub method '{target}'"))))),
        };
        let (group, after) = match parsed {
            Ok(parsed) => parsed,
            Err(err) => return Ok(Called::answer(Err(err))),
        };
        if method.starts_with("leave") {
            return Ok(Called::answer(self.leave(key, membership, group).await));
        }
        self.join(key, principal, membership, target, group, after).await
    }

    /// Takes back a join that just happened, unless the connection was
    /// already a member before it.
    async fn undo_join(&self, key: ConnKey, membership: &mut Membership, was_member: bool, group: Group) {
        if !was_member {
            membership.remove(&group);
            let _ = self.groups.leave(key, group).await;
        }
    }

    async fn leave(&self, key: ConnKey, membership: &mut Membership, group: Group) -> Result<Value, CallError> {
        membership.remove(&group);
        self.groups.leave(key, group.clone()).await.map_err(|_| CallError("The hub is stopping.".into()))?;
        Ok(json!({ "group": group }))
    }

    async fn join(
        &self,
        key: ConnKey,
        principal: &Principal,
        membership: &mut Membership,
        target: &str,
        group: Group,
        after: Option<i64>,
    ) -> Result<Called, HubStopped> {
        let refuse = |message: &str| Ok(Called::answer(Err(refused(target, message))));
        if !principal.may_join(&group) {
            tracing::info!(subject = %principal.subject, %group, "join refused");
            return refuse(&format!("You are not allowed to join '{group}'."));
        }
        if !membership.groups.contains(&group) && membership.groups.len() >= self.max_groups {
            return refuse(&format!("A connection may join at most {} groups.", self.max_groups));
        }
        // A refused replay must not undo a membership the connection had.
        let was_member = membership.groups.contains(&group);
        // Join first, so live events queue up while the replay is read: no gap.
        if !self.groups.join(key, group.clone()).await? {
            return Err(HubStopped);
        }
        membership.groups.insert(group.clone());
        let Some(after) = after else {
            membership.floors.remove(&group);
            return Ok(Called::answer(Ok(json!({ "group": group, "replayed": 0 }))));
        };
        match self.event_log.purged_through().await {
            Ok(purged) if after < purged.0 => {
                self.undo_join(key, membership, was_member, group).await;
                return refuse(
                    "This position is older than the events kept for replay; reload the state over HTTP and join without afterSequence.",
                );
            }
            _ => {}
        }
        let limit = self.max_replay;
        // Read after the join: what this node's follower hands over later
        // reaches this connection live, so the replay stops where it is.
        let bound = self.followed.as_ref().map_or(i64::MAX, |followed| followed.replay_bound());
        let missed = match self.event_log.replay(group.clone(), Sequence(after), limit + 1).await {
            Ok(mut missed) => {
                missed.retain(|(_, sequence)| sequence.0 <= bound);
                missed
            }
            Err(err) => {
                tracing::warn!(error = %Chain(&err), %group, "replay failed");
                self.undo_join(key, membership, was_member, group).await;
                return refuse("The missed events could not be read; try again.");
            }
        };
        if missed.len() > limit as usize {
            self.undo_join(key, membership, was_member, group).await;
            return refuse(&format!(
                "More than {limit} events were missed; reload the state over HTTP and join without afterSequence."
            ));
        }
        let replayed = missed.len();
        metrics::counter!("smartscheduler_hub_replayed_events_total").increment(replayed as u64);
        let mut floor = after;
        let mut replay = Vec::with_capacity(replayed);
        for (event, sequence) in missed {
            floor = floor.max(sequence.0);
            membership.replayed.insert(sequence.0);
            replay.push(PublishedEvent { event, sequence });
        }
        membership.floors.insert(group.clone(), floor);
        Ok(Called { result: Ok(json!({ "group": group, "replayed": replayed })), replay })
    }
}

impl JobsHub {
    /// `AcknowledgeEvent(eventId)`: the assigned contractor has handled a `JobAssigned`.
    async fn acknowledge(&self, principal: &Principal, target: &str, args: &[Value]) -> Result<Value, CallError> {
        check_arity(target, args, 1)?;
        let Some(acknowledge) = &self.acknowledge else {
            return Err(refused(target, "Acknowledgements are not served here."));
        };
        let event_id = args[0].as_str().ok_or_else(|| refused(target, "eventId must be a string."))?;
        let event_id: EventId = event_id.parse().map_err(|e: ValidationError| refused(target, &e.to_string()))?;
        match acknowledge.execute(principal, event_id).await {
            Ok(done) => Ok(json!({ "eventId": done.event_id, "acknowledgedAtUtc": done.acknowledged_at_utc })),
            Err(AcknowledgeError::NotFound(_)) => {
                Err(refused(target, &format!("No JobAssigned event has the id {event_id}.")))
            }
            Err(AcknowledgeError::Refused(_)) => {
                tracing::info!(subject = %principal.subject, %event_id, "acknowledgement refused");
                Err(refused(target, "Only the contractor the job was assigned to may acknowledge it."))
            }
            Err(err @ AcknowledgeError::Store(_)) => {
                tracing::warn!(error = %Chain(&err), %event_id, "acknowledgement failed");
                Err(refused(target, "The acknowledgement could not be recorded; try again."))
            }
        }
    }
}

/// ASP.NET's form for a method that refused: the client's `invoke` rejects
/// with this text.
fn refused(target: &str, message: &str) -> CallError {
    CallError(format!("An unexpected error occurred invoking '{target}' on the server. HubException: {message}"))
}

fn after_sequence(target: &str, args: &[Value]) -> Result<Option<i64>, CallError> {
    match args.get(1) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if n >= 0 => Ok(Some(n)),
            _ => Err(refused(target, "afterSequence must be a whole number, 0 or more.")),
        },
    }
}

fn check_arity(target: &str, args: &[Value], max: usize) -> Result<(), CallError> {
    if args.is_empty() || args.len() > max {
        return Err(refused(
            target,
            &format!(
                "Expected {} argument(s), got {}.",
                if max == 1 { "1".into() } else { format!("1 to {max}") },
                args.len()
            ),
        ));
    }
    Ok(())
}

fn region_group(target: &str, args: &[Value]) -> Result<(Group, Option<i64>), CallError> {
    let leave = target.to_ascii_lowercase().starts_with("leave");
    check_arity(target, args, if leave { 1 } else { 2 })?;
    let region = args[0].as_str().ok_or_else(|| refused(target, "region must be a string."))?;
    let region = Region::new(region).map_err(|e| refused(target, &e.to_string()))?;
    Ok((Group::dispatch(&region), if leave { None } else { after_sequence(target, args)? }))
}

fn contractor_group(target: &str, args: &[Value]) -> Result<(Group, Option<i64>), CallError> {
    let leave = target.to_ascii_lowercase().starts_with("leave");
    check_arity(target, args, if leave { 1 } else { 2 })?;
    let id = args[0].as_str().ok_or_else(|| refused(target, "contractorId must be a string."))?;
    let id: ContractorId =
        id.parse().map_err(|e: smartscheduler_domain::ValidationError| refused(target, &e.to_string()))?;
    Ok((Group::contractor(id), if leave { None } else { after_sequence(target, args)? }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Encoded;

    fn frame(sequence: i64, groups: &[&Group]) -> Frame {
        let groups: Vec<Group> = groups.iter().map(|g| (*g).clone()).collect();
        Frame::new(bytestring::ByteString::from_static("x\u{1e}"), sequence, groups.into())
    }

    fn member_of(groups: &[&Group]) -> Membership {
        Membership { groups: groups.iter().map(|g| (*g).clone()).collect(), ..Membership::default() }
    }

    #[test]
    fn a_member_that_never_left_wants_every_frame_queued_to_it() {
        let north = Group::dispatch(&smartscheduler_domain::Region::new("north").unwrap());
        let mut membership = member_of(&[&north]);
        assert!(membership.wants(&frame(1, &[&north])));
        assert!(membership.wants(&frame(2, &[&north])));
    }

    #[test]
    fn frames_of_a_group_left_are_not_wanted_and_the_others_still_are() {
        let north = Group::dispatch(&smartscheduler_domain::Region::new("north").unwrap());
        let south = Group::dispatch(&smartscheduler_domain::Region::new("south").unwrap());
        let mut membership = member_of(&[&north, &south]);
        membership.remove(&north);
        assert!(!membership.wants(&frame(1, &[&north])), "queued before the leave reached the hub");
        assert!(membership.wants(&frame(2, &[&south])));
        assert!(membership.wants(&frame(3, &[&north, &south])), "still a member of one of its groups");
        // Joined again: wanted again.
        membership.groups.insert(north.clone());
        assert!(membership.wants(&frame(4, &[&north])));
    }

    #[test]
    fn a_replay_floor_and_replayed_sequences_are_not_sent_twice() {
        let north = Group::dispatch(&smartscheduler_domain::Region::new("north").unwrap());
        let mut membership = member_of(&[&north]);
        membership.floors.insert(north.clone(), 10);
        membership.replayed.extend([9, 10]);
        assert!(!membership.wants(&frame(9, &[&north])), "replayed");
        assert!(!membership.wants(&frame(10, &[&north])), "replayed");
        assert!(membership.wants(&frame(11, &[&north])), "after the floor");
        assert!(membership.replayed.is_empty(), "replayed sequences passed by live delivery are forgotten");
    }

    #[test]
    fn a_message_that_is_not_an_event_reaches_members_past_any_floor_and_leaves_replay_bookkeeping_alone() {
        let north = Group::dispatch(&smartscheduler_domain::Region::new("north").unwrap());
        let south = Group::dispatch(&smartscheduler_domain::Region::new("south").unwrap());
        let mut membership = member_of(&[&north]);
        membership.floors.insert(north.clone(), 10);
        membership.replayed.extend([9, 10]);
        let message =
            |group: &Group| Frame::message("PresenceChanged", &json!({ "online": true }), vec![group.clone()].into());
        assert!(membership.wants(&message(&north)), "a member gets it whatever its floor");
        assert!(!membership.wants(&message(&south)), "not a member: not wanted");
        assert_eq!(membership.replayed.len(), 2, "replayed sequences are kept for the live events");
        assert!(!membership.wants(&frame(10, &[&north])), "still not sent twice");
        let json = message(&north).encoded(crate::protocol::Codec::Json);
        let binary = message(&north).encoded(crate::protocol::Codec::MessagePack);
        assert!(matches!(json, Encoded::Text(text) if text.contains("PresenceChanged")));
        assert!(
            matches!(binary, Encoded::Binary(bytes) if bytes.first() != Some(&b'{')),
            "MessagePack, not JSON bytes"
        );
    }
}
