//! The part of reading assignments that both SQL adapters share.

use smartscheduler_domain::ports::StoreError;
use smartscheduler_domain::{Assignment, Job};

use crate::errors::corrupt;

/// Pairs `assignment` with its job from `jobs` (read in the same call); a
/// missing job means the foreign key was broken by hand.
pub(crate) fn pair_with_job(assignment: Assignment, jobs: &[Job]) -> Result<(Assignment, Job), StoreError> {
    let job = jobs.iter().find(|job| job.id() == assignment.job_id()).cloned().ok_or_else(|| {
        corrupt(format!("assignment {} names job {}, which is missing", assignment.id(), assignment.job_id()))
    })?;
    Ok((assignment, job))
}
