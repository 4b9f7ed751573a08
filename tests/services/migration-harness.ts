/**
 * Shared by the migration tests: QEMU's migration-test guest ported to BV32, a small round-robin
 * loop that runs guests between the event loop's other work (as the host's scheduler does), and
 * the checks of the invariant.
 *
 * The guest prints 'A', then forever (or for `passes` passes): adds 1 to the first byte of every
 * page of [REGION_START, REGION_END), in page order, then spins `spin` iterations and prints the
 * pass number's last digit. So at any instant every page's byte equals the previous page's,
 * except at the one page where the pass is (QEMU's check_guests_ram), and the console reads
 * 'A' followed by consecutive digits. With `passes`, it then exits with the sum of the bytes.
 */
import { attachStandardDevices, CaptureSink, type StandardDevices } from '../../devices/index.ts';
import { assemble } from '../../guest-isa/assembler.ts';
import type { GuestImage } from '../../guest-isa/image-types.ts';
import { createHypervisor, type Hypervisor, type RunResult, type Vm, type VmConfig } from '../../kernel/index.ts';
import { TransportServer, type TlsFiles } from '../../services/migration/transport.ts';
import { GUEST_LIBRARY } from '../devices/harness.ts';

export const PAGE = 4096;
export const REGION_START = 0x10_0000;

/** The invariant guest for a VM of `memoryBytes` (the region runs to 64 KiB below the top). */
export function invariantImage(memoryBytes: number, options: { spin?: number; passes?: number } = {}): GuestImage {
  return assemble(invariantSource(memoryBytes, options), { fileName: 'invariant.s' }).image;
}

/** The invariant guest's assembly source (GUEST_LIBRARY included), for a file a host can load. */
export function invariantSource(memoryBytes: number, options: { spin?: number; passes?: number } = {}): string {
  const regionEnd = memoryBytes - 0x1_0000;
  // Registers: s0 console, s1 pass count, s2 passes wanted (0: forever), s3 page size.
  const program = `
_start:
        li      a0, DEV_CONSOLE
        jal     ra, find_device
        mv      s0, a0
        putc    s0, 65
        li      s1, 0
        li      s2, ${options.passes ?? 0}
        li      s3, ${PAGE}
pass:
        li      t0, ${REGION_START}
        li      t1, ${regionEnd}
1:      lbu     t2, 0(t0)
        addi    t2, t2, 1
        sb      t2, 0(t0)
        add     t0, t0, s3
        bltu    t0, t1, 1b
        li      a2, ${options.spin ?? 0}
2:      beqz    a2, 3f
        addi    a2, a2, -1
        j       2b
3:      addi    s1, s1, 1
        li      a3, 10
        remu    t3, s1, a3
        addi    t3, t3, 48
        sw      t3, 0(s0)
        beqz    s2, pass
        bltu    s1, s2, pass
        # done: exit with the sum of the region's bytes
        li      t0, ${REGION_START}
        li      t1, ${regionEnd}
        li      a2, 0
4:      lbu     t2, 0(t0)
        add     a2, a2, t2
        add     t0, t0, s3
        bltu    t0, t1, 4b
        exit_reg a2
`;
  return GUEST_LIBRARY + program;
}

/** A VM with the standard devices, its console captured. */
export interface Machine {
  vm: Vm;
  devices: StandardDevices;
  sink: CaptureSink;
}

/** Creates a VM in `hv` with the standard devices (console captured) and, if given, an image. */
export function machine(hv: Hypervisor, config: VmConfig, image?: GuestImage): Machine {
  const vm = hv.createVm(config);
  const sink = new CaptureSink();
  const devices = attachStandardDevices(vm, { output: sink });
  if (image !== undefined) vm.loadImage(image);
  return { vm, devices, sink };
}

/** A fresh hypervisor for the tests (64 MiB pool unless told). */
export function hypervisor(bytes = 64 * 1024 * 1024): Hypervisor {
  return createHypervisor({ hostMemoryBytes: bytes });
}

/**
 * Runs VMs round-robin in slices between the event loop's other work, like the host's
 * scheduler: yields every few ms, honours pause and a throttle (a share of turns skipped).
 */
export class GuestLoop {
  readonly running = new Set<Vm>();
  readonly throttles = new Map<Vm, number>();
  readonly exits = new Map<Vm, RunResult['reason']>();
  #stopped = false;
  readonly #done: Promise<void>;
  #credit = new Map<Vm, number>();

  constructor(readonly hv: Hypervisor, readonly slice = 20_000) {
    this.#done = this.#loop();
  }

  add(vm: Vm): void {
    this.running.add(vm);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#done;
  }

  async #loop(): Promise<void> {
    let lastYield = performance.now();
    while (!this.#stopped) {
      let ran = 0;
      for (const vm of [...this.running]) {
        const throttle = this.throttles.get(vm) ?? 0;
        const credit = (this.#credit.get(vm) ?? 0) + (1 - throttle);
        if (credit < 1) {
          this.#credit.set(vm, credit);
          continue;
        }
        this.#credit.set(vm, credit - 1);
        const [result] = this.hv.run({ maxInstructions: this.slice }, [vm]);
        ran++;
        const kind = result!.reason.kind;
        if (kind !== 'budget' && kind !== 'running') {
          this.running.delete(vm);
          this.exits.set(vm, result!.reason);
        }
        if (performance.now() - lastYield > 2) {
          await new Promise((resolve) => setImmediate(resolve));
          lastYield = performance.now();
        }
      }
      if (ran === 0 || performance.now() - lastYield > 2) {
        await new Promise((resolve) => (ran === 0 ? setTimeout(resolve, 1) : setImmediate(resolve)));
        lastYield = performance.now();
      }
    }
  }
}

/** The first byte of every page of the region. */
export function regionBytes(vm: Vm): number[] {
  const end = vm.memory.memoryBytes - 0x1_0000;
  const bytes: number[] = [];
  for (let gpa = REGION_START; gpa < end; gpa += PAGE) bytes.push(vm.memory.pageBytes(gpa / PAGE)[0]!);
  return bytes;
}

/**
 * QEMU's check_guests_ram: each page's byte equals the previous page's, except at most one edge
 * where it is one less (mod 256). Returns the number of bad pages and of edges.
 */
export function checkInvariant(vm: Vm): { bad: number; edges: number; first: number } {
  const bytes = regionBytes(vm);
  let bad = 0;
  let edges = 0;
  for (let i = 1; i < bytes.length; i++) {
    if (bytes[i] === bytes[i - 1]) continue;
    if (((bytes[i]! + 1) & 0xff) === bytes[i - 1]) edges++;
    else bad++;
  }
  return { bad: bad + Math.max(0, edges - 1), edges, first: bytes[0]! };
}

/** 'A' then consecutive digits from 1: no output lost or repeated. */
export function checkConsole(text: string): void {
  if (!text.startsWith('A')) throw new Error(`console does not start with 'A': ${JSON.stringify(text.slice(0, 20))}`);
  for (let i = 1; i < text.length; i++) {
    const expected = String(i % 10);
    if (text[i] !== expected) throw new Error(`console output broken at ${i}: expected '${expected}', got ${JSON.stringify(text.slice(Math.max(0, i - 5), i + 5))}`);
  }
}

/** A hash of all guest memory (every page, untouched ones as zeros). */
export function memoryHash(vm: Vm): string {
  let h1 = 0x811c9dc5;
  let h2 = 0;
  for (let gpn = 0; gpn < vm.memory.pageCount; gpn++) {
    const bytes = vm.memory.pageBytes(gpn);
    const words = new Int32Array(bytes.buffer, bytes.byteOffset, PAGE / 4);
    for (let i = 0; i < words.length; i++) {
      h1 = Math.imul(h1 ^ words[i]!, 0x01000193);
      h2 = (h2 + (words[i]! | 0) * (i + 1)) | 0;
    }
  }
  return `${(h1 >>> 0).toString(16)}-${(h2 >>> 0).toString(16)}`;
}

/** Waits until `condition` holds (polling every 5 ms). */
export async function waitUntil(what: string, condition: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/**
 * Two hosts in this process for the in-process migration and replication tests: a hypervisor and
 * a round-robin loop each, and B listening (TLS, any free port). closeTwoHosts (an afterEach)
 * stops and frees every pair made since.
 */
export interface TwoHosts {
  hvA: Hypervisor;
  hvB: Hypervisor;
  loopA: GuestLoop;
  loopB: GuestLoop;
  server: TransportServer;
}

const openPairs: TwoHosts[] = [];

/** Makes a TwoHosts whose B listens for `protocol` (speaking `versions`) with its TLS files. */
export async function twoHosts(options: { protocol: string; versions: readonly number[]; tls: TlsFiles; name: string }): Promise<TwoHosts> {
  const hvA = hypervisor();
  const hvB = hypervisor();
  const server = await TransportServer.listen({ ...options, port: 0 });
  const pair = { hvA, hvB, loopA: new GuestLoop(hvA), loopB: new GuestLoop(hvB), server };
  openPairs.push(pair);
  return pair;
}

/** Stops the loops, closes the listeners and frees the hypervisors of every pair made so far. */
export async function closeTwoHosts(): Promise<void> {
  for (const pair of openPairs.splice(0)) {
    await pair.loopA.stop();
    await pair.loopB.stop();
    await pair.server.close();
    pair.hvA.close();
    pair.hvB.close();
  }
}
