/**
 * ctl — drive a running host (tools/host, or tools/run --api-sock) through its control API
 * (docs/ctl.md, docs/api.md).
 *
 *   npx tsx tools/ctl --api-sock /tmp/bv.sock vms
 *   npx tsx tools/ctl --api-sock /tmp/bv.sock snapshot a /tmp/a.bvs --live --json
 *
 * One command, one HTTP request over the Unix socket (console --follow polls). With --json the
 * API's answer is printed as it is (pretty-printed); otherwise as readable lines and tables.
 * Exit codes: 0 done; 1 the API refused (`error: <fault_message> (HTTP <status>)`), no host
 * answers on the socket, or a file cannot be read; 2 bad usage.
 *
 * Only types come from the host's modules: the client loads no kernel and no native addon.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { BvError } from '../guest-isa/errors.ts';
import { apiRequest, type ApiAnswer } from '../services/host/client.ts';
import type { ConsoleSlice } from '../services/host/console-log.ts';
import type {
  BalloonInfo, BalloonStatistics, HostInfo, MemoryPolicyInfo, MigrationResult, MigrationsInfo, MrcInfo, ReplicasInfo, ReplicationStatus, RestoreResult, SnapshotResult, TaxRateInfo, VmExit, VmInfo,
} from '../services/host/host.ts';
import type { ActiveMemoryStats } from '../services/memory/active.ts';
import type { WorkerGroupInfo } from '../services/host/worker-group.ts';
import type { VmStats } from '../services/host/stats.ts';
import { formatBytes, formatCount, formatTable, parseArguments, parseInteger, runTool, UsageError, type ParsedArguments } from './cli.ts';

const USAGE = 'usage: ctl --api-sock PATH [--json] [--timeout-ms N] <command> [arguments]\n       ctl --help';

/** Options every command takes. */
const COMMON_FLAGS = ['--help', '-h', '--json'] as const;
const COMMON_VALUES = ['--api-sock', '--timeout-ms'] as const;

/** How often `console --follow` polls. */
const FOLLOW_INTERVAL_MS = 100;
const DEFAULT_TIMEOUT_MS = 30_000;

/** What a command is given: its positionals (checked against `operands`), the options, a way to call the API. */
interface Context {
  operands: readonly string[];
  args: ParsedArguments;
  json: boolean;
  call: <T>(method: string, path: string, body?: unknown) => Promise<T>;
  /** Writes to stdout. */
  out: (text: string) => void;
}

interface Command {
  /** The operands, as the usage names them; a trailing `[X]` is optional. */
  operands: readonly string[];
  /** Options of this command besides the common ones. */
  flags?: readonly string[];
  values?: readonly string[];
  /** Those of `values` the command cannot do without. */
  required?: readonly string[];
  /** The line --help shows. */
  help: string;
  run: (context: Context) => Promise<void>;
}

/** `/vms/NAME…` with the name encoded for the path. */
function vmPath(name: string, rest = ''): string {
  return `/vms/${encodeURIComponent(name)}${rest}`;
}

/** Prints `answer` as JSON (with --json) or as `readable` text. */
function show<T>(context: Context, answer: T, readable: (answer: T) => string): void {
  context.out(context.json ? `${JSON.stringify(answer, null, 2)}\n` : readable(answer));
}

/** Label/value rows, left-aligned. */
function fields(rows: readonly (readonly [string, string])[]): string {
  return formatTable(rows, { rightAligned: [false, false] });
}

function formatMs(ms: number): string {
  if (ms < 1000) return `${Math.round(ms * 1000) / 1000} ms`;
  if (ms < 120_000) return `${(ms / 1000).toFixed(1)} s`;
  const minutes = Math.floor(ms / 60_000);
  if (minutes < 120) return `${minutes} min ${Math.floor((ms % 60_000) / 1000)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

/** A short exit reason for tables (`exit 0`, `guest error: …`). */
function exitText(exit: VmExit | null): string {
  if (exit === null) return '-';
  return exit.kind === 'halted' ? `exit ${exit.exit_code}` : `${exit.kind}: ${exit.message}`;
}

function stateText(vm: VmInfo): string {
  return vm.waiting_for_input ? `${vm.state} (waiting for input)` : vm.state;
}

function originText(vm: VmInfo): string {
  const origin = vm.origin;
  switch (origin.kind) {
    case 'image': return `image ${origin.image}`;
    case 'checkpoint': return `checkpoint ${origin.path} (${origin.mode} restore)`;
    case 'fork': return `fork of ${origin.parent}`;
    case 'migration': return `migrated in from ${origin.from}`;
    case 'replica': return `failed over from ${origin.from} (replica epoch ${origin.epoch})`;
  }
}

function formatVmInfo(vm: VmInfo): string {
  const { config } = vm;
  const snapshot = vm.snapshot === null ? '-' : `${vm.snapshot.path} (${vm.snapshot.live ? 'live, ' : ''}${formatCount(vm.snapshot.pages_saved)} of ${formatCount(vm.snapshot.page_count)} pages saved)`;
  return fields([
    ['name', vm.name],
    ['state', stateText(vm)],
    ['origin', originText(vm)],
    ['memory', `${config.memory_mib} MiB`],
    ['vcpus', String(config.vcpus)],
    ['boot args', config.boot_args === '' ? '-' : config.boot_args],
    ['mmu', `${config.mmu}, large pages ${config.large_pages}`],
    ['tier', config.tier],
    ['disk', config.disk ?? '-'],
    ['instructions', formatCount(vm.instructions)],
    ['exit', vm.exit === null ? '-' : exitText(vm.exit)],
    ['console', `${formatCount(vm.console_bytes)} bytes`],
    ['snapshot', snapshot],
    ['age', formatMs(vm.age_ms)],
  ]);
}

function formatVmList({ vms }: { vms: VmInfo[] }): string {
  if (vms.length === 0) return 'no VMs\n';
  const rows = [['NAME', 'STATE', 'INSTRUCTIONS', 'MEMORY', 'EXIT']];
  for (const vm of vms) rows.push([vm.name, stateText(vm), formatCount(vm.instructions), `${vm.config.memory_mib} MiB`, exitText(vm.exit)]);
  return formatTable(rows, { rightAligned: [false, false, true, true, false] });
}

function formatGroups({ worker_groups: groups }: { worker_groups: WorkerGroupInfo[] }): string {
  if (groups.length === 0) return 'no worker groups (the host runs every VM in its own thread)\n';
  const rows = [['GROUP', 'CPUS', 'PINNED', 'THREAD', 'CPU TIME', 'VMS']];
  for (const g of groups) rows.push([g.name, g.cpus.join(','), g.pinned ? 'yes' : 'no', String(g.thread_id), formatMs(g.cpu_ms), g.vms.join(' ') || '-']);
  return formatTable(rows, { rightAligned: [false, false, false, true, true, false] });
}

/** `groups`, or `groups --set-cpus LIST GROUP`: the group comes from --set-cpus's operand form `GROUP=LIST`. */
async function groupsCommand(c: Context): Promise<void> {
  const set = c.args.value('--set-cpus');
  if (set === undefined) {
    show(c, await c.call<{ worker_groups: WorkerGroupInfo[] }>('GET', '/groups'), formatGroups);
    return;
  }
  const match = /^([^=]+)=(\d+(?:,\d+)*)$/.exec(set);
  if (match === null) throw new UsageError(`--set-cpus takes GROUP=CPU[,CPU...], got '${set}'`);
  const cpus = match[2]!.split(',').map((cpu) => parseInteger(cpu, '--set-cpus', 0));
  const group = await c.call<WorkerGroupInfo>('PATCH', `/groups/${encodeURIComponent(match[1]!)}`, { cpus });
  show(c, group, (g) => `worker group ${g.name} on CPUs ${g.cpus.join(',')}\n`);
}

async function migrateCommand(c: Context): Promise<void> {
  const body: Record<string, unknown> = { destination: c.operands[1] };
  const mode = c.args.value('--mode');
  if (mode !== undefined) {
    if (mode !== 'precopy' && mode !== 'postcopy') throw new UsageError(`--mode must be precopy or postcopy, got '${mode}'`);
    body.mode = mode;
  }
  const numbers = [['--downtime-ms', 'downtime_ms'], ['--max-bandwidth', 'max_bandwidth'], ['--timeout-s', 'timeout_s']] as const;
  for (const [flag, field] of numbers) {
    const text = c.args.value(flag);
    if (text !== undefined) body[field] = parseInteger(text, flag, 1);
  }
  show(c, await c.call<MigrationResult>('PUT', vmPath(c.operands[0]!, '/migrate'), body), formatMigration);
}

function formatMigration(result: MigrationResult): string {
  return `migrated VM ${result.name} to ${result.destination}\n` + fields([
    ['total', formatMs(result.total_ms)],
    ['downtime', result.downtime_ms === null ? '-' : formatMs(result.downtime_ms)],
    ['sent', `${formatBytes(result.bytes_sent)} (${formatCount(result.pages_sent)} pages, ${formatCount(result.pages_resent)} re-sent, ${formatCount(result.zero_pages)} zero markers)`],
    ['rounds', `${result.rounds + 1} (switch-over: ${result.switchover_reason ?? '-'}, ${formatCount(result.final_pages)} pages while paused)`],
    ['bandwidth', `${result.bandwidth_mib_s} MiB/s`],
    ['auto-converge', result.auto_converged ? `yes, guest throttled up to ${Math.round(result.throttle * 100)} %` : 'no'],
    ...(result.postcopy === null ? [] : [
      ['post-copy', `${formatCount(result.postcopy.remote_pages)} pages left remote at the switch-over, ${formatCount(result.postcopy.remote_faults)} remote faults` +
        `${result.postcopy.fault_latency_p50_ms === null ? '' : ` (latency p50 ${formatMs(result.postcopy.fault_latency_p50_ms)}, p99 ${formatMs(result.postcopy.fault_latency_p99_ms ?? 0)})`}` +
        `, all in ${formatMs(result.postcopy.push_ms)} after the switch-over${result.resumptions > 0 ? `, ${result.resumptions} resumption(s)` : ''}`] as [string, string],
    ]),
  ]);
}

function formatMigrations(info: MigrationsInfo): string {
  const lines = [`receiving: ${info.listening === null ? 'no' : `${info.listening} (${info.secure ? 'mutual TLS' : 'insecure'})`}\n`];
  for (const m of info.outgoing) lines.push(`out ${m.name} -> ${m.destination}: ${m.state}${m.error === null ? `, ${formatMs(m.total_ms)}, downtime ${m.downtime_ms === null ? '-' : formatMs(m.downtime_ms)}` : `: ${m.error}`}\n`);
  for (const m of info.incoming) lines.push(`in ${m.vm ?? '?'}: ${m.state}, ${formatCount(m.pages_received)} pages${m.error === null ? '' : `: ${m.error}`}\n`);
  for (const r of info.refused) lines.push(`refused ${r.remote}: ${r.message}\n`);
  return lines.join('');
}

function formatReplication(r: ReplicationStatus): string {
  return `VM ${r.name} -> ${r.destination}: ${r.state}${r.error === null ? '' : ` (${r.error})`}\n` + fields([
    ['interval', `${formatMs(r.interval_ms)}${r.output_commit ? ', output commit' : ''}`],
    ['committed epoch', r.committed_epoch === null ? '-' : `${r.committed_epoch} (${r.age_ms === null ? '-' : formatMs(r.age_ms)} old, at ${formatCount(r.committed_instructions ?? 0)} instructions)`],
    ['epochs', `${formatCount(r.epochs)} (${r.epochs_per_second}/s)`],
    ['per epoch', `${formatBytes(r.last_epoch_bytes)} last (${formatCount(r.last_epoch_pages)} pages), ${formatBytes(r.mean_epoch_bytes)} mean`],
    ['pause', `${formatMs(r.last_pause_ms)} last, ${formatMs(r.max_pause_ms)} longest`],
  ]);
}

function formatReplicas(info: ReplicasInfo): string {
  const lines = [`receiving: ${info.listening ?? 'no'}\n`];
  for (const r of info.replicas) {
    lines.push(`${r.name ?? '?'} from ${r.from}: ${r.state}, epoch ${r.committed_epoch ?? '-'}${r.age_ms === null ? '' : ` (${formatMs(r.age_ms)} old)`}, ` +
      `${formatCount(r.epochs)} epochs (${r.epochs_dropped} dropped), ${formatBytes(r.last_epoch_bytes)} last epoch${r.error === null ? '' : `: ${r.error}`}\n`);
  }
  return lines.join('');
}

function formatHostInfo(host: HostInfo): string {
  return fields([
    ['pool', `${formatBytes(host.pool_bytes)} (${formatCount(host.frames_total)} frames)`],
    ['frames used', `${formatCount(host.frames_used)} (${formatBytes(host.frames_used * 4096)})`],
    ['frames free', formatCount(host.frames_free)],
    ['rss', formatBytes(host.rss_bytes)],
    ['uptime', formatMs(host.uptime_ms)],
    ['vms', `${host.vm_count} (${host.vms_running} running, ${host.vms_paused} paused, ${host.vms_stopped} stopped)`],
    ['scheduling', `slices of ${formatCount(host.slice_instructions)} instructions, quantum ${formatCount(host.quantum)}`],
    ['worker groups', host.worker_groups.length === 0 ? '-' : host.worker_groups.map((g) => `${g.name} (CPUs ${g.cpus.join(',')}: ${g.vms.join(' ') || 'no VMs'})`).join('; ')],
  ]);
}

/** A counter for people: byte counts as sizes, other numbers grouped, the rest as JSON. */
function counterText(key: string, value: unknown): string {
  if (typeof value === 'number') return /bytes/.test(key) ? formatBytes(value) : formatCount(value);
  if (typeof value === 'string') return value;
  return JSON.stringify(value);
}

/**
 * A stats object (GET /vms/{name}/stats, /host/stats) for people, whatever keys it has: top-level
 * numbers first, then each section as indented rows (nested objects as `a.b`), arrays of
 * objects (the vCPUs) as a table. Keys are only ever added to the stats, never renamed.
 */
function formatCounters(stats: object): string {
  const top: [string, string][] = [];
  const sections: string[] = [];
  for (const [key, value] of Object.entries(stats)) {
    const title = key.replaceAll('_', ' ');
    if (Array.isArray(value) && value.every((item) => typeof item === 'object' && item !== null)) {
      const columns = [...new Set(value.flatMap((item: object) => Object.keys(item)))];
      const rows = [columns.map((c) => c.replaceAll('_', ' ')), ...value.map((item: Record<string, unknown>) => columns.map((c) => counterText(c, item[c])))];
      sections.push(`${title}\n${formatTable(rows, { indent: '  ' })}`);
    } else if (typeof value === 'object' && value !== null && !Array.isArray(value)) {
      const rows = flatten(value as Record<string, unknown>, '');
      sections.push(`${title}\n${rows.length === 0 ? '  (none)\n' : formatTable(rows, { indent: '  ', rightAligned: [false, true] })}`);
    } else {
      top.push([title, counterText(key, value)]);
    }
  }
  return (top.length > 0 ? formatTable(top, { rightAligned: [false, true] }) : '') + sections.join('');
}

function flatten(object: Record<string, unknown>, prefix: string): [string, string][] {
  return Object.entries(object).flatMap(([key, value]): [string, string][] => {
    const label = `${prefix}${key.replaceAll('_', ' ')}`;
    if (typeof value === 'object' && value !== null && !Array.isArray(value)) return flatten(value as Record<string, unknown>, `${label}.`);
    return [[label, counterText(key, value)]];
  });
}

function formatSnapshot(result: SnapshotResult): string {
  const rows: [string, string][] = [
    ['path', result.path],
    ['file', `${formatBytes(result.file_bytes)} (${formatCount(result.pages_stored)} pages stored, ${formatCount(result.zero_pages)} zero)`],
    ['kind', result.live ? 'live' : 'stop-the-world'],
    ['guest paused', formatMs(result.pause_ms)],
    ['complete in', formatMs(result.duration_ms)],
  ];
  if (result.live) {
    rows.push(['pages saved', `${formatCount(result.saved_by_writes ?? 0)} before a guest write, ${formatCount(result.saved_in_background ?? 0)} in the background`]);
  }
  return fields(rows);
}

function formatRestore(result: RestoreResult): string {
  const { restore } = result;
  return `restored VM ${result.name} (${stateText(result)}): ${restore.mode} restore of ${formatCount(restore.stored_pages)} stored pages, ` +
    `ready in ${formatMs(restore.ready_ms)}${restore.complete ? '' : ', the rest loads on demand'}\n`;
}

function pagesText(mib: number, pages: number): string {
  return `${formatCount(mib)} MiB (${formatCount(pages)} pages)`;
}

function formatBalloon(balloon: BalloonInfo): string {
  return fields([
    ['target', pagesText(balloon.target_mib, balloon.target_pages)],
    ['actual', pagesText(balloon.actual_mib, balloon.actual_pages)],
    ['deflate on oom', balloon.deflate_on_oom ? 'yes' : 'no'],
    ['free page reporting', balloon.free_page_reporting ? 'yes' : 'no'],
    ['statistics', balloon.stats_polling_interval_s === 0 ? 'off' : `every ${balloon.stats_polling_interval_s} s`],
  ]);
}

/** Figures of GET /vms/VM/balloon/statistics that are bytes (the rest are counts, or pages with the _pages suffix). */
const BALLOON_BYTE_FIGURES = /_memory$|^swap_(in|out)$|^disk_caches$/;

function formatBalloonStatistics(stats: BalloonStatistics): string {
  const rows: [string, string][] = [
    ['target', pagesText(stats.target_mib, stats.target_pages)],
    ['actual', pagesText(stats.actual_mib, stats.actual_pages)],
  ];
  for (const [key, value] of Object.entries(stats)) {
    if (/_(pages|mib)$/.test(key) || key === 'updates' || key === 'age_ms' || typeof value !== 'number') continue;
    rows.push([key.replaceAll('_', ' '), BALLOON_BYTE_FIGURES.test(key) ? formatBytes(value) : formatCount(value)]);
  }
  rows.push(['updates', stats.updates === 0 ? 'none yet' : `${formatCount(stats.updates)}, the last ${formatMs(stats.age_ms ?? 0)} ago`]);
  return fields(rows);
}

/** Shows (or with --set / --deflate-on-oom first changes) a VM's balloon; --stats shows the guest's statistics. */
async function balloonCommand(context: Context): Promise<void> {
  const [name] = context.operands as [string];
  const update: Record<string, unknown> = {};
  const set = context.args.value('--set');
  if (set !== undefined) update['amount_mib'] = parseInteger(set, '--set');
  const deflate = context.args.value('--deflate-on-oom');
  if (deflate !== undefined) {
    if (deflate !== 'true' && deflate !== 'false') throw new UsageError(`--deflate-on-oom must be true or false, got '${deflate}'`);
    update['deflate_on_oom'] = deflate === 'true';
  }
  const changed = Object.keys(update).length > 0 ? await context.call<BalloonInfo>('PATCH', vmPath(name, '/balloon'), update) : null;
  if (context.args.flag('--stats')) {
    show(context, await context.call<BalloonStatistics>('GET', vmPath(name, '/balloon/statistics')), formatBalloonStatistics);
    return;
  }
  show(context, changed ?? await context.call<BalloonInfo>('GET', vmPath(name, '/balloon')), formatBalloon);
}

const percent = (fraction: number | null): string => (fraction === null ? '-' : `${(fraction * 100).toFixed(1)} %`);

function formatMemoryPolicy(policy: MemoryPolicyInfo): string {
  return fields([
    ['shares', formatCount(policy.shares)],
    ['reservation', `${formatCount(policy.reservation_mib)} MiB`],
    ['limit', policy.limit_mib === null ? 'none' : `${formatCount(policy.limit_mib)} MiB`],
    ['frames held', `${formatCount(policy.frames_held)} (${formatBytes(policy.frames_held * 4096)})`],
    ['active', policy.active_pages === null ? 'not sampled' : `${formatCount(policy.active_pages)} pages, ${percent(policy.active_fraction)} of the frames held`],
    ['tax rate', policy.tax_rate === null ? 'no memory scheduler' : String(policy.tax_rate)],
    ['shares per page (ρ)', policy.shares_per_page === null ? '-' : policy.shares_per_page.toPrecision(4)],
  ]);
}

/** Shows (or with --shares / --reservation / --limit first changes) a VM's memory policy. */
async function memoryPolicyCommand(context: Context): Promise<void> {
  const [name] = context.operands as [string];
  const update: Record<string, unknown> = {};
  const shares = context.args.value('--shares');
  if (shares !== undefined) update['shares'] = parseInteger(shares, '--shares');
  const reservation = context.args.value('--reservation');
  if (reservation !== undefined) update['reservation_mib'] = parseInteger(reservation, '--reservation');
  const limit = context.args.value('--limit');
  if (limit !== undefined) update['limit_mib'] = limit === 'none' ? null : parseInteger(limit, '--limit');
  const answer = Object.keys(update).length > 0
    ? await context.call<MemoryPolicyInfo>('PATCH', vmPath(name, '/memory-policy'), update)
    : await context.call<MemoryPolicyInfo>('GET', vmPath(name, '/memory-policy'));
  show(context, answer, formatMemoryPolicy);
}

function formatActiveMemory(stats: ActiveMemoryStats): string {
  const recent = stats.recent_samples.slice(-8).map((sample) => `${sample.touched}/${sample.sampled}`).join(' ');
  return fields([
    ['estimate', `${percent(stats.estimate)} (${formatCount(stats.active_pages)} of ${formatCount(stats.guest_pages)} pages)`],
    ['fast, slow', `${percent(stats.fast)}, ${percent(stats.slow)}`],
    ['periods', `${formatCount(stats.periods)} of ${formatCount(stats.period_instructions)} instructions, ${stats.pages_per_period} pages each`],
    ['recent (touched/sampled)', recent === '' ? '-' : recent],
  ]);
}

function formatMrc(info: MrcInfo): string {
  const { curve, recommended } = info;
  const rows = [['MiB', 'MISS RATIO']];
  // About a dozen points from the curve, the last one included.
  const step = Math.max(1, Math.ceil(curve.sizes_mib.length / 12));
  curve.sizes_mib.forEach((mib, i) => {
    if (i % step === 0 || i === curve.sizes_mib.length - 1) rows.push([mib.toFixed(2), curve.miss_ratio[i]!.toFixed(4)]);
  });
  return `${fields([
    ['references', `${formatCount(Math.round(curve.references))} (sampled ${formatCount(curve.sampled_pages)} pages at ${curve.rate * 100} %)`],
    ['floor', curve.floor.toFixed(4)],
    ['recommended', `${recommended.mib} MiB (${formatCount(recommended.pages)} pages): miss ratio within ${recommended.within} of the floor`],
  ])}${formatTable(rows, { rightAligned: [true, true] })}`;
}

/** Shows a VM's miss-rate curve; --size makes the recommended size its limit. */
async function mrcCommand(context: Context): Promise<void> {
  const [name] = context.operands as [string];
  const withinText = context.args.value('--within');
  const within = withinText === undefined ? 0.05 : Number(withinText);
  if (withinText !== undefined && !(within > 0 && within <= 1)) throw new UsageError(`--within must be a number above 0 and at most 1, got '${withinText}'`);
  if (context.args.flag('--size')) {
    show(context, await context.call<MemoryPolicyInfo>('POST', vmPath(name, '/mrc/size'), { within }), formatMemoryPolicy);
    return;
  }
  show(context, await context.call<MrcInfo>('GET', vmPath(name, `/mrc?within=${within}`)), formatMrc);
}

/** Reads console output from `offset`; with `follow`, keeps reading until the VM stops. */
async function consoleCommand(context: Context): Promise<void> {
  const [name] = context.operands as [string];
  const follow = context.args.flag('--follow');
  if (follow && context.json) throw new UsageError('console: --follow prints the output as it comes; it does not combine with --json');
  const offsetText = context.args.value('--offset');
  let offset = offsetText === undefined ? 0 : parseInteger(offsetText, '--offset');
  const read = async (): Promise<ConsoleSlice> => {
    const slice = await context.call<ConsoleSlice>('GET', vmPath(name, `/console?offset=${offset}`));
    if (slice.dropped_bytes > 0) {
      process.stderr.write(`ctl: ${formatCount(slice.dropped_bytes)} bytes of console output from offset ${offset} are no longer held by the host\n`);
    }
    offset = slice.next_offset;
    return slice;
  };
  if (!follow) {
    const slice = await read();
    context.out(context.json ? `${JSON.stringify(slice, null, 2)}\n` : slice.data);
    return;
  }
  for (;;) {
    const slice = await read();
    context.out(slice.data);
    if (slice.data !== '') continue; // more may be waiting: read again at once
    // Caught up: the VM's state says whether more can come. Output written before it stopped
    // is read by one more pass after the state says Stopped.
    const info = await context.call<VmInfo>('GET', vmPath(name));
    if (info.state === 'Stopped') {
      let last: ConsoleSlice;
      do context.out((last = await read()).data);
      while (last.data !== '');
      return;
    }
    await new Promise((done) => setTimeout(done, FOLLOW_INTERVAL_MS));
  }
}

async function inputCommand(context: Context): Promise<void> {
  const [name, text] = context.operands as [string, string | undefined];
  const eof = context.args.flag('--eof');
  if (text === undefined && !eof) throw new UsageError('input: give the TEXT to send, --eof, or both');
  // `-` sends standard input (to its end).
  const data = text === '-' ? readFileSync(0, 'utf8') : text ?? '';
  await context.call<undefined>('PUT', vmPath(name, '/console'), { data, eof });
  if (!context.json) {
    const bytes = Buffer.byteLength(data);
    context.out(`sent ${formatCount(bytes)} byte${bytes === 1 ? '' : 's'} to ${name}${eof ? '; its console input is closed' : ''}\n`);
  }
}

async function createCommand(context: Context): Promise<void> {
  const [file] = context.operands as [string];
  let config: unknown;
  try {
    config = JSON.parse(readFileSync(file, 'utf8'));
  } catch (error) {
    if (error instanceof SyntaxError) throw new CtlError(`${file}: not JSON: ${error.message}`);
    throw error;
  }
  if (typeof config !== 'object' || config === null || Array.isArray(config)) throw new CtlError(`${file}: a VM configuration is a JSON object`);
  const name = (config as { name?: unknown }).name;
  if (typeof name !== 'string' || name === '') throw new CtlError(`${file}: the configuration has no "name" (a string): it names the VM`);
  // Paths in the configuration (image, disk) are sent as written: the host reads them from its
  // own working directory, as Firecracker does.
  show(context, await context.call<VmInfo>('PUT', vmPath(name), config), (vm) => `created VM ${vm.name} (${stateText(vm)})\n`);
}

/** Operands a command needs: `VM`, `PATH`…; `[X]` is optional. */
function checkOperands(name: string, command: Command, operands: readonly string[]): void {
  const required = command.operands.filter((o) => !o.startsWith('[')).length;
  if (operands.length < required) throw new UsageError(`${name}: missing ${command.operands[operands.length]}`);
  if (operands.length > command.operands.length) throw new UsageError(`${name}: unexpected argument '${operands[command.operands.length]}'`);
}

const COMMANDS: Readonly<Record<string, Command>> = {
  host: {
    operands: [], help: 'the host: pool, frames, RSS, uptime, VM counts (GET /host)',
    run: async (c) => show(c, await c.call<HostInfo>('GET', '/host'), formatHostInfo),
  },
  'host-stats': {
    operands: [], help: 'host-wide counters: pool, decode cache, shootdowns (GET /host/stats)',
    run: async (c) => show(c, await c.call<object>('GET', '/host/stats'), formatCounters),
  },
  vms: {
    operands: [], help: 'every VM: name, state, instructions, memory, exit (GET /vms)',
    run: async (c) => show(c, await c.call<{ vms: VmInfo[] }>('GET', '/vms'), formatVmList),
  },
  info: {
    operands: ['VM'], help: 'one VM: state, origin, configuration, instructions, exit (GET /vms/VM)',
    run: async (c) => show(c, await c.call<VmInfo>('GET', vmPath(c.operands[0]!)), formatVmInfo),
  },
  tier: {
    operands: ['VM', 'TIER'], help: 'switch VM\'s execution tier to interp or jit; it takes effect at its next slice (PATCH /vms/VM/tier)',
    run: async (c) => show(c, await c.call<VmInfo>('PATCH', vmPath(c.operands[0]!, '/tier'), { tier: c.operands[1] }),
      (vm) => `VM ${vm.name} runs in the ${vm.config.tier} tier\n`),
  },
  pause: {
    operands: ['VM'], help: 'pause a running VM (PATCH /vms/VM {"state": "Paused"})',
    run: async (c) => show(c, await c.call<VmInfo>('PATCH', vmPath(c.operands[0]!), { state: 'Paused' }),
      (vm) => `VM ${vm.name} paused at instruction ${formatCount(vm.instructions)}\n`),
  },
  resume: {
    operands: ['VM'], help: 'resume a paused VM (PATCH /vms/VM {"state": "Resumed"})',
    run: async (c) => show(c, await c.call<VmInfo>('PATCH', vmPath(c.operands[0]!), { state: 'Resumed' }),
      (vm) => `VM ${vm.name} resumed at instruction ${formatCount(vm.instructions)}\n`),
  },
  snapshot: {
    operands: ['VM', 'PATH'], flags: ['--live'],
    help: 'save a checkpoint of VM at PATH; --live keeps the guest running while it is written (PUT /vms/VM/snapshot)',
    // PATH is made absolute here: the host may run in another directory.
    run: async (c) => show(c, await c.call<SnapshotResult>('PUT', vmPath(c.operands[0]!, '/snapshot'), { path: resolve(c.operands[1]!), live: c.args.flag('--live') }), formatSnapshot),
  },
  restore: {
    operands: ['PATH'], flags: ['--paused'], values: ['--name', '--mode', '--group'],
    help: 'a new VM from a checkpoint, named N (default: its saved name), restored lazily (default), eagerly or mapped, in --group G (default: the host\'s thread) (PUT /vms/restore)',
    run: async (c) => {
      const mode = c.args.value('--mode');
      if (mode !== undefined && !['lazy', 'eager', 'map'].includes(mode)) throw new UsageError(`--mode must be lazy, eager or map, got '${mode}'`);
      const body: Record<string, unknown> = { path: resolve(c.operands[0]!), paused: c.args.flag('--paused') };
      if (c.args.value('--name') !== undefined) body['name'] = c.args.value('--name');
      if (mode !== undefined) body['mode'] = mode;
      if (c.args.value('--group') !== undefined) body['group'] = c.args.value('--group');
      show(c, await c.call<RestoreResult>('PUT', '/vms/restore', body), formatRestore);
    },
  },
  fork: {
    operands: ['VM'], flags: ['--paused'], values: ['--name'], required: ['--name'],
    help: 'a copy-on-write child of VM, named N, running unless --paused (PUT /vms/VM/fork)',
    run: async (c) => {
      show(c, await c.call<VmInfo>('PUT', vmPath(c.operands[0]!, '/fork'), { name: c.args.value('--name'), paused: c.args.flag('--paused') }),
        (vm) => `forked VM ${vm.name} from ${c.operands[0]} (${stateText(vm)})\n`);
    },
  },
  stats: {
    operands: ['VM'], help: 'every counter of a VM, as tools/run --stats has them (GET /vms/VM/stats)',
    run: async (c) => show(c, await c.call<VmStats>('GET', vmPath(c.operands[0]!, '/stats')), formatCounters),
  },
  console: {
    operands: ['VM'], flags: ['--follow'], values: ['--offset'],
    help: 'what VM printed, from --offset N (default 0); --follow keeps printing until it stops (GET /vms/VM/console)',
    run: consoleCommand,
  },
  input: {
    operands: ['VM', '[TEXT]'], flags: ['--eof'],
    help: 'send TEXT (`-`: standard input) to VM\'s console; --eof then closes its input (PUT /vms/VM/console)',
    run: inputCommand,
  },
  balloon: {
    operands: ['VM'], flags: ['--stats'], values: ['--set', '--deflate-on-oom'],
    help: 'VM\'s balloon: target and actual (GET /vms/VM/balloon); --set MIB and --deflate-on-oom change it first (PATCH); --stats shows the guest\'s statistics instead (GET /vms/VM/balloon/statistics)',
    run: balloonCommand,
  },
  'memory-policy': {
    operands: ['VM'], values: ['--shares', '--reservation', '--limit'],
    help: 'VM\'s shares, reservation, limit, active fraction and ρ (GET /vms/VM/memory-policy); --shares N, --reservation MIB, --limit MIB|none change them first (PATCH)',
    run: memoryPolicyCommand,
  },
  'active-memory': {
    operands: ['VM'], help: 'VM\'s sampled active memory: the estimate, its averages and recent samples (GET /vms/VM/active-memory)',
    run: async (c) => show(c, await c.call<ActiveMemoryStats>('GET', vmPath(c.operands[0]!, '/active-memory')), formatActiveMemory),
  },
  mrc: {
    operands: ['VM'], flags: ['--size'], values: ['--within'],
    help: 'VM\'s miss-rate curve and the size within --within X (default 0.05) of its floor (GET /vms/VM/mrc); --size makes that size its limit (POST /vms/VM/mrc/size)',
    run: mrcCommand,
  },
  'tax-rate': {
    operands: ['RATE'], help: 'set the host\'s idle memory tax rate, 0 … 0.99 (PATCH /host/reclaim)',
    run: async (c) => {
      const rate = Number(c.operands[0]);
      if (!/^\d*\.?\d+$/.test(c.operands[0]!) || !(rate >= 0 && rate <= 0.99)) throw new UsageError(`RATE must be a number from 0 to 0.99, got '${c.operands[0]}'`);
      show(c, await c.call<TaxRateInfo>('PATCH', '/host/reclaim', { tax_rate: rate }), (r) => `idle memory tax rate ${r.tax_rate}\n`);
    },
  },
  create: {
    operands: ['CONFIG.json'], help: 'create and boot a VM from a configuration file; its "name" names the VM (PUT /vms/NAME)',
    run: createCommand,
  },
  migrate: {
    operands: ['VM', 'DESTINATION'], values: ['--mode', '--downtime-ms', '--max-bandwidth', '--timeout-s'],
    help: 'move VM to the host receiving migrations at DESTINATION (host:port) while it runs; --mode precopy (default) or postcopy (again after a failed post-copy: resumes it), --downtime-ms N (300), --max-bandwidth BYTES/S, --timeout-s N (PUT /vms/VM/migrate)',
    run: migrateCommand,
  },
  'receive-migrations': {
    operands: ['LISTEN'], help: 'receive migrations on LISTEN (host:port; port 0: any free one) (PUT /migrations/receive)',
    run: async (c) => show(c, await c.call<MigrationsInfo>('PUT', '/migrations/receive', { listen: c.operands[0] }),
      (info) => `receiving migrations on ${info.listening} (${info.secure ? 'mutual TLS' : 'insecure plain TCP'})\n`),
  },
  migrations: {
    operands: [], help: 'incoming and outgoing migrations and refused peers (GET /migrations)',
    run: async (c) => show(c, await c.call<MigrationsInfo>('GET', '/migrations'), formatMigrations),
  },
  replicate: {
    operands: ['VM', 'DESTINATION'], values: ['--interval-ms'], flags: ['--output-commit'],
    help: 'replicate VM to the backup host receiving migrations at DESTINATION (host:port) in epochs every --interval-ms N (100); --output-commit: console output is shown only once its epoch is at the backup; returns once the backup holds a whole copy (PUT /vms/VM/replicate)',
    run: async (c) => {
      const body: Record<string, unknown> = { destination: c.operands[1] };
      const interval = c.args.value('--interval-ms');
      if (interval !== undefined) body.interval_ms = parseInteger(interval, '--interval-ms', 1);
      if (c.args.flag('--output-commit')) body.output_commit = true;
      show(c, await c.call<ReplicationStatus>('PUT', vmPath(c.operands[0]!, '/replicate'), body), formatReplication);
    },
  },
  replication: {
    operands: ['VM'], help: "VM's replication to its backup: last committed epoch, its age, bytes per epoch (GET /vms/VM/replication)",
    run: async (c) => show(c, await c.call<ReplicationStatus>('GET', vmPath(c.operands[0]!, '/replication')), formatReplication),
  },
  'stop-replication': {
    operands: ['VM'], help: 'end the replication of VM after the epoch in flight (DELETE /vms/VM/replicate)',
    run: async (c) => show(c, await c.call<ReplicationStatus>('DELETE', vmPath(c.operands[0]!, '/replicate')), formatReplication),
  },
  replicas: {
    operands: [], help: 'replicas this backup host holds: last complete epoch, its age, bytes per epoch (GET /replicas)',
    run: async (c) => show(c, await c.call<ReplicasInfo>('GET', '/replicas'), formatReplicas),
  },
  activate: {
    operands: ['VM'], help: "failover: run VM on this backup host from its replica's last complete epoch (POST /replicas/VM/activate)",
    run: async (c) => show(c, await c.call<VmInfo>('POST', `/replicas/${encodeURIComponent(c.operands[0]!)}/activate`), (vm) => `activated VM ${vm.name} (${originText(vm)})\n`),
  },
  'power-loss': {
    operands: ['BATTERY_MS'],
    help: 'a power-loss notice: pause every VM, then save persistent memory to the HA partner and flush replicated logs within BATTERY_MS (POST /host/power-loss)',
    run: async (c) => show(c, await c.call<object>('POST', '/host/power-loss', { battery_ms: parseInteger(c.operands[0]!, 'BATTERY_MS', 0) }), formatCounters),
  },
  'pmem-ha': {
    operands: [], flags: ['--sync'],
    help: 'persistent-memory HA: the partner this host saves to and what it receives (GET /host/pmem-ha); --sync: save to the partner now (POST /host/pmem-ha/sync)',
    run: async (c) => show(c, c.args.flag('--sync') ? await c.call<object>('POST', '/host/pmem-ha/sync') : await c.call<object>('GET', '/host/pmem-ha'), formatCounters),
  },
  groups: {
    operands: [], values: ['--set-cpus'],
    help: 'the worker groups: CPUs, thread, CPU time, VMs (GET /groups); --set-cpus GROUP=0,1 moves a group to other CPUs instead (PATCH /groups/GROUP)',
    run: groupsCommand,
  },
  placement: {
    operands: [], help: 'power-aware placement of the worker groups: demands, CPUs, decisions, idle residency (GET /host/placement)',
    run: async (c) => show(c, await c.call<object>('GET', '/host/placement'), formatCounters),
  },
  channels: {
    operands: [], help: 'the partition bus\'s channels: service, ends, agreed version, state, packets each way (GET /channels)',
    run: async (c) => show(c, await c.call<object>('GET', '/channels'), formatCounters),
  },
  channel: {
    operands: ['NAME'], flags: ['--rescind'],
    help: 'one channel, both ends (GET /channels/NAME); --rescind withdraws it from its VMs at once (DELETE /channels/NAME)',
    run: async (c) => {
      const path = `/channels/${encodeURIComponent(c.operands[0]!)}`;
      if (!c.args.flag('--rescind')) return show(c, await c.call<object>('GET', path), formatCounters);
      await c.call<undefined>('DELETE', path);
      if (!c.json) c.out(`rescinded channel ${c.operands[0]}\n`);
    },
  },
  storage: {
    operands: [], values: ['--threshold-ms'], flags: ['--uncontrolled', '--controlled'],
    help: 'PARDA IO control: window, latency, IOPS, the other hosts (GET /host/storage); --threshold-ms X sets the latency threshold, --uncontrolled / --controlled turn the control off or on (PATCH /host/storage)',
    run: async (c) => {
      const body: Record<string, unknown> = {};
      const threshold = c.args.value('--threshold-ms');
      if (threshold !== undefined) {
        const value = Number(threshold);
        if (!/^\d*\.?\d+$/.test(threshold) || !(value > 0)) throw new UsageError(`--threshold-ms must be a positive number, got '${threshold}'`);
        body.latency_threshold_ms = value;
      }
      if (c.args.flag('--uncontrolled') && c.args.flag('--controlled')) throw new UsageError('--uncontrolled and --controlled exclude each other');
      if (c.args.flag('--uncontrolled')) body.control = false;
      if (c.args.flag('--controlled')) body.control = true;
      show(c, Object.keys(body).length === 0 ? await c.call<object>('GET', '/host/storage') : await c.call<object>('PATCH', '/host/storage', body), formatCounters);
    },
  },
  'io-shares': {
    operands: ['VM', 'SHARES'], help: "set VM's IO shares: its part of the host's PARDA window (PATCH /vms/VM)",
    run: async (c) => {
      const shares = parseInteger(c.operands[1]!, 'SHARES', 1);
      show(c, await c.call<VmInfo>('PATCH', vmPath(c.operands[0]!), { io_shares: shares }), (vm) => `VM ${vm.name}: io shares ${shares}\n`);
    },
  },
  'log-replication': {
    operands: ['VM'], help: "VM's persistent-memory log replication: destinations, records shipped and acknowledged, lag (GET /vms/VM/log-replication)",
    run: async (c) => show(c, await c.call<object>('GET', vmPath(c.operands[0]!, '/log-replication')), formatCounters),
  },
  'log-replicas': {
    operands: [], help: 'replicated persistent-memory logs this host receives (GET /log-replicas)',
    run: async (c) => show(c, await c.call<object>('GET', '/log-replicas'), formatCounters),
  },
  'release-log-replica': {
    operands: ['VM'], help: "stop receiving VM's replicated log and close its file, so a VM can be started on it (DELETE /log-replicas/VM)",
    run: async (c) => show(c, await c.call<object>('DELETE', `/log-replicas/${encodeURIComponent(c.operands[0]!)}`), formatCounters),
  },
  delete: {
    operands: ['VM'], help: 'stop a VM and free its memory (DELETE /vms/VM)',
    run: async (c) => {
      await c.call<undefined>('DELETE', vmPath(c.operands[0]!));
      if (!c.json) c.out(`deleted VM ${c.operands[0]}\n`);
    },
  },
};

/** How --help names the values of the commands' options. */
const VALUE_NAMES: Readonly<Record<string, string>> = {
  '--name': 'N', '--mode': 'lazy|eager|map', '--offset': 'N', '--set': 'MIB', '--deflate-on-oom': 'true|false',
  '--shares': 'N', '--reservation': 'MIB', '--limit': 'MIB|none', '--within': 'X', '--interval-ms': 'N', '--threshold-ms': 'MS',
};

/** Every option any command takes (for the parser; each command then refuses the others). */
const ALL_FLAGS = [...COMMON_FLAGS, ...Object.values(COMMANDS).flatMap((c) => c.flags ?? [])];
const ALL_VALUES = [...COMMON_VALUES, ...Object.values(COMMANDS).flatMap((c) => c.values ?? [])];

function help(): string {
  const lines = Object.entries(COMMANDS).map(([name, command]) => {
    const optional = (option: string): boolean => !(command.required ?? []).includes(option);
    const options = [...(command.values ?? []).map((v) => `${v} ${VALUE_NAMES[v] ?? 'X'}`), ...(command.flags ?? [])];
    const synopsis = [name, ...command.operands, ...options.map((o) => (optional(o.split(' ')[0]!) ? `[${o}]` : o))];
    return [`  ${synopsis.join(' ')}`, command.help];
  });
  return `${USAGE}

Drives a running host (tools/host, or tools/run --api-sock) through its control API.

Commands:
${lines.map(([synopsis, text]) => `${synopsis}\n      ${text}`).join('\n')}

Options:
  --api-sock PATH   the host's API socket (required)
  --json            print the API's JSON answer instead of readable text
  --timeout-ms N    give up on an answer after N ms (default ${DEFAULT_TIMEOUT_MS}; a snapshot answers when complete)
  --help, -h        this text

Exit codes: 0 done; 1 the API refused the request, no host listens on the socket, or a file
cannot be read; 2 bad usage. See docs/ctl.md.
`;
}

/** A refusal of the API or a bad input file: one `error:` line, exit 1. */
class CtlError extends BvError {
  constructor(message: string) {
    super('BV_CTL', message);
  }
}

async function main(argv: readonly string[]): Promise<number> {
  // After `--` everything is an operand (`input a -- --text-with-dashes`).
  const args = parseArguments(argv, { flags: ALL_FLAGS, values: ALL_VALUES, restAfterDoubleDash: true });
  if (args.flag('--help') || args.flag('-h')) {
    process.stdout.write(help());
    return 0;
  }
  const [name, ...operands] = [...args.positionals, ...args.rest];
  if (name === undefined) throw new UsageError('no command given');
  const command = Object.hasOwn(COMMANDS, name) ? COMMANDS[name]! : undefined;
  if (command === undefined) throw new UsageError(`unknown command '${name}' (commands: ${Object.keys(COMMANDS).join(', ')})`);
  for (const option of [...ALL_FLAGS.filter((f) => args.flag(f)), ...ALL_VALUES.filter((v) => args.value(v) !== undefined)]) {
    const own = [...COMMON_FLAGS, ...COMMON_VALUES, ...(command.flags ?? []), ...(command.values ?? [])] as string[];
    if (!own.includes(option)) throw new UsageError(`${name} does not take ${option}`);
  }
  checkOperands(name, command, operands);
  for (const option of command.required ?? []) {
    if (args.value(option) === undefined) throw new UsageError(`${name}: ${option} ${VALUE_NAMES[option] ?? 'X'} is required`);
  }
  const socketPath = args.value('--api-sock');
  if (socketPath === undefined) throw new UsageError('--api-sock PATH is required');
  const timeoutText = args.value('--timeout-ms');
  const timeoutMs = timeoutText === undefined ? DEFAULT_TIMEOUT_MS : parseInteger(timeoutText, '--timeout-ms', 1);

  const call = async <T>(method: string, path: string, body?: unknown): Promise<T> => {
    const answer: ApiAnswer<T> = await apiRequest<T>(socketPath, method, path, body, { timeoutMs });
    if (answer.status >= 400) {
      const fault = (answer.body as { fault_message?: unknown } | undefined)?.fault_message;
      throw new CtlError(`${typeof fault === 'string' ? fault : JSON.stringify(answer.body)} (HTTP ${answer.status})`);
    }
    return answer.body;
  };
  await command.run({ operands, args, json: args.flag('--json'), call, out: (text) => process.stdout.write(text) });
  return 0;
}

await runTool(main, { usage: USAGE });
