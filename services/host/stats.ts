/**
 * A VM's and a host's counters as plain data: every figure `tools/run --stats` prints, as
 * JSON-serialisable objects with snake_case keys and numeric values. `tools/run` formats its
 * tables from these objects (so the tables and `--stats --json` cannot disagree), and the host's
 * API returns them as they are (`GET /vms/{name}/stats`, `GET /host/stats`). docs/run.md
 * explains each figure; keys are only ever added, never renamed.
 */
import { PAGE_SIZE } from '../../guest-isa/arch.ts';
import type { BalloonDevice, BlockDevice } from '../../devices/index.ts';
import type { Hypervisor, LargePagePolicy, Vm } from '../../kernel/index.ts';
import { processRss } from '../../native/index.ts';
import type { AccessedBitPrioritizer, LowActivityReclaimer, SwapFile } from '../memory/index.ts';

/** One vCPU's counters (VmStats.vcpus). */
export interface VcpuCounters {
  /** The vCPU's index. */
  id: number;
  /** Instructions retired since its last reset. */
  instret: number;
  /** Loads and stores that hit the software TLB inline. */
  tlb_hits: number;
  /** Fetches, loads and stores that missed it and took the slow path. */
  tlb_misses: number;
  /** TLB entries installed. */
  tlb_fills: number;
  /** TLB entries removed one by one (shootdowns, `sfence`). */
  tlb_drops: number;
  /** Whole-TLB flushes. */
  tlb_flushes: number;
  /** Sv32 page-table walks (0 while paging is off). */
  page_walks: number;
  /** Synchronous traps taken. */
  traps: number;
  /** Interrupts taken. */
  interrupts: number;
  /** `hcall`s executed. */
  hypercalls: number;
  /** `wfi`s that waited. */
  waits: number;
  /** Loads and stores that reached a device window. */
  mmio_accesses: number;
}

/** Exits to the hypervisor by kind (VmStats.exits). */
export interface ExitStats {
  /** Loads and stores that reached a device window. */
  mmio: number;
  /** `hcall` instructions. */
  hypercall: number;
  /** Exits turned into guest traps (a page nobody could produce: machine check). */
  trap_to_guest: number;
  /** Accesses that found the host pool empty and paused the VM until memory freed (overcommit). */
  host_memory_waits: number;
  /** Stores into a host frame holding decoded code. */
  code_writes: number;
  /** Accesses to absent pages, by absent state (`untouched` = first touch, `lazy`, `swapped`, …). */
  absent: Record<string, number>;
  /** Writes to protected pages, by protection flag (`copy-on-write`, `checkpoint`, …). */
  write_protect: Record<string, number>;
}

/** How the VM's guest page tables were virtualised (VmStats.mmu); docs/mmu.md explains each. */
export interface MmuStatsReport {
  /** `shadow` or `nested`. */
  mode: 'shadow' | 'nested';
  /** Whether traces keep the shadow coherent (null in nested mode). */
  traces: boolean | null;
  /** Neighbouring PTEs cached per walk (null in nested mode). */
  batch: number | null;
  /** Guest page-table walks. */
  page_walks: number;
  /** TLB misses answered by the shadow page tables without a walk. */
  shadow_hits: number;
  /** TLB misses answered by a large mapping. */
  large_hits: number;
  /** Entries filled by batched population. */
  batch_filled: number;
  /** Guest page-table pages write-protected for tracing. */
  traces_placed: number;
  /** Traces removed. */
  traces_removed: number;
  /** Guest stores to traced pages. */
  trace_hits: number;
  /** Cached shadow PTEs dropped by traces. */
  shadow_entries_dropped: number;
  /** vCPU TLB entries dropped by traces. */
  tlb_entries_dropped_by_traces: number;
  /** Guest sfences elided (traces had kept everything coherent). */
  flushes_elided: number;
  /** Guest sfences that dropped the whole shadow or flushed TLBs. */
  flushes_full: number;
  /** ASIDs installed with a different root than before. */
  asid_reuses: number;
  /** Shadow address spaces created (one per guest root table). */
  spaces_created: number;
  /** Shadow address spaces dropped. */
  spaces_dropped: number;
  /** Cross-vCPU TLB shootdowns of the whole hypervisor (HostStats.shootdowns). */
  shootdowns: number;
  /** TLB entries those shootdowns dropped (HostStats.shootdown_entries). */
  shootdown_entries: number;
  /** Shadow address spaces held now. */
  shadow_spaces: number;
  /** Leaf PTEs cached in them now. */
  cached_ptes: number;
  /** Guest pages traced now. */
  traced_pages: number;
  /** Large mappings held now. */
  large_mappings: number;
}

/** 4 MiB host runs behind guest regions (VmStats.large_pages; docs/large-pages.md). */
export interface LargePageStatsReport {
  /** The VM's large-page policy: `off`, `superpages` or `always`. */
  policy: LargePagePolicy;
  /** Regions backed by a whole host run at first touch. */
  runs_allocated: number;
  /** Regions moved onto a host run afterwards (T-3). */
  regions_promoted: number;
  /** Host runs split into independent frames (T-4). */
  regions_broken_up: number;
}

/** The VM's memory (VmStats.memory). */
export interface VmMemoryStats {
  /** Guest RAM pages (guest RAM / 4096). */
  guest_pages: number;
  /** Guest pages backed by a host frame. */
  pages_present: number;
  /** Bytes of those pages. */
  bytes_present: number;
  /** Present pages whose frame another VM may also map (copy-on-write). */
  pages_shared: number;
  /** Absent pages by state (`untouched`, `lazy`, `swapped`, …; `deferred` for a lazy restore's regions). */
  pages_absent: Record<string, number>;
  /** Code pages decoded, by the hypervisor's shared decode cache (HostStats.decode_cache). */
  decoded_pages: number;
  /** Decoded pages held now. */
  decoded_pages_in_use: number;
  /** Decoded pages dropped. */
  decoded_pages_dropped: number;
  /** 4 KiB frames of the host pool in use, by every VM of the hypervisor (HostStats.pool). */
  host_frames_used: number;
  /** Frames of the host pool. */
  host_frames_total: number;
}

/** One promotion of the T-3 prioritizer, in the order it happened. */
export interface PromotionRecord {
  /** The scan that promoted the region (1-based). */
  scan: number;
  /** The 4 MiB guest-physical region (gpa / 4 MiB). */
  region: number;
  /** The region's first guest-physical address. */
  gpa: number;
  /** Accessed pages the region had at that scan. */
  pages_accessed: number;
}

/** The counters of `--promote-hot` (T-3, AccessedBitPrioritizer). */
export interface PrioritizerStatsReport {
  /** Scans so far. */
  scans: number;
  /** Scans of the counting-only phase. */
  counting_scans: number;
  /** Regions promoted. */
  promotions: number;
  /** Promotions the kernel refused. */
  refusals: number;
  /** Accessed pages counted by the last scan. */
  pages_counted_last_scan: number;
  /** Guest accessed bits cleared (nested mode). */
  guest_accessed_bits_cleared: number;
  /** Each promotion, in order. */
  promoted_regions: PromotionRecord[];
  /**
   * The last scan that saw any access: its regions not yet large with their accessed-page
   * counts, busiest first (null when no scan saw any).
   */
  last_busy_scan: BusyScan | null;
}

/** A scan of the T-3 prioritizer that saw accessed pages (PrioritizerStatsReport.last_busy_scan). */
export interface BusyScan {
  /** The scan's number. */
  scan: number;
  /** Regions not yet large with accessed pages, busiest first. */
  regions: {
    /** The 4 MiB region's number. */
    region: number;
    /** Its pages accessed since the previous scan. */
    pages: number;
  }[];
}

/** The counters of `--reclaim-cold` (T-4, LowActivityReclaimer). */
export interface ReclaimerStatsReport {
  /** Regions demoted for tracking. */
  regions_demoted: number;
  /** Tracked regions found low-activity and broken up. */
  regions_broken_up: number;
  /** Tracked regions found busy and left large. */
  regions_re_promoted: number;
  /** Tracked regions whose run went away during tracking. */
  regions_abandoned: number;
  /** Cold pages swapped out or dropped as zero pages. */
  pages_reclaimed: number;
  /** Cold pages the swap refused. */
  pages_kept: number;
  /** Reclaims stopped because the swap file was full. */
  swap_full: number;
  /** Host memory released by reclaiming. */
  bytes_returned: number;
  /** Regions being tracked now. */
  regions_tracked: number;
}

/** The counters of a swap file (SwapFile). */
export interface SwapStatsReport {
  /** Pages written to slots. */
  pages_out: number;
  /** Pages read back. */
  pages_in: number;
  /** All-zero pages dropped without I/O. */
  zero_pages_dropped: number;
  /** Swap-outs refused. */
  refused: number;
  /** Slots holding a page now (kept clean copies included). */
  slots_in_use: number;
  /** Slots kept after a swap-in as the clean copy memory-error recovery may re-read (while the page stays clean). */
  slots_kept: number;
  /** Kept slots given up for a new swap-out because the file was at its limit. */
  kept_evicted: number;
  /** Swap-outs of a page still clean in its kept slot: no write. */
  out_without_write: number;
  /** Size of the swap file. */
  file_bytes: number;
}

/** The memory policies acting on a VM (VmStats.policies); each only when it is in use. */
export interface PolicyStats {
  /** T-3 (`--promote-hot`). */
  accessed_bit_prioritizer?: PrioritizerStatsReport;
  /** T-4 (`--reclaim-cold`). */
  low_activity_reclaimer?: ReclaimerStatsReport;
  /** The swap file of T-4. */
  swap?: SwapStatsReport;
}

/** The VM's memory balloon (VmStats.balloon; docs/balloon.md). */
export interface BalloonCountersReport {
  /** Pages the host wants in the balloon. */
  target_pages: number;
  /** Pages in it now. */
  actual_pages: number;
  /** FEATURES as the guest reads it (bit 0 deflate on OOM, 1 free-page reporting, 2 statistics). */
  features: number;
  /** Commands the driver issued. */
  commands: number;
  /** Pages put into the balloon. */
  pages_inflated: number;
  /** Pages taken out. */
  pages_deflated: number;
  /** Pages whose frames free-page reporting released. */
  pages_reported_free: number;
  /** STATS commands received. */
  stats_received: number;
  /** STATS_SEQ: the host's requests for statistics. */
  stats_requested: number;
  /** Guest errors: refused commands and touches of ballooned pages. */
  guest_errors: number;
}

/** The VM's block device (VmStats.disk; docs/block-device.md). */
export interface DiskStatsReport {
  /** Whether it accepts asynchronous requests. */
  async: boolean;
  /** Whether asynchronous transfers bypass the host page cache (O_DIRECT). */
  direct: boolean;
  /** READs completed (synchronous and asynchronous). */
  reads: number;
  /** WRITEs completed. */
  writes: number;
  /** FLUSHes issued. */
  flushes: number;
  /** Sectors read. */
  sectors_read: number;
  /** Sectors written. */
  sectors_written: number;
  /** Requests that ended with an error status. */
  errors: number;
  /** Asynchronous requests accepted. */
  async_submitted: number;
  /** Asynchronous requests completed. */
  async_completed: number;
  /** Requests in flight now (IN_FLIGHT). */
  in_flight: number;
  /** Most in flight at once. */
  in_flight_max: number;
  /** Mean latency of the completed asynchronous requests, issue to completion, in µs (0 before any). */
  latency_mean_us: number;
  /** Its exponential moving average (weight 1/8), in µs. */
  latency_ewma_us: number;
}

/** The services acting on a VM whose counters vmStats adds (as VmStats.policies). */
export interface VmStatsExtras {
  /** The VM's balloon (reported as VmStats.balloon, not as a policy). */
  balloon?: BalloonDevice | null;
  /** The VM's block device (reported as VmStats.disk). */
  block?: BlockDevice | null;
  /** The T-3 prioritizer. */
  promoter?: AccessedBitPrioritizer | null;
  /** The T-4 reclaimer. */
  reclaimer?: LowActivityReclaimer | null;
  /** A swap file attached to the VM. */
  swap?: SwapFile | null;
}

/** Every counter of one VM (`GET /vms/{name}/stats`; the `vm` part of `tools/run --stats --json`). */
export interface VmStats {
  /** The VM's name. */
  name: string;
  /** Instructions retired, over all vCPUs, since the last reset. */
  instructions: number;
  /** Per-vCPU counters, in vCPU order. */
  vcpus: VcpuCounters[];
  /** Exits to the hypervisor. */
  exits: ExitStats;
  /** MMIO accesses per device window (`console`, `timer`, `power`, `bootargs`, `block`, …). */
  mmio_accesses: Record<string, number>;
  /** The MMU. */
  mmu: MmuStatsReport;
  /** Large pages. */
  large_pages: LargePageStatsReport;
  /** Memory. */
  memory: VmMemoryStats;
  /** Memory policies, when any was given to vmStats. */
  policies?: PolicyStats;
  /** The memory balloon, when the VM has one. */
  balloon?: BalloonCountersReport;
  /** The block device, when the VM has one. */
  disk?: DiskStatsReport;
}

/** The host memory pool (HostStats.pool). */
export interface PoolStatsReport {
  /** Frames (4 KiB) in the pool. */
  total_frames: number;
  /** Frames held by some VM (a frame shared copy-on-write counts once). */
  used_frames: number;
  /** Frames free. */
  free_frames: number;
  /** Bytes of the pool. */
  total_bytes: number;
  /** Bytes in use. */
  used_bytes: number;
  /** Bytes free. */
  free_bytes: number;
  /** Aligned 4 MiB runs wholly free. */
  whole_free_runs: number;
  /** Frames given back to the OS since the pool was created. */
  frames_released: number;
  /** Frames whose contents come from a privately mapped checkpoint file. */
  file_mapped_frames: number;
}

/** The decoded-code cache shared by every VM (HostStats.decode_cache). */
export interface DecodeCacheStatsReport {
  /** Host frames decoded. */
  pages_decoded: number;
  /** Words re-decoded in place after a store changed them. */
  words_redecoded: number;
  /** Decoded frames dropped. */
  pages_dropped: number;
  /** Times the full cache dropped everything at once. */
  cache_flushes: number;
  /** Decoded frames held now. */
  slots_in_use: number;
}

/** The compiled tier shared by every VM (HostStats.jit). */
export interface JitStatsReport {
  /** Regions of hot guest code compiled to JavaScript. */
  regions_compiled: number;
  /** Guest instructions in those regions. */
  words_compiled: number;
  /** Time spent compiling, in milliseconds. */
  compile_ms: number;
  /** Compiled regions dropped because their code page changed. */
  invalidations: number;
  /** Calls into compiled code. */
  entries: number;
  /** Instructions retired by compiled code (the rest were interpreted). */
  instructions_compiled: number;
  /** Whether the two times below are measured (Hypervisor.timeTiers; `tools/run --stats` turns it on). */
  timed: boolean;
  /** Time in compiled code, in milliseconds (0 unless timed). */
  compiled_ms: number;
  /** Time in vCPU slices outside compiled code and compiling: the interpreter, traps and exits (0 unless timed). */
  interpreter_ms: number;
  /** Passes of strip-mined loops (iterations without TLB compares, up to a page crossing). */
  strip_passes: number;
  /** Of regions_compiled, those whose function the process already had (the same code compiled before, by any VM). */
  regions_reused: number;
}

/** Host-wide counters (`GET /host/stats`; the `host` part of `tools/run --stats --json`). */
export interface HostStats {
  /** VMs in the hypervisor. */
  vms: number;
  /** The host memory pool. */
  pool: PoolStatsReport;
  /** Resident memory of the whole process. */
  process_rss_bytes: number;
  /** The decoded-code cache. */
  decode_cache: DecodeCacheStatsReport;
  /** The compiled tier (VmConfig.tier 'jit'); all 0 when no VM compiles. */
  jit: JitStatsReport;
  /** Cross-vCPU TLB shootdowns. */
  shootdowns: number;
  /** TLB entries they dropped. */
  shootdown_entries: number;
}

/** Every counter of `vm` (of hypervisor `hv`), plus those of the policies in `extra`. */
export function vmStats(hv: Hypervisor, vm: Vm, extra: VmStatsExtras = {}): VmStats {
  const exits = vm.exits;
  const mmu = vm.mmu.stats;
  const shadow = vm.mmu.census();
  const large = vm.memory.largePageStats;
  const census = vm.memory.census();
  const decode = hv.decodeCache.stats;
  const pool = hv.poolStats();
  const shadowMode = vm.mmu.mode === 'shadow';
  const stats: VmStats = {
    name: vm.name,
    instructions: vm.instructionsRetired,
    vcpus: vm.vcpus.map((vcpu) => ({
      id: vcpu.id,
      instret: vcpu.instret,
      tlb_hits: vcpu.stats.tlbHits,
      tlb_misses: vcpu.stats.tlbMisses,
      tlb_fills: vcpu.tlb.fills,
      tlb_drops: vcpu.tlb.entriesDropped,
      tlb_flushes: vcpu.tlb.fullFlushes,
      page_walks: vcpu.walker.walks,
      traps: vcpu.stats.traps,
      interrupts: vcpu.stats.interrupts,
      hypercalls: vcpu.stats.hypercalls,
      waits: vcpu.stats.waits,
      mmio_accesses: vcpu.stats.mmioAccesses,
    })),
    exits: {
      mmio: exits.mmio,
      hypercall: exits.hypercall,
      trap_to_guest: exits.trapToGuest,
      host_memory_waits: exits.hostMemoryWaits,
      code_writes: exits.codeWrites,
      absent: { ...exits.absent },
      write_protect: { ...exits.writeProtect },
    },
    mmio_accesses: vm.bus.accessCounts(),
    mmu: {
      mode: vm.mmu.mode,
      traces: shadowMode ? vm.mmu.traces : null,
      batch: shadowMode ? vm.mmu.batch : null,
      page_walks: mmu.walks,
      shadow_hits: mmu.shadowHits,
      large_hits: mmu.largeHits,
      batch_filled: mmu.batchFilled,
      traces_placed: mmu.tracesPlaced,
      traces_removed: mmu.tracesRemoved,
      trace_hits: mmu.traceHits,
      shadow_entries_dropped: mmu.shadowEntriesDropped,
      tlb_entries_dropped_by_traces: vm.translationsInvalidated,
      flushes_elided: mmu.flushesElided,
      flushes_full: mmu.flushesFull,
      asid_reuses: mmu.asidReuses,
      spaces_created: mmu.spacesCreated,
      spaces_dropped: mmu.spacesDropped,
      shootdowns: hv.shootdowns,
      shootdown_entries: hv.shootdownEntries,
      shadow_spaces: shadow.spaces,
      cached_ptes: shadow.cachedPtes,
      traced_pages: shadow.tracedPages,
      large_mappings: vm.mmu.largeMappings(),
    },
    large_pages: {
      policy: vm.largePagePolicy,
      runs_allocated: large.runsAllocated,
      regions_promoted: large.regionsPromoted,
      regions_broken_up: large.regionsBrokenUp,
    },
    memory: {
      guest_pages: vm.memory.pageCount,
      pages_present: census.present,
      bytes_present: census.present * PAGE_SIZE,
      pages_shared: census.shared,
      pages_absent: { ...census.absent },
      decoded_pages: decode.pagesDecoded,
      decoded_pages_in_use: decode.slotsInUse,
      decoded_pages_dropped: decode.pagesDropped,
      host_frames_used: pool.usedFrames,
      host_frames_total: pool.totalFrames,
    },
  };
  const policies = policyStats(extra);
  if (policies) stats.policies = policies;
  if (extra.balloon) {
    const b = extra.balloon;
    stats.balloon = {
      target_pages: b.target,
      actual_pages: b.actual,
      features: b.features,
      commands: b.counters.commands,
      pages_inflated: b.counters.inflated,
      pages_deflated: b.counters.deflated,
      pages_reported_free: b.counters.reportedFree,
      stats_received: b.counters.statsReceived,
      stats_requested: b.statsSequence,
      guest_errors: b.counters.guestErrors,
    };
  }
  if (extra.block) stats.disk = diskStats(extra.block);
  return stats;
}

/** A block device's counters (VmStats.disk). */
export function diskStats(block: BlockDevice): DiskStatsReport {
  const s = block.stats;
  const us = (ns: number): number => Math.round(ns / 100) / 10;
  return {
    async: block.async,
    direct: block.disk.direct,
    reads: s.reads,
    writes: s.writes,
    flushes: s.flushes,
    sectors_read: s.sectorsRead,
    sectors_written: s.sectorsWritten,
    errors: s.errors,
    async_submitted: s.asyncSubmitted,
    async_completed: s.asyncCompleted,
    in_flight: block.inFlight,
    in_flight_max: s.asyncInFlightMax,
    latency_mean_us: s.asyncCompleted === 0 ? 0 : us(s.asyncLatencySumNs / s.asyncCompleted),
    latency_ewma_us: us(s.asyncLatencyEwmaNs),
  };
}

/** The counters of the policies in `extra`, or null when there are none. */
function policyStats(extra: VmStatsExtras): PolicyStats | null {
  const policies: PolicyStats = {};
  if (extra.promoter) policies.accessed_bit_prioritizer = prioritizerStats(extra.promoter);
  if (extra.reclaimer) {
    const r = extra.reclaimer.stats();
    policies.low_activity_reclaimer = {
      regions_demoted: r.regionsDemoted,
      regions_broken_up: r.regionsBrokenUp,
      regions_re_promoted: r.regionsRePromoted,
      regions_abandoned: r.regionsAbandoned,
      pages_reclaimed: r.pagesReclaimed,
      pages_kept: r.pagesKept,
      swap_full: r.swapFull,
      bytes_returned: r.bytesReturned,
      regions_tracked: r.regionsTracked,
    };
  }
  if (extra.swap) {
    const s = extra.swap.stats();
    policies.swap = {
      pages_out: s.pagesOut,
      pages_in: s.pagesIn,
      zero_pages_dropped: s.zeroPagesDropped,
      refused: s.refused,
      slots_in_use: s.slotsInUse,
      slots_kept: s.slotsKept,
      kept_evicted: s.keptEvicted,
      out_without_write: s.outWithoutWrite,
      file_bytes: s.fileBytes,
    };
  }
  return Object.keys(policies).length > 0 ? policies : null;
}

const REGION_BYTES = 4 * 1024 * 1024;

function prioritizerStats(promoter: AccessedBitPrioritizer): PrioritizerStatsReport {
  const p = promoter.stats();
  const busy = promoter.history().filter((record) => [...record.counts.values()].some((count) => count > 0));
  const last = busy[busy.length - 1];
  return {
    scans: p.scans,
    counting_scans: p.countingScans,
    promotions: p.promotions,
    refusals: p.refusals,
    pages_counted_last_scan: p.pagesCountedLastScan,
    guest_accessed_bits_cleared: p.guestAccessedBitsCleared,
    promoted_regions: promoter.promotions().map((q) => ({ scan: q.scan, region: q.region, gpa: q.region * REGION_BYTES, pages_accessed: q.count })),
    last_busy_scan: last
      ? {
        scan: last.scan,
        regions: [...last.counts].filter(([, count]) => count > 0).sort((a, b) => b[1] - a[1]).map(([region, pages]) => ({ region, pages })),
      }
      : null,
  };
}

/** The host-wide counters of `hv`: its pool, decode cache, shootdowns, VMs, and the process's RSS. */
export function hostStats(hv: Hypervisor): HostStats {
  const pool = hv.poolStats();
  const decode = hv.decodeCache.stats;
  const jit = hv.jitStats();
  return {
    vms: hv.vms.length,
    pool: {
      total_frames: pool.totalFrames,
      used_frames: pool.usedFrames,
      free_frames: pool.freeFrames,
      total_bytes: pool.totalFrames * PAGE_SIZE,
      used_bytes: pool.usedFrames * PAGE_SIZE,
      free_bytes: pool.freeFrames * PAGE_SIZE,
      whole_free_runs: pool.wholeFreeRuns,
      frames_released: pool.framesReleased,
      file_mapped_frames: pool.fileMappedFrames,
    },
    process_rss_bytes: processRss(),
    decode_cache: {
      pages_decoded: decode.pagesDecoded,
      words_redecoded: decode.wordsRedecoded,
      pages_dropped: decode.pagesDropped,
      cache_flushes: decode.cacheFlushes,
      slots_in_use: decode.slotsInUse,
    },
    jit: {
      regions_compiled: jit.regionsCompiled,
      words_compiled: jit.wordsCompiled,
      compile_ms: jit.compileMs,
      invalidations: jit.invalidations,
      entries: jit.entries,
      instructions_compiled: jit.retiredCompiled,
      timed: hv.timeTiers,
      compiled_ms: jit.compiledMs,
      interpreter_ms: Math.max(0, hv.sliceMs - jit.compiledMs - jit.compileMs),
      strip_passes: jit.strips,
      regions_reused: jit.regionsReused,
    },
    shootdowns: hv.shootdowns,
    shootdown_entries: hv.shootdownEntries,
  };
}
