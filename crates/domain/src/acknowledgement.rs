//! Whether the assigned contractor has seen an assignment: the contractor
//! acknowledges the `JobAssigned` it handled, and dispatchers are told when
//! an assignment passes its deadline without one.

use serde::{Deserialize, Serialize};

use crate::assignment::Assignment;
use crate::events::{Group, JOB_ASSIGNED_SCHEMA_VERSION};
use crate::identity::{Principal, Role};
use crate::ids::{AssignmentId, ContractorId, EventId, JobId};
use crate::values::{Region, Timestamp};

/// An assignment's acknowledgement: when the contractor acknowledged it, and
/// by when it should have (no deadline: escalation was off when it was made).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Acknowledgement {
    /// The first acknowledgement's time.
    pub acknowledged_at_utc: Option<Timestamp>,
    /// When dispatchers are told that it has not come.
    pub deadline_utc: Option<Timestamp>,
}

/// Where an acknowledgement stands, as `GET /api/assignments/{id}` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AcknowledgementStatus {
    /// Not acknowledged, and the deadline (if any) is ahead.
    Pending,
    /// Acknowledged (before or after the deadline).
    Acknowledged,
    /// Not acknowledged, and the deadline has passed.
    Overdue,
}

impl Acknowledgement {
    /// Where it stands at `now`.
    pub fn status(&self, now: Timestamp) -> AcknowledgementStatus {
        match (self.acknowledged_at_utc, self.deadline_utc) {
            (Some(_), _) => AcknowledgementStatus::Acknowledged,
            (None, Some(deadline)) if deadline <= now => AcknowledgementStatus::Overdue,
            (None, _) => AcknowledgementStatus::Pending,
        }
    }
}

/// Why an acknowledgement was refused. Nothing is recorded or published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcknowledgeRefusal {
    /// Only the contractor the job was assigned to may acknowledge it.
    #[error("only the contractor it was assigned to may acknowledge this event")]
    NotTheAssignee,
}

/// What acknowledging does.
#[derive(Debug, Clone, PartialEq)]
pub enum Acknowledged {
    /// The first acknowledgement: record it, and publish this event.
    First(JobAssignmentAcknowledged),
    /// A repeat: it changes nothing; this is the first one's time.
    Already(Timestamp),
}

impl Assignment {
    /// The assigned contractor acknowledges its `JobAssigned` at `at`.
    ///
    /// # Errors
    /// [`AcknowledgeRefusal`] for anyone but the assigned contractor.
    pub fn acknowledge(&self, by: &Principal, at: Timestamp) -> Result<Acknowledged, AcknowledgeRefusal> {
        if by.role != Role::Contractor || by.contractor_id != Some(self.contractor_id()) {
            return Err(AcknowledgeRefusal::NotTheAssignee);
        }
        Ok(match self.acknowledgement().acknowledged_at_utc {
            Some(first) => Acknowledged::Already(first),
            None => Acknowledged::First(JobAssignmentAcknowledged::new(self, at)),
        })
    }

    /// The escalation due at `now`: its deadline has passed without an
    /// acknowledgement. (Whether it was already sent is the store's record.)
    pub fn escalation_due(&self, now: Timestamp) -> Option<JobAssignmentUnacknowledged> {
        let ack = self.acknowledgement();
        match (ack.acknowledged_at_utc, ack.deadline_utc) {
            (None, Some(deadline)) if deadline <= now => Some(JobAssignmentUnacknowledged::new(self, deadline, now)),
            _ => None,
        }
    }
}

/// The assigned contractor acknowledged a `JobAssigned` (the first time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobAssignmentAcknowledged {
    /// Always 1.
    pub schema_version: u32,
    /// This event's id.
    pub event_id: EventId,
    /// When it was acknowledged.
    pub occurred_at_utc: Timestamp,
    /// The assignment.
    pub assignment_id: AssignmentId,
    /// Its job.
    pub job_id: JobId,
    /// Who acknowledged it.
    pub contractor_id: ContractorId,
    /// The job's region.
    pub region: Region,
    /// The `JobAssigned` acknowledged.
    pub job_assigned_event_id: EventId,
    /// When it was acknowledged (the same as `occurredAtUtc`).
    pub acknowledged_at_utc: Timestamp,
}

impl JobAssignmentAcknowledged {
    fn new(assignment: &Assignment, at: Timestamp) -> Self {
        Self {
            schema_version: JOB_ASSIGNED_SCHEMA_VERSION,
            event_id: EventId::new(),
            occurred_at_utc: at,
            assignment_id: assignment.id(),
            job_id: assignment.job_id(),
            contractor_id: assignment.contractor_id(),
            region: assignment.region().clone(),
            job_assigned_event_id: assignment.event_id(),
            acknowledged_at_utc: at,
        }
    }

    /// Who hears about it: the region's dispatchers.
    pub fn audience(&self) -> Vec<Group> {
        vec![Group::dispatch(&self.region)]
    }
}

/// An assignment passed its deadline without an acknowledgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobAssignmentUnacknowledged {
    /// Always 1.
    pub schema_version: u32,
    /// This event's id.
    pub event_id: EventId,
    /// When the escalation was raised.
    pub occurred_at_utc: Timestamp,
    /// The assignment.
    pub assignment_id: AssignmentId,
    /// Its job.
    pub job_id: JobId,
    /// Who has not acknowledged it.
    pub contractor_id: ContractorId,
    /// The job's region.
    pub region: Region,
    /// The `JobAssigned` not acknowledged.
    pub job_assigned_event_id: EventId,
    /// The deadline that passed.
    pub deadline_utc: Timestamp,
}

impl JobAssignmentUnacknowledged {
    fn new(assignment: &Assignment, deadline: Timestamp, now: Timestamp) -> Self {
        Self {
            schema_version: JOB_ASSIGNED_SCHEMA_VERSION,
            event_id: EventId::new(),
            occurred_at_utc: now,
            assignment_id: assignment.id(),
            job_id: assignment.job_id(),
            contractor_id: assignment.contractor_id(),
            region: assignment.region().clone(),
            job_assigned_event_id: assignment.event_id(),
            deadline_utc: deadline,
        }
    }

    /// Who hears about it: the region's dispatchers.
    pub fn audience(&self) -> Vec<Group> {
        vec![Group::dispatch(&self.region)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assignment::NewAssignment;
    use crate::events::DomainEvent;
    use crate::values::{AssignmentSource, TimeRange};

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_unix_millis(1_800_000_000_000 + seconds * 1000)
    }

    /// An assignment made at 0 s with a deadline at 300 s.
    fn assignment() -> Assignment {
        let contractor_id = ContractorId::new();
        let request = NewAssignment {
            contractor_id,
            range: TimeRange::new(at(3600), at(7200)).unwrap(),
            source: AssignmentSource::Manual,
            audit_id: None,
        };
        Assignment::new(
            AssignmentId::new(),
            JobId::new(),
            contractor_id,
            request,
            Region::new("north").unwrap(),
            at(0),
            EventId::new(),
        )
        .with_acknowledgement(Acknowledgement { acknowledged_at_utc: None, deadline_utc: Some(at(300)) })
    }

    fn contractor(id: ContractorId) -> Principal {
        Principal { subject: "c".into(), role: Role::Contractor, regions: vec![], contractor_id: Some(id) }
    }

    #[test]
    fn status_is_pending_until_the_deadline_then_overdue_and_acknowledged_whenever_it_comes() {
        let pending = Acknowledgement { acknowledged_at_utc: None, deadline_utc: Some(at(300)) };
        assert_eq!(pending.status(at(299)), AcknowledgementStatus::Pending);
        assert_eq!(pending.status(at(300)), AcknowledgementStatus::Overdue);
        let late = Acknowledgement { acknowledged_at_utc: Some(at(400)), ..pending };
        assert_eq!(late.status(at(500)), AcknowledgementStatus::Acknowledged);
        let no_deadline = Acknowledgement::default();
        assert_eq!(no_deadline.status(at(1_000_000)), AcknowledgementStatus::Pending, "escalation off: never overdue");
    }

    #[test]
    fn only_the_assigned_contractor_acknowledges_and_a_repeat_keeps_the_first_time() {
        let assignment = assignment();
        let someone_else = contractor(ContractorId::new());
        assert_eq!(assignment.acknowledge(&someone_else, at(10)), Err(AcknowledgeRefusal::NotTheAssignee));
        let admin = Principal { subject: "a".into(), role: Role::Admin, regions: vec![], contractor_id: None };
        assert_eq!(assignment.acknowledge(&admin, at(10)), Err(AcknowledgeRefusal::NotTheAssignee));

        let me = contractor(assignment.contractor_id());
        let Ok(Acknowledged::First(event)) = assignment.acknowledge(&me, at(10)) else {
            panic!("a first acknowledgement")
        };
        assert_eq!(event.assignment_id, assignment.id());
        assert_eq!(event.job_assigned_event_id, assignment.event_id());
        assert_eq!(event.acknowledged_at_utc, at(10));
        assert_eq!(event.audience(), vec![Group::dispatch(assignment.region())], "dispatchers only");

        let acknowledged = assignment
            .with_acknowledgement(Acknowledgement { acknowledged_at_utc: Some(at(10)), deadline_utc: Some(at(300)) });
        assert_eq!(acknowledged.acknowledge(&me, at(20)), Ok(Acknowledged::Already(at(10))));
    }

    #[test]
    fn an_escalation_is_due_once_the_deadline_passes_without_an_acknowledgement() {
        let assignment = assignment();
        assert_eq!(assignment.escalation_due(at(299)), None);
        let due = assignment.escalation_due(at(301)).expect("due after the deadline");
        assert_eq!(due.deadline_utc, at(300));
        assert_eq!(due.occurred_at_utc, at(301));
        assert_eq!(due.audience(), vec![Group::dispatch(assignment.region())]);
        let acknowledged = assignment
            .with_acknowledgement(Acknowledgement { acknowledged_at_utc: Some(at(10)), deadline_utc: Some(at(300)) });
        assert_eq!(acknowledged.escalation_due(at(301)), None);
    }

    #[test]
    fn both_events_have_the_contract_shape() {
        let assignment = assignment();
        let me = contractor(assignment.contractor_id());
        let Ok(Acknowledged::First(acknowledged)) = assignment.acknowledge(&me, at(10)) else { panic!() };
        let json = serde_json::to_value(DomainEvent::from(acknowledged)).unwrap();
        let mut keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "acknowledgedAtUtc",
                "assignmentId",
                "contractorId",
                "eventId",
                "jobAssignedEventId",
                "jobId",
                "occurredAtUtc",
                "region",
                "schemaVersion",
                "type",
            ]
        );
        assert_eq!(json["type"], "JobAssignmentAcknowledged");
        assert_eq!(json["schemaVersion"], 1);

        let unacknowledged = assignment.escalation_due(at(301)).unwrap();
        let json = serde_json::to_value(DomainEvent::from(unacknowledged)).unwrap();
        assert_eq!(json["type"], "JobAssignmentUnacknowledged");
        assert!(json["deadlineUtc"].is_string() && json.get("acknowledgedAtUtc").is_none());
        let back: DomainEvent = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(back).unwrap(), json, "it reads back as it was written");
    }
}
