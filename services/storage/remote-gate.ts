/**
 * storage_io across threads (docs/storage-io.md "Worker groups"): the host's PARDA controller
 * lives in its own thread, the VMs of a worker group in another. The group's block devices ask a
 * RemoteIoGate, which starts a VM's request only against a credit the host's controller granted
 * (one credit = one request in flight) and otherwise queues it. The controller sees each group VM
 * as an owner like a local one: a request waiting in the worker is a request queued with it, a
 * credit it grants is a request it started, a completion reported back (bytes, latency) releases
 * it and enters L(t). So the host's window and the VMs' shares cover both threads, and the window
 * shrinking takes credits back as requests complete (an issued request is never revoked).
 *
 * Both directions are batched: one message per event-loop turn, over the group's own messaging
 * (worker-group.ts `io` messages).
 */
import type { BlockIoGate } from '../../devices/block.ts';
import type { PardaController } from './controller.ts';

/** What a worker reports (worker → host), in order. */
export const RemoteIoOp = {
  /** `count` more requests of the owner wait for credit. */
  SUBMIT: 0,
  /** A request completed: its credit comes back; `bytes`, `latencyNs` as BlockIoGate.complete. */
  COMPLETE: 1,
  /** `count` credits come back unused (their requests were forgotten). */
  RETURN: 2,
  /** The owner's waiting requests were dropped (reset, deletion). */
  FORGET: 3,
  /** A request completed and its credit started the owner's next waiting one at once (within its limit). */
  REUSE: 4,
  /** The owner left the group (deleted, migrated away): the host drops it as it does a local VM. */
  GONE: 5,
} as const;

/** One event of a worker's report. */
export type RemoteIoEvent =
  | readonly [op: typeof RemoteIoOp.SUBMIT, owner: string, count: number]
  | readonly [op: typeof RemoteIoOp.COMPLETE, owner: string, bytes: number, latencyNs: number]
  | readonly [op: typeof RemoteIoOp.RETURN, owner: string, count: number]
  | readonly [op: typeof RemoteIoOp.FORGET, owner: string]
  | readonly [op: typeof RemoteIoOp.REUSE, owner: string, bytes: number, latencyNs: number]
  | readonly [op: typeof RemoteIoOp.GONE, owner: string];

/**
 * Credits for one owner (host → worker): `count` new ones, and `limit`, the owner's part of the
 * window: while it holds fewer, a completing request's credit starts its next one at once
 * instead of going back (no round trip); above it, credits go back as requests complete.
 */
export type RemoteIoGrant = readonly [owner: string, count: number, limit: number];

/** A group VM's credit as its worker holds it (`io_credit` in the group VM's stats). */
export interface RemoteIoStatus {
  /** Credits held now: requests started and not completed. */
  credits: number;
  /** Requests waiting for credit. */
  queued: number;
  /** Most requests in flight at once. */
  peak_in_flight: number;
  /** The owner's part of the window as the host last sent it: credits it may keep reusing. */
  limit: number;
  /** Completions whose credit started the next request at once. */
  reused: number;
  /** Credits received, in all. */
  granted: number;
  /** Credits given back unused. */
  returned: number;
  /** Requests completed. */
  completed: number;
}

/** Calls `flush` once, at the end of this event-loop turn, however often it is asked. */
class TurnBatch {
  private scheduled = false;
  constructor(private readonly flush: () => void) {}
  request(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.flush();
    });
  }
}

/** One owner's side in the worker. */
class OwnerCredit {
  /** Start callbacks waiting for credit, oldest first (from `head`). */
  queue: ((() => void) | undefined)[] = [];
  head = 0;
  inFlight = 0;
  peakInFlight = 0;
  limit = 0;
  reused = 0;
  granted = 0;
  returned = 0;
  completed = 0;
  get queued(): number {
    return this.queue.length - this.head;
  }
}

/** The worker's gate: a BlockIoGate that starts a group VM's request only against a credit. */
export class RemoteIoGate implements BlockIoGate {
  private readonly owners = new Map<string, OwnerCredit>();
  private events: RemoteIoEvent[] = [];
  private readonly batch = new TurnBatch(() => this.flush());

  /** `send` posts one batch of events to the host's thread. */
  constructor(private readonly send: (events: RemoteIoEvent[]) => void) {}

  /** Queues the request; it starts when a credit for `owner` arrives (grant). */
  submit(owner: string, bytes: number, start: () => void): void {
    void bytes; // the host accounts sizes at completion
    this.owner(owner).queue.push(start);
    const last = this.events[this.events.length - 1];
    // Consecutive submits of one owner travel as one event.
    if (last !== undefined && last[0] === RemoteIoOp.SUBMIT && last[1] === owner) this.events[this.events.length - 1] = [RemoteIoOp.SUBMIT, owner, last[2] + 1];
    else this.push([RemoteIoOp.SUBMIT, owner, 1]);
    this.batch.request();
  }

  /** A started request completed: its credit goes back with the latency. */
  complete(owner: string, bytes: number, latencyNs: number): void {
    const credit = this.owners.get(owner);
    if (credit === undefined || credit.inFlight === 0) return; // not started against a credit
    credit.inFlight--;
    credit.completed++;
    // Within its part of the window the credit goes straight to the next waiting request.
    if (credit.inFlight < credit.limit && this.startNext(credit)) {
      credit.reused++;
      this.push([RemoteIoOp.REUSE, owner, bytes, latencyNs]);
    } else this.push([RemoteIoOp.COMPLETE, owner, bytes, latencyNs]);
    this.batch.request();
  }

  /** Drops the owner's waiting requests; the host drops as many from its queue. */
  forget(owner: string): void {
    const credit = this.owners.get(owner);
    if (credit === undefined) return;
    credit.queue = [];
    credit.head = 0;
    this.push([RemoteIoOp.FORGET, owner]);
    this.batch.request();
  }

  /**
   * The owner left this thread (deleted, migrated away): after the events already sent for it
   * (which could otherwise bring it back to the host's controller), the host removes it.
   */
  remove(owner: string): void {
    const credit = this.owners.get(owner);
    if (credit !== undefined) {
      credit.queue = [];
      credit.head = 0;
      credit.limit = 0;
    }
    this.push([RemoteIoOp.GONE, owner]);
    this.batch.request();
  }

  /** Credits from the host: each starts the owner's oldest waiting request, or goes back unused. */
  grant(grants: readonly RemoteIoGrant[]): void {
    for (const [owner, count, limit] of grants) {
      const credit = this.owner(owner);
      credit.limit = limit;
      let unused = 0;
      for (let i = 0; i < count; i++) {
        credit.granted++;
        if (!this.startNext(credit)) unused++;
      }
      if (unused > 0) {
        credit.returned += unused;
        this.push([RemoteIoOp.RETURN, owner, unused]);
      }
    }
    this.batch.request();
  }

  /** An owner's credit figures, or null when it never used the gate. */
  status(owner: string): RemoteIoStatus | null {
    const credit = this.owners.get(owner);
    if (credit === undefined) return null;
    return { credits: credit.inFlight, queued: credit.queued, peak_in_flight: credit.peakInFlight, limit: credit.limit, reused: credit.reused, granted: credit.granted, returned: credit.returned, completed: credit.completed };
  }

  /** Starts the owner's oldest waiting request on a credit it holds; false when none waits (or it threw). */
  private startNext(credit: OwnerCredit): boolean {
    const start = credit.head < credit.queue.length ? credit.queue[credit.head] : undefined;
    if (start === undefined) return false;
    credit.queue[credit.head++] = undefined;
    if (credit.head === credit.queue.length) {
      credit.queue = [];
      credit.head = 0;
    }
    credit.inFlight++;
    if (credit.inFlight > credit.peakInFlight) credit.peakInFlight = credit.inFlight;
    try {
      start();
      return true;
    } catch {
      // The device refused to issue it: the credit goes back.
      credit.inFlight--;
      return false;
    }
  }

  private owner(owner: string): OwnerCredit {
    let credit = this.owners.get(owner);
    if (credit === undefined) {
      credit = new OwnerCredit();
      this.owners.set(owner, credit);
    }
    return credit;
  }

  private push(event: RemoteIoEvent): void {
    this.events.push(event);
  }

  private flush(): void {
    if (this.events.length === 0) return;
    const events = this.events;
    this.events = [];
    this.send(events);
  }
}

/**
 * The host's end of one worker group's gate: applies the group's reports to the controller and
 * sends it the credits the controller grants (batched per event-loop turn).
 */
export class RemoteIoLink {
  private grants = new Map<string, number>();
  /** The limit last sent for each owner the group reported. */
  private readonly limits = new Map<string, number>();
  private readonly batch = new TurnBatch(() => this.flush());

  /** `send` posts one batch of grants to the group's worker. */
  constructor(
    private readonly controller: PardaController,
    private readonly send: (grants: RemoteIoGrant[]) => void,
  ) {}

  /** A batch of the worker's events, in order. */
  receive(events: readonly RemoteIoEvent[]): void {
    for (const event of events) {
      switch (event[0]) {
        case RemoteIoOp.SUBMIT: {
          const owner = event[1];
          for (let i = 0; i < event[2]; i++) this.controller.submit(owner, 0, () => this.grant(owner));
          break;
        }
        case RemoteIoOp.COMPLETE:
          this.controller.complete(event[1], event[2], event[3]);
          break;
        case RemoteIoOp.RETURN:
          this.controller.release(event[1], event[2]);
          break;
        case RemoteIoOp.FORGET:
          this.controller.forget(event[1]);
          break;
        case RemoteIoOp.REUSE:
          this.controller.reuse(event[1], event[2], event[3]);
          break;
        case RemoteIoOp.GONE:
          this.controller.removeVm(event[1]);
          break;
        default:
          break; // an unknown event from a newer worker: ignored
      }
      if (!this.limits.has(event[1])) this.limits.set(event[1], -1);
    }
    // The owners' parts of the window follow the window and who has requests: send the changed ones.
    for (const [owner, sent] of this.limits) {
      if (Math.floor(this.controller.windowShareOf(owner)) !== sent) {
        if (!this.grants.has(owner)) this.grants.set(owner, 0);
        this.batch.request();
      }
    }
  }

  /** The controller started one of `owner`'s requests: a credit for the worker. */
  private grant(owner: string): void {
    this.grants.set(owner, (this.grants.get(owner) ?? 0) + 1);
    this.batch.request();
  }

  private flush(): void {
    if (this.grants.size === 0) return;
    const grants: RemoteIoGrant[] = [];
    for (const [owner, count] of this.grants) {
      const limit = Math.floor(this.controller.windowShareOf(owner));
      this.limits.set(owner, limit);
      grants.push([owner, count, limit]);
    }
    this.grants = new Map();
    this.send(grants);
  }
}
