/**
 * The far end of the two-process migration figures (bench/migration.ts, `twoProcesses`): a
 * child process that stands for the destination host, so that each end of the TLS connection
 * has its own thread, as two hosts do.
 *
 *   node --import tsx bench/migration-peer.ts copy|migrate CA CERT KEY BYTES
 *
 * Prints `port N` once it listens; then, after one plain TLS copy of BYTES (answered with one
 * byte when all has arrived) or one incoming migration of a BYTES guest (which it runs 100 ms
 * after), one JSON line: {"cpuMs": the process CPU time from the first byte to the end, …}.
 */
import { createServer as createTlsServer } from 'node:tls';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { createHypervisor } from '../kernel/index.ts';
import { MigrationReceiver, MIGRATION_PROTOCOL, MIGRATION_VERSIONS } from '../services/migration/migration.ts';
import { TransportServer } from '../services/migration/transport.ts';
import { cpuSince } from './harness.ts';
import { Loop } from './migration.ts';

const [mode, ca, cert, key, bytesText] = process.argv.slice(2);
const bytes = Number(bytesText);
if ((mode !== 'copy' && mode !== 'migrate') || !ca || !cert || !key || !Number.isInteger(bytes) || bytes <= 0) {
  process.stderr.write('usage: migration-peer.ts copy|migrate CA CERT KEY BYTES\n');
  process.exit(2);
}
const MIB = 1024 * 1024;
const print = (line: string): void => void process.stdout.write(`${line}\n`);

if (mode === 'copy') {
  const server = createTlsServer({ ca: readFileSync(ca), cert: readFileSync(cert), key: readFileSync(key), requestCert: true, rejectUnauthorized: true });
  server.on('secureConnection', (socket) => {
    let received = 0;
    let cpu: NodeJS.CpuUsage | null = null;
    socket.on('data', (chunk: Buffer) => {
      cpu ??= process.cpuUsage();
      received += chunk.length;
      if (received < bytes) return;
      const cpuMs = cpuSince(cpu);
      socket.end(Buffer.of(1), () => {
        print(JSON.stringify({ cpuMs }));
        server.close();
      });
    });
  });
  server.listen(0, '127.0.0.1', () => print(`port ${(server.address() as AddressInfo).port}`));
} else {
  const hv = createHypervisor({ hostMemoryBytes: bytes + 32 * MIB });
  const loop = new Loop(hv);
  const server = await TransportServer.listen({ protocol: MIGRATION_PROTOCOL, versions: MIGRATION_VERSIONS, tls: { ca, cert, key }, port: 0, name: 'host-b' });
  print(`port ${server.port}`);
  const channel = await server.accept();
  const cpu = process.cpuUsage();
  const receiver = new MigrationReceiver(channel, {
    create: (config) => hv.createVm(config),
    start: (vm) => loop.running.add(vm),
    discard: (vm) => hv.destroyVm(vm),
  });
  const vm = await receiver.run();
  const cpuMs = cpuSince(cpu);
  await new Promise((resolve) => setTimeout(resolve, 100));
  print(JSON.stringify({ cpuMs, received: receiver.figures, ran: vm.instructionsRetired > 0 }));
  await loop.stop();
  await server.close();
  hv.close();
}
