/**
 * Issue 17 (`npm run bench -- --only io`): storage and the partition bus, three parts measured one
 * after the other (each has its own baseline measured in the same run):
 *
 * - PARDA (bench/io-parda.ts): host processes sharing one image, per host shares, window,
 *   latency and IOPS, controlled against uncontrolled;
 * - the bus (bench/io-bus.ts): round-trip latency and throughput of 64-byte and 64 KiB messages,
 *   guest ↔ host echo and guest ↔ guest relayed, against a plain copy of the same bytes;
 * - the proxied disk (bench/io-proxy.ts): the nanokernel's disk over the bus against its own
 *   block device, the same workloads interleaved.
 */
import type { Check } from './harness.ts';
import { formatIoBus, ioBusChecks, ioBusStepCount, measureIoBus, type IoBusFigures } from './io-bus.ts';
import { formatPardaBench, measurePardaBench, pardaChecks, pardaStepCount, type PardaBenchFigures } from './io-parda.ts';
import { formatIoProxy, ioProxyChecks, ioProxyStepCount, measureIoProxy, type IoProxyFigures } from './io-proxy.ts';

/** Options of the io entry. */
export interface IoBenchOptions {
  /** Shorter runs of every part. */
  quick?: boolean;
  /** Called before each step. */
  onStep?: (label: string) => void;
}

/** The io entry's figures: one object per part. */
export interface IoBenchFigures {
  /** PARDA across host processes. */
  parda: PardaBenchFigures;
  /** Bus round trips and bursts. */
  bus: IoBusFigures;
  /** The disk proxied over the bus against the block device. */
  proxy: IoProxyFigures;
}

/** Steps the io entry reports through onStep. */
export function ioStepCount(options: { quick?: boolean } = {}): number {
  return pardaStepCount() + ioBusStepCount({ quick: options.quick ?? false }) + ioProxyStepCount({ quick: options.quick ?? false });
}

/** Runs the three parts in turn (the bus and the proxy in this process, PARDA in host processes). */
export async function measureIo(options: IoBenchOptions = {}): Promise<IoBenchFigures> {
  const common = { quick: options.quick ?? false, ...(options.onStep ? { onStep: options.onStep } : {}) };
  const bus = await measureIoBus(common);
  const proxy = await measureIoProxy(common);
  const parda = await measurePardaBench(common);
  return { parda, bus, proxy };
}

/** PASS/FAIL lines of the three parts. */
export function ioChecks(figures: IoBenchFigures): Check[] {
  return [...pardaChecks(figures.parda), ...ioBusChecks(figures.bus), ...ioProxyChecks(figures.proxy)];
}

/** The three parts' tables. */
export function formatIo(figures: IoBenchFigures): string[] {
  return [...formatPardaBench(figures.parda), '', ...formatIoBus(figures.bus), '', ...formatIoProxy(figures.proxy)];
}
