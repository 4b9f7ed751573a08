/**
 * What a vCPU needs from the VM it runs in: the slow path of memory accesses (a TLB miss resolves
 * a page, an MMIO access reaches a device), exits, stops, and the walker's access to guest page
 * tables. Vm implements it; the vCPU depends on nothing else of the VM.
 */
import type { DecodeCache } from './decode-cache.ts';
import type { FramePool } from '../memory/frame-pool.ts';
import type { Mmu } from '../mmu/shadow.ts';
import type { AccessKind, PhysicalPageTables } from '../mmu/sv32.ts';
import type { Vcpu } from './vcpu.ts';
import type { PageWaitError } from '../errors.ts';

/** @internal What a vCPU needs from its VM (Vm implements it; see the module comment). */
export interface VcpuHost extends PhysicalPageTables {
  /** 0 while the VM runs; the interpreter checks it after every exit. */
  readonly stopCode: number;
  readonly mmu: Mmu;
  /** The host pool's typed views. */
  readonly pool: FramePool;
  readonly decodeCache: DecodeCache;
  isRam(gpa: number): boolean;
  isMmio(gpa: number): boolean;
  /** The host frame behind a gpa of a file-backed range (persistent memory), or -1: not RAM, but loads and stores reach it like RAM. */
  fileRangeFrame(gpa: number): number;
  /** A store is about to land on a file-backed gpa: marks its page written when its range's writes are tracked. */
  noteFileRangeStore(gpa: number): void;
  /** Whether a write translation to a file-backed gpa may be cached (not while its page is clean and tracked). */
  mayCacheFileRangeWrite(gpa: number): boolean;
  mmioRead(vcpu: Vcpu, gpa: number): number;
  mmioWrite(vcpu: Vcpu, gpa: number, value: number): boolean;
  /** The frame for a RAM access (resolving absent pages and protections), or -1 after a trap or a stop. */
  frameForAccess(vcpu: Vcpu, gpa: number, access: AccessKind, va: number): number;
  /** The pool had no frame for an access: pause the VM to wait (true), or false to let the error stand. */
  waitForHostMemory(): boolean;
  /** A resolver asked to wait for a page (PageWaitError): pause the VM before the access; returns -1. */
  waitForPage(error: PageWaitError): number;
  markAccessed(gpn: number): void;
  mayCacheRead(gpa: number): boolean;
  mayCacheWrite(gpa: number, frame: number): boolean;
  isTraced(gpa: number): boolean;
  tracedWrite(gpa: number, oldWord: number, newWord: number): void;
  noteCodeWrite(frame: number, pageOffset: number): boolean;
  hypercall(vcpu: Vcpu): void;
  guestError(vcpu: Vcpu, message: string): void;
  unhandledTrap(vcpu: Vcpu, cause: number, tval: number): void;
  /**
   * A machine check is being taken (counted); `nested` when status.MCIP was already set, and the
   * VM then stops (SPEC.md §7.6).
   */
  machineCheckTaken(vcpu: Vcpu, tval: number, nested: boolean): void;
  readInstructionWordAt(vcpu: Vcpu, pc: number): number;
}
