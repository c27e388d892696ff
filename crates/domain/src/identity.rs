//! Who is calling, and what they may see and do. The rules live here so that
//! the HTTP API and the hub enforce the same ones.

use crate::events::{Group, GroupKind};
use crate::ids::ContractorId;
use crate::values::Region;

/// The roles a token can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything.
    Admin,
    /// The regions listed in the token.
    Dispatcher,
    /// Their own assignments.
    Contractor,
}

impl Role {
    /// Parses the `role` claim.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "Admin" => Some(Self::Admin),
            "Dispatcher" => Some(Self::Dispatcher),
            "Contractor" => Some(Self::Contractor),
            _ => None,
        }
    }
    /// The claim's text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "Admin",
            Self::Dispatcher => "Dispatcher",
            Self::Contractor => "Contractor",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's subject.
    pub subject: String,
    /// The role.
    pub role: Role,
    /// For dispatchers: the regions they dispatch (others are ignored).
    pub regions: Vec<String>,
    /// For contractors: who they are.
    pub contractor_id: Option<ContractorId>,
}

impl Principal {
    /// Admins and dispatchers use the back office (contractors, jobs, events).
    pub fn is_back_office(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Dispatcher)
    }

    /// Admins, and dispatchers whose token lists `region`.
    pub fn dispatches(&self, region: &Region) -> bool {
        match self.role {
            Role::Admin => true,
            Role::Dispatcher => self.regions.iter().any(|r| r == region.as_str()),
            Role::Contractor => false,
        }
    }

    /// Whether this caller may receive the events of `group`:
    /// `dispatch/{region}` for admins and that region's dispatchers;
    /// `contractor/{id}` for admins, dispatchers and that contractor.
    pub fn may_join(&self, group: &Group) -> bool {
        match group.kind() {
            GroupKind::Dispatch(region) => self.dispatches(&region),
            GroupKind::Contractor(id) => match self.role {
                Role::Admin | Role::Dispatcher => true,
                Role::Contractor => self.contractor_id == Some(id),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(role: Role, regions: &[&str], contractor_id: Option<ContractorId>) -> Principal {
        Principal { subject: "s".into(), role, regions: regions.iter().map(|s| s.to_string()).collect(), contractor_id }
    }

    #[test]
    fn group_access_follows_the_contract_table() {
        let north = Group::dispatch(&Region::new("north").unwrap());
        let me = ContractorId::new();
        let mine = Group::contractor(me);
        let other = Group::contractor(ContractorId::new());

        let admin = principal(Role::Admin, &[], None);
        let dispatcher = principal(Role::Dispatcher, &["north"], None);
        let south_dispatcher = principal(Role::Dispatcher, &["south"], None);
        let contractor = principal(Role::Contractor, &["north"], Some(me));

        assert!(admin.may_join(&north) && admin.may_join(&mine));
        assert!(dispatcher.may_join(&north) && dispatcher.may_join(&other));
        assert!(!south_dispatcher.may_join(&north));
        assert!(contractor.may_join(&mine));
        assert!(!contractor.may_join(&other), "a contractor never sees another's feed");
        assert!(!contractor.may_join(&north), "a region claim does not make a contractor a dispatcher");
    }
}
