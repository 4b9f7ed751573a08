/**
 * inject — inject memory errors into a VM of a running host (tools/host, or tools/run
 * --api-sock) through its control API: POST /vms/{name}/memory-errors (docs/memory-errors.md).
 *
 *   npx tsx tools/inject --api-sock /tmp/bv.sock a --gpa 0x403000 --bits 16 --pattern flip --report on-access
 *   npx tsx tools/inject --api-sock /tmp/bv.sock a --gva 0x40405040 --bits 1 --report now
 *   npx tsx tools/inject --api-sock /tmp/bv.sock a --rate 40 --seed 7 --count 100     # a campaign
 *   npx tsx tools/inject --api-sock /tmp/bv.sock a --count 10 --seed 7                 # 10 random errors now
 *   npx tsx tools/inject --api-sock /tmp/bv.sock a --list                             # GET: counters and log
 *
 * Prints the API's JSON answer. Exit codes: 0 done; 1 the API refused (`error: <fault_message>
 * (HTTP <status>)`) or no host answers; 2 bad usage.
 */
import { BvError } from '../guest-isa/errors.ts';
import { apiRequest } from '../services/host/client.ts';
import { parseArguments, parseInteger, runTool, UsageError } from './cli.ts';

const USAGE = `usage: inject --api-sock PATH VM (--gpa ADDR | --gva ADDR [--vcpu N]) --bits N [--offset BIT] [--pattern flip|random|stuck0|stuck1] [--report now|on-access]
       inject --api-sock PATH VM [--rate PER_MILLION] [--seed N] [--count N] [--bits N] [--pattern P] [--report R]
       inject --api-sock PATH VM --list`;

class InjectError extends BvError {
  constructor(message: string) {
    super('BV_INJECT', message);
  }
}

async function main(argv: readonly string[]): Promise<number> {
  const args = parseArguments(argv, {
    flags: ['--help', '-h', '--list'],
    values: ['--api-sock', '--gpa', '--gva', '--vcpu', '--bits', '--offset', '--pattern', '--report', '--rate', '--seed', '--count', '--timeout-ms'],
  });
  if (args.flag('--help') || args.flag('-h')) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const socketPath = args.value('--api-sock');
  if (socketPath === undefined) throw new UsageError('--api-sock PATH is required');
  const [vm, ...extra] = args.positionals;
  if (vm === undefined) throw new UsageError('no VM named');
  if (extra.length > 0) throw new UsageError(`unexpected ${extra.join(' ')}`);
  const address = (name: string): number | undefined => {
    const text = args.value(name);
    if (text === undefined) return undefined;
    if (!/^(0x[0-9a-f_]+|\d[\d_]*)$/i.test(text)) throw new UsageError(`${name}: '${text}' is not an address (decimal or 0x hex)`);
    const value = Number(text.replaceAll('_', ''));
    if (value > 0xffff_ffff) throw new UsageError(`${name}: ${text} is above 0xffffffff`);
    return value;
  };
  const integer = (name: string, min: number, max: number): number | undefined => {
    const text = args.value(name);
    return text === undefined ? undefined : parseInteger(text, name, min, max);
  };
  const timeoutMs = integer('--timeout-ms', 1, 3_600_000) ?? 30_000;
  const path = `/vms/${encodeURIComponent(vm)}/memory-errors`;
  let method = 'GET';
  let body: Record<string, unknown> | undefined;
  if (!args.flag('--list')) {
    method = 'POST';
    const rateText = args.value('--rate');
    const rate = rateText === undefined ? undefined : Number(rateText);
    if (rate !== undefined && !(rate > 0)) throw new UsageError(`--rate must be a positive number of injections per million instructions, got ${rateText}`);
    const pattern = args.value('--pattern');
    const report = args.value('--report');
    body = {
      gpa: address('--gpa'), gva: address('--gva'), vcpu: integer('--vcpu', 0, 255), window_bits: integer('--bits', 1, 64), window_bit_offset: integer('--offset', 0, 32767),
      pattern, report, rate, seed: integer('--seed', 0, 0xffff_ffff), count: integer('--count', 1, 1_000_000),
    };
    for (const key of Object.keys(body)) if (body[key] === undefined) delete body[key];
    if (body.gpa === undefined && body.gva === undefined && body.rate === undefined && body.count === undefined) throw new UsageError('give --gpa or --gva (one error), --count (random errors now) or --rate (a campaign)');
  }
  const answer = await apiRequest(socketPath, method, path, body, { timeoutMs });
  if (answer.status >= 400) {
    const fault = (answer.body as { fault_message?: unknown } | undefined)?.fault_message;
    throw new InjectError(`${typeof fault === 'string' ? fault : JSON.stringify(answer.body)} (HTTP ${answer.status})`);
  }
  process.stdout.write(`${JSON.stringify(answer.body, null, 2)}\n`);
  return 0;
}

await runTool(main, { usage: USAGE });
