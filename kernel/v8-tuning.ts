/**
 * A process-wide V8 setting that bytevisor's tools and bench use, and embedders may opt into.
 *
 * V8 runs a function in its bytecode interpreter until the function has run often enough to be
 * worth compiling. A hypervisor's rare operations (a fork, a live snapshot's pause, a restore, an
 * API request) each run once in a long while, after the guest's own loops have pushed their code
 * and data out of the CPU caches, so they stay interpreted and pay for every cold bytecode
 * handler: measured on the state bench (docs/performance.md), about twice the cost of the same
 * code compiled. V8's `--always-sparkplug` compiles each function to baseline machine code at its
 * first call instead (no optimisation, a fast single pass). Guest speed does not change (hot
 * code is optimised either way); the cost is code space, about 0.5 MiB in the bench process.
 */
import { setFlagsFromString } from 'node:v8';

let enabled = process.execArgv.includes('--always-sparkplug');

/**
 * Compiles every JavaScript function to baseline code at its first call, for the whole process
 * (`node --always-sparkplug` does the same from the command line). Call it first thing, before
 * the code it should cover has run: functions that already ran keep V8's usual tiering. The
 * hypervisor never calls it on its own, as it changes the embedding process; bytevisor's tools
 * and bench do. Returns true (it is on after the call).
 */
export function compileAtFirstCall(): boolean {
  if (!enabled) {
    setFlagsFromString('--always-sparkplug');
    enabled = true;
  }
  return enabled;
}

/** Whether compileAtFirstCall (or `node --always-sparkplug`) is in force in this process. */
export function compilesAtFirstCall(): boolean {
  return enabled;
}
