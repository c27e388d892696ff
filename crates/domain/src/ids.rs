//! Identifiers. Each is a newtype over `Uuid` so that a job id can never be
//! passed where a contractor id is expected.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

use crate::values::ValidationError;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh id: a UUID v7 (milliseconds since the epoch, then
            /// 74 random bits), so new rows land at the end of the indexes
            /// that key on it instead of on a random page each.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
            /// Wraps an existing uuid.
            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }
            /// The underlying uuid.
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|_| ValidationError::new($field, "must be a UUID"))
            }
        }
    };
}

id_type!(
    /// Identifies a job.
    JobId, "jobId");
id_type!(
    /// Identifies a contractor.
    ContractorId, "contractorId");
id_type!(
    /// Identifies an assignment of a job to a contractor.
    AssignmentId, "assignmentId");
id_type!(
    /// Identifies one event; clients de-duplicate by it.
    EventId, "eventId");
id_type!(
    /// Correlates an assignment with an external audit record (optional).
    AuditId, "auditId");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_uuids_and_refuse_anything_else() {
        let id = JobId::new();
        assert_eq!(id.to_string().parse::<JobId>().unwrap(), id);
        let err = "not-a-uuid".parse::<ContractorId>().unwrap_err();
        assert_eq!(err.field, "contractorId");
    }
}
