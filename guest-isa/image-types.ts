/**
 * The in-memory form of a BV32 guest image (`.bvx`). `guest-isa/image.ts` serialises and parses
 * the file format; the assembler produces a GuestImage and the hypervisor loads one.
 */

/** Segment permission bits. */
export const SegmentFlag = { R: 1, W: 2, X: 4 } as const;

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

export interface ImageSymbol {
  name: string;
  /** Guest address (or plain value for `.equ` constants, see `isAbsolute`). */
  value: number;
  /** Exported with `.global`. */
  global: boolean;
}

export interface GuestImage {
  /** Guest-physical entry point: inside an executable segment, 4-byte aligned. */
  entry: number;
  segments: ImageSegment[];
  symbols: ImageSymbol[];
}
