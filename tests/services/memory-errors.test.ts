/**
 * The memory-error service (services/recovery, issue 12 part A) on real guests: injections change
 * the host bytes behind a page and poison it; a recovery method (a test-only one here: part B
 * supplies the real ones) rebuilds it before the guest can read it, so the nanokernel walker's
 * checksum equals the error-free run's; with no method the guest takes a machine check and the
 * nanokernel kills the process (or panics for a kernel page) and keeps running; bad requests are
 * clear errors.
 */
import { describe, expect, it } from 'vitest';
import { AbsentState, PageState, type Vm } from '../../kernel/index.ts';
import { MemoryErrorService, MemoryErrorServiceError, translateReadOnly, type RecoveryMethod } from '../../services/recovery/index.ts';
import { KERNEL_IMAGE, symbol, toUserMode } from '../integration/nanokernel-guest.ts';
import { boot, MiB, type Machine } from './vm-machine.ts';

const WALKER = 'walker 1M seq 3';
const HEAP_BASE = 0x4040_0000;

/** Runs a machine to its end; returns its console output and exit code. */
function finish(machine: Machine): { output: string; exitCode: number | null } {
  const [result] = machine.hv.run({ maxInstructions: 200_000_000 }, [machine.vm]);
  return { output: machine.output.text(), exitCode: result!.reason.kind === 'halted' ? result!.reason.exitCode : null };
}

/** A nanokernel running `args`, stopped in user mode after `instructions`. */
function started(args: string, instructions = 400_000): Machine {
  const machine = boot(KERNEL_IMAGE, 16 * MiB, args);
  machine.hv.run({ maxInstructions: instructions }, [machine.vm]);
  toUserMode(machine.hv, machine.vm);
  return machine;
}

/** A test-only method: the page's good bytes as they were when the test saved them (a stand-in for part B's clean copy). */
function savedCopies(): RecoveryMethod & { save(vm: Vm, gpn: number): void; calls: number } {
  const copies = new Map<number, Uint8Array>();
  return {
    name: 'test-copy',
    calls: 0,
    save(vm: Vm, gpn: number) {
      copies.set(gpn, vm.readPhysical(gpn * 4096, 4096));
    },
    recover(_vm, report, bad) {
      this.calls++;
      expect(bad.length).toBe(4096);
      return copies.get(report.gpn) ?? null;
    },
  };
}

function checksumLine(output: string): string {
  return /walker: .*checksum 0x[0-9a-f]+/.exec(output)?.[0] ?? '(no checksum)';
}

describe('MemoryErrorService on the nanokernel', () => {
  const clean = finish(boot(KERNEL_IMAGE, 16 * MiB, WALKER));

  it('the error-free run prints the walker checksum', () => {
    expect(clean.exitCode).toBe(0);
    expect(checksumLine(clean.output)).toMatch(/checksum/);
  });

  for (const report of ['on-access', 'now'] as const) {
    it(`an error in a walker page (gva, ${report}) really changes the host bytes, is recovered by the method, and the checksum equals the error-free run`, () => {
      const machine = started(WALKER);
      const method = savedCopies();
      const service = new MemoryErrorService(machine.vm, { methods: [method] });
      const gva = HEAP_BASE + 5 * 4096 + 0x40;
      const gpa = translateReadOnly(machine.vm.memory, machine.vm.vcpus[0]!.ptbr, gva)!;
      const gpn = Math.floor(gpa / 4096);
      expect(machine.vm.memory.stateOf(gpn)).toBe(PageState.PRESENT);
      method.save(machine.vm, gpn);
      const good = machine.vm.readPhysical(gpn * 4096, 4096);
      const entry = service.inject({ gva, windowBits: 16, pattern: 'flip', report });
      expect(entry.gpn).toBe(gpn);
      expect(entry.windowBitOffset).toBe(0x40 * 8);
      expect(entry.bitsChanged).toBe(16);
      if (report === 'on-access') {
        expect(machine.vm.memory.stateOf(gpn)).toBe(PageState.POISONED);
        const bad = machine.vm.memory.poisonedPageBytes(gpn); // the host bytes really changed
        expect(bad[0x40]).toBe(good[0x40]! ^ 0xff);
        expect(bad[0x41]).toBe(good[0x41]! ^ 0xff);
        expect(service.log()[0]!.outcome).toBe('pending');
      } else {
        expect(entry.outcome).toBe('recovered-by-test-copy');
        expect(machine.vm.memory.stateOf(gpn)).toBe(PageState.PRESENT);
      }
      const run = finish(machine);
      expect(run.exitCode).toBe(0);
      expect(checksumLine(run.output)).toBe(checksumLine(clean.output));
      expect(method.calls).toBe(1);
      const stats = service.stats();
      expect(stats).toMatchObject({ injected: 1, reported: 1, recovered: { 'test-copy': 1 }, machineChecks: 0, framesRetired: 1 });
      expect(service.log()[0]).toMatchObject({ vm: 'guest', gpn, windowBits: 16, outcome: 'recovered-by-test-copy' });
    });
  }

  it('with no method the walker takes a machine check, the nanokernel kills it and keeps running the other program', () => {
    const machine = started(`${WALKER} sieve 2000`, 300_000);
    const service = new MemoryErrorService(machine.vm);
    // The walker's page, whoever runs now: look it up in the walker's own address space (pid 1's root).
    const vcpu = machine.vm.vcpus[0]!;
    const gva = HEAP_BASE + 3 * 4096;
    const gpa = translateReadOnly(machine.vm.memory, vcpu.ptbr, gva);
    expect(gpa).not.toBeNull();
    service.inject({ gva, windowBits: 1, report: 'on-access' });
    const run = finish(machine);
    expect(run.output).toMatch(/\[kernel\] killed pid \d+ \(\w+\): machine check \(uncorrectable memory error\) at 0x404030[0-9a-f]{2}, pc 0x[0-9a-f]+/);
    expect(run.output).toMatch(/\[kernel\] all programs finished: 2 started, 1 exited, 1 killed/);
    expect(checksumLine(run.output)).toBe('(no checksum)'); // the killed walker never printed a (wrong) checksum
    expect(run.exitCode).toBe(2); // a program was killed unexpectedly
    const stats = service.stats();
    expect(stats.machineChecks).toBeGreaterThanOrEqual(1);
    expect(stats.recovered).toEqual({});
    expect(service.log()[0]!.outcome).toBe('machine-check');
    expect(machine.vm.memory.stateOf(Math.floor(gpa! / 4096))).toBe(PageState.POISONED); // the nanokernel never freed it
  });

  it('an error in the kernel\'s own memory it cannot survive (its stack): a clean panic line and exit code 5', () => {
    const machine = started(WALKER, 200_000);
    const service = new MemoryErrorService(machine.vm);
    const gpa = symbol('kstack_top') - 16; // the kernel stack: used at every trap, not on the machine-check path
    service.inject({ gpa, windowBits: 8, report: 'now' });
    expect(service.log()[0]!.outcome).toBe('unrecovered');
    const run = finish(machine);
    const page = (gpa >>> 12).toString(16);
    expect(run.output).toMatch(new RegExp(`\\[kernel\\] PANIC: machine check \\(uncorrectable memory error\\) in kernel memory at 0x0*${page}[0-9a-f]{3}, pc 0x[0-9a-f]+\\n`));
    expect(run.output).not.toMatch(/killed/);
    expect(run.exitCode).toBe(5);
    expect(service.log()[0]!.outcome).toBe('machine-check');
  });

  it('a seeded campaign injects at its rate and every report ends recovered or as a machine check (never silently consumed)', () => {
    const machine = started(WALKER);
    const method = savedCopies();
    const service = new MemoryErrorService(machine.vm, { methods: [method] });
    // Save every present page now, so every error is recoverable: the checksum must not change.
    machine.vm.memory.forEachPage(PageState.PRESENT, (gpn) => method.save(machine.vm, gpn));
    const before = new Map<number, Uint8Array>();
    machine.vm.memory.forEachPage(PageState.PRESENT, (gpn) => before.set(gpn, machine.vm.readPhysical(gpn * 4096, 4096)));
    const entries = service.injectRandom(20, { seed: 7, windowBits: [1, 8, 16, 64] });
    expect(entries).toHaveLength(20);
    const run = finish(machine);
    expect(run.exitCode).toBe(0);
    expect(checksumLine(run.output)).toBe(checksumLine(clean.output));
    const stats = service.stats();
    expect(stats.injected).toBe(20);
    expect(stats.machineChecks).toBe(0);
    const outcomes = service.log().map((entry) => entry.outcome);
    expect(outcomes.every((outcome) => outcome === 'recovered-by-test-copy' || outcome === 'pending')).toBe(true);
  });
});

describe('MemoryErrorService: a seeded campaign while the guest runs', () => {
  const clean = finish(boot(KERNEL_IMAGE, 16 * MiB, WALKER));

  function campaignRun(): { output: string; exitCode: number | null; log: string[]; injected: number; machineChecks: number } {
    const machine = started(WALKER, 100_000);
    const method = savedCopies();
    // Pages present now can be rebuilt; pages the walker allocates later cannot (machine checks).
    machine.vm.memory.forEachPage(PageState.PRESENT, (gpn) => method.save(machine.vm, gpn));
    const service = new MemoryErrorService(machine.vm, { methods: [method], now: () => 0 });
    service.startCampaign({ rate: 40, seed: 11, count: 6, windowBits: [1, 8, 16, 64] });
    const run = finish(machine);
    const stats = service.stats();
    return { ...run, log: service.log().map((e) => `${e.gpn}:${e.windowBitOffset}+${e.windowBits} ${e.report} ${e.outcome}`), injected: stats.injected, machineChecks: stats.machineChecks };
  }

  it('injects at its rate, is reproducible from its seed, and the guest never computes with bad bytes', () => {
    const first = campaignRun();
    expect(first.injected).toBeGreaterThan(0);
    expect(first.injected).toBeLessThanOrEqual(6);
    for (const line of first.log) expect(line).toMatch(/ (recovered-by-test-copy|machine-check|pending|unrecovered)$/);
    // Silently consumed = 0: a checksum printed is the error-free one; otherwise the walker was killed by a machine check.
    if (/walker: /.test(first.output)) expect(checksumLine(first.output)).toBe(checksumLine(clean.output));
    else expect(first.output).toMatch(/machine check \(uncorrectable memory error\)/);
    if (first.machineChecks === 0) expect(checksumLine(first.output)).toBe(checksumLine(clean.output));
    expect(campaignRun()).toEqual(first);
  });
});

describe('MemoryErrorService: requests', () => {
  it('refuses bad requests with clear errors and changes nothing', () => {
    const machine = started(WALKER, 100_000);
    const service = new MemoryErrorService(machine.vm);
    const cases: [Parameters<MemoryErrorService['inject']>[0], RegExp][] = [
      [{ gpa: 16 * MiB, windowBits: 8 }, /0x1000000 is outside RAM/],
      [{ gpa: -4, windowBits: 8 }, /outside RAM/],
      [{ gpa: 0x4000, windowBits: 0 }, /window_bits must be 1 … 64, got 0/],
      [{ gpa: 0x4000, windowBits: 65 }, /window_bits must be 1 … 64, got 65/],
      [{ gpa: 0x4000, windowBits: 8, windowBitOffset: 32766 }, /must start at bit 0 … 32760/],
      [{ windowBits: 8 }, /exactly one of gpa and gva/],
      [{ gpa: 0, gva: 0, windowBits: 8 }, /exactly one of gpa and gva/],
      [{ gva: 0x7e00_0000, windowBits: 8 }, /guest-virtual 0x7e000000 is not mapped/],
      [{ gpa: 15 * MiB, windowBits: 8 }, /\(page 3840\) is untouched.*; errors are injected into pages with a host frame/],
      [{ gpa: 0x4000, windowBits: 8, pattern: 'melt' as 'flip' }, /pattern must be flip, random, stuck0, stuck1/],
      [{ gpa: 0x4000, windowBits: 8, report: 'later' as 'now' }, /report must be now or on-access/],
    ];
    for (const [request, message] of cases) {
      expect(() => service.inject(request), JSON.stringify(request)).toThrow(message);
      try {
        service.inject(request);
      } catch (error) {
        expect(error).toBeInstanceOf(MemoryErrorServiceError);
      }
    }
    expect(service.stats()).toMatchObject({ injected: 0, framesRetired: 0, poisonedPages: 0 });
    expect(machine.vm.memory.countInState(AbsentState.POISONED)).toBe(0);
  });

  it('a method that throws or returns a wrong size counts as one that could not; the next one is tried', () => {
    const machine = started(WALKER, 100_000);
    const good = savedCopies();
    const thrower: RecoveryMethod = { name: 'throws', recover: () => { throw new Error('boom'); } };
    const short: RecoveryMethod = { name: 'short', recover: () => new Uint8Array(10) };
    const service = new MemoryErrorService(machine.vm, { methods: [thrower, short, good] });
    good.save(machine.vm, 0x4);
    expect(service.inject({ gpa: 0x4000, windowBits: 64, report: 'now' }).outcome).toBe('recovered-by-test-copy');
    expect(service.methodNames).toEqual(['throws', 'short', 'test-copy']);
  });
});
