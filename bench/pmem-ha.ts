/**
 * Persistent-memory HA (T-15, `npm run bench -- --only ha`): the time from a power-loss notice to
 * the persistent memory saved at the partner (SAVED: in the partner's file, fsynced), for 64 MiB
 * and 256 MiB of pmem with 10 % of its pages written since the last background save.
 *
 * Both hosts are in this process (the sender and the partner of services/ha/pmem-ha.ts over the
 * transport on loopback, mutual TLS), so the CPU time is both ends'. Per size:
 *
 *  1. A VM with the pmem (a file of distinct page contents), its writes tracked; a background save
 *     sends it whole to the partner (timed too: what a save of everything costs).
 *  2. A guest writes one word into every tenth page (real guest stores, marked by the kernel).
 *  3. The notice: PmemHaSender.powerLoss with a battery budget of BUDGET_MS; the figure is its
 *     `saved_ms` (notice → last SAVED), next to the process CPU time of the same span. The partner's
 *     file is then compared with the primary's, byte for byte.
 *
 * `npx tsx bench/pmem-ha.ts [--quick]` prints the figures alone.
 */
import { mkdtempSync, openSync, closeSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { assemble } from '../guest-isa/assembler.ts';
import { attachStandardDevices, CaptureSink } from '../devices/index.ts';
import { createHypervisor } from '../kernel/index.ts';
import { PmemHaPartner, PmemHaSender } from '../services/ha/pmem-ha.ts';
import { certificates } from './migration.ts';
import { cpuSince, loadNow, type Check } from './harness.ts';

const MIB = 1024 * 1024;
const PAGE = 4096;
/** The battery budget of the measured notice. */
export const PMEM_HA_BUDGET_MS = 1000;
/** Share of the pages written between the background save and the notice. */
const DIRTY_STRIDE = 10;

export interface PmemHaOptions {
  quick?: boolean;
  onStep?: (label: string) => void;
}

/** One size's figures. */
export interface PmemHaSizeFigures {
  pmemBytes: number;
  /** Pages written since the background save (every tenth). */
  dirtyPages: number;
  /** The whole-range background save: wall and CPU ms. */
  fullSave: { wallMs: number; cpuMs: number };
  /** The notice → saved at the partner (PowerLossSaveReport.saved_ms), and the process CPU time of the notice's save. */
  powerLoss: { savedMs: number | null; elapsedMs: number; cpuMs: number; pagesSent: number; complete: boolean };
  /** The partner's side of the notice's save: receiving, writing the pages, fsync. */
  partner: { receiveMs: number; writeMs: number; syncMs: number } | null;
  /** The partner's file equals the primary's afterwards. */
  identical: boolean;
  load: number;
}

export interface PmemHaBenchFigures {
  batteryMs: number;
  sizes: PmemHaSizeFigures[];
}

export function pmemHaStepCount(options: PmemHaOptions = {}): number {
  return options.quick === true ? 1 : 2;
}

/** Writes a file of `bytes` whose every page differs (its index stamped through it). */
function writeDistinct(path: string, bytes: number): void {
  const chunk = Buffer.alloc(MIB);
  const fd = openSync(path, 'w');
  try {
    for (let offset = 0; offset < bytes; offset += MIB) {
      for (let page = 0; page < MIB / PAGE; page++) chunk.fill((offset / PAGE + page) & 0xff, page * PAGE, (page + 1) * PAGE).writeUInt32LE(offset / PAGE + page, page * PAGE + 8);
      writeSync(fd, chunk, 0, MIB, offset);
    }
  } finally {
    closeSync(fd);
  }
}

function sameFiles(a: string, b: string, bytes: number): boolean {
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  const ba = Buffer.alloc(MIB);
  const bb = Buffer.alloc(MIB);
  try {
    for (let offset = 0; offset < bytes; offset += MIB) {
      if (readSync(fa, ba, 0, MIB, offset) !== MIB || readSync(fb, bb, 0, MIB, offset) !== MIB || !ba.equals(bb)) return false;
    }
    return true;
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
}

async function measureSize(dir: string, files: ReturnType<typeof certificates>, pmemBytes: number): Promise<PmemHaSizeFigures> {
  const primaryFile = join(dir, `primary-${pmemBytes / MIB}.pmem`);
  writeDistinct(primaryFile, pmemBytes);
  const hv = createHypervisor({ hostMemoryBytes: pmemBytes + 16 * MIB });
  const vm = hv.createVm({ name: 'kv', memoryBytes: MIB });
  const devices = attachStandardDevices(vm, { output: new CaptureSink(), pmem: { path: primaryFile, bytes: pmemBytes } });
  const gpa = devices.pmem!.gpa;
  const pages = pmemBytes / PAGE;
  const dirtyPages = Math.ceil(pages / DIRTY_STRIDE);
  vm.loadImage(assemble(`
_start:
        li      s0, ${gpa}
        li      s1, ${dirtyPages}
        li      s2, ${DIRTY_STRIDE * PAGE}
1:      lw      t0, 16(s0)
        addi    t0, t0, 1
        sw      t0, 16(s0)
        add     s0, s0, s2
        addi    s1, s1, -1
        bnez    s1, 1b
2:      j       2b
`, { fileName: 'dirty-pmem.s' }).image);
  const partner = await PmemHaPartner.listen('127.0.0.1:0', join(dir, `partner-${pmemBytes / MIB}`), { tls: files.b }, { hasVm: () => false, startVm: () => Promise.resolve(), log: () => {} });
  const sender = new PmemHaSender(
    { partner: partner.address, syncIntervalMs: 0, onPartner: 'none', appBootArgs: null, channel: { tls: files.a, stallTimeoutMs: 60_000, name: 'bench-primary' } },
    () => [{ name: 'kv', vm, gpa, bytes: pmemBytes, spec: null }],
  );
  try {
    const fullWall = performance.now();
    const fullCpu = process.cpuUsage();
    const [full] = await sender.sync();
    if (full?.saved !== true) throw new Error(`the whole-range save failed: ${full?.error ?? '?'}`);
    const fullSave = { wallMs: performance.now() - fullWall, cpuMs: cpuSince(fullCpu) };
    hv.run({ maxInstructions: dirtyPages * 6 + 1000 }, [vm]);
    const load = loadNow();
    const report = await sender.powerLoss(performance.now() + PMEM_HA_BUDGET_MS, PMEM_HA_BUDGET_MS);
    const vmReport = report.vms[0]!;
    return {
      pmemBytes,
      dirtyPages,
      fullSave: { wallMs: round(fullSave.wallMs), cpuMs: round(fullSave.cpuMs) },
      powerLoss: { savedMs: report.saved_ms, elapsedMs: report.elapsed_ms, cpuMs: report.cpu_ms, pagesSent: vmReport.pages_sent, complete: report.complete },
      partner: (() => {
        const last = partner.status().received.at(-1);
        return last?.final === true ? { receiveMs: last.receive_ms, writeMs: last.write_ms, syncMs: last.sync_ms } : null;
      })(),
      identical: sameFiles(primaryFile, partner.pathOf('kv'), pmemBytes),
      load,
    };
  } finally {
    await sender.close();
    await partner.close();
    hv.destroyVm(vm);
    rmSync(primaryFile, { force: true });
  }
}

function round(value: number): number {
  return Math.round(value * 10) / 10;
}

export async function measurePmemHa(options: PmemHaOptions = {}): Promise<PmemHaBenchFigures> {
  const dir = mkdtempSync(join(tmpdir(), 'bv-bench-pmem-ha-'));
  try {
    const files = certificates(dir);
    const sizes: PmemHaSizeFigures[] = [];
    for (const bytes of options.quick === true ? [64 * MIB] : [64 * MIB, 256 * MIB]) {
      options.onStep?.(`pmem HA: power-loss save, ${bytes / MIB} MiB, 10 % dirty`);
      sizes.push(await measureSize(dir, files, bytes));
    }
    return { batteryMs: PMEM_HA_BUDGET_MS, sizes };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export function pmemHaChecks(figures: PmemHaBenchFigures): Check[] {
  return figures.sizes.map((size) => ({
    name: `pmem HA: power-loss save of ${size.pmemBytes / MIB} MiB, 10 % dirty, saved at the partner within the ${figures.batteryMs} ms battery (ms)`,
    target: `<= ${figures.batteryMs}, whole and identical`,
    value: size.powerLoss.savedMs ?? Infinity,
    pass: size.powerLoss.complete && size.identical && (size.powerLoss.savedMs ?? Infinity) <= figures.batteryMs,
    load: size.load,
  }));
}

export function formatPmemHa(figures: PmemHaBenchFigures): string[] {
  return [
    `Persistent-memory HA (T-15): power-loss notice -> saved at the partner (fsynced), loopback, mutual TLS, both hosts in this process (CPU is both ends'), battery ${figures.batteryMs} ms`,
    ...figures.sizes.flatMap((size) => [
      `  ${size.pmemBytes / MIB} MiB pmem, ${size.dirtyPages} pages (10 %) written since the background save:`
        + ` saved in ${size.powerLoss.savedMs === null ? 'NOT SAVED' : `${size.powerLoss.savedMs.toFixed(1)} ms`} (cpu ${size.powerLoss.cpuMs.toFixed(1)} ms), ${size.powerLoss.pagesSent} pages sent,`
        + ` partner's file ${size.identical ? 'identical' : 'DIFFERENT'}`,
      size.partner === null ? '    (the partner recorded no final save)' : `    at the partner: receiving ${size.partner.receiveMs.toFixed(1)} ms, writing the redo journal ${size.partner.writeMs.toFixed(1)} ms, fdatasync + directory sync ${size.partner.syncMs.toFixed(1)} ms (applied in place after SAVED)`,
      `    for comparison, the whole range (the first background save): ${size.fullSave.wallMs.toFixed(1)} ms (cpu ${size.fullSave.cpuMs.toFixed(1)} ms)`,
    ]),
  ];
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const figures = await measurePmemHa({ quick: process.argv.includes('--quick'), onStep: (label) => process.stderr.write(`${label}\n`) });
  for (const line of formatPmemHa(figures)) console.log(line);
  for (const check of pmemHaChecks(figures)) console.log(`${check.pass ? 'PASS' : 'FAIL'} ${check.name}: ${check.value} (${check.target})`);
}
