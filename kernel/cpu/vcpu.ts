/**
 * A BV32 virtual CPU: architectural state, the interpreter loop and its slow paths.
 *
 * The loop (`runSlice`) is the product's engine. Its rules, each measured (docs/performance.md):
 * - code runs from pre-decoded pages (DecodeCache); the position in the page is an index, and a
 *   PAGE_END marker after the last word handles falling into the next page;
 * - every load/store does one inline TLB compare (page, address space and alignment folded into
 *   one tag) and one addend; misses, faults, MMIO and protected pages go to slow-path methods;
 * - retired instructions are counted from index differences at control transfers, and the
 *   instruction budget and timer deadline are checked only there ("per block"); close to the
 *   budget the loop switches to a precise mode that stops on the exact instruction;
 * - nothing in the loop allocates, and it only calls methods of this class.
 */
import {
  Cause, CAUSE_INTERRUPT, Csr, Irq, IRQ_MASK, READ_ONLY_CSRS, StatusBit, STATUS_WRITABLE_MASK, USER_READABLE_CSRS, Ptbr, Pte,
} from '../../guest-isa/arch.ts';
import type { DecodeCache } from './decode-cache.ts';
import { SoftTlb, TlbKind, tlbContext } from '../mmu/tlb.ts';
import { Access, Sv32Walker } from '../mmu/sv32.ts';
import type { AccessKind } from '../mmu/sv32.ts';
import type { FramePool } from '../memory/frame-pool.ts';
import type { VcpuHost } from './vcpu-host.ts';
import { KernelError, OutOfHostMemoryError, PageWaitError } from '../errors.ts';
import { defaultTier, JIT_NONE, JIT_OUTER, JitRunner } from './jit/jit.ts';
import type { Tier } from './jit/jit.ts';

/** Privilege modes (Vcpu.mode; SPEC.md "Privilege modes"). */
export const Mode = {
  /** User mode: user pages only, no CSR writes. */
  USER: 0,
  /** Supervisor mode: the mode at reset and on every trap. */
  SUPERVISOR: 1,
} as const;

/** Why a slice of execution ended. */
export const SliceEnd = {
  /** The slice's instruction budget was reached. */
  BUDGET: 1,
  /** The vCPU executed wfi with nothing pending. */
  WAITING: 2,
  /** The VM was asked to stop (power off, guest error, host request). */
  VM_STOP: 3,
  /** wfi skipped virtual time to the timer deadline and retired, with `endSliceOnTimerWait` set. */
  TIMER_WAIT: 4,
} as const;

/** Slow-path results. */
const SLOW_OK = 0;
/** A trap was taken: this.pc is the trap vector; the instruction did not retire. */
const SLOW_TRAP = 1;
/** The access completed but state changed (MMIO write, code dropped): resume at the next pc. */
const SLOW_RESYNC = 2;

/**
 * Instructions before the budget within which the loop single-steps. Straight-line code runs at
 * most one page (1024 words) between checks, so from here on a block could overshoot.
 */
export const PRECISE_WINDOW = 2048;
/** Outer-loop turns with no retired instruction before we call it a trap loop. */
const TRAP_LOOP_LIMIT = 64;

const TIMER_BIT = 1 << Irq.TIMER;
const SOFT_BIT = 1 << Irq.SOFT;
const EXTERNAL_BIT = 1 << Irq.EXTERNAL;

/** Counters of one vCPU (Vcpu.stats). */
export interface VcpuStats {
  /** Loads and stores that hit the TLB on the fast path (instruction fetches are not counted). */
  tlbHits: number;
  /** Fetches, loads and stores that missed the TLB and took the slow path (MMU, guest memory, MMIO). */
  tlbMisses: number;
  /** Synchronous traps taken (exceptions, ecall, page faults). */
  traps: number;
  /** Interrupts taken. */
  interrupts: number;
  /** `hcall` instructions executed. */
  hypercalls: number;
  /** Loads and stores that reached a device window. */
  mmioAccesses: number;
  /** `wfi` waits: virtual time skipped to the timer deadline, or the vCPU stopped to wait. */
  waits: number;
  /** Instructions run one at a time (near a budget, or tracing). */
  steps: number;
}

/** A vCPU's state as plain data. */
export interface VcpuState {
  /** r0..r15 (r0 is 0). */
  regs: number[];
  /** The guest-virtual pc of the next instruction. */
  pc: number;
  /** Mode.USER or Mode.SUPERVISOR. */
  mode: number;
  /** The `status` CSR. */
  status: number;
  /** The `tvec` CSR (trap vector, guest-virtual). */
  tvec: number;
  /** The `epc` CSR (guest-virtual). */
  epc: number;
  /** The `cause` CSR. */
  cause: number;
  /** The `tval` CSR. */
  tval: number;
  /** The `scratch` CSR. */
  scratch: number;
  /** The `ie` CSR (interrupt enable bits). */
  ie: number;
  /** The `ip` CSR (interrupt pending bits, the timer's excluded: it follows from timerDeadline). */
  ip: number;
  /** The `ptbr` CSR (paging mode, ASID, root table). */
  ptbr: number;
  /** Instructions retired. */
  instret: number;
  /** Virtual time. */
  clock: number;
  /** null = no deadline. */
  timerDeadline: number | null;
  /** Waiting in wfi. */
  waiting: boolean;
}

/** Receives each instruction when tracing is on (pc, raw word, mode). */
export type TraceHook = (vcpu: Vcpu, pc: number, word: number) => void;

/**
 * A BV32 virtual CPU of a VM (Vm.vcpus): its architectural state (registers, pc, mode, CSRs,
 * counters) and the interpreter that runs it. Hypervisor.run drives it; hypercall handlers and
 * devices receive the vCPU that made the access, read its registers (`regs`) and write results
 * back. Addresses it holds (pc, epc, tvec, tval) are guest-virtual when paging is on.
 */
export class Vcpu {
  /** The vCPU's index in its VM (the `hartid` CSR; a0 at reset). */
  readonly id: number;
  /** @internal The VM this vCPU runs in, as the interpreter sees it. */
  readonly vm: VcpuHost;
  /** r0..r15, plus r16: the sink that decoded writes to r0 go to. */
  readonly regs = new Int32Array(17);
  /** The address of the next instruction (guest-virtual when paging is on). */
  pc = 0;
  /** Mode.USER or Mode.SUPERVISOR. */
  mode: number = Mode.SUPERVISOR;
  /** The `status` CSR (StatusBit). */
  status = 0;
  /** The `tvec` CSR: where traps go (0: no trap vector, a trap stops the VM). */
  tvec = 0;
  /** The `epc` CSR: the pc a trap interrupted. */
  epc = 0;
  /** The `cause` CSR of the last trap. */
  cause = 0;
  /** The `tval` CSR of the last trap (faulting address or instruction word). */
  tval = 0;
  /** The `scratch` CSR. */
  scratch = 0;
  /** The `ie` CSR: enabled interrupts, one bit per Irq. */
  ie = 0;
  /** Pending interrupts, one bit per Irq (the timer's bit is computed from timerDeadline). */
  ip = 0;
  /** The `ptbr` CSR: paging mode, ASID and root page-table PPN (guest-physical). */
  ptbr = 0;
  /**
   * Counters are kept as a base plus the instructions retired so far in the running slice, which
   * the interpreter publishes before every exit; so devices and CSR reads see live values.
   */
  private instretBase = 0;
  private clockBase = 0;
  /** @internal Retired so far in the running slice (compiled code publishes it before slow paths too). */
  sliceRetired = 0;

  /** Retired instructions. */
  get instret(): number {
    return this.instretBase + this.sliceRetired;
  }
  /** Sets the retired-instruction count (restores). */
  set instret(value: number) {
    this.instretBase = value - this.sliceRetired;
  }

  /** Virtual time: retired instructions plus time skipped while waiting. */
  get clock(): number {
    return this.clockBase + this.sliceRetired;
  }
  /** Sets virtual time (restores). */
  set clock(value: number) {
    this.clockBase = value - this.sliceRetired;
  }
  /** Virtual time at which the timer interrupt becomes pending (Infinity: never). */
  timerDeadline = Infinity;
  /** Waiting in wfi. */
  waiting = false;
  /**
   * @internal End the slice (SliceEnd.TIMER_WAIT) after a wfi that skipped virtual time to the
   * timer deadline, so the run returns and its caller can pace an idle guest in host time
   * (RunOptions.yieldOnTimerWait). What the guest computes is unchanged.
   */
  endSliceOnTimerWait = false;
  /** Called before each instruction while set (slow: the loop single-steps); null = no tracing. */
  tracer: TraceHook | null = null;

  /** @internal The vCPU's software TLB (guest-virtual page → host offset). */
  readonly tlb: SoftTlb;
  /** @internal The Sv32 walker (reads guest page tables through the P2M). */
  readonly walker: Sv32Walker;
  /** Counters (see VcpuStats). */
  readonly stats: VcpuStats = { tlbHits: 0, tlbMisses: 0, traps: 0, interrupts: 0, hypercalls: 0, mmioAccesses: 0, waits: 0, steps: 0 };
  /** TLB tag context: valid bit and ASID. */
  private tlbCtx = tlbContext(0);
  /** @internal Result of a slow-path load (compiled code reads it too). */
  slowValue = 0;
  /** @internal The compiled tier's entry, or null when this vCPU only interprets (setTier). */
  private jit: JitRunner | null = null;
  /** 1 when the last system instruction retired. */
  private systemRetired = 0;
  private readonly pool: FramePool;
  private readonly code: DecodeCache;

  /** @internal Created by its Vm. */
  constructor(vm: VcpuHost, id: number, tlb: SoftTlb) {
    this.vm = vm;
    this.id = id;
    this.tlb = tlb;
    this.pool = vm.pool;
    this.code = vm.decodeCache;
    this.walker = new Sv32Walker(vm);
    this.setTier(defaultTier());
  }

  /** The execution tier: 'interp', or 'jit' (hot code compiled to JS; same results, see kernel/cpu/jit). */
  get tier(): Tier {
    return this.jit === null ? 'interp' : 'jit';
  }

  /** @internal Selects the execution tier (VmConfig.tier); takes effect at the next slice. */
  setTier(tier: Tier): void {
    if (tier === 'jit') this.jit ??= new JitRunner(this.pool, this.code, mulhSigned, mulhUnsigned);
    else this.jit = null;
  }

  /** Whether `ptbr` enables Sv32 paging (addresses are then guest-virtual and translated). */
  get pagingEnabled(): boolean {
    return (this.ptbr & Ptbr.MODE_SV32) !== 0;
  }

  /**
   * @internal Architectural reset (SPEC.md "Reset"): pc = `entry`, a0 = id, a1 = `deviceTableGpa`.
   * Vm.reset and Vm.loadImage do this for every vCPU.
   */
  reset(entry: number, deviceTableGpa: number): void {
    this.regs.fill(0);
    this.regs[4] = this.id;
    this.regs[5] = deviceTableGpa | 0;
    this.pc = entry | 0;
    this.mode = Mode.SUPERVISOR;
    this.status = this.tvec = this.epc = this.cause = this.tval = this.scratch = this.ie = this.ip = this.ptbr = 0;
    this.timerDeadline = Infinity;
    this.waiting = false;
    this.tlbCtx = tlbContext(0);
    this.tlb.selectAsid(0);
    this.tlb.flushAll();
  }

  /** The architectural and accounting state, as plain data (checkpoints, fork). */
  saveState(): VcpuState {
    // A loop, not Array.from(subarray): a snapshot's pause runs this once, cold, and the
    // iterator path costs several times more there.
    const regs: number[] = [];
    for (let r = 0; r < 16; r++) regs.push(this.regs[r]!);
    return {
      regs, pc: this.pc, mode: this.mode, status: this.status, tvec: this.tvec,
      epc: this.epc, cause: this.cause, tval: this.tval, scratch: this.scratch, ie: this.ie, ip: this.ip, ptbr: this.ptbr,
      instret: this.instret, clock: this.clock, timerDeadline: this.timerDeadline === Infinity ? null : this.timerDeadline,
      waiting: this.waiting,
    };
  }

  /**
   * Checks a saved vCPU state (it may come from a damaged file) without changing anything:
   * a KernelError names the vCPU and the bad field.
   */
  static checkState(state: unknown, id: number): asserts state is VcpuState {
    if (typeof state !== 'object' || state === null || Array.isArray(state)) throw new KernelError('BV_BAD_VCPU_STATE', `vCPU ${id}: the saved state is not an object`);
    const fields = state as Record<string, unknown>;
    const regs = fields.regs;
    if (!Array.isArray(regs) || regs.length !== 16 || !regs.every((value) => typeof value === 'number' && Number.isFinite(value))) {
      throw new KernelError('BV_BAD_VCPU_STATE', `vCPU ${id}: expected 16 numeric registers`);
    }
    for (const name of ['pc', 'mode', 'status', 'tvec', 'epc', 'cause', 'tval', 'scratch', 'ie', 'ip', 'ptbr', 'instret', 'clock'] as const) {
      const value = fields[name];
      if (typeof value !== 'number' || !Number.isFinite(value)) throw new KernelError('BV_BAD_VCPU_STATE', `vCPU ${id}: field ${name} is not a number`);
    }
    if (!Number.isSafeInteger(fields.instret) || (fields.instret as number) < 0 || !Number.isSafeInteger(fields.clock) || (fields.clock as number) < 0) {
      throw new KernelError('BV_BAD_VCPU_STATE', `vCPU ${id}: instret and clock must be non-negative integers`);
    }
    const deadline = fields.timerDeadline;
    if (deadline !== null && (typeof deadline !== 'number' || !Number.isFinite(deadline))) throw new KernelError('BV_BAD_VCPU_STATE', `vCPU ${id}: field timerDeadline is not a number or null`);
    if (fields.waiting !== undefined && typeof fields.waiting !== 'boolean') throw new KernelError('BV_BAD_VCPU_STATE', `vCPU ${id}: field waiting is not a boolean`);
  }

  /** @internal Loads state saved by saveState (Vm.restoreState). Cached translations are dropped. */
  loadState(state: VcpuState): void {
    Vcpu.checkState(state, this.id);
    this.loadCheckedState(state);
  }

  /** @internal loadState for a state that passed Vcpu.checkState and has not changed since. */
  loadCheckedState(state: VcpuState): void {
    const regs = state.regs;
    for (let r = 1; r < 16; r++) this.regs[r] = regs[r]! | 0;
    this.regs[0] = 0;
    this.pc = state.pc | 0;
    this.mode = state.mode === Mode.USER ? Mode.USER : Mode.SUPERVISOR;
    this.status = state.status & STATUS_WRITABLE_MASK;
    this.tvec = state.tvec | 0;
    this.epc = state.epc | 0;
    this.cause = state.cause | 0;
    this.tval = state.tval | 0;
    this.scratch = state.scratch | 0;
    this.ie = state.ie & IRQ_MASK;
    this.ip = state.ip & IRQ_MASK;
    this.instret = state.instret;
    this.clock = state.clock;
    this.timerDeadline = state.timerDeadline === null ? Infinity : state.timerDeadline;
    this.waiting = state.waiting === true;
    this.tlb.flushAll();
    this.ptbr = 0;
    this.setPtbr(state.ptbr | 0);
  }

  /**
   * @internal Hypervisor.forkVm: takes `source`'s architectural state (what saveState holds) field
   * by field, with no saved form in between; a vCPU's own fields need no check. Cached
   * translations are dropped.
   */
  copyStateFrom(source: Vcpu): void {
    this.regs.set(source.regs.subarray(0, 16));
    this.pc = source.pc;
    this.mode = source.mode;
    this.status = source.status;
    this.tvec = source.tvec;
    this.epc = source.epc;
    this.cause = source.cause;
    this.tval = source.tval;
    this.scratch = source.scratch;
    this.ie = source.ie;
    this.ip = source.ip;
    this.instret = source.instret;
    this.clock = source.clock;
    this.timerDeadline = source.timerDeadline;
    this.waiting = source.waiting;
    this.tlb.flushAll();
    this.ptbr = 0;
    this.setPtbr(source.ptbr);
  }

  /** Raises or lowers an interrupt-pending bit from outside (devices, other vCPUs). */
  setInterruptPending(irq: number, pending: boolean): void {
    const bit = 1 << irq;
    if (pending) this.ip |= bit;
    else this.ip &= ~bit;
  }

  /**
   * @internal Ends a wait: the wfi this vCPU stopped at retires now (SPEC.md "Wait for interrupt"), so an
   * interrupt taken next has epc = the instruction after the wfi.
   */
  finishWait(): void {
    this.waiting = false;
    this.pc = (this.pc + 4) | 0;
    this.instret += 1;
    this.clock += 1;
  }

  /** True when wfi would wake: some interrupt is both pending and enabled. */
  get wakeable(): boolean {
    return ((this.ip | (this.clock >= this.timerDeadline ? TIMER_BIT : 0)) & this.ie) !== 0;
  }

  /**
   * @internal Runs until `budget` instructions retired, or the vCPU waits, or the VM stops. With `exact` the
   * slice ends on exactly the budget (the last stretch is single-stepped); without it, at the
   * first block boundary at or after the budget (still deterministic). Returns a SliceEnd code.
   */
  runSlice(budget: number, exact = false): number {
    const regs = this.regs;
    const i32 = this.pool.i32;
    const u8 = this.pool.u8;
    const i8 = this.pool.i8;
    const u16 = this.pool.u16;
    const i16 = this.pool.i16;
    const vm = this.vm;
    let clockAtStart = this.clockBase;
    this.sliceRetired = 0;
    let ops = this.code.ops;
    let imms = this.code.imms;
    let rtlb = this.tlb.sRead;
    let wtlb = this.tlb.sWrite;
    let ctx = this.tlbCtx;
    let wctx = this.tlb.wctx; // stores: the write context (revokeWrites changes it between slices)
    let retired = 0;
    let hits = 0;
    let base = 0;
    let idx = 0;
    let pageVa = 0;
    let blockStart = 0;
    let checkLimit = 0;
    let precise = false;
    let end = 0;
    let idleTurns = 0;
    let lastRetired = -1;
    const jit = this.jit;

    outer: for (;;) {
      if (vm.stopCode !== 0) { end = SliceEnd.VM_STOP; break; }
      if (retired === lastRetired) {
        if (++idleTurns > TRAP_LOOP_LIMIT) {
          vm.guestError(this, `trap loop: ${TRAP_LOOP_LIMIT} traps in a row without executing an instruction (cause ${this.cause}, tvec 0x${(this.tvec >>> 0).toString(16)})`);
          end = SliceEnd.VM_STOP;
          break;
        }
      } else {
        idleTurns = 0;
        lastRetired = retired;
      }
      const now = clockAtStart + retired;
      if (now >= this.timerDeadline) this.ip |= TIMER_BIT;
      else this.ip &= ~TIMER_BIT;
      if (retired >= budget) { end = SliceEnd.BUDGET; break; }
      if ((this.ip & this.ie) !== 0 && (this.mode === Mode.USER || (this.status & StatusBit.SIE) !== 0)) {
        this.takeInterrupt();
        continue;
      }
      // The next inline check: the timer deadline, or short of the budget to go precise.
      precise = this.tracer !== null || (exact && budget - retired <= PRECISE_WINDOW);
      if (precise) this.stats.steps++;
      // Single-stepping: every taken branch must come back here too (even a branch to itself).
      checkLimit = precise ? 0 : exact ? budget - PRECISE_WINDOW : budget;
      // A deadline already passed (interrupt masked) must not end every block.
      if (this.timerDeadline > now && this.timerDeadline - clockAtStart < checkLimit) checkLimit = this.timerDeadline - clockAtStart;
      // Enter the code page holding pc.
      const pc = this.pc;
      const supervisor = this.mode === Mode.SUPERVISOR;
      rtlb = supervisor ? this.tlb.sRead : this.tlb.uRead;
      wtlb = supervisor ? this.tlb.sWrite : this.tlb.uWrite;
      const xtlb = supervisor ? this.tlb.sExec : this.tlb.uExec;
      ctx = this.tlbCtx;
      wctx = this.tlb.wctx;
      const xe = ((pc >>> 12) & 0x3ffff) << 1; // TLB_INDEX_MASK
      if (xtlb[xe] === ((pc & -4093) | ctx)) {
        base = xtlb[xe + 1]!;
      } else {
        base = this.fetchSlow(pc);
        if (base < 0) continue;
        ops = this.code.ops;
        imms = this.code.imms;
      }
      pageVa = pc & -4096;
      idx = (pc >>> 2) & 1023;
      blockStart = idx;

      if (precise) {
        // Single-step: run this one instruction from the step page, then come back here.
        if (this.tracer !== null) this.tracer(this, pc, this.vm.readInstructionWordAt(this, pc));
        base = this.code.prepareStep(base, idx);
      } else if (jit !== null) {
        // The compiled tier takes over from here when it has this block; it leaves in this loop's state.
        const to = jit.enter(this, regs, base, idx, retired, checkLimit, pageVa, rtlb, wtlb, ctx, wctx);
        if (to !== JIT_NONE) {
          retired = jit.retired; hits += jit.hits; idx = jit.idx; blockStart = jit.blockStart;
          if (to === JIT_OUTER) continue outer;
        }
      }

      for (;;) {
        const w = ops[base + idx]!;
        switch (w & 0xff) {
          case 0x00: { // illegal
            retired += idx - blockStart;
            this.pc = (pageVa + (idx << 2)) | 0;
            this.trap(Cause.ILLEGAL_INSN, imms[base + idx]!);
            continue outer;
          }
          case 0x01: // add
            regs[(w >> 8) & 31] = (regs[(w >> 13) & 31]! + regs[(w >> 18) & 31]!) | 0;
            idx++;
            continue;
          case 0x02: // sub
            regs[(w >> 8) & 31] = (regs[(w >> 13) & 31]! - regs[(w >> 18) & 31]!) | 0;
            idx++;
            continue;
          case 0x03: // and
            regs[(w >> 8) & 31] = regs[(w >> 13) & 31]! & regs[(w >> 18) & 31]!;
            idx++;
            continue;
          case 0x04: // or
            regs[(w >> 8) & 31] = regs[(w >> 13) & 31]! | regs[(w >> 18) & 31]!;
            idx++;
            continue;
          case 0x05: // xor
            regs[(w >> 8) & 31] = regs[(w >> 13) & 31]! ^ regs[(w >> 18) & 31]!;
            idx++;
            continue;
          case 0x06: // sll
            regs[(w >> 8) & 31] = regs[(w >> 13) & 31]! << (regs[(w >> 18) & 31]! & 31);
            idx++;
            continue;
          case 0x07: // srl
            regs[(w >> 8) & 31] = regs[(w >> 13) & 31]! >>> (regs[(w >> 18) & 31]! & 31);
            idx++;
            continue;
          case 0x08: // sra
            regs[(w >> 8) & 31] = regs[(w >> 13) & 31]! >> (regs[(w >> 18) & 31]! & 31);
            idx++;
            continue;
          case 0x09: // slt
            regs[(w >> 8) & 31] = regs[(w >> 13) & 31]! < regs[(w >> 18) & 31]! ? 1 : 0;
            idx++;
            continue;
          case 0x0a: // sltu
            regs[(w >> 8) & 31] = regs[(w >> 13) & 31]! >>> 0 < regs[(w >> 18) & 31]! >>> 0 ? 1 : 0;
            idx++;
            continue;
          case 0x0b: // mul
            regs[(w >> 8) & 31] = Math.imul(regs[(w >> 13) & 31]!, regs[(w >> 18) & 31]!);
            idx++;
            continue;
          case 0x0c: // mulh
            regs[(w >> 8) & 31] = mulhSigned(regs[(w >> 13) & 31]!, regs[(w >> 18) & 31]!);
            idx++;
            continue;
          case 0x0d: // mulhu
            regs[(w >> 8) & 31] = mulhUnsigned(regs[(w >> 13) & 31]!, regs[(w >> 18) & 31]!);
            idx++;
            continue;
          case 0x0e: { // div
            const dividend = regs[(w >> 13) & 31]!;
            const divisor = regs[(w >> 18) & 31]!;
            regs[(w >> 8) & 31] = divisor === 0 ? -1 : divisor === -1 ? -dividend | 0 : (dividend / divisor) | 0;
            idx++;
            continue;
          }
          case 0x0f: { // divu
            const divisor = regs[(w >> 18) & 31]! >>> 0;
            regs[(w >> 8) & 31] = divisor === 0 ? -1 : ((regs[(w >> 13) & 31]! >>> 0) / divisor) | 0;
            idx++;
            continue;
          }
          case 0x10: { // rem
            const dividend = regs[(w >> 13) & 31]!;
            const divisor = regs[(w >> 18) & 31]!;
            regs[(w >> 8) & 31] = divisor === 0 ? dividend : divisor === -1 ? 0 : dividend % divisor | 0;
            idx++;
            continue;
          }
          case 0x11: { // remu
            const dividend = regs[(w >> 13) & 31]! >>> 0;
            const divisor = regs[(w >> 18) & 31]! >>> 0;
            regs[(w >> 8) & 31] = divisor === 0 ? dividend | 0 : dividend % divisor | 0;
            idx++;
            continue;
          }
          case 0x12: // addi
            regs[(w >> 8) & 31] = (regs[(w >> 13) & 31]! + imms[base + idx]!) | 0;
            idx++;
            continue;
          case 0x13: // andi
            regs[(w >> 8) & 31] = regs[(w >> 13) & 31]! & imms[base + idx]!;
            idx++;
            continue;
          case 0x14: // ori
            regs[(w >> 8) & 31] = regs[(w >> 13) & 31]! | imms[base + idx]!;
            idx++;
            continue;
          case 0x15: // xori
            regs[(w >> 8) & 31] = regs[(w >> 13) & 31]! ^ imms[base + idx]!;
            idx++;
            continue;
          case 0x16: // slti
            regs[(w >> 8) & 31] = regs[(w >> 13) & 31]! < imms[base + idx]! ? 1 : 0;
            idx++;
            continue;
          case 0x17: // sltiu
            regs[(w >> 8) & 31] = regs[(w >> 13) & 31]! >>> 0 < imms[base + idx]! >>> 0 ? 1 : 0;
            idx++;
            continue;
          case 0x18: // slli
            regs[(w >> 8) & 31] = regs[(w >> 13) & 31]! << imms[base + idx]!;
            idx++;
            continue;
          case 0x19: // srli
            regs[(w >> 8) & 31] = regs[(w >> 13) & 31]! >>> imms[base + idx]!;
            idx++;
            continue;
          case 0x1a: // srai
            regs[(w >> 8) & 31] = regs[(w >> 13) & 31]! >> imms[base + idx]!;
            idx++;
            continue;
          case 0x1b: // lui
            regs[(w >> 8) & 31] = imms[base + idx]!;
            idx++;
            continue;
          case 0x1c: // auipc
            regs[(w >> 8) & 31] = (pageVa + (idx << 2) + imms[base + idx]!) | 0;
            idx++;
            continue;
          case 0x1d: { // lb
            const va = (regs[(w >> 13) & 31]! + imms[base + idx]!) | 0;
            const e = ((va >>> 12) & 0x3ffff) << 1; // TLB_INDEX_MASK
            if (rtlb[e] === ((va & -4096) | ctx)) {
              regs[(w >> 8) & 31] = i8[(va + rtlb[e + 1]!) >>> 0]!;
              hits++;
            } else {
              retired += idx - blockStart;
              blockStart = idx;
              this.sliceRetired = retired;
              this.pc = (pageVa + (idx << 2)) | 0;
              const r = this.loadSlow(va, 1, true);
              if (r === SLOW_TRAP) continue outer;
              regs[(w >> 8) & 31] = this.slowValue;
            }
            idx++;
            continue;
          }
          case 0x1e: { // lbu
            const va = (regs[(w >> 13) & 31]! + imms[base + idx]!) | 0;
            const e = ((va >>> 12) & 0x3ffff) << 1; // TLB_INDEX_MASK
            if (rtlb[e] === ((va & -4096) | ctx)) {
              regs[(w >> 8) & 31] = u8[(va + rtlb[e + 1]!) >>> 0]!;
              hits++;
            } else {
              retired += idx - blockStart;
              blockStart = idx;
              this.sliceRetired = retired;
              this.pc = (pageVa + (idx << 2)) | 0;
              const r = this.loadSlow(va, 1, false);
              if (r === SLOW_TRAP) continue outer;
              regs[(w >> 8) & 31] = this.slowValue;
            }
            idx++;
            continue;
          }
          case 0x1f: { // lh
            const va = (regs[(w >> 13) & 31]! + imms[base + idx]!) | 0;
            const e = ((va >>> 12) & 0x3ffff) << 1; // TLB_INDEX_MASK
            if (rtlb[e] === ((va & -4095) | ctx)) {
              regs[(w >> 8) & 31] = i16[(va + rtlb[e + 1]!) >>> 1]!;
              hits++;
            } else {
              retired += idx - blockStart;
              blockStart = idx;
              this.sliceRetired = retired;
              this.pc = (pageVa + (idx << 2)) | 0;
              const r = this.loadSlow(va, 2, true);
              if (r === SLOW_TRAP) continue outer;
              regs[(w >> 8) & 31] = this.slowValue;
            }
            idx++;
            continue;
          }
          case 0x20: { // lhu
            const va = (regs[(w >> 13) & 31]! + imms[base + idx]!) | 0;
            const e = ((va >>> 12) & 0x3ffff) << 1; // TLB_INDEX_MASK
            if (rtlb[e] === ((va & -4095) | ctx)) {
              regs[(w >> 8) & 31] = u16[(va + rtlb[e + 1]!) >>> 1]!;
              hits++;
            } else {
              retired += idx - blockStart;
              blockStart = idx;
              this.sliceRetired = retired;
              this.pc = (pageVa + (idx << 2)) | 0;
              const r = this.loadSlow(va, 2, false);
              if (r === SLOW_TRAP) continue outer;
              regs[(w >> 8) & 31] = this.slowValue;
            }
            idx++;
            continue;
          }
          case 0x21: { // lw
            const va = (regs[(w >> 13) & 31]! + imms[base + idx]!) | 0;
            const e = ((va >>> 12) & 0x3ffff) << 1; // TLB_INDEX_MASK
            if (rtlb[e] === ((va & -4093) | ctx)) {
              regs[(w >> 8) & 31] = i32[(va + rtlb[e + 1]!) >>> 2]!;
              hits++;
            } else {
              retired += idx - blockStart;
              blockStart = idx;
              this.sliceRetired = retired;
              this.pc = (pageVa + (idx << 2)) | 0;
              const r = this.loadSlow(va, 4, false);
              if (r === SLOW_TRAP) continue outer;
              regs[(w >> 8) & 31] = this.slowValue;
            }
            idx++;
            continue;
          }
          case 0x22: { // sb
            const va = (regs[(w >> 13) & 31]! + imms[base + idx]!) | 0;
            const e = ((va >>> 12) & 0x3ffff) << 1; // TLB_INDEX_MASK
            if (wtlb[e] === ((va & -4096) | wctx)) {
              u8[(va + wtlb[e + 1]!) >>> 0] = regs[(w >> 18) & 31]!;
              hits++;
            } else {
              retired += idx - blockStart;
              blockStart = idx;
              this.sliceRetired = retired;
              this.pc = (pageVa + (idx << 2)) | 0;
              const r = this.storeSlow(va, 1, regs[(w >> 18) & 31]!);
              if (r !== SLOW_OK) {
                if (r === SLOW_RESYNC) { retired++; this.pc = (this.pc + 4) | 0; }
                continue outer;
              }
            }
            idx++;
            continue;
          }
          case 0x23: { // sh
            const va = (regs[(w >> 13) & 31]! + imms[base + idx]!) | 0;
            const e = ((va >>> 12) & 0x3ffff) << 1; // TLB_INDEX_MASK
            if (wtlb[e] === ((va & -4095) | wctx)) {
              u16[(va + wtlb[e + 1]!) >>> 1] = regs[(w >> 18) & 31]!;
              hits++;
            } else {
              retired += idx - blockStart;
              blockStart = idx;
              this.sliceRetired = retired;
              this.pc = (pageVa + (idx << 2)) | 0;
              const r = this.storeSlow(va, 2, regs[(w >> 18) & 31]!);
              if (r !== SLOW_OK) {
                if (r === SLOW_RESYNC) { retired++; this.pc = (this.pc + 4) | 0; }
                continue outer;
              }
            }
            idx++;
            continue;
          }
          case 0x24: { // sw
            const va = (regs[(w >> 13) & 31]! + imms[base + idx]!) | 0;
            const e = ((va >>> 12) & 0x3ffff) << 1; // TLB_INDEX_MASK
            if (wtlb[e] === ((va & -4093) | wctx)) {
              i32[(va + wtlb[e + 1]!) >>> 2] = regs[(w >> 18) & 31]!;
              hits++;
            } else {
              retired += idx - blockStart;
              blockStart = idx;
              this.sliceRetired = retired;
              this.pc = (pageVa + (idx << 2)) | 0;
              const r = this.storeSlow(va, 4, regs[(w >> 18) & 31]!);
              if (r !== SLOW_OK) {
                if (r === SLOW_RESYNC) { retired++; this.pc = (this.pc + 4) | 0; }
                continue outer;
              }
            }
            idx++;
            continue;
          }
          case 0x25: // beq
            if (regs[(w >> 13) & 31] !== regs[(w >> 18) & 31]) { idx++; continue; }
            break;
          case 0x26: // bne
            if (regs[(w >> 13) & 31] === regs[(w >> 18) & 31]) { idx++; continue; }
            break;
          case 0x27: // blt
            if (regs[(w >> 13) & 31]! >= regs[(w >> 18) & 31]!) { idx++; continue; }
            break;
          case 0x28: // bge
            if (regs[(w >> 13) & 31]! < regs[(w >> 18) & 31]!) { idx++; continue; }
            break;
          case 0x29: // bltu
            if (regs[(w >> 13) & 31]! >>> 0 >= regs[(w >> 18) & 31]! >>> 0) { idx++; continue; }
            break;
          case 0x2a: // bgeu
            if (regs[(w >> 13) & 31]! >>> 0 < regs[(w >> 18) & 31]! >>> 0) { idx++; continue; }
            break;
          case 0x2b: // jal
            regs[(w >> 8) & 31] = (pageVa + (idx << 2) + 4) | 0;
            break;
          case 0x2c: { // jalr
            const target = (regs[(w >> 13) & 31]! + imms[base + idx]!) | 0;
            retired += idx - blockStart;
            if ((target & 3) !== 0) {
              this.pc = (pageVa + (idx << 2)) | 0;
              this.trap(Cause.INSN_MISALIGNED, target);
              continue outer;
            }
            regs[(w >> 8) & 31] = (pageVa + (idx << 2) + 4) | 0;
            retired++;
            if ((target & -4096) === pageVa && retired < checkLimit) {
              idx = blockStart = (target >>> 2) & 1023;
              if (jit !== null) {
                const to = jit.enter(this, regs, base, idx, retired, checkLimit, pageVa, rtlb, wtlb, ctx, wctx);
                if (to !== JIT_NONE) {
                  retired = jit.retired; hits += jit.hits; idx = jit.idx; blockStart = jit.blockStart;
                  if (to === JIT_OUTER) continue outer;
                }
              }
              continue;
            }
            this.pc = target;
            continue outer;
          }
          case 0x2d: // amoswap
          case 0x2e: // amoadd
          case 0x2f: // amoand
          case 0x30: { // amoor
            retired += idx - blockStart;
            blockStart = idx;
            this.sliceRetired = retired;
            this.pc = (pageVa + (idx << 2)) | 0;
            const r = this.amoSlow(w & 0xff, regs[(w >> 13) & 31]!, regs[(w >> 18) & 31]!);
            if (r === SLOW_TRAP) continue outer;
            regs[(w >> 8) & 31] = this.slowValue;
            if (r === SLOW_RESYNC) { retired++; this.pc = (this.pc + 4) | 0; continue outer; }
            idx++;
            continue;
          }
          case 0x31: // ecall
          case 0x32: // ebreak
          case 0x33: // hcall
          case 0x34: // sret
          case 0x35: // wfi
          case 0x36: // sfence
          case 0x38: // csrrw
          case 0x39: // csrrs
          case 0x3a: { // csrrc
            retired += idx - blockStart;
            this.pc = (pageVa + (idx << 2)) | 0;
            this.sliceRetired = retired; // counter CSRs read the current values
            const ended = this.execSystem(w, imms[base + idx]!);
            clockAtStart = this.clockBase; // wfi may have moved time forward
            retired += this.systemRetired;
            if (ended !== 0) {
              end = ended;
              break outer;
            }
            continue outer;
          }
          case 0x37: // fence
            idx++;
            continue;
          case 0x3b: // PAGE_END marker: after the last word of a page, or after a single step
            retired += idx - blockStart;
            this.pc = (pageVa + (idx << 2)) | 0;
            continue outer;
          default:
            throw new Error(`decoded opcode 0x${(w & 0xff).toString(16)} has no execute case`);
        }
        // A taken branch or jal: the target is this instruction's index plus the word offset.
        retired += idx - blockStart + 1;
        const target = idx + imms[base + idx]!;
        if ((target >>> 0) < 1024 && retired < checkLimit) {
          idx = blockStart = target;
          if (jit !== null) {
            const to = jit.enter(this, regs, base, idx, retired, checkLimit, pageVa, rtlb, wtlb, ctx, wctx);
            if (to !== JIT_NONE) {
              retired = jit.retired; hits += jit.hits; idx = jit.idx; blockStart = jit.blockStart;
              if (to === JIT_OUTER) continue outer;
            }
          }
          continue;
        }
        this.pc = (pageVa + (target << 2)) | 0;
        continue outer;
      }
    }
    this.sliceRetired = 0;
    this.instretBase += retired;
    this.clockBase += retired;
    this.stats.tlbHits += hits;
    return end;
  }

  // ---------------------------------------------------------------------------------------------
  // Slow paths

  /** Translates a virtual address for an access; returns the gpa, or -1 after a trap (or a pause to wait for host memory). */
  private translate(va: number, access: AccessKind): number {
    if ((this.ptbr & Ptbr.MODE_SV32) === 0) return va >>> 0;
    const mmu = this.vm.mmu;
    let translated: boolean;
    try {
      translated = mmu.translate(this, va, access);
    } catch (error) {
      // A page-table page that needed a frame the pool does not have: wait (the walk changed nothing yet).
      if (error instanceof OutOfHostMemoryError && this.vm.waitForHostMemory()) return -1;
      if (error instanceof PageWaitError) return this.vm.waitForPage(error); // a page-table page on another host
      throw error;
    }
    if (!translated) {
      this.trap(mmu.faultCause, va);
      return -1;
    }
    if (mmu.level === 1) this.tlb.noteSuperpage(va);
    return mmu.gpa;
  }

  /** Instruction fetch miss: translate, decode the page, fill the execute TLB. */
  private fetchSlow(pc: number): number {
    if ((pc & 3) !== 0) {
      this.trap(Cause.INSN_MISALIGNED, pc);
      return -1;
    }
    this.stats.tlbMisses++;
    const gpa = this.translate(pc, Access.EXEC);
    if (gpa < 0) return -1;
    if (!this.vm.isRam(gpa)) {
      this.trap(Cause.INSN_ACCESS_FAULT, pc);
      return -1;
    }
    const frame = this.vm.frameForAccess(this, gpa, Access.EXEC, pc);
    if (frame < 0) return -1;
    const base = this.code.ensureDecoded(frame, this.pool.i32);
    this.vm.markAccessed(gpa >>> 12);
    const kind = this.mode === Mode.SUPERVISOR ? TlbKind.S_EXEC : TlbKind.U_EXEC;
    this.tlb.fill(kind, pc, this.tlbCtx, base, gpa >>> 12);
    return base;
  }

  /** @internal Load miss: traps, MMIO, or fills the TLB and reads (compiled code calls it too). */
  loadSlow(va: number, width: number, signed: boolean): number {
    if ((va & (width - 1)) !== 0) {
      this.trap(Cause.LOAD_MISALIGNED, va);
      return SLOW_TRAP;
    }
    const gpa = this.translate(va, Access.READ);
    if (gpa < 0) return SLOW_TRAP;
    const vm = this.vm;
    // A file-backed range (persistent memory) is not RAM but is read like it: its frames never
    // change while the VM lives, so translations are cached with no reverse mapping (gpn -1).
    let fileFrame = -1;
    if (!vm.isRam(gpa)) {
      fileFrame = vm.fileRangeFrame(gpa);
      if (fileFrame < 0) {
        if (width !== 4 || !vm.isMmio(gpa)) {
          this.trap(Cause.LOAD_ACCESS_FAULT, va);
          return SLOW_TRAP;
        }
        this.stats.mmioAccesses++;
        this.slowValue = vm.mmioRead(this, gpa);
        return SLOW_OK;
      }
    }
    const file = fileFrame >= 0;
    const frame = file ? fileFrame : vm.frameForAccess(this, gpa, Access.READ, va);
    if (frame < 0) return SLOW_TRAP;
    this.stats.tlbMisses++;
    const hostOffset = frame * 4096 + (gpa & 0xfff);
    if (!file) vm.markAccessed(gpa >>> 12);
    if (file || vm.mayCacheRead(gpa)) {
      const supervisor = this.mode === Mode.SUPERVISOR;
      const addend = (frame * 4096 - (va & -4096)) | 0;
      const gpn = file ? -1 : gpa >>> 12;
      this.tlb.fill(supervisor ? TlbKind.S_READ : TlbKind.U_READ, va, this.tlbCtx, addend, gpn);
      // A page already dirty and writable gets its write entry now, saving a second miss.
      if (this.pagingEnabled ? (this.vm.mmu.pte & (Pte.W | Pte.D)) === (Pte.W | Pte.D) : true) {
        if (file ? vm.mayCacheFileRangeWrite(gpa) : vm.mayCacheWrite(gpa, frame)) this.tlb.fill(supervisor ? TlbKind.S_WRITE : TlbKind.U_WRITE, va, this.tlb.wctx, addend, gpn);
      }
    }
    const pool = this.pool;
    this.slowValue = width === 4 ? pool.i32[hostOffset >>> 2]! : width === 2 ? (signed ? pool.i16[hostOffset >>> 1]! : pool.u16[hostOffset >>> 1]!) : signed ? pool.i8[hostOffset]! : pool.u8[hostOffset]!;
    return SLOW_OK;
  }

  /** @internal (compiled code calls it too) */
  storeSlow(va: number, width: number, value: number): number {
    if ((va & (width - 1)) !== 0) {
      this.trap(Cause.STORE_MISALIGNED, va);
      return SLOW_TRAP;
    }
    const gpa = this.translate(va, Access.WRITE);
    if (gpa < 0) return SLOW_TRAP;
    const vm = this.vm;
    if (!vm.isRam(gpa)) {
      const fileFrame = vm.fileRangeFrame(gpa);
      if (fileFrame >= 0) return this.storeFileRange(va, gpa, fileFrame, width, value);
      if (width !== 4 || !vm.isMmio(gpa)) {
        this.trap(Cause.STORE_ACCESS_FAULT, va);
        return SLOW_TRAP;
      }
      this.stats.mmioAccesses++;
      let accepted: boolean;
      try {
        accepted = vm.mmioWrite(this, gpa, value);
      } catch (error) {
        // The device's DMA reached a page that must first come from elsewhere (post-copy): it
        // changed nothing it keeps, so the VM waits and the store runs again once resumed.
        if (!(error instanceof PageWaitError)) throw error;
        vm.waitForPage(error);
        return SLOW_TRAP;
      }
      if (!accepted) {
        this.trap(Cause.STORE_ACCESS_FAULT, va);
        return SLOW_TRAP;
      }
      return SLOW_RESYNC;
    }
    const frame = vm.frameForAccess(this, gpa, Access.WRITE, va);
    if (frame < 0) return SLOW_TRAP;
    this.stats.tlbMisses++;
    const hostOffset = frame * 4096 + (gpa & 0xfff);
    const pool = this.pool;
    vm.markAccessed(gpa >>> 12);
    const traced = vm.isTraced(gpa);
    const oldWord = traced ? pool.i32[hostOffset >>> 2]! : 0;
    if (width === 4) pool.i32[hostOffset >>> 2] = value;
    else if (width === 2) pool.u16[hostOffset >>> 1] = value;
    else pool.u8[hostOffset] = value;
    // A guest page table changed: drop what was derived from it (T-1 traces).
    if (traced) vm.tracedWrite(gpa, oldWord, pool.i32[hostOffset >>> 2]!);
    if (this.code.isDecoded(frame)) {
      // Self-modifying code: keep the decoded copy exact (or drop it if written too often).
      if (vm.noteCodeWrite(frame, gpa & 0xfff)) return SLOW_RESYNC;
      return SLOW_OK;
    }
    if (vm.mayCacheWrite(gpa, frame)) {
      const supervisor = this.mode === Mode.SUPERVISOR;
      this.tlb.fill(supervisor ? TlbKind.S_WRITE : TlbKind.U_WRITE, va, this.tlb.wctx, (frame * 4096 - (va & -4096)) | 0, gpa >>> 12);
    }
    return SLOW_OK;
  }

  /**
   * A store to a file-backed range (persistent memory): no protections, traces, decoded code or
   * write epochs can apply there (nothing is executed from it), so the store lands and the write
   * translation is cached, with no reverse mapping (the frames never change while the VM lives).
   * A range whose writes are tracked (persistent-memory HA) gets its page marked first: a clean
   * page never has a write translation, so this miss is how its first store is seen.
   */
  private storeFileRange(va: number, gpa: number, frame: number, width: number, value: number): number {
    this.stats.tlbMisses++;
    this.vm.noteFileRangeStore(gpa);
    const hostOffset = frame * 4096 + (gpa & 0xfff);
    const pool = this.pool;
    if (width === 4) pool.i32[hostOffset >>> 2] = value;
    else if (width === 2) pool.u16[hostOffset >>> 1] = value;
    else pool.u8[hostOffset] = value;
    this.tlb.fill(this.mode === Mode.SUPERVISOR ? TlbKind.S_WRITE : TlbKind.U_WRITE, va, this.tlb.wctx, (frame * 4096 - (va & -4096)) | 0, -1);
    return SLOW_OK;
  }

  /** Atomic read-modify-write; always takes the slow path (AMOs are rare: locks, counters). */
  /** @internal (compiled code calls it too) */
  amoSlow(op: number, va: number, operand: number): number {
    if ((va & 3) !== 0) {
      this.trap(Cause.STORE_MISALIGNED, va);
      return SLOW_TRAP;
    }
    const gpa = this.translate(va, Access.WRITE);
    if (gpa < 0) return SLOW_TRAP;
    const vm = this.vm;
    const file = !vm.isRam(gpa);
    const frame = file ? vm.fileRangeFrame(gpa) : vm.frameForAccess(this, gpa, Access.WRITE, va);
    if (frame < 0) {
      // Neither RAM nor a file-backed range (MMIO included): an access fault.
      if (file) this.trap(Cause.STORE_ACCESS_FAULT, va);
      return SLOW_TRAP;
    }
    if (file) vm.noteFileRangeStore(gpa);
    else vm.markAccessed(gpa >>> 12);
    const index = (frame * 4096 + (gpa & 0xfff)) >>> 2;
    const i32 = this.pool.i32;
    const old = i32[index]!;
    i32[index] = op === 0x2d ? operand : op === 0x2e ? (old + operand) | 0 : op === 0x2f ? old & operand : old | operand;
    this.slowValue = old;
    // A file-backed range holds no page tables or decoded code (storeFileRange).
    if (file) return SLOW_OK;
    if (vm.isTraced(gpa)) vm.tracedWrite(gpa, old, i32[index]!);
    if (this.code.isDecoded(frame) && vm.noteCodeWrite(frame, gpa & 0xfff)) return SLOW_RESYNC;
    return SLOW_OK;
  }

  /**
   * Executes a system instruction at this.pc. Sets this.systemRetired and this.pc; returns 0 to
   * continue, or a SliceEnd code.
   */
  private execSystem(word: number, imm: number): number {
    this.systemRetired = 0;
    const op = word & 0xff;
    const supervisor = this.mode === Mode.SUPERVISOR;
    const rd = (word >> 8) & 31;
    const rs1 = (word >> 13) & 31;
    const rs2 = (word >> 18) & 31;
    if (!supervisor && (op === 0x33 || op === 0x34 || op === 0x35 || op === 0x36)) {
      this.trap(Cause.ILLEGAL_INSN, this.vm.readInstructionWordAt(this, this.pc));
      return 0;
    }
    const next = (this.pc + 4) | 0;
    switch (op) {
      case 0x31: // ecall
        this.trap(supervisor ? Cause.ECALL_SUPERVISOR : Cause.ECALL_USER, 0);
        return 0;
      case 0x32: // ebreak
        this.trap(Cause.BREAKPOINT, 0);
        return 0;
      case 0x33: { // hcall
        this.stats.hypercalls++;
        const at = this.pc;
        this.pc = next;
        this.systemRetired = 1;
        try {
          this.vm.hypercall(this);
        } catch (error) {
          // A handler read a guest buffer on a page still elsewhere (post-copy) before it changed
          // anything: the VM waits and the hcall runs again once resumed, unretired.
          if (!(error instanceof PageWaitError)) throw error;
          this.pc = at;
          this.systemRetired = 0;
          this.vm.waitForPage(error);
        }
        return this.vm.stopCode !== 0 ? SliceEnd.VM_STOP : 0;
      }
      case 0x34: // sret
        this.pc = this.epc;
        this.mode = (this.status & StatusBit.SPP) !== 0 ? Mode.SUPERVISOR : Mode.USER;
        this.status = (this.status & StatusBit.SPIE ? this.status | StatusBit.SIE : this.status & ~StatusBit.SIE) | StatusBit.SPIE;
        this.status &= ~(StatusBit.SPP | StatusBit.MCIP); // the handler is done: a new machine check is a first one
        this.systemRetired = 1;
        return 0;
      case 0x35: // wfi
        // With the timer enabled and a deadline set, waiting skips virtual time to the deadline;
        // waiting for anything else takes no time and ends when that event arrives, at which
        // point the wfi executes again and retires (SPEC.md "Wait for interrupt").
        let skipped = false;
        if (!this.wakeable && (this.ie & TIMER_BIT) !== 0 && this.timerDeadline !== Infinity && this.timerDeadline > this.clock) {
          this.clock = this.timerDeadline;
          this.stats.waits++;
          skipped = true;
        }
        if (this.wakeable) {
          this.pc = next;
          this.systemRetired = 1;
          return skipped && this.endSliceOnTimerWait ? SliceEnd.TIMER_WAIT : 0;
        }
        this.waiting = true;
        this.stats.waits++;
        return SliceEnd.WAITING;
      case 0x36: { // sfence
        const va = this.regs[rs1]!;
        const asid = this.regs[rs2]! & Ptbr.ASID_MASK;
        // With traces the shadow and the TLB are already coherent: nothing is stale.
        if (!this.pagingEnabled || this.vm.mmu.guestFlush()) {
          if (rs1 === 0 && rs2 === 0) this.tlb.flushAll();
          else if (rs1 === 0) this.tlb.flushAsid(asid);
          else this.tlb.flushPage(va);
        }
        this.pc = next;
        this.systemRetired = 1;
        return 0;
      }
      default: { // csrrw / csrrs / csrrc
        const csr = imm;
        const writes = op === 0x38 || rs1 !== 0;
        if (!this.csrAccessible(csr, writes)) {
          this.trap(Cause.ILLEGAL_INSN, this.vm.readInstructionWordAt(this, this.pc));
          return 0;
        }
        const old = this.readCsr(csr);
        if (writes) {
          const operand = this.regs[rs1]!;
          this.writeCsr(csr, op === 0x38 ? operand : op === 0x39 ? old | operand : old & ~operand);
        }
        this.regs[rd] = old;
        this.pc = next;
        this.systemRetired = 1;
        return 0;
      }
    }
  }

  private csrAccessible(csr: number, writes: boolean): boolean {
    if (!KNOWN_CSRS.has(csr)) return false;
    if (writes && READ_ONLY_CSRS.has(csr)) return false;
    if (this.mode === Mode.USER && !(USER_READABLE_CSRS.has(csr) && !writes)) return false;
    return true;
  }

  /** A CSR's value (Csr number) as a csrr in supervisor mode reads it; 0 for an unknown CSR. */
  readCsr(csr: number): number {
    switch (csr) {
      case Csr.STATUS: return this.status;
      case Csr.TVEC: return this.tvec;
      case Csr.EPC: return this.epc;
      case Csr.CAUSE: return this.cause;
      case Csr.TVAL: return this.tval;
      case Csr.SCRATCH: return this.scratch;
      case Csr.IE: return this.ie;
      case Csr.IP: return this.ip | (this.clock >= this.timerDeadline ? TIMER_BIT : 0);
      case Csr.PTBR: return this.ptbr;
      case Csr.INSTRET: return this.instret % 0x1_0000_0000 | 0;
      case Csr.INSTRETH: return Math.floor(this.instret / 0x1_0000_0000) | 0;
      case Csr.TIME: return this.clock % 0x1_0000_0000 | 0;
      case Csr.TIMEH: return Math.floor(this.clock / 0x1_0000_0000) | 0;
      case Csr.HARTID: return this.id;
      default: return 0;
    }
  }

  /**
   * Writes a CSR as a csrw in supervisor mode would (writable bits only; read-only and unknown
   * CSRs ignore it), with the same effects on cached translations.
   */
  writeCsr(csr: number, value: number): void {
    switch (csr) {
      case Csr.STATUS: {
        const changed = (this.status ^ value) & (StatusBit.SUM | StatusBit.MXR);
        this.status = value & STATUS_WRITABLE_MASK;
        // SUM changes supervisor loads/stores of user pages; MXR changes loads in both modes.
        if ((changed & StatusBit.SUM) !== 0) this.tlb.flushKinds([TlbKind.S_READ, TlbKind.S_WRITE]);
        if ((changed & StatusBit.MXR) !== 0) this.tlb.flushKinds([TlbKind.S_READ, TlbKind.U_READ]);
        break;
      }
      case Csr.TVEC: this.tvec = value & ~3; break;
      case Csr.EPC: this.epc = value; break; // fully writable: a misaligned epc faults at the sret's fetch
      case Csr.CAUSE: this.cause = value; break;
      case Csr.TVAL: this.tval = value; break;
      case Csr.SCRATCH: this.scratch = value; break;
      case Csr.IE: this.ie = value & IRQ_MASK; break;
      case Csr.IP: this.ip = (this.ip & ~SOFT_BIT) | (value & SOFT_BIT); break;
      case Csr.PTBR: this.setPtbr(value); break;
    }
  }

  /** @internal Installs a page-table base. Paging mode changes flush; ASID changes flush nothing. */
  setPtbr(value: number): void {
    if (((this.ptbr ^ value) & Ptbr.MODE_SV32) !== 0) this.tlb.flushAll();
    this.ptbr = value | 0;
    const asid = (value & Ptbr.MODE_SV32) !== 0 ? (value >>> Ptbr.ASID_SHIFT) & Ptbr.ASID_MASK : 0;
    this.tlbCtx = tlbContext(asid);
    this.tlb.selectAsid(asid);
    this.vm.mmu.notePtbr(value);
  }

  /** @internal Takes a synchronous trap at this.pc (SPEC.md "Traps"). */
  trap(cause: number, tval: number): void {
    this.stats.traps++;
    this.enterTrap(cause, tval, this.pc);
  }

  private takeInterrupt(): void {
    const pending = this.ip & this.ie;
    const irq = (pending & EXTERNAL_BIT) !== 0 ? Irq.EXTERNAL : (pending & SOFT_BIT) !== 0 ? Irq.SOFT : Irq.TIMER;
    this.stats.interrupts++;
    this.enterTrap(CAUSE_INTERRUPT | irq, 0, this.pc);
  }

  private enterTrap(cause: number, tval: number, epc: number): void {
    if (this.tvec === 0) {
      this.cause = cause;
      this.tval = tval;
      this.epc = epc;
      this.vm.unhandledTrap(this, cause, tval);
      return;
    }
    let status = this.status;
    if (cause === Cause.MACHINE_CHECK) {
      // A machine check inside a machine-check handler (its code, stack or data is the bad page)
      // would re-trap forever: shut down as x86 does with MCIP set, leaving the CSRs as they were.
      const nested = (status & StatusBit.MCIP) !== 0;
      this.vm.machineCheckTaken(this, tval, nested);
      if (nested) return;
      status |= StatusBit.MCIP;
    }
    this.epc = epc;
    this.cause = cause;
    this.tval = tval | 0;
    status = (status & StatusBit.SIE) !== 0 ? status | StatusBit.SPIE : status & ~StatusBit.SPIE;
    status &= ~StatusBit.SIE;
    status = this.mode === Mode.SUPERVISOR ? status | StatusBit.SPP : status & ~StatusBit.SPP;
    this.status = status;
    this.mode = Mode.SUPERVISOR;
    this.pc = this.tvec;
  }
}

const KNOWN_CSRS: ReadonlySet<number> = new Set([
  Csr.STATUS, Csr.TVEC, Csr.EPC, Csr.CAUSE, Csr.TVAL, Csr.SCRATCH, Csr.IE, Csr.IP, Csr.PTBR,
  Csr.INSTRET, Csr.INSTRETH, Csr.TIME, Csr.TIMEH, Csr.HARTID,
]);

/**
 * High 32 bits of the signed 64-bit product: the unsigned high word, corrected for each negative
 * operand (a signed x read as unsigned is x + 2^32, which adds the other operand to the high word).
 */
export function mulhSigned(a: number, b: number): number {
  return (mulhUnsigned(a, b) - (a < 0 ? b : 0) - (b < 0 ? a : 0)) | 0;
}

/**
 * High 32 bits of the unsigned 64-bit product, without allocating (a BigInt product allocated
 * twice per instruction): the operands split into 16-bit halves, whose partial products are
 * exact in doubles (each < 2^32, every sum < 2^33). Inputs are int32 register values.
 */
export function mulhUnsigned(a: number, b: number): number {
  const a0 = a & 0xffff;
  const a1 = a >>> 16;
  const b0 = b & 0xffff;
  const b1 = b >>> 16;
  const mid = a1 * b0 + ((a0 * b0) >>> 16); // < 2^32
  return (a1 * b1 + (mid >>> 16) + ((a0 * b1 + (mid & 0xffff)) >>> 16)) | 0;
}
