/**
 * The in-memory form of a BV32 guest image (`.bvx`). `guest-isa/image.ts` serialises and parses
 * the file format; the assembler produces a GuestImage and the hypervisor loads one.
 */

/** Segment permission bits. */
export const SegmentFlag = {
  /** Readable. */
  R: 1,
  /** Writable. */
  W: 2,
  /** Executable (the entry point must lie in such a segment). */
  X: 4,
} as const;

/** A block of bytes the loader puts at a guest-physical address. */
export interface ImageSegment {
  /** Guest-physical load address (4-byte aligned). */
  gpa: number;
  /** Bytes stored in the file; loaded at `gpa`. */
  data: Uint8Array;
  /** Bytes in memory (≥ data.length); the rest is zero-filled (.bss). */
  memSize: number;
  /** Bit set of SegmentFlag. */
  flags: number;
  /** Optional name (".text", ".data", …) for listings. */
  name?: string;
}

/** A named address or constant (for listings, disassembly and tools). */
export interface ImageSymbol {
  /** The symbol's name. */
  name: string;
  /** Guest address (or plain value for `.equ` constants, see `isAbsolute`). */
  value: number;
  /** Exported with `.global`. */
  global: boolean;
}

/**
 * A BV32 guest program in memory: what the assembler produces, what parseImage reads from a
 * `.bvx` file, and what Vm.loadImage loads.
 */
export interface GuestImage {
  /** Guest-physical entry point: inside an executable segment, 4-byte aligned. */
  entry: number;
  /** The segments, loaded in order (they must not overlap). */
  segments: ImageSegment[];
  /** Symbols (may be empty). */
  symbols: ImageSymbol[];
}
