//! Reading rows into domain values, written once for both databases: a row
//! only has to answer [`Columns`].

use super::Columns;
use crate::errors::corrupt;
use smartscheduler_domain::ports::{EventLogEntry, EventStatus, LoggedPayload, StoreError};
use smartscheduler_domain::values::Address;
use smartscheduler_domain::{
    Acknowledgement, Assignment, AssignmentId, AssignmentSource, AuditId, Contractor, ContractorId, DomainEvent,
    DurationMinutes, EventId, Group, Job, JobId, JobStatus, JobType, NewAssignment, PersonName, Region, Sequence,
    Skill, TimeRange, Timestamp, Title,
};

fn timestamp(row: &impl Columns, column: &str) -> Result<Timestamp, StoreError> {
    row.int(column).map(Timestamp::from_unix_millis)
}

fn region(row: &impl Columns) -> Result<Region, StoreError> {
    Region::new(row.text("region")?).map_err(corrupt)
}

/// A `contractors` row.
pub(crate) fn contractor(row: &impl Columns) -> Result<Contractor, StoreError> {
    let skills: Vec<String> = row.json("skills")?;
    Ok(Contractor::restore(
        ContractorId::from_uuid(row.uuid("id")?),
        PersonName::new(row.text("name")?).map_err(corrupt)?,
        region(row)?,
        skills.iter().map(|s| Skill::new(s)).collect::<Result<_, _>>().map_err(corrupt)?,
        timestamp(row, "created_at")?,
    ))
}

/// A `jobs` row.
pub(crate) fn job(row: &impl Columns) -> Result<Job, StoreError> {
    Ok(Job::restore(
        JobId::from_uuid(row.uuid("id")?),
        JobType::new(row.text("job_type")?).map_err(corrupt)?,
        row.optional_text("title")?.map(Title::new).transpose().map_err(corrupt)?,
        region(row)?,
        DurationMinutes::new(row.int("duration_minutes")?).map_err(corrupt)?,
        row.optional_int("desired_start")?.map(Timestamp::from_unix_millis),
        row.optional_text("address")?.map(Address::new).transpose().map_err(corrupt)?,
        JobStatus::parse(row.text("status")?).map_err(corrupt)?,
        timestamp(row, "created_at")?,
    ))
}

/// An `assignments` row.
pub(crate) fn assignment(row: &impl Columns) -> Result<Assignment, StoreError> {
    let contractor_id = ContractorId::from_uuid(row.uuid("contractor_id")?);
    let request = NewAssignment {
        contractor_id,
        range: TimeRange::new(timestamp(row, "start_at")?, timestamp(row, "end_at")?).map_err(corrupt)?,
        source: AssignmentSource::parse(row.text("source")?).map_err(corrupt)?,
        audit_id: row.optional_uuid("audit_id")?.map(AuditId::from_uuid),
    };
    Ok(Assignment::new(
        AssignmentId::from_uuid(row.uuid("id")?),
        JobId::from_uuid(row.uuid("job_id")?),
        contractor_id,
        request,
        region(row)?,
        timestamp(row, "created_at")?,
        EventId::from_uuid(row.uuid("event_id")?),
    )
    .with_acknowledgement(Acknowledgement {
        acknowledged_at_utc: row.optional_int("acknowledged_at")?.map(Timestamp::from_unix_millis),
        deadline_utc: row.optional_int("ack_deadline")?.map(Timestamp::from_unix_millis),
    }))
}

/// The event in an `event_log` row's `payload`.
pub(crate) fn event(row: &impl Columns) -> Result<DomainEvent, StoreError> {
    row.json("payload")
}

/// A row a claim reads: its event and the attempts made so far.
pub(crate) fn claimable(row: &impl Columns) -> Result<(DomainEvent, u32), StoreError> {
    Ok((event(row)?, attempts(row)?))
}

/// An `event_log` row's delivery attempts.
pub(crate) fn attempts(row: &impl Columns) -> Result<u32, StoreError> {
    u32::try_from(row.int("attempts")?).map_err(corrupt)
}

/// An `event_log` row as the operator's API shows it.
pub(crate) fn entry(row: &impl Columns) -> Result<EventLogEntry, StoreError> {
    let status = row.text("status")?;
    let status = EventStatus::parse(status).ok_or_else(|| corrupt(format!("unknown status {status}")))?;
    // The contract: sequence is null until published.
    let sequence = match status {
        EventStatus::Published => row.optional_int("sequence")?.map(Sequence),
        _ => None,
    };
    let groups: Vec<Group> = row.json("published_groups")?;
    Ok(EventLogEntry {
        event_id: EventId::from_uuid(row.uuid("event_id")?),
        event_type: row.text("event_type")?.to_owned(),
        sequence,
        status,
        attempts: attempts(row)?,
        occurred_at_utc: timestamp(row, "occurred_at")?,
        published_at_utc: row.optional_int("published_at")?.map(Timestamp::from_unix_millis),
        published_groups: groups,
        last_error: row.optional_text("last_error")?.map(str::to_owned),
        payload: LoggedPayload { event: event(row)?, sequence },
    })
}

/// Pairs `assignment` with its job from `jobs` (read in the same call); a
/// missing job means the foreign key was broken by hand.
pub(crate) fn pair_with_job(assignment: Assignment, jobs: &[Job]) -> Result<(Assignment, Job), StoreError> {
    let job = jobs.iter().find(|job| job.id() == assignment.job_id()).cloned().ok_or_else(|| {
        corrupt(format!("assignment {} names job {}, which is missing", assignment.id(), assignment.job_id()))
    })?;
    Ok((assignment, job))
}
