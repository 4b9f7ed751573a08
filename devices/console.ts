/**
 * The console (SPEC.md §13.3, device type 1): a byte transmitter, a byte receiver with an
 * interrupt line, and the CONSOLE_WRITE hypercall (§10).
 *
 * Output goes to a sink (default process.stdout), buffered so that a guest printing byte by byte
 * does not cost one write per byte: the buffer is flushed at each newline, when it grows large,
 * shortly after a partial line (so an interactive prompt appears), and on stop().
 *
 * Input is either given up front (deterministic: tests, `--input`) or read from a stream while
 * the guest runs (interactive). Input can be closed (closeInput, the end of the stream): once the
 * last byte has been read, STATUS reports END_OF_INPUT, the guest's end-of-file. The interrupt
 * line is level-sensitive and recomputed whenever something it depends on changes: CONTROL, or
 * whether input is available or has ended.
 */
import { DeviceType, Hcall, HcallStatus, Reg } from '../guest-isa/arch.ts';
import type { Hypervisor, MmioDevice, Vcpu, Vm } from '../kernel/index.ts';
import { stateInteger, stateRecord } from './state.ts';
import { holdWakeSource } from './wake.ts';

/** Register offsets in the console window. */
export const ConsoleRegister = {
  /** Write: the low byte is output. */
  TX: 0,
  /** Read: the next input byte, or CONSOLE_NO_INPUT. */
  RX: 4,
  /** Read: ConsoleStatus bits. */
  STATUS: 8,
  /** Read/write: ConsoleControl bits (interrupt enables). */
  CONTROL: 12,
} as const;
/**
 * STATUS bits. END_OF_INPUT: the input is closed and every byte of it has been read, so RX will
 * never return a byte again (the guest's end-of-file).
 */
export const ConsoleStatus = {
  /** RX holds a byte. */
  INPUT_AVAILABLE: 1,
  /** TX accepts a byte (always set: output never blocks). */
  CAN_TRANSMIT: 2,
  /** The input is closed and fully read. */
  END_OF_INPUT: 4,
} as const;
/** CONTROL bits. */
export const ConsoleControl = {
  /** Assert the external interrupt while input is available. */
  RX_INTERRUPT: 1,
  /** Assert the external interrupt once input has ended (and all of it was read). */
  EOF_INTERRUPT: 2,
} as const;
/** CONTROL bit 0 (ConsoleControl.RX_INTERRUPT). */
export const CONSOLE_CONTROL_RX_INTERRUPT = ConsoleControl.RX_INTERRUPT;
/** The CONTROL bits that exist; the others read 0. */
const CONTROL_MASK = ConsoleControl.RX_INTERRUPT | ConsoleControl.EOF_INTERRUPT;
/** RX value when there is no input. */
export const CONSOLE_NO_INPUT = 0xffff_ffff | 0;
/** The longest buffer one CONSOLE_WRITE may name; longer is BAD_ARGUMENT. */
export const CONSOLE_WRITE_MAX_BYTES = 1024 * 1024;

/** Where console output goes: anything with a write method (process.stdout, a capture). */
export interface ConsoleSink {
  /** Receives output bytes as they are flushed (a string only from a host writing text). */
  write(chunk: Uint8Array | string): unknown;
}

/** A sink that keeps everything written to it (tests, embedding). */
export class CaptureSink implements ConsoleSink {
  private readonly chunks: Uint8Array[] = [];

  /** Keeps a copy of the chunk (strings as UTF-8). */
  write(chunk: Uint8Array | string): boolean {
    this.chunks.push(typeof chunk === 'string' ? new TextEncoder().encode(chunk) : new Uint8Array(chunk));
    return true;
  }

  /** Everything written so far, as one byte array. */
  bytes(): Uint8Array {
    const out = new Uint8Array(this.chunks.reduce((sum, chunk) => sum + chunk.length, 0));
    let at = 0;
    for (const chunk of this.chunks) {
      out.set(chunk, at);
      at += chunk.length;
    }
    return out;
  }

  /** Everything written so far, decoded as UTF-8. */
  text(): string {
    return new TextDecoder().decode(this.bytes());
  }
}

/** A readable byte stream for interactive input (process.stdin, a PassThrough in tests). */
export type ConsoleInputStream = NodeJS.ReadableStream;

/** How attachConsole sets the console up. */
export interface ConsoleOptions {
  /** Output sink; default process.stdout. */
  output?: ConsoleSink;
  /** Input available from the start (a string is encoded as UTF-8). */
  input?: string | Uint8Array;
  /**
   * No input follows `input`: once it has been read the guest sees END_OF_INPUT. Default false
   * (a host may still pushInput; call closeInput when it is done). Not with interactiveInput,
   * whose input closes when the stream ends.
   */
  closeInput?: boolean;
  /**
   * Read more input from this stream while the guest runs (true = process.stdin). Reading starts
   * the first time the guest touches RX, STATUS or CONTROL. Needs `hypervisor`.
   */
  interactiveInput?: boolean | ConsoleInputStream;
  /**
   * More input may be pushed by the host (pushInput) until closeInput: a guest waiting for it is
   * waiting, not idle forever (a host feeding the console through its API). Needs `hypervisor`.
   */
  hostInput?: boolean;
  /** The VM's hypervisor: required with interactiveInput and hostInput, to register as a wake source. */
  hypervisor?: Hypervisor;
}

/** Output is written out once this many bytes are buffered, newline or not. */
const OUTPUT_BUFFER_LIMIT = 64 * 1024;
const NEWLINE = 0x0a;

/**
 * The console device model (attachConsole creates and attaches it): buffered output to a sink,
 * input given up front, pushed by the host or read from a stream, and the CONSOLE_WRITE
 * hypercall. Call flush() (or stop()) before reading a capture or exiting.
 */
export class ConsoleDevice implements MmioDevice {
  /** Guest-physical base of the window (set by attachConsole). */
  base = 0;
  /** CONTROL register. */
  private control = 0;
  private readonly sink: ConsoleSink;
  private outBuffer = new Uint8Array(256);
  private outLength = 0;
  private flushScheduled = false;
  /** Pending input: chunks consumed front to back. */
  private readonly inputChunks: Uint8Array[] = [];
  private inputOffset = 0;
  private readonly interactive: ConsoleInputStream | null;
  /** The host may push input later (ConsoleOptions.hostInput). */
  private readonly hostFed: boolean;
  private readonly hypervisor: Hypervisor | null;
  private reading = false;
  /** No more input will arrive (closed by the host, or the stream ended). */
  private inputEnded = false;
  private inputClosedByHost = false;
  private stopped = false;
  /** This console's line into EXTERNAL (Vm.claimInterruptLine). */
  private readonly interruptLine: number;
  /**
   * The interactive stream's listeners, made when reading starts: a fork's or a restore's console
   * (no interactive input) does not pay for two closures at attach.
   */
  private listeners: { data: (chunk: Buffer | string) => void; end: () => void } | null = null;

  constructor(private readonly vm: Vm, options: ConsoleOptions = {}) {
    this.interruptLine = vm.claimInterruptLine();
    this.sink = options.output ?? process.stdout;
    if (options.input !== undefined) {
      this.pushInput(typeof options.input === 'string' ? new TextEncoder().encode(options.input) : new Uint8Array(options.input));
    }
    const interactive = options.interactiveInput;
    this.interactive = interactive === true ? process.stdin : interactive ? interactive : null;
    this.hypervisor = options.hypervisor ?? null;
    this.hostFed = options.hostInput === true;
    if ((this.interactive || this.hostFed) && !this.hypervisor) {
      throw new TypeError(`console: ${this.hostFed ? 'hostInput' : 'interactiveInput'} needs the hypervisor (to wake the VM when input arrives)`);
    }
    if (options.closeInput) {
      if (this.interactive || this.hostFed) throw new TypeError('console: closeInput goes with input given up front, not with interactiveInput or hostInput');
      this.inputEnded = true;
    }
  }

  /** The CONTROL register (checkpoint state). */
  get controlRegister(): number {
    return this.control;
  }

  /** Restores CONTROL from a checkpoint, re-deriving the interrupt line. */
  restoreControl(value: unknown): void {
    this.control = savedControl(value);
    // A guest saved while it waited on the console has already touched it: read input now, as
    // its next access would have made us (it may wait in wfi and never touch it again).
    if (this.control !== 0) this.startReading();
    this.updateInterrupt();
    this.updateWakeSource();
  }

  read(_vcpu: Vcpu, offset: number): number {
    switch (offset) {
      case ConsoleRegister.RX: {
        this.startReading();
        const byte = this.takeInputByte();
        if (byte < 0) return CONSOLE_NO_INPUT;
        // The last pending byte: the RX line drops (and the EOF line rises if input is closed).
        if (!this.inputAvailable) this.updateInterrupt();
        return byte;
      }
      case ConsoleRegister.STATUS:
        this.startReading();
        return (this.inputAvailable ? ConsoleStatus.INPUT_AVAILABLE : 0) | ConsoleStatus.CAN_TRANSMIT | (this.endOfInput ? ConsoleStatus.END_OF_INPUT : 0);
      case ConsoleRegister.CONTROL:
        this.startReading();
        return this.control;
      default:
        return 0;
    }
  }

  write(_vcpu: Vcpu, offset: number, value: number): boolean {
    if (offset === ConsoleRegister.TX) {
      this.emitByte(value & 0xff);
    } else if (offset === ConsoleRegister.CONTROL) {
      this.startReading();
      this.control = value & CONTROL_MASK;
      this.updateInterrupt();
      this.updateWakeSource();
    }
    // RX and STATUS are read-only and other offsets are empty: writes are ignored (§11.3).
    return true;
  }

  /** Appends bytes to the output (TX, CONSOLE_WRITE). */
  emit(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    this.reserve(bytes.length);
    this.outBuffer.set(bytes, this.outLength);
    this.outLength += bytes.length;
    this.afterEmit(bytes.lastIndexOf(NEWLINE) >= 0);
  }

  /** Writes out everything buffered. */
  flush(): void {
    if (this.outLength === 0) return;
    const chunk = this.outBuffer.slice(0, this.outLength);
    this.outLength = 0;
    this.sink.write(chunk);
  }

  /**
   * Adds input (interactive data, or a host that feeds the guest). Input pushed after closeInput
   * is an error: the guest may already have seen the end.
   */
  pushInput(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    if (this.inputClosedByHost) throw new TypeError('console: input pushed after closeInput');
    this.inputChunks.push(bytes);
    this.updateInterrupt();
  }

  /**
   * No more input will come: once the guest has read what is pending, STATUS reports
   * END_OF_INPUT (and the EOF interrupt may fire). Stops reading an interactive stream.
   * Idempotent.
   */
  closeInput(): void {
    this.inputClosedByHost = true;
    if (this.interactive && this.reading) this.detachStream();
    this.inputEnded = true;
    this.updateInterrupt();
    this.updateWakeSource();
  }

  /** True once input is closed and all of it has been read: STATUS.END_OF_INPUT. */
  get endOfInput(): boolean {
    return this.inputEnded && !this.inputAvailable;
  }

  /** Bytes of input not yet read by the guest. */
  get pendingInputBytes(): number {
    let total = -this.inputOffset;
    for (const chunk of this.inputChunks) total += chunk.length;
    return total;
  }

  /** A copy of the input not yet read by the guest (a host moving the VM carries it along). */
  pendingInput(): Uint8Array {
    const bytes = new Uint8Array(this.pendingInputBytes);
    let at = 0;
    for (let i = 0; i < this.inputChunks.length; i++) {
      const chunk = i === 0 ? this.inputChunks[0]!.subarray(this.inputOffset) : this.inputChunks[i]!;
      bytes.set(chunk, at);
      at += chunk.length;
    }
    return bytes;
  }

  /** Whether the host closed the input (closeInput): no more may be pushed. */
  get inputClosed(): boolean {
    return this.inputClosedByHost;
  }

  /** Whether input bytes are waiting to be read by the guest (STATUS.INPUT_AVAILABLE). */
  get inputAvailable(): boolean {
    return this.inputChunks.length > 0;
  }

  /** Flushes output and stops reading interactive input (listeners removed, stream paused). */
  stop(): void {
    this.flush();
    this.stopped = true;
    if (this.interactive && this.reading) this.detachStream();
    if (this.hypervisor) holdWakeSource(this.hypervisor, this.vm, this, false);
  }

  private detachStream(): void {
    const stream = this.interactive!;
    const listeners = this.listeners!;
    stream.off('data', listeners.data);
    stream.off('end', listeners.end);
    stream.off('close', listeners.end);
    stream.pause();
    this.reading = false;
  }

  /** Device reset (§15): CONTROL = 0, so the interrupt line drops. Buffered input survives. */
  reset(): void {
    this.control = 0;
    this.updateInterrupt();
    this.updateWakeSource();
  }

  /** The CONSOLE_WRITE hypercall: a1 = guest-virtual address, a2 = length. */
  consoleWriteHypercall(vcpu: Vcpu): void {
    const length = vcpu.regs[Reg.A2]! >>> 0;
    if (length > CONSOLE_WRITE_MAX_BYTES) {
      vcpu.regs[Reg.A0] = HcallStatus.BAD_ARGUMENT;
      return;
    }
    const bytes = length === 0 ? new Uint8Array(0) : this.vm.readVirtual(vcpu, vcpu.regs[Reg.A1]! >>> 0, length);
    if (!bytes) {
      vcpu.regs[Reg.A0] = HcallStatus.BAD_ARGUMENT;
      return;
    }
    this.emit(bytes);
    vcpu.regs[Reg.A0] = HcallStatus.OK;
  }

  private emitByte(byte: number): void {
    this.reserve(1);
    this.outBuffer[this.outLength++] = byte;
    this.afterEmit(byte === NEWLINE);
  }

  private afterEmit(sawNewline: boolean): void {
    if (sawNewline || this.outLength >= OUTPUT_BUFFER_LIMIT || this.stopped) {
      this.flush();
    } else if (!this.flushScheduled) {
      // A partial line (a prompt) must still appear while the guest waits for input.
      this.flushScheduled = true;
      setImmediate(() => {
        this.flushScheduled = false;
        this.flush();
      }).unref();
    }
  }

  private reserve(extra: number): void {
    if (this.outLength + extra <= this.outBuffer.length) return;
    const grown = new Uint8Array(Math.max(this.outBuffer.length * 2, this.outLength + extra));
    grown.set(this.outBuffer.subarray(0, this.outLength));
    this.outBuffer = grown;
  }

  private takeInputByte(): number {
    const chunk = this.inputChunks[0];
    if (!chunk) return -1;
    const byte = chunk[this.inputOffset++]!;
    if (this.inputOffset >= chunk.length) {
      this.inputChunks.shift();
      this.inputOffset = 0;
    }
    return byte;
  }

  /**
   * The line is asserted exactly while CONTROL bit 0 = 1 and input is available, or CONTROL
   * bit 1 = 1 and input has ended (STATUS.END_OF_INPUT).
   */
  private updateInterrupt(): void {
    const rx = (this.control & ConsoleControl.RX_INTERRUPT) !== 0 && this.inputAvailable;
    const eof = (this.control & ConsoleControl.EOF_INTERRUPT) !== 0 && this.endOfInput;
    this.vm.setInterruptLine(this.interruptLine, rx || eof);
  }

  /**
   * Interactive or host-fed input can wake the VM only through the console interrupt, so the VM
   * is a wake source exactly while an interrupt is enabled and the stream (or the host) may still
   * deliver bytes (or the end); otherwise an idle guest is reported idle instead of waiting for
   * input that cannot wake it.
   */
  private updateWakeSource(): void {
    if (!this.hypervisor) return;
    const mayWake = (this.reading || this.hostFed) && !this.inputEnded && !this.stopped && (this.control & CONTROL_MASK) !== 0;
    holdWakeSource(this.hypervisor, this.vm, this, mayWake); // (other devices may hold the VM too)
  }

  private startReading(): void {
    if (!this.interactive || this.reading || this.inputEnded || this.stopped) return;
    this.reading = true;
    const listeners = (this.listeners ??= {
      data: (chunk) => this.pushInput(typeof chunk === 'string' ? new TextEncoder().encode(chunk) : new Uint8Array(chunk)),
      end: () => {
        this.inputEnded = true;
        this.updateInterrupt();
        this.updateWakeSource();
      },
    });
    this.interactive.on('data', listeners.data);
    this.interactive.on('end', listeners.end);
    this.interactive.on('close', listeners.end);
    this.updateWakeSource();
  }
}

/** Attaches a console to vm (window + CONSOLE_WRITE hypercall + reset hook). */
export function attachConsole(vm: Vm, options: ConsoleOptions = {}): ConsoleDevice {
  const device = new ConsoleDevice(vm, options);
  device.base = vm.attachDevice({ type: DeviceType.CONSOLE, name: 'console' }, device);
  vm.onHypercall(Hcall.CONSOLE_WRITE, (vcpu) => device.consoleWriteHypercall(vcpu));
  vm.onReset(() => device.reset());
  // Checkpoints and forks carry the guest-visible register state. Pending input is not part of
  // it: after a restore or in a fork child, input comes from whoever runs it.
  vm.registerState('console', {
    version: 1,
    // Methods, not arrow properties: under tsx (esbuild keepNames) each named arrow costs a
    // defineProperty call at every attach, which a fork pays.
    save() {
      return { control: device.controlRegister };
    },
    check(state) {
      savedControl(stateRecord(state, 'console').control);
    },
    restore(state) {
      device.restoreControl(stateRecord(state, 'console').control);
    },
  });
  return device;
}

/** A saved CONTROL value, 0 … CONTROL_MASK (DeviceStateError otherwise, see devices/state.ts). */
function savedControl(value: unknown): number {
  return stateInteger(value, 'console', 'control', 0, CONTROL_MASK);
}
