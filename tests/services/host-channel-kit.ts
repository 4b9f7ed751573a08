/** What the host channel tests share: protocol versions, guest sources on disk, waiting for a VM's end over the API. */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ApiAnswer } from '../../services/host/client.ts';
import type { VmInfo } from '../../services/host/host.ts';
import { GUEST_LIBRARY } from '../devices/harness.ts';
import { until } from './until.ts';

/** Bus protocol versions 1.0 and 2.0 (major << 16 | minor). */
export const V1 = 0x0001_0000;
export const V2 = 0x0002_0000;

/** Writes a test guest (the device harness's library + `program`) to `dir/name.s`; returns its path. */
export function guestImage(dir: string, name: string, program: string): string {
  const path = join(dir, `${name}.s`);
  writeFileSync(path, GUEST_LIBRARY + program);
  return path;
}

/** Waits (up to 60 s) until GET /vms/{name} through `call` shows an exit; returns that VmInfo. */
export function vmStopped(call: <T>(method: string, path: string) => Promise<ApiAnswer<T>>, name: string): Promise<VmInfo> {
  return until(`${name} to stop`, async () => {
    const info = (await call<VmInfo>('GET', `/vms/${name}`)).body;
    return info.exit !== null ? info : undefined;
  }, 60_000);
}
