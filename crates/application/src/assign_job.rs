//! Assign a job: the assignment, the job's new status and the `JobAssigned`
//! row are committed together; the event goes to the publisher only after
//! the commit, and the call returns without waiting for delivery.

use std::sync::Arc;

use smartscheduler_domain::ports::{
    AssignmentStore, CommitAssignmentError, ContractorRepository, EventPublisher, JobRepository,
    StoreError,
};
use smartscheduler_domain::{
    AssignRefusal, Assignment, AssignmentSource, AuditId, ContractorId, DomainEvent, JobId,
    NewAssignment, Principal, TimeRange, Timestamp,
};
use tracing::instrument;

/// A validated request to assign a job.
#[derive(Debug, Clone, PartialEq)]
pub struct AssignJobRequest {
    /// The job.
    pub job_id: JobId,
    /// Who gets it.
    pub contractor_id: ContractorId,
    /// When.
    pub range: TimeRange,
    /// `manual` unless the matching engine chose.
    pub source: AssignmentSource,
    /// External audit record.
    pub audit_id: Option<AuditId>,
}

/// Why a job was not assigned. Nothing was written and nothing published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignJobError {
    /// No such job.
    #[error("job {0} does not exist")]
    JobNotFound(JobId),
    /// No such contractor.
    #[error("contractor {0} does not exist")]
    ContractorNotFound(ContractorId),
    /// The caller may not assign this job (role or region).
    #[error("you may not assign this job: {0}")]
    Forbidden(String),
    /// The job has a contractor already.
    #[error("job {0} is already assigned")]
    JobAlreadyAssigned(JobId),
    /// The contractor is busy then.
    #[error("contractor {0} already has an overlapping assignment")]
    ContractorBusy(ContractorId),
    /// Storage is unavailable; the caller may retry.
    #[error("storage is unavailable")]
    Unavailable(String),
    /// Anything else.
    #[error("unexpected failure")]
    Unexpected(String),
}

impl From<StoreError> for AssignJobError {
    fn from(value: StoreError) -> Self {
        match value {
            StoreError::Unavailable(e) => Self::Unavailable(e),
            StoreError::Unexpected(e) => Self::Unexpected(e),
        }
    }
}

/// The use case.
#[derive(Clone)]
pub struct AssignJob {
    jobs: Arc<dyn JobRepository>,
    contractors: Arc<dyn ContractorRepository>,
    store: Arc<dyn AssignmentStore>,
    publisher: Arc<dyn EventPublisher>,
}

impl AssignJob {
    /// Wires the use case to its ports.
    pub fn new(
        jobs: Arc<dyn JobRepository>,
        contractors: Arc<dyn ContractorRepository>,
        store: Arc<dyn AssignmentStore>,
        publisher: Arc<dyn EventPublisher>,
    ) -> Self {
        Self {
            jobs,
            contractors,
            store,
            publisher,
        }
    }

    /// Assigns the job for `principal`.
    ///
    /// # Errors
    /// [`AssignJobError`]; then nothing was written or published.
    #[instrument(skip_all, err, fields(job_id = %request.job_id, contractor_id = %request.contractor_id))]
    pub async fn execute(
        &self,
        principal: &Principal,
        request: AssignJobRequest,
    ) -> Result<Assignment, AssignJobError> {
        let result = self.assign(principal, request).await;
        let outcome = match &result {
            Ok(_) => "created",
            Err(AssignJobError::JobNotFound(_) | AssignJobError::ContractorNotFound(_)) => {
                "not_found"
            }
            Err(AssignJobError::Forbidden(_)) => "forbidden",
            Err(AssignJobError::JobAlreadyAssigned(_) | AssignJobError::ContractorBusy(_)) => {
                "conflict"
            }
            Err(AssignJobError::Unavailable(_)) => "unavailable",
            Err(AssignJobError::Unexpected(_)) => "error",
        };
        metrics::counter!("smartscheduler_assignments_total", "outcome" => outcome).increment(1);
        result
    }

    async fn assign(
        &self,
        principal: &Principal,
        request: AssignJobRequest,
    ) -> Result<Assignment, AssignJobError> {
        // Role first: a contractor must not learn which job ids exist.
        if !principal.is_back_office() {
            return Err(AssignJobError::Forbidden(
                "only admins and dispatchers assign jobs".into(),
            ));
        }
        let mut job = self
            .jobs
            .get(request.job_id)
            .await?
            .ok_or(AssignJobError::JobNotFound(request.job_id))?;
        if !principal.dispatches(job.region()) {
            return Err(AssignJobError::Forbidden(format!(
                "you do not dispatch region '{}'",
                job.region()
            )));
        }
        let contractor = self
            .contractors
            .get(request.contractor_id)
            .await?
            .ok_or(AssignJobError::ContractorNotFound(request.contractor_id))?;

        let new = NewAssignment {
            contractor_id: contractor.id(),
            range: request.range,
            source: request.source,
            audit_id: request.audit_id,
        };
        let (assignment, event) =
            job.assign(&contractor, new, Timestamp::now())
                .map_err(|refusal| match refusal {
                    AssignRefusal::AlreadyAssigned(id) => AssignJobError::JobAlreadyAssigned(id),
                })?;
        let event = DomainEvent::from(event);

        self.store
            .commit_assignment(&job, &assignment, &event)
            .await
            .map_err(|e| match e {
                CommitAssignmentError::JobNotFound => AssignJobError::JobNotFound(job.id()),
                CommitAssignmentError::ContractorNotFound => {
                    AssignJobError::ContractorNotFound(contractor.id())
                }
                CommitAssignmentError::JobAlreadyAssigned => {
                    AssignJobError::JobAlreadyAssigned(job.id())
                }
                CommitAssignmentError::ContractorBusy => {
                    AssignJobError::ContractorBusy(contractor.id())
                }
                CommitAssignmentError::Store(e) => e.into(),
            })?;

        tracing::info!(assignment_id = %assignment.id(), event_id = %assignment.event_id(), "job assigned");
        // After the commit, never before: a refused or failed commit publishes nothing.
        self.publisher.publish(event);
        Ok(assignment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mockall::predicate::always;
    use mockall::Sequence as CallOrder;
    use smartscheduler_domain::ports::{
        MockAssignmentStore, MockContractorRepository, MockEventPublisher, MockJobRepository,
    };
    use smartscheduler_domain::{
        Contractor, DurationMinutes, Job, JobStatus, JobType, PersonName, Region, Role, Title,
    };

    fn dispatcher(region: &str) -> Principal {
        Principal {
            subject: "d".into(),
            role: Role::Dispatcher,
            regions: vec![region.into()],
            contractor_id: None,
        }
    }

    fn fixtures() -> (Job, Contractor, AssignJobRequest) {
        let now = Timestamp::now();
        let job = Job::create(
            JobType::new("Flooring").unwrap(),
            Some(Title::new("Kitchen").unwrap()),
            Region::new("north").unwrap(),
            DurationMinutes::new(120).unwrap(),
            None,
            None,
            now,
        );
        let contractor = Contractor::create(
            PersonName::new("Ana").unwrap(),
            Region::new("north").unwrap(),
            vec![],
            now,
        )
        .unwrap();
        let request = AssignJobRequest {
            job_id: job.id(),
            contractor_id: contractor.id(),
            range: TimeRange::new(now, now.plus_millis(3_600_000)).unwrap(),
            source: AssignmentSource::Manual,
            audit_id: None,
        };
        (job, contractor, request)
    }

    fn repos(job: &Job, contractor: &Contractor) -> (MockJobRepository, MockContractorRepository) {
        let mut jobs = MockJobRepository::new();
        let j = job.clone();
        jobs.expect_get().returning(move |_| Ok(Some(j.clone())));
        let mut contractors = MockContractorRepository::new();
        let c = contractor.clone();
        contractors
            .expect_get()
            .returning(move |_| Ok(Some(c.clone())));
        (jobs, contractors)
    }

    fn use_case(
        jobs: MockJobRepository,
        contractors: MockContractorRepository,
        store: MockAssignmentStore,
        publisher: MockEventPublisher,
    ) -> AssignJob {
        AssignJob::new(
            Arc::new(jobs),
            Arc::new(contractors),
            Arc::new(store),
            Arc::new(publisher),
        )
    }

    #[tokio::test]
    async fn the_event_is_built_from_job_and_assignment_and_published_after_the_commit() {
        let (job, contractor, request) = fixtures();
        let (jobs, contractors) = repos(&job, &contractor);
        let mut order = CallOrder::new();
        let mut store = MockAssignmentStore::new();
        let job_id = job.id();
        store
            .expect_commit_assignment()
            .times(1)
            .in_sequence(&mut order)
            .withf(move |job, assignment, event| {
                let DomainEvent::JobAssigned(e) = event;
                job.status() == JobStatus::Assigned
                    && e.job_id == job_id
                    && e.assignment_id == assignment.id()
                    && e.event_id == assignment.event_id()
                    && e.job.title.as_ref().map(|t| t.as_str()) == Some("Kitchen")
                    && e.region.as_str() == "north"
            })
            .returning(|_, _, _| Ok(()));
        let mut publisher = MockEventPublisher::new();
        publisher
            .expect_publish()
            .times(1)
            .in_sequence(&mut order)
            .with(always())
            .return_const(());

        let assignment = use_case(jobs, contractors, store, publisher)
            .execute(&dispatcher("north"), request)
            .await
            .unwrap();
        assert_eq!(assignment.job_id(), job.id());
        assert_eq!(assignment.region().as_str(), "north");
    }

    #[tokio::test]
    async fn a_refused_commit_publishes_nothing() {
        for (refusal, expected) in [
            (
                CommitAssignmentError::JobAlreadyAssigned,
                "already assigned",
            ),
            (CommitAssignmentError::ContractorBusy, "overlapping"),
            (
                CommitAssignmentError::Store(StoreError::Unavailable("down".into())),
                "unavailable",
            ),
        ] {
            let (job, contractor, request) = fixtures();
            let (jobs, contractors) = repos(&job, &contractor);
            let mut store = MockAssignmentStore::new();
            let r = refusal.clone();
            store
                .expect_commit_assignment()
                .returning(move |_, _, _| Err(r.clone()));
            let mut publisher = MockEventPublisher::new();
            publisher.expect_publish().never();
            let err = use_case(jobs, contractors, store, publisher)
                .execute(&dispatcher("north"), request)
                .await
                .unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    #[tokio::test]
    async fn a_dispatcher_of_another_region_is_refused_before_anything_is_written() {
        let (job, contractor, request) = fixtures();
        let (jobs, contractors) = repos(&job, &contractor);
        let mut store = MockAssignmentStore::new();
        store.expect_commit_assignment().never();
        let mut publisher = MockEventPublisher::new();
        publisher.expect_publish().never();
        let err = use_case(jobs, contractors, store, publisher)
            .execute(&dispatcher("south"), request)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            AssignJobError::Forbidden("you do not dispatch region 'north'".into())
        );
    }

    #[tokio::test]
    async fn unknown_job_or_contractor_is_not_found_and_publishes_nothing() {
        let (job, contractor, request) = fixtures();
        let mut jobs = MockJobRepository::new();
        jobs.expect_get().returning(|_| Ok(None));
        let mut store = MockAssignmentStore::new();
        store.expect_commit_assignment().never();
        let mut publisher = MockEventPublisher::new();
        publisher.expect_publish().never();
        let err = use_case(jobs, MockContractorRepository::new(), store, publisher)
            .execute(&dispatcher("north"), request.clone())
            .await
            .unwrap_err();
        assert_eq!(err, AssignJobError::JobNotFound(job.id()));

        let (jobs, _) = repos(&job, &contractor);
        let mut contractors = MockContractorRepository::new();
        contractors.expect_get().returning(|_| Ok(None));
        let mut store = MockAssignmentStore::new();
        store.expect_commit_assignment().never();
        let mut publisher = MockEventPublisher::new();
        publisher.expect_publish().never();
        let err = use_case(jobs, contractors, store, publisher)
            .execute(&dispatcher("north"), request)
            .await
            .unwrap_err();
        assert_eq!(err, AssignJobError::ContractorNotFound(contractor.id()));
    }

    #[tokio::test]
    async fn an_already_assigned_job_is_refused_without_a_write() {
        let (job, contractor, request) = fixtures();
        let assigned = Job::restore(
            job.id(),
            job.job_type().clone(),
            None,
            job.region().clone(),
            job.duration_minutes(),
            None,
            None,
            JobStatus::Assigned,
            job.created_at_utc(),
        );
        let (jobs, contractors) = repos(&assigned, &contractor);
        let mut store = MockAssignmentStore::new();
        store.expect_commit_assignment().never();
        let mut publisher = MockEventPublisher::new();
        publisher.expect_publish().never();
        let err = use_case(jobs, contractors, store, publisher)
            .execute(&dispatcher("north"), request)
            .await
            .unwrap_err();
        assert_eq!(err, AssignJobError::JobAlreadyAssigned(job.id()));
    }
}
