/**
 * Malformed saved device state (devices/state.ts): a checkpoint file can be damaged past its
 * checksums or edited by hand, so each device checks the state it is handed and refuses a bad
 * one with a DeviceStateError (BV_DEVICE_STATE) naming the device and the field, before anything
 * changes. Checked with fast-check garbage per device (whole states and single fields replaced),
 * with exact messages for typical damage, and end to end: a hand-corrupted checkpoint through
 * `tools/run --restore` prints one `error:` line and exits non-zero.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { BvError } from '../../guest-isa/errors.ts';
import {
  attachStandardDevices, BlockRegister, CaptureSink, DeviceStateError, savedBlockDisk, savedBootArgs, type StandardDevices,
} from '../../devices/index.ts';
import { createHypervisor, type Vm, type VmState } from '../../kernel/index.ts';
import {
  checksum, decodeHeader, decodeSectionTable, encodeHeader, encodeSectionTable, FIRST_BLOCK_OFFSET, SectionType,
} from '../../services/checkpoint/format.ts';
import { runTool } from '../tools/child.ts';

const dir = mkdtempSync(join(tmpdir(), 'bv-saved-state-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Machine {
  vm: Vm;
  devices: StandardDevices;
  saved: VmState;
}

/** Two vCPUs (so the timer's lists have two entries), the standard devices and a disk. */
function machine(): Machine {
  const hv = createHypervisor({ hostMemoryBytes: 8 << 20 });
  const vm = hv.createVm({ memoryBytes: 1 << 20, vcpus: 2 });
  const disk = join(mkdtempSync(join(dir, 'disk-')), 'disk.img');
  writeFileSync(disk, new Uint8Array(16 * 512).fill(7));
  const devices = attachStandardDevices(vm, { output: new CaptureSink(), bootArgs: 'quiet', disk });
  devices.block!.write(vm.vcpus[0]!, BlockRegister.SECTOR_LOW, 3);
  const saved = JSON.parse(JSON.stringify(vm.captureState())) as VmState; // as a checkpoint carries it
  return { vm, devices, saved };
}

function withComponent(saved: VmState, name: string, state: unknown): VmState {
  return { ...saved, components: { ...saved.components, [name]: { version: saved.components[name]!.version, state } } };
}

function thrown(action: () => unknown): unknown {
  try {
    action();
  } catch (error) {
    return error;
  }
  return undefined;
}

/** What a refused restore must leave as it was: every guest-visible register of every device. */
function registers(m: Machine): unknown {
  const vcpu = m.vm.vcpus[0]!;
  const { console, timer, power, block } = m.devices;
  return {
    console: console.controlRegister,
    timer: m.vm.vcpus.map((each) => timer.timecmp(each).toString()),
    resets: power.resets,
    block: Object.values(BlockRegister).map((offset) => block!.read(vcpu, offset)),
    disk: block!.disk.describe().map((layer) => layer.path),
  };
}

/** Every path to a value inside `value` (object keys and array indices), the root first. */
function paths(value: unknown, prefix: (string | number)[] = []): (string | number)[][] {
  const out = [prefix];
  if (Array.isArray(value)) value.forEach((item, index) => out.push(...paths(item, [...prefix, index])));
  else if (typeof value === 'object' && value !== null) for (const [key, item] of Object.entries(value)) out.push(...paths(item, [...prefix, key]));
  return out;
}

/** A deep copy of `value` with the value at `path` replaced (or deleted). */
function replaced(value: unknown, path: (string | number)[], replacement: unknown, remove: boolean): unknown {
  if (path.length === 0) return replacement;
  const copy = structuredClone(value) as Record<string | number, unknown>;
  let at = copy;
  for (const key of path.slice(0, -1)) at = at[key] as Record<string | number, unknown>;
  if (remove) delete at[path.at(-1)!];
  else at[path.at(-1)!] = replacement;
  return copy;
}

const garbage = fc.anything({
  maxDepth: 3,
  withBigInt: true,
  withBoxedValues: true,
  withDate: true,
  withMap: true,
  withSet: true,
  withNullPrototype: true,
  withSparseArray: true,
  withTypedArray: true,
});

/** Whole garbage states, and the valid state with one value (or key) replaced by garbage or removed. */
function damagedStates(valid: unknown): fc.Arbitrary<unknown> {
  const every = paths(valid);
  return fc.oneof(
    garbage,
    fc.tuple(fc.constantFrom(...every), garbage, fc.boolean()).map(([path, value, remove]) => replaced(valid, path, value, remove && path.length > 0)),
  );
}

const DEVICES = ['console', 'timer', 'power', 'bootargs', 'block'] as const;

describe('malformed saved device state', () => {
  const m = machine();

  for (const name of DEVICES) {
    it(`${name}: any garbage is accepted as valid or refused with a typed error naming ${name}, and a refusal changes nothing`, () => {
      let refused = 0;
      fc.assert(
        fc.property(damagedStates(m.saved.components[name]!.state), (state) => {
          const before = registers(m);
          const error = thrown(() => m.vm.restoreState(withComponent(m.saved, name, state)));
          if (error === undefined) return; // it was a valid state after all
          refused++;
          if (!(error instanceof BvError)) throw error; // a TypeError, a RangeError…: the bug this guards against
          if (error instanceof DeviceStateError) {
            expect(error.code).toBe('BV_DEVICE_STATE');
            expect(error.device).toBe(name);
            expect(error.message.startsWith(`saved ${name} state`)).toBe(true);
          } else {
            // Well formed but not this machine's: other boot arguments, another disk, a missing file.
            expect(['BV_BOOTARGS_MISMATCH', 'BV_DISK_MISMATCH', 'BV_DISK_IO', 'BV_DISK_BAD_IMAGE', 'BV_DISK_BAD_OVERLAY']).toContain(error.code);
          }
          expect(registers(m)).toEqual(before);
        }),
        { numRuns: 250 },
      );
      expect(refused).toBeGreaterThan(100);
      // The machine still takes its own state.
      m.vm.restoreState(m.saved);
    });
  }

  it('names the device and the field for typical damage', () => {
    const cases: [string, unknown, string][] = [
      ['console', null, 'saved console state is not an object (got null)'],
      ['console', { control: 'on' }, 'saved console state: control is not an integer from 0 to 3 (got "on")'],
      ['console', { control: 7 }, 'saved console state: control is not an integer from 0 to 3 (got 7)'],
      ['timer', { low: [0, 0], high: 5 }, 'saved timer state: high is not a list (got 5)'],
      ['timer', { low: [0], high: [0, 0] }, 'saved timer state: low has 1 entries, this machine needs 2'],
      ['timer', { low: [0, -1], high: [0, 0] }, 'saved timer state: low[1] is not a 32-bit value (got -1)'],
      ['power', { resets: 1.5 }, 'saved power state: resets is not an integer from 0 to 9007199254740991 (got 1.5)'],
      ['power', [], 'saved power state is not an object (got a list of 0)'],
      ['bootargs', { text: 12 }, 'saved bootargs state: text is not a string (got 12)'],
      ['bootargs', Uint8Array.of(1, 2), 'saved bootargs state is not an object (got 2 bytes)'],
    ];
    const block = m.saved.components['block']!.state as Record<string, unknown>;
    cases.push(
      ['block', { ...block, chain: 'disk.img' }, 'saved block state: chain is not a non-empty list of files (got "disk.img")'],
      ['block', { ...block, chain: ['relative.img'] }, 'saved block state: chain[0] is not an absolute path (got "relative.img")'],
      ['block', { ...block, ids: ['xyz'] }, 'saved block state: ids[0] is not a 32-digit file id (got "xyz")'],
      ['block', { ...block, registers: { ...(block['registers'] as object), count: 2 ** 32 } }, 'saved block state: registers.count is not a 32-bit value (got 4294967296)'],
      ['block', { ...block, registers: { ...(block['registers'] as object), status: 9 } }, 'saved block state: registers.status is not a STATUS value (got 9)'],
      ['block', { ...block, registers: undefined }, 'saved block state: registers is not an object (got nothing)'],
    );
    for (const [name, state, message] of cases) {
      const error = thrown(() => m.vm.restoreState(withComponent(m.saved, name, state)));
      expect(error, `${name} ${JSON.stringify(state)}`).toBeInstanceOf(DeviceStateError);
      expect((error as DeviceStateError).message).toBe(message);
      expect((error as DeviceStateError).device).toBe(name);
    }
    // The helpers tools use before attaching refuse the same way.
    expect(thrown(() => savedBootArgs(undefined))).toMatchObject({ code: 'BV_DEVICE_STATE', field: '' });
    expect(thrown(() => savedBlockDisk({ chain: [] }))).toMatchObject({ code: 'BV_DEVICE_STATE', field: 'chain' });
    expect(savedBlockDisk(block)).toBe((block['chain'] as string[])[0]);
  });
});

// ---------------------------------------------------------------------------------------------
// End to end: tools/run --restore of a hand-corrupted checkpoint


/**
 * Rewrites `from` as `to` (the same length) inside one section of a checkpoint file and fixes the
 * section's CRC, the table's and the header's, as someone editing the file by hand would.
 */
function editSection(path: string, type: number, from: RegExp, to: (match: string) => string): void {
  const bytes = new Uint8Array(readFileSync(path));
  const header = decodeHeader(bytes.subarray(0, FIRST_BLOCK_OFFSET), bytes.length);
  const sections = decodeSectionTable(bytes.subarray(header.sectionTableOffset), header);
  const section = sections.get(type)!;
  const text = Buffer.from(bytes.subarray(section.offset, section.offset + section.length)).toString('latin1');
  const match = from.exec(text);
  if (!match) throw new Error(`${from} is not in section ${type}`);
  const replacement = to(match[0]);
  expect(replacement).toHaveLength(match[0].length);
  bytes.set(Buffer.from(replacement, 'latin1'), section.offset + match.index);
  section.crc = checksum(bytes.subarray(section.offset, section.offset + section.length));
  const table = encodeSectionTable([...sections.values()]);
  bytes.set(table, header.sectionTableOffset);
  bytes.set(encodeHeader({ ...header, sectionTableCrc: checksum(table) }), 0);
  writeFileSync(path, bytes);
}

describe('tools/run --restore of a hand-corrupted checkpoint', () => {
  const guest = join(dir, 'count.s');
  writeFileSync(guest, `
        .text
_start: li      t0, 20000
1:      addi    t0, t0, -1
        bnez    t0, 1b
        li      a1, 0
        li      a0, 1           # EXIT
        hcall
`);

  it('prints one error line naming the device and field (or the differing window) and exits non-zero', { timeout: 120_000 }, async () => {
    const good = join(dir, 'good.ckpt');
    const saved = await runTool([guest, '--checkpoint-at', '5000', good]);
    expect(saved.code, saved.stderr).toBe(0);
    const restored = await runTool(['--restore', good]);
    expect(restored.code, restored.stderr).toBe(0); // so the damage below is what fails

    const timer = join(dir, 'timer.ckpt');
    writeFileSync(timer, readFileSync(good));
    editSection(timer, SectionType.DEVICES, /"high":\[[0-9]+\]/, (text) => text.replace('[', '"').replace(']', '"'));
    const console = join(dir, 'console.ckpt');
    writeFileSync(console, readFileSync(good));
    editSection(console, SectionType.DEVICES, /"control":[0-9]/, () => '"control":9');
    const layout = join(dir, 'layout.ckpt');
    writeFileSync(layout, readFileSync(good));
    editSection(layout, SectionType.CONFIG, /"name":"timer"/, () => '"name":"tumor"');

    // A VM with a disk whose saved chain names a relative file (the leading '/' edited away).
    const image = join(dir, 'disk.img');
    writeFileSync(image, new Uint8Array(64 * 512));
    const withDisk = join(dir, 'disk.ckpt');
    const savedDisk = await runTool([guest, '--disk', image, '--checkpoint-at', '5000', withDisk]);
    expect(savedDisk.code, savedDisk.stderr).toBe(0);
    editSection(withDisk, SectionType.DEVICES, /"chain":\["\//, (text) => text.replace('["/', '["x'));

    const runs = await Promise.all([timer, console, layout, withDisk].map((path) => runTool(['--restore', path])));
    const expected = [
      /^error: saved timer state: high is not a list \(got "[0-9]+"\)\n$/,
      /^error: saved console state: control is not an integer from 0 to \d \(got 9\)\n$/,
      /^error: .*device layout differs at device-table entry 1: the saved VM has 'tumor' \(type 2\) at 0xf0002000, 4 KiB, this VM has 'timer' .*\n$/,
      /^error: saved block state: chain\[0\] is not an absolute path \(got "x.*"\)\n$/,
    ];
    runs.forEach((run, index) => {
      expect(run.code).not.toBe(0);
      expect(run.code).not.toBeNull();
      expect(run.stderr).toMatch(expected[index]!); // one line: no stack trace
      expect(run.stdout).toBe('');
    });
  });
});
