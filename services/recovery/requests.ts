/**
 * The memory-error requests of the control API (POST /vms/{name}/memory-errors) and tools/inject:
 * one injection, or a random campaign. services/host routes them here.
 */
import { CORRUPTION_PATTERNS } from './deps.ts';
import type { CorruptionPattern } from './deps.ts';
import type { MemoryErrorService, MemoryErrorLogEntry, MemoryErrorStats, ReportTiming } from './index.ts';

/** The body of POST /vms/{name}/memory-errors (snake case, as the API's other bodies). */
export interface MemoryErrorRequest {
  /** Guest-physical address (one injection). */
  gpa?: number;
  /** Guest-virtual address, translated with vCPU `vcpu`'s page tables (one injection). */
  gva?: number;
  /** The vCPU of a gva (default 0). */
  vcpu?: number;
  /** Window size, 1 … 64 bits (required for one injection; campaigns: the only size). */
  window_bits?: number;
  /** First bit of the window in its page (default: the address's byte × 8). */
  window_bit_offset?: number;
  /** Default 'flip'. */
  pattern?: CorruptionPattern;
  /** Default 'on-access' (campaigns: half each unless given). */
  report?: ReportTiming;
  /** Campaign: injections per million guest instructions, from now on (with seed, count). */
  rate?: number;
  /** Seed of the random picks (default 1). */
  seed?: number;
  /** With rate: stop after this many; without rate: inject this many random errors now. */
  count?: number;
}

/** JSON Schema of MemoryErrorRequest (checked by the API before anything runs). */
export const MEMORY_ERROR_REQUEST_SCHEMA = {
  type: 'object', additionalProperties: false,
  properties: {
    gpa: { type: 'integer', minimum: 0, maximum: 0xffff_ffff },
    gva: { type: 'integer', minimum: 0, maximum: 0xffff_ffff },
    vcpu: { type: 'integer', minimum: 0, maximum: 255 },
    window_bits: { type: 'integer', minimum: 1, maximum: 64 },
    window_bit_offset: { type: 'integer', minimum: 0, maximum: 32767 },
    pattern: { enum: [...CORRUPTION_PATTERNS] },
    report: { enum: ['now', 'on-access'] },
    rate: { type: 'number', exclusiveMinimum: 0, maximum: 1_000_000 },
    seed: { type: 'integer', minimum: 0, maximum: 0xffff_ffff },
    count: { type: 'integer', minimum: 1, maximum: 1_000_000 },
  },
};

/** A campaign a request started. */
export interface CampaignInfo {
  /** Injections per million guest instructions. */
  rate: number;
  /** Seed of its random picks. */
  seed: number;
  /** Injections before it stops, or null (no limit). */
  count: number | null;
}

/** What POST answers: the injections made now (a campaign with a rate makes its own later). */
export interface MemoryErrorResponse {
  /** The log entries of the injections made now. */
  injected: MemoryErrorLogEntry[];
  /** The campaign started, or null. */
  campaign: CampaignInfo | null;
  /** The VM's counters after the request. */
  stats: MemoryErrorStats;
}

/** What GET answers. */
export interface MemoryErrorReportList {
  /** The VM's counters. */
  stats: MemoryErrorStats;
  /** Its reports, oldest first. */
  log: MemoryErrorLogEntry[];
}

/**
 * Applies one request: with `rate`, starts a campaign; with `count` alone, injects that many
 * random errors now; otherwise one injection at gpa or gva (window_bits required). Throws
 * MemoryErrorServiceError for what cannot be done.
 */
export function applyMemoryErrorRequest(service: MemoryErrorService, request: MemoryErrorRequest): MemoryErrorResponse {
  const windowBits = request.window_bits === undefined ? undefined : [request.window_bits];
  if (request.rate !== undefined) {
    const seed = request.seed ?? 1;
    service.startCampaign({ rate: request.rate, seed, count: request.count, windowBits, pattern: request.pattern, report: request.report });
    return { injected: [], campaign: { rate: request.rate, seed, count: request.count ?? null }, stats: service.stats() };
  }
  if (request.count !== undefined && request.gpa === undefined && request.gva === undefined) {
    const injected = service.injectRandom(request.count, { seed: request.seed, windowBits, pattern: request.pattern, report: request.report });
    return { injected, campaign: null, stats: service.stats() };
  }
  const entry = service.inject({
    gpa: request.gpa, gva: request.gva, vcpu: request.vcpu, windowBits: request.window_bits ?? Number.NaN,
    windowBitOffset: request.window_bit_offset, pattern: request.pattern, report: request.report,
  });
  return { injected: [entry], campaign: null, stats: service.stats() };
}

/** Both lists for GET. */
export function memoryErrorReports(service: MemoryErrorService): MemoryErrorReportList {
  return { stats: service.stats(), log: service.log() };
}
