//! SmartScheduler's domain: jobs, contractors, assignments, the `JobAssigned`
//! event, identities, and the ports (traits) the outer layers implement.
//!
//! What it is not: it does no I/O and knows no framework (no tokio, sqlx,
//! actix or serde_json). Behaviour returns the events it causes instead of
//! publishing them; the application layer decides when they go out.
//!
//! # Layout
//! - [`ids`]: identifiers as newtypes over `Uuid`.
//! - [`values`]: validated values (regions, names, times, sources).
//! - [`job`], [`contractor`], [`assignment`]: the entities.
//! - [`events`]: `JobAssigned`, the event envelope, groups and sequences.
//! - [`identity`]: who is calling and what they may see.
//! - [`ports`]: repositories, the unit of work, the EventLog and the publisher.
//! - [`cause`]: the underlying error a failure keeps, and its chain for logs.

pub mod acknowledgement;
pub mod assignment;
pub mod cause;
pub mod contractor;
pub mod events;
pub mod identity;
pub mod ids;
pub mod job;
pub mod ports;
pub mod presence;
pub mod values;

pub use acknowledgement::{
    AcknowledgeRefusal, Acknowledged, Acknowledgement, AcknowledgementStatus, JobAssignmentAcknowledged,
    JobAssignmentUnacknowledged,
};
pub use assignment::{Assignment, NewAssignment};
pub use cause::{Cause, Chain};
pub use contractor::Contractor;
pub use events::{DomainEvent, EventType, Group, JobAssigned, JobSnapshot, PublishedEvent, Sequence};
pub use identity::{Principal, Role};
pub use ids::{AssignmentId, AuditId, ContractorId, EventId, JobId};
pub use job::{check_job_texts, AssignRefusal, Job, JobStatus, MAX_JOB_TEXT_BYTES};
pub use presence::{HeldConnections, Presence, PresenceChanged, SettleScope};
pub use values::{
    Address, AssignmentSource, DurationMinutes, JobType, PersonName, Region, Skill, TimeRange, Timestamp, Title,
    ValidationError,
};
