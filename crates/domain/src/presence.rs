//! Who is online: a contractor with at least one hub connection, or whose
//! last one closed less than a grace period ago. Presence is not an event:
//! no EventLog row, no sequence, no replay.

use serde::Serialize;

use crate::events::Group;
use crate::ids::ContractorId;
use crate::values::{Region, Timestamp};

/// A contractor came online (its first connection opened) or went offline
/// (its last one has been closed for the grace period). Sent to its
/// region's dispatchers as the hub message `PresenceChanged`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceChanged {
    /// Always `PresenceChanged`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Who.
    pub contractor_id: ContractorId,
    /// The contractor's region.
    pub region: Region,
    /// Online now, or offline now.
    pub online: bool,
    /// When it changed.
    pub at_utc: Timestamp,
}

impl PresenceChanged {
    /// The change of `contractor` (of `region`) to `online` at `at`.
    pub fn new(contractor_id: ContractorId, region: Region, online: bool, at_utc: Timestamp) -> Self {
        Self { kind: "PresenceChanged", contractor_id, region, online, at_utc }
    }

    /// Who hears about it: the region's dispatchers.
    pub fn audience(&self) -> Vec<Group> {
        vec![Group::dispatch(&self.region)]
    }
}

/// One contractor's presence, as `GET /api/presence` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Presence {
    /// Online (connected, or within the grace period).
    pub online: bool,
    /// Its open hub connections.
    pub connections: u32,
    /// Last seen connected: now while connected; `None` when never seen.
    pub last_seen_utc: Option<Timestamp>,
}

/// Which contractors a settle looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleScope<'a> {
    /// Every contractor: graces that ended, nodes that died.
    Everyone,
    /// Only these, whose connections just changed: cheap, however many
    /// contractors the ledger holds.
    Only(&'a [ContractorId]),
}

/// The hub connections one node holds of one contractor, as the node tells
/// its [`PresenceLedger`](crate::ports::PresenceLedger).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldConnections {
    /// Whose.
    pub contractor_id: ContractorId,
    /// The contractor's region (whose dispatchers are told).
    pub region: Region,
    /// How many this node holds now; 0: its last one here just closed.
    pub connections: u32,
}
