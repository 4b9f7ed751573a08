/**
 * Cooperative reallocation between VMs (T-5): memory moves from VM A to VM B through both
 * guests' balloons, frame by frame, without a copy and without the host's frames in use rising.
 *
 * A's balloon target rises by N pages. As A's driver INFLATEs pages, the frames behind them
 * (when A held one, privately) leave A's P2M — not copied, not released — as FrameHandles
 * (GuestMemory.exportPage, then the page is released ballooned, the handle holding the frame's
 * only reference), and are parked in a reserve (a VM that never runs) and zero-filled there. For every
 * page A gives up, B's balloon target falls by one, so B's driver DEFLATEs only as memory arrives,
 * and each page B deflates is filled at once with a parked frame. A page A inflated without a
 * frame (never touched) gives none: the B page it pays for is allocated on B's first touch, from
 * the frames A never used. When A has given N pages and the reserve is empty, the transfer is
 * done and the reserve is freed; cancel() ends it early (a VM deleted or stopped), releasing any
 * parked frame to the OS.
 *
 * It acts only through the balloon devices' donor/receiver hooks and GuestMemory's public API.
 * Between VMs of different threads of one pool the transfer is split in two halves
 * (ReallocationDonor, ReallocationReceiver) whose frames travel as FrameHandles (docs/workers.md).
 */
import { PAGE_SIZE } from '../../guest-isa/arch.ts';
import type { BalloonDevice } from '../../devices/index.ts';
import { AbsentState, PageState, type FrameHandle, type GuestMemory, type Hypervisor, type Vm } from '../../kernel/index.ts';

/** One side of a reallocation: a VM and its balloon. */
export interface ReallocationSide {
  /** The VM. */
  vm: Vm;
  /** Its balloon (the donor or receiver hook goes on it). */
  balloon: BalloonDevice;
}

/** Where a reallocation is. */
export type ReallocationState = 'running' | 'done' | 'cancelled';

/** A reallocation's progress (the host's API shows it). */
export interface ReallocationStatus {
  /** The VM giving memory. */
  from: string;
  /** The VM receiving it. */
  to: string;
  /** Pages to move. */
  pages: number;
  /** Pages A has inflated for it so far. */
  given: number;
  /** Frames moved out of A (the rest of `given` had none). */
  frames_taken: number;
  /** Frames placed into B's deflated pages. */
  frames_placed: number;
  /** Where it is. */
  state: ReallocationState;
  /** Why it was cancelled, when it was. */
  reason?: string;
}

const ZERO_PAGE = new Uint8Array(PAGE_SIZE);
let nextId = 1;

/**
 * A transfer of `pages` from one VM to another of the same thread through their balloons; starts
 * at once. It is the two halves of a transfer across threads joined directly: the giving half's
 * frames go straight to the receiving half.
 */
export class Reallocation {
  private readonly receiver: ReallocationReceiver;
  private readonly donor: ReallocationDonor;

  constructor(
    hv: Hypervisor,
    /** The VM giving memory. */
    readonly from: ReallocationSide,
    /** The VM receiving it. */
    readonly to: ReallocationSide,
    /** Pages to move. */
    readonly pages: number,
  ) {
    if (from.balloon.donor !== null || from.balloon.receiver !== null || to.balloon.donor !== null || to.balloon.receiver !== null) {
      throw new RangeError('a VM takes part in one reallocation at a time');
    }
    this.receiver = new ReallocationReceiver(hv, to, pages);
    try {
      this.donor = new ReallocationDonor(from, pages, (handles, given) => this.receiver.accept(handles, given));
    } catch (error) {
      this.receiver.cancel('the giving VM refused');
      throw error;
    }
  }

  /** Where the transfer is: done when the receiving half is (the giving half finishes first). */
  get state(): ReallocationState {
    return this.receiver.state === 'cancelled' || this.donor.state === 'cancelled' ? 'cancelled' : this.receiver.state;
  }

  /** Its progress. */
  status(): ReallocationStatus {
    const giver = this.donor.status();
    const receiver = this.receiver.status();
    const reason = giver.reason ?? receiver.reason;
    return {
      from: this.from.vm.name, to: this.to.vm.name, pages: this.pages, given: giver.given,
      frames_taken: giver.frames, frames_placed: receiver.frames, state: this.state,
      ...(reason === undefined ? {} : { reason }),
    };
  }

  /** Ends the transfer now: the hooks come off, parked frames go back to the OS. */
  cancel(reason: string): void {
    this.donor.cancel(reason);
    this.receiver.cancel(reason);
  }
}

/** One half of a reallocation between VMs of different threads, as its thread reports it. */
export interface ReallocationHalfStatus {
  /** Pages A has inflated for it so far (the giving half), or pages B has been told of (the receiving half). */
  given: number;
  /** Frames moved out of A (giving half) or into B's deflated pages (receiving half). */
  frames: number;
  /** Where this half is. */
  state: ReallocationState;
  /** Why it was cancelled, when it was. */
  reason?: string;
}

/**
 * The giving half of a reallocation whose two VMs run in different threads of one pool (issue
 * 16, docs/workers.md): as A's driver INFLATEs, each page's frame (when A holds one privately)
 * leaves A's P2M as a FrameHandle (GuestMemory.exportPage, then the page is released ballooned:
 * the handle holds the frame's only reference), and `send` carries the handles and the count of
 * pages given to the receiving half in B's thread. Done when A has given `pages`.
 */
export class ReallocationDonor {
  private given = 0;
  private framesTaken = 0;
  private stateNow: ReallocationState = 'running';
  private reason: string | undefined;

  constructor(
    /** The VM giving memory. */
    readonly from: ReallocationSide,
    /** Pages to move. */
    readonly pages: number,
    private readonly send: (handles: FrameHandle[], given: number) => void,
  ) {
    if (from.balloon.donor !== null || from.balloon.receiver !== null) throw new RangeError('a VM takes part in one reallocation at a time');
    from.balloon.donor = this.donate;
    from.balloon.setTarget(from.balloon.target + pages);
  }

  /** Where this half is. */
  get state(): ReallocationState {
    return this.stateNow;
  }

  /** Its progress. */
  status(): ReallocationHalfStatus {
    return { given: this.given, frames: this.framesTaken, state: this.stateNow, ...(this.reason === undefined ? {} : { reason: this.reason }) };
  }

  /** Ends this half now (the hook comes off; what was sent stays sent). */
  cancel(reason: string): void {
    if (this.stateNow !== 'running') return;
    this.stateNow = 'cancelled';
    this.reason = reason;
    this.finish();
  }

  private readonly donate = (memory: GuestMemory, gpns: Uint32Array): number => {
    const handles: FrameHandle[] = [];
    let counted = 0;
    for (const gpn of gpns) {
      if (this.given + counted >= this.pages) break;
      counted++;
      if (memory.stateOf(gpn) !== PageState.PRESENT || !memory.isPrivate(gpn)) continue;
      handles.push(memory.exportPage(gpn));
      memory.releasePage(gpn, AbsentState.BALLOONED); // the handle keeps the frame
    }
    this.given += counted;
    this.framesTaken += handles.length;
    if (counted > 0) this.send(handles, counted);
    if (this.given >= this.pages && this.stateNow === 'running') {
      this.stateNow = 'done';
      this.finish();
    }
    return handles.length;
  };

  private finish(): void {
    if (this.from.balloon.donor === this.donate) this.from.balloon.donor = null;
  }
}

/**
 * The receiving half of a reallocation across threads: frames arriving as handles (accept) are
 * parked in a reserve of this thread's hypervisor and zero-filled (B must never see A's data);
 * for every page A gave, B's balloon target falls by one, and each page B DEFLATEs gets a parked
 * frame. Done when A's `pages` have been accounted for and the reserve is empty.
 */
export class ReallocationReceiver {
  private readonly reserve: Vm;
  private readonly parked: number[] = [];
  private nextReserveGpn = 0;
  private given = 0;
  private framesPlaced = 0;
  private stateNow: ReallocationState = 'running';
  private reason: string | undefined;

  constructor(
    private readonly hv: Hypervisor,
    /** The VM receiving memory. */
    readonly to: ReallocationSide,
    /** Pages to move. */
    readonly pages: number,
  ) {
    if (to.balloon.donor !== null || to.balloon.receiver !== null) throw new RangeError('a VM takes part in one reallocation at a time');
    this.reserve = hv.createVm({ name: `reallocation-${nextId++}`, memoryBytes: pages * PAGE_SIZE });
    to.balloon.receiver = this.receive;
  }

  /** Where this half is. */
  get state(): ReallocationState {
    return this.stateNow;
  }

  /** Its progress. */
  status(): ReallocationHalfStatus {
    return { given: this.given, frames: this.framesPlaced, state: this.stateNow, ...(this.reason === undefined ? {} : { reason: this.reason }) };
  }

  /** Frames from the giving half, and how many pages A gave with them. Once cancelled, the handles are dropped. */
  accept(handles: readonly FrameHandle[], given: number): void {
    if (this.stateNow !== 'running') {
      for (const handle of handles) this.hv.dropFrameHandle(handle);
      return;
    }
    for (const handle of handles) {
      const slot = this.nextReserveGpn++;
      this.reserve.memory.importPage(slot, handle);
      this.reserve.memory.writePhysical(slot * PAGE_SIZE, ZERO_PAGE); // the only holder: zeroed in place
      this.parked.push(slot);
    }
    this.given += given;
    this.to.balloon.setTarget(Math.max(0, this.to.balloon.target - given));
    this.settle();
  }

  /** Ends this half now: the hook comes off, parked frames go back to the OS. */
  cancel(reason: string): void {
    if (this.stateNow !== 'running') return;
    this.stateNow = 'cancelled';
    this.reason = reason;
    this.finish();
  }

  private readonly receive = (memory: GuestMemory, gpns: Uint32Array): number => {
    let filled = 0;
    for (const gpn of gpns) {
      const slot = this.parked.pop();
      if (slot === undefined) break;
      this.reserve.memory.moveFrame(slot, memory, gpn);
      filled++;
    }
    this.framesPlaced += filled;
    this.settle();
    return filled;
  };

  private settle(): void {
    if (this.given >= this.pages && this.parked.length === 0 && this.stateNow === 'running') {
      this.stateNow = 'done';
      this.finish();
    }
  }

  private finish(): void {
    if (this.to.balloon.receiver === this.receive) this.to.balloon.receiver = null;
    if (this.hv.vms.includes(this.reserve)) this.hv.destroyVm(this.reserve);
  }
}
