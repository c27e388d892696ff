//! The black-box suite of the storage adapters, shared by `sqlite_store.rs`
//! and `postgres_store.rs`: every test body is generic over a [`Backend`],
//! which makes a fresh database per test, and [`store_suite!`] instantiates
//! every test for one backend. The bodies only use the domain's ports, plus a
//! raw connection to count rows.

use std::future::Future;
use std::sync::Arc;

use smartscheduler_domain::ports::{
    AssignmentRepository, AssignmentStore, ClaimedEvent, CommitAssignmentError, ContractorRepository, EventLog,
    EventLogEntry, EventQuery, EventStatus, Fence, JobFilter, JobRepository, PublishedRow, RetryOutcome,
};
use smartscheduler_domain::{
    Acknowledged, Acknowledgement, Address, Assignment, AssignmentSource, Contractor, ContractorId, DomainEvent,
    DurationMinutes, EventId, Group, Job, JobId, JobStatus, JobType, NewAssignment, PersonName, Principal, Region,
    Role, Sequence, Skill, TimeRange, Timestamp, Title,
};
use tokio::sync::Barrier;

// ---------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------

/// Every storage port, as one adapter implements them.
pub trait Store:
    ContractorRepository + JobRepository + AssignmentStore + AssignmentRepository + EventLog + Clone + 'static
{
}

impl<T> Store for T where
    T: ContractorRepository + JobRepository + AssignmentStore + AssignmentRepository + EventLog + Clone + 'static
{
}

/// One database engine under test.
pub trait Backend: Sized + 'static {
    /// The adapter.
    type Store: Store;
    /// A raw connection to the same database, used only to count rows.
    type Raw;
    /// Whatever must outlive the test's connections (a temporary folder, a
    /// database to drop); dropped last.
    type Guard;

    /// A fresh, migrated database, or `None` when the engine is not
    /// available here and the test is skipped (it says so on stderr).
    fn fresh() -> impl Future<Output = Option<Db<Self>>>;

    /// How many rows `table` holds.
    fn count(raw: &Self::Raw, table: &str) -> impl Future<Output = i64>;
}

/// Instantiates every test of the suite for `$backend`, as `#[tokio::test]`s
/// of the module it is invoked in.
macro_rules! store_suite {
    ($backend:ty) => {
        $crate::support::store_suite!(@current $backend;
            a_stored_contractor_reads_back_unchanged,
            contractors_are_listed_oldest_first_by_region_up_to_the_limit,
            a_stored_job_reads_back_unchanged_with_or_without_optional_fields,
            getting_an_unknown_contractor_or_job_returns_none,
            jobs_are_listed_oldest_first_by_region_and_status_up_to_the_limit,
            committing_an_assignment_marks_the_job_assigned_and_logs_one_pending_event,
            a_second_assignment_of_the_same_job_is_refused_and_writes_nothing,
            assigning_a_job_that_is_not_stored_is_job_not_found_and_writes_nothing,
            assigning_to_a_contractor_that_is_not_stored_is_refused_and_rolls_the_job_back,
            an_overlapping_assignment_of_the_same_contractor_is_contractor_busy_and_writes_nothing,
            touching_assignments_of_the_same_contractor_are_allowed,
            a_jobs_assignment_is_found_by_the_job_and_an_unassigned_job_has_none,
            a_contractors_assignments_are_listed_newest_first_with_their_jobs_up_to_the_limit,
            claim_due_hands_out_pending_rows_in_commit_order_with_increasing_sequences_up_to_the_limit,
            claiming_again_gives_the_same_rows_new_higher_sequences_never_reused,
            claim_due_only_takes_rows_whose_time_has_come,
            mark_published_records_the_sequence_groups_and_time,
            mark_published_with_the_sequence_of_an_older_claim_changes_nothing,
            claim_takes_the_given_rows_in_the_given_order_and_skips_rows_no_longer_pending,
            a_failure_with_a_retry_time_keeps_the_row_pending_and_not_due_until_then,
            a_failure_without_a_retry_time_marks_the_row_failed_for_good,
            listing_after_a_sequence_returns_only_later_published_rows_in_publish_order,
            listing_by_status_returns_only_rows_with_that_status,
            listing_without_a_bound_shows_published_rows_by_sequence_then_the_rest_by_commit_order,
            replay_returns_only_the_groups_events_after_a_sequence_in_order_up_to_the_limit,
            an_idempotency_key_is_stored_with_its_assignment_and_found_again,
            a_live_idempotency_key_cannot_be_taken_twice_but_an_expired_one_can,
            retrying_a_failed_event_makes_it_pending_and_due_with_attempts_reset,
            purging_deletes_old_published_rows_only_and_raises_the_watermark,
            highest_published_is_the_top_published_sequence_and_ignores_claimed_rows,
            held_sequences_are_those_of_claimed_and_published_rows_never_of_failed_or_reclaimed_attempts,
            an_assignment_reads_back_with_its_deadline_by_id_and_by_its_event,
            the_first_acknowledgement_is_recorded_with_its_event_and_a_repeat_writes_nothing,
            overdue_assignments_are_listed_by_deadline_and_each_escalation_is_logged_once,
        );
        $crate::support::store_suite!(@multi $backend;
            twenty_concurrent_assignments_of_one_job_commit_exactly_one,
            twenty_concurrent_overlapping_assignments_of_one_contractor_commit_exactly_one,
            twenty_concurrent_back_to_back_assignments_of_one_contractor_all_commit,
            a_concurrent_burst_of_good_and_refused_assignments_gives_each_its_own_outcome,
            ten_concurrent_escalations_of_one_assignment_log_exactly_one,
        );
    };
    (@current $backend:ty; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                $crate::support::$name::<$backend>().await;
            }
        )*
    };
    (@multi $backend:ty; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                $crate::support::$name::<$backend>().await;
            }
        )*
    };
}
pub(crate) use store_suite;

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// A fresh database, the store under test on it, and a separate raw
/// connection used only to count rows.
pub struct Db<B: Backend> {
    /// The store under test.
    pub store: B::Store,
    /// The raw connection.
    pub raw: B::Raw,
    /// Last, so it is dropped after the connections (the PostgreSQL suite
    /// also takes the database's URL from it).
    pub guard: B::Guard,
}

/// How many rows the tables written by `commit_assignment` hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub assignments: i64,
    pub events: i64,
    pub event_groups: i64,
}

impl<B: Backend> Db<B> {
    pub async fn count(&self, table: &str) -> i64 {
        B::count(&self.raw, table).await
    }

    pub async fn counts(&self) -> Counts {
        Counts {
            assignments: self.count("assignments").await,
            events: self.count("event_log").await,
            event_groups: self.count("event_groups").await,
        }
    }

    pub async fn add_contractor(&self, name: &str, region_name: &str) -> Contractor {
        let c = contractor(name, region_name, Timestamp::now());
        ContractorRepository::insert(&self.store, &c).await.expect("insert contractor");
        c
    }

    pub async fn add_job(&self, region_name: &str) -> Job {
        let j = job(region_name, Timestamp::now());
        JobRepository::insert(&self.store, &j).await.expect("insert job");
        j
    }

    /// Assigns `job` (as stored, unassigned) and expects the commit to succeed.
    pub async fn assign(&self, job: &Job, contractor: &Contractor, range: TimeRange) -> DomainEvent {
        let (assigned, assignment, event) = plan(job, contractor, range);
        self.store.commit_assignment(&assigned, &assignment, &event, None).await.expect("the assignment commits");
        event
    }

    /// `n` committed events, in this commit order (one contractor, `n` north
    /// jobs, back-to-back hours).
    pub async fn commit_events(&self, n: i64) -> Vec<DomainEvent> {
        let c = self.add_contractor("Ana", "north").await;
        let mut events = Vec::new();
        for i in 0..n {
            let j = self.add_job("north").await;
            events.push(self.assign(&j, &c, range(i * 60, i * 60 + 60)).await);
        }
        events
    }

    pub async fn stored_job(&self, id: JobId) -> Job {
        JobRepository::get(&self.store, id).await.expect("get job").expect("the job exists")
    }

    pub async fn entry(&self, id: EventId) -> EventLogEntry {
        EventLog::get(&self.store, id).await.expect("get event").expect("the event is logged")
    }

    pub async fn list(
        &self,
        after_sequence: Option<Sequence>,
        status: Option<EventStatus>,
        limit: u32,
    ) -> Vec<EventLogEntry> {
        EventLog::list(&self.store, EventQuery { after_sequence, status, limit }).await.expect("list events")
    }

    pub async fn all_events(&self) -> Vec<EventLogEntry> {
        self.list(None, None, 100).await
    }
}

pub fn region(name: &str) -> Region {
    Region::new(name).expect("a valid region")
}

pub fn contractor(name: &str, region_name: &str, created: Timestamp) -> Contractor {
    Contractor::create(
        PersonName::new(name).expect("a valid name"),
        region(region_name),
        vec![Skill::new("tile").expect("a valid skill"), Skill::new("vinyl").expect("a valid skill")],
        created,
    )
    .expect("a valid contractor")
}

pub fn job(region_name: &str, created: Timestamp) -> Job {
    Job::create(
        JobType::new("Flooring").expect("a valid job type"),
        Some(Title::new("Kitchen").expect("a valid title")),
        region(region_name),
        DurationMinutes::new(120).expect("a valid duration"),
        None,
        None,
        created,
    )
}

/// `minutes` after 2030-01-01T10:00:00Z.
pub fn at(minutes: i64) -> Timestamp {
    Timestamp::parse_rfc3339("t", "2030-01-01T10:00:00Z").expect("a valid time").plus_millis(minutes * 60_000)
}

/// `[at(from), at(to))`.
pub fn range(from: i64, to: i64) -> TimeRange {
    TimeRange::new(at(from), at(to)).expect("a valid range")
}

/// What the application builds before committing: the job as Assigned, the
/// assignment and its event. `job` itself is left untouched (unassigned).
pub fn plan(job: &Job, contractor: &Contractor, range: TimeRange) -> (Job, Assignment, DomainEvent) {
    let mut job = job.clone();
    let request =
        NewAssignment { contractor_id: contractor.id(), range, source: AssignmentSource::Manual, audit_id: None };
    let (assignment, event) =
        job.assign(contractor, request, Timestamp::now()).expect("an unassigned job can be assigned");
    (job, assignment, DomainEvent::from(event))
}

pub fn event_ids(claimed: &[ClaimedEvent]) -> Vec<EventId> {
    claimed.iter().map(|c| c.event.event_id()).collect()
}

pub fn sequences(claimed: &[ClaimedEvent]) -> Vec<Sequence> {
    claimed.iter().map(|c| c.sequence).collect()
}

pub fn ids_of(events: &[DomainEvent]) -> Vec<EventId> {
    events.iter().map(DomainEvent::event_id).collect()
}

pub fn entry_ids(entries: &[EventLogEntry]) -> Vec<EventId> {
    entries.iter().map(|e| e.event_id).collect()
}

/// The rows to mark Published after every handler took `claimed`.
pub fn published(claimed: &[ClaimedEvent]) -> Vec<PublishedRow> {
    claimed
        .iter()
        .map(|c| PublishedRow { event_id: c.event.event_id(), sequence: c.sequence, groups: c.event.audience() })
        .collect()
}

pub fn assert_strictly_increasing(sequences: &[Sequence]) {
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "sequences must strictly increase: {sequences:?}");
}

/// Far enough in the future that every committed event is due.
pub fn later() -> Timestamp {
    Timestamp::now().plus_millis(1_000)
}

// ---------------------------------------------------------------------------
// Contractors and jobs
// ---------------------------------------------------------------------------

pub async fn a_stored_contractor_reads_back_unchanged<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let ana = contractor("Ana", "north", at(0));
    ContractorRepository::insert(&db.store, &ana).await.unwrap();

    let read = ContractorRepository::get(&db.store, ana.id()).await.unwrap();

    assert_eq!(read, Some(ana));
}

pub async fn contractors_are_listed_oldest_first_by_region_up_to_the_limit<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let a = contractor("Ana", "north", at(1));
    let b = contractor("Bo", "south", at(2));
    let c = contractor("Cy", "north", at(3));
    // Inserted out of creation order: the listing must sort, not echo inserts.
    for x in [&c, &a, &b] {
        ContractorRepository::insert(&db.store, x).await.unwrap();
    }

    let all = ContractorRepository::list(&db.store, None, 10).await.unwrap();
    let north = ContractorRepository::list(&db.store, Some(region("north")), 10).await.unwrap();
    let first_two = ContractorRepository::list(&db.store, None, 2).await.unwrap();
    let first_north = ContractorRepository::list(&db.store, Some(region("north")), 1).await.unwrap();
    let nowhere = ContractorRepository::list(&db.store, Some(region("west")), 10).await.unwrap();

    assert_eq!(all, vec![a.clone(), b.clone(), c.clone()]);
    assert_eq!(north, vec![a.clone(), c]);
    assert_eq!(first_two, vec![a.clone(), b]);
    assert_eq!(first_north, vec![a]);
    assert!(nowhere.is_empty());
}

pub async fn a_stored_job_reads_back_unchanged_with_or_without_optional_fields<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let bare = job("north", at(0));
    let full = Job::create(
        JobType::new("Tile").unwrap(),
        Some(Title::new("Bathroom floor").unwrap()),
        region("east-2"),
        DurationMinutes::new(90).unwrap(),
        Some(at(120)),
        Some(Address::new("1 Main St, Springfield").unwrap()),
        at(1),
    );
    let untitled = Job::create(
        JobType::new("Vinyl").unwrap(),
        None,
        region("south"),
        DurationMinutes::new(30).unwrap(),
        None,
        None,
        at(2),
    );
    for j in [&bare, &full, &untitled] {
        JobRepository::insert(&db.store, j).await.unwrap();
    }

    for j in [bare, full, untitled] {
        assert_eq!(JobRepository::get(&db.store, j.id()).await.unwrap(), Some(j));
    }
}

pub async fn getting_an_unknown_contractor_or_job_returns_none<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    db.add_contractor("Ana", "north").await;
    db.add_job("north").await;

    assert_eq!(ContractorRepository::get(&db.store, ContractorId::new()).await.unwrap(), None);
    assert_eq!(JobRepository::get(&db.store, JobId::new()).await.unwrap(), None);
}

pub async fn jobs_are_listed_oldest_first_by_region_and_status_up_to_the_limit<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let n1 = job("north", at(1));
    let s1 = job("south", at(2));
    let n2 = job("north", at(3));
    let s2 = job("south", at(4));
    for j in [&s2, &n2, &s1, &n1] {
        JobRepository::insert(&db.store, j).await.unwrap();
    }
    let ana = db.add_contractor("Ana", "north").await;
    let (n2, assignment, event) = plan(&n2, &ana, range(0, 60));
    db.store.commit_assignment(&n2, &assignment, &event, None).await.unwrap();
    let list = |region_name: Option<&str>, status: Option<JobStatus>, limit: u32| {
        let filter = JobFilter { region: region_name.map(region), status, limit };
        JobRepository::list(&db.store, filter)
    };

    assert_eq!(list(None, None, 10).await.unwrap(), vec![n1.clone(), s1.clone(), n2.clone(), s2.clone()]);
    assert_eq!(list(Some("north"), None, 10).await.unwrap(), vec![n1.clone(), n2.clone()]);
    assert_eq!(list(None, Some(JobStatus::Unassigned), 10).await.unwrap(), vec![n1.clone(), s1.clone(), s2.clone()]);
    assert_eq!(list(None, Some(JobStatus::Assigned), 10).await.unwrap(), vec![n2.clone()]);
    assert_eq!(list(Some("north"), Some(JobStatus::Unassigned), 10).await.unwrap(), vec![n1.clone()]);
    assert_eq!(list(Some("south"), Some(JobStatus::Assigned), 10).await.unwrap(), vec![]);
    assert_eq!(list(None, None, 2).await.unwrap(), vec![n1, s1.clone()]);
    assert_eq!(list(Some("south"), None, 1).await.unwrap(), vec![s1]);
}

// ---------------------------------------------------------------------------
// commit_assignment
// ---------------------------------------------------------------------------

pub async fn committing_an_assignment_marks_the_job_assigned_and_logs_one_pending_event<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let ana = db.add_contractor("Ana", "north").await;
    let unassigned = db.add_job("north").await;
    let (assigned, assignment, event) = plan(&unassigned, &ana, range(0, 120));

    db.store.commit_assignment(&assigned, &assignment, &event, None).await.unwrap();

    let stored = db.stored_job(unassigned.id()).await;
    assert_eq!(stored.status(), JobStatus::Assigned);
    assert_eq!(stored, assigned);
    assert_eq!(db.counts().await, Counts { assignments: 1, events: 1, event_groups: 2 });

    let listed = db.all_events().await;
    assert_eq!(listed.len(), 1);
    let entry = &listed[0];
    assert_eq!(entry.event_id, event.event_id());
    assert_eq!(entry.event_id, assignment.event_id());
    assert_eq!(entry.event_type, "JobAssigned");
    assert_eq!(entry.status, EventStatus::Pending);
    assert_eq!(entry.sequence, None);
    assert_eq!(entry.attempts, 0);
    assert_eq!(entry.occurred_at_utc, event.occurred_at_utc());
    assert_eq!(entry.published_at_utc, None);
    assert!(entry.published_groups.is_empty());
    assert_eq!(entry.last_error, None);
    assert_eq!(entry.payload.event, event);
    assert_eq!(entry.payload.sequence, None);
    assert_eq!(&db.entry(event.event_id()).await, entry);
}

// ---------------------------------------------------------------------------
// Reading assignments
// ---------------------------------------------------------------------------

pub async fn a_jobs_assignment_is_found_by_the_job_and_an_unassigned_job_has_none<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let ana = db.add_contractor("Ana", "north").await;
    let assigned = db.add_job("north").await;
    let unassigned = db.add_job("north").await;
    let (job, assignment, event) = plan(&assigned, &ana, range(0, 60));
    db.store.commit_assignment(&job, &assignment, &event, None).await.unwrap();

    assert_eq!(AssignmentRepository::of_job(&db.store, assigned.id()).await.unwrap(), Some(assignment));
    assert_eq!(AssignmentRepository::of_job(&db.store, unassigned.id()).await.unwrap(), None);
    assert_eq!(AssignmentRepository::of_job(&db.store, JobId::new()).await.unwrap(), None);
}

pub async fn a_contractors_assignments_are_listed_newest_first_with_their_jobs_up_to_the_limit<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let ana = db.add_contractor("Ana", "north").await;
    let bo = db.add_contractor("Bo", "north").await;
    // Committed out of creation order, so the listing cannot pass by following commit order.
    let mut committed = Vec::new();
    for (created, hour) in [(20, 1), (10, 0), (30, 2)] {
        let mut job = db.add_job("north").await;
        let request = NewAssignment {
            contractor_id: ana.id(),
            range: range(hour * 60, hour * 60 + 60),
            source: AssignmentSource::Manual,
            audit_id: None,
        };
        let (assignment, event) = job.assign(&ana, request, at(created)).unwrap();
        db.store.commit_assignment(&job, &assignment, &DomainEvent::from(event), None).await.unwrap();
        committed.push((created, assignment, job));
    }
    let bos_job = db.add_job("north").await;
    db.assign(&bos_job, &bo, range(0, 60)).await;
    committed.sort_by_key(|(created, _, _)| -created);
    let newest_first: Vec<(Assignment, Job)> = committed.into_iter().map(|(_, a, j)| (a, j)).collect();

    let all = AssignmentRepository::of_contractor(&db.store, ana.id(), 10).await.unwrap();
    let first_two = AssignmentRepository::of_contractor(&db.store, ana.id(), 2).await.unwrap();
    let nobodys = AssignmentRepository::of_contractor(&db.store, ContractorId::new(), 10).await.unwrap();

    assert_eq!(all, newest_first);
    assert!(all.iter().all(|(_, job)| job.status() == JobStatus::Assigned));
    assert_eq!(first_two, newest_first[..2].to_vec());
    assert!(nobodys.is_empty());
}

pub async fn a_second_assignment_of_the_same_job_is_refused_and_writes_nothing<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let ana = db.add_contractor("Ana", "north").await;
    let bo = db.add_contractor("Bo", "north").await;
    let unassigned = db.add_job("north").await;
    let first = db.assign(&unassigned, &ana, range(0, 60)).await;
    let before = db.counts().await;
    let first_job = db.stored_job(unassigned.id()).await;

    // Built from the stale, unassigned copy, as a racing request would.
    let (job2, assignment2, event2) = plan(&unassigned, &bo, range(120, 180));
    let result = db.store.commit_assignment(&job2, &assignment2, &event2, None).await;

    assert_eq!(result, Err(CommitAssignmentError::JobAlreadyAssigned));
    assert_eq!(db.counts().await, before);
    assert_eq!(entry_ids(&db.all_events().await), vec![first.event_id()]);
    assert_eq!(EventLog::get(&db.store, event2.event_id()).await.unwrap(), None);
    assert_eq!(db.stored_job(unassigned.id()).await, first_job);
}

pub async fn assigning_a_job_that_is_not_stored_is_job_not_found_and_writes_nothing<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let ana = db.add_contractor("Ana", "north").await;
    let never_stored = job("north", Timestamp::now());
    let (assigned, assignment, event) = plan(&never_stored, &ana, range(0, 60));

    let result = db.store.commit_assignment(&assigned, &assignment, &event, None).await;

    assert_eq!(result, Err(CommitAssignmentError::JobNotFound));
    assert_eq!(db.counts().await, Counts { assignments: 0, events: 0, event_groups: 0 });
    assert_eq!(JobRepository::get(&db.store, never_stored.id()).await.unwrap(), None);
}

pub async fn assigning_to_a_contractor_that_is_not_stored_is_refused_and_rolls_the_job_back<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let ghost = contractor("Ghost", "north", Timestamp::now());
    let unassigned = db.add_job("north").await;
    let (assigned, assignment, event) = plan(&unassigned, &ghost, range(0, 60));

    let result = db.store.commit_assignment(&assigned, &assignment, &event, None).await;

    assert_eq!(result, Err(CommitAssignmentError::ContractorNotFound));
    assert_eq!(db.stored_job(unassigned.id()).await.status(), JobStatus::Unassigned);
    assert_eq!(db.counts().await, Counts { assignments: 0, events: 0, event_groups: 0 });
    // The job's update was rolled back on the writer too: it can still be
    // assigned to a real contractor.
    let ana = db.add_contractor("Ana", "north").await;
    let event = db.assign(&unassigned, &ana, range(0, 60)).await;
    assert_eq!(db.stored_job(unassigned.id()).await.status(), JobStatus::Assigned);
    assert_eq!(entry_ids(&db.all_events().await), vec![event.event_id()]);
}

pub async fn an_overlapping_assignment_of_the_same_contractor_is_contractor_busy_and_writes_nothing<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let ana = db.add_contractor("Ana", "north").await;
    let booked = db.add_job("north").await;
    db.assign(&booked, &ana, range(0, 120)).await; // 10:00-12:00
    let other = db.add_job("north").await;
    let before = db.counts().await;

    let overlapping = [
        ("the same range", range(0, 120)),
        ("starting inside", range(60, 180)),
        ("ending inside", range(-60, 30)),
        ("contained", range(30, 60)),
        ("containing", range(-60, 180)),
        ("one minute over the end", range(119, 180)),
    ];
    for (what, r) in overlapping {
        let (assigned, assignment, event) = plan(&other, &ana, r);
        let result = db.store.commit_assignment(&assigned, &assignment, &event, None).await;
        assert_eq!(result, Err(CommitAssignmentError::ContractorBusy), "{what}");
        assert_eq!(db.stored_job(other.id()).await.status(), JobStatus::Unassigned, "{what}");
        assert_eq!(db.counts().await, before, "{what}");
    }
}

pub async fn touching_assignments_of_the_same_contractor_are_allowed<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let ana = db.add_contractor("Ana", "north").await;
    let middle = db.add_job("north").await;
    let after = db.add_job("north").await;
    let before = db.add_job("north").await;
    db.assign(&middle, &ana, range(0, 120)).await; // 10:00-12:00

    let (j, a, e) = plan(&after, &ana, range(120, 180)); // 12:00-13:00
    assert_eq!(db.store.commit_assignment(&j, &a, &e, None).await, Ok(()));
    let (j, a, e) = plan(&before, &ana, range(-60, 0)); // 09:00-10:00
    assert_eq!(db.store.commit_assignment(&j, &a, &e, None).await, Ok(()));

    assert_eq!(db.counts().await, Counts { assignments: 3, events: 3, event_groups: 6 });
    for j in [middle, after, before] {
        assert_eq!(db.stored_job(j.id()).await.status(), JobStatus::Assigned);
    }
}

pub async fn twenty_concurrent_assignments_of_one_job_commit_exactly_one<B: Backend>() {
    const RACERS: usize = 20;
    let Some(db) = B::fresh().await else {
        return;
    };
    let unassigned = db.add_job("north").await;
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut tasks = Vec::new();
    for i in 0..RACERS {
        let c = db.add_contractor(&format!("Contractor {i}"), "north").await;
        let (assigned, assignment, event) = plan(&unassigned, &c, range(0, 60));
        let store = db.store.clone();
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let result = store.commit_assignment(&assigned, &assignment, &event, None).await;
            (result, event.event_id())
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("the task does not panic"));
    }

    let winners: Vec<EventId> = results.iter().filter(|(r, _)| r.is_ok()).map(|(_, id)| *id).collect();
    assert_eq!(winners.len(), 1, "exactly one commit succeeds: {results:?}");
    for (result, _) in results.iter().filter(|(r, _)| r.is_err()) {
        assert_eq!(result, &Err(CommitAssignmentError::JobAlreadyAssigned));
    }
    assert_eq!(entry_ids(&db.all_events().await), winners);
    assert_eq!(db.counts().await, Counts { assignments: 1, events: 1, event_groups: 2 });
    assert_eq!(db.stored_job(unassigned.id()).await.status(), JobStatus::Assigned);
}

pub async fn twenty_concurrent_overlapping_assignments_of_one_contractor_commit_exactly_one<B: Backend>() {
    const RACERS: usize = 20;
    let Some(db) = B::fresh().await else {
        return;
    };
    let ana = db.add_contractor("Ana", "north").await;
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut tasks = Vec::new();
    for i in 0..RACERS {
        let j = db.add_job("north").await;
        // Every range overlaps every other: they all hold 10:00-10:40.
        let start = -(i as i64);
        let (assigned, assignment, event) = plan(&j, &ana, range(start, start + 60));
        let store = db.store.clone();
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let result = store.commit_assignment(&assigned, &assignment, &event, None).await;
            (result, assigned.id(), event.event_id())
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("the task does not panic"));
    }

    let winners: Vec<(JobId, EventId)> =
        results.iter().filter(|(r, _, _)| r.is_ok()).map(|(_, job, event)| (*job, *event)).collect();
    assert_eq!(winners.len(), 1, "exactly one commit succeeds: {results:?}");
    for (result, job_id, _) in &results {
        if result.is_err() {
            assert_eq!(result, &Err(CommitAssignmentError::ContractorBusy));
            assert_eq!(db.stored_job(*job_id).await.status(), JobStatus::Unassigned);
        }
    }
    assert_eq!(db.stored_job(winners[0].0).await.status(), JobStatus::Assigned);
    assert_eq!(entry_ids(&db.all_events().await), vec![winners[0].1]);
    assert_eq!(db.counts().await, Counts { assignments: 1, events: 1, event_groups: 2 });
}

pub async fn twenty_concurrent_back_to_back_assignments_of_one_contractor_all_commit<B: Backend>() {
    const RACERS: usize = 20;
    let Some(db) = B::fresh().await else {
        return;
    };
    let ana = db.add_contractor("Ana", "north").await;
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut tasks = Vec::new();
    for i in 0..RACERS as i64 {
        let j = db.add_job("north").await;
        let (assigned, assignment, event) = plan(&j, &ana, range(i * 60, i * 60 + 60));
        let store = db.store.clone();
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store.commit_assignment(&assigned, &assignment, &event, None).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("the task does not panic"), Ok(()));
    }

    let n = RACERS as i64;
    assert_eq!(db.counts().await, Counts { assignments: n, events: n, event_groups: 2 * n });
    let claimed = db.store.claim_due(later(), 100, Fence::Unfenced).await.unwrap();
    assert_eq!(claimed.len(), RACERS);
    assert_eq!(
        sequences(&claimed),
        (1..=n).map(Sequence).collect::<Vec<_>>(),
        "one block of sequences, in commit order"
    );
}

// ---------------------------------------------------------------------------
// EventLog
// ---------------------------------------------------------------------------

pub async fn claim_due_hands_out_pending_rows_in_commit_order_with_increasing_sequences_up_to_the_limit<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let events = db.commit_events(3).await;

    let claimed = db.store.claim_due(later(), 2, Fence::Unfenced).await.unwrap();

    assert_eq!(event_ids(&claimed), ids_of(&events[..2]));
    assert_eq!(sequences(&claimed), vec![Sequence(1), Sequence(2)]);
    assert!(claimed.iter().all(|c| c.attempts == 0));
    assert_eq!(claimed[0].event, events[0]);
}

pub async fn claiming_again_gives_the_same_rows_new_higher_sequences_never_reused<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let events = db.commit_events(3).await;

    let first = db.store.claim_due(later(), 2, Fence::Unfenced).await.unwrap();
    let second = db.store.claim_due(later(), 10, Fence::Unfenced).await.unwrap();
    let third = db.store.claim_due(later(), 10, Fence::Unfenced).await.unwrap();

    assert_eq!(event_ids(&second), ids_of(&events));
    assert_eq!(event_ids(&third), ids_of(&events));
    let all: Vec<Sequence> = [&first, &second, &third].into_iter().flat_map(|c| sequences(c)).collect();
    assert_strictly_increasing(&all);
    assert_eq!(sequences(&second), vec![Sequence(3), Sequence(4), Sequence(5)]);
    // Claimed but unpublished rows show no sequence.
    for entry in db.all_events().await {
        assert_eq!(entry.status, EventStatus::Pending);
        assert_eq!(entry.sequence, None);
        assert_eq!(entry.payload.sequence, None);
    }
}

pub async fn claim_due_only_takes_rows_whose_time_has_come<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let events = db.commit_events(2).await;
    // New rows are due at once, even for a publisher whose clock is a
    // minute behind the node that committed them.
    let behind = Timestamp::now().plus_millis(-60_000);
    let claimed = db.store.claim_due(behind, 10, Fence::Unfenced).await.unwrap();
    assert_eq!(claimed.len(), 2);
    // A failed row waits for its retry time.
    let retry_at = Timestamp::now().plus_millis(60_000);
    db.store.record_failure(events[0].event_id(), "boom".into(), Some(retry_at), Fence::Unfenced).await.unwrap();
    assert_eq!(
        event_ids(&db.store.claim_due(Timestamp::now(), 10, Fence::Unfenced).await.unwrap()),
        vec![events[1].event_id()]
    );
    assert_eq!(db.store.claim_due(retry_at, 10, Fence::Unfenced).await.unwrap().len(), 2);
}

pub async fn mark_published_records_the_sequence_groups_and_time<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let events = db.commit_events(2).await;
    let claimed = db.store.claim_due(later(), 10, Fence::Unfenced).await.unwrap();
    let at_publish = at(500);

    db.store.mark_published(published(&claimed), at_publish, Fence::Unfenced).await.unwrap();

    for (event, claim) in events.iter().zip(&claimed) {
        let entry = db.entry(event.event_id()).await;
        assert_eq!(entry.status, EventStatus::Published);
        assert_eq!(entry.sequence, Some(claim.sequence));
        assert_eq!(entry.payload.sequence, Some(claim.sequence));
        assert_eq!(entry.payload.event, *event);
        assert_eq!(entry.published_at_utc, Some(at_publish));
        assert_eq!(entry.published_groups, event.audience());
        assert_eq!(entry.attempts, 1);
        assert_eq!(entry.last_error, None);
    }
    let listed = db.all_events().await;
    assert_eq!(
        listed.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        claimed.iter().map(|c| Some(c.sequence)).collect::<Vec<_>>()
    );
    assert!(
        db.store.claim_due(later(), 10, Fence::Unfenced).await.unwrap().is_empty(),
        "published rows are not due again"
    );
}

pub async fn mark_published_with_the_sequence_of_an_older_claim_changes_nothing<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let events = db.commit_events(1).await;
    let stale = db.store.claim_due(later(), 10, Fence::Unfenced).await.unwrap();
    let current = db.store.claim_due(later(), 10, Fence::Unfenced).await.unwrap();

    db.store.mark_published(published(&stale), at(500), Fence::Unfenced).await.unwrap();
    assert_eq!(db.entry(events[0].event_id()).await.status, EventStatus::Pending);

    db.store.mark_published(published(&current), at(501), Fence::Unfenced).await.unwrap();
    let entry = db.entry(events[0].event_id()).await;
    assert_eq!(entry.status, EventStatus::Published);
    assert_eq!(entry.sequence, Some(current[0].sequence));
    assert_eq!(entry.published_at_utc, Some(at(501)));
}

pub async fn held_sequences_are_those_of_claimed_and_published_rows_never_of_failed_or_reclaimed_attempts<
    B: Backend,
>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    db.commit_events(4).await;
    let claimed = db.store.claim_due(later(), 10, Fence::Unfenced).await.unwrap();
    let (first, last) = (claimed[0].sequence, claimed[3].sequence);
    assert_eq!(db.store.held_sequences(first, last).await.unwrap(), sequences(&claimed));

    // A published row keeps its sequence; a failed attempt (with or without
    // a retry) or a claim taken again gives it up: nothing can fill it now.
    db.store.mark_published(published(&claimed[..1]), at(500), Fence::Unfenced).await.unwrap();
    let [done, retried, failed, reclaimed] = &claimed[..] else { unreachable!() };
    let retry_at = Some(later());
    db.store.record_failure(retried.event.event_id(), "boom".into(), retry_at, Fence::Unfenced).await.unwrap();
    db.store.record_failure(failed.event.event_id(), "boom".into(), None, Fence::Unfenced).await.unwrap();
    assert_eq!(db.store.held_sequences(first, last).await.unwrap(), vec![done.sequence, reclaimed.sequence]);
    let again = db.store.claim(vec![reclaimed.event.clone()], Fence::Unfenced).await.unwrap();
    assert_eq!(db.store.held_sequences(first, last).await.unwrap(), vec![done.sequence]);
    assert_eq!(db.store.held_sequences(again[0].sequence, again[0].sequence).await.unwrap(), sequences(&again));
}

pub async fn claim_takes_the_given_rows_in_the_given_order_and_skips_rows_no_longer_pending<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let events = db.commit_events(4).await;
    let done = db.store.claim(vec![events[0].clone()], Fence::Unfenced).await.unwrap();
    db.store.mark_published(published(&done), at(500), Fence::Unfenced).await.unwrap();
    let failing = db.store.claim(vec![events[1].clone()], Fence::Unfenced).await.unwrap();
    db.store.record_failure(failing[0].event.event_id(), "gave up".into(), None, Fence::Unfenced).await.unwrap();

    let claimed = db.store.claim(events.iter().rev().cloned().collect(), Fence::Unfenced).await.unwrap();

    assert_eq!(event_ids(&claimed), vec![events[3].event_id(), events[2].event_id()]);
    let seqs = sequences(&claimed);
    assert_strictly_increasing(&seqs);
    assert!(seqs[0] > failing[0].sequence, "sequences continue after the last used");
    let published_entry = db.entry(events[0].event_id()).await;
    assert_eq!(published_entry.sequence, Some(done[0].sequence), "a skipped published row keeps its sequence");
}

pub async fn a_failure_with_a_retry_time_keeps_the_row_pending_and_not_due_until_then<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let events = db.commit_events(1).await;
    let id = events[0].event_id();
    let now = later();
    assert_eq!(event_ids(&db.store.claim_due(now, 10, Fence::Unfenced).await.unwrap()), vec![id]);
    let retry_at = now.plus_millis(60_000);

    db.store.record_failure(id, "boom".into(), Some(retry_at), Fence::Unfenced).await.unwrap();

    let entry = db.entry(id).await;
    assert_eq!(entry.status, EventStatus::Pending);
    assert_eq!(entry.attempts, 1);
    assert_eq!(entry.last_error.as_deref(), Some("boom"));
    assert_eq!(entry.sequence, None);
    assert_eq!(entry.published_at_utc, None);
    assert!(db.store.claim_due(now, 10, Fence::Unfenced).await.unwrap().is_empty());
    assert!(db.store.claim_due(retry_at.plus_millis(-1), 10, Fence::Unfenced).await.unwrap().is_empty());
    let retried = db.store.claim_due(retry_at, 10, Fence::Unfenced).await.unwrap();
    assert_eq!(event_ids(&retried), vec![id]);
    assert_eq!(retried[0].attempts, 1);
}

pub async fn a_failure_without_a_retry_time_marks_the_row_failed_for_good<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let events = db.commit_events(2).await;
    let id = events[0].event_id();
    db.store.claim_due(later(), 10, Fence::Unfenced).await.unwrap();

    db.store.record_failure(id, "boom".into(), None, Fence::Unfenced).await.unwrap();

    let entry = db.entry(id).await;
    assert_eq!(entry.status, EventStatus::Failed);
    assert_eq!(entry.attempts, 1);
    assert_eq!(entry.last_error.as_deref(), Some("boom"));
    assert_eq!(entry.sequence, None);
    let far_future = Timestamp::now().plus_millis(365 * 24 * 3_600_000);
    assert_eq!(
        event_ids(&db.store.claim_due(far_future, 10, Fence::Unfenced).await.unwrap()),
        vec![events[1].event_id()]
    );
    assert!(db.store.claim(vec![events[0].clone()], Fence::Unfenced).await.unwrap().is_empty());
}

pub async fn listing_after_a_sequence_returns_only_later_published_rows_in_publish_order<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let e = db.commit_events(4).await;
    // Publish order differs from commit order: 2, 0, 1; row 3 stays Pending
    // though it was claimed (so it has a sequence internally).
    let claimed = db.store.claim(vec![e[2].clone(), e[0].clone(), e[1].clone()], Fence::Unfenced).await.unwrap();
    db.store.mark_published(published(&claimed), at(500), Fence::Unfenced).await.unwrap();
    let unpublished = db.store.claim(vec![e[3].clone()], Fence::Unfenced).await.unwrap();
    assert!(unpublished[0].sequence > claimed[2].sequence);
    let s = sequences(&claimed);

    let from_start = db.list(Some(Sequence(0)), None, 100).await;
    let after_first = db.list(Some(s[0]), None, 100).await;
    let limited = db.list(Some(Sequence(0)), None, 2).await;
    let after_last = db.list(Some(s[2]), None, 100).await;

    assert_eq!(entry_ids(&from_start), vec![e[2].event_id(), e[0].event_id(), e[1].event_id()]);
    assert_eq!(
        from_start.iter().map(|x| x.sequence).collect::<Vec<_>>(),
        s.iter().copied().map(Some).collect::<Vec<_>>()
    );
    assert!(from_start.iter().all(|x| x.status == EventStatus::Published));
    assert_eq!(entry_ids(&after_first), vec![e[0].event_id(), e[1].event_id()]);
    assert_eq!(entry_ids(&limited), vec![e[2].event_id(), e[0].event_id()]);
    assert!(after_last.is_empty(), "the claimed but unpublished row is not listed after a sequence");
}

pub async fn listing_by_status_returns_only_rows_with_that_status<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let e = db.commit_events(4).await;
    let done = db.store.claim(vec![e[1].clone()], Fence::Unfenced).await.unwrap();
    db.store.mark_published(published(&done), at(500), Fence::Unfenced).await.unwrap();
    db.store.record_failure(e[2].event_id(), "boom".into(), None, Fence::Unfenced).await.unwrap();

    let pending = db.list(None, Some(EventStatus::Pending), 100).await;
    let published_rows = db.list(None, Some(EventStatus::Published), 100).await;
    let failed = db.list(None, Some(EventStatus::Failed), 100).await;
    let pending_after = db.list(Some(Sequence(0)), Some(EventStatus::Pending), 100).await;
    let published_after = db.list(Some(Sequence(0)), Some(EventStatus::Published), 100).await;
    let one_pending = db.list(None, Some(EventStatus::Pending), 1).await;

    assert_eq!(entry_ids(&pending), vec![e[0].event_id(), e[3].event_id()]);
    assert!(pending.iter().all(|x| x.status == EventStatus::Pending));
    assert_eq!(entry_ids(&published_rows), vec![e[1].event_id()]);
    assert_eq!(published_rows[0].status, EventStatus::Published);
    assert_eq!(entry_ids(&failed), vec![e[2].event_id()]);
    assert_eq!(failed[0].status, EventStatus::Failed);
    assert!(pending_after.is_empty(), "only published rows have a sequence to list after");
    assert_eq!(entry_ids(&published_after), vec![e[1].event_id()]);
    assert_eq!(entry_ids(&one_pending), vec![e[0].event_id()]);
}

pub async fn listing_without_a_bound_shows_published_rows_by_sequence_then_the_rest_by_commit_order<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let e = db.commit_events(4).await;
    // Published in the order 2, 0; row 1 failed for good; row 3 is Pending.
    let claimed = db.store.claim(vec![e[2].clone(), e[0].clone()], Fence::Unfenced).await.unwrap();
    db.store.mark_published(published(&claimed), at(500), Fence::Unfenced).await.unwrap();
    db.store.record_failure(e[1].event_id(), "boom".into(), None, Fence::Unfenced).await.unwrap();

    let listed = db.all_events().await;

    assert_eq!(entry_ids(&listed), vec![e[2].event_id(), e[0].event_id(), e[1].event_id(), e[3].event_id()]);
    assert_eq!(entry_ids(&db.list(None, None, 3).await), vec![e[2].event_id(), e[0].event_id(), e[1].event_id()]);
}

// ---------------------------------------------------------------------------
// replay
// ---------------------------------------------------------------------------

pub async fn replay_returns_only_the_groups_events_after_a_sequence_in_order_up_to_the_limit<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let ana = db.add_contractor("Ana", "north").await;
    let bo = db.add_contractor("Bo", "south").await;
    let mut events = Vec::new();
    // (job region, contractor): north gets 0, 2, 4; Ana gets 0, 3, 4.
    for (i, (job_region, who)) in
        [("north", &ana), ("south", &bo), ("north", &bo), ("south", &ana), ("north", &ana)].into_iter().enumerate()
    {
        let j = db.add_job(job_region).await;
        let start = i as i64 * 60;
        events.push(db.assign(&j, who, range(start, start + 60)).await);
    }
    let claimed = db.store.claim_due(later(), 10, Fence::Unfenced).await.unwrap();
    assert_eq!(event_ids(&claimed), ids_of(&events));
    db.store.mark_published(published(&claimed), at(500), Fence::Unfenced).await.unwrap();
    let seq = |i: usize| claimed[i].sequence;
    let north = Group::dispatch(&region("north"));

    let all_north = db.store.replay(north.clone(), Sequence(0), 100).await.unwrap();
    let after_first = db.store.replay(north.clone(), seq(0), 100).await.unwrap();
    let limited = db.store.replay(north.clone(), Sequence(0), 2).await.unwrap();
    let after_last = db.store.replay(north, seq(4), 100).await.unwrap();
    let south = db.store.replay(Group::dispatch(&region("south")), Sequence(0), 100).await.unwrap();
    let anas = db.store.replay(Group::contractor(ana.id()), Sequence(0), 100).await.unwrap();
    let nobody = db.store.replay(Group::dispatch(&region("west")), Sequence(0), 100).await.unwrap();

    let expect = |indices: &[usize]| indices.iter().map(|&i| (events[i].clone(), seq(i))).collect::<Vec<_>>();
    assert_eq!(all_north, expect(&[0, 2, 4]));
    assert_strictly_increasing(&all_north.iter().map(|(_, s)| *s).collect::<Vec<_>>());
    assert_eq!(after_first, expect(&[2, 4]));
    assert_eq!(limited, expect(&[0, 2]));
    assert!(after_last.is_empty());
    assert_eq!(south, expect(&[1, 3]));
    assert_eq!(anas, expect(&[0, 3, 4]));
    assert!(nobody.is_empty());
}

// ---------------------------------------------------------------------------
// Idempotency keys, admin retry, retention
// ---------------------------------------------------------------------------

fn idem(key: &str, fingerprint: &str) -> Option<smartscheduler_domain::ports::IdempotencyKey> {
    Some(smartscheduler_domain::ports::IdempotencyKey {
        scope: "alice".into(),
        key: key.into(),
        fingerprint: fingerprint.into(),
    })
}

pub async fn an_idempotency_key_is_stored_with_its_assignment_and_found_again<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let c = db.add_contractor("Ana", "north").await;
    let j = db.add_job("north").await;
    let (assigned, assignment, event) = plan(&j, &c, range(0, 60));
    db.store.commit_assignment(&assigned, &assignment, &event, idem("k1", "fp1")).await.unwrap();
    let long_ago = Timestamp::from_unix_millis(0);
    let (fingerprint, found) =
        db.store.find_idempotent("alice".into(), "k1".into(), long_ago).await.unwrap().expect("the key is stored");
    assert_eq!(fingerprint, "fp1");
    assert_eq!(found, assignment);
    // Another caller's key of the same name is another key.
    assert!(db.store.find_idempotent("bob".into(), "k1".into(), long_ago).await.unwrap().is_none());
    // Older than the cut-off: not honoured.
    let future = Timestamp::now().plus_millis(60_000);
    assert!(db.store.find_idempotent("alice".into(), "k1".into(), future).await.unwrap().is_none());
}

pub async fn a_live_idempotency_key_cannot_be_taken_twice_but_an_expired_one_can<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let c = db.add_contractor("Ana", "north").await;
    let j1 = db.add_job("north").await;
    let j2 = db.add_job("north").await;
    let (a1, s1, e1) = plan(&j1, &c, range(0, 60));
    db.store.commit_assignment(&a1, &s1, &e1, idem("k", "one")).await.unwrap();
    let before = db.counts().await;
    let (a2, s2, e2) = plan(&j2, &c, range(60, 120));
    let err = db.store.commit_assignment(&a2, &s2, &e2, idem("k", "two")).await.unwrap_err();
    assert_eq!(err, CommitAssignmentError::IdempotencyKeyTaken);
    assert_eq!(db.counts().await, before, "the refused commit wrote nothing");
    assert_eq!(db.stored_job(j2.id()).await.status(), JobStatus::Unassigned);

    // Once purged (past 24 h), the key is free again.
    let purged = db.store.purge_idempotency(Timestamp::now().plus_millis(1_000)).await.unwrap();
    assert_eq!(purged, 1);
    db.store.commit_assignment(&a2, &s2, &e2, idem("k", "two")).await.unwrap();
}

pub async fn retrying_a_failed_event_makes_it_pending_and_due_with_attempts_reset<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let events = db.commit_events(2).await;
    let failed = events[0].event_id();
    db.store.claim_due(later(), 10, Fence::Unfenced).await.unwrap();
    db.store.record_failure(failed, "boom".into(), None, Fence::Unfenced).await.unwrap();
    assert_eq!(db.store.backlog().await.unwrap(), (1, 1));

    assert_eq!(db.store.retry(events[1].event_id()).await.unwrap(), RetryOutcome::NotFailed);
    assert_eq!(db.store.retry(EventId::new()).await.unwrap(), RetryOutcome::NotFound);
    assert_eq!(db.store.retry(failed).await.unwrap(), RetryOutcome::Requeued);

    let entry = db.entry(failed).await;
    assert_eq!(entry.status, EventStatus::Pending);
    assert_eq!(entry.attempts, 0);
    assert_eq!(entry.last_error.as_deref(), Some("boom"), "the last error stays for the record");
    assert_eq!(db.store.backlog().await.unwrap(), (2, 0));
    let due = db.store.claim_due(later(), 10, Fence::Unfenced).await.unwrap();
    assert!(event_ids(&due).contains(&failed));
}

pub async fn purging_deletes_old_published_rows_only_and_raises_the_watermark<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let events = db.commit_events(3).await;
    let claimed = db.store.claim_due(later(), 2, Fence::Unfenced).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let published_at = Timestamp::now();
    let rows = claimed
        .iter()
        .map(|c| PublishedRow { event_id: c.event.event_id(), sequence: c.sequence, groups: c.event.audience() })
        .collect();
    db.store.mark_published(rows, published_at, Fence::Unfenced).await.unwrap();
    assert_eq!(db.store.purged_through().await.unwrap(), Sequence(0));

    // Nothing published before the cut-off: nothing goes.
    assert_eq!(db.store.purge(published_at).await.unwrap(), 0);
    let removed = db.store.purge(published_at.plus_millis(1)).await.unwrap();
    assert_eq!(removed, 2);
    assert_eq!(db.store.purged_through().await.unwrap(), claimed[1].sequence);
    assert!(EventLog::get(&db.store, events[0].event_id()).await.unwrap().is_none());
    // The Pending row stays, and replays no longer see the purged ones.
    assert_eq!(db.entry(events[2].event_id()).await.status, EventStatus::Pending);
    let north = Group::dispatch(&Region::new("north").unwrap());
    let replay = db.store.replay(north, Sequence(0), 10).await.unwrap();
    assert!(replay.iter().all(|(e, _)| e.event_id() == events[2].event_id()));
}

pub async fn highest_published_is_the_top_published_sequence_and_ignores_claimed_rows<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    assert_eq!(db.store.highest_published().await.unwrap(), Sequence(0));
    db.commit_events(3).await;
    let claimed = db.store.claim_due(later(), 3, Fence::Unfenced).await.unwrap();
    let rows = claimed[..2]
        .iter()
        .map(|c| PublishedRow { event_id: c.event.event_id(), sequence: c.sequence, groups: c.event.audience() })
        .collect();
    db.store.mark_published(rows, Timestamp::now(), Fence::Unfenced).await.unwrap();
    // The third row is claimed (it has a higher sequence) but not published.
    assert_eq!(db.store.highest_published().await.unwrap(), claimed[1].sequence);
}

/// A burst as group commit sees it: good assignments, racing duplicates,
/// unknown jobs and unknown contractors, all at once. Each gets its own
/// answer, the refused ones leave nothing behind, and none fails another.
pub async fn a_concurrent_burst_of_good_and_refused_assignments_gives_each_its_own_outcome<B: Backend>() {
    const GOOD: usize = 30;
    const EACH_BAD: usize = 10;
    let Some(db) = B::fresh().await else {
        return;
    };
    let mut plans = Vec::new(); // (what, job, assignment, event)
    let mut raced = Vec::new();
    for i in 0..GOOD {
        let c = db.add_contractor(&format!("Good {i}"), "north").await;
        let j = db.add_job("north").await;
        let (assigned, assignment, event) = plan(&j, &c, range(0, 60));
        plans.push(("good", assigned, assignment, event));
        if i < EACH_BAD {
            // The same job to another contractor: exactly one of the two wins.
            let rival = db.add_contractor(&format!("Rival {i}"), "north").await;
            let (assigned, assignment, event) = plan(&j, &rival, range(0, 60));
            plans.push(("rival", assigned, assignment, event));
            raced.push(j.id());
        }
    }
    let someone = db.add_contractor("Someone", "north").await;
    let mut untouched = Vec::new();
    for _ in 0..EACH_BAD {
        let (assigned, assignment, event) = plan(&job("north", Timestamp::now()), &someone, range(0, 60));
        plans.push(("unknown job", assigned, assignment, event));
        let stored = db.add_job("north").await;
        let ghost = contractor("Ghost", "north", Timestamp::now());
        let (assigned, assignment, event) = plan(&stored, &ghost, range(0, 60));
        plans.push(("unknown contractor", assigned, assignment, event));
        untouched.push(stored.id());
    }

    let barrier = Arc::new(Barrier::new(plans.len()));
    let tasks: Vec<_> = plans
        .into_iter()
        .map(|(what, assigned, assignment, event)| {
            let store = db.store.clone();
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                let result = store.commit_assignment(&assigned, &assignment, &event, None).await;
                (what, assigned.id(), result, event.event_id())
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        let (what, job_id, result, event_id) = task.await.expect("the task does not panic");
        match (what, &result) {
            ("good" | "rival", Ok(())) => winners.push((job_id, event_id)),
            ("good" | "rival", Err(CommitAssignmentError::JobAlreadyAssigned)) if raced.contains(&job_id) => {}
            ("unknown job", Err(CommitAssignmentError::JobNotFound)) => {}
            ("unknown contractor", Err(CommitAssignmentError::ContractorNotFound)) => {}
            _ => panic!("{what} {job_id}: unexpected {result:?}"),
        }
    }
    assert_eq!(winners.len(), GOOD, "one winner per stored job: {winners:?}");
    let jobs: std::collections::HashSet<JobId> = winners.iter().map(|(j, _)| *j).collect();
    assert_eq!(jobs.len(), GOOD, "no job was assigned twice");
    let g = GOOD as i64;
    assert_eq!(db.counts().await, Counts { assignments: g, events: g, event_groups: 2 * g });
    let mut logged = entry_ids(&db.all_events().await);
    let mut expected: Vec<EventId> = winners.iter().map(|(_, e)| *e).collect();
    logged.sort();
    expected.sort();
    assert_eq!(logged, expected, "exactly the winners' events are logged");
    for id in untouched {
        assert_eq!(db.stored_job(id).await.status(), JobStatus::Unassigned);
    }
}

// ---------------------------------------------------------------------------
// Acknowledgements and escalation
// ---------------------------------------------------------------------------

/// Commits `job` to `contractor` with an acknowledgement deadline; the
/// assignment as committed.
async fn assign_with_deadline<B: Backend>(
    db: &Db<B>,
    job: &Job,
    contractor: &Contractor,
    deadline: Timestamp,
) -> Assignment {
    let (assigned, assignment, event) = plan(job, contractor, range(0, 60));
    let assignment =
        assignment.with_acknowledgement(Acknowledgement { acknowledged_at_utc: None, deadline_utc: Some(deadline) });
    db.store.commit_assignment(&assigned, &assignment, &event, None).await.expect("the assignment commits");
    assignment
}

fn the_contractor(assignment: &Assignment) -> Principal {
    Principal {
        subject: "c".into(),
        role: Role::Contractor,
        regions: vec![],
        contractor_id: Some(assignment.contractor_id()),
    }
}

pub async fn an_assignment_reads_back_with_its_deadline_by_id_and_by_its_event<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let ana = db.add_contractor("Ana", "north").await;
    let assignment = assign_with_deadline(&db, &db.add_job("north").await, &ana, at(5)).await;
    let by_id = AssignmentRepository::get(&db.store, assignment.id()).await.unwrap();
    assert_eq!(by_id.as_ref(), Some(&assignment));
    assert_eq!(by_id.unwrap().acknowledgement().deadline_utc, Some(at(5)));
    let by_event = db.store.of_event(assignment.event_id()).await.unwrap();
    assert_eq!(by_event, Some(assignment));
    assert_eq!(AssignmentRepository::get(&db.store, smartscheduler_domain::AssignmentId::new()).await.unwrap(), None);
    assert_eq!(db.store.of_event(EventId::new()).await.unwrap(), None);
}

pub async fn the_first_acknowledgement_is_recorded_with_its_event_and_a_repeat_writes_nothing<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let ana = db.add_contractor("Ana", "north").await;
    let assignment = assign_with_deadline(&db, &db.add_job("north").await, &ana, at(5)).await;
    let Ok(Acknowledged::First(first)) = assignment.acknowledge(&the_contractor(&assignment), at(1)) else {
        panic!("a first acknowledgement")
    };
    assert!(db.store.acknowledge(&first).await.unwrap(), "the first is recorded");
    assert_eq!(db.counts().await, Counts { assignments: 1, events: 2, event_groups: 3 });
    let stored = AssignmentRepository::get(&db.store, assignment.id()).await.unwrap().unwrap();
    assert_eq!(stored.acknowledgement().acknowledged_at_utc, Some(at(1)));
    let entry = db.entry(first.event_id).await;
    assert_eq!(entry.event_type, "JobAssignmentAcknowledged");
    assert_eq!(entry.status, EventStatus::Pending);
    assert_eq!(entry.payload.event, DomainEvent::from(first.clone()));

    // A racing repeat that built its own event before seeing the first.
    let Ok(Acknowledged::First(repeat)) = assignment.acknowledge(&the_contractor(&assignment), at(2)) else {
        panic!("built from the stale assignment")
    };
    assert!(!db.store.acknowledge(&repeat).await.unwrap(), "a repeat records nothing");
    assert_eq!(db.counts().await, Counts { assignments: 1, events: 2, event_groups: 3 });
    assert!(EventLog::get(&db.store, repeat.event_id).await.unwrap().is_none());
    let stored = AssignmentRepository::get(&db.store, assignment.id()).await.unwrap().unwrap();
    assert_eq!(stored.acknowledgement().acknowledged_at_utc, Some(at(1)), "the first time stays");
}

pub async fn overdue_assignments_are_listed_by_deadline_and_each_escalation_is_logged_once<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let (ana, bo, cy) = (
        db.add_contractor("Ana", "north").await,
        db.add_contractor("Bo", "north").await,
        db.add_contractor("Cy", "north").await,
    );
    let late = assign_with_deadline(&db, &db.add_job("north").await, &bo, at(20)).await;
    let early = assign_with_deadline(&db, &db.add_job("north").await, &ana, at(10)).await;
    let ahead = assign_with_deadline(&db, &db.add_job("north").await, &cy, at(90)).await;
    // No deadline: escalation was off when it was made.
    db.assign(&db.add_job("north").await, &db.add_contractor("Di", "north").await, range(0, 60)).await;

    let overdue = db.store.overdue(at(30), 10).await.unwrap();
    assert_eq!(overdue.iter().map(Assignment::id).collect::<Vec<_>>(), vec![early.id(), late.id()], "earliest first");
    assert_eq!(db.store.overdue(at(30), 1).await.unwrap().len(), 1, "up to the limit");

    // The late one is acknowledged after its deadline: never escalated.
    let Ok(Acknowledged::First(ack)) = late.acknowledge(&the_contractor(&late), at(25)) else { panic!() };
    assert!(db.store.acknowledge(&ack).await.unwrap());
    let escalation = early.escalation_due(at(30)).expect("due");
    assert!(db.store.escalate(&escalation).await.unwrap(), "escalated once");
    let again = early.escalation_due(at(31)).expect("built from the stale assignment");
    assert!(!db.store.escalate(&again).await.unwrap(), "never twice");
    let stale = late.escalation_due(at(30)).expect("built before the acknowledgement was read");
    assert!(!db.store.escalate(&stale).await.unwrap(), "an acknowledged assignment is not escalated");
    assert!(db.store.overdue(at(30), 10).await.unwrap().is_empty());
    assert_eq!(
        db.store.overdue(at(100), 10).await.unwrap().iter().map(Assignment::id).collect::<Vec<_>>(),
        vec![ahead.id()]
    );

    let entry = db.entry(escalation.event_id).await;
    assert_eq!(entry.event_type, "JobAssignmentUnacknowledged");
    assert_eq!(entry.payload.event, DomainEvent::from(escalation));
    assert!(EventLog::get(&db.store, again.event_id).await.unwrap().is_none());
    // 4 JobAssigned (2 groups each), 1 acknowledgement and 1 escalation (dispatch only).
    assert_eq!(db.counts().await, Counts { assignments: 4, events: 6, event_groups: 10 });
}

pub async fn ten_concurrent_escalations_of_one_assignment_log_exactly_one<B: Backend>() {
    let Some(db) = B::fresh().await else {
        return;
    };
    let ana = db.add_contractor("Ana", "north").await;
    let assignment = assign_with_deadline(&db, &db.add_job("north").await, &ana, at(10)).await;
    let barrier = Arc::new(Barrier::new(10));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (store, barrier) = (db.store.clone(), barrier.clone());
            let escalation = assignment.escalation_due(at(30)).expect("due");
            tokio::spawn(async move {
                barrier.wait().await;
                store.escalate(&escalation).await.expect("no storage error")
            })
        })
        .collect();
    let mut escalated = 0;
    for task in tasks {
        escalated += usize::from(task.await.unwrap());
    }
    assert_eq!(escalated, 1, "exactly one escalation wins");
    assert_eq!(db.counts().await, Counts { assignments: 1, events: 2, event_groups: 3 });
}
