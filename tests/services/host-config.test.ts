// The host configuration format (services/host/config.ts, docs/host.md#configuration): defaults,
// every key, and refusals of unknown keys, wrong types, out-of-range values and the semantic
// problems, each naming the offending field; the file reader's errors; a fuzz of random JSON.
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { MAX_BOOT_ARGS_BYTES } from '../../devices/bootargs.ts';
import { GuestPhys } from '../../guest-isa/arch.ts';
import { BvError } from '../../guest-isa/errors.ts';
import { defaultTier } from '../../kernel/index.ts';
import {
  checkJson,
  ConfigError,
  HOST_CONFIG_SCHEMA,
  parseHostConfig,
  parseVmConfig,
  readHostConfigFile,
  VM_CONFIG_SCHEMA,
  type HostSpec,
} from '../../services/host/config.ts';

const MIB = 1024 * 1024;
const MAX_MEMORY_MIB = GuestPhys.DEVICE_TABLE / MIB;
const MINIMAL = { vms: [{ name: 'a', image: 'examples/nanokernel/kernel.s', memory_mib: 64, vcpus: 1, boot_args: 'sieve 1000' }] };

/** A copy of the minimal example's VM with `changes` (a key set to undefined is left out). */
function vm(changes: Record<string, unknown> = {}): Record<string, unknown> {
  return JSON.parse(JSON.stringify({ ...MINIMAL.vms[0], ...changes })) as Record<string, unknown>;
}

/** The ConfigError parseHostConfig throws for `json` (fails the test when it accepts it). */
function refusal(json: unknown, parse: (json: unknown) => unknown = parseHostConfig): ConfigError {
  try {
    parse(json);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return error as ConfigError;
  }
  throw new Error(`accepted: ${JSON.stringify(json)}`);
}

/** Checks the first problem's path, and that the message starts with it. */
function expectRefused(json: unknown, path: string, words?: RegExp): ConfigError {
  const error = refusal(json);
  expect(error.path).toBe(path);
  expect(error.message.startsWith(`${path}: `)).toBe(true);
  if (words !== undefined) expect(error.message).toMatch(words);
  return error;
}

describe('accepted configurations', () => {
  it("parses the issue's minimal example with every default applied", () => {
    const spec: HostSpec = parseHostConfig(MINIMAL);
    expect(spec).toEqual({
      hostMemoryBytes: 1024 * MIB,
      sliceInstructions: 200_000,
      quantum: 20_000,
      consoleBufferBytes: 1024 * 1024,
      maxBodyBytes: 64 * 1024,
      requestTimeoutMs: 10_000,
      overcommit: false,
      reclaim: null,
      migration: { tls: null, insecure: false, listen: null, stallTimeoutMs: 10_000, name: hostname(), diskDir: null },
      logReplicas: null,
      batteryMs: 0,
      workerGroups: [],
      placement: null,
      storageIo: null,
      channels: [],
      pmemHa: null,
      vms: [{
        name: 'a',
        image: 'examples/nanokernel/kernel.s',
        memoryBytes: 64 * MIB,
        vcpus: 1,
        bootArgs: 'sieve 1000',
        disk: null,
        mmu: { mode: 'shadow' },
        largePages: 'superpages',
        tier: defaultTier(),
        consoleInput: null,
        consoleInputEof: false,
        maxInstructions: null,
        startPaused: false,
        meminfo: false,
        ioShares: 1000,
        memoryPolicy: { shares: null, reservationMib: 0, limitMib: null, activeSampling: { pagesPerPeriod: null, periodInstructions: null }, mrc: null },
        memoryErrors: null,
      }],
    });
  });

  it('parses an empty document as a host with no VMs', () => {
    expect(parseHostConfig({}).vms).toEqual([]);
    expect(parseHostConfig({}).hostMemoryBytes).toBe(1024 * MIB);
  });

  it('reads every key', () => {
    const spec = parseHostConfig({
      host_memory_mib: 2048,
      slice_instructions: 50_000,
      quantum: 5_000,
      console_buffer_kib: 16,
      api: { max_body_kib: 8, request_timeout_ms: 2_500 },
      vms: [
        {
          name: 'web-1.a_b',
          image: 'guest.bvx',
          memory_mib: 128,
          vcpus: 4,
          boot_args: 'walker 8M random 2',
          disk: { path: 'disk.ovl', overlay_dir: 'overlays' },
          mmu: { mode: 'shadow', traces: false, batch: 0 },
          large_pages: 'always',
          tier: 'interp',
          console_input: 'one two three',
          console_input_eof: true,
          max_instructions: 5_000_000,
          start_paused: true,
          io_shares: 500,
          memory_policy: {
            shares: 2000, reservation_mib: 32, limit_mib: 96,
            active_sampling: { pages_per_period: 200, period_instructions: 5_000_000 }, mrc: { rate_pct: 0.5, quiet_instructions: 100_000, activity_rate_pct: 2 },
          },
          memory_errors: { methods: ['hash', 'clean-copy'], refresh_instructions: 2_000_000 },
        },
        { name: 'n', image: 'k.s', memory_mib: 16, mmu: { mode: 'nested' }, large_pages: 'off', disk: { path: 'raw.img' } },
        { name: 'z', image: 'k.s', memory_mib: 16, disk: null, console_input: null, max_instructions: null },
      ],
    });
    expect(spec).toMatchObject({ hostMemoryBytes: 2048 * MIB, sliceInstructions: 50_000, quantum: 5_000, consoleBufferBytes: 16 * 1024, maxBodyBytes: 8 * 1024, requestTimeoutMs: 2_500 });
    expect(spec.vms[0]).toEqual({
      name: 'web-1.a_b',
      image: 'guest.bvx',
      memoryBytes: 128 * MIB,
      vcpus: 4,
      bootArgs: 'walker 8M random 2',
      disk: { path: 'disk.ovl', overlayDir: 'overlays' },
      mmu: { mode: 'shadow', traces: false, batch: 0 },
      largePages: 'always',
      tier: 'interp',
      consoleInput: 'one two three',
      consoleInputEof: true,
      maxInstructions: 5_000_000,
      startPaused: true,
      meminfo: false,
      ioShares: 500,
      memoryPolicy: {
        shares: 2000, reservationMib: 32, limitMib: 96,
        activeSampling: { pagesPerPeriod: 200, periodInstructions: 5_000_000 }, mrc: { ratePct: 0.5, quietInstructions: 100_000, activityRatePct: 2 },
      },
      memoryErrors: { methods: ['hash', 'clean-copy'], parityGroupPages: 8, refreshInstructions: 2_000_000 },
    });
    expect(spec.vms[1]).toMatchObject({ mmu: { mode: 'nested' }, largePages: 'off', disk: { path: 'raw.img' } });
    expect(spec.vms[1]!.disk).not.toHaveProperty('overlayDir');
    expect(spec.vms[2]).toMatchObject({ disk: null, consoleInput: null, maxInstructions: null });
  });

  it('accepts the bounds themselves', () => {
    const spec = parseHostConfig({
      host_memory_mib: 4096,
      slice_instructions: 100_000_000,
      quantum: 100,
      console_buffer_kib: 65536,
      api: { max_body_kib: 16384, request_timeout_ms: 100 },
      vms: [vm({ memory_mib: MAX_MEMORY_MIB, vcpus: 32, max_instructions: Number.MAX_SAFE_INTEGER, mmu: { batch: 1023 }, name: 'x'.repeat(64) })],
    });
    expect(spec.vms[0]!.memoryBytes).toBe(GuestPhys.DEVICE_TABLE);
    expect(spec.vms[0]!.mmu).toEqual({ mode: 'shadow', batch: 1023 });
    expect(parseHostConfig({ host_memory_mib: 4, slice_instructions: 1000, quantum: 10_000_000, console_buffer_kib: 1, api: { max_body_kib: 1, request_timeout_ms: 600_000 } }).hostMemoryBytes).toBe(4 * MIB);
  });

  it('accepts boot arguments of exactly MAX_BOOT_ARGS_BYTES UTF-8 bytes', () => {
    const bootArgs = 'é'.repeat((MAX_BOOT_ARGS_BYTES - 1) / 2) + 'x'; // 2-byte characters
    expect(Buffer.byteLength(bootArgs)).toBe(MAX_BOOT_ARGS_BYTES);
    expect(parseHostConfig({ vms: [vm({ boot_args: bootArgs })] }).vms[0]!.bootArgs).toBe(bootArgs);
  });

  it('lets the VMs use the whole pool', () => {
    const vms = [vm({ name: 'a', memory_mib: 1000 }), vm({ name: 'b', memory_mib: 24 })];
    expect(parseHostConfig({ vms }).vms.map((v) => v.memoryBytes)).toEqual([1000 * MIB, 24 * MIB]);
  });

  it("uses the schema's defaults (the documented ones) when keys are left out", () => {
    const host = HOST_CONFIG_SCHEMA as { properties: Record<string, { default?: unknown; properties?: Record<string, { default?: unknown }> }> };
    const spec = parseHostConfig({});
    expect(spec.hostMemoryBytes).toBe((host.properties['host_memory_mib']!.default as number) * MIB);
    expect(spec.sliceInstructions).toBe(host.properties['slice_instructions']!.default);
    expect(spec.quantum).toBe(host.properties['quantum']!.default);
    expect(spec.consoleBufferBytes).toBe((host.properties['console_buffer_kib']!.default as number) * 1024);
    expect(spec.maxBodyBytes).toBe((host.properties['api']!.properties!['max_body_kib']!.default as number) * 1024);
    expect(spec.requestTimeoutMs).toBe(host.properties['api']!.properties!['request_timeout_ms']!.default);
    const vmSchema = VM_CONFIG_SCHEMA as { properties: Record<string, { default?: unknown; properties?: Record<string, { default?: unknown }> }> };
    const parsed = parseVmConfig({ name: 'a', image: 'k.s', memory_mib: 1 });
    const fields: Record<string, keyof typeof parsed> = {
      vcpus: 'vcpus', boot_args: 'bootArgs', disk: 'disk', large_pages: 'largePages', console_input: 'consoleInput',
      console_input_eof: 'consoleInputEof', max_instructions: 'maxInstructions', start_paused: 'startPaused',
    };
    for (const [key, field] of Object.entries(fields)) expect(parsed[field], key).toEqual(vmSchema.properties[key]!.default);
    expect(parsed.mmu.mode).toBe(vmSchema.properties['mmu']!.properties!['mode']!.default);
  });

  it('does not change the value it parses', () => {
    const json = { vms: [vm({ mmu: { traces: true } })] };
    const before = JSON.stringify(json);
    parseHostConfig(json);
    expect(JSON.stringify(json)).toBe(before);
  });
});

describe('unknown keys', () => {
  it.each([
    [{ ...MINIMAL, colour: 'red' }, 'colour', /unknown key \(the keys here are host_memory_mib, .*vms\)/],
    [{ ...MINIMAL, api: { max_body: 1 } }, 'api.max_body', /unknown key/],
    [{ vms: [vm(), vm({ name: 'b', memory: 64 })] }, 'vms[1].memory', /unknown key/],
    [{ vms: [vm({ memoryMib: 64 })] }, 'vms[0].memoryMib', /unknown key \(did you mean "memory_mib"\?\)/],
    [{ vms: [vm({ disk: { path: 'd', overlay: 'o' } })] }, 'vms[0].disk.overlay', /unknown key \(the keys here are path, overlay_dir, async, direct\)/],
    [{ vms: [vm(), vm({ name: 'b', mmu: { colour: 'blue' } })] }, 'vms[1].mmu.colour', /^vms\[1\]\.mmu\.colour: unknown key/],
    [{ vms: [vm({ 'odd key': 1 })] }, 'vms[0]["odd key"]', /unknown key/],
  ])('refuses %j at %s', (json, path, words) => {
    expectRefused(json, path, words);
  });
});

describe('wrong types', () => {
  it.each([
    [[], '', /^the configuration must be an object, got \[\]$/],
    ['host.json', '', /^the configuration must be an object, got "host.json"$/],
    [null, '', /must be an object, got null/],
    [{ host_memory_mib: '64' }, 'host_memory_mib', /must be a multiple of 4 from 4 to 4096, got "64" \(a string: write numbers without quotes\)/],
    [{ slice_instructions: 1e3 + 0.5 }, 'slice_instructions', /must be an integer from 1000 to 100000000, got 1000.5/],
    [{ quantum: true }, 'quantum', /got true/],
    [{ console_buffer_kib: [1] }, 'console_buffer_kib', /got \[1\]/],
    [{ api: 'fast' }, 'api', /must be an object, got "fast"/],
    [{ vms: { a: {} } }, 'vms', /must be an array/],
    [{ vms: [7] }, 'vms[0]', /must be an object, got 7/],
    [{ vms: [vm({ name: 5 })] }, 'vms[0].name', /must be a name .*, got 5/],
    [{ vms: [vm({ image: null })] }, 'vms[0].image', /must be a non-empty string, got null/],
    [{ vms: [vm({ memory_mib: '64' })] }, 'vms[0].memory_mib', /got "64" \(a string/],
    [{ vms: [vm({ vcpus: 2.5 })] }, 'vms[0].vcpus', /must be an integer from 1 to 32, got 2.5/],
    [{ vms: [vm({ boot_args: ['sieve'] })] }, 'vms[0].boot_args', /must be a string, got \["sieve"\]/],
    [{ vms: [vm({ disk: 'disk.img' })] }, 'vms[0].disk', /must be an object or null, got "disk.img"/],
    [{ vms: [vm({ disk: { path: 3 } })] }, 'vms[0].disk.path', /must be a non-empty string/],
    [{ vms: [vm({ mmu: 'nested' })] }, 'vms[0].mmu', /must be an object/],
    [{ vms: [vm({ mmu: { mode: 1 } })] }, 'vms[0].mmu.mode', /must be one of "shadow", "nested", got 1/],
    [{ vms: [vm({ mmu: { traces: 'no' } })] }, 'vms[0].mmu.traces', /must be true or false, got "no"/],
    [{ vms: [vm({ large_pages: false })] }, 'vms[0].large_pages', /must be one of "off", "superpages", "always", got false/],
    [{ vms: [vm({ tier: 'fast' })] }, 'vms[0].tier', /must be one of "interp", "jit", got "fast"/],
    [{ vms: [vm({ console_input: 42 })] }, 'vms[0].console_input', /must be a string or null, got 42/],
    [{ vms: [vm({ console_input_eof: 'true' })] }, 'vms[0].console_input_eof', /must be true or false/],
    [{ vms: [vm({ max_instructions: '1000' })] }, 'vms[0].max_instructions', /must be an integer from 1 to 2\^53 - 1 or null, got "1000"/],
    [{ vms: [vm({ start_paused: 1 })] }, 'vms[0].start_paused', /must be true or false, got 1/],
  ])('refuses %j at %s', (json, path, words) => {
    const error = refusal(json);
    expect(error.path).toBe(path);
    expect(error.message).toMatch(words);
  });

  it('shows a long value by its kind and size, not in full', () => {
    const error = expectRefused({ vms: [vm({ name: 'x'.repeat(65) })] }, 'vms[0].name', /got a string of 65 characters$/);
    expect(error.message).not.toContain('x'.repeat(65));
    expectRefused({ vms: [vm({ vcpus: Array.from({ length: 50 }, (_, i) => i) })] }, 'vms[0].vcpus', /got an array of 50 items$/);
  });
});

describe('out-of-range values', () => {
  it.each([
    [{ host_memory_mib: 0 }, 'host_memory_mib', /must be a multiple of 4 from 4 to 4096, got 0/],
    [{ host_memory_mib: 4100 }, 'host_memory_mib', /got 4100/],
    [{ host_memory_mib: 1026 }, 'host_memory_mib', /must be a multiple of 4 .*, got 1026/],
    [{ slice_instructions: 999 }, 'slice_instructions', /from 1000 to 100000000, got 999/],
    [{ slice_instructions: 100_000_001 }, 'slice_instructions', /got 100000001/],
    [{ quantum: 99 }, 'quantum', /from 100 to 10000000, got 99/],
    [{ quantum: 10_000_001 }, 'quantum', /got 10000001/],
    [{ console_buffer_kib: 0 }, 'console_buffer_kib', /from 1 to 65536, got 0/],
    [{ console_buffer_kib: 65537 }, 'console_buffer_kib', /got 65537/],
    [{ api: { max_body_kib: 0 } }, 'api.max_body_kib', /from 1 to 16384, got 0/],
    [{ api: { max_body_kib: 16385 } }, 'api.max_body_kib', /got 16385/],
    [{ api: { request_timeout_ms: 99 } }, 'api.request_timeout_ms', /from 100 to 600000, got 99/],
    [{ api: { request_timeout_ms: 600_001 } }, 'api.request_timeout_ms', /got 600001/],
    [{ vms: [vm({ memory_mib: 0 })] }, 'vms[0].memory_mib', new RegExp(`must be an integer from 1 to ${MAX_MEMORY_MIB}, got 0$`)],
    [{ vms: [vm({ memory_mib: MAX_MEMORY_MIB + 1 })] }, 'vms[0].memory_mib', new RegExp(`got ${MAX_MEMORY_MIB + 1}$`)],
    [{ vms: [vm({ vcpus: 0 })] }, 'vms[0].vcpus', /from 1 to 32, got 0/],
    [{ vms: [vm({ vcpus: 33 })] }, 'vms[0].vcpus', /got 33/],
    [{ vms: [vm({ max_instructions: 0 })] }, 'vms[0].max_instructions', /got 0/],
    [{ vms: [vm({ max_instructions: 2 ** 53 })] }, 'vms[0].max_instructions', /got 9007199254740992/],
    [{ vms: [vm({ mmu: { batch: 1024 } })] }, 'vms[0].mmu.batch', /from 0 to 1023, got 1024/],
    [{ vms: [vm({ mmu: { batch: -1 } })] }, 'vms[0].mmu.batch', /got -1/],
    [{ vms: [vm({ mmu: { mode: 'fast' } })] }, 'vms[0].mmu.mode', /must be one of "shadow", "nested", got "fast"/],
    [{ vms: [vm({ large_pages: 'on' })] }, 'vms[0].large_pages', /got "on"/],
    [{ vms: [vm({ name: '' })] }, 'vms[0].name', /must be a name of 1 to 64 characters/],
    [{ vms: [vm({ name: '.hidden' })] }, 'vms[0].name', /starting with a letter or digit, got ".hidden"/],
    [{ vms: [vm({ name: 'a/b' })] }, 'vms[0].name', /got "a\/b"/],
    [{ vms: [vm({ image: '' })] }, 'vms[0].image', /must be a non-empty string, got ""/],
    [{ vms: [vm({ disk: { path: '' } })] }, 'vms[0].disk.path', /non-empty/],
    [{ vms: [vm({ disk: { path: 'd', overlay_dir: '' } })] }, 'vms[0].disk.overlay_dir', /non-empty/],
  ])('refuses %j at %s', (json, path, words) => {
    expectRefused(json, path, words);
  });

  it.each([
    [{ vms: [vm({ name: undefined })] }, 'vms[0].name'],
    [{ vms: [vm({ image: undefined })] }, 'vms[0].image'],
    [{ vms: [vm({ memory_mib: undefined })] }, 'vms[0].memory_mib'],
    [{ vms: [vm({ disk: { overlay_dir: 'o' } })] }, 'vms[0].disk.path'],
  ])('refuses a missing required key: %j at %s', (json, path) => {
    expectRefused(json, path, /missing \(a required key\)$/);
  });
});

describe('semantic checks', () => {
  it('refuses a name used twice, naming both', () => {
    const vms = [vm({ name: 'a' }), vm({ name: 'b' }), vm({ name: 'a' })];
    const error = expectRefused({ vms }, 'vms[2].name');
    expect(error.message).toBe("vms[2].name: 'a' is used by vms[0] too");
  });

  it("refuses VMs whose memory adds up to more than the pool, the default pool included", () => {
    expectRefused({ vms: [vm({ name: 'a', memory_mib: 1000 }), vm({ name: 'b', memory_mib: 25 })] }, 'vms',
      /memory_mib add up to 1025 MiB, more than host_memory_mib \(1024 MiB, the default\)/);
    expectRefused({ host_memory_mib: 64, vms: [vm({ memory_mib: 68 })] }, 'vms', /add up to 68 MiB, more than host_memory_mib \(64 MiB\); set "overcommit": true to allow it$/);
  });

  it('with overcommit, lets the sum and a single VM exceed the pool', () => {
    const spec = parseHostConfig({ host_memory_mib: 64, overcommit: true, vms: [vm({ name: 'a', memory_mib: 48 }), vm({ name: 'b', memory_mib: 48 })] });
    expect(spec.overcommit).toBe(true);
    expect(spec.vms.map((v) => v.memoryBytes)).toEqual([48 * MIB, 48 * MIB]);
    expect(parseHostConfig({ host_memory_mib: 64, overcommit: true, vms: [vm({ memory_mib: 68 })] }).vms[0]!.memoryBytes).toBe(68 * MIB);
  });

  it.each([
    [{ mode: 'nested', traces: true }, 'vms[0].mmu.traces'],
    [{ mode: 'nested', traces: false }, 'vms[0].mmu.traces'],
    [{ mode: 'nested', batch: 16 }, 'vms[0].mmu.batch'],
  ])('refuses shadow-only MMU options with nested paging: %j', (mmu, path) => {
    expectRefused({ vms: [vm({ mmu })] }, path, /applies to mode "shadow" only/);
  });

  it('measures boot arguments in UTF-8 bytes', () => {
    const bootArgs = 'é'.repeat(2048); // 2048 characters, 4096 bytes
    expectRefused({ vms: [vm({ boot_args: bootArgs })] }, 'vms[0].boot_args', new RegExp(`is 4096 bytes long as UTF-8; at most ${MAX_BOOT_ARGS_BYTES} bytes fit`));
    expectRefused({ vms: [vm({ boot_args: 'x'.repeat(MAX_BOOT_ARGS_BYTES + 1) })] }, 'vms[0].boot_args', /bytes long/);
  });

  it('refuses a NUL in the boot arguments', () => {
    expectRefused({ vms: [vm({ boot_args: 'sieve\u00001000' })] }, 'vms[0].boot_args', /cannot contain a NUL character/);
  });
});

describe('several problems', () => {
  it('names the first in document order and lists up to three more', () => {
    const json = {
      quantum: 1,
      vms: [vm({ vcpus: 0, memoryMib: 1, mmu: { colour: 1 } }), vm({ name: 'a', large_pages: 'on' })],
      host_memory_mib: 3,
    };
    const error = refusal(json);
    expect(error.path).toBe('quantum');
    expect(error.problems.map((p) => p.path)).toEqual([
      'quantum', 'vms[0].vcpus', 'vms[0].memoryMib', 'vms[0].mmu.colour', 'vms[1].name', 'vms[1].large_pages', 'host_memory_mib',
    ]);
    expect(error.message).toMatch(/^quantum: must be an integer from 100 to 10000000, got 1 \(and 6 more: vms\[0\]\.vcpus: must be .*; vms\[0\]\.memoryMib: unknown key .*; vms\[0\]\.mmu\.colour: unknown key .*; …\)$/);
    expect(error.message).not.toContain('large_pages');
  });

  it('says "(and N more: …)" without an ellipsis when all fit', () => {
    const error = refusal({ quantum: 1, slice_instructions: 1 });
    expect(error.message).toMatch(/^quantum: .*\(and 1 more: slice_instructions: must be an integer from 1000 to 100000000, got 1\)$/);
  });

  it('reports one problem per field (a string where a multiple of 4 is wanted fails two keywords)', () => {
    const error = refusal({ host_memory_mib: 2 });
    expect(error.problems).toHaveLength(1);
    expect(error.message).toBe('host_memory_mib: must be a multiple of 4 from 4 to 4096, got 2');
  });
});

describe('parseVmConfig and checkJson', () => {
  it('parses one VM body, and prefixes its paths with `where`', () => {
    expect(parseVmConfig(vm()).memoryBytes).toBe(64 * MIB);
    expect(refusal(vm({ memory_mib: 0 }), (json) => parseVmConfig(json)).message).toMatch(/^memory_mib: must be/);
    const error = refusal(vm({ memory_mib: 0, bogus: 1 }), (json) => parseVmConfig(json, 'body'));
    expect(error.path).toBe('body.memory_mib');
    expect(error.problems.map((p) => p.path)).toEqual(['body.memory_mib', 'body.bogus']);
    expect(refusal(3, (json) => parseVmConfig(json, 'vms[3]')).message).toBe('vms[3]: must be an object, got 3');
    expect(refusal(vm({ mmu: { mode: 'nested', batch: 1 } }), (json) => parseVmConfig(json, 'vms[3]')).path).toBe('vms[3].mmu.batch');
  });

  it('checks other bodies against their own schema with the same words', () => {
    const schema = { type: 'object', additionalProperties: false, required: ['state'], properties: { state: { enum: ['Paused', 'Resumed'] }, n: { const: 1 } } };
    expect(() => checkJson(schema, { state: 'Paused' }, 'body')).not.toThrow();
    expect(refusal({ state: 'Running' }, (json) => checkJson(schema, json, 'body')).message).toBe('body.state: must be one of "Paused", "Resumed", got "Running"');
    expect(refusal({}, (json) => checkJson(schema, json, 'body')).message).toBe('body.state: missing (a required key)');
    expect(refusal({ state: 'Paused', n: 2 }, (json) => checkJson(schema, json)).message).toBe('n: must be 1, got 2');
  });
});

describe('ConfigError', () => {
  it('is a BvError with code BV_CONFIG', () => {
    const error = refusal({ quantum: 0 });
    expect(error).toBeInstanceOf(BvError);
    expect(error.code).toBe('BV_CONFIG');
    expect(new ConfigError('vms[0].image', 'cannot be read').message).toBe('vms[0].image: cannot be read');
  });
});

describe('readHostConfigFile', () => {
  const dir = mkdtempSync(join(tmpdir(), 'bv-host-config-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  let count = 0;
  function file(text: string | Buffer): string {
    const path = join(dir, `host-${count++}.json`);
    writeFileSync(path, text);
    return path;
  }
  function fileRefusal(path: string): ConfigError {
    return refusal(path, (p) => readHostConfigFile(p as string));
  }

  it('reads a file (a byte-order mark is ignored)', () => {
    expect(readHostConfigFile(file(JSON.stringify(MINIMAL))).vms[0]!.bootArgs).toBe('sieve 1000');
    expect(readHostConfigFile(file(Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('{"quantum": 500}')]))).quantum).toBe(500);
  });

  it('refuses a missing file, a directory and an empty file, naming the file', () => {
    const missing = join(dir, 'nope.json');
    expect(fileRefusal(missing).message).toBe(`${missing}: no such file`);
    expect(fileRefusal(missing).path).toBe('');
    const directory = join(dir, 'a-directory.json');
    mkdirSync(directory);
    expect(fileRefusal(directory).message).toBe(`${directory}: is a directory, not a configuration file`);
    const empty = file(' \n');
    expect(fileRefusal(empty).message).toBe(`${empty}: the file is empty (the smallest configuration is {})`);
  });

  it.each([
    ['{\n  "vms": [\n    {"name": "a",}\n  ]\n}\n', '3:18', /expected double-quoted property name$/],
    ['{\n  "vms": [\n    {"name": "a"},\n  ]\n}\n', '4:3', /unexpected token '\]'$/],
    ['{"quantum": 500 "slice_instructions": 1000}', '1:17', /expected ',' or '}' after property value$/],
    ['{"vms": [', '1:10', /unexpected end of JSON input$/],
    ['{"quantum": .5}', '1:13', /unexpected token '\.'$/],
    ["{'quantum': 500}", '1:2', /expected property name or '}'$/],
    ['{}\n{}', '2:1', /unexpected non-whitespace character after JSON$/],
    ['{"a": "x\ny"}', '1:9', /bad control character in string literal$/],
  ])('refuses malformed JSON %j at line:column %s', (text, position, words) => {
    const path = file(text);
    const error = fileRefusal(path);
    expect(error.path).toBe('');
    expect(error.message.startsWith(`${path}:${position}: malformed JSON: `)).toBe(true);
    expect(error.message).toMatch(words);
    expect(error.message).not.toContain('position');
  });

  it('names the file before the field for a refused configuration', () => {
    const path = file(JSON.stringify({ vms: [vm({ memory_mib: 0 }), vm({ name: 'a' })] }, null, 2));
    const error = fileRefusal(path);
    expect(error.path).toBe('vms[0].memory_mib');
    expect(error.message).toBe(`${path}: vms[0].memory_mib: must be an integer from 1 to ${MAX_MEMORY_MIB}, got 0 (and 1 more: vms[1].name: 'a' is used by vms[0] too)`);
  });

  it('accepts the examples in docs/host.md', () => {
    const docs = readFileSync(new URL('../../docs/host.md', import.meta.url), 'utf8');
    const section = docs.slice(docs.indexOf('## Configuration'), docs.indexOf('<!-- host: running and API sections follow -->'));
    const examples = [...section.matchAll(/```json\n([\s\S]*?)```/g)].map((match) => match[1]!);
    expect(examples.length).toBeGreaterThanOrEqual(2);
    for (const example of examples) expect(readHostConfigFile(file(example)).vms.length).toBeGreaterThan(0);
  });
});

describe('fuzz', () => {
  /** A value for a host or VM key: mostly plausible, sometimes anything. */
  const anyValue = fc.oneof(fc.jsonValue({ maxDepth: 2 }), fc.integer({ min: -10, max: 5000 }), fc.constantFrom('shadow', 'nested', 'off', 'always', 'a', ''), fc.boolean());
  const vmKeys = ['name', 'image', 'memory_mib', 'vcpus', 'boot_args', 'disk', 'mmu', 'large_pages', 'console_input', 'console_input_eof', 'max_instructions', 'start_paused', 'bogus'];
  const nearVm = fc.dictionary(fc.constantFrom(...vmKeys), fc.oneof(anyValue, fc.record({ path: anyValue, mode: anyValue, traces: anyValue }, { requiredKeys: [] })));
  const nearHost = fc.record({
    host_memory_mib: anyValue, quantum: anyValue, api: fc.oneof(anyValue, fc.record({ max_body_kib: anyValue }, { requiredKeys: [] })), vms: fc.oneof(anyValue, fc.array(nearVm, { maxLength: 4 })),
  }, { requiredKeys: [] });

  /** parseHostConfig either returns or throws a ConfigError whose message starts with its path. */
  function checkOutcome(json: unknown): void {
    try {
      const spec = parseHostConfig(json);
      expect(spec.vms.length).toBe((json as { vms?: unknown[] }).vms?.length ?? 0);
    } catch (error) {
      if (!(error instanceof ConfigError)) throw error;
      expect(error.message.startsWith(error.path === '' ? 'the configuration ' : `${error.path}: `)).toBe(true);
    }
  }

  it('random JSON values never make parseHostConfig throw anything but a ConfigError', () => {
    fc.assert(fc.property(fc.jsonValue(), checkOutcome), { numRuns: 500 });
  });

  it('nearly valid configurations never make it throw anything but a ConfigError', () => {
    fc.assert(fc.property(nearHost, checkOutcome), { numRuns: 1000 });
  });

  it('valid configurations parse to what they say', () => {
    const validVm = fc.record({
      image: fc.string({ minLength: 1 }),
      memory_mib: fc.integer({ min: 1, max: 256 }),
      vcpus: fc.integer({ min: 1, max: 32 }),
      boot_args: fc.string({ maxLength: 100 }).filter((text) => !text.includes('\0')),
      max_instructions: fc.option(fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER })),
    }, { requiredKeys: ['image', 'memory_mib'] });
    fc.assert(fc.property(fc.array(validVm, { maxLength: 4 }), (vms) => {
      const spec = parseHostConfig({ vms: vms.map((v, i) => ({ name: `vm${i}`, ...v })) });
      spec.vms.forEach((parsed, i) => {
        expect(parsed.memoryBytes).toBe(vms[i]!.memory_mib * MIB);
        expect(parsed.vcpus).toBe(vms[i]!.vcpus ?? 1);
        expect(parsed.bootArgs).toBe(vms[i]!.boot_args ?? '');
        expect(parsed.maxInstructions).toBe(vms[i]!.max_instructions ?? null);
      });
    }), { numRuns: 200 });
  });
});
