/**
 * A host's migration counters since it started (`GET /host/stats`, field `migration`): how many
 * VMs left and arrived, the time, downtime and bytes they took, rounds, pages sent again, and
 * post-copy's remote faults with their latency. The host notes each finished migration here.
 */
import type { MigrationFigures, ReceiveFigures } from './migration.ts';

/** HostStatsReport.migration. */
export interface MigrationStatsReport {
  /** Outgoing migrations: completed, failed (the VM stayed here, running or paused), and by mode. */
  sent: number;
  /** Outgoing migrations that failed. */
  send_failures: number;
  /** Outgoing migrations started in pre-copy mode. */
  precopy: number;
  /** Outgoing migrations started in post-copy mode. */
  postcopy: number;
  /** Incoming migrations: completed and failed. */
  received: number;
  /** Incoming migrations that failed. */
  receive_failures: number;
  /** Sums over completed outgoing migrations. */
  total_ms: number;
  /** Sum of the downtimes, ms. */
  downtime_ms: number;
  /** Sum of the bytes sent. */
  bytes_sent: number;
  /** Sum of the pre-copy rounds. */
  rounds: number;
  /** Sum of the pages sent. */
  pages_sent: number;
  /** Sum of the pages sent more than once. */
  pages_resent: number;
  /** Bytes received by incoming migrations (completed or not). */
  bytes_received: number;
  /** The longest downtime of a completed outgoing migration, ms (null before the first). */
  max_downtime_ms: number | null;
  /** Post-copy, both directions as this host saw them: remote faults, pages still remote at switch-overs, resumptions. */
  remote_faults: number;
  /** Pages still remote at post-copy switch-overs. */
  remote_pages: number;
  /** Post-copy migrations carried on over a new connection. */
  postcopy_resumptions: number;
  /** Remote-fault latency over the last post-copy migrations this host received (ms): the worst p50, p99 and max seen. */
  fault_latency_p50_ms: number | null;
  /** The worst p99 remote-fault latency seen, ms. */
  fault_latency_p99_ms: number | null;
  /** The longest remote-fault latency seen, ms. */
  fault_latency_max_ms: number | null;
  /** Time destination guests spent paused waiting for remote pages, ms. */
  remote_wait_ms: number;
}

function newReport(): MigrationStatsReport {
  return {
    sent: 0, send_failures: 0, precopy: 0, postcopy: 0, received: 0, receive_failures: 0, total_ms: 0, downtime_ms: 0, bytes_sent: 0, rounds: 0, pages_sent: 0, pages_resent: 0,
    bytes_received: 0, max_downtime_ms: null, remote_faults: 0, remote_pages: 0, postcopy_resumptions: 0, fault_latency_p50_ms: null, fault_latency_p99_ms: null, fault_latency_max_ms: null,
    remote_wait_ms: 0,
  };
}

const max = (a: number | null, b: number | null): number | null => (a === null ? b : b === null ? a : Math.max(a, b));
const round3 = (value: number): number => Math.round(value * 1000) / 1000;

/** Counts a host's migrations (one per host). */
export class MigrationCounters {
  readonly #report = newReport();

  /** An outgoing migration ended (completed or failed). */
  noteSent(figures: MigrationFigures): void {
    const r = this.#report;
    if (figures.state !== 'completed') {
      r.send_failures++;
      return;
    }
    r.sent++;
    if (figures.mode === 'postcopy') r.postcopy++;
    else r.precopy++;
    r.total_ms = round3(r.total_ms + figures.total_ms);
    r.downtime_ms = round3(r.downtime_ms + (figures.downtime_ms ?? 0));
    r.max_downtime_ms = max(r.max_downtime_ms, figures.downtime_ms);
    r.bytes_sent += figures.bytes_sent;
    r.rounds += figures.rounds + 1;
    r.pages_sent += figures.pages_sent;
    r.pages_resent += figures.pages_resent;
    if (figures.postcopy !== null) {
      r.remote_pages += figures.postcopy.remote_pages;
      r.postcopy_resumptions += figures.resumptions;
    }
  }

  /** An incoming migration ended (completed or failed). */
  noteReceived(figures: ReceiveFigures): void {
    const r = this.#report;
    if (figures.state === 'completed') r.received++;
    else r.receive_failures++;
    r.bytes_received += figures.bytes_received;
    const pc = figures.postcopy;
    if (pc !== null && figures.state === 'completed') {
      r.remote_faults += pc.remote_faults;
      r.remote_wait_ms = round3(r.remote_wait_ms + pc.wait_ms);
      r.fault_latency_p50_ms = max(r.fault_latency_p50_ms, pc.fault_latency_p50_ms);
      r.fault_latency_p99_ms = max(r.fault_latency_p99_ms, pc.fault_latency_p99_ms);
      r.fault_latency_max_ms = max(r.fault_latency_max_ms, pc.fault_latency_max_ms);
    }
  }

  /** The counters now (a copy). */
  report(): MigrationStatsReport {
    return { ...this.#report };
  }
}
