/**
 * Bare-metal guest programs for the channel device and bus tests (paging off, so addresses are
 * guest-physical): a small ring library (put a packet, get a packet, with wrap-around) and
 * complete programs — an echo client that pushes a burst through its rings and prints a
 * checksum, and a relaying server that returns every packet it receives.
 */
import { assemble } from '../../guest-isa/assembler.ts';
import { attachStandardDevices, CaptureSink, type StandardDevices } from '../../devices/index.ts';
import type { ChannelDevice } from '../../devices/channel.ts';
import type { Hypervisor, Vm } from '../../kernel/index.ts';
import type { Bus } from '../../services/bus/index.ts';
import { GUEST_LIBRARY } from './harness.ts';

/** Where the programs keep their page list and rings (guest-physical). */
export const LIST_GPA = 0x40000;
/** The first ring page. */
export const RING_GPA = 0x41000;

/** The ring library for one channel on slot 0 (needs s0 = channel window base). */
export function ringLibrary(sendPages: number, recvPages: number): string {
  return `
        .equ    DEV_CHANNEL, 9
        .equ    CH_SELECT, 0x00
        .equ    CH_IRQ_STATUS, 0x04
        .equ    CH_IRQ_ENABLE, 0x08
        .equ    CH_SLOTS, 0x0c
        .equ    CH_STATE, 0x10
        .equ    CH_SERVICE, 0x14
        .equ    CH_VERSION, 0x18
        .equ    CH_GRANT_LIST, 0x1c
        .equ    CH_HANDLE, 0x20
        .equ    CH_SEND_PAGES, 0x24
        .equ    CH_COMMAND, 0x28
        .equ    CH_RESULT, 0x2c
        .equ    CH_DOORBELL, 0x30
        .equ    LIST, ${LIST_GPA}
        .equ    RING, ${RING_GPA}
        .equ    SEND_PAGES, ${sendPages}
        .equ    RECV_PAGES, ${recvPages}
        .equ    SEND_HDR, RING
        .equ    SEND_DATA, RING + 4096
        .equ    SEND_SIZE, (SEND_PAGES - 1) * 4096
        .equ    RECV_HDR, RING + SEND_PAGES * 4096
        .equ    RECV_DATA, RECV_HDR + 4096
        .equ    RECV_SIZE, (RECV_PAGES - 1) * 4096
        .equ    TXBUF, 0x90000
        .equ    RXBUF, 0xb0000

        # ch_find: s3 = console window, s0 = channel window; waits until slot 0 is OFFERED.
        .macro  ch_find
        li      a0, DEV_CONSOLE
        call    find_device
        mv      s3, a0
        li      a0, DEV_CHANNEL
        call    find_device
        mv      s0, a0
77:     lw      t0, CH_STATE(s0)
        li      t1, 1
        bne     t0, t1, 77b
        .endm

        # ch_open_v2 fail: agrees 2.0, grants and opens slot 0; jumps to fail if any step is refused.
        .macro  ch_open_v2 fail
        li      a0, 0x00020000
        call    propose
        bnez    a0, \\fail
        call    ch_grant_open
        bnez    a0, \\fail
        .endm

        # ch_list: writes the page list at LIST: the SEND_PAGES + RECV_PAGES ring pages. Clobbers t0-t3.
        .macro  ch_list
        li      t0, LIST
        li      t1, SEND_PAGES + RECV_PAGES
        sw      t1, 0(t0)
        li      t2, RING
76:     sw      t2, 4(t0)
        addi    t0, t0, 4
        li      t3, 4096
        add     t2, t2, t3
        addi    t1, t1, -1
        bnez    t1, 76b
        .endm

# ch_grant_open(): grants the SEND_PAGES + RECV_PAGES ring pages and opens slot 0 on them.
# Returns a0 = RESULT of OPEN (or 0x100 + RESULT of a failed GRANT), a1 = handle. Clobbers t0-t3.
ch_grant_open:
        ch_list
        li      t0, LIST
        sw      t0, CH_GRANT_LIST(s0)
        li      t0, 1
        sw      t0, CH_COMMAND(s0)
        lw      a0, CH_RESULT(s0)
        lw      a1, CH_HANDLE(s0)
        bnez    a0, 2f
        li      t0, SEND_PAGES
        sw      t0, CH_SEND_PAGES(s0)
        li      t0, 3
        sw      t0, CH_COMMAND(s0)
        lw      a0, CH_RESULT(s0)
        ret
2:      addi    a0, a0, 0x100
        ret

# ring_put(a0 = packet address, a1 = packet bytes, a multiple of 8) -> a0 = 0 (queued) or
# 1 (the send ring is full). Does not ring the doorbell. Clobbers t0-t3, a1-a3.
ring_put:
        li      t0, SEND_HDR
        lw      t1, 0(t0)
        lw      t2, 4(t0)
        sub     t3, t1, t2
        bgez    t3, 1f
        li      a2, SEND_SIZE
        add     t3, t3, a2
1:      li      a2, SEND_SIZE - 8
        sub     a2, a2, t3
        bltu    a2, a1, 9f
        li      t2, SEND_DATA
2:      beqz    a1, 3f
        lw      t3, 0(a0)
        add     a3, t2, t1
        sw      t3, 0(a3)
        addi    a0, a0, 4
        addi    a1, a1, -4
        addi    t1, t1, 4
        li      a3, SEND_SIZE
        bne     t1, a3, 2b
        li      t1, 0
        j       2b
3:      sw      t1, 0(t0)
        li      a0, 0
        ret
9:      li      a0, 1
        ret

# ring_get(a0 = destination) -> a0 = bytes of the packet copied there, 0 if the receive ring is
# empty. Clobbers t0-t3, a2, a3.
ring_get:
        li      t0, RECV_HDR
        lw      t1, 4(t0)
        lw      t2, 0(t0)
        beq     t1, t2, 8f
        li      t2, RECV_DATA
        add     t3, t2, t1
        lhu     a2, 4(t3)
        slli    a2, a2, 3
        mv      a3, a2
1:      beqz    a3, 2f
        add     t3, t2, t1
        lw      t3, 0(t3)
        sw      t3, 0(a0)
        addi    a0, a0, 4
        addi    a3, a3, -4
        addi    t1, t1, 4
        li      t3, RECV_SIZE
        bne     t1, t3, 1b
        li      t1, 0
        j       1b
2:      sw      t1, 4(t0)
        mv      a0, a2
        ret
8:      li      a0, 0
        ret

# propose(a0 = version) -> a0 = RESULT. Clobbers nothing else.
propose:
        sw      a0, CH_VERSION(s0)
        lw      a0, CH_RESULT(s0)
        ret
`;
}

/** Options of echoClient. */
export interface EchoClientOptions {
  /** Versions proposed, newest first (numbers: major << 16 | minor). */
  versions: number[];
  /** Ring sizes in pages (header included). */
  sendPages: number;
  recvPages: number;
  /** Packets sent. */
  packets: number;
  /** Payload bytes of each (a multiple of 8). */
  payloadBytes: number;
  /** Instructions to spin before starting (lets a test act first). */
  spin?: number;
  /** Fill each packet's payload (default true); false sends zeros (the checksum is then 0), for speed. */
  fill?: boolean;
}

/**
 * An echo client on slot 0: waits for an offer, proposes versions (prints the agreed one, or
 * exits 3 on none), grants and opens (exit 4 on failure), then sends `packets` packets of
 * payload words ((i << 16) + j), ringing the doorbell whenever its send ring is full and
 * draining the receive ring, checking that packets come back in order (exit 5 otherwise). Prints
 * the sum of all received payload words and exits 0. Console output: "VVVVVVVV SSSSSSSS ". If a
 * doorbell is refused (the channel was rescinded or failed) it prints STATE, acknowledges with
 * CLOSE, prints its RESULT and exits 8.
 */
export function echoClient(options: EchoClientOptions): string {
  const packetBytes = 16 + options.payloadBytes;
  const proposals = options.versions.map((v) => `
        li      a0, ${v}
        call    propose
        beqz    a0, agreed`).join('');
  return `${ringLibrary(options.sendPages, options.recvPages)}
_start: li      a0, DEV_CONSOLE
        call    find_device
        mv      s3, a0
        li      a0, DEV_CHANNEL
        call    find_device
        mv      s0, a0
        beqz    s0, no_device
        li      t0, ${options.spin ?? 0}
0:      beqz    t0, 1f
        addi    t0, t0, -1
        j       0b
1:      lw      t0, CH_STATE(s0)        # wait for the offer
        li      t1, 1
        bne     t0, t1, 1b
${proposals}
        li      a0, 0
        mv      a1, s3
        call    put_hex
        exit    3
agreed: lw      a0, CH_VERSION(s0)
        mv      a1, s3
        call    put_hex
        putc    s3, 32
        call    ch_grant_open
        beqz    a0, opened
        exit_reg a0
opened: li      s1, 0                   # packets sent
        li      s2, 0                   # packets received
        li      gp, 0                   # checksum
send:   li      t0, ${options.packets}
        bge     s1, t0, bell
        # build packet s1 at TXBUF: type 1, offset8 2, len8, txid = s1, payload (s1 << 16) + j
        li      a0, TXBUF
        li      t0, 0x00020001
        sw      t0, 0(a0)
        li      t0, ${packetBytes / 8}
        sw      t0, 4(a0)
        sw      s1, 8(a0)
        sw      zero, 12(a0)
        slli    t1, s1, 16
        li      t2, 0
        li      t3, ${options.fill === false ? 0 : options.payloadBytes / 4}
2:      beq     t2, t3, 3f
        add     t0, t1, t2
        slli    a1, t2, 2
        add     a1, a1, a0
        sw      t0, 16(a1)
        addi    t2, t2, 1
        j       2b
3:      li      a1, ${packetBytes}
        call    ring_put
        bnez    a0, bell                # full: let the host move some
        addi    s1, s1, 1
        j       send
bell:   sw      zero, CH_DOORBELL(s0)
        lw      t0, CH_RESULT(s0)
        bnez    t0, gone
drain:  li      a0, RXBUF
        call    ring_get
        beqz    a0, drained
        li      t0, RXBUF
        lw      t1, 8(t0)               # transaction id: in order
        bne     t1, s2, bad
        addi    a0, a0, -16
        srli    a0, a0, 2
        addi    t0, t0, 16
4:      beqz    a0, 5f
        lw      t1, 0(t0)
        add     gp, gp, t1
        addi    t0, t0, 4
        addi    a0, a0, -1
        j       4b
5:      addi    s2, s2, 1
        j       drain
drained:
        sw      zero, CH_DOORBELL(s0)   # receive-ring space freed
        li      t0, ${options.packets}
        blt     s2, t0, send
        mv      a0, gp
        mv      a1, s3
        call    put_hex
        putc    s3, 32
        exit    0
bad:    exit    5
gone:   lw      a0, CH_STATE(s0)        # the channel went away (rescinded, failed): acknowledge
        mv      a1, s3
        call    put_hex
        putc    s3, 32
        li      t0, 4
        sw      t0, CH_COMMAND(s0)
        lw      a0, CH_RESULT(s0)
        mv      a1, s3
        call    put_hex
        putc    s3, 32
        exit    8
no_device:
        exit    6
`;
}

/** The checksum echoClient prints for a complete, correct run. */
export function echoChecksum(packets: number, payloadBytes: number): number {
  let sum = 0;
  for (let i = 0; i < packets; i++) for (let j = 0; j < payloadBytes / 4; j++) sum = (sum + ((i << 16) + j)) >>> 0;
  return sum;
}

/**
 * A serving guest on slot 0 (BLOCK_SERVER): negotiates 2.0, opens, then returns each packet it
 * receives with type 2, `packets` times, waiting in wfi for its interrupt when there is nothing
 * to do; when its send ring is full it sets pending_send_size and waits for the host's signal.
 * Exits 0 after the last; prints SERVICE (with the client's major in bits 31-16) at the end.
 */
export function relayServer(options: { sendPages: number; recvPages: number; packets: number }): string {
  return `${ringLibrary(options.sendPages, options.recvPages)}
_start: ch_find
        ch_open_v2 fail
        li      t0, 1
        sw      t0, CH_IRQ_ENABLE(s0)
        li      t0, IE_EXTERNAL
        csrs    ie, t0
        li      s1, 0                   # packets returned
loop:   li      t0, ${options.packets}
        bge     s1, t0, done
        li      t0, -1
        sw      t0, CH_IRQ_STATUS(s0)   # clear events before looking (level line: no lost wake-up)
        li      a0, RXBUF
        call    ring_get
        bnez    a0, got
        wfi
        j       loop
got:    mv      s2, a0
        li      t0, RXBUF
        li      t1, 0x00020002          # type 2, offset8 2
        sw      t1, 0(t0)
put:    li      a0, RXBUF
        mv      a1, s2
        call    ring_put
        beqz    a0, sent
        li      t0, SEND_HDR            # full: ask to be told when this much is free
        sw      s2, 12(t0)
        sw      zero, CH_DOORBELL(s0)
        li      t0, -1
        sw      t0, CH_IRQ_STATUS(s0)
        li      a0, RXBUF
        mv      a1, s2
        call    ring_put
        beqz    a0, sent
        wfi
        j       put
sent:   li      t0, SEND_HDR
        sw      zero, 12(t0)
        sw      zero, CH_DOORBELL(s0)
        addi    s1, s1, 1
        j       loop
done:   lw      a0, CH_SERVICE(s0)
        mv      a1, s3
        call    put_hex
        putc    s3, 32
        exit    0
fail:   exit    7
`;
}

/** A VM named `name` running GUEST_LIBRARY + `program` with the standard devices and a channel device on `bus`. */
export function bootOnBus(hv: Hypervisor, bus: Bus, name: string, program: string, memoryBytes = 1 << 20): BusGuest {
  const { image } = assemble(GUEST_LIBRARY + program, { fileName: `${name}.s` });
  const vm = hv.createVm({ name, memoryBytes });
  const devices = attachStandardDevices(vm, { output: new CaptureSink() });
  const channel = bus.attachVm(vm, hv);
  vm.loadImage(image);
  return { vm, devices, channel, output: () => { devices.console.flush(); return devices.captured!.text(); } };
}

/** What bootOnBus returns. */
export interface BusGuest {
  vm: Vm;
  devices: StandardDevices;
  channel: ChannelDevice;
  /** The console output so far. */
  output: () => string;
}

/** Options of pingClient. */
export interface PingClientOptions {
  /** Ring sizes in pages (header included). */
  sendPages: number;
  recvPages: number;
  /** Round trips. */
  roundTrips: number;
  /** Payload bytes of each packet (a multiple of 8). */
  payloadBytes: number;
  /** Wait for the reply in wfi on the channel's interrupt (a peer VM answers); false: poll (echo answers at once). */
  waitIrq: boolean;
  /** Set the receive ring's interrupt_mask (a polling consumer: the host does not signal it). */
  mask?: boolean;
}

/**
 * One packet in flight at a time on slot 0 (version 2.0): send, ring, wait for the answer,
 * check its transaction id (exit 5 otherwise), `roundTrips` times; the payload is built once.
 * Exits 0.
 */
export function pingClient(options: PingClientOptions): string {
  const packetBytes = 16 + options.payloadBytes;
  return `${ringLibrary(options.sendPages, options.recvPages)}
_start: ch_find
        ch_open_v2 fail
        li      t0, RECV_HDR
        li      t1, ${options.mask === true ? 1 : 0}
        sw      t1, 8(t0)
        li      t0, ${options.waitIrq ? 1 : 0}
        sw      t0, CH_IRQ_ENABLE(s0)
        li      t0, IE_EXTERNAL
        csrs    ie, t0
        li      a0, TXBUF
        li      t0, 0x00020001
        sw      t0, 0(a0)
        li      t0, ${packetBytes / 8}
        sw      t0, 4(a0)
        sw      zero, 12(a0)
        li      s1, 0
send:   li      t0, ${options.roundTrips}
        bge     s1, t0, done
        li      a0, TXBUF
        sw      s1, 8(a0)
        li      a1, ${packetBytes}
        call    ring_put
        bnez    a0, fail
        sw      zero, CH_DOORBELL(s0)
wait:   li      t0, -1
        sw      t0, CH_IRQ_STATUS(s0)
        li      a0, RXBUF
        call    ring_get
        bnez    a0, got
        ${options.waitIrq ? 'wfi' : 'nop'}
        j       wait
got:    li      t0, RXBUF
        lw      t1, 8(t0)
        bne     t1, s1, bad
        addi    s1, s1, 1
        j       send
done:   exit    0
bad:    exit    5
fail:   exit    7
`;
}
