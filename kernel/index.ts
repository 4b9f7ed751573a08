/**
 * The kernel's public face: create a hypervisor over host memory mapped by the native addon,
 * create VMs in it, load images, register exit handlers and devices, run.
 */
import { HostRegion } from '../native/index.ts';
import { KernelError } from './errors.ts';
import { Hypervisor } from './hypervisor.ts';
import { RUN_SIZE } from './memory/frame-pool.ts';
import { SOFT_TLB_BYTES } from './mmu/tlb.ts';

export { Hypervisor, IDLE_FOREVER } from './hypervisor.ts';
export type { RunOptions, RunResult } from './hypervisor.ts';
export { Vm, StopCode } from './vm.ts';
export type { StopReason, VmConfig, AbsentHandler, WriteProtectHandler, HypercallHandler, ExitCounts, LargePagePolicy, LargePageStats, StatefulComponent, VmState, EpochWriteHook } from './vm.ts';
export { REGION_PAGES } from './vm.ts';
export { Vcpu, Mode, SliceEnd } from './cpu/vcpu.ts';
export type { TraceHook, VcpuStats, VcpuState } from './cpu/vcpu.ts';
export { FramePool, FRAME_SIZE, RUN_SIZE } from './memory/frame-pool.ts';
export type { HostMemory } from './memory/frame-pool.ts';
export { P2m, P2mEntry, P2mFlag, AbsentState, ABSENT_STATE_NAMES } from './memory/p2m.ts';
export type { AbsentStateId } from './memory/p2m.ts';
export { Mmu } from './mmu/shadow.ts';
export type { MmuMode, MmuOptions, MmuStats } from './mmu/shadow.ts';
export type { MmioDevice, DeviceDescriptor } from './mmio.ts';
export { Access } from './mmu/sv32.ts';
export { KernelError, OutOfHostMemoryError } from './errors.ts';

export interface HypervisorOptions {
  /** Host pool size in bytes (multiple of 4 MiB, at most 4 GiB). */
  hostMemoryBytes: number;
  /** Back the pool with this file (MAP_SHARED) instead of anonymous memory. */
  backingFile?: string;
}

/** Creates a hypervisor whose host pool is one mmap'd region from the native addon. */
export function createHypervisor(options: HypervisorOptions): Hypervisor {
  const bytes = options.hostMemoryBytes;
  if (!Number.isInteger(bytes) || bytes < RUN_SIZE || bytes % RUN_SIZE !== 0 || bytes > 2 ** 32) {
    throw new KernelError('BV_BAD_POOL_SIZE', `host memory must be a multiple of 4 MiB between 4 MiB and 4 GiB, got ${bytes} bytes`);
  }
  const region = options.backingFile
    ? HostRegion.sharedFile(options.backingFile, bytes, { create: true })
    : HostRegion.anonymous(bytes, { noReserve: true });
  // vCPU TLBs come from one lazily backed arena, so creating a VM or a fork allocates nothing the
  // JS heap has to account for (see kernel/mmu/tlb.ts).
  const tlbArena = HostRegion.anonymous(TLB_ARENA_SLOTS * SOFT_TLB_BYTES, { noReserve: true });
  return new Hypervisor(region, tlbArena);
}

/** vCPUs whose TLBs fit in a hypervisor's arena (more fall back to ordinary allocation). */
export const TLB_ARENA_SLOTS = 128;
