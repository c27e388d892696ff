//! Jobs: flooring work in a region that waits for a contractor.

use serde::Serialize;

use crate::assignment::{Assignment, NewAssignment};
use crate::contractor::Contractor;
use crate::events::JobAssigned;
use crate::ids::{AssignmentId, EventId, JobId};
use crate::values::{Address, DurationMinutes, JobType, Region, Timestamp, Title, ValidationError};

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub enum JobStatus {
    /// Waiting for a contractor.
    Unassigned,
    /// A contractor has it.
    Assigned,
}

impl JobStatus {
    /// `"Unassigned"` or `"Assigned"`, as stored and as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unassigned => "Unassigned",
            Self::Assigned => "Assigned",
        }
    }
    /// Parses the stored or queried form.
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        match value {
            "Unassigned" => Ok(Self::Unassigned),
            "Assigned" => Ok(Self::Assigned),
            _ => Err(ValidationError::new("status", "must be \"Unassigned\" or \"Assigned\"")),
        }
    }
}

/// A job. Fields are private: a job changes only through its methods.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    id: JobId,
    job_type: JobType,
    title: Option<Title>,
    region: Region,
    duration_minutes: DurationMinutes,
    desired_start_utc: Option<Timestamp>,
    address: Option<Address>,
    status: JobStatus,
    created_at_utc: Timestamp,
}

/// Why a job cannot be assigned, as far as the job itself can tell.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignRefusal {
    /// It already has a contractor.
    #[error("job {0} is already assigned")]
    AlreadyAssigned(JobId),
}

/// Most bytes a job's `jobType`, `title` and `address` take together in
/// JSON (UTF-8, with `"` and `\` escaped): they all travel in every
/// `JobAssigned`, which the contract keeps under 2 KiB whatever the rest of
/// the payload holds (see [`crate::events::MAX_PAYLOAD_BYTES`]).
pub const MAX_JOB_TEXT_BYTES: usize = 1200;

/// Refuses a new job whose texts would not fit in a `JobAssigned`
/// ([`MAX_JOB_TEXT_BYTES`]). Each text's own limit is checked when it is made.
///
/// # Errors
/// [`ValidationError`] on `address` (or `title` without one), saying how much is too much.
pub fn check_job_texts(
    job_type: &JobType,
    title: Option<&Title>,
    address: Option<&Address>,
) -> Result<(), ValidationError> {
    let bytes = json_bytes(job_type.as_str())
        + title.map_or(0, |t| json_bytes(t.as_str()))
        + address.map_or(0, |a| json_bytes(a.as_str()));
    if bytes <= MAX_JOB_TEXT_BYTES {
        return Ok(());
    }
    let field = if address.is_some() { "address" } else { "title" };
    Err(ValidationError::new(
        field,
        format!(
            "jobType, title and address take {bytes} bytes together; at most {MAX_JOB_TEXT_BYTES} fit in a JobAssigned \
             (UTF-8, quotes and backslashes count twice): shorten the address or the title"
        ),
    ))
}

/// The bytes `text` takes inside a JSON string: `"` and `\` are escaped
/// (control characters never get this far: every text refuses them).
fn json_bytes(text: &str) -> usize {
    text.len() + text.bytes().filter(|b| matches!(b, b'"' | b'\\')).count()
}

impl Job {
    /// A new, unassigned job.
    pub fn create(
        job_type: JobType,
        title: Option<Title>,
        region: Region,
        duration_minutes: DurationMinutes,
        desired_start_utc: Option<Timestamp>,
        address: Option<Address>,
        now: Timestamp,
    ) -> Self {
        Self {
            id: JobId::new(),
            job_type,
            title,
            region,
            duration_minutes,
            desired_start_utc,
            address,
            status: JobStatus::Unassigned,
            created_at_utc: now,
        }
    }

    /// Rebuilds a job from storage.
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        id: JobId,
        job_type: JobType,
        title: Option<Title>,
        region: Region,
        duration_minutes: DurationMinutes,
        desired_start_utc: Option<Timestamp>,
        address: Option<Address>,
        status: JobStatus,
        created_at_utc: Timestamp,
    ) -> Self {
        Self { id, job_type, title, region, duration_minutes, desired_start_utc, address, status, created_at_utc }
    }

    /// Assigns the job to `contractor`: the job becomes Assigned, and the
    /// assignment and the `JobAssigned` event it causes are returned for the
    /// caller to store in one transaction.
    ///
    /// # Errors
    /// [`AssignRefusal::AlreadyAssigned`] when the job has a contractor.
    pub fn assign(
        &mut self,
        contractor: &Contractor,
        request: NewAssignment,
        now: Timestamp,
    ) -> Result<(Assignment, JobAssigned), AssignRefusal> {
        if self.status != JobStatus::Unassigned {
            return Err(AssignRefusal::AlreadyAssigned(self.id));
        }
        self.status = JobStatus::Assigned;
        let assignment = Assignment::new(
            AssignmentId::new(),
            self.id,
            contractor.id(),
            request,
            self.region.clone(),
            now,
            EventId::new(),
        );
        let event = JobAssigned::new(self, &assignment);
        Ok((assignment, event))
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }
    /// The kind of work.
    pub fn job_type(&self) -> &JobType {
        &self.job_type
    }
    /// The title, if one was given.
    pub fn title(&self) -> Option<&Title> {
        self.title.as_ref()
    }
    /// Where the job is.
    pub fn region(&self) -> &Region {
        &self.region
    }
    /// How long it takes.
    pub fn duration_minutes(&self) -> DurationMinutes {
        self.duration_minutes
    }
    /// When the customer would like it to start.
    pub fn desired_start_utc(&self) -> Option<Timestamp> {
        self.desired_start_utc
    }
    /// The address, if one was given.
    pub fn address(&self) -> Option<&Address> {
        self.address.as_ref()
    }
    /// Whether it has a contractor.
    pub fn status(&self) -> JobStatus {
        self.status
    }
    /// When it was created.
    pub fn created_at_utc(&self) -> Timestamp {
        self.created_at_utc
    }
}
