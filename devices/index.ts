/**
 * The standard machine: console, timer, power and boot arguments, attached in that order, and
 * optionally a block device (a disk), a memory balloon and the MEMINFO device after them. The
 * order fixes their device-table entries and window addresses (0xf0001000, 0xf0002000, …), which is part of the guest ABI (docs/run.md):
 * keep it stable and append new devices after these.
 */
import type { Hypervisor, RunOptions, RunResult, Vm } from '../kernel/index.ts';
import { attachBalloon, BalloonDevice, type BalloonOptions } from './balloon.ts';
import { attachMeminfo, type MeminfoDevice } from './meminfo.ts';
import { attachBlock, openBlockDisk, type BlockDevice, type BlockDiskOptions, type BlockIoGate } from './block.ts';
import { attachBootArgs, BootArgsDevice } from './bootargs.ts';
import { attachConsole, CaptureSink, type ConsoleDevice, type ConsoleInputStream, type ConsoleSink } from './console.ts';
import { attachPmem, checkPmemOptions, type PmemDevice, type PmemOptions } from './pmem.ts';
import { attachPower, type PowerDevice } from './power.ts';
import { attachTimer, type TimerDevice } from './timer.ts';

export {
  attachBlock, BLOCK_COMPLETION_VALID, BLOCK_HOST_ERROR_LOG, BLOCK_IRQ_COMPLETION, BLOCK_LATENCY_EWMA_WEIGHT, BLOCK_MAX_COUNT, BLOCK_QUEUE_DEPTH, BLOCK_TAG_MAX,
  BlockCommand, BlockDevice, BlockRegister, BlockStatus, openBlockDisk, savedBlockDisk, savedBlockMode,
} from './block.ts';
export type { BlockDeviceOptions, BlockDiskOptions, BlockHostError, BlockIoGate, BlockSavedRequest, BlockState, BlockStats } from './block.ts';
export { holdWakeSource } from './wake.ts';
export {
  attachBalloon, BALLOON_MAX_ENTRIES, BALLOON_MAX_STATS_INTERVAL_S, BalloonCommand, BalloonDevice, BalloonError, BalloonFeature, BalloonRegister, BalloonStatTag,
  BalloonStatus,
} from './balloon.ts';
export type { BalloonCounters, BalloonGuestStats, BalloonOptions, BalloonState, BalloonStatsReport } from './balloon.ts';
export {
  attachChannels, CHANNEL_MAX_GRANT_PAGES, CHANNEL_MAX_GRANTS, CHANNEL_SLOTS, CHANNEL_STATE_NAMES, ChannelCommand, ChannelDevice, ChannelRegister, ChannelResult,
  ChannelService, ChannelState,
} from './channel.ts';
export type {
  ChannelDeviceState, ChannelGrantState, ChannelListener, ChannelOffer, ChannelOptions, ChannelServiceId, ChannelSlotState, ChannelSlotView, ChannelStateId,
} from './channel.ts';
export { attachMeminfo, HOST_PRESSURE_NAMES, HostPressure, MeminfoDevice, MeminfoError, MeminfoRegister } from './meminfo.ts';
export type { HostPressureLevel, MeminfoState, MemoryCondition } from './meminfo.ts';
export { DeviceStateError } from './state.ts';
export {
  BackingKind, decodeOverlayHeader, DISK_ERROR_CODES, DISK_SECTOR_BYTES, DiskChain, DiskError, encodeOverlayHeader, MAX_DISK_SECTORS,
  OVERLAY_HEADER_BYTES, OVERLAY_MAGIC, OVERLAY_VERSION, OverlayFlag, OverlayHeaderOffset, overlayDataOffset,
} from './disk-image.ts';
export type { BackingKindId, DiskChainState, DiskErrorCode, DiskLayerInfo, DiskOptions, OverlayHeader } from './disk-image.ts';
export { attachBootArgs, savedBootArgs, BootArgsDevice, BootArgsError, MAX_BOOT_ARGS_BYTES } from './bootargs.ts';
export {
  attachConsole, CaptureSink, ConsoleControl, ConsoleDevice, ConsoleRegister, ConsoleStatus, CONSOLE_CONTROL_RX_INTERRUPT, CONSOLE_NO_INPUT,
  CONSOLE_WRITE_MAX_BYTES,
} from './console.ts';
export type { ConsoleInputStream, ConsoleOptions, ConsoleSink } from './console.ts';
export { attachPmem, checkPmemOptions, PMEM_ALIGNMENT, PMEM_MAX_BYTES, PmemDevice, PmemError, PmemRegister, PmemStatus } from './pmem.ts';
export type { PmemOptions, PmemStats } from './pmem.ts';
export { attachPower, PowerDevice, PowerRegister, POWER_RESET_VALUE, RESET_PAUSE_REASON } from './power.ts';
export { attachTimer, TimerDevice, TimerRegister } from './timer.ts';

/** What attachStandardDevices attaches, and how. */
export interface StandardDeviceOptions {
  /** Console output; default process.stdout. A CaptureSink is also returned as `captured`. */
  output?: ConsoleSink;
  /** Console input available from the start. */
  input?: string | Uint8Array;
  /** Also read console input from this stream (true = process.stdin) while running. */
  interactiveInput?: boolean | ConsoleInputStream;
  /** No input follows `input`: the guest sees the end of input once it has read it. */
  closeInput?: boolean;
  /** The host pushes more input later (console.pushInput, then closeInput); see ConsoleOptions.hostInput. */
  hostInput?: boolean;
  /** Required with interactiveInput and hostInput (the VM becomes a wake source while it waits for input). */
  hypervisor?: Hypervisor;
  /** The boot argument string (default empty). */
  bootArgs?: string;
  /**
   * A disk for a block device, attached after the others: a raw image or an overlay
   * (docs/block-device.md); `async: true` accepts asynchronous requests (needs `hypervisor`),
   * `direct: true` makes them bypass the host page cache.
   */
  disk?: string | BlockDiskOptions;
  /** The host IO scheduler admitting an asynchronous disk's requests (default: none, they start at once). */
  diskGate?: BlockIoGate;
  /** The disk's owner name for diskGate (default: the VM's name). */
  diskOwner?: string;
  /** A memory balloon (docs/balloon.md), attached after the block device. */
  balloon?: BalloonOptions;
  /** The MEMINFO device (docs/meminfo.md), attached after the balloon. */
  meminfo?: boolean;
  /** Persistent memory (docs/pmem.md), attached after MEMINFO. */
  pmem?: PmemOptions;
}

/** The devices attachStandardDevices attached (pass them to runWithResets; keep them for their stats). */
export interface StandardDevices {
  /** The console (device-table entry 0, window 0xf0001000). */
  console: ConsoleDevice;
  /** The timer (entry 1). */
  timer: TimerDevice;
  /** The power device (entry 2): power-off and reset requests. */
  power: PowerDevice;
  /** The boot-argument device (entry 3). */
  bootArgs: BootArgsDevice;
  /** The block device when `disk` was given, else null. */
  block: BlockDevice | null;
  /** The balloon when `balloon` was given, else null. */
  balloon: BalloonDevice | null;
  /** The MEMINFO device when `meminfo` was true, else null. */
  meminfo: MeminfoDevice | null;
  /** The persistent-memory device when `pmem` was given, else null. */
  pmem: PmemDevice | null;
  /** The capture sink when `output` was one, else null. */
  captured: CaptureSink | null;
}

/**
 * Attaches console, timer, power and boot arguments to vm, in that order, then the block device
 * when a disk is given and the balloon when `balloon` is. Validates the boot arguments and the
 * balloon's options and opens the disk first, so a BootArgsError, BalloonError or DiskError
 * leaves the VM without any of these devices.
 */
export function attachStandardDevices(vm: Vm, options: StandardDeviceOptions = {}): StandardDevices {
  const bootArgsDevice = new BootArgsDevice(options.bootArgs ?? ''); // throws before anything is attached
  if (options.balloon !== undefined) new BalloonDevice(vm, options.balloon); // so does this (it attaches nothing)
  if (options.pmem !== undefined) checkPmemOptions(options.pmem, vm.name); // and this (a bad file or size)
  if (typeof options.disk === 'object' && options.disk.async === true && options.hypervisor === undefined) {
    throw new TypeError('an asynchronous disk needs the hypervisor (to wake the VM when a request completes)');
  }
  const disk = options.disk === undefined ? null : openBlockDisk(options.disk);
  const consoleOptions: Parameters<typeof attachConsole>[1] = {};
  if (options.output !== undefined) consoleOptions.output = options.output;
  if (options.input !== undefined) consoleOptions.input = options.input;
  if (options.interactiveInput !== undefined) consoleOptions.interactiveInput = options.interactiveInput;
  if (options.closeInput !== undefined) consoleOptions.closeInput = options.closeInput;
  if (options.hostInput !== undefined) consoleOptions.hostInput = options.hostInput;
  if (options.hypervisor !== undefined) consoleOptions.hypervisor = options.hypervisor;
  const console = attachConsole(vm, consoleOptions);
  const timer = attachTimer(vm);
  const power = attachPower(vm);
  const bootArgs = attachBootArgs(vm, bootArgsDevice);
  const block = disk === null ? null : attachBlock(vm, disk, {
    async: typeof options.disk === 'object' && options.disk.async === true,
    ...(options.hypervisor === undefined ? {} : { hypervisor: options.hypervisor }),
    ...(options.diskGate === undefined ? {} : { gate: options.diskGate }),
    ...(options.diskOwner === undefined ? {} : { owner: options.diskOwner }),
  });
  const balloon = options.balloon === undefined ? null : attachBalloon(vm, options.balloon);
  const meminfo = options.meminfo === true ? attachMeminfo(vm) : null;
  const pmem = options.pmem === undefined ? null : attachPmem(vm, options.pmem);
  return { console, timer, power, bootArgs, block, balloon, meminfo, pmem, captured: options.output instanceof CaptureSink ? options.output : null };
}

/** The outcome of runWithResets / runWithResetsAsync. */
export interface GuestRun {
  /** How the last run ended (never the pause of a reset request: resets are carried out). */
  reason: RunResult['reason'];
  /** Instructions retired over all runs, across resets. */
  instructions: number;
  /** Resets carried out. */
  resets: number;
}

/**
 * Runs one VM with standard devices until it stops, carrying out guest-requested resets between
 * runs (see devices/power.ts). `maxInstructions` bounds the total across resets. Flushes the
 * console at the end.
 */
export function runWithResets(hypervisor: Hypervisor, vm: Vm, devices: StandardDevices, options: RunOptions = {}): GuestRun {
  let instructions = 0;
  const resetsBefore = devices.power.resets;
  for (;;) {
    const [result] = hypervisor.run(remainingBudget(options, instructions), [vm]);
    instructions += result!.instructions;
    if (devices.power.completeReset()) continue;
    devices.console.flush();
    return { reason: result!.reason, instructions, resets: devices.power.resets - resetsBefore };
  }
}

/** runWithResets on hv.runAsync: the event loop runs between rounds (interactive input). */
export async function runWithResetsAsync(hypervisor: Hypervisor, vm: Vm, devices: StandardDevices, options: RunOptions = {}): Promise<GuestRun> {
  let instructions = 0;
  const resetsBefore = devices.power.resets;
  for (;;) {
    const [result] = await hypervisor.runAsync(remainingBudget(options, instructions), [vm]);
    instructions += result!.instructions;
    if (devices.power.completeReset()) continue;
    devices.console.flush();
    return { reason: result!.reason, instructions, resets: devices.power.resets - resetsBefore };
  }
}

function remainingBudget(options: RunOptions, used: number): RunOptions {
  if (options.maxInstructions === undefined) return options;
  return { ...options, maxInstructions: Math.max(0, options.maxInstructions - used) };
}
