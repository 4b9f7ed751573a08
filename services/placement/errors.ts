import { BvError } from '../../guest-isa/errors.ts';

/** The codes of {@link PlacementError}. */
export type PlacementErrorCode =
  /** A model-host parameter is missing, not finite, out of range or inconsistent. */
  | 'BV_PLACEMENT_BAD_MODEL'
  /** A placer option is out of range. */
  | 'BV_PLACEMENT_BAD_OPTIONS'
  /** A topology has no package, an empty package, or a CPU listed twice. */
  | 'BV_PLACEMENT_BAD_TOPOLOGY'
  /** A load sample or demand is negative, not finite, or a group id is empty or taken. */
  | 'BV_PLACEMENT_BAD_LOAD'
  /** A group id the placer or the simulation does not know. */
  | 'BV_PLACEMENT_UNKNOWN_GROUP'
  /** A placement names a CPU outside the topology, gives a group no CPU, or lists a CPU twice for a group. */
  | 'BV_PLACEMENT_BAD_PLACEMENT'
  /** Time given to the placer went backwards or is not finite. */
  | 'BV_PLACEMENT_BAD_TIME'
  /** sysfs could not be read or parsed (missing root, non-numeric counter). */
  | 'BV_PLACEMENT_SYSFS'
  /** Two idle-counter snapshots cannot be compared (different CPUs or states, no time between them). */
  | 'BV_PLACEMENT_BAD_SNAPSHOT';

/** A refused input of the placement service (the code says which). */
export class PlacementError extends BvError {
  declare readonly code: PlacementErrorCode;
  constructor(code: PlacementErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}
