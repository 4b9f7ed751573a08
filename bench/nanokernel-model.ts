/**
 * What the nanokernel's user programs print, computed in plain JavaScript from their
 * specification in docs/nanokernel.md — so that the bench can check every line a nanokernel run
 * prints (bench/translation.ts) without trusting the guest.
 */

/** A walker access pattern (docs/nanokernel.md, "The walker"); `hot` is not used by the bench. */
export type WalkerPattern = { kind: 'seq' } | { kind: 'random' } | { kind: 'stride'; stride: number };

/** One program of a boot argument list. */
export type ProgramSpec =
  | { program: 'sieve'; n: number }
  | { program: 'walker'; size: number; pattern: WalkerPattern; passes: number }
  | { program: 'ping'; n: number };

const LCG_MUL = 1664525;
const LCG_ADD = 1013904223;
const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;

const hex8 = (value: number): string => `0x${(value >>> 0).toString(16).padStart(8, '0')}`;

const patternText = (pattern: WalkerPattern): string => (pattern.kind === 'stride' ? `stride:${pattern.stride}` : pattern.kind);

/** The program's words in the boot arguments: `walker 2097152 random 2`. */
export function programArgs(spec: ProgramSpec): string {
  switch (spec.program) {
    case 'sieve':
    case 'ping':
      return `${spec.program} ${spec.n}`;
    case 'walker':
      return `walker ${spec.size} ${patternText(spec.pattern)} ${spec.passes}`;
  }
}

/** High 32 bits of the unsigned product a × b (a < 2^32, b < 2^32), exactly, as `mulhu`. */
function mulhu(a: number, b: number): number {
  // Split a into 16-bit halves so that every partial product is exact in a double.
  const high = (a >>> 16) * b;
  const low = (a & 0xffff) * b;
  const highUpper = Math.floor(high / 65536);
  return highUpper + Math.floor(((high - highUpper * 65536) * 65536 + low) / 2 ** 32);
}

function primesUpTo(n: number): number {
  const composite = new Uint8Array(n + 1);
  let count = 0;
  for (let i = 2; i <= n; i++) {
    if (composite[i]) continue;
    count++;
    for (let j = i * i; j <= n; j += i) composite[j] = 1;
  }
  return count;
}

/** The walker's checksum: FNV-1a over the words it reads, each written back as v + k + 1. */
function walkerChecksum(size: number, pattern: WalkerPattern, accesses: number): number {
  const words = new Int32Array(size / 4);
  let checksum = FNV_OFFSET;
  let x = 1;
  let offset = 0;
  for (let k = 0; k < accesses; k++) {
    let at: number;
    if (pattern.kind === 'random') {
      x = (Math.imul(x, LCG_MUL) + LCG_ADD) >>> 0;
      at = 4 * mulhu(x, size / 4);
    } else {
      at = offset;
      offset = (offset + (pattern.kind === 'seq' ? 64 : pattern.stride)) % size;
    }
    const value = words[at >>> 2]!;
    checksum = Math.imul(checksum ^ value, FNV_PRIME) >>> 0;
    words[at >>> 2] = value + k + 1;
  }
  return checksum;
}

/** The lines a program with this pid prints, ending with the kernel's line for its exit. */
export function expectedLines(spec: ProgramSpec, pid: number): string[] {
  const lines: string[] = [];
  switch (spec.program) {
    case 'sieve':
      lines.push(`sieve: ${primesUpTo(spec.n)} primes up to ${spec.n}`);
      break;
    case 'ping':
      for (let i = 1; i <= spec.n; i++) lines.push(`ping ${pid}: ${i}/${spec.n}`);
      break;
    case 'walker': {
      const accesses = spec.passes * Math.floor(spec.size / 64);
      const checksum = walkerChecksum(spec.size, spec.pattern, accesses);
      lines.push(
        `walker: ${spec.size} bytes, ${patternText(spec.pattern)}, ${spec.passes} pass${spec.passes === 1 ? '' : 'es'}, ${accesses} accesses, checksum ${hex8(checksum)}`,
      );
      break;
    }
  }
  lines.push(`[kernel] pid ${pid} (${spec.program}) exited with code 0`);
  return lines;
}
