/**
 * host — run a host of VMs under the control API (docs/host.md, docs/api.md).
 *
 *   npx tsx tools/host --api-sock /tmp/bv.sock [--config host.json] [--exit-when-stopped]
 *
 * Checks the configuration (every VM's image too) before anything starts, boots the VMs it
 * lists, and serves the API on the socket until SIGINT or SIGTERM (or, with --exit-when-stopped,
 * until every VM has stopped). Events go to stderr, one line each, with the time.
 */
import { ApiServer, hostRoutes } from '../services/host/api.ts';
import { parseHostConfig, readHostConfigFile } from '../services/host/config.ts';
import { Host } from '../services/host/host.ts';
import { parseArguments, parseInteger, runTool, UsageError } from './cli.ts';

const USAGE = 'usage: host --api-sock PATH [--config FILE] [--record FILE [--record-interval MS]] [--exit-when-stopped] [--quiet]\n       host --help';

const HELP = `${USAGE}

Runs the VMs a configuration lists in one host pool and serves the control API
(HTTP/1.1 + JSON) on a Unix socket created with mode 0600.

  --api-sock PATH       the socket to serve the API on (refused if in use or not a socket)
  --config FILE         the host configuration (JSON, docs/host.md); default: no VMs
  --record FILE         record a timeline of the host into FILE (JSON lines; draw it
                        with tools/report --timeline FILE --out report.html)
  --record-interval MS  milliseconds between timeline samples (default 250)
  --exit-when-stopped   exit once every VM has stopped (default: serve until SIGINT/SIGTERM)
  SIGPWR (power failure) runs the power-loss hooks (pmem_ha, log replication) with the
  configuration's battery_ms, then stops; so does SIGTERM when battery_ms > 0
  --quiet               no event lines on stderr

Exit codes: 0 after a signal or when every VM stopped; 1 a bad configuration or socket; 2 usage.`;

async function main(argv: readonly string[]): Promise<number> {
  const args = parseArguments(argv, { flags: ['--help', '-h', '--exit-when-stopped', '--quiet'], values: ['--api-sock', '--config', '--record', '--record-interval'] });
  if (args.flag('--help') || args.flag('-h')) {
    process.stdout.write(`${HELP}\n`);
    return 0;
  }
  if (args.positionals.length > 0) throw new UsageError(`unexpected argument '${args.positionals[0]}'`);
  const socketPath = args.value('--api-sock');
  if (socketPath === undefined) throw new UsageError('--api-sock is required');
  const configPath = args.value('--config');
  const spec = configPath === undefined ? parseHostConfig({}) : readHostConfigFile(configPath);
  const recordPath = args.value('--record');
  const intervalText = args.value('--record-interval');
  if (intervalText !== undefined && recordPath === undefined) throw new UsageError('--record-interval needs --record FILE');
  const record = recordPath === undefined ? undefined : { path: recordPath, intervalMs: intervalText === undefined ? undefined : parseInteger(intervalText, '--record-interval', 10, 3_600_000) };
  const quiet = args.flag('--quiet');
  const log = (line: string): void => {
    if (!quiet) process.stderr.write(`${new Date().toISOString()} ${line}\n`);
  };

  // The socket first: a host that cannot serve its API boots nothing.
  const api = await ApiServer.listen(socketPath, { maxBodyBytes: spec.maxBodyBytes, requestTimeoutMs: spec.requestTimeoutMs, log });
  let host: Host;
  try {
    host = await Host.start(spec, { log, record });
  } catch (error) {
    await api.close();
    throw error;
  }
  hostRoutes(api, host);
  if (record !== undefined) log(`host: recording a timeline into ${record.path} every ${host.recorder!.intervalMs} ms`);
  log(`host: serving the API on ${socketPath} (${spec.vms.length} VM${spec.vms.length === 1 ? '' : 's'} configured)`);

  const stopped = new Promise<string>((resolve) => {
    const onSignal = (signal: NodeJS.Signals): void => resolve(signal);
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    // A UPS daemon's power-failure signal: always a power-loss notice.
    process.once('SIGPWR', onSignal);
    if (args.flag('--exit-when-stopped')) {
      void Promise.all(host.names().map((name) => host.whenStopped(name))).then(() => resolve('every VM stopped'));
    }
  });
  const why = await stopped;
  log(`host: stopping (${why})`);
  if (why === 'SIGPWR' || (why === 'SIGTERM' && spec.batteryMs > 0)) {
    // SIGTERM with a battery budget is a failure notice: the power-loss hooks (log replication) get the budget first.
    const report = await host.powerLoss(spec.batteryMs, why);
    log(`host: power-loss hooks done in ${report.ms} ms: ${JSON.stringify(report.hooks)}`);
  }
  await api.close();
  await host.close();
  process.removeAllListeners('SIGINT');
  process.removeAllListeners('SIGTERM');
  process.removeAllListeners('SIGPWR');
  return 0;
}

await runTool(main, { usage: USAGE });
