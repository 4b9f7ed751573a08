/**
 * The three address spaces, as types. A value carries the space it belongs to, so passing a
 * guest-virtual address where a guest-physical one is expected fails to type-check.
 *
 * The brands are optional properties: a plain `number` is accepted everywhere (literals, values
 * read from guest registers), but a `Gva` is not a `Gpa`, and neither is a `HostOffset`. Hot
 * loops keep plain numbers; public API boundaries (GuestMemory, Vm, the services' entry points)
 * name the space in the type.
 */

/** A guest-virtual address (what guest instructions use; translated by the guest's page tables). */
export type Gva = number & {
  /** Type-level brand only: never present at run time. */
  readonly __addressSpace?: 'gva';
};
/** A guest-physical address (what the guest's page tables produce; translated by the P2M). */
export type Gpa = number & {
  /** Type-level brand only: never present at run time. */
  readonly __addressSpace?: 'gpa';
};
/** A byte offset into the hypervisor's host pool (what a P2M entry's frame becomes). Kernel only. */
export type HostOffset = number & {
  /** Type-level brand only: never present at run time. */
  readonly __addressSpace?: 'host';
};

/**
 * A reference to a host frame lent from one VM to another across threads that share one pool
 * (GuestMemory.exportPage / importPage, issue 16). Opaque: it holds one reference to the frame
 * until imported or dropped, and is not an address.
 */
export type FrameHandle = number & {
  /** Type-level brand only: never present at run time. */
  readonly __frameHandle: true;
};

/**
 * What a host-offset lookup returns for RAM whose page nobody could produce (a poisoned page its
 * resolver refused): not -1, which means "not RAM", because the walk turns this one into a
 * machine check rather than an access fault.
 */
export const HOST_OFFSET_REFUSED = -2;

/** Marks a number as a guest-physical address. */
export function asGpa(value: number): Gpa {
  return value as Gpa;
}

/** Marks a number as a guest-virtual address. */
export function asGva(value: number): Gva {
  return value as Gva;
}
