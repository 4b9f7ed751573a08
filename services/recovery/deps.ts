/** What the memory-error service takes from the kernel and the ISA (one place to see it). */
export { AbsentState, CORRUPTION_PATTERNS, HOST_READ, MAX_WINDOW_BITS, MemoryErrorInputError, PAGE_BITS, PageState, checkErrorWindow, checkPattern } from '../../kernel/index.ts';
export type { CorruptionPattern, GuestMemory, Vm } from '../../kernel/index.ts';
export { Ptbr, Pte, PTE_PPN_SHIFT } from '../../guest-isa/arch.ts';
