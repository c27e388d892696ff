//! Assign a job: the assignment, the job's new status and the `JobAssigned`
//! row are committed together; the event goes to the publisher only after
//! the commit, and the call returns without waiting for delivery.

use std::sync::Arc;
use std::time::Duration;

use smartscheduler_domain::ports::{
    AssignmentStore, CommitAssignmentError, ContractorRepository, EventPublisher, IdempotencyKey, JobRepository,
    StoreError, IDEMPOTENCY_WINDOW_MILLIS,
};
use smartscheduler_domain::{
    Acknowledgement, AssignRefusal, Assignment, AssignmentSource, AuditId, ContractorId, DomainEvent, Job, JobId,
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
    /// The `Idempotency-Key` header and the request's fingerprint, if sent.
    pub idempotency: Option<IdempotencyRequest>,
}

/// An `Idempotency-Key` with what the request said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRequest {
    /// The key.
    pub key: String,
    /// The job and body, canonical: a repeat has the same, a reuse another.
    pub fingerprint: String,
}

/// A successful assign.
#[derive(Debug, Clone, PartialEq)]
pub struct Assigned {
    /// The assignment (the first one, for a repeat).
    pub assignment: Assignment,
    /// Whether this answers a repeat of an `Idempotency-Key`.
    pub replayed: bool,
}

/// Why a job was not assigned. Nothing was written and nothing published.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
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
    /// The `Idempotency-Key` was used before with another request.
    #[error("the Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    /// Storage is unavailable; the caller may retry.
    #[error("storage is unavailable")]
    Unavailable(#[source] StoreError),
    /// Anything else.
    #[error("unexpected failure")]
    Unexpected(#[source] StoreError),
}

impl From<StoreError> for AssignJobError {
    fn from(value: StoreError) -> Self {
        match value {
            StoreError::Unavailable(_) => Self::Unavailable(value),
            // Assignments are not fenced: a store that reports a lost lease is wrong.
            StoreError::Unexpected(_) | StoreError::LeaseLost => Self::Unexpected(value),
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
    /// How long the contractor has to acknowledge; `None`: no escalation.
    acknowledgement_deadline: Option<Duration>,
}

impl AssignJob {
    /// Wires the use case to its ports.
    pub fn new(
        jobs: Arc<dyn JobRepository>,
        contractors: Arc<dyn ContractorRepository>,
        store: Arc<dyn AssignmentStore>,
        publisher: Arc<dyn EventPublisher>,
    ) -> Self {
        Self { jobs, contractors, store, publisher, acknowledgement_deadline: None }
    }

    /// New assignments get a deadline `deadline` after they are made, past
    /// which an unacknowledged one is escalated (`None`, the default: never).
    #[must_use]
    pub fn with_acknowledgement_deadline(mut self, deadline: Option<Duration>) -> Self {
        self.acknowledgement_deadline = deadline;
        self
    }

    /// Assigns the job for `principal`.
    ///
    /// Runs in an `assign_job` span carrying the job, contractor, assignment
    /// and event ids; the event is delivered later inside a child of it.
    /// The span does not log errors: most are the caller's (404, 409), and
    /// the HTTP edge logs each outcome once, at a level fitting its status.
    ///
    /// # Errors
    /// [`AssignJobError`]; then nothing was written or published.
    #[instrument(
        name = "assign_job",
        skip_all,
        fields(
            job_id = %request.job_id,
            contractor_id = %request.contractor_id,
            assignment_id = tracing::field::Empty,
            event_id = tracing::field::Empty,
        )
    )]
    pub async fn execute(&self, principal: &Principal, request: AssignJobRequest) -> Result<Assigned, AssignJobError> {
        let result = self.assign(principal, request).await;
        let outcome = match &result {
            Ok(Assigned { replayed: true, .. }) => "replayed",
            Ok(_) => "created",
            Err(AssignJobError::IdempotencyKeyReused) => "idempotency_key_reused",
            Err(AssignJobError::JobNotFound(_) | AssignJobError::ContractorNotFound(_)) => "not_found",
            Err(AssignJobError::Forbidden(_)) => "forbidden",
            Err(AssignJobError::JobAlreadyAssigned(_) | AssignJobError::ContractorBusy(_)) => "conflict",
            Err(AssignJobError::Unavailable(_)) => "unavailable",
            Err(AssignJobError::Unexpected(_)) => "error",
        };
        metrics::counter!("smartscheduler_assignments_total", "outcome" => outcome).increment(1);
        result
    }

    async fn assign(&self, principal: &Principal, request: AssignJobRequest) -> Result<Assigned, AssignJobError> {
        // Role first: a contractor must not learn which job ids exist.
        if !principal.is_back_office() {
            return Err(AssignJobError::Forbidden("only admins and dispatchers assign jobs".into()));
        }
        // Rights before any answer, a replayed first answer included: the
        // caller's regions may have changed since that first request.
        let job = self.dispatchable_job(principal, request.job_id).await?;
        let Some(idempotency) = request.idempotency.clone() else {
            return self.assign_new(principal, job, request).await;
        };
        if let Some(first) = self.first_answer(principal, &idempotency).await? {
            return Ok(first);
        }
        let result = self.assign_new(principal, job, request).await;
        if let Err(AssignJobError::JobAlreadyAssigned(_) | AssignJobError::IdempotencyKeyReused) = &result {
            // A racing repeat may have committed first: answer as it did.
            if let Some(first) = self.first_answer(principal, &idempotency).await? {
                return Ok(first);
            }
        }
        result
    }

    /// The job, if it exists and `principal` dispatches its region.
    async fn dispatchable_job(&self, principal: &Principal, job_id: JobId) -> Result<Job, AssignJobError> {
        let job = self.jobs.get(job_id).await?.ok_or(AssignJobError::JobNotFound(job_id))?;
        if !principal.dispatches(job.region()) {
            return Err(AssignJobError::Forbidden(format!("you do not dispatch region '{}'", job.region())));
        }
        Ok(job)
    }

    async fn assign_new(
        &self,
        principal: &Principal,
        mut job: Job,
        request: AssignJobRequest,
    ) -> Result<Assigned, AssignJobError> {
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
        let (assignment, event) = job.assign(&contractor, new, Timestamp::now()).map_err(|refusal| match refusal {
            AssignRefusal::AlreadyAssigned(id) => AssignJobError::JobAlreadyAssigned(id),
        })?;
        let event = DomainEvent::from(event);
        let deadline_utc =
            self.acknowledgement_deadline.map(|d| assignment.created_at_utc().plus_millis(d.as_millis() as i64));
        let assignment = assignment.with_acknowledgement(Acknowledgement { acknowledged_at_utc: None, deadline_utc });

        let key = request.idempotency.as_ref().map(|i| IdempotencyKey {
            scope: principal.subject.clone(),
            key: i.key.clone(),
            fingerprint: i.fingerprint.clone(),
        });
        let committed = self.store.commit_assignment(&job, &assignment, &event, key).await;
        committed.map_err(|e| match e {
            CommitAssignmentError::JobNotFound => AssignJobError::JobNotFound(job.id()),
            CommitAssignmentError::ContractorNotFound => AssignJobError::ContractorNotFound(contractor.id()),
            CommitAssignmentError::JobAlreadyAssigned => AssignJobError::JobAlreadyAssigned(job.id()),
            CommitAssignmentError::ContractorBusy => AssignJobError::ContractorBusy(contractor.id()),
            CommitAssignmentError::IdempotencyKeyTaken => AssignJobError::IdempotencyKeyReused,
            CommitAssignmentError::Store(e) => e.into(),
        })?;

        let span = tracing::Span::current();
        span.record("assignment_id", tracing::field::display(assignment.id()));
        span.record("event_id", tracing::field::display(assignment.event_id()));
        tracing::info!("job assigned");
        // After the commit, never before: a refused or failed commit publishes nothing.
        self.publisher.publish(event);
        Ok(Assigned { assignment, replayed: false })
    }

    /// The first answer under this caller's key, if the key is live; an
    /// error when it was used for another request.
    async fn first_answer(
        &self,
        principal: &Principal,
        idempotency: &IdempotencyRequest,
    ) -> Result<Option<Assigned>, AssignJobError> {
        let not_before = Timestamp::now().plus_millis(-IDEMPOTENCY_WINDOW_MILLIS);
        match self.store.find_idempotent(principal.subject.clone(), idempotency.key.clone(), not_before).await? {
            Some((fingerprint, assignment)) if fingerprint == idempotency.fingerprint => {
                Ok(Some(Assigned { assignment, replayed: true }))
            }
            Some(_) => Err(AssignJobError::IdempotencyKeyReused),
            None => Ok(None),
        }
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
    use smartscheduler_domain::{Contractor, DurationMinutes, JobStatus, JobType, PersonName, Region, Role, Title};

    fn dispatcher(region: &str) -> Principal {
        Principal { subject: "d".into(), role: Role::Dispatcher, regions: vec![region.into()], contractor_id: None }
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
        let contractor =
            Contractor::create(PersonName::new("Ana").unwrap(), Region::new("north").unwrap(), vec![], now).unwrap();
        let request = AssignJobRequest {
            job_id: job.id(),
            contractor_id: contractor.id(),
            range: TimeRange::new(now, now.plus_millis(3_600_000)).unwrap(),
            source: AssignmentSource::Manual,
            audit_id: None,
            idempotency: None,
        };
        (job, contractor, request)
    }

    fn repos(job: &Job, contractor: &Contractor) -> (MockJobRepository, MockContractorRepository) {
        let mut jobs = MockJobRepository::new();
        let j = job.clone();
        jobs.expect_get().returning(move |_| Ok(Some(j.clone())));
        let mut contractors = MockContractorRepository::new();
        let c = contractor.clone();
        contractors.expect_get().returning(move |_| Ok(Some(c.clone())));
        (jobs, contractors)
    }

    fn use_case(
        jobs: MockJobRepository,
        contractors: MockContractorRepository,
        store: MockAssignmentStore,
        publisher: MockEventPublisher,
    ) -> AssignJob {
        AssignJob::new(Arc::new(jobs), Arc::new(contractors), Arc::new(store), Arc::new(publisher))
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
            .withf(move |job, assignment, event, _| {
                let DomainEvent::JobAssigned(e) = event else { return false };
                job.status() == JobStatus::Assigned
                    && e.job_id == job_id
                    && e.assignment_id == assignment.id()
                    && e.event_id == assignment.event_id()
                    && e.job.title.as_ref().map(|t| t.as_str()) == Some("Kitchen")
                    && e.region.as_str() == "north"
            })
            .returning(|_, _, _, _| Ok(()));
        let mut publisher = MockEventPublisher::new();
        publisher.expect_publish().times(1).in_sequence(&mut order).with(always()).return_const(());

        let assignment = use_case(jobs, contractors, store, publisher)
            .execute(&dispatcher("north"), request)
            .await
            .unwrap()
            .assignment;
        assert_eq!(assignment.job_id(), job.id());
        assert_eq!(assignment.region().as_str(), "north");
    }

    #[tokio::test]
    async fn with_a_deadline_the_assignment_is_committed_with_it_and_without_one_with_none() {
        for deadline in [Some(Duration::from_secs(300)), None] {
            let (job, contractor, request) = fixtures();
            let (jobs, contractors) = repos(&job, &contractor);
            let mut store = MockAssignmentStore::new();
            store
                .expect_commit_assignment()
                .times(1)
                .withf(move |_, assignment, _, _| {
                    let ack = assignment.acknowledgement();
                    ack.acknowledged_at_utc.is_none()
                        && ack.deadline_utc
                            == deadline.map(|d| assignment.created_at_utc().plus_millis(d.as_millis() as i64))
                })
                .returning(|_, _, _, _| Ok(()));
            let mut publisher = MockEventPublisher::new();
            publisher.expect_publish().return_const(());
            let assigned = use_case(jobs, contractors, store, publisher)
                .with_acknowledgement_deadline(deadline)
                .execute(&dispatcher("north"), request)
                .await
                .unwrap();
            assert_eq!(assigned.assignment.acknowledgement().deadline_utc.is_some(), deadline.is_some());
        }
    }

    #[tokio::test]
    async fn a_refused_commit_publishes_nothing() {
        // Constructors, not values: an error with a cause is not `Clone`.
        type Refusal = fn() -> CommitAssignmentError;
        let refusals: [(Refusal, &str); 3] = [
            (|| CommitAssignmentError::JobAlreadyAssigned, "already assigned"),
            (|| CommitAssignmentError::ContractorBusy, "overlapping"),
            (|| CommitAssignmentError::Store(StoreError::Unavailable("down".into())), "unavailable"),
        ];
        for (refusal, expected) in refusals {
            let (job, contractor, request) = fixtures();
            let (jobs, contractors) = repos(&job, &contractor);
            let mut store = MockAssignmentStore::new();
            store.expect_commit_assignment().returning(move |_, _, _, _| Err(refusal()));
            let mut publisher = MockEventPublisher::new();
            publisher.expect_publish().never();
            let err =
                use_case(jobs, contractors, store, publisher).execute(&dispatcher("north"), request).await.unwrap_err();
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
        let err =
            use_case(jobs, contractors, store, publisher).execute(&dispatcher("south"), request).await.unwrap_err();
        assert_eq!(err, AssignJobError::Forbidden("you do not dispatch region 'north'".into()));
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
        let err =
            use_case(jobs, contractors, store, publisher).execute(&dispatcher("north"), request).await.unwrap_err();
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
        let err =
            use_case(jobs, contractors, store, publisher).execute(&dispatcher("north"), request).await.unwrap_err();
        assert_eq!(err, AssignJobError::JobAlreadyAssigned(job.id()));
    }

    #[tokio::test]
    async fn a_repeated_idempotency_key_returns_the_first_answer_and_publishes_nothing() {
        let (job, contractor, mut request) = fixtures();
        let (jobs, contractors) = repos(&job, &contractor);
        let mut first_job = job.clone();
        let new = NewAssignment {
            contractor_id: contractor.id(),
            range: request.range,
            source: request.source,
            audit_id: None,
        };
        let (first, _) = first_job.assign(&contractor, new, Timestamp::now()).unwrap();
        let stored = first.clone();
        let mut store = MockAssignmentStore::new();
        store
            .expect_find_idempotent()
            .withf(|scope, key, _| scope == "d" && key == "k1")
            .returning(move |_, _, _| Ok(Some(("fp".into(), stored.clone()))));
        store.expect_commit_assignment().never();
        let mut publisher = MockEventPublisher::new();
        publisher.expect_publish().never();
        let uc = use_case(jobs, contractors, store, publisher);

        request.idempotency = Some(IdempotencyRequest { key: "k1".into(), fingerprint: "fp".into() });
        let again = uc.execute(&dispatcher("north"), request.clone()).await.unwrap();
        assert!(again.replayed);
        assert_eq!(again.assignment, first);

        request.idempotency = Some(IdempotencyRequest { key: "k1".into(), fingerprint: "other".into() });
        let err = uc.execute(&dispatcher("north"), request).await.unwrap_err();
        assert_eq!(err, AssignJobError::IdempotencyKeyReused);
    }

    #[tokio::test]
    async fn a_repeat_from_a_caller_who_lost_the_region_is_refused_not_answered() {
        let (job, contractor, mut request) = fixtures();
        let (jobs, contractors) = repos(&job, &contractor);
        let mut store = MockAssignmentStore::new();
        store.expect_find_idempotent().never();
        store.expect_commit_assignment().never();
        let mut publisher = MockEventPublisher::new();
        publisher.expect_publish().never();
        let uc = use_case(jobs, contractors, store, publisher);

        // Same subject and key as a first answer, but north was taken away.
        request.idempotency = Some(IdempotencyRequest { key: "k1".into(), fingerprint: "fp".into() });
        let err = uc.execute(&dispatcher("south"), request).await.unwrap_err();
        assert!(matches!(err, AssignJobError::Forbidden(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_new_idempotency_key_is_stored_with_the_assignment_in_its_transaction() {
        let (job, contractor, mut request) = fixtures();
        let (jobs, contractors) = repos(&job, &contractor);
        let mut store = MockAssignmentStore::new();
        store.expect_find_idempotent().returning(|_, _, _| Ok(None));
        store
            .expect_commit_assignment()
            .times(1)
            .withf(|_, _, _, key| {
                key.as_ref().is_some_and(|k| k.scope == "d" && k.key == "k2" && k.fingerprint == "fp")
            })
            .returning(|_, _, _, _| Ok(()));
        let mut publisher = MockEventPublisher::new();
        publisher.expect_publish().times(1).return_const(());
        request.idempotency = Some(IdempotencyRequest { key: "k2".into(), fingerprint: "fp".into() });
        let done = use_case(jobs, contractors, store, publisher).execute(&dispatcher("north"), request).await.unwrap();
        assert!(!done.replayed);
    }
}
