//! Domain events, the groups they go to and their place in publish order.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::acknowledgement::{JobAssignmentAcknowledged, JobAssignmentUnacknowledged};
use crate::assignment::Assignment;
use crate::ids::{AssignmentId, AuditId, ContractorId, EventId, JobId};
use crate::job::{Job, JobStatus};
use crate::values::{Address, AssignmentSource, DurationMinutes, JobType, Region, Timestamp, Title, ValidationError};

/// The payload schema version clients can rely on.
pub const JOB_ASSIGNED_SCHEMA_VERSION: u32 = 1;

/// Upper bound on one serialized `JobAssigned` payload; the contract promises
/// clients less than 2 KiB, and the field limits in [`crate::values`] keep it.
pub const MAX_PAYLOAD_BYTES: usize = 2048;

/// An event's place in publish order: strictly increasing in the order events
/// are published, never reused, the same in the EventLog and in every copy sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sequence(pub i64);

impl fmt::Display for Sequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A real-time audience: `dispatch/{region}` or `contractor/{contractorId}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Group(String);

/// The two kinds of group, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupKind {
    /// Dispatchers watching a region.
    Dispatch(Region),
    /// One contractor's own feed.
    Contractor(ContractorId),
}

impl Group {
    /// The dispatchers of `region`.
    pub fn dispatch(region: &Region) -> Self {
        Self(format!("dispatch/{region}"))
    }
    /// The contractor `id`.
    pub fn contractor(id: ContractorId) -> Self {
        Self(format!("contractor/{id}"))
    }
    /// Parses a group name.
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        Self::kind_of(value).map(|_| Self(value.to_owned()))
    }
    fn kind_of(value: &str) -> Result<GroupKind, ValidationError> {
        if let Some(region) = value.strip_prefix("dispatch/") {
            return Region::new(region).map(GroupKind::Dispatch);
        }
        if let Some(id) = value.strip_prefix("contractor/") {
            return id.parse().map(GroupKind::Contractor);
        }
        Err(ValidationError::new("group", "must be dispatch/{region} or contractor/{contractorId}"))
    }
    /// Which kind of group this is.
    pub fn kind(&self) -> GroupKind {
        // A Group is only ever built from a valid name.
        Self::kind_of(&self.0).expect("a Group holds a valid name")
    }
    /// The group's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Group {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}
impl From<Group> for String {
    fn from(value: Group) -> String {
        value.0
    }
}
impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The kinds of event, as named in `eventType` and the payload's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// [`JobAssigned`].
    JobAssigned,
    /// [`JobAssignmentAcknowledged`].
    JobAssignmentAcknowledged,
    /// [`JobAssignmentUnacknowledged`].
    JobAssignmentUnacknowledged,
}

impl EventType {
    /// Every kind, for registering a handler of them all.
    pub const ALL: [Self; 3] = [Self::JobAssigned, Self::JobAssignmentAcknowledged, Self::JobAssignmentUnacknowledged];

    /// The name on the wire and in the EventLog.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::JobAssigned => "JobAssigned",
            Self::JobAssignmentAcknowledged => "JobAssignmentAcknowledged",
            Self::JobAssignmentUnacknowledged => "JobAssignmentUnacknowledged",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The job as it stands in a `JobAssigned` payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSnapshot {
    /// The job's id.
    pub id: JobId,
    /// The kind of work.
    pub job_type: JobType,
    /// The title (null when the job has none).
    pub title: Option<Title>,
    /// Where it is.
    pub region: Region,
    /// Always `Assigned` in a `JobAssigned`.
    pub status: JobStatus,
    /// How long it takes.
    pub duration_minutes: DurationMinutes,
    /// When the customer would like it to start (null when unset).
    pub desired_start_utc: Option<Timestamp>,
    /// Where it is (null when unset).
    pub address: Option<Address>,
}

/// A job was assigned to a contractor. Created with the assignment, in the
/// same transaction; its serialized form is the contract's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobAssigned {
    /// Always [`JOB_ASSIGNED_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Unique per event; clients de-duplicate by it.
    pub event_id: EventId,
    /// When the assignment was made.
    pub occurred_at_utc: Timestamp,
    /// The job.
    pub job_id: JobId,
    /// Who got it.
    pub contractor_id: ContractorId,
    /// The assignment.
    pub assignment_id: AssignmentId,
    /// Start of the work.
    pub start_utc: Timestamp,
    /// End of the work.
    pub end_utc: Timestamp,
    /// The job's region.
    pub region: Region,
    /// `manual` or `auto`.
    pub source: AssignmentSource,
    /// External audit record.
    pub audit_id: Option<AuditId>,
    /// The job after assignment.
    pub job: JobSnapshot,
}

impl JobAssigned {
    /// The event for `assignment` of `job` (the job already Assigned).
    pub fn new(job: &Job, assignment: &Assignment) -> Self {
        Self {
            schema_version: JOB_ASSIGNED_SCHEMA_VERSION,
            event_id: assignment.event_id(),
            occurred_at_utc: assignment.created_at_utc(),
            job_id: job.id(),
            contractor_id: assignment.contractor_id(),
            assignment_id: assignment.id(),
            start_utc: assignment.range().start(),
            end_utc: assignment.range().end(),
            region: job.region().clone(),
            source: assignment.source(),
            audit_id: assignment.audit_id(),
            job: JobSnapshot {
                id: job.id(),
                job_type: job.job_type().clone(),
                title: job.title().cloned(),
                region: job.region().clone(),
                status: job.status(),
                duration_minutes: job.duration_minutes(),
                desired_start_utc: job.desired_start_utc(),
                address: job.address().cloned(),
            },
        }
    }

    /// Who hears about it: the job region's dispatchers and the contractor.
    pub fn audience(&self) -> Vec<Group> {
        vec![Group::dispatch(&self.region), Group::contractor(self.contractor_id)]
    }
}

/// Every event the domain raises. Serialized with its `type` tag, which is
/// the payload's `type` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum DomainEvent {
    /// See [`JobAssigned`].
    JobAssigned(JobAssigned),
    /// See [`JobAssignmentAcknowledged`].
    JobAssignmentAcknowledged(JobAssignmentAcknowledged),
    /// See [`JobAssignmentUnacknowledged`].
    JobAssignmentUnacknowledged(JobAssignmentUnacknowledged),
}

impl DomainEvent {
    /// The event's id.
    pub fn event_id(&self) -> EventId {
        match self {
            Self::JobAssigned(e) => e.event_id,
            Self::JobAssignmentAcknowledged(e) => e.event_id,
            Self::JobAssignmentUnacknowledged(e) => e.event_id,
        }
    }
    /// The event's kind.
    pub fn event_type(&self) -> EventType {
        match self {
            Self::JobAssigned(_) => EventType::JobAssigned,
            Self::JobAssignmentAcknowledged(_) => EventType::JobAssignmentAcknowledged,
            Self::JobAssignmentUnacknowledged(_) => EventType::JobAssignmentUnacknowledged,
        }
    }
    /// When it happened.
    pub fn occurred_at_utc(&self) -> Timestamp {
        match self {
            Self::JobAssigned(e) => e.occurred_at_utc,
            Self::JobAssignmentAcknowledged(e) => e.occurred_at_utc,
            Self::JobAssignmentUnacknowledged(e) => e.occurred_at_utc,
        }
    }
    /// The id of the aggregate it concerns: the job.
    pub fn aggregate_id(&self) -> uuid::Uuid {
        match self {
            Self::JobAssigned(e) => e.job_id.as_uuid(),
            Self::JobAssignmentAcknowledged(e) => e.job_id.as_uuid(),
            Self::JobAssignmentUnacknowledged(e) => e.job_id.as_uuid(),
        }
    }
    /// The groups it is sent to.
    pub fn audience(&self) -> Vec<Group> {
        match self {
            Self::JobAssigned(e) => e.audience(),
            Self::JobAssignmentAcknowledged(e) => e.audience(),
            Self::JobAssignmentUnacknowledged(e) => e.audience(),
        }
    }
}

impl From<JobAssigned> for DomainEvent {
    fn from(value: JobAssigned) -> Self {
        Self::JobAssigned(value)
    }
}

impl From<JobAssignmentAcknowledged> for DomainEvent {
    fn from(value: JobAssignmentAcknowledged) -> Self {
        Self::JobAssignmentAcknowledged(value)
    }
}

impl From<JobAssignmentUnacknowledged> for DomainEvent {
    fn from(value: JobAssignmentUnacknowledged) -> Self {
        Self::JobAssignmentUnacknowledged(value)
    }
}

/// An event with its place in publish order: what handlers and clients get.
/// Serializes as the payload with `sequence` added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishedEvent {
    /// The event.
    #[serde(flatten)]
    pub event: DomainEvent,
    /// Its place in publish order.
    pub sequence: Sequence,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assignment::NewAssignment;
    use crate::contractor::Contractor;
    use crate::values::{PersonName, TimeRange};

    fn sample(title: &str) -> (Job, JobAssigned) {
        let now = Timestamp::parse_rfc3339("t", "2025-11-08T14:59:58.123Z").unwrap();
        let mut job = Job::create(
            JobType::new("Flooring").unwrap(),
            Some(Title::new(title).unwrap()),
            Region::new("north").unwrap(),
            DurationMinutes::new(120).unwrap(),
            None,
            None,
            now,
        );
        let contractor =
            Contractor::create(PersonName::new("Ana").unwrap(), Region::new("north").unwrap(), vec![], now).unwrap();
        let range = TimeRange::new(
            Timestamp::parse_rfc3339("s", "2025-11-08T15:00:00Z").unwrap(),
            Timestamp::parse_rfc3339("e", "2025-11-08T17:00:00Z").unwrap(),
        )
        .unwrap();
        let request =
            NewAssignment { contractor_id: contractor.id(), range, source: AssignmentSource::Manual, audit_id: None };
        let (_, event) = job.assign(&contractor, request, now).unwrap();
        (job, event)
    }

    #[test]
    fn assigning_a_job_marks_it_assigned_and_raises_job_assigned_for_both_groups() {
        let (job, event) = sample("Kitchen");
        assert_eq!(job.status(), JobStatus::Assigned);
        assert_eq!(event.job.status, JobStatus::Assigned);
        assert_eq!(event.job_id, job.id());
        let groups: Vec<String> = event.audience().into_iter().map(String::from).collect();
        assert_eq!(groups, vec!["dispatch/north".to_owned(), format!("contractor/{}", event.contractor_id)]);
    }

    #[test]
    fn assigning_an_assigned_job_is_refused() {
        let (mut job, _) = sample("Kitchen");
        let now = Timestamp::now();
        let contractor =
            Contractor::create(PersonName::new("Bo").unwrap(), Region::new("north").unwrap(), vec![], now).unwrap();
        let range = TimeRange::new(now, now.plus_millis(1000)).unwrap();
        let request =
            NewAssignment { contractor_id: contractor.id(), range, source: AssignmentSource::Auto, audit_id: None };
        assert!(matches!(job.assign(&contractor, request, now), Err(crate::job::AssignRefusal::AlreadyAssigned(_))));
    }

    #[test]
    fn published_payload_has_the_contract_shape() {
        let (_, event) = sample("Kitchen");
        let published = PublishedEvent { event: event.clone().into(), sequence: Sequence(42) };
        let json = serde_json::to_value(&published).unwrap();
        assert_eq!(json["type"], "JobAssigned");
        assert_eq!(json["schemaVersion"], 1);
        assert_eq!(json["sequence"], 42);
        assert_eq!(json["occurredAtUtc"], "2025-11-08T14:59:58.123Z");
        assert_eq!(json["startUtc"], "2025-11-08T15:00:00Z");
        assert_eq!(json["region"], "north");
        assert_eq!(json["source"], "manual");
        assert!(json["auditId"].is_null());
        assert_eq!(json["job"]["status"], "Assigned");
        assert_eq!(json["job"]["durationMinutes"], 120);
        assert_eq!(json["job"]["jobType"], "Flooring");
        assert!(json["job"]["desiredStartUtc"].is_null() && json["job"]["address"].is_null(), "null when unset");
        let back: PublishedEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, published);
    }

    #[test]
    fn the_largest_payload_stays_under_two_kibibytes() {
        // Worst case: the job's texts at their joint budget (4-byte characters,
        // and quotes that JSON escapes), every other field at its widest.
        let (_, event) = sample(&"😀".repeat(crate::values::MAX_TITLE_LEN));
        let mut event = event;
        event.region = Region::new(&"r".repeat(crate::values::MAX_REGION_LEN)).unwrap();
        event.job.region = event.region.clone();
        event.job.job_type = JobType::new(&"😀".repeat(crate::values::MAX_JOB_TYPE_LEN)).unwrap();
        let used = 4 * (crate::values::MAX_JOB_TYPE_LEN + crate::values::MAX_TITLE_LEN);
        let address = Address::new(&"\"".repeat((crate::job::MAX_JOB_TEXT_BYTES - used) / 2)).unwrap();
        crate::job::check_job_texts(&event.job.job_type, event.job.title.as_ref(), Some(&address))
            .expect("exactly at the budget");
        event.job.address = Some(address);
        event.job.desired_start_utc = Some(Timestamp::parse_rfc3339("t", "9999-12-31T23:59:59.999Z").unwrap());
        event.occurred_at_utc = Timestamp::parse_rfc3339("t", "9999-12-31T23:59:59.999Z").unwrap();
        event.audit_id = Some(AuditId::new());
        let published = PublishedEvent { event: event.into(), sequence: Sequence(i64::MAX) };
        let bytes = serde_json::to_vec(&published).unwrap().len();
        assert!(bytes < MAX_PAYLOAD_BYTES, "payload is {bytes} bytes");
    }

    #[test]
    fn a_job_whose_texts_would_not_fit_in_a_job_assigned_is_refused_on_its_address() {
        let job_type = JobType::new(&"😀".repeat(crate::values::MAX_JOB_TYPE_LEN)).unwrap();
        let title = Title::new(&"😀".repeat(crate::values::MAX_TITLE_LEN)).unwrap();
        let fits = Address::new(&"a".repeat(crate::job::MAX_JOB_TEXT_BYTES - 1056)).unwrap();
        assert!(crate::job::check_job_texts(&job_type, Some(&title), Some(&fits)).is_ok());
        let over = Address::new(&format!("{}\\", "a".repeat(crate::job::MAX_JOB_TEXT_BYTES - 1056 - 1))).unwrap();
        let refused = crate::job::check_job_texts(&job_type, Some(&title), Some(&over)).unwrap_err();
        assert_eq!(refused.field, "address");
        assert!(refused.message.contains("1201 bytes"), "{refused}");
        assert!(crate::job::check_job_texts(&job_type, Some(&title), None).is_ok(), "an address of none fits");
    }

    #[test]
    fn groups_parse_only_the_two_known_shapes() {
        assert!(Group::parse("dispatch/north").is_ok());
        let id = ContractorId::new();
        assert_eq!(Group::parse(&format!("contractor/{id}")).unwrap().kind(), GroupKind::Contractor(id));
        assert!(Group::parse("contractor/nope").is_err());
        assert!(Group::parse("admin/all").is_err());
        assert!(Group::parse("dispatch/a/b").is_err());
    }
}
