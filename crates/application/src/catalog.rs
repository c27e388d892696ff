//! Contractors and jobs: create, get and list, with the contract's access
//! rules (Admin and Dispatcher; jobs only in a dispatcher's own regions;
//! a contractor reads only the jobs and assignments that are its own).

use std::sync::Arc;

use smartscheduler_domain::ports::{AssignmentRepository, ContractorRepository, JobFilter, JobRepository, StoreError};
use smartscheduler_domain::values::Address;
use smartscheduler_domain::{
    check_job_texts, Assignment, AssignmentId, Contractor, ContractorId, DurationMinutes, Job, JobId, JobStatus,
    JobType, PersonName, Principal, Region, Skill, Timestamp, Title, ValidationError,
};
use tracing::instrument;

/// Why a catalog call failed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// The caller's role or region does not allow it.
    #[error("{0}")]
    Forbidden(String),
    /// A value was refused.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// What was asked for does not exist.
    #[error("{0}")]
    NotFound(String),
}

/// A validated new contractor.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateContractorRequest {
    /// Name.
    pub name: PersonName,
    /// Region.
    pub region: Region,
    /// Skills.
    pub skills: Vec<Skill>,
}

/// A validated new job.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateJobRequest {
    /// Kind of work.
    pub job_type: JobType,
    /// Region.
    pub region: Region,
    /// Duration.
    pub duration_minutes: DurationMinutes,
    /// Optional title.
    pub title: Option<Title>,
    /// Optional desired start.
    pub desired_start_utc: Option<Timestamp>,
    /// Optional address.
    pub address: Option<Address>,
}

/// Contractors and jobs.
#[derive(Clone)]
pub struct Catalog {
    contractors: Arc<dyn ContractorRepository>,
    jobs: Arc<dyn JobRepository>,
    assignments: Arc<dyn AssignmentRepository>,
}

fn back_office(principal: &Principal) -> Result<(), CatalogError> {
    if principal.is_back_office() {
        Ok(())
    } else {
        Err(CatalogError::Forbidden("only admins and dispatchers may do this".into()))
    }
}

impl Catalog {
    /// Wires the catalog to its repositories.
    pub fn new(
        contractors: Arc<dyn ContractorRepository>,
        jobs: Arc<dyn JobRepository>,
        assignments: Arc<dyn AssignmentRepository>,
    ) -> Self {
        Self { contractors, jobs, assignments }
    }

    /// Creates a contractor.
    ///
    /// # Errors
    /// [`CatalogError`].
    #[instrument(skip_all)]
    pub async fn create_contractor(
        &self,
        principal: &Principal,
        request: CreateContractorRequest,
    ) -> Result<Contractor, CatalogError> {
        back_office(principal)?;
        let contractor = Contractor::create(request.name, request.region, request.skills, Timestamp::now())?;
        self.contractors.insert(&contractor).await?;
        Ok(contractor)
    }

    /// One contractor, or `None`.
    ///
    /// # Errors
    /// [`CatalogError`].
    pub async fn contractor(
        &self,
        principal: &Principal,
        id: ContractorId,
    ) -> Result<Option<Contractor>, CatalogError> {
        back_office(principal)?;
        Ok(self.contractors.get(id).await?)
    }

    /// Contractors, optionally of one region.
    ///
    /// # Errors
    /// [`CatalogError`].
    pub async fn contractors(
        &self,
        principal: &Principal,
        region: Option<Region>,
        limit: u32,
    ) -> Result<Vec<Contractor>, CatalogError> {
        back_office(principal)?;
        Ok(self.contractors.list(region, limit).await?)
    }

    /// Creates a job in one of the caller's regions.
    ///
    /// # Errors
    /// [`CatalogError`].
    #[instrument(skip_all)]
    pub async fn create_job(&self, principal: &Principal, request: CreateJobRequest) -> Result<Job, CatalogError> {
        back_office(principal)?;
        if !principal.dispatches(&request.region) {
            return Err(CatalogError::Forbidden(format!("you may not create jobs in region '{}'", request.region)));
        }
        check_job_texts(&request.job_type, request.title.as_ref(), request.address.as_ref())?;
        let job = Job::create(
            request.job_type,
            request.title,
            request.region,
            request.duration_minutes,
            request.desired_start_utc,
            request.address,
            Timestamp::now(),
        );
        self.jobs.insert(&job).await?;
        Ok(job)
    }

    /// One job, or `None`.
    ///
    /// # Errors
    /// [`CatalogError`].
    pub async fn job(&self, principal: &Principal, id: JobId) -> Result<Option<Job>, CatalogError> {
        if principal.is_back_office() {
            return Ok(self.jobs.get(id).await?);
        }
        let Some(job) = self.jobs.get(id).await? else { return Ok(None) };
        let assigned_to = self.assignments.of_job(id).await?.map(|a| a.contractor_id());
        match (principal.contractor_id, assigned_to) {
            (Some(me), Some(assignee)) if me == assignee => Ok(Some(job)),
            _ => Err(CatalogError::Forbidden("a contractor may read only the jobs assigned to it".into())),
        }
    }

    /// The assignments of a contractor with their jobs, newest first: for an
    /// admin, a dispatcher of the contractor's region, or that contractor.
    ///
    /// # Errors
    /// [`CatalogError::NotFound`] when no contractor has this id (for the back
    /// office; a contractor asking for another's id is `Forbidden`), else [`CatalogError`].
    pub async fn assignments_of(
        &self,
        principal: &Principal,
        id: ContractorId,
        limit: u32,
    ) -> Result<Vec<(Assignment, Job)>, CatalogError> {
        if !principal.is_back_office() {
            if principal.contractor_id != Some(id) {
                return Err(CatalogError::Forbidden("a contractor may list only its own assignments".into()));
            }
        } else {
            let contractor = self
                .contractors
                .get(id)
                .await?
                .ok_or_else(|| CatalogError::NotFound(format!("contractor {id} does not exist")))?;
            if !principal.dispatches(contractor.region()) {
                return Err(CatalogError::Forbidden(format!(
                    "you may not read the assignments of region '{}'",
                    contractor.region()
                )));
            }
        }
        Ok(self.assignments.of_contractor(id, limit).await?)
    }

    /// One assignment with its acknowledgement: for an admin, a dispatcher of
    /// its region, or the contractor it was given to.
    ///
    /// # Errors
    /// [`CatalogError::Forbidden`] for anyone else (a contractor asking for
    /// another's assignment learns nothing more), else [`CatalogError`].
    pub async fn assignment(
        &self,
        principal: &Principal,
        id: AssignmentId,
    ) -> Result<Option<Assignment>, CatalogError> {
        let Some(assignment) = self.assignments.get(id).await? else { return Ok(None) };
        let allowed = if principal.is_back_office() {
            principal.dispatches(assignment.region())
        } else {
            principal.contractor_id == Some(assignment.contractor_id())
        };
        if !allowed {
            return Err(CatalogError::Forbidden("you may not read this assignment".into()));
        }
        Ok(Some(assignment))
    }

    /// Jobs, optionally of one region and status.
    ///
    /// # Errors
    /// [`CatalogError`].
    pub async fn jobs(
        &self,
        principal: &Principal,
        region: Option<Region>,
        status: Option<JobStatus>,
        limit: u32,
    ) -> Result<Vec<Job>, CatalogError> {
        back_office(principal)?;
        Ok(self.jobs.list(JobFilter { region, status, limit }).await?)
    }
}
