/**
 * Pre-decoded code pages, keyed by host frame and shared by every vCPU and VM of a hypervisor
 * (VMs that share frames, e.g. after a fork, share decoded code too).
 *
 * A decoded page is 1025 entries in two parallel Int32Arrays: `ops` holds the opcode and the
 * register fields re-packed for the interpreter, `imms` the immediate already extended and scaled;
 * entry 1024 is a PAGE_END marker so straight-line code needs no per-instruction page check.
 *
 *   ops entry: opcode (bits 0-7) | rd << 8 | rs1 << 13 | rs2 << 18   (5-bit register fields)
 *
 * A destination of r0 is re-targeted to register 16, a sink the interpreter never reads, so
 * the hot loop needs no "is rd zero" test. An illegal word decodes to opcode 0 (ILLEGAL) with
 * the word itself in `imms` (it becomes the trap value).
 *
 * A frame with a decoded copy never gets a write TLB entry: a store to it takes the slow path,
 * which re-decodes the word in place (self-modifying code stays exact). Frames written often are
 * dropped from the cache so that ordinary data pages that once held code become fast again.
 */
import { RESERVED_BITS } from '../../guest-isa/encoding.ts';
import { Flag, INSTRUCTIONS, MAX_OPCODE } from '../../guest-isa/opcodes.ts';
import type { Format } from '../../guest-isa/opcodes.ts';

export const WORDS_PER_PAGE = 1024;
export const DECODED_PAGE_ENTRIES = WORDS_PER_PAGE + 1;
export const OP_ILLEGAL = 0;
export const OP_PAGE_END = MAX_OPCODE + 1;
/**
 * Decoded base of the step page: every entry is PAGE_END except the one instruction being
 * single-stepped, so the interpreter returns to its outer loop after exactly one instruction
 * (exact budget stops, tracing) without any per-instruction check on the fast path.
 */
export const STEP_PAGE_BASE = 0;
export const REG_SINK = 16;
/** Stores to a decoded page after which its decoded copy is dropped. */
export const CODE_WRITE_LIMIT = 64;

const enum FormatCode { R, I, SHIFT, LOAD, STORE, BRANCH, U, J, AMO, CSR, R2, NONE }
const FORMAT_CODES: Record<Format, FormatCode> = {
  R: FormatCode.R, I: FormatCode.I, SHIFT: FormatCode.SHIFT, LOAD: FormatCode.LOAD, STORE: FormatCode.STORE,
  BRANCH: FormatCode.BRANCH, U: FormatCode.U, J: FormatCode.J, AMO: FormatCode.AMO, CSR: FormatCode.CSR,
  R2: FormatCode.R2, NONE: FormatCode.NONE,
};
// Per-opcode lookup tables derived from the opcode table, so decoding allocates nothing.
const formatOf = new Int8Array(256).fill(-1);
const reservedOf = new Int32Array(256);
const signedImmOf = new Uint8Array(256);
for (const spec of INSTRUCTIONS) {
  const code = FORMAT_CODES[spec.format];
  formatOf[spec.opcode] = code;
  reservedOf[spec.opcode] = RESERVED_BITS[spec.format] | 0;
  signedImmOf[spec.opcode] = (spec.flags & Flag.SIGNED_IMM) !== 0 ? 1 : 0;
}

/** Decodes one word into `ops[at]`, `imms[at]`. */
export function predecodeWord(word: number, ops: Int32Array, imms: Int32Array, at: number): void {
  const op = word & 0xff;
  const format = formatOf[op]!;
  if (format < 0 || (word & reservedOf[op]!) !== 0) {
    ops[at] = OP_ILLEGAL;
    imms[at] = word;
    return;
  }
  const a = (word >>> 8) & 15;
  const b = (word >>> 12) & 15;
  const c = (word >>> 16) & 15;
  let rd = 0;
  let rs1 = 0;
  let rs2 = 0;
  let imm = 0;
  switch (format) {
    case FormatCode.R:
    case FormatCode.AMO:
      rd = a; rs1 = b; rs2 = c;
      break;
    case FormatCode.I:
    case FormatCode.LOAD:
      rd = a; rs1 = b; imm = signedImmOf[op] ? word >> 16 : word >>> 16;
      break;
    case FormatCode.SHIFT:
    case FormatCode.CSR:
      rd = a; rs1 = b; imm = word >>> 16;
      break;
    case FormatCode.STORE:
      rs2 = a; rs1 = b; imm = word >> 16;
      break;
    case FormatCode.BRANCH:
      rs1 = a; rs2 = b; imm = word >> 16;
      break;
    case FormatCode.U:
      rd = a; imm = word & 0xffff_f000;
      break;
    case FormatCode.J:
      rd = a; imm = word >> 12;
      break;
    case FormatCode.R2:
      rs1 = b; rs2 = c;
      break;
    case FormatCode.NONE:
      break;
  }
  ops[at] = op | ((rd === 0 ? REG_SINK : rd) << 8) | (rs1 << 13) | (rs2 << 18);
  imms[at] = imm;
}

/** Counters of a DecodeCache (Hypervisor.decodeCache.stats). */
export interface DecodeCacheStats {
  /** Host frames decoded (a frame decoded again after being dropped counts again). */
  pagesDecoded: number;
  /** Words re-decoded in place because a store changed them (self-modifying code, A/D updates). */
  wordsRedecoded: number;
  /** Decoded frames dropped (written too often, replaced wholesale, or freed). */
  pagesDropped: number;
  /** Times the cache was full at its cap and dropped every decoded frame at once. */
  cacheFlushes: number;
  /** Decoded frames held now. */
  slotsInUse: number;
}

/**
 * The decoded-code cache of a hypervisor: guest code pre-decoded once per 4 KiB host frame into
 * opcode and operand arrays, shared by every vCPU and VM that maps the frame, kept coherent with
 * stores to code. Only `stats` is meant for embedders; the rest serves the interpreter.
 */
export class DecodeCache {
  /** @internal Decoded opcodes and packed register fields, DECODED_PAGE_ENTRIES per slot. */
  ops: Int32Array;
  /** @internal Decoded immediates, parallel to `ops`. */
  imms: Int32Array;
  /** Slot + 1 per host frame (0 = not decoded). */
  private readonly frameSlot: Int32Array;
  private slotFrame: Int32Array;
  private slotWrites: Int32Array;
  /**
   * @internal Per slot: bumped whenever its decoded contents change (a word re-decoded, the slot
   * dropped, refilled or flushed), so compiled code derived from it (kernel/cpu/jit) can tell it is stale.
   */
  slotVersion: Int32Array;
  /** @internal Bumped with every slotVersion change: compiled code checks it after a slow path. */
  version = 0;
  /** @internal Per slot: bumped when it is filled with a frame's code (not when a word is re-decoded). */
  slotFills: Int32Array;
  private freeSlots: number[] = [];
  private capacity: number;
  private readonly maxCapacity: number;
  /** @internal Called with the decoded base of a slot that is about to be reused or dropped. */
  onSlotDropped: (codeBase: number) => void = () => {};
  /** @internal Called when a frame gets a decoded copy: writable TLB entries to it must go. */
  onFrameDecoded: (frame: number) => void = () => {};
  /** @internal Called when every slot is dropped at once. */
  onFlush: () => void = () => {};

  /** Live counters (see DecodeCacheStats). */
  readonly stats: DecodeCacheStats = { pagesDecoded: 0, wordsRedecoded: 0, pagesDropped: 0, cacheFlushes: 0, slotsInUse: 0 };

  /** @internal One per hypervisor: `frameCount` host frames, slots growing from `initialSlots` to `maxSlots`. */
  constructor(frameCount: number, initialSlots = 64, maxSlots = 8192) {
    this.frameSlot = new Int32Array(frameCount);
    this.capacity = initialSlots;
    this.maxCapacity = maxSlots;
    this.ops = new Int32Array(initialSlots * DECODED_PAGE_ENTRIES);
    this.imms = new Int32Array(initialSlots * DECODED_PAGE_ENTRIES);
    this.slotFrame = new Int32Array(initialSlots).fill(-1);
    this.slotWrites = new Int32Array(initialSlots);
    this.slotVersion = new Int32Array(initialSlots);
    this.slotFills = new Int32Array(initialSlots);
    // Slot 0 is the step page, never given to a frame.
    for (let slot = initialSlots - 1; slot >= 1; slot--) this.freeSlots.push(slot);
    this.ops.fill(OP_PAGE_END, STEP_PAGE_BASE, STEP_PAGE_BASE + DECODED_PAGE_ENTRIES);
  }

  /**
   * @internal Puts the instruction at `index` of the decoded page at `base` alone into the step page
   * (clearing the one stepped before) and returns the step page's base.
   */
  prepareStep(base: number, index: number): number {
    const ops = this.ops;
    const imms = this.imms;
    ops[STEP_PAGE_BASE + this.steppedIndex] = OP_PAGE_END;
    ops[STEP_PAGE_BASE + index] = ops[base + index]!;
    imms[STEP_PAGE_BASE + index] = imms[base + index]!;
    this.steppedIndex = index;
    return STEP_PAGE_BASE;
  }

  private steppedIndex = 0;

  /** @internal Whether a host frame has a decoded copy. */
  isDecoded(frame: number): boolean {
    return this.frameSlot[frame] !== 0;
  }

  /**
   * @internal Returns the decoded base (index into ops/imms) of a frame, decoding it from host memory on
   * first use. May grow (replace) the `ops`/`imms` arrays: callers reload them afterwards.
   */
  ensureDecoded(frame: number, memory32: Int32Array): number {
    const existing = this.frameSlot[frame]!;
    if (existing !== 0) return (existing - 1) * DECODED_PAGE_ENTRIES;
    if (this.freeSlots.length === 0) this.makeRoom();
    const slot = this.freeSlots.pop()!;
    const base = slot * DECODED_PAGE_ENTRIES;
    const wordBase = frame * WORDS_PER_PAGE;
    const ops = this.ops;
    const imms = this.imms;
    for (let i = 0; i < WORDS_PER_PAGE; i++) predecodeWord(memory32[wordBase + i]!, ops, imms, base + i);
    ops[base + WORDS_PER_PAGE] = OP_PAGE_END;
    imms[base + WORDS_PER_PAGE] = 0;
    this.frameSlot[frame] = slot + 1;
    this.slotFrame[slot] = frame;
    this.slotWrites[slot] = 0;
    this.slotFills[slot] = (this.slotFills[slot]! + 1) | 0;
    this.changed(slot);
    this.stats.pagesDecoded++;
    this.stats.slotsInUse++;
    this.onFrameDecoded(frame);
    return base;
  }

  /**
   * @internal A store changed the word at `byteOffset` of a decoded frame: re-decode it.
   * Returns true when the frame was dropped from the cache instead (written too often; never
   * when `mayDrop` is false).
   */
  noteWrite(frame: number, byteOffset: number, memory32: Int32Array, mayDrop = true): boolean {
    const slot = this.frameSlot[frame]! - 1;
    if (slot < 0) return false;
    if (++this.slotWrites[slot]! > CODE_WRITE_LIMIT && mayDrop) {
      this.drop(frame);
      return true;
    }
    this.changed(slot);
    const wordIndex = (byteOffset >>> 2) & (WORDS_PER_PAGE - 1);
    predecodeWord(memory32[frame * WORDS_PER_PAGE + wordIndex]!, this.ops, this.imms, slot * DECODED_PAGE_ENTRIES + wordIndex);
    this.stats.wordsRedecoded++;
    return false;
  }

  /** @internal Forgets the decoded copy of a frame (its contents changed wholesale, or it is freed). */
  /** Drops the decoded copies of `count` frames from `firstFrame` (frames handed out again). */
  dropFrames(firstFrame: number, count: number): void {
    const slots = this.frameSlot;
    for (let frame = firstFrame; frame < firstFrame + count; frame++) if (slots[frame] !== 0) this.drop(frame);
  }

  /** Drops a frame's decoded copy (its bytes changed or it left this thread's VMs); nothing if it has none. */
  drop(frame: number): void {
    const slot = this.frameSlot[frame]! - 1;
    if (slot < 0) return;
    this.onSlotDropped(slot * DECODED_PAGE_ENTRIES);
    this.changed(slot);
    this.frameSlot[frame] = 0;
    this.slotFrame[slot] = -1;
    this.freeSlots.push(slot);
    this.stats.pagesDropped++;
    this.stats.slotsInUse--;
  }

  private changed(slot: number): void {
    this.slotVersion[slot] = (this.slotVersion[slot]! + 1) | 0;
    this.version = (this.version + 1) | 0;
  }

  private makeRoom(): void {
    if (this.capacity < this.maxCapacity) {
      const grown = Math.min(this.capacity * 2, this.maxCapacity);
      const ops = new Int32Array(grown * DECODED_PAGE_ENTRIES);
      const imms = new Int32Array(grown * DECODED_PAGE_ENTRIES);
      ops.set(this.ops);
      imms.set(this.imms);
      const slotFrame = new Int32Array(grown).fill(-1);
      slotFrame.set(this.slotFrame);
      const slotWrites = new Int32Array(grown);
      slotWrites.set(this.slotWrites);
      const slotVersion = new Int32Array(grown);
      slotVersion.set(this.slotVersion);
      this.slotVersion = slotVersion;
      const slotFills = new Int32Array(grown);
      slotFills.set(this.slotFills);
      this.slotFills = slotFills;
      for (let slot = grown - 1; slot >= this.capacity; slot--) this.freeSlots.push(slot);
      this.ops = ops;
      this.imms = imms;
      this.slotFrame = slotFrame;
      this.slotWrites = slotWrites;
      this.capacity = grown;
      return;
    }
    // Full at the cap: drop everything (rare; like QEMU's translation-buffer flush).
    this.onFlush();
    for (let slot = 1; slot < this.capacity; slot++) {
      const frame = this.slotFrame[slot]!;
      if (frame >= 0) this.frameSlot[frame] = 0;
      this.slotFrame[slot] = -1;
      this.changed(slot);
    }
    this.freeSlots = [];
    for (let slot = this.capacity - 1; slot >= 1; slot--) this.freeSlots.push(slot);
    this.stats.cacheFlushes++;
    this.stats.slotsInUse = 0;
  }
}
