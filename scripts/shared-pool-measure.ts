/**
 * Issue 16's "atomics or a native allocator, decided by measurement", first figures: the cost of
 * one frame-allocation step (pop a frame off a free list, push it back) done lock-free with
 * Atomics.compareExchange on an Int32Array over a HostRegion's SharedArrayBuffer, against a plain
 * JS pop/push on a private Int32Array stack. Single-threaded, then two workers at once (sharing
 * one list with CAS, or each popping its own private list). Prints wall and process CPU time.
 * After the contended run a checker walks the shared list: every frame exactly once.
 * `npx tsx scripts/shared-pool-measure.ts [--frames N] [--rounds N]`
 */
import { availableParallelism, loadavg } from 'node:os';
import { Worker } from 'node:worker_threads';
import { HOST_PAGE_SIZE, HostRegion } from '../native/index.ts';

function option(name: string, fallback: number): number {
  const at = process.argv.indexOf(name);
  return at >= 0 ? Number(process.argv[at + 1]) : fallback;
}
const FRAMES = option('--frames', 65_536); // a 256 MiB pool of 4 KiB frames
const ROUNDS = option('--rounds', 40); // each round pops every frame and pushes it back

/*
 * The free lists, as JS source so the main thread and the workers run the same code (workers
 * get no TS loader). Shared list layout in the Int32Array: word 0 is the head, packed as
 * (tag << 20) | (frame + 1), 0 meaning empty; the tag grows on every change so a CAS cannot
 * succeed against a head that was popped and pushed back meanwhile (ABA). Word 1 + f is frame
 * f's next link (frame + 1, 0 = end).
 */
const LIST_SOURCE = `
const INDEX_MASK = 0xfffff;
const TAG_STEP = 0x100000;
let retries = 0; // failed compareExchanges: how often another thread got in between
function sharedPop(words) {
  for (;;) {
    const head = Atomics.load(words, 0);
    const top = head & INDEX_MASK;
    if (top === 0) return -1;
    const next = Atomics.load(words, top);
    if (Atomics.compareExchange(words, 0, head, ((head & ~INDEX_MASK) + TAG_STEP) | next) === head) return top - 1;
    retries++;
  }
}
function sharedPush(words, frame) {
  for (;;) {
    const head = Atomics.load(words, 0);
    Atomics.store(words, frame + 1, head & INDEX_MASK);
    if (Atomics.compareExchange(words, 0, head, ((head & ~INDEX_MASK) + TAG_STEP) | (frame + 1)) === head) return;
    retries++;
  }
}
// The plain stack: stack[0] is the count, stack[1..count] the free frames.
function plainPop(stack) {
  const count = stack[0];
  if (count === 0) return -1;
  stack[0] = count - 1;
  return stack[count];
}
function plainPush(stack, frame) {
  const count = stack[0] + 1;
  stack[0] = count;
  stack[count] = frame;
}
// One measured run: ROUNDS times, pop FRAMES frames into held, then push them all back.
function run(kind, list, frames, rounds, held) {
  const pop = kind === 'shared' ? sharedPop : plainPop;
  const push = kind === 'shared' ? sharedPush : plainPush;
  let steps = 0;
  for (let round = 0; round < rounds; round++) {
    let count = 0;
    for (let i = 0; i < frames; i++) {
      const frame = pop(list);
      if (frame < 0) break;
      held[count++] = frame;
    }
    for (let i = 0; i < count; i++) push(list, held[i]);
    steps += count;
  }
  return steps;
}
`;

interface ListOps {
  run(kind: 'shared' | 'plain', list: Int32Array, frames: number, rounds: number, held: Int32Array): number;
  sharedPop(words: Int32Array): number;
}
// One compiled copy per kind, as in the workers: a shared `run` would be polymorphic (pop and
// push called through a variable that takes two values) and slower for both.
const makeOps = (): ListOps => new Function(`${LIST_SOURCE}; return { run, sharedPop };`)() as ListOps;
const plainOps = makeOps();
const ops = makeOps();

function fillShared(words: Int32Array, frames: number): void {
  words[0] = 0;
  for (let frame = frames - 1; frame >= 0; frame--) {
    words[frame + 1] = words[0]! & 0xfffff;
    words[0] = frame + 1;
  }
}
function fillPlain(stack: Int32Array, frames: number): void {
  stack[0] = frames;
  for (let frame = 0; frame < frames; frame++) stack[frame + 1] = frames - 1 - frame;
}

interface Figure {
  label: string;
  steps: number;
  wallMs: number;
  cpuMs: number;
}
function report(figure: Figure): void {
  const nsPerStep = (figure.wallMs * 1e6) / figure.steps;
  console.log(
    `${figure.label.padEnd(56)} ${String(figure.steps).padStart(10)} pop+push  wall ${figure.wallMs.toFixed(1).padStart(8)} ms` +
      `  cpu ${figure.cpuMs.toFixed(1).padStart(8)} ms  ${nsPerStep.toFixed(1).padStart(6)} ns/step (wall, all threads)`,
  );
}

function timed(label: string, body: () => number): Figure {
  const cpu = process.cpuUsage();
  const start = process.hrtime.bigint();
  const steps = body();
  const wallMs = Number(process.hrtime.bigint() - start) / 1e6;
  const used = process.cpuUsage(cpu);
  return { label, steps, wallMs, cpuMs: (used.user + used.system) / 1000 };
}

const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
${LIST_SOURCE}
parentPort.once('message', ({ kind, sab, frames, rounds }) => {
  const list = kind === 'shared' ? new Int32Array(sab) : new Int32Array(frames + 1);
  if (kind === 'plain') { list[0] = frames; for (let f = 0; f < frames; f++) list[f + 1] = f; }
  const held = new Int32Array(frames);
  run(kind, list, frames, 1, held); // warm up (JIT) before the start signal
  const gate = new Int32Array(sab, sab.byteLength - 4, 1);
  parentPort.postMessage('ready');
  Atomics.wait(gate, 0, 0);
  retries = 0;
  const steps = run(kind, list, frames, rounds, held);
  parentPort.postMessage({ steps, retries });
});`;

async function twoWorkers(kind: 'shared' | 'plain', sab: SharedArrayBuffer): Promise<Figure> {
  const gate = new Int32Array(sab, sab.byteLength - 4, 1);
  Atomics.store(gate, 0, 0);
  // Each worker takes at most half the frames per round when sharing, so both always find some.
  const perWorker = kind === 'shared' ? FRAMES / 2 : FRAMES;
  const workers = [0, 1].map(() => new Worker(WORKER_SOURCE, { eval: true }));
  const ready = workers.map((worker) => new Promise((resolve) => worker.once('message', resolve)));
  for (const worker of workers) worker.postMessage({ kind, sab, frames: perWorker, rounds: ROUNDS });
  await Promise.all(ready);
  const done = workers.map(
    (worker) => new Promise<{ steps: number; retries: number }>((resolve) => worker.once('message', resolve)),
  );
  const cpu = process.cpuUsage();
  const start = process.hrtime.bigint();
  Atomics.store(gate, 0, 1);
  Atomics.notify(gate, 0);
  const results = await Promise.all(done);
  const steps = results.reduce((sum, result) => sum + result.steps, 0);
  const retries = results.reduce((sum, result) => sum + result.retries, 0);
  const wallMs = Number(process.hrtime.bigint() - start) / 1e6;
  const used = process.cpuUsage(cpu);
  await Promise.all(workers.map((worker) => worker.terminate()));
  return {
    label: `2 workers, ${kind === 'shared' ? `one shared CAS list (${retries} CAS retries)` : 'a private plain stack each'}`,
    steps,
    wallMs,
    cpuMs: (used.user + used.system) / 1000,
  };
}

/** Walks the shared list: it must hold every frame exactly once after all pops were pushed back. */
function checkShared(words: Int32Array): void {
  const seen = new Uint8Array(FRAMES);
  let count = 0;
  for (let frame = ops.sharedPop(words); frame >= 0; frame = ops.sharedPop(words)) {
    if (frame >= FRAMES || seen[frame]) throw new Error(`free list corrupt: frame ${frame} twice or out of range`);
    seen[frame] = 1;
    count++;
  }
  if (count !== FRAMES) throw new Error(`free list lost frames: ${count} of ${FRAMES}`);
}

const listBytes = Math.ceil(((FRAMES + 2) * 4) / HOST_PAGE_SIZE) * HOST_PAGE_SIZE;
const region = HostRegion.sharedMemory(listBytes, 'bv-shared-pool-measure');
const sab = region.sharedBuffer();
// The last word of the region is the workers' start gate; the list must stay clear of it.
if ((FRAMES + 1) * 4 >= listBytes - 4) throw new Error('region too small');
const shared = new Int32Array(sab, 0, FRAMES + 1);
const plain = new Int32Array(FRAMES + 1);
const held = new Int32Array(FRAMES);

console.log(
  `${FRAMES} frames, ${ROUNDS} rounds; one step = pop one frame + push it back later; ` +
    `${availableParallelism()} CPUs, load average ${loadavg()[0]!.toFixed(2)} ` +
    '(CPU well below 2 x wall for two workers means they did not really run in parallel)',
);
fillShared(shared, FRAMES);
fillPlain(plain, FRAMES);
ops.run('shared', shared, FRAMES, 2, held); // warm up both
plainOps.run('plain', plain, FRAMES, 2, held);
for (let repeat = 0; repeat < 2; repeat++) {
  report(timed('1 thread, plain JS stack (Int32Array)', () => plainOps.run('plain', plain, FRAMES, ROUNDS, held)));
  report(timed('1 thread, CAS list in the SharedArrayBuffer', () => ops.run('shared', shared, FRAMES, ROUNDS, held)));
}
for (let repeat = 0; repeat < 2; repeat++) {
  report(await twoWorkers('plain', sab));
  fillShared(shared, FRAMES);
  report(await twoWorkers('shared', sab));
  checkShared(shared);
}
console.log('checker: after each contended run the shared list held every frame exactly once');
region.close();
