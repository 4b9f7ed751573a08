/**
 * Memory errors (T-17), the kernel's part: corrupting the real host bytes behind a guest page
 * (ECC-style injection) and checking the window a memory controller would report.
 *
 * GuestMemory.corruptPage, poisonPage and poisonedPageBytes (kernel/memory/guest-memory.ts) use
 * these helpers; FramePool.retire keeps a poisoned page's frame out of use for good. The model:
 * an error lives in one frame that one VM maps alone (a shared frame is first given a private
 * copy, so one injection never reaches several VMs); poisoning makes the page absent in the
 * POISONED state, with the retired frame as its payload, so no guest access reaches the bad
 * bytes; the resolver a service registers for POISONED rebuilds the page (installPage) or
 * refuses it, and the guest then takes a machine check (cause 18).
 */
import { PAGE_SIZE } from '../../guest-isa/arch.ts';
import { KernelError } from '../errors.ts';

/** How the bits of a corrupted window change: inverted, random, all 0, all 1. */
export type CorruptionPattern = 'flip' | 'random' | 'stuck0' | 'stuck1';
/** The patterns corruptPage accepts. */
export const CORRUPTION_PATTERNS: readonly CorruptionPattern[] = ['flip', 'random', 'stuck0', 'stuck1'];
/** Bits in a page. */
export const PAGE_BITS = PAGE_SIZE * 8;
/** The widest window a report may name (a 64-bit ECC word). */
export const MAX_WINDOW_BITS = 64;

/** Thrown for a window or pattern that cannot be reported (code BV_BAD_ERROR_WINDOW). */
export class MemoryErrorInputError extends KernelError {
  constructor(message: string) {
    super('BV_BAD_ERROR_WINDOW', message);
  }
}

/** Checks a window: first bit 0 … 32767, 1 … 64 bits, inside the page. */
export function checkErrorWindow(bitOffset: number, bits: number): void {
  if (!Number.isInteger(bits) || bits < 1 || bits > MAX_WINDOW_BITS) throw new MemoryErrorInputError(`an error window is 1 … ${MAX_WINDOW_BITS} bits, got ${String(bits)}`);
  if (!Number.isInteger(bitOffset) || bitOffset < 0 || bitOffset + bits > PAGE_BITS) {
    throw new MemoryErrorInputError(`an error window of ${bits} bits must start at bit 0 … ${PAGE_BITS - bits} of its page, got ${String(bitOffset)}`);
  }
}

/** Checks a pattern name. */
export function checkPattern(pattern: string): asserts pattern is CorruptionPattern {
  if (!(CORRUPTION_PATTERNS as readonly string[]).includes(pattern)) throw new MemoryErrorInputError(`pattern must be ${CORRUPTION_PATTERNS.join(', ')}, got ${String(pattern)}`);
}

/**
 * Changes `bits` bits of a page from bit `bitOffset` (bit i of the page is bit i % 8 of byte
 * i / 8) in place, by `pattern`; `random` gives numbers in [0, 1) for 'random' (each bit
 * flips with probability 1/2, at least one does). Returns how many
 * bits really changed (a stuck-at or random pattern may leave some as they were).
 */
export function corruptBits(page: Uint8Array, bitOffset: number, bits: number, pattern: CorruptionPattern, random: () => number = Math.random): number {
  let changed = 0;
  for (let bit = bitOffset; bit < bitOffset + bits; bit++) {
    const byte = bit >>> 3;
    const mask = 1 << (bit & 7);
    const before = page[byte]!;
    let after: number;
    switch (pattern) {
      case 'flip': after = before ^ mask; break;
      case 'stuck0': after = before & ~mask; break;
      case 'stuck1': after = before | mask; break;
      case 'random': after = random() < 0.5 ? before ^ mask : before; break;
    }
    if (after !== before) changed++;
    page[byte] = after;
  }
  if (pattern === 'random' && changed === 0) {
    page[bitOffset >>> 3]! ^= 1 << (bitOffset & 7); // an error changes something
    changed = 1;
  }
  return changed;
}
