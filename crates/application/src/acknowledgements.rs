//! The assigned contractor acknowledges a `JobAssigned`; assignments that
//! pass their deadline without an acknowledgement are escalated to the
//! region's dispatchers. Both record their event in the EventLog in the
//! transaction that records them, and publish it after the commit.

use std::sync::Arc;
use std::time::Duration;

use smartscheduler_domain::ports::{AssignmentRepository, AssignmentStore, EventPublisher, StoreError};
use smartscheduler_domain::{AcknowledgeRefusal, Acknowledged, Chain, DomainEvent, EventId, Principal, Timestamp};
use tracing::instrument;

/// An acknowledgement as the contractor's app is told about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcknowledgedAt {
    /// The `JobAssigned` acknowledged.
    pub event_id: EventId,
    /// The first acknowledgement's time.
    pub acknowledged_at_utc: Timestamp,
}

/// Why an acknowledgement was refused. Nothing was recorded or published.
#[derive(Debug, thiserror::Error)]
pub enum AcknowledgeError {
    /// No assignment's `JobAssigned` has this id.
    #[error("no JobAssigned event has the id {0}")]
    NotFound(EventId),
    /// The caller is not the contractor it was assigned to.
    #[error(transparent)]
    Refused(#[from] AcknowledgeRefusal),
    /// Storage failed; the caller may retry.
    #[error("the acknowledgement could not be recorded")]
    Store(#[from] StoreError),
}

/// The use case behind the hub's `AcknowledgeEvent`.
#[derive(Clone)]
pub struct AcknowledgeAssignment {
    assignments: Arc<dyn AssignmentRepository>,
    store: Arc<dyn AssignmentStore>,
    publisher: Arc<dyn EventPublisher>,
}

impl AcknowledgeAssignment {
    /// Wires the use case to its ports.
    pub fn new(
        assignments: Arc<dyn AssignmentRepository>,
        store: Arc<dyn AssignmentStore>,
        publisher: Arc<dyn EventPublisher>,
    ) -> Self {
        Self { assignments, store, publisher }
    }

    /// `principal` acknowledges the `JobAssigned` `event_id`. The first
    /// acknowledgement is recorded and `JobAssignmentAcknowledged` published;
    /// a repeat changes nothing and answers with the first one's time.
    ///
    /// # Errors
    /// [`AcknowledgeError`]; then nothing was recorded or published.
    #[instrument(name = "acknowledge", skip_all, fields(event_id = %event_id))]
    pub async fn execute(&self, principal: &Principal, event_id: EventId) -> Result<AcknowledgedAt, AcknowledgeError> {
        let assignment = self.assignments.of_event(event_id).await?.ok_or(AcknowledgeError::NotFound(event_id))?;
        let first = match assignment.acknowledge(principal, Timestamp::now())? {
            Acknowledged::Already(at) => return Ok(AcknowledgedAt { event_id, acknowledged_at_utc: at }),
            Acknowledged::First(first) => first,
        };
        if !self.store.acknowledge(&first).await? {
            // A racing repeat recorded its own first: answer with that one.
            let stored = self.assignments.get(assignment.id()).await?;
            let at = stored.and_then(|a| a.acknowledgement().acknowledged_at_utc).unwrap_or(first.acknowledged_at_utc);
            return Ok(AcknowledgedAt { event_id, acknowledged_at_utc: at });
        }
        let waited = first.acknowledged_at_utc.unix_millis() - assignment.created_at_utc().unix_millis();
        metrics::histogram!("smartscheduler_acknowledgement_seconds").record(waited.max(0) as f64 / 1000.0);
        metrics::counter!("smartscheduler_assignments_acknowledged_total").increment(1);
        tracing::info!(assignment_id = %assignment.id(), "assignment acknowledged");
        let at = first.acknowledged_at_utc;
        self.publisher.publish(DomainEvent::from(first));
        Ok(AcknowledgedAt { event_id, acknowledged_at_utc: at })
    }
}

/// Most overdue assignments one scan escalates; the next scan takes the rest.
const ESCALATION_BATCH: u32 = 500;

/// Escalates every assignment past its deadline without an
/// acknowledgement: `JobAssignmentUnacknowledged`, once each (the store
/// records it with a conditional update, so of several nodes scanning at
/// once exactly one logs it). Returns how many this call escalated.
///
/// # Errors
/// [`StoreError`]; what was escalated before it stays escalated.
pub async fn escalate_overdue(
    store: &dyn AssignmentStore,
    publisher: &dyn EventPublisher,
    now: Timestamp,
) -> Result<usize, StoreError> {
    let mut escalated = 0;
    for assignment in store.overdue(now, ESCALATION_BATCH).await? {
        let Some(unacknowledged) = assignment.escalation_due(now) else { continue };
        if store.escalate(&unacknowledged).await? {
            metrics::counter!("smartscheduler_assignments_overdue_total").increment(1);
            tracing::info!(assignment_id = %assignment.id(), "assignment not acknowledged by its deadline");
            publisher.publish(DomainEvent::from(unacknowledged));
            escalated += 1;
        }
    }
    Ok(escalated)
}

/// Runs [`escalate_overdue`] every `every`, forever (spawn it; abort it at shutdown).
pub async fn run_escalation(store: Arc<dyn AssignmentStore>, publisher: Arc<dyn EventPublisher>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(err) = escalate_overdue(store.as_ref(), publisher.as_ref(), Timestamp::now()).await {
            tracing::warn!(error = %Chain(&err), "could not escalate overdue assignments; retrying");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smartscheduler_domain::ports::{MockAssignmentRepository, MockAssignmentStore, MockEventPublisher};
    use smartscheduler_domain::{
        Acknowledgement, Assignment, AssignmentId, AssignmentSource, ContractorId, EventType, JobId, NewAssignment,
        Region, Role, TimeRange,
    };

    fn assignment(acknowledged_at: Option<Timestamp>, deadline: Option<Timestamp>) -> Assignment {
        let contractor_id = ContractorId::new();
        let now = Timestamp::now();
        let request = NewAssignment {
            contractor_id,
            range: TimeRange::new(now, now.plus_millis(3_600_000)).unwrap(),
            source: AssignmentSource::Manual,
            audit_id: None,
        };
        Assignment::new(
            AssignmentId::new(),
            JobId::new(),
            contractor_id,
            request,
            Region::new("north").unwrap(),
            now,
            EventId::new(),
        )
        .with_acknowledgement(Acknowledgement { acknowledged_at_utc: acknowledged_at, deadline_utc: deadline })
    }

    fn contractor(id: ContractorId) -> Principal {
        Principal { subject: "c".into(), role: Role::Contractor, regions: vec![], contractor_id: Some(id) }
    }

    fn reads(assignment: &Assignment) -> MockAssignmentRepository {
        let mut reads = MockAssignmentRepository::new();
        let found = assignment.clone();
        reads.expect_of_event().returning(move |_| Ok(Some(found.clone())));
        reads
    }

    fn use_case(
        reads: MockAssignmentRepository,
        store: MockAssignmentStore,
        publisher: MockEventPublisher,
    ) -> AcknowledgeAssignment {
        AcknowledgeAssignment::new(Arc::new(reads), Arc::new(store), Arc::new(publisher))
    }

    #[tokio::test]
    async fn the_first_acknowledgement_is_recorded_then_published() {
        let assignment = assignment(None, None);
        let mut store = MockAssignmentStore::new();
        let id = assignment.id();
        store.expect_acknowledge().times(1).withf(move |e| e.assignment_id == id).returning(|_| Ok(true));
        let mut publisher = MockEventPublisher::new();
        publisher
            .expect_publish()
            .times(1)
            .withf(|e| e.event_type() == EventType::JobAssignmentAcknowledged)
            .return_const(());
        let me = contractor(assignment.contractor_id());
        let done = use_case(reads(&assignment), store, publisher).execute(&me, assignment.event_id()).await.unwrap();
        assert_eq!(done.event_id, assignment.event_id());
    }

    #[tokio::test]
    async fn a_repeat_answers_with_the_first_time_and_records_and_publishes_nothing() {
        let first = Timestamp::now().plus_millis(-5_000);
        let assignment = assignment(Some(first), None);
        let me = contractor(assignment.contractor_id());
        let done = use_case(reads(&assignment), MockAssignmentStore::new(), MockEventPublisher::new())
            .execute(&me, assignment.event_id())
            .await
            .unwrap();
        assert_eq!(done.acknowledged_at_utc, first);
    }

    #[tokio::test]
    async fn a_lost_race_answers_with_the_winners_time_and_publishes_nothing() {
        let assignment = assignment(None, None);
        let winner = Timestamp::now().plus_millis(-1);
        let mut reads = reads(&assignment);
        let stored = assignment
            .clone()
            .with_acknowledgement(Acknowledgement { acknowledged_at_utc: Some(winner), deadline_utc: None });
        reads.expect_get().returning(move |_| Ok(Some(stored.clone())));
        let mut store = MockAssignmentStore::new();
        store.expect_acknowledge().times(1).returning(|_| Ok(false));
        let me = contractor(assignment.contractor_id());
        let done = use_case(reads, store, MockEventPublisher::new()).execute(&me, assignment.event_id()).await.unwrap();
        assert_eq!(done.acknowledged_at_utc, winner);
    }

    #[tokio::test]
    async fn another_contractor_or_an_unknown_event_is_refused_and_nothing_is_recorded() {
        let assignment = assignment(None, None);
        let stranger = contractor(ContractorId::new());
        let refused = use_case(reads(&assignment), MockAssignmentStore::new(), MockEventPublisher::new())
            .execute(&stranger, assignment.event_id())
            .await;
        assert!(matches!(refused, Err(AcknowledgeError::Refused(AcknowledgeRefusal::NotTheAssignee))));

        let mut none = MockAssignmentRepository::new();
        none.expect_of_event().returning(|_| Ok(None));
        let unknown = EventId::new();
        let missing = use_case(none, MockAssignmentStore::new(), MockEventPublisher::new())
            .execute(&contractor(assignment.contractor_id()), unknown)
            .await;
        assert!(matches!(missing, Err(AcknowledgeError::NotFound(id)) if id == unknown));
    }

    #[tokio::test]
    async fn overdue_assignments_are_escalated_and_published_once_each() {
        let now = Timestamp::now();
        let overdue = assignment(None, Some(now.plus_millis(-1_000)));
        let raced = assignment(None, Some(now.plus_millis(-2_000)));
        let mut store = MockAssignmentStore::new();
        let listed = vec![raced.clone(), overdue.clone()];
        store.expect_overdue().times(1).returning(move |_, _| Ok(listed.clone()));
        let (won, lost) = (overdue.id(), raced.id());
        store.expect_escalate().times(1).withf(move |e| e.assignment_id == won).returning(|_| Ok(true));
        store.expect_escalate().times(1).withf(move |e| e.assignment_id == lost).returning(|_| Ok(false));
        let mut publisher = MockEventPublisher::new();
        publisher
            .expect_publish()
            .times(1)
            .withf(move |e| matches!(e, DomainEvent::JobAssignmentUnacknowledged(u) if u.assignment_id == won))
            .return_const(());
        assert_eq!(escalate_overdue(&store, &publisher, now).await.unwrap(), 1);
    }
}
