/**
 * The seam between the kernel and everything else: guest memory is reached only through the
 * kernel's memory API (GuestMemory). No code in services/, devices/, tools/ or bench/ may touch
 * P2M entries, frame-pool internals or host offsets. This test reads their sources and fails
 * naming the file and line of any use of a forbidden member, so the seam cannot erode.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '..', '..');
const SCANNED = ['services', 'devices', 'tools', 'bench'];

/** What outside code must not use, and why. */
const FORBIDDEN: readonly [RegExp, string][] = [
  [/\.p2m\b/, 'the P2M itself'],
  [/\bP2mEntry\b|\bP2mGeneration\b|\bP2M_[A-Z_]+\b/, 'P2M entry encoding'],
  [/\brefCount\b/, 'frame reference counts'],
  [/\.pool\s*\.\s*(u8|i8|u16|i16|i32|memory|allocFrame|allocRun|allocContiguous|retain|release|mapFile)\b/, 'frame-pool internals'],
  [/\ballocFrame\s*\(|\ballocRun\s*\(|\ballocContiguous\s*\(/, 'frame allocation'],
  [/\bmemory32\b|\bhostPool32\b/, 'the host pool as words'],
  [/\bhostOffset\w*\b/, 'host offsets'],
  [/\b(entryOf|resolveFrame|frameForAccess|regionRunFrame|protectPage|unprotectPage|mayCache(Read|Write))\s*\(/, 'kernel-internal memory paths'],
];

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...sourceFiles(path));
    else if (/\.(ts|mts|js|mjs)$/.test(name)) out.push(path);
  }
  return out;
}

/** Code lines only: comments and string contents cannot break the seam. */
function codeLines(text: string): string[] {
  const withoutBlocks = text.replace(/\/\*[\s\S]*?\*\//g, (block) => block.replace(/[^\n]/g, ' '));
  return withoutBlocks.split('\n').map((line) => line.replace(/\/\/.*$/, '').replace(/'(?:[^'\\]|\\.)*'|`(?:[^`\\]|\\.)*`/g, "''"));
}

/** Every use of a forbidden member in a source text, as "line: what". */
export function seamViolations(text: string): string[] {
  const found: string[] = [];
  codeLines(text).forEach((line, index) => {
    for (const [pattern, what] of FORBIDDEN) if (pattern.test(line)) found.push(`${index + 1}: ${what}: ${line.trim()}`);
  });
  return found;
}

describe('the guest-memory seam', () => {
  it('flags each kind of forbidden access (the checker itself works)', () => {
    const samples = [
      'const e = vm.p2m.entries[gpn];',
      'const f = P2mEntry.frame(e);',
      'pool.refCount[frame]++;',
      'vm.pool.u8.set(bytes, 0);',
      'const frame = hv.pool.allocFrame();',
      'const words = vm.hostPool32;',
      'const at = vm.hostOffsetForRead(gpa);',
      'vm.memory.entryOf(5);',
    ];
    for (const sample of samples) expect(seamViolations(sample).length, sample).toBeGreaterThanOrEqual(1);
    // The API itself, comments and strings are fine.
    expect(seamViolations("vm.memory.installPage(gpn, bytes); // not vm.p2m.entries\nconst s = 'hostOffset';")).toEqual([]);
  });

  it('holds: services, devices, tools and the bench reach guest memory only through GuestMemory', () => {
    const violations: string[] = [];
    for (const dir of SCANNED) {
      for (const file of sourceFiles(join(ROOT, dir))) {
        for (const violation of seamViolations(readFileSync(file, 'utf8'))) violations.push(`${relative(ROOT, file)}:${violation}`);
      }
    }
    expect(violations).toEqual([]);
  });
});
