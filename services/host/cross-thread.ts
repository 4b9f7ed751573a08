/**
 * What the main host coordinates between its threads (issue 16, docs/workers.md): reallocations
 * between VMs of different threads (the two halves run in the VMs' threads, services/memory/
 * reallocate.ts; their frames travel as FrameHandles through here) and content-based page sharing
 * between threads (each thread's part is services/memory/sharing.ts ThreadSharing; offers are
 * matched by hash here). Every thread is reached through the same calls (GroupCalls): the host's
 * own methods for its thread, a worker's for a group.
 */
import type { FrameHandle, Hypervisor } from '../../kernel/index.ts';
import type { ReallocationStatus } from '../memory/reallocate.ts';
import type { GroupCalls } from './worker-group.ts';

const MIB = 1024 * 1024;

/** Content-based sharing between threads (GET /host/stats `cross_thread_sharing`). */
export interface CrossThreadSharingStats {
  /** Passes run (every second while sharing is on). */
  passes: number;
  /** Pages offered by all threads, in all passes. */
  offered: number;
  /** Offers whose hash matched an offer of another thread. */
  candidates: number;
  /** Pages merged onto a frame of another thread (each frees a frame). */
  merged: number;
  /** Candidates not merged: the page changed, or the full compare failed (a hash collision). */
  refused: number;
  /** Time in passes, ms. */
  pass_ms: number;
}

/** Cross-thread reallocations and sharing passes of one host. */
export class CrossThread {
  /** Reallocations between VMs of different threads, by id. */
  private readonly reallocations = new Map<number, { from: string; to: string; pages: number; fromCalls: GroupCalls; toCalls: GroupCalls; last: ReallocationStatus }>();
  private nextId = 1;
  private sharing: { timer: ReturnType<typeof setInterval>; stats: CrossThreadSharingStats; running: boolean } | null = null;

  constructor(
    private readonly hv: Hypervisor,
    /** Every live thread's calls, the host's own first. */
    private readonly threads: () => GroupCalls[],
    /** The calls of the thread VM `name` runs in. */
    private readonly vmCalls: (name: string) => GroupCalls,
    private readonly log: (line: string) => void,
  ) {}

  /** The sharing passes' figures, or null when they are off. */
  sharingStats(): CrossThreadSharingStats | null {
    if (this.sharing === null) return null;
    return { ...this.sharing.stats, pass_ms: Math.round(this.sharing.stats.pass_ms * 1000) / 1000 };
  }

  /** Stops the sharing passes. */
  stop(): void {
    if (this.sharing !== null) clearInterval(this.sharing.timer);
  }

  /**
   * A reallocation between VMs of different threads (docs/workers.md): the receiving half starts
   * in `to`'s thread, the giving half in `from`'s; the giver's frames travel as FrameHandles
   * through this host, which relays them to the receiver.
   */
  async reallocate(fromName: string, toName: string, mib: number): Promise<ReallocationStatus> {
    const pages = mib * (MIB / 4096);
    const fromCalls = this.vmCalls(fromName);
    const toCalls = this.vmCalls(toName);
    const id = this.nextId++;
    const last: ReallocationStatus = { from: fromName, to: toName, pages, given: 0, frames_taken: 0, frames_placed: 0, state: 'running' };
    this.reallocations.set(id, { from: fromName, to: toName, pages, fromCalls, toCalls, last });
    try {
      await toCalls.startReallocationReceiver(id, toName, pages);
      try {
        await fromCalls.startReallocationDonor(id, fromName, pages);
      } catch (error) {
        await toCalls.cancelReallocationHalf(id, 'the giving VM refused').catch(() => {});
        throw error;
      }
    } catch (error) {
      this.reallocations.delete(id);
      throw error;
    }
    this.log(`host: reallocating ${mib} MiB from ${fromName} to ${toName} across threads`);
    return { ...last };
  }

  /** Frames from a giving half (here or in a group) go to the receiving half's thread; unwanted ones are dropped. */
  relayFrames(id: number, handles: FrameHandle[], given: number): void {
    const record = this.reallocations.get(id);
    if (record === undefined) {
      for (const handle of handles) this.hv.dropFrameHandle(handle);
      return;
    }
    record.toCalls.acceptReallocationFrames(id, handles, given).catch((error: unknown) => {
      this.log(`host: reallocation ${record.from} -> ${record.to}: ${error instanceof Error ? error.message : String(error)}`);
    });
  }

  /** The cross-thread reallocations' statuses, from both halves (a half cancelled cancels the other). */
  async reallocationStatuses(): Promise<ReallocationStatus[]> {
    const statuses: ReallocationStatus[] = [];
    for (const [id, record] of this.reallocations) {
      if (record.last.state === 'running') {
        const [giver, receiver] = await Promise.all([record.fromCalls.reallocationHalf(id).catch(() => null), record.toCalls.reallocationHalf(id).catch(() => null)]);
        const cancelled = giver === null || receiver === null || giver.state === 'cancelled' || receiver.state === 'cancelled';
        const reason = giver?.reason ?? receiver?.reason ?? (cancelled ? 'a VM of the reallocation is gone' : undefined);
        if (cancelled) {
          await record.fromCalls.cancelReallocationHalf(id, reason!).catch(() => {});
          await record.toCalls.cancelReallocationHalf(id, reason!).catch(() => {});
        }
        record.last = {
          from: record.from, to: record.to, pages: record.pages, given: giver?.given ?? record.last.given,
          frames_taken: giver?.frames ?? record.last.frames_taken, frames_placed: receiver?.frames ?? record.last.frames_placed,
          state: cancelled ? 'cancelled' : giver!.state === 'done' && receiver!.state === 'done' ? 'done' : 'running',
          ...(cancelled ? { reason: reason! } : {}),
        };
      }
      statuses.push({ ...record.last });
    }
    return statuses;
  }

  /** Runs a pass of sharing between threads every `intervalMs` (a timer that does not keep the process alive). */
  startSharing(intervalMs: number): void {
    if (this.sharing !== null) return;
    const stats: CrossThreadSharingStats = { passes: 0, offered: 0, candidates: 0, merged: 0, refused: 0, pass_ms: 0 };
    const timer = setInterval(() => {
      if (this.sharing === null || this.sharing.running) return;
      this.sharing.running = true;
      this.share().catch((error: unknown) => this.log(`host: sharing across threads: ${error instanceof Error ? error.message : String(error)}`)).finally(() => {
        if (this.sharing !== null) this.sharing.running = false;
      });
    }, intervalMs);
    timer.unref();
    this.sharing = { timer, stats, running: false };
  }

  /**
   * One pass of content-based sharing between the VMs of different threads (docs/workers.md):
   * every thread offers up to `limit` pages with their hashes; for a hash offered by two or more
   * threads, the first offer's thread lends its frame and each other thread adopts it after a full
   * compare of the bytes, releasing its own frame. Returns the pass's figures.
   */
  async share(limit = 2048): Promise<Omit<CrossThreadSharingStats, 'passes' | 'pass_ms'>> {
    const started = performance.now();
    const threads = this.threads();
    const offers = await Promise.all(threads.map((calls) => calls.sharingOffers(limit)));
    const byHash = new Map<number, { thread: number; vm: string; gpn: number }[]>();
    offers.forEach((list, thread) => {
      for (const offer of list) {
        const entries = byHash.get(offer.hash);
        if (entries === undefined) byHash.set(offer.hash, [{ thread, vm: offer.vm, gpn: offer.gpn }]);
        else if (!entries.some((e) => e.thread === thread)) entries.push({ thread, vm: offer.vm, gpn: offer.gpn }); // one page per thread: within a thread the thread's own sharer merges
      }
    });
    let candidates = 0;
    let merged = 0;
    let refused = 0;
    for (const [hash, entries] of byHash) {
      if (entries.length < 2) continue;
      const [owner, ...others] = entries;
      for (const other of others) {
        candidates++;
        const handle = await threads[owner!.thread]!.lendPage(owner!.vm, owner!.gpn, hash);
        if (handle === null) {
          refused++;
          break; // the owner's page changed: the others wait for the next pass
        }
        if (await threads[other.thread]!.adoptPage(other.vm, other.gpn, handle)) merged++;
        else refused++;
      }
    }
    const offered = offers.reduce((sum, list) => sum + list.length, 0);
    const stats = this.sharing?.stats;
    if (stats !== undefined) {
      stats.passes++;
      stats.offered += offered;
      stats.candidates += candidates;
      stats.merged += merged;
      stats.refused += refused;
      stats.pass_ms += performance.now() - started;
    }
    return { offered, candidates, merged, refused };
  }
}
