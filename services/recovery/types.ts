import type { Vm } from '../../kernel/index.ts';
/** An uncorrected-error report for one guest page (what a memory controller reports: an address and the size of the corrupted window). */
export interface ErrorReport {
  /** The guest-physical address reported, and its page. */
  gpa: number;
  /** The page of `gpa`. */
  gpn: number;
  /** The corrupted window inside the page: first bit (0 … 32767) and length in bits (1 … 64, at most to the page's end). */
  windowBitOffset: number;
  /** The window's length in bits (1 … 64). */
  windowBits: number;
}
/** One way to rebuild a page (services/recovery/*.ts). */
export interface RecoveryMethod {
  /** 'clean-copy' | 'parity' | 'hash'. */
  readonly name: string;
  /** The page's good 4096 bytes rebuilt from `bad` (a copy of the corrupted bytes) and what the method keeps, or null when it cannot (never throws for an ordinary failure). */
  recover(vm: Vm, report: ErrorReport, bad: Uint8Array): Uint8Array | null;
}

/**
 * Where a clean page's bytes can be read again (CleanCopyRecovery.admit): a swap slot still
 * holding what was swapped in, say. The source keeps its copy until release(gpn).
 */
export interface CleanSource {
  /** For stats: 'swap', … */
  readonly name: string;
  /** The page's bytes as the source holds them, or null when it no longer can (never throws). */
  read(gpn: number): Uint8Array | null;
  /** The page is no longer clean (written, replaced): the source may drop its copy. */
  release(gpn: number): void;
}

/** What a source hands clean pages to (CleanCopyRecovery implements it). */
export interface CleanCopySink {
  /**
   * Admits a present page as clean, its bytes equal to `source.read(gpn)` now; false (the source
   * keeps nothing) when the page cannot be tracked.
   */
  admit(gpn: number, source: CleanSource): boolean;
}
