//! Contractors: the people who do the jobs.

use serde::Serialize;

use crate::ids::ContractorId;
use crate::values::{PersonName, Region, Skill, Timestamp, ValidationError, MAX_SKILLS};

/// A contractor working in one region.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Contractor {
    id: ContractorId,
    name: PersonName,
    region: Region,
    skills: Vec<Skill>,
    created_at_utc: Timestamp,
}

impl Contractor {
    /// A new contractor.
    ///
    /// # Errors
    /// More than [`MAX_SKILLS`] skills.
    pub fn create(
        name: PersonName,
        region: Region,
        skills: Vec<Skill>,
        now: Timestamp,
    ) -> Result<Self, ValidationError> {
        if skills.len() > MAX_SKILLS {
            return Err(ValidationError::new("skills", format!("at most {MAX_SKILLS} skills")));
        }
        Ok(Self { id: ContractorId::new(), name, region, skills, created_at_utc: now })
    }

    /// Rebuilds a contractor from storage.
    pub fn restore(
        id: ContractorId,
        name: PersonName,
        region: Region,
        skills: Vec<Skill>,
        created_at_utc: Timestamp,
    ) -> Self {
        Self { id, name, region, skills, created_at_utc }
    }

    /// The contractor's id.
    pub fn id(&self) -> ContractorId {
        self.id
    }
    /// The contractor's name.
    pub fn name(&self) -> &PersonName {
        &self.name
    }
    /// Where the contractor works.
    pub fn region(&self) -> &Region {
        &self.region
    }
    /// What the contractor can do.
    pub fn skills(&self) -> &[Skill] {
        &self.skills
    }
    /// When the contractor was created.
    pub fn created_at_utc(&self) -> Timestamp {
        self.created_at_utc
    }
}
