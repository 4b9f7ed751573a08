/**
 * The kernel's public face: create a hypervisor over host memory mapped by the native addon,
 * create VMs in it, load images, register exit handlers and devices, run.
 */
import { HostRegion } from '../native/index.ts';
import { KernelError } from './errors.ts';
import { Hypervisor } from './hypervisor.ts';
import type { SharedPoolHandle } from './hypervisor.ts';
import { RUN_SIZE } from './memory/frame-pool.ts';
import { SOFT_TLB_BYTES } from './mmu/tlb.ts';

export { Hypervisor, IDLE_FOREVER } from './hypervisor.ts';
export type { RunOptions, RunResult, ForkOptions, SharedPoolHandle } from './hypervisor.ts';
export { Vm, StopCode, DOUBLE_MACHINE_CHECK, HOST_MEMORY_WAIT_REASON } from './vm.ts';
export type { StopReason, VmConfig, VmEnvironment, HypercallHandler, ExitCounts, LargePagePolicy, LargePageStats, StatefulComponent, VmState } from './vm.ts';
export { ExitRouter } from './exits.ts';
export type { RoutedExitCounts } from './exits.ts';
export { Vcpu, Mode, SliceEnd } from './cpu/vcpu.ts';
export type { TraceHook, VcpuStats, VcpuState } from './cpu/vcpu.ts';
export { defaultTier, forgetCompiledFunctions } from './cpu/jit/jit.ts';
export type { JitStats, Tier } from './cpu/jit/jit.ts';
export type { VcpuHost } from './cpu/vcpu-host.ts';
export { FRAME_SIZE, RUN_SIZE } from './memory/frame-pool.ts';
export type { HostMemory, FramePool, FramePoolStats } from './memory/frame-pool.ts';
export { GuestAccessError, GuestMemory, HOST_READ, PageState, PAGE_STATE_NAMES, MemoryAccess, REGION_PAGES, ReservedStateError, MAX_ACCESS_WATCHERS } from './memory/guest-memory.ts';
export type {
  PageStateId, MemoryAccessKind, ResolverAccess, AbsentResolver, ProtectionResolver, EpochWriteHook, ForkHook, GuestMemoryHost, GuestMemoryOptions,
  PageCensus, MemoryExitCounts, AccessWatcher,
} from './memory/guest-memory.ts';
export { P2mFlag, AbsentState, ABSENT_STATE_NAMES, RESERVED_STATES, RESERVED_FLAGS } from './memory/p2m.ts';
export type { AbsentStateId } from './memory/p2m.ts';
export { CORRUPTION_PATTERNS, MAX_WINDOW_BITS, PAGE_BITS, MemoryErrorInputError, checkErrorWindow, checkPattern, corruptBits } from './memory/poison.ts';
export type { CorruptionPattern } from './memory/poison.ts';
export { asGpa, asGva } from './memory/addresses.ts';
export type { FrameHandle, Gpa, Gva, HostOffset } from './memory/addresses.ts';
export type { FileRangeInfo } from './memory/file-ranges.ts';
export { Mmu } from './mmu/shadow.ts';
export type { MmuMode, MmuOptions, MmuStats, MmuHost } from './mmu/shadow.ts';
export { scanAccessedLeaves } from './mmu/page-table-scan.ts';
export type { PageTableScanHost } from './mmu/page-table-scan.ts';
export type { MmioDevice, DeviceDescriptor, DeviceWindowLayout, MmioBus } from './mmio.ts';
export { checkDeviceLayout, DeviceLayoutError, parseDeviceLayout } from './mmio.ts';
export { Access } from './mmu/sv32.ts';
export type { AccessKind, PhysicalPageTables } from './mmu/sv32.ts';
export type { DecodeCache, DecodeCacheStats } from './cpu/decode-cache.ts';
export { KernelError, OutOfHostMemoryError, PageWaitError } from './errors.ts';
export { compileAtFirstCall, compilesAtFirstCall } from './v8-tuning.ts';

/** What createHypervisor takes. */
export interface HypervisorOptions {
  /** Host pool size in bytes (multiple of 4 MiB, at most 4 GiB). */
  hostMemoryBytes: number;
  /** Back the pool with this file (MAP_SHARED) instead of anonymous memory. */
  backingFile?: string;
}

/**
 * Creates a hypervisor whose host pool is one mmap'd region from the native addon: the start of
 * every embedding (see the Embedding page). The pool is reserved, not filled: VMs take 4 KiB
 * frames from it as their guests touch pages, so `hostMemoryBytes` bounds the guest memory in
 * use at once, not the VMs' sizes. Throws KernelError (BV_BAD_POOL_SIZE) for a bad size and a
 * NativeError when the host refuses the mapping.
 */
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
  // Per-page arrays of every VM (P2M, marks, fork generations): reserved, backed only when used.
  const pageArena = HostRegion.anonymous(PAGE_ARENA_BYTES, { noReserve: true });
  return new Hypervisor(region, tlbArena, pageArena);
}

/**
 * In a worker thread: a hypervisor over the host pool of a hypervisor in another thread, from the
 * handle its sharePool() returned. Frames, reference counts and page sharing are common to both
 * (docs/workers.md); this thread gets its own decode cache, TLB and page arenas. Closing it drops
 * this thread's hold on the pool's mapping; the memory stays for the other holders.
 */
export function attachToPool(handle: SharedPoolHandle): Hypervisor {
  if (typeof handle !== 'object' || handle === null || !(handle.memory instanceof SharedArrayBuffer) || !(handle.state instanceof SharedArrayBuffer)) {
    throw new KernelError('BV_BAD_POOL_STATE', 'attachToPool needs the handle Hypervisor.sharePool() returned');
  }
  const region = HostRegion.attachShared(handle.memory);
  if (region.bytes !== handle.bytes) {
    region.close();
    throw new KernelError('BV_BAD_POOL_STATE', `the shared pool is ${region.bytes} bytes, the handle says ${handle.bytes}`);
  }
  const tlbArena = HostRegion.anonymous(TLB_ARENA_SLOTS * SOFT_TLB_BYTES, { noReserve: true });
  const pageArena = HostRegion.anonymous(PAGE_ARENA_BYTES, { noReserve: true });
  return new Hypervisor(region, tlbArena, pageArena, handle.state);
}

/** vCPUs whose TLBs fit in a hypervisor's arena (more fall back to ordinary allocation). */
export const TLB_ARENA_SLOTS = 128;

/** Address space reserved for per-page arrays (about 10 bytes per guest page; more falls back to the heap). */
export const PAGE_ARENA_BYTES = 2 ** 30;
