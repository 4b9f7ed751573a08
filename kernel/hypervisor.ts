/**
 * The hypervisor: one host memory pool, the decoded-code cache shared over it, and the VMs that
 * live in it. It schedules every vCPU of every VM deterministically: round-robin slices measured
 * in guest instructions, so the same inputs give the same outputs and instruction counts.
 */
import { KernelError } from './errors.ts';
import { DecodeCache } from './cpu/decode-cache.ts';
import { PRECISE_WINDOW, SliceEnd } from './cpu/vcpu.ts';
import { FramePool } from './memory/frame-pool.ts';
import type { HostMemory } from './memory/frame-pool.ts';
import { TlbArena } from './mmu/tlb.ts';
import type { TlbArenaMemory } from './mmu/tlb.ts';
import { StopCode, Vm } from './vm.ts';
import type { StopReason, VmConfig } from './vm.ts';

export interface RunOptions {
  /** Stop each VM after this many instructions (summed over its vCPUs). */
  maxInstructions?: number;
  /** Instructions per vCPU slice (default 20,000). */
  quantum?: number;
}

export interface RunResult {
  vm: Vm;
  reason: StopReason | { kind: 'budget' } | { kind: 'idle' };
  instructions: number;
}

/** Returned when a VM's vCPUs all wait and nothing can wake them. */
export const IDLE_FOREVER = 'all vCPUs are waiting for an interrupt that nothing can raise';

export class Hypervisor {
  readonly pool: FramePool;
  readonly decodeCache: DecodeCache;
  readonly vms: Vm[] = [];
  /** Devices that may wake a waiting VM later (e.g. interactive console input) register here. */
  readonly externalWakeSources = new Set<Vm>();
  private nextVmId = 0;
  shootdowns = 0;
  shootdownEntries = 0;

  private readonly tlbs: TlbArena;

  /** `tlbArena`: memory to carve vCPU TLBs from (see TlbArena); without it they are allocated. */
  constructor(memory: HostMemory, tlbArena: TlbArenaMemory | null = null) {
    this.tlbs = new TlbArena(tlbArena);
    this.pool = new FramePool(memory);
    this.decodeCache = new DecodeCache(this.pool.frameCount);
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

  createVm(config: VmConfig): Vm {
    const vm = new Vm(this.nextVmId++, config, this.pool, this.decodeCache, (changedVm, gpns) => this.shootdown(changedVm, gpns), this.tlbs);
    this.vms.push(vm);
    return vm;
  }

  /**
   * Forks a VM (T-13): the child shares every frame of the parent copy-on-write and starts with
   * the parent's CPU and component state. The caller attaches the child's devices first if the
   * parent's components must be restored into them (pass `attach`). Memory is not copied.
   */
  forkVm(parent: Vm, options: { name?: string; attach?: (child: Vm) => void } = {}): Vm {
    const child = this.createVm({ ...parent.config, name: options.name ?? `${parent.name}-fork${this.nextVmId}` });
    try {
      options.attach?.(child);
      parent.shareMemoryWith(child);
      child.image = parent.image;
      child.restoreState(parent.captureState());
    } catch (error) {
      this.destroyVm(child);
      throw error;
    }
    return child;
  }

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
  private shootdown(vm: Vm, gpns: readonly number[]): void {
    this.shootdowns++;
    if (gpns.length <= 4) {
      for (const vcpu of vm.vcpus) for (const gpn of gpns) this.shootdownEntries += vcpu.tlb.flushGpn(gpn);
      return;
    }
    // Many pages: one pass over each vCPU's fill log with a bitmap.
    const marked = new Uint8Array(vm.p2m.pageCount);
    for (const gpn of gpns) marked[gpn] = 1;
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
      if (active === 0 || ++roundsSinceYield >= 16) {
        roundsSinceYield = 0;
        // Idle VMs waiting for input: let the event loop deliver it without spinning.
        await new Promise<void>((resolve) => (active === 0 ? setTimeout(resolve, 5) : setImmediate(resolve)));
      }
    }
    return states.map((s) => ({ vm: s.vm, reason: s.done!, instructions: s.vm.instructionsRetired - s.start }));
  }

  /** One scheduling round for one VM. Returns why it is done, or null to keep going. */
  private runRound(vm: Vm, start: number, options: RunOptions): RunResult['reason'] | null {
    const quantum = options.quantum ?? 20_000;
    const maxInstructions = options.maxInstructions ?? Infinity;
    if (vm.stopCode !== StopCode.RUNNING) return vm.stopReason;
    for (const vcpu of vm.vcpus) {
      if (vm.stopCode !== StopCode.RUNNING) break;
      if (vcpu.waiting) {
        if (!vcpu.wakeable) continue;
        vcpu.finishWait();
      }
      const remaining = maxInstructions - (vm.instructionsRetired - start);
      if (remaining <= 0) return { kind: 'budget' };
      try {
        // Only a user-visible budget needs an exact stop; quantum boundaries need determinism
        // only. A slice that is not exact may overshoot by up to a page of straight-line code,
        // so go exact whenever the budget is within reach of this slice.
        const end = vcpu.runSlice(Math.min(quantum, remaining), remaining <= quantum + PRECISE_WINDOW);
        if (end === SliceEnd.VM_STOP) break;
      } catch (error) {
        vm.hostError(error instanceof Error ? error.message : String(error), error);
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
    return null;
  }
}

export { StopCode };
