import { BvError } from '../guest-isa/errors.ts';

/** A request to the kernel that cannot be honoured (bad size, out of memory, bad state). */
export class KernelError extends BvError {}

/** Host memory is exhausted: no free frame or 4 MiB run is left in the pool. */
export class OutOfHostMemoryError extends KernelError {
  constructor(what: string) {
    super('BV_OUT_OF_HOST_MEMORY', `out of host memory: ${what}`);
  }
}

/**
 * Thrown by an AbsentResolver that cannot produce a page now but will later (post-copy migration:
 * the page is on another host and has been asked for). A vCPU's access — load, store, fetch or
 * page-table walk — then pauses the VM with `reason` *before* the access: the instruction has not
 * retired and runs again when whoever threw this resumes the VM (Vm.resume) once the page is in.
 * Host code that reads or writes the page (a device's DMA) gets this error; when it comes out of an
 * MMIO store (a device's doorbell) or a hypercall, the vCPU waits the same way and the store or
 * hcall runs again — so such a device or handler must throw it before it changes anything it keeps.
 */
export class PageWaitError extends KernelError {
  /**
   * @param reason the wait reason the VM is paused with (e.g. the migration's remote-page wait),
   *   so that whoever can supply the page knows which waits to end.
   */
  constructor(
    /** The wait reason the VM is paused with (e.g. REMOTE_PAGE_WAIT_REASON in services/migration). */
    readonly reason: string,
    message: string,
  ) {
    super('BV_PAGE_WAIT', message);
  }
}
