/**
 * BV32, the guest CPU (SPEC.md), in one module: architectural constants, the opcode table,
 * instruction encoding, the assembler and disassembler, the `.bvx` image format, and BvError,
 * the base of every typed bytevisor error. The package's `bytevisor/guest-isa` entry point.
 */
export * from './arch.ts';
export * from './opcodes.ts';
export * from './encoding.ts';
export * from './errors.ts';
export * from './image-types.ts';
export * from './image.ts';
export * from './assembler.ts';
export * from './disassembler.ts';

import { assembleFile } from './assembler.ts';
import type { GuestImage } from './image-types.ts';
import { loadImageFile } from './image.ts';

/**
 * A guest from a file: a `.s` source is assembled, anything else is loaded as a `.bvx` image.
 * Throws a BvError (an AssemblyError or an image error naming the file) on failure.
 */
export function loadGuestFile(path: string): GuestImage {
  return /\.s$/i.test(path) ? assembleFile(path).image : loadImageFile(path);
}
