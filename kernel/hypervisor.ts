/**
 * The hypervisor: one host memory pool, the decoded-code cache shared over it, and the VMs that
 * live in it. It schedules every vCPU of every VM deterministically: round-robin slices measured
 * in guest instructions, so the same inputs give the same outputs and instruction counts.
 */
import { KernelError } from './errors.ts';
import { DecodeCache } from './cpu/decode-cache.ts';
import { jitCacheOf } from './cpu/jit/jit.ts';
import type { JitStats } from './cpu/jit/jit.ts';
import { PRECISE_WINDOW, SliceEnd } from './cpu/vcpu.ts';
import { FramePool } from './memory/frame-pool.ts';
import { GuestAccessError } from './memory/guest-memory.ts';
import type { FramePoolStats, HostMemory } from './memory/frame-pool.ts';
import type { FrameHandle } from './memory/addresses.ts';
import { TlbArena } from './mmu/tlb.ts';
import type { TlbArenaMemory } from './mmu/tlb.ts';
import { ZeroedArena } from './memory/zeroed-arena.ts';
import type { ArenaMemory } from './memory/zeroed-arena.ts';
import { StopCode, Vm } from './vm.ts';
import type { StopReason, VmConfig, VmEnvironment } from './vm.ts';

/** Limits of one Hypervisor.run or runAsync call. */
export interface RunOptions {
  /** Stop each VM after this many instructions (summed over its vCPUs). */
  maxInstructions?: number;
  /** Instructions per vCPU slice (default 20,000). */
  quantum?: number;
  /**
   * End a VM's run with `timer-wait` when its vCPUs only waited for their timer in a round (wfi
   * skipped virtual time to the deadline; none did other work): a host can then run it again
   * after some host time instead of spinning through an idle guest's timer ticks as fast as it
   * can (default false: virtual time is skipped and the run goes on). Guest-visible results are
   * the same either way.
   */
  yieldOnTimerWait?: boolean;
}

/** How one VM's part of a Hypervisor.run or runAsync call ended. */
export interface RunResult {
  /** The VM this result is about. */
  vm: Vm;
  /**
   * Why the run ended for this VM: its StopReason when it stopped (halted, guest or host error,
   * paused), `budget` when it retired `maxInstructions`, or `idle` when every vCPU waits for an
   * interrupt that nothing can raise (see IDLE_FOREVER). A VM that ended on `budget` or `idle`
   * is still running: run it again to continue.
   */
  reason: StopReason | {
    /** The VM retired RunOptions.maxInstructions; it can be run again. */
    kind: 'budget';
  } | {
    /** Every vCPU waits (wfi) and no device can wake it. */
    kind: 'idle';
  } | {
    /** With RunOptions.yieldOnTimerWait: the vCPUs waited for their timer (virtual time skipped to it); run it again later. */
    kind: 'timer-wait';
  };
  /** Instructions this VM retired during the call, over all its vCPUs. */
  instructions: number;
}

/** Returned when a VM's vCPUs all wait and nothing can wake them. */
export const IDLE_FOREVER = 'all vCPUs are waiting for an interrupt that nothing can raise';

/** Shootdowns of at most this many pages walk each page's fill-log chain; larger ones one pass over the log. */
const SHOOTDOWN_BY_PAGE = 1024;

/**
 * What a worker thread needs to attach to a hypervisor's host pool (Hypervisor.sharePool, then
 * attachToPool in the worker): plain data that postMessage carries across threads.
 */
export interface SharedPoolHandle {
  /** The pool's memory (HostRegion.sharedBuffer()). */
  memory: SharedArrayBuffer;
  /** The frame pool's allocation state (reference counts, chunk lists, counters, the lock). */
  state: SharedArrayBuffer;
  /** The pool's size in bytes. */
  bytes: number;
}

/** Options of Hypervisor.forkVm. */
export interface ForkOptions<D> {
  /** The child's name (default: the parent's with a suffix). */
  name?: string;
  /** Attaches the child's devices (the same, in the same order, as the parent's). */
  attach?: (child: Vm) => D;
}

function describeStop(reason: StopReason): string {
  switch (reason.kind) {
    case 'halted': return `powered off with exit code ${reason.exitCode}`;
    case 'guest-error': return `guest error: ${reason.message}`;
    case 'host-error': return `host error: ${reason.message}`;
    default: return reason.kind;
  }
}

/**
 * A hypervisor: one host memory pool (mmap'd by the native addon) that every VM created in it
 * takes its guest frames from, the decoded-code cache shared by their vCPUs, and a deterministic
 * scheduler. Create one with createHypervisor, then VMs with createVm; run them with run or
 * runAsync; fork them with forkVm/forkVmWith.
 */
export class Hypervisor {
  /** @internal The host frame pool (kernel only; see poolStats). */
  readonly pool: FramePool;
  /**
   * The decoded-code cache shared by every vCPU of every VM in this hypervisor (code is decoded
   * once per host frame). Embedders read its `stats`.
   */
  readonly decodeCache: DecodeCache;
  /** The VMs of this hypervisor, in creation order (destroyVm removes one). run() defaults to all. */
  readonly vms: Vm[] = [];
  /** Devices that may wake a waiting VM later (e.g. interactive console input) register here. */
  readonly externalWakeSources = new Set<Vm>();
  private nextVmId = 0;
  /** Cross-vCPU TLB shootdowns performed (a guest page's backing changed while vCPUs could hold it). */
  shootdowns = 0;
  /** TLB entries those shootdowns dropped, over all vCPUs. */
  shootdownEntries = 0;

  private readonly tlbs: TlbArena;
  /** What every VM of this hypervisor is created with (built once: a fork or restore creates a VM). */
  private readonly vmEnvironment: VmEnvironment;
  /** @internal Zeroed per-page arrays for the VMs' guest memory. */
  readonly arena: ZeroedArena;

  /**
   * @internal Use createHypervisor. `memory` is the host pool; `tlbArena`: memory to carve vCPU
   * TLBs from (see TlbArena); `pageArena`: memory for VMs' per-page arrays (see ZeroedArena).
   * Without them both are allocated on the JS heap.
   */
  constructor(memory: HostMemory, tlbArena: TlbArenaMemory | null = null, pageArena: ArenaMemory | null = null, poolState: SharedArrayBuffer | null = null) {
    this.ownedMemory = [memory, tlbArena, pageArena];
    this.tlbs = new TlbArena(tlbArena);
    this.arena = new ZeroedArena(pageArena);
    this.pool = new FramePool(memory, poolState);
    this.decodeCache = new DecodeCache(this.pool.frameCount);
    if (this.pool.shared) this.watchSharedAllocations();
    this.vmEnvironment = {
      pool: this.pool,
      decodeCache: this.decodeCache,
      tlbs: this.tlbs,
      arena: this.arena,
      shootdown: (changedVm, gpns) => this.shootdown(changedVm, gpns),
    };
    this.decodeCache.onSlotDropped = (codeBase) => {
      for (const vm of this.vms) for (const vcpu of vm.vcpus) vcpu.tlb.flushExecBase(codeBase);
    };
    this.decodeCache.onFrameDecoded = (frame) => {
      for (const vm of this.vms) for (const vcpu of vm.vcpus) vcpu.tlb.flushWritesToFrame(frame);
    };
    this.decodeCache.onFlush = () => {
      for (const vm of this.vms) for (const vcpu of vm.vcpus) vcpu.tlb.flushAll();
    };
  }

  /**
   * Makes this hypervisor's pool attachable from worker threads (attachToPool in the worker) and
   * returns what to post to them. Frames a worker frees can come back to this thread holding new
   * bytes, so from now on every allocation drops this thread's decoded code for the frames it gets.
   */
  sharePool(): SharedPoolHandle {
    if (this.#closed) throw new KernelError('BV_CLOSED', 'this hypervisor is closed');
    const memory = this.pool.memory as HostMemory & { sharedBuffer?: () => SharedArrayBuffer; kind?: string };
    if (typeof memory.sharedBuffer !== 'function') throw new KernelError('BV_NOT_SHAREABLE', 'this hypervisor\'s host memory cannot be shared with worker threads (it is not a native region)');
    if (!this.pool.shared) {
      this.pool.shared = true;
      this.watchSharedAllocations();
    }
    return { memory: memory.sharedBuffer(), state: this.pool.sharedState, bytes: this.pool.memory.bytes };
  }

  /**
   * Drops a FrameHandle (GuestMemory.exportPage) that no VM will import: its reference to the
   * frame goes, and the frame is freed if it was the last.
   */
  dropFrameHandle(handle: FrameHandle): void {
    const frame = handle as number;
    if (!this.pool.inUse(frame)) throw new KernelError('BV_BAD_SHARE', `${frame} is not a frame handle of this pool`);
    if (this.pool.refCount[frame] === 1) this.decodeCache.drop(frame);
    this.pool.release(frame);
  }

  /** A frame another thread freed may hold code this thread decoded from its old contents. */
  private watchSharedAllocations(): void {
    const cache = this.decodeCache;
    this.pool.onAllocated = (firstFrame, count) => cache.dropFrames(firstFrame, count);
  }

  /** Counters of the compiled tier (VmConfig.tier 'jit'): regions compiled, compile time, invalidations. */
  jitStats(): JitStats {
    return { ...jitCacheOf(this.decodeCache).stats };
  }

  #sliceMs = 0;
  #timeTiers = false;
  /** Ends runAsync's sleep while every VM waits for an external event (notifyExternalWake). */
  #externalWait: (() => void) | null = null;

  /**
   * An external event arrived for a waiting VM (a device completed a request, input came):
   * runAsync, sleeping because every VM waits, looks again now rather than at its next 5 ms poll.
   */
  notifyExternalWake(): void {
    const wake = this.#externalWait;
    this.#externalWait = null;
    wake?.();
  }

  /**
   * Whether vCPU slices and calls into compiled code are timed (sliceMs, JitStats.compiledMs).
   * Off by default: a clock read costs ~0.3-0.5 µs on these machines, more than a short compiled
   * region runs; `tools/run --stats` turns it on.
   */
  get timeTiers(): boolean {
    return this.#timeTiers;
  }

  /** Turns the timing of slices and compiled calls on or off (see the getter). */
  set timeTiers(on: boolean) {
    this.#timeTiers = on;
    jitCacheOf(this.decodeCache).timing = on;
  }

  /**
   * Milliseconds spent in vCPU slices while timeTiers is on (guest code in either tier, with the
   * traps, exits and compiles they handle inline); with JitStats.compiledMs it splits run time
   * between the tiers.
   */
  get sliceMs(): number {
    return this.#sliceMs;
  }

  /** The host memory behind the pool and the arenas, unmapped by close(). */
  private readonly ownedMemory: readonly (object | null)[];
  #closed = false;

  /** Whether close() has run. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Destroys every VM and unmaps the host pool and the TLB and page arenas now, rather than when
   * the garbage collector finds them (a process that creates hypervisors one after another keeps
   * each one's touched memory until then). The hypervisor and its VMs must not be used afterwards.
   * Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    for (const vm of [...this.vms]) this.destroyVm(vm);
    this.#closed = true;
    for (const memory of this.ownedMemory) (memory as { close?: () => void } | null)?.close?.();
  }

  /** Frames of the host pool: total, in use, free, whole free runs, released to the OS. */
  poolStats(): FramePoolStats {
    return this.pool.stats();
  }

  /**
   * Bytes of the host pool resident in host RAM now (mincore over the pool's mapping): the host
   * memory guest RAM really takes, unlike the process RSS, which also moves with the JS heap.
   * Throws KernelError (BV_NO_RESIDENCY) when the pool's memory cannot tell (not a native region).
   */
  residentPoolBytes(): number {
    const memory = this.pool.memory;
    if (!memory.residency) throw new KernelError('BV_NO_RESIDENCY', 'this host memory cannot report residency');
    const pages = memory.residency(0, memory.bytes);
    let resident = 0;
    for (let i = 0; i < pages.length; i++) resident += pages[i]!;
    return pages.length === 0 ? 0 : resident * (memory.bytes / pages.length);
  }

  /** Whether the host pool can map checkpoint files privately (an anonymous pool: map-mode restore). */
  get canMapFiles(): boolean {
    const memory = this.pool.memory as { mapFilePrivate?: unknown; kind?: unknown };
    return typeof memory.mapFilePrivate === 'function' && (memory.kind === undefined || memory.kind === 'anonymous');
  }

  /**
   * Creates a VM in this hypervisor's pool (no devices yet: attach them, then load an image).
   * Its guest memory takes no host frame until the guest touches a page. Throws KernelError
   * (BV_BAD_VM_CONFIG) for a bad memory size, vCPU count or large-page policy.
   */
  createVm(config: VmConfig): Vm {
    if (this.#closed) throw new KernelError('BV_CLOSED', 'this hypervisor is closed');
    const vm = new Vm(this.nextVmId++, config, this.vmEnvironment);
    this.vms.push(vm);
    return vm;
  }

  /**
   * Forks a VM (T-13): the child shares every page of the parent copy-on-write and starts with
   * the parent's CPU and component state; nothing is copied, and the cost does not grow with
   * memory size (GuestMemory.forkInto). The parent must be running or paused (not stopped) and
   * between runs. The child needs the same devices, attached in the same order, to receive the
   * parent's device state: pass `attach`. Use forkVmWith to get what `attach` returns.
   */
  forkVm(parent: Vm, options: ForkOptions<unknown> = {}): Vm {
    return this.forkVmWith(parent, options).vm;
  }

  /** Like forkVm, and returns what `attach` returned (the child's devices). */
  forkVmWith<D>(parent: Vm, options: ForkOptions<D> = {}): {
    /** The child VM: ready to run from where the parent stands, its memory shared copy-on-write. */
    vm: Vm;
    /** What `attach` returned for the child (undefined without `attach`). */
    devices: D;
  } {
    if (!this.vms.includes(parent)) throw new KernelError('BV_BAD_VM', `${parent.name} does not belong to this hypervisor`);
    if (parent.stopCode !== StopCode.RUNNING && parent.stopCode !== StopCode.PAUSED) {
      throw new KernelError('BV_FORK', `fork: ${parent.name} has stopped (${describeStop(parent.stopReason)}); fork a running or paused VM`);
    }
    const child = this.createVm({ ...parent.config, name: options.name ?? `${parent.name}-fork${this.nextVmId}`, tier: parent.tier });
    let devices: D;
    try {
      devices = options.attach?.(child) as D;
      parent.forkInto(child); // checks devices and layout first: a refused fork leaves the parent untouched
    } catch (error) {
      this.destroyVm(child);
      throw error;
    }
    return { vm: child, devices };
  }

  /**
   * Removes a VM from this hypervisor and releases every host frame it holds (frames it shares
   * with a parent or child stay with them). The Vm object must not be used afterwards; services
   * that keep per-VM state (a SwapFile with pages of it) should forget it first.
   */
  destroyVm(vm: Vm): void {
    const index = this.vms.indexOf(vm);
    if (index < 0) throw new KernelError('BV_BAD_VM', `${vm.name} does not belong to this hypervisor`);
    vm.destroy();
    this.vms.splice(index, 1);
    this.externalWakeSources.delete(vm);
  }

  /**
   * Drops every vCPU's translations derived from the given guest pages of a VM, before the
   * caller relies on the change (cross-vCPU shootdown).
   */
  private shootdown(vm: Vm, gpns: ArrayLike<number>): void {
    this.shootdowns++;
    // Up to a balloon command's 1024 pages, each page's chain of fill-log records (O(its
    // entries)) costs less than a pass over a full log (128 Ki records).
    if (gpns.length <= SHOOTDOWN_BY_PAGE) {
      for (const vcpu of vm.vcpus) for (let i = 0; i < gpns.length; i++) this.shootdownEntries += vcpu.tlb.flushGpn(gpns[i]!);
      return;
    }
    // Many pages: one pass over each vCPU's fill log with a bitmap.
    const marked = new Uint8Array(vm.memory.pageCount);
    for (let i = 0; i < gpns.length; i++) marked[gpns[i]!] = 1;
    for (const vcpu of vm.vcpus) this.shootdownEntries += vcpu.tlb.flushGpns(marked);
  }

  /**
   * Runs the given VMs (default: all) until each stops, waits forever, or reaches its budget.
   * Synchronous; see runAsync for a version that yields to the event loop.
   */
  run(options: RunOptions = {}, vms: readonly Vm[] = this.vms): RunResult[] {
    const states = vms.map((vm) => ({ vm, start: vm.instructionsRetired, done: null as RunResult['reason'] | null }));
    for (;;) {
      let active = 0;
      for (const state of states) {
        if (state.done) continue;
        state.done = this.runRound(state.vm, state.start, options);
        if (!state.done) active++;
      }
      if (active === 0) break;
    }
    return states.map((s) => ({ vm: s.vm, reason: s.done!, instructions: s.vm.instructionsRetired - s.start }));
  }

  /** Like run, but returns to the event loop between rounds so devices and timers can act. */
  async runAsync(options: RunOptions = {}, vms: readonly Vm[] = this.vms): Promise<RunResult[]> {
    const states = vms.map((vm) => ({ vm, start: vm.instructionsRetired, done: null as RunResult['reason'] | null }));
    let roundsSinceYield = 0;
    for (;;) {
      let active = 0;
      let waitingForInput = 0;
      for (const state of states) {
        if (state.done) continue;
        const outcome = this.runRound(state.vm, state.start, options);
        if (outcome?.kind === 'idle' && this.externalWakeSources.has(state.vm)) {
          waitingForInput++;
          continue;
        }
        state.done = outcome;
        if (!state.done) active++;
      }
      if (active === 0 && waitingForInput === 0) break;
      // A VM that went idle earlier in this round may have been woken by a later one (a channel
      // doorbell from a peer VM): it runs in the next round, without the idle sleep.
      const woken = active === 0 && states.some((s) => !s.done && s.vm.vcpus.some((vcpu) => vcpu.waiting && vcpu.wakeable));
      if (active === 0 || ++roundsSinceYield >= 16) {
        roundsSinceYield = 0;
        // Idle VMs waiting for input: let the event loop deliver it without spinning.
        await new Promise<void>((resolve) => {
          if (active > 0 || woken) setImmediate(resolve);
          else {
            this.#externalWait = resolve; // (notifyExternalWake ends the sleep early)
            setTimeout(resolve, 5);
          }
        });
        this.#externalWait = null;
      }
    }
    return states.map((s) => ({ vm: s.vm, reason: s.done!, instructions: s.vm.instructionsRetired - s.start }));
  }

  /** One scheduling round for one VM. Returns why it is done, or null to keep going. */
  private runRound(vm: Vm, start: number, options: RunOptions): RunResult['reason'] | null {
    const quantum = options.quantum ?? 20_000;
    const maxInstructions = options.maxInstructions ?? Infinity;
    if (vm.stopCode !== StopCode.RUNNING) return vm.stopReason;
    const yieldOnTimerWait = options.yieldOnTimerWait === true;
    // With yieldOnTimerWait: whether every vCPU that ran ended its slice on a timer wait.
    let timerWaits = 0;
    let others = 0;
    for (const vcpu of vm.vcpus) {
      if (vm.stopCode !== StopCode.RUNNING) break;
      if (vcpu.waiting) {
        if (!vcpu.wakeable) continue;
        vcpu.finishWait();
      }
      vcpu.endSliceOnTimerWait = yieldOnTimerWait;
      const remaining = maxInstructions - (vm.instructionsRetired - start);
      if (remaining <= 0) return { kind: 'budget' };
      try {
        // Only a user-visible budget needs an exact stop; quantum boundaries need determinism
        // only. A slice that is not exact may overshoot by up to a page of straight-line code,
        // so go exact whenever the budget is within reach of this slice.
        let end: number;
        if (!this.#timeTiers) end = vcpu.runSlice(Math.min(quantum, remaining), remaining <= quantum + PRECISE_WINDOW);
        else {
          const started = performance.now();
          end = vcpu.runSlice(Math.min(quantum, remaining), remaining <= quantum + PRECISE_WINDOW);
          this.#sliceMs += performance.now() - started;
        }
        if (end === SliceEnd.VM_STOP) break;
        if (end === SliceEnd.TIMER_WAIT) timerWaits++;
        else if (end !== SliceEnd.WAITING) others++;
      } catch (error) {
        // A page-table walk through a page the guest may not touch is the guest's fault.
        if (error instanceof GuestAccessError) vm.guestError(vcpu, error.message);
        else vm.hostError(error instanceof Error ? error.message : String(error), error);
        break;
      }
    }
    if (vm.stopCode === StopCode.RUNNING) {
      try {
        vm.runTickers();
      } catch (error) {
        vm.hostError(error instanceof Error ? error.message : String(error), error);
      }
    }
    if (vm.stopCode !== StopCode.RUNNING) return vm.stopReason;
    if (maxInstructions - (vm.instructionsRetired - start) <= 0) return { kind: 'budget' };
    // A waiting vCPU takes no virtual time (SPEC.md): if every vCPU waits and none can wake,
    // only something outside the guest (console input) can ever resume it.
    if (vm.vcpus.every((v) => v.waiting && !v.wakeable)) return { kind: 'idle' };
    if (timerWaits > 0 && others === 0) return { kind: 'timer-wait' };
    return null;
  }
}

export { StopCode };
