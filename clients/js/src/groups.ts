/** A group to follow: a region's dispatch group, or one contractor's group. */
export type GroupSpec = { dispatch: string } | { contractor: string };

/** The hub's name of a group: `dispatch/{region}` or `contractor/{contractorId}`. */
export function groupName(spec: GroupSpec): string {
  return "dispatch" in spec ? `dispatch/${spec.dispatch}` : `contractor/${spec.contractor}`;
}

/** The hub method and its first argument that join `spec`. */
export function joinCall(spec: GroupSpec): { method: "JoinDispatchGroup" | "JoinContractorGroup"; id: string } {
  return "dispatch" in spec
    ? { method: "JoinDispatchGroup", id: spec.dispatch }
    : { method: "JoinContractorGroup", id: spec.contractor };
}
