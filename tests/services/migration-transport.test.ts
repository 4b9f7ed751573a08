/**
 * The host-to-host transport (services/migration/transport.ts) on real sockets with real TLS:
 * frames arrive whole and in order with back-pressure both ways, and every kind of damage (a
 * corrupt byte, a cut, a stall, an oversize frame, another version, an untrusted certificate) is
 * refused with its own error code on the side that sees it.
 */
import { connect as netConnect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TransportError } from '../../services/migration/errors.ts';
import {
  connect, encodeFrame, FIRST_APP_FRAME_TYPE, FRAME_HEADER_BYTES, TransportServer, type ChannelOptions, type ConnectOptions, type FramedChannel, type ListenOptions,
} from '../../services/migration/transport.ts';
import { makeCertificates, type TestCertificates } from './migration-certs.ts';

const DATA = FIRST_APP_FRAME_TYPE;
let certs: TestCertificates;
const servers: TransportServer[] = [];

beforeAll(() => {
  certs = makeCertificates();
});

afterAll(async () => {
  for (const server of servers) await server.close();
});

const base: ChannelOptions = { protocol: 'test', versions: [1] };

async function listen(options: Partial<ListenOptions> = {}): Promise<TransportServer> {
  const server = await TransportServer.listen({ ...base, tls: certs.a, port: 0, ...options });
  servers.push(server);
  return server;
}

async function pair(serverOptions: Partial<ListenOptions> = {}, clientOptions: Partial<ConnectOptions> = {}): Promise<{ server: TransportServer; near: FramedChannel; far: FramedChannel }> {
  const server = await listen(serverOptions);
  const [near, far] = await Promise.all([connect({ ...base, tls: certs.b, host: '127.0.0.1', port: server.port, ...clientOptions }), server.accept()]);
  return { server, near, far };
}

async function failure(promise: Promise<unknown>): Promise<TransportError> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(TransportError);
    return error as TransportError;
  }
  throw new Error('expected a TransportError, but the call succeeded');
}

function pattern(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = (i * 31 + seed) & 0xff;
  return bytes;
}

describe('transport: frames', () => {
  it('carries frames whole and in order over mutual TLS, then ends in good order', async () => {
    const { near, far } = await pair({ name: 'dest' }, { name: 'source' });
    expect(near.secure && far.secure).toBe(true);
    expect(near.peer?.name).toBe('dest');
    expect(far.peer?.name).toBe('source');
    const sizes = [0, 1, 4096, 65_536, 1_000_003, 5];
    const received: Uint8Array[] = [];
    const reader = (async () => {
      for (;;) {
        const frame = await far.receive();
        if (frame === null) return;
        expect(frame.type).toBe(DATA + (received.length % 3));
        received.push(frame.payload);
      }
    })();
    for (const [index, size] of sizes.entries()) await near.send(DATA + (index % 3), pattern(size, index));
    await near.close();
    await reader;
    expect(received.map((bytes) => bytes.length)).toEqual(sizes);
    for (const [index, bytes] of received.entries()) expect(Buffer.compare(bytes, pattern(sizes[index]!, index))).toBe(0);
    expect(far.stats.bytesReceived).toBe(near.stats.bytesSent);
    far.destroy();
  });

  it('respects back-pressure: a slow reader pauses the sender instead of buffering everything', async () => {
    const { near, far } = await pair();
    const frame = pattern(1 << 20, 7);
    const count = 48;
    let got = 0;
    const reader = (async () => {
      for (;;) {
        const received = await far.receive();
        if (received === null) return;
        expect(received.payload.length).toBe(frame.length);
        got++;
        if (got % 8 === 0) await new Promise((resolve) => setTimeout(resolve, 20));
      }
    })();
    for (let i = 0; i < count; i++) await near.send(DATA, frame);
    await near.close();
    await reader;
    expect(got).toBe(count);
    expect(near.stats.drainWaits).toBeGreaterThan(0);
    far.destroy();
  });

  it('paces sending to maxBytesPerSecond', async () => {
    const { near, far } = await pair({}, { maxBytesPerSecond: 4 * 1024 * 1024 });
    const reader = (async () => {
      while ((await far.receive()) !== null);
    })();
    const started = performance.now();
    for (let i = 0; i < 8; i++) await near.send(DATA, new Uint8Array(256 * 1024));
    await near.close();
    await reader;
    // 2 MiB at 4 MiB/s: the last send may start after ~437 ms.
    expect(performance.now() - started).toBeGreaterThan(350);
    expect(near.stats.pacedMs).toBeGreaterThan(300);
    far.destroy();
  });

  it('plain TCP only with insecure: true, and never TLS and insecure at once', async () => {
    await expect(TransportServer.listen({ ...base, port: 0 })).rejects.toMatchObject({ code: 'BV_XPORT_CONFIG' });
    await expect(connect({ ...base, host: '127.0.0.1', port: 1 })).rejects.toMatchObject({ code: 'BV_XPORT_CONFIG' });
    await expect(TransportServer.listen({ ...base, port: 0, tls: certs.a, insecure: true })).rejects.toMatchObject({ code: 'BV_XPORT_CONFIG' });
    await expect(TransportServer.listen({ ...base, port: 0, tls: { ...certs.a, key: '/nonexistent/key.pem' } })).rejects.toThrow(/tls.key: cannot read/);
    const { near, far } = await pair({ tls: undefined, insecure: true }, { tls: undefined, insecure: true });
    expect(near.secure).toBe(false);
    await near.send(DATA, pattern(10, 1));
    expect(new Uint8Array((await far.receive())!.payload)).toEqual(pattern(10, 1));
    near.destroy();
    far.destroy();
  });

  it('a peer that gives up says why (PEER_ERROR on the other side)', async () => {
    const { near, far } = await pair();
    await far.abort('BV_MIG_STATE', 'no room for the VM');
    const error = await failure(near.receive());
    expect(error.code).toBe('BV_XPORT_PEER_ERROR');
    expect(error.message).toMatch(/no room for the VM/);
  });
});

describe('transport: refusals', () => {
  it('a corrupt payload byte is refused as CORRUPT; the sender learns the connection is gone', async () => {
    // HELLO is the first frame; the second frame's payload starts after it.
    const { near, far } = await pair({}, { faults: { corruptByteAt: 4000 } });
    const received = far.receive();
    await near.send(DATA, pattern(8000, 3)).catch(() => {});
    const error = await failure(received);
    expect(error.code).toBe('BV_XPORT_CORRUPT');
    expect(error.message).toMatch(/payload checksum/);
    await expect(near.receive()).rejects.toBeInstanceOf(TransportError);
  });

  it('a corrupt header is refused before its payload is awaited', async () => {
    const { near, far } = await pair({}, { faults: { corruptByteAt: near0HeaderOffset() + 9 } });
    const received = far.receive();
    await near.send(DATA, pattern(100, 3)).catch(() => {});
    const error = await failure(received);
    expect(error.code).toBe('BV_XPORT_CORRUPT');
    expect(error.message).toMatch(/header checksum/);
  });

  it('a cut stream is TRUNCATED at the receiver, CLOSED at the sender', async () => {
    const { near, far } = await pair({}, { faults: { cutAfterBytes: 3000 } });
    const received = far.receive();
    const sent = failure(near.send(DATA, pattern(10_000, 5)));
    expect((await failure(received)).code).toBe('BV_XPORT_TRUNCATED');
    expect((await sent).code).toBe('BV_XPORT_CLOSED');
  });

  it('a peer that goes silent is STALLED after the timeout', async () => {
    const { near, far } = await pair({ stallTimeoutMs: 300 }, { faults: { stallAfterBytes: 1000 } });
    const started = performance.now();
    const received = far.receive();
    await near.send(DATA, pattern(5000, 9));
    const error = await failure(received);
    expect(error.code).toBe('BV_XPORT_STALLED');
    expect(performance.now() - started).toBeGreaterThanOrEqual(290);
    near.destroy();
  });

  it('an oversize frame is refused by the receiver from its header, and by a sender before sending', async () => {
    const { near, far } = await pair({ maxFrameBytes: 4096 }, { maxFrameBytes: 1 << 20 });
    const received = far.receive();
    await near.send(DATA, pattern(8192, 1)).catch(() => {});
    expect((await failure(received)).code).toBe('BV_XPORT_OVERSIZE');
    const small = await pair({}, { maxFrameBytes: 4096 });
    expect((await failure(small.near.send(DATA, new Uint8Array(4097)))).code).toBe('BV_XPORT_OVERSIZE');
    small.near.destroy();
    small.far.destroy();
  });

  it('another protocol version is refused at the handshake, on both sides', async () => {
    const server = await listen({ versions: [2, 3] });
    const error = await failure(connect({ ...base, versions: [1], tls: certs.b, host: '127.0.0.1', port: server.port }));
    expect(error.code).toBe('BV_XPORT_VERSION');
    expect(error.message).toMatch(/versions 2, 3, this host speaks 1/);
    await waitFor(() => server.refused.length === 1);
    expect(server.refused[0]!.error.code).toBe('BV_XPORT_VERSION');
    // The highest common version wins.
    const other = await listen({ versions: [1, 2, 3] });
    const [near, far] = await Promise.all([connect({ ...base, versions: [2, 3, 4], tls: certs.b, host: '127.0.0.1', port: other.port }), other.accept()]);
    expect([near.version, far.version]).toEqual([3, 3]);
    near.destroy();
    far.destroy();
  });

  it('another transport version is refused from the first frame header', async () => {
    const server = await listen({ tls: undefined, insecure: true });
    const socket = netConnect({ host: '127.0.0.1', port: server.port });
    await new Promise((resolve) => socket.once('connect', resolve));
    socket.write(encodeFrame(1, new TextEncoder().encode('{}'), 2));
    await waitFor(() => server.refused.length === 1);
    expect(server.refused[0]!.error.code).toBe('BV_XPORT_VERSION');
    expect(server.refused[0]!.error.message).toMatch(/transport version 2, this host speaks version 1/);
    socket.destroy();
  });

  it('another application protocol is refused', async () => {
    const server = await listen({ protocol: 'bv-replication' });
    const error = await failure(connect({ ...base, tls: certs.b, host: '127.0.0.1', port: server.port }));
    expect(error.code).toBe('BV_XPORT_PROTOCOL');
  });

  it('a client whose certificate the server does not trust is refused, and so is such a server', async () => {
    const server = await listen();
    const client = await failure(connect({ ...base, tls: certs.rogue, host: '127.0.0.1', port: server.port }));
    expect(client.code).toBe('BV_XPORT_UNTRUSTED');
    expect(client.message).toMatch(/does not trust your certificate/);
    await waitFor(() => server.refused.length === 1);
    expect(server.refused[0]!.error.code).toBe('BV_XPORT_UNTRUSTED');
    const rogueServer = await listen({ tls: certs.rogue });
    expect((await failure(connect({ ...base, tls: certs.b, host: '127.0.0.1', port: rogueServer.port }))).code).toBe('BV_XPORT_UNTRUSTED');
    // Signed by the right CA, but for another name.
    const misnamed = await listen({ tls: certs.misnamed });
    const wrongName = await failure(connect({ ...base, tls: certs.b, host: '127.0.0.1', port: misnamed.port }));
    expect(wrongName.code).toBe('BV_XPORT_UNTRUSTED');
    // ... which is fine when that name is what the client asked for.
    const [near, far] = await Promise.all([connect({ ...base, tls: certs.b, host: '127.0.0.1', port: misnamed.port, serverName: 'elsewhere.example' }), misnamed.accept()]);
    near.destroy();
    far.destroy();
  });

  it('a plain client talking to a TLS server gets an error, not a hang', async () => {
    const server = await listen();
    const error = await failure(connect({ ...base, insecure: true, host: '127.0.0.1', port: server.port, stallTimeoutMs: 2000 }));
    expect(['BV_XPORT_CORRUPT', 'BV_XPORT_TRUNCATED', 'BV_XPORT_STALLED']).toContain(error.code);
  });

  it('a refused connection to a port nobody listens on is CONNECT', async () => {
    const server = await listen();
    const port = server.port;
    await server.close();
    expect((await failure(connect({ ...base, tls: certs.b, host: '127.0.0.1', port }))).code).toBe('BV_XPORT_CONNECT');
  });
});

/** Offset of the second frame's header (after the HELLO frame): where a header fault lands. */
function near0HeaderOffset(): number {
  const hello = JSON.stringify({ transport: 1, protocol: base.protocol, versions: base.versions, name: null });
  return FRAME_HEADER_BYTES + new TextEncoder().encode(hello).length + 4;
}

async function waitFor(condition: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
