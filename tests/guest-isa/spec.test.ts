/**
 * SPEC.md must not drift from the contract files: its generated regions must equal a fresh
 * render, every instruction and CSR must have its own documentation entry, and the worked
 * encodings must be what the encoder produces.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CSR_NAMES, Csr, DeviceType, REGISTER_NAMES } from '../../guest-isa/arch.ts';
import { decodeInstruction, encodeInstruction, immediateRange, type InstructionFields } from '../../guest-isa/encoding.ts';
import { BY_MNEMONIC, INSTRUCTIONS, type Format } from '../../guest-isa/opcodes.ts';
import {
  extractGeneratedRegion,
  formatLayouts,
  GENERATED_REGIONS,
  renderInstructionTable,
  SpecMarkerError,
  staleGeneratedRegions,
  updateGeneratedRegions,
} from '../../guest-isa/spec-table.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const SPEC_PATH = join(ROOT, 'guest-isa/SPEC.md');
const spec = readFileSync(SPEC_PATH, 'utf8');

/** The text of the `## N. <title>` section, up to the next `## ` heading. */
function section(markdown: string, title: string): string {
  const lines = markdown.split('\n');
  const start = lines.findIndex((line) => new RegExp(`^## \\d+\\. ${title}$`).test(line));
  if (start < 0) throw new Error(`no section '${title}'`);
  const end = lines.findIndex((line, index) => index > start && line.startsWith('## '));
  return lines.slice(start, end < 0 ? undefined : end).join('\n');
}

/** `#### <text>` headings of a piece of Markdown. */
function level4Headings(markdown: string): string[] {
  return markdown
    .split('\n')
    .filter((line) => line.startsWith('#### '))
    .map((line) => line.slice(5).trim());
}

describe('generated regions of SPEC.md', () => {
  it('equal a fresh render from the contract files', () => {
    for (const { name, render } of GENERATED_REGIONS) {
      expect(extractGeneratedRegion(spec, name), `region '${name}' (run npx tsx tools/gen-spec)`).toBe(`\n${render()}\n`);
    }
    expect(staleGeneratedRegions(spec)).toEqual([]);
    expect(updateGeneratedRegions(spec)).toBe(spec);
  });

  it('list every instruction once with its opcode and format', () => {
    const rows = extractGeneratedRegion(spec, 'instructions')
      .split('\n')
      .filter((line) => line.startsWith('| `'));
    expect(rows).toHaveLength(INSTRUCTIONS.length);
    INSTRUCTIONS.forEach((instruction, index) => {
      const opcode = `0x${instruction.opcode.toString(16).padStart(2, '0')}`;
      expect(rows[index]).toMatch(new RegExp(`^\\| \`${instruction.mnemonic}\` \\| \`${opcode}\` \\| ${instruction.format} \\|`));
    });
  });

  it('detect a table that no longer matches the opcode table, and repair it', () => {
    const tampered = spec.replace('| `add` | `0x01` |', '| `add` | `0x7f` |');
    expect(tampered).not.toBe(spec);
    expect(staleGeneratedRegions(tampered)).toEqual(['instructions']);
    expect(updateGeneratedRegions(tampered)).toBe(spec);
    // Only the generated text is replaced: prose outside the markers is left alone.
    const editedProse = spec.replace('BV32 is the 32-bit virtual CPU', 'BV32 is the virtual CPU');
    expect(updateGeneratedRegions(editedProse)).toBe(editedProse);
  });

  it('fill empty regions, which is how a new region is added', () => {
    let emptied = spec;
    for (const { name } of GENERATED_REGIONS) {
      emptied = emptied.replace(extractGeneratedRegion(emptied, name), '\n');
    }
    expect(staleGeneratedRegions(emptied)).toEqual(GENERATED_REGIONS.map(({ name }) => name));
    expect(updateGeneratedRegions(emptied)).toBe(spec);
  });

  it('refuse malformed markers with a typed error', () => {
    const cases = [
      spec.replace('<!-- END GENERATED: csrs -->', ''),
      spec.replace('<!-- BEGIN GENERATED: causes -->', ''),
      spec.replace('<!-- BEGIN GENERATED: formats -->', '<!-- BEGIN GENERATED: formats -->\n<!-- BEGIN GENERATED: formats -->'),
      spec.replace('<!-- BEGIN GENERATED: instructions -->', '<!-- END GENERATED: instructions -->\n<!-- BEGIN GENERATED: instructions -->'),
    ];
    for (const broken of cases) {
      expect(() => updateGeneratedRegions(broken)).toThrow(SpecMarkerError);
      try {
        staleGeneratedRegions(broken);
        expect.unreachable('malformed markers were accepted');
      } catch (error) {
        expect(error).toBeInstanceOf(SpecMarkerError);
        expect((error as SpecMarkerError).code).toBe('BV_SPEC_MARKERS');
      }
    }
  });

  it('escape table cells so that a summary containing | stays one cell', () => {
    const orRow = renderInstructionTable()
      .split('\n')
      .find((line) => line.startsWith('| `or` |'));
    expect(orRow).toBeDefined();
    const cells = orRow!.split(/(?<!\\)\|/).slice(1, -1);
    expect(cells).toHaveLength(7);
    expect(cells[6]!.trim()).toBe('rd = rs1 \\| rs2');
  });
});

describe('format layouts in SPEC.md', () => {
  const layouts = formatLayouts();

  it('cover every bit of the word exactly once', () => {
    for (const layout of layouts) {
      let covered = 0;
      for (const { hi, lo } of layout.segments) {
        const mask = Number((1n << BigInt(hi + 1)) - (1n << BigInt(lo)));
        expect(covered & mask, `${layout.format} overlap`).toBe(0);
        covered = (covered | mask) >>> 0;
      }
      expect(covered, `${layout.format} gaps`).toBe(0xffff_ffff);
      const reserved = layout.segments
        .filter((segment) => segment.name === '0')
        .reduce((mask, { hi, lo }) => (mask | Number((1n << BigInt(hi + 1)) - (1n << BigInt(lo)))) >>> 0, 0);
      expect(reserved).toBe(layout.reservedMask);
    }
  });

  it('describe exactly how decodeInstruction reads a word (property)', () => {
    for (const layout of layouts) {
      fc.assert(
        fc.property(fc.integer({ min: 0, max: layout.instructions.length - 1 }), fc.nat({ max: 0xff_ffff }), (index, high) => {
          const instruction = layout.instructions[index]!;
          const word = (instruction.opcode | (high << 8)) >>> 0;
          const decoded = decodeInstruction(word);
          // Legal exactly when no reserved bit is set.
          expect(decoded === null).toBe((word & layout.reservedMask) !== 0);
          if (!decoded) return;
          for (const { name, hi, lo } of layout.segments) {
            const width = hi - lo + 1;
            const raw = Number((BigInt(word) >> BigInt(lo)) & ((1n << BigInt(width)) - 1n));
            if (name === 'opcode') expect(raw).toBe(instruction.opcode);
            else if (name === 'rd' || name === 'rs1' || name === 'rs2') expect(decoded[name]).toBe(raw);
            else if (name !== '0') {
              const negative = immediateRange(instruction)[0] < 0 && raw >= 2 ** (width - 1);
              expect(decoded.imm).toBe(negative ? raw - 2 ** width : raw);
            }
          }
        }),
        { numRuns: 300 },
      );
    }
  });
});

describe('SPEC.md prose', () => {
  it('has one semantics entry (#### mnemonic) per instruction, and none for unknown ones', () => {
    const headings = level4Headings(section(spec, 'Instruction semantics'));
    expect(new Set(headings).size, 'duplicate headings').toBe(headings.length);
    expect([...headings].sort()).toEqual(INSTRUCTIONS.map((instruction) => instruction.mnemonic).sort());
  });

  it('documents every CSR under its name and number', () => {
    const headings = level4Headings(section(spec, 'Privileged architecture: modes and CSRs'));
    const names = new Map([...CSR_NAMES].map(([name, number]) => [number, name]));
    for (const [key, number] of Object.entries(Csr)) {
      const name = names.get(number);
      expect(name, `Csr.${key} has no entry in CSR_NAMES`).toBeDefined();
      expect(headings).toContain(`${name} (0x${number.toString(16).padStart(3, '0')})`);
    }
    expect(headings).toHaveLength(Object.keys(Csr).length);
  });

  it('lists every register with its ABI name', () => {
    const registers = section(spec, 'Registers and calling convention');
    REGISTER_NAMES.forEach((name, index) => {
      expect(registers).toMatch(new RegExp(`^\\| r${index} \\| ${name}( |\\|)`, 'm'));
    });
  });

  it('lists every device type', () => {
    const devices = section(spec, 'Device table and devices');
    for (const [name, type] of Object.entries(DeviceType)) {
      expect(devices).toMatch(new RegExp(`^\\| ${type} \\| \`${name}\` \\|`, 'm'));
    }
  });

  it('gives worked encodings that the encoder and decoder agree with', () => {
    const begin = spec.indexOf('<!-- BEGIN CHECKED: encoding-examples -->');
    const end = spec.indexOf('<!-- END CHECKED: encoding-examples -->');
    expect(begin).toBeGreaterThan(0);
    expect(end).toBeGreaterThan(begin);
    const rows = spec
      .slice(begin, end)
      .split('\n')
      .filter((line) => line.startsWith('| `'));
    expect(rows.length).toBeGreaterThanOrEqual(10);
    for (const row of rows) {
      const [assembly, fieldText, wordText, bytesText] = row.split('|').slice(1, -1).map((cell) => cell.trim().replace(/`/g, ''));
      const mnemonic = assembly!.split(' ')[0]!;
      const instruction = BY_MNEMONIC.get(mnemonic);
      expect(instruction, row).toBeDefined();
      const fields: Partial<InstructionFields> = {};
      if (fieldText !== '(none)') {
        for (const pair of fieldText!.split(', ')) {
          const [key, value] = pair.split('=');
          fields[key as keyof InstructionFields] = Number(value);
        }
      }
      const word = encodeInstruction(instruction!, fields);
      expect(`0x${word.toString(16).padStart(8, '0')}`, row).toBe(wordText);
      const decoded = decodeInstruction(word);
      expect(decoded?.spec.mnemonic).toBe(mnemonic);
      for (const [key, value] of Object.entries(fields)) expect(decoded?.[key as keyof InstructionFields], row).toBe(value);
      const bytes = [0, 8, 16, 24].map((shift) => ((word >>> shift) & 0xff).toString(16).padStart(2, '0')).join(' ');
      expect(bytesText, row).toBe(bytes);
    }
  });

  it('names every instruction format in the formats region', () => {
    const formats = extractGeneratedRegion(spec, 'formats');
    const used = new Set<Format>(INSTRUCTIONS.map((instruction) => instruction.format));
    for (const format of used) expect(formats).toMatch(new RegExp(`^\\| ${format} \\|`, 'm'));
  });
});

describe('tools/gen-spec', () => {
  const runTool = (...args: string[]) =>
    spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'tools/gen-spec.ts'), ...args], { cwd: ROOT, encoding: 'utf8' });

  it('--check passes on the repository SPEC.md', () => {
    const result = runTool('--check');
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
  });

  it('--check fails on a stale copy with one error line, and a plain run repairs it', () => {
    const dir = mkdtempSync(join(tmpdir(), 'gen-spec-'));
    try {
      const path = join(dir, 'SPEC.md');
      const stale = spec.replace('| `sub` | `0x02` |', '| `sub` | `0x03` |');
      writeFileSync(path, stale);

      const check = runTool('--check', path);
      expect(check.status).toBe(1);
      const errorLines = check.stderr.trim().split('\n');
      expect(errorLines).toHaveLength(1);
      expect(errorLines[0]).toMatch(/^error: .*out of date \(regions: instructions\)/);
      expect(readFileSync(path, 'utf8')).toBe(stale);

      const fix = runTool(path);
      expect(fix.status).toBe(0);
      expect(readFileSync(path, 'utf8')).toBe(spec);
      expect(runTool('--check', path).status).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reports broken markers, missing files and bad options as one line, not a stack trace', () => {
    const dir = mkdtempSync(join(tmpdir(), 'gen-spec-'));
    try {
      const path = join(dir, 'SPEC.md');
      writeFileSync(path, spec.replace('<!-- END GENERATED: causes -->', ''));
      const broken = runTool(path);
      expect(broken.status).toBe(1);
      expect(broken.stderr).toMatch(/^error: marker '<!-- BEGIN GENERATED: causes -->' has no matching/);
      expect(broken.stderr.trim().split('\n')).toHaveLength(1);

      const missing = runTool('--check', join(dir, 'absent.md'));
      expect(missing.status).toBe(1);
      expect(missing.stderr).toMatch(/^error: cannot read .*absent\.md: ENOENT\n$/);

      const usage = runTool('--frobnicate');
      expect(usage.status).toBe(2);
      expect(usage.stderr).toMatch(/^error: unknown option '--frobnicate'/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
