//! Assignments: a job given to a contractor for a time range.

use serde::Serialize;

use crate::acknowledgement::Acknowledgement;
use crate::ids::{AssignmentId, AuditId, ContractorId, EventId, JobId};
use crate::values::{AssignmentSource, Region, TimeRange, Timestamp};

/// What a caller asks for when assigning a job (already validated).
#[derive(Debug, Clone, PartialEq)]
pub struct NewAssignment {
    /// Who gets the job.
    pub contractor_id: ContractorId,
    /// When the contractor works on it.
    pub range: TimeRange,
    /// A person or the matching engine.
    pub source: AssignmentSource,
    /// An external audit record, if any.
    pub audit_id: Option<AuditId>,
}

/// A job assigned to a contractor. Serializes as the contract's Assignment.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    id: AssignmentId,
    job_id: JobId,
    contractor_id: ContractorId,
    range: TimeRange,
    source: AssignmentSource,
    audit_id: Option<AuditId>,
    region: Region,
    created_at_utc: Timestamp,
    event_id: EventId,
    acknowledgement: Acknowledgement,
}

impl Assignment {
    /// Builds (or rebuilds from storage) an assignment.
    pub fn new(
        id: AssignmentId,
        job_id: JobId,
        contractor_id: ContractorId,
        request: NewAssignment,
        region: Region,
        created_at_utc: Timestamp,
        event_id: EventId,
    ) -> Self {
        debug_assert_eq!(request.contractor_id, contractor_id);
        Self {
            id,
            job_id,
            contractor_id,
            range: request.range,
            source: request.source,
            audit_id: request.audit_id,
            region,
            created_at_utc,
            event_id,
            acknowledgement: Acknowledgement::default(),
        }
    }

    /// The same assignment with `acknowledgement` (its deadline when made,
    /// or its stored state).
    #[must_use]
    pub fn with_acknowledgement(mut self, acknowledgement: Acknowledgement) -> Self {
        self.acknowledgement = acknowledgement;
        self
    }

    /// The assignment's id.
    pub fn id(&self) -> AssignmentId {
        self.id
    }
    /// The job assigned.
    pub fn job_id(&self) -> JobId {
        self.job_id
    }
    /// Who got it.
    pub fn contractor_id(&self) -> ContractorId {
        self.contractor_id
    }
    /// When.
    pub fn range(&self) -> TimeRange {
        self.range
    }
    /// Who chose.
    pub fn source(&self) -> AssignmentSource {
        self.source
    }
    /// External audit record.
    pub fn audit_id(&self) -> Option<AuditId> {
        self.audit_id
    }
    /// The job's region.
    pub fn region(&self) -> &Region {
        &self.region
    }
    /// When it was made.
    pub fn created_at_utc(&self) -> Timestamp {
        self.created_at_utc
    }
    /// The `JobAssigned` event it caused.
    pub fn event_id(&self) -> EventId {
        self.event_id
    }
    /// Whether (and by when) the contractor acknowledged it.
    pub fn acknowledgement(&self) -> Acknowledgement {
        self.acknowledgement
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AssignmentWire<'a> {
    assignment_id: AssignmentId,
    job_id: JobId,
    contractor_id: ContractorId,
    start_utc: Timestamp,
    end_utc: Timestamp,
    source: AssignmentSource,
    audit_id: Option<AuditId>,
    region: &'a Region,
    created_at_utc: Timestamp,
    event_id: EventId,
}

impl Serialize for Assignment {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        AssignmentWire {
            assignment_id: self.id,
            job_id: self.job_id,
            contractor_id: self.contractor_id,
            start_utc: self.range.start(),
            end_utc: self.range.end(),
            source: self.source,
            audit_id: self.audit_id,
            region: &self.region,
            created_at_utc: self.created_at_utc,
            event_id: self.event_id,
        }
        .serialize(serializer)
    }
}
