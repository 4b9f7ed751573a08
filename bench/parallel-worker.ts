/**
 * The worker side of bench/parallel.ts's page-sharing figures: attaches to the pool, imports the
 * lent pages (timed), then writes one word into each (every write a copy-on-write break, timed).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { attachToPool } from '../kernel/index.ts';
import type { FrameHandle, SharedPoolHandle } from '../kernel/index.ts';

const data = workerData as { pool: SharedPoolHandle; handles: FrameHandle[] };
const hv = attachToPool(data.pool);
const vm = hv.createVm({ name: 'borrower', memoryBytes: data.handles.length * 4096 });
const word = new Uint8Array(4).fill(0x5a);
let started = performance.now();
data.handles.forEach((handle, gpn) => vm.memory.importPage(gpn, handle));
const importMs = performance.now() - started;
started = performance.now();
for (let gpn = 0; gpn < data.handles.length; gpn++) vm.memory.writePhysical(gpn * 4096, word);
const breakMs = performance.now() - started;
hv.destroyVm(vm);
hv.close();
parentPort!.postMessage({ importMs, breakMs });
