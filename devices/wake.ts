/**
 * Several devices of one VM may each keep it waiting for an external event (console input, an
 * asynchronous block completion, a channel's doorbell). Hypervisor.externalWakeSources holds a VM
 * once; this keeps the VM there while any of its devices holds it, so that one device letting go
 * does not drop another's hold.
 */
import type { Hypervisor, Vm } from '../kernel/index.ts';

const holders = new WeakMap<Vm, Set<object>>();

/** Holds (`on`) or lets go of `vm` as an external wake source on behalf of `holder` (a device). */
export function holdWakeSource(hypervisor: Hypervisor, vm: Vm, holder: object, on: boolean): void {
  let set = holders.get(vm);
  if (on) {
    if (set === undefined) holders.set(vm, (set = new Set()));
    set.add(holder);
  } else set?.delete(holder);
  if (set !== undefined && set.size > 0) hypervisor.externalWakeSources.add(vm);
  else hypervisor.externalWakeSources.delete(vm);
}
