import { BvError } from '../guest-isa/errors.ts';

/** A request to the kernel that cannot be honoured (bad size, out of memory, bad state). */
export class KernelError extends BvError {}

/** Host memory is exhausted: no free frame or 4 MiB run is left in the pool. */
export class OutOfHostMemoryError extends KernelError {
  constructor(what: string) {
    super('BV_OUT_OF_HOST_MEMORY', `out of host memory: ${what}`);
  }
}
