/**
 * Throwaway certificates for the transport and migration tests, made with the openssl command:
 * a CA, two host certificates it signs (usable as TLS server and client, for localhost and
 * 127.0.0.1), and a rogue CA with a certificate of its own that the first CA does not trust.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TlsFiles } from '../../services/migration/transport.ts';

/** The files made by makeCertificates. */
export interface TestCertificates {
  /** The directory holding them. */
  dir: string;
  /** Host A: signed by the trusted CA. */
  a: TlsFiles;
  /** Host B: signed by the trusted CA. */
  b: TlsFiles;
  /** A host whose certificate a rogue CA signed (it trusts the real CA, but nobody trusts it). */
  rogue: TlsFiles;
  /** A host with a certificate signed by the trusted CA but for another name (no localhost, no 127.0.0.1). */
  misnamed: TlsFiles;
}

function openssl(dir: string, args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
}

function makeCa(dir: string, name: string): void {
  openssl(dir, ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.pem`]);
}

function makeHost(dir: string, ca: string, name: string, altNames: string): TlsFiles {
  writeFileSync(join(dir, `${name}.ext`), `subjectAltName=${altNames}\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n`);
  openssl(dir, ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.csr`]);
  openssl(dir, ['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.pem`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-days', '2', '-extfile', `${name}.ext`, '-out', `${name}.pem`]);
  return { ca: join(dir, `${ca}.pem`), cert: join(dir, `${name}.pem`), key: join(dir, `${name}.key`) };
}

/**
 * Makes a fresh set of certificates in a temporary directory; `addresses` are more IP addresses
 * the hosts' certificates carry (a network namespace's, for the multi-host tests).
 */
export function makeCertificates(addresses: readonly string[] = []): TestCertificates {
  const dir = mkdtempSync(join(tmpdir(), 'bv-certs-'));
  makeCa(dir, 'ca');
  makeCa(dir, 'rogue-ca');
  const local = ['DNS:localhost', 'IP:127.0.0.1', ...addresses.map((address) => `IP:${address}`)].join(',');
  return {
    dir,
    a: makeHost(dir, 'ca', 'host-a', local),
    b: makeHost(dir, 'ca', 'host-b', local),
    rogue: { ...makeHost(dir, 'rogue-ca', 'rogue', local), ca: join(dir, 'ca.pem') },
    misnamed: makeHost(dir, 'ca', 'elsewhere', 'DNS:elsewhere.example'),
  };
}
