/**
 * Exit routing for the exits that are not about guest memory: hypercalls (by number) and MMIO
 * accesses (by device window). Memory exits (absent pages, protected writes) are GuestMemory's.
 * Services and devices register here through the Vm; the interpreter's slow path calls in.
 */
import { HcallStatus, Reg } from '../guest-isa/arch.ts';
import type { Vcpu } from './cpu/vcpu.ts';
import type { MmioBus } from './mmio.ts';

/** Services a hypercall: read a1..a3 from vcpu.regs, write a0 (status) and a1 (result). */
export type HypercallHandler = (vcpu: Vcpu) => void;

/** Counters of non-memory exits. */
export interface RoutedExitCounts {
  /** Guest loads and stores that reached a device window. */
  mmio: number;
  /** `hcall` instructions executed (known numbers or not). */
  hypercall: number;
  /** Exits turned into guest traps (a page nobody could produce: machine check). */
  trapToGuest: number;
  /** Accesses that needed a host frame when the pool had none, and paused the VM to wait (Vm.onHostMemoryExhausted). */
  hostMemoryWaits: number;
}

/**
 * A VM's routing of hypercalls and MMIO accesses (Vm.exitRouter). Register through the Vm
 * (Vm.onHypercall, Vm.attachDevice); read `counts` for stats.
 */
export class ExitRouter {
  /** Exits routed so far (see also Vm.exits, which adds the memory exits). */
  readonly counts: RoutedExitCounts = { mmio: 0, hypercall: 0, trapToGuest: 0, hostMemoryWaits: 0 };
  private readonly hypercalls = new Map<number, HypercallHandler>();

  /** @internal Created by the Vm over its MMIO bus. */
  constructor(private readonly bus: MmioBus) {}

  /** Registers a hypercall number (replaces the previous handler). */
  onHypercall(number: number, handler: HypercallHandler): void {
    this.hypercalls.set(number, handler);
  }

  /** @internal An `hcall` on vcpu: calls the handler for a0, or sets a0 = UNKNOWN_CALL. */
  hypercall(vcpu: Vcpu): void {
    this.counts.hypercall++;
    const handler = this.hypercalls.get(vcpu.regs[Reg.A0]!);
    if (!handler) {
      vcpu.regs[Reg.A0] = HcallStatus.UNKNOWN_CALL;
      return;
    }
    handler(vcpu);
  }

  /** @internal Reads an MMIO word at guest-physical `gpa` from the device owning it. */
  mmioRead(vcpu: Vcpu, gpa: number): number {
    this.counts.mmio++;
    return this.bus.read(vcpu, gpa);
  }

  /** @internal Writes an MMIO word; false when the device refuses it (the store becomes an access fault). */
  mmioWrite(vcpu: Vcpu, gpa: number, value: number): boolean {
    this.counts.mmio++;
    return this.bus.write(vcpu, gpa, value);
  }
}
