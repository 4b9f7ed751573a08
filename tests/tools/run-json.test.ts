/**
 * Machine-readable output: `tools/run --stats --json` (one JSON document, the last line of
 * stderr, the same figures as the tables) and `tools/snapshot info --json` (the same information
 * as `info`). Child processes, as users run them.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HostStats, VmStats } from '../../services/host/stats.ts';
import { CheckpointReader } from '../../services/checkpoint/index.ts';
import { runTool, spawnNode, type ChildOutcome } from './child.ts';

const work = mkdtempSync(join(tmpdir(), 'bv-run-json-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const KERNEL = 'examples/nanokernel/kernel.s';
const PROGRAMS = ['--', 'sieve', '2000', 'walker', '1M', 'random', '1'];

/** The document --stats --json prints. */
interface RunDocument {
  run: { instructions: number; wall_ms: number; mips: number; resets: number };
  host: HostStats;
  vm: VmStats;
  exit: { kind: string; code: number; message?: string; guest_exit_code?: number; signal?: string };
  forks?: { index: number; kind: string; code: number; instructions: number }[];
}

/** The JSON document: the last line of stderr, on its own. */
function documentOf(outcome: ChildOutcome): RunDocument {
  const lines = outcome.stderr.trimEnd().split('\n');
  return JSON.parse(lines[lines.length - 1]!) as RunDocument;
}

/** The --stats tables: title → rows, each row its cells (split at runs of two or more spaces). */
function tablesOf(stderr: string): Map<string, string[][]> {
  const tables = new Map<string, string[][]>();
  let rows: string[][] | null = null;
  for (const line of stderr.split('\n')) {
    if (line.startsWith('  ')) rows?.push(line.trim().split(/ {2,}/));
    else if (line !== '' && !line.startsWith('error:')) tables.set(line.replace(/ \(.*\)$/, ''), (rows = []));
  }
  return tables;
}

/** Every number in a table cell: `1,024 (3 in use, 0 dropped)` → [1024, 3, 0]. */
const numbers = (text: string): number[] => [...text.matchAll(/\d[\d,]*/g)].map((match) => Number(match[0].replaceAll(',', '')));

describe('tools/run --stats --json', () => {
  let tables: ChildOutcome;
  let json: ChildOutcome;
  beforeAll(async () => {
    [tables, json] = await Promise.all([
      runTool([KERNEL, '--input', '', '--stats', ...PROGRAMS]),
      runTool([KERNEL, '--input', '', '--stats', '--json', ...PROGRAMS]),
    ]);
  });

  it('prints one JSON document as the last line of stderr; stdout is the guest output alone', () => {
    expect(json.code).toBe(0);
    expect(json.stdout).toBe(tables.stdout);
    expect(json.stderr).not.toMatch(/^run$/m);
    const document = documentOf(json);
    expect(Object.keys(document)).toEqual(['run', 'host', 'vm', 'exit']);
    expect(document.exit).toEqual({ kind: 'halted', code: 0, guest_exit_code: 0 });
    expect(document.run.instructions).toBe(document.vm.instructions);
    expect(document.run.wall_ms).toBeGreaterThan(0);
    expect(document.run.mips).toBeGreaterThan(0);
    expect(document.host.vms).toBe(1);
    expect(document.host.pool.total_bytes).toBe(document.host.pool.total_frames * 4096);
    expect(document.host.pool.used_frames + document.host.pool.free_frames).toBe(document.host.pool.total_frames);
    expect(document.host.process_rss_bytes).toBeGreaterThan(1 << 20);
    expect(document.vm.mmu.mode).toBe('shadow');
    expect(document.vm.policies).toBeUndefined();
  });

  it('holds every figure the tables show, with the same values', () => {
    const { run, vm } = documentOf(json);
    const printed = tablesOf(tables.stderr);
    expect([...printed.keys()]).toEqual(['run', 'vcpus', 'exits', 'mmio accesses', 'mmu', 'memory']);
    const rows = (title: string) => new Map(printed.get(title)!.map(([label, ...cells]) => [label!, cells.join('  ')]));
    expect(numbers(rows('run').get('instructions')!)).toEqual([run.instructions]);
    expect(numbers(rows('run').get('resets')!)).toEqual([run.resets]);
    const [header, ...vcpuRows] = printed.get('vcpus')!;
    expect(vcpuRows.map((row) => row.map((cell) => numbers(cell)[0]))).toEqual(vm.vcpus.map((v) => [
      v.id, v.instret, v.tlb_hits, v.tlb_misses, v.tlb_fills, v.tlb_drops, v.tlb_flushes, v.page_walks, v.traps, v.interrupts, v.hypercalls, v.waits,
    ]));
    expect(header).toHaveLength(12);
    const exits = rows('exits');
    expect(numbers(exits.get('mmio')!)).toEqual([vm.exits.mmio]);
    expect(numbers(exits.get('hypercall')!)).toEqual([vm.exits.hypercall]);
    expect(numbers(exits.get('trap to guest')!)).toEqual([vm.exits.trap_to_guest]);
    expect(numbers(exits.get('code write')!)).toEqual([vm.exits.code_writes]);
    for (const [state, count] of Object.entries(vm.exits.absent)) expect(numbers(exits.get(`absent: ${state}`)!)).toEqual([count]);
    expect(Object.fromEntries([...rows('mmio accesses')].map(([device, count]) => [device, numbers(count)[0]]))).toEqual(vm.mmio_accesses);
    const m = vm.mmu;
    const large = vm.large_pages;
    expect([...rows('mmu').values()].flatMap(numbers)).toEqual([
      m.page_walks, m.shadow_hits, m.large_hits, m.batch_filled, m.traces_placed, m.traces_removed, m.trace_hits, m.shadow_entries_dropped,
      m.tlb_entries_dropped_by_traces, m.flushes_elided, m.flushes_full, m.asid_reuses, m.shootdowns, m.shootdown_entries, m.shadow_spaces,
      m.cached_ptes, m.traced_pages, m.large_mappings, large.runs_allocated, large.regions_promoted, large.regions_broken_up,
    ]);
    expect(m.page_walks).toBeGreaterThan(0); // the nanokernel pages: the comparison is not all zeros
    const memory = rows('memory');
    expect(numbers(memory.get('decoded pages')!)).toEqual([vm.memory.decoded_pages, vm.memory.decoded_pages_in_use, vm.memory.decoded_pages_dropped]);
    expect(numbers(memory.get('host frames in use')!).slice(0, 2)).toEqual([vm.memory.host_frames_used, vm.memory.host_frames_total]);
    expect(numbers(memory.get('guest pages present')!).slice(0, 2)).toEqual([vm.memory.pages_present, vm.memory.guest_pages]);
    expect(numbers(memory.get('guest pages shared copy-on-write')!)).toEqual([vm.memory.pages_shared]);
  });

  it('names the execution tier; under jit it shows what was compiled and how the slices\' time split', async () => {
    const [jit, interp] = await Promise.all([
      runTool([KERNEL, '--input', '', '--stats', '--json', '--tier', 'jit', ...PROGRAMS]),
      runTool([KERNEL, '--input', '', '--stats', '--json', '--tier', 'interp', ...PROGRAMS]),
    ]);
    expect(jit.code).toBe(0);
    expect(interp.code).toBe(0);
    expect(jit.stdout).toBe(interp.stdout);
    const compiled = documentOf(jit);
    const interpreted = documentOf(interp);
    expect(compiled.run.instructions).toBe(interpreted.run.instructions);
    expect((compiled.run as { tier?: string }).tier).toBe('jit');
    expect((interpreted.run as { tier?: string }).tier).toBe('interp');
    const j = compiled.host.jit;
    expect(j.regions_compiled).toBeGreaterThan(0);
    expect(j.instructions_compiled).toBeGreaterThan(compiled.run.instructions / 2);
    expect(j.timed).toBe(true);
    expect(j.compiled_ms).toBeGreaterThan(0);
    expect(j.interpreter_ms).toBeGreaterThanOrEqual(0);
    expect(j.compiled_ms + j.interpreter_ms + j.compile_ms).toBeLessThanOrEqual(compiled.run.wall_ms + 1);
    expect(interpreted.host.jit).toMatchObject({ regions_compiled: 0, instructions_compiled: 0, compiled_ms: 0, timed: true });
    // The table shows the same figures (seconds, 3 decimals).
    const jitTables = await runTool([KERNEL, '--input', '', '--stats', '--tier', 'jit', ...PROGRAMS]);
    const run = new Map(tablesOf(jitTables.stderr).get('run')!.map(([label, ...cells]) => [label!, cells.join('  ')]));
    expect(run.get('tier')).toBe('jit');
    expect(run.get('time compiled / interpreted')).toMatch(/^\d+\.\d{3} s \/ \d+\.\d{3} s$/);
    expect(numbers(run.get('compiled regions (instructions)')!)).toHaveLength(3);
  });

  it('an ending other than a power-off: the error line, then the document with its message', async () => {
    const outcome = await runTool([KERNEL, '--input', '', '--stats', '--json', '--max-insns', '20000', ...PROGRAMS]);
    expect(outcome.code).toBe(4);
    const lines = outcome.stderr.trimEnd().split('\n');
    expect(lines[lines.length - 2]).toBe('error: stopped after 20000 instructions (--max-insns)');
    const document = documentOf(outcome);
    expect(document.exit).toEqual({ kind: 'budget', code: 4, message: 'stopped after 20000 instructions (--max-insns)' });
    expect(document.run.instructions).toBe(20_000);
  });

  it('with the memory policies, their counters too (vm.policies)', async () => {
    const outcome = await runTool([KERNEL, '--input', '', '--stats', '--json', '--promote-hot', '--reclaim-cold', ...PROGRAMS]);
    expect(outcome.code).toBe(0);
    const policies = documentOf(outcome).vm.policies!;
    expect(Object.keys(policies)).toEqual(['accessed_bit_prioritizer', 'low_activity_reclaimer', 'swap']);
    expect(typeof policies.accessed_bit_prioritizer!.scans).toBe('number');
    expect(Array.isArray(policies.accessed_bit_prioritizer!.promoted_regions)).toBe(true);
    expect(typeof policies.low_activity_reclaimer!.regions_tracked).toBe('number');
    expect(typeof policies.swap!.file_bytes).toBe('number');
  });

  it('with --fork-at, each child\'s ending (forks)', async () => {
    const path = join(work, 'count.s');
    writeFileSync(path, `
_start: li      t0, 0
        li      t1, 10000
1:      addi    t0, t0, 1
        bne     t0, t1, 1b
        li      a0, 1                   # EXIT 7
        li      a1, 7
        hcall
`);
    const outcome = await runTool([path, '--input', '', '--stats', '--json', '--fork-at', '100', '--forks', '2']);
    expect(outcome.code).toBe(7);
    const document = documentOf(outcome);
    expect(document.exit).toEqual({ kind: 'halted', code: 7, guest_exit_code: 7 });
    expect(document.forks).toEqual([1, 2].map((index) => ({ index, kind: 'halted', code: 7, instructions: expect.any(Number) })));
  });

  it('--json without --stats is a usage error', async () => {
    const outcome = await runTool(['examples/hello.s', '--json']);
    expect(outcome.code).toBe(2);
    expect(outcome.stderr.split('\n')[0]).toBe('error: --json goes with --stats (it prints the stats as JSON)');
  });
});

describe('tools/snapshot info --json', () => {
  const snapshot = (...args: string[]) => spawnNode(['--import', 'tsx', 'tools/snapshot.ts', ...args]);

  it('prints what info prints, as one JSON object', async () => {
    const path = join(work, 'info.ckpt');
    const saved = await runTool([KERNEL, '--input', '', '--checkpoint-at', '300000', path, ...PROGRAMS]);
    expect(saved.code).toBe(0);
    const [text, json] = await Promise.all([snapshot('info', path), snapshot('info', path, '--json')]);
    expect(json.code).toBe(0);
    expect(json.stderr).toBe('');
    expect(json.stdout.trimEnd().split('\n')).toHaveLength(1);
    const info = JSON.parse(json.stdout);
    const reader = CheckpointReader.open(path);
    const summary = reader.summary();
    const { config, cpus, devices } = reader.contents;
    reader.close();
    expect(Object.keys(info)).toEqual([
      'format_version', 'file_bytes', 'memory_bytes', 'page_count', 'stored_pages', 'zero_pages', 'blocks', 'raw_blocks', 'lz4_blocks',
      'compression_ratio', 'vcpus', 'config', 'devices',
    ]);
    expect([info.format_version, info.file_bytes, info.page_count, info.stored_pages, info.zero_pages, info.blocks, info.raw_blocks + info.lz4_blocks])
      .toEqual([summary.formatVersion, summary.fileBytes, summary.pageCount, summary.storedPages, summary.zeroPages, summary.blocks, summary.blocks]);
    expect(info.memory_bytes).toBe(summary.pageCount * 4096);
    expect(info.compression_ratio).toBe(summary.compressionRatio);
    expect(info.vcpus).toBe(cpus.length);
    expect(info.config).toEqual(JSON.parse(JSON.stringify(config)));
    expect(Object.keys(info.devices)).toEqual(Object.keys(devices));
    expect(info.devices.console).toEqual({ version: devices['console']!.version, state: 'json', bytes: JSON.stringify(devices['console']!.state).length });
    // The text names the same figures.
    expect(text.stdout).toContain(`${info.stored_pages.toLocaleString('en-US')} stored, ${info.zero_pages.toLocaleString('en-US')} zero`);
    expect(text.stdout).toMatch(new RegExp(`^vcpus +${info.vcpus}$`, 'm'));
    for (const name of Object.keys(info.devices)) expect(text.stdout).toMatch(new RegExp(`^ {2}${name.replace('#', '\\#')} +version ${info.devices[name].version} `, 'm'));
  });

  it('--json with another command is a usage error', async () => {
    const outcome = await snapshot('verify', 'x.ckpt', '--json');
    expect(outcome.code).toBe(2);
    expect(outcome.stderr.split('\n')[0]).toBe('error: --json only applies to info');
  });
});
