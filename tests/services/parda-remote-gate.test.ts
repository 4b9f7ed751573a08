/**
 * The credit protocol between a worker group's RemoteIoGate and the host's PardaController
 * (services/storage/remote-gate.ts), in one thread with the messages passed by hand: a group VM
 * starts requests only on credits, shares split the window with a local VM, a shrinking window
 * takes credits back as requests complete, and forgotten requests give their credits back.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { PardaController, RemoteIoGate, RemoteIoLink, type RemoteIoEvent, type RemoteIoGrant } from '../../services/storage/index.ts';

const dirs: string[] = [];
const controllers: PardaController[] = [];
afterEach(() => {
  for (const c of controllers.splice(0)) c.close();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A controller (control off: the window is window_max), a gate and a link wired through message arrays. */
function setup(windowMax: number) {
  const dir = mkdtempSync(join(tmpdir(), 'bv-remote-gate-'));
  dirs.push(dir);
  const controller = PardaController.open({ statsFile: join(dir, 'x.parda'), hostId: 0, thresholdMs: 10, windowMax, control: false });
  controllers.push(controller);
  const toHost: RemoteIoEvent[][] = [];
  const toWorker: RemoteIoGrant[][] = [];
  const gate = new RemoteIoGate((events) => toHost.push(events));
  const link = new RemoteIoLink(controller, (grants) => toWorker.push(grants));
  /** Lets the batches flush and delivers them both ways until nothing moves. */
  const pump = async (): Promise<void> => {
    for (let i = 0; i < 20; i++) {
      await new Promise((resolve) => setImmediate(resolve));
      const events = toHost.splice(0);
      const grants = toWorker.splice(0);
      for (const batch of events) link.receive(batch);
      for (const batch of grants) gate.grant(batch);
      if (events.length === 0 && grants.length === 0 && i > 2) return;
    }
  };
  return { controller, gate, link, pump, toHost, toWorker };
}

/** A device's requests: started ones wait for the test to complete them. */
function requests(owner: string, submit: (owner: string, bytes: number, start: () => void) => void) {
  const started: number[] = [];
  let next = 0;
  return {
    started,
    submit(count: number): void {
      for (let i = 0; i < count; i++) {
        const id = next++;
        submit(owner, 4096, () => started.push(id));
      }
    },
  };
}

describe('RemoteIoGate and RemoteIoLink', () => {
  it('start a group VM\'s requests only on credits, its part of the window beside a local VM', async () => {
    const { controller, gate, pump } = setup(4);
    controller.addVm('local', 1000);
    controller.addVm('remote', 3000);
    const local = requests('local', (o, b, s) => controller.submit(o, b, s));
    const remote = requests('remote', (o, b, s) => gate.submit(o, b, s));
    local.submit(8);
    remote.submit(8);
    await pump();
    // Nothing starts in the worker without a credit; the window (4) holds across both.
    expect(remote.started.length).toBe(gate.status('remote')!.credits);
    expect(local.started.length + remote.started.length).toBeLessThanOrEqual(4);
    expect(controller.status().in_flight).toBe(local.started.length + remote.started.length);
    // Complete everything in flight, again and again: the slots settle at 1:3.
    let localIos = 0;
    let remoteIos = 0;
    for (let round = 0; round < 30; round++) {
      const localDone = local.started.splice(0);
      const remoteDone = remote.started.splice(0);
      for (const _ of localDone) controller.complete('local', 4096, 1e6);
      for (const _ of remoteDone) gate.complete('remote', 4096, 1e6);
      localIos += localDone.length;
      remoteIos += remoteDone.length;
      local.submit(localDone.length);
      remote.submit(remoteDone.length);
      await pump();
      const held = gate.status('remote')!;
      expect(remote.started.length).toBe(held.credits);
      expect(held.credits).toBeLessThanOrEqual(4);
      expect(controller.status().in_flight).toBeLessThanOrEqual(4);
    }
    expect(remoteIos / localIos).toBeGreaterThan(2.5);
    expect(remoteIos / localIos).toBeLessThan(3.5);
    expect(gate.status('remote')!.limit).toBe(3);
    expect(gate.status('remote')!.reused).toBeGreaterThan(0);
    // Every completion reached L(t) and the VM's figures.
    expect(controller.vmStatus('remote')!.ios).toBe(remoteIos);
    expect(controller.status().ios_total).toBe(localIos + remoteIos);
  });

  it('takes credits back as requests complete when the window shrinks, never an issued one', async () => {
    const { controller, gate, pump } = setup(8);
    controller.addVm('remote', 1000);
    const remote = requests('remote', (o, b, s) => gate.submit(o, b, s));
    remote.submit(16);
    await pump();
    expect(remote.started.length).toBe(8);
    controller.update({ windowMax: 2 });
    await pump();
    // Issued requests are not revoked: all 8 still run.
    expect(gate.status('remote')!.credits).toBe(8);
    // Each completion gives its credit back until the VM is within the window.
    for (let i = 0; i < 8; i++) {
      remote.started.shift();
      gate.complete('remote', 4096, 1e6);
      await pump();
    }
    expect(gate.status('remote')!.credits).toBe(2);
    expect(remote.started.length).toBe(2);
    expect(controller.status().in_flight).toBe(2);
    expect(gate.status('remote')!.limit).toBe(2);
  });

  it('gives back the credits of forgotten requests, and the host drops them from its queue', async () => {
    const { controller, gate, link, pump, toHost, toWorker } = setup(4);
    controller.addVm('remote', 1000);
    const remote = requests('remote', (o, b, s) => gate.submit(o, b, s));
    remote.submit(6);
    await pump();
    expect(controller.status().queued).toBe(2);
    gate.forget('remote');
    await pump();
    expect(controller.status().queued).toBe(0);
    for (const _ of remote.started.splice(0)) gate.complete('remote', 4096, 1e6);
    await pump();
    expect(controller.status().in_flight).toBe(0);
    expect(gate.status('remote')).toMatchObject({ credits: 0, queued: 0 });
    // A credit granted for a request the worker forgot meanwhile comes back unused.
    remote.submit(1);
    await new Promise((resolve) => setImmediate(resolve));
    for (const batch of toHost.splice(0)) link.receive(batch);
    expect(controller.status().in_flight).toBe(1); // granted, on its way
    gate.forget('remote');
    await new Promise((resolve) => setImmediate(resolve));
    for (const batch of toWorker.splice(0)) gate.grant(batch);
    expect(remote.started.length).toBe(0);
    expect(gate.status('remote')!.returned).toBe(1);
    await pump();
    expect(controller.status()).toMatchObject({ in_flight: 0, queued: 0 });
  });

  it('keeps a VM that left the group out of the controller though its last reports arrive after', async () => {
    const { controller, gate, pump } = setup(4);
    controller.addVm('remote', 3000);
    const remote = requests('remote', (o, b, s) => gate.submit(o, b, s));
    remote.submit(6);
    await pump();
    // The host hears of the deletion (its answer) before the worker's last batch: submits, then the VM going.
    remote.submit(2);
    controller.removeVm('remote');
    gate.remove('remote');
    for (const _ of remote.started.splice(0)) gate.complete('remote', 4096, 1e6);
    await pump();
    expect(controller.vmStatus('remote')).toBeNull();
    expect(controller.status()).toMatchObject({ in_flight: 0, queued: 0, vms: [] });
  });
});
