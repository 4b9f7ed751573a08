/**
 * VM-level checkpoints: what a Vm's state looks like inside a checkpoint file, and saving a
 * stopped VM (T-10). Restoring is restore.ts; snapshots of a running VM are live-snapshot.ts.
 * docs/checkpoints.md describes what a checkpoint holds and the guarantees.
 *
 * Layout inside the file (docs/checkpoint-format.md is the container):
 *   CONFIG   { kind: 'bytevisor-vm', stateVersion, vm: VmState.config, layout: VmState.layout,
 *            wrappedComponents, extra }
 *   CPUS     VmState.vcpus (the kernel's vCPU state objects)
 *   DEVICES  one record per registered state component (name, its version, its state), plus
 *            '#image': the loaded guest image as .bvx bytes (guest resets reload it)
 *   memory   every guest page; untouched and all-zero pages are not stored
 */
import { BvError } from '../../guest-isa/errors.ts';
import { encodeImage, parseImage } from '../../guest-isa/image.ts';
import type { GuestImage } from '../../guest-isa/image-types.ts';
import { AbsentState, DeviceLayoutError, FRAME_SIZE, KernelError, PageState, parseDeviceLayout } from '../../kernel/index.ts';
import type { LargePagePolicy, MmuOptions, VcpuState, Vm, VmState } from '../../kernel/index.ts';
import type { CheckpointContents, DeviceState, JsonObject, JsonValue } from './format.ts';
import { writeCheckpoint } from './writer.ts';
import type { Compression, WriteStats } from './writer.ts';

/** Stable codes of VM checkpoint errors (file damage is a CheckpointError instead). */
export type VmCheckpointErrorCode =
  /** The file is a valid checkpoint but not of a VM (its CONFIG is not a VM configuration). */
  | 'BV_VMCKPT_NOT_VM'
  /** The VM configuration is invalid or disagrees with the file (memory size vs memory index). */
  | 'BV_VMCKPT_CONFIG'
  /** A request that cannot be honoured: an unknown mode, map mode on a pool that cannot map files, a bad option. */
  | 'BV_VMCKPT_BAD_REQUEST'
  /** A page or component cannot be saved (a poisoned page, a reserved component name). */
  | 'BV_VMCKPT_UNSAVEABLE'
  /** A live snapshot could not complete (the VM was reset while it ran, a write failed). */
  | 'BV_VMCKPT_SNAPSHOT_FAILED';

/** A VM-level checkpoint failure (see VmCheckpointErrorCode). */
export class VmCheckpointError extends BvError {
  /** One of VmCheckpointErrorCode. */
  declare readonly code: VmCheckpointErrorCode;

  constructor(code: VmCheckpointErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

/** CONFIG.kind of a VM checkpoint. */
export const VM_CHECKPOINT_KIND = 'bytevisor-vm';
/**
 * Version of what this file puts in CONFIG/DEVICES (not the container format's version). 2 added
 * CONFIG.layout, the device windows; version 1 files are refused (they cannot be checked).
 */
export const VM_STATE_VERSION = 2;
/** The DEVICES record holding the guest image. Component names may not start with '#'. */
export const IMAGE_RECORD = '#image';
const RESERVED_PREFIX = '#';
const IMAGE_RECORD_VERSION = 1;

/** Options shared by saveVmCheckpoint and startLiveSnapshot. */
export interface VmSaveOptions {
  /** 'none' (default: raw blocks, can be mapped on restore) or 'lz4'. */
  compression?: Compression;
  /** Staging buffer = largest block (default 1 MiB = 256 pages; ≤ 4 MiB keeps blocks mappable in one piece). */
  stagingBytes?: number;
  /** Pages handled so far and the VM's page count. */
  onProgress?: (done: number, total: number) => void;
  /** Caller data stored in CONFIG.extra and handed back on restore (tools: command line, disk paths). */
  extra?: JsonObject;
}

/**
 * Saves `vm` to `path`: configuration, vCPUs, every registered state component, the loaded image
 * and all guest memory. Call it between runs (never from inside hv.run). Untouched pages cost
 * nothing; pages in other absent states (swapped, lazily restored…) are brought in to be read.
 * Replaces `path` atomically; on any error the previous file stays.
 */
export function saveVmCheckpoint(vm: Vm, path: string, options: VmSaveOptions = {}): WriteStats {
  settlePoisonedPages(vm);
  const contents = vmCheckpointContents(vm, vm.captureState(), options.extra);
  const writeOptions: Parameters<typeof writeCheckpoint>[3] = {};
  if (options.compression !== undefined) writeOptions.compression = options.compression;
  if (options.stagingBytes !== undefined) writeOptions.stagingBytes = options.stagingBytes;
  if (options.onProgress !== undefined) writeOptions.onProgress = options.onProgress;
  return writeCheckpoint(path, contents, { page: (gpn) => currentPage(vm, gpn), pagesStable: pagesStayPut(vm) }, writeOptions);
}

/**
 * Whether reading every page of a stopped `vm` in turn leaves the pages already read as they
 * are: true when no page waits for a resolver (swapped, lazy, remote, poisoned, shared) and no
 * restore region is deferred, so currentPage only returns views of present frames or null.
 * (A resolver may allocate, and so evict or move, other pages.)
 */
function pagesStayPut(vm: Vm): boolean {
  const memory = vm.memory;
  if (memory.pendingRegionCount !== 0) return false;
  for (const state of Object.values(AbsentState)) {
    if (state !== AbsentState.UNTOUCHED && state !== AbsentState.BALLOONED && memory.countInState(state) !== 0) return false;
  }
  return true;
}

/**
 * Gives each poisoned page its chance of recovery before a checkpoint captures the state
 * (GuestMemory.settlePage: the POISONED resolver, told that the host asks). The pages still
 * poisoned are listed in the state (VmState.poisonedPages) and saved without bytes.
 */
export function settlePoisonedPages(vm: Vm): void {
  const memory = vm.memory;
  if (memory.countInState(AbsentState.POISONED) === 0) return; // a snapshot's pause: nothing to build
  for (const gpn of memory.poisonedPages()) memory.settlePage(gpn);
}

/** Read once: under tsx each use of an imported binding is a getter call (currentPage runs per page). */
const { UNTOUCHED, BALLOONED, PRESENT, POISONED } = PageState;

/**
 * The current bytes of guest page `gpn` (a view into host memory, valid until the page
 * changes), or null for an untouched or ballooned page, or a poisoned one its resolver cannot
 * rebuild (`onPoisoned` is told). Other absent states are resolved by their resolvers.
 */
export function currentPage(vm: Vm, gpn: number, onPoisoned?: (gpn: number) => void): Uint8Array | null {
  const memory = vm.memory;
  const state = memory.stateOf(gpn); // a region a lazy restore deferred is filled in first
  // A ballooned page holds nothing: the balloon's own state lists it and puts it back on restore.
  if (state === UNTOUCHED || state === BALLOONED) return null;
  if (state === PRESENT) return memory.presentPageBytes(gpn);
  // Its bytes are lost: saved as poisoned (the state lists it), unless recovery rebuilds it now.
  if (state === POISONED) {
    if (memory.settlePage(gpn)) return memory.presentPageBytes(gpn);
    onPoisoned?.(gpn);
    return null;
  }
  const described = memory.describe(gpn);
  try {
    return memory.pageBytes(gpn);
  } catch (error) {
    if (!(error instanceof KernelError)) throw error;
    throw new VmCheckpointError('BV_VMCKPT_UNSAVEABLE', `${vm.name}: guest page ${gpn} is ${described} and cannot be read, so it cannot be saved (${error.message})`, { cause: error });
  }
}

/**
 * Images never change once loaded, and forks share them: encode each once (a live snapshot's
 * pause must not pay for it every time).
 */
const encodedImages = new WeakMap<GuestImage, Uint8Array>();
function encodedImage(image: GuestImage): Uint8Array {
  let bytes = encodedImages.get(image);
  if (bytes === undefined) {
    bytes = encodeImage(image);
    encodedImages.set(image, bytes);
  }
  return bytes;
}

/**
 * Encodes the VM's image for checkpoint contents now, if that has not been done (the result is
 * kept): a live migration calls it before its switch-over, so the pause does not pay for it
 * (~3 ms for a small image from cold code).
 */
export function prepareImageRecord(vm: Vm): void {
  if (vm.image !== null) encodedImage(vm.image);
}

/**
 * Throws BV_VMCKPT_UNSAVEABLE when one of `state`'s components has a reserved name (the checks
 * of vmCheckpointContents that can fail, for a caller that converts the state later).
 */
export function checkSaveableState(vm: Vm, state: VmState): void {
  for (const name of Object.keys(state.components)) {
    if (name.startsWith(RESERVED_PREFIX)) {
      throw new VmCheckpointError('BV_VMCKPT_UNSAVEABLE', `${vm.name}: state component '${name}' cannot be saved: names starting with '${RESERVED_PREFIX}' are reserved`);
    }
  }
}

/**
 * Everything but memory, in checkpoint form. `state` comes from vm.captureState(); `image` is
 * the guest image to record (default: the one the VM has loaded now).
 */
export function vmCheckpointContents(vm: Vm, state: VmState, extra: JsonObject | undefined, image: GuestImage | null = vm.image): CheckpointContents {
  checkSaveableState(vm, state);
  const devices: Record<string, DeviceState> = {};
  const wrappedComponents: string[] = [];
  for (const [name, component] of Object.entries(state.components)) {
    const value = component.state;
    if (value instanceof Uint8Array || isPlainObject(value)) devices[name] = { version: component.version, state: value as JsonObject | Uint8Array };
    else {
      // The container stores objects or bytes; anything else travels wrapped.
      devices[name] = { version: component.version, state: { value: (value ?? null) as JsonValue } };
      wrappedComponents.push(name);
    }
  }
  if (image !== null) devices[IMAGE_RECORD] = { version: IMAGE_RECORD_VERSION, state: encodedImage(image) };
  const vmConfig: JsonObject = {
    name: state.config.name,
    memoryBytes: state.config.memoryBytes,
    vcpus: state.config.vcpus,
    largePages: state.config.largePages,
  };
  if (state.config.mmu !== undefined) vmConfig.mmu = withoutUndefined(state.config.mmu);
  const layout = state.layout.map(({ name, type, base, size }) => ({ name, type, base, size }));
  const config: JsonObject = { kind: VM_CHECKPOINT_KIND, stateVersion: VM_STATE_VERSION, vm: vmConfig, layout, wrappedComponents };
  if (state.poisonedPages !== undefined) config.poisonedPages = state.poisonedPages;
  if (extra !== undefined) config.extra = extra;
  return {
    config,
    cpus: state.vcpus as unknown as JsonObject[],
    devices,
    pageCount: vm.memory.pageCount,
  };
}

/** A VM checkpoint's contents turned back into kernel terms. */
/** A VM checkpoint's non-memory contents, decoded (decodeVmCheckpoint). */
export interface DecodedVmCheckpoint {
  /** The VM's configuration, vCPU and component states and device layout. */
  state: VmState;
  /** The guest image the VM had loaded, or null. */
  image: GuestImage | null;
  /** CONFIG.extra as saved, or null. */
  extra: JsonObject | null;
}

/**
 * Reads back what vmCheckpointContents wrote, checking the configuration against the memory
 * index (`pageCount`). `path` is only for messages.
 */
export function decodeVmCheckpoint(contents: CheckpointContents, path: string): DecodedVmCheckpoint {
  const { config } = contents;
  if (config.kind !== VM_CHECKPOINT_KIND) {
    throw new VmCheckpointError('BV_VMCKPT_NOT_VM', `${path}: not a VM checkpoint (its configuration has no kind '${VM_CHECKPOINT_KIND}')`);
  }
  if (config.stateVersion !== VM_STATE_VERSION) {
    const old = config.stateVersion === 1 ? '; version 1 predates the saved device layout, so its devices cannot be checked' : '';
    throw new VmCheckpointError('BV_VMCKPT_CONFIG', `${path}: VM state version ${String(config.stateVersion)} is not supported (this build reads version ${VM_STATE_VERSION})${old}`);
  }
  const vm = config.vm;
  if (!isPlainObject(vm)) throw new VmCheckpointError('BV_VMCKPT_CONFIG', `${path}: the VM configuration is missing`);
  const { name, memoryBytes, vcpus, largePages, mmu } = vm as Record<string, JsonValue>;
  if (typeof name !== 'string') throw configError(path, 'name', name);
  if (typeof memoryBytes !== 'number' || !Number.isSafeInteger(memoryBytes) || memoryBytes <= 0) throw configError(path, 'memoryBytes', memoryBytes);
  if (typeof vcpus !== 'number' || !Number.isInteger(vcpus)) throw configError(path, 'vcpus', vcpus);
  if (largePages !== 'off' && largePages !== 'superpages' && largePages !== 'always') throw configError(path, 'largePages', largePages ?? null);
  if (mmu !== undefined && !isPlainObject(mmu)) throw configError(path, 'mmu', mmu);
  if (memoryBytes !== contents.pageCount * FRAME_SIZE) {
    throw new VmCheckpointError(
      'BV_VMCKPT_CONFIG',
      `${path}: the configuration says ${memoryBytes} bytes of guest memory, but the memory index covers ${contents.pageCount} pages (${contents.pageCount * FRAME_SIZE} bytes)`,
    );
  }
  if (contents.cpus.length !== vcpus) {
    throw new VmCheckpointError('BV_VMCKPT_CONFIG', `${path}: the configuration says ${vcpus} vCPUs, but the file holds ${contents.cpus.length} vCPU states`);
  }
  let layout: VmState['layout'];
  try {
    layout = parseDeviceLayout(config.layout, path);
  } catch (error) {
    if (!(error instanceof DeviceLayoutError)) throw error;
    throw new VmCheckpointError('BV_VMCKPT_CONFIG', error.message, { cause: error });
  }
  const wrapped = new Set(Array.isArray(config.wrappedComponents) ? config.wrappedComponents : []);
  const components: VmState['components'] = {};
  let image: GuestImage | null = null;
  for (const [recordName, record] of Object.entries(contents.devices)) {
    if (recordName === IMAGE_RECORD) {
      image = decodeImageRecord(record, path);
      continue;
    }
    if (recordName.startsWith(RESERVED_PREFIX)) throw new VmCheckpointError('BV_VMCKPT_CONFIG', `${path}: unknown VM record '${recordName}'`);
    const state = wrapped.has(recordName) && isPlainObject(record.state) ? (record.state as JsonObject).value : record.state;
    components[recordName] = { version: record.version, state };
  }
  const vmConfig: VmState['config'] = { name, memoryBytes, vcpus, largePages: largePages as LargePagePolicy };
  if (mmu !== undefined) vmConfig.mmu = mmu as MmuOptions;
  const poisoned = config.poisonedPages;
  if (poisoned !== undefined && (!Array.isArray(poisoned) || !poisoned.every((gpn) => typeof gpn === 'number' && Number.isInteger(gpn) && gpn >= 0 && gpn < contents.pageCount))) {
    throw configError(path, 'poisonedPages', poisoned);
  }
  const state: VmState = { config: vmConfig, vcpus: contents.cpus as unknown as VcpuState[], components, layout };
  if (poisoned !== undefined) state.poisonedPages = poisoned as number[];
  return {
    state,
    image,
    extra: isPlainObject(config.extra) ? config.extra : null,
  };
}

function decodeImageRecord(record: DeviceState, path: string): GuestImage {
  if (record.version !== IMAGE_RECORD_VERSION || !(record.state instanceof Uint8Array)) {
    throw new VmCheckpointError('BV_VMCKPT_CONFIG', `${path}: the saved guest image record is version ${record.version}, this build reads version ${IMAGE_RECORD_VERSION} (bytes)`);
  }
  try {
    return parseImage(record.state);
  } catch (error) {
    throw new VmCheckpointError('BV_VMCKPT_CONFIG', `${path}: the saved guest image is invalid: ${(error as Error).message}`, { cause: error });
  }
}

function configError(path: string, field: string, value: JsonValue | undefined): VmCheckpointError {
  return new VmCheckpointError('BV_VMCKPT_CONFIG', `${path}: the VM configuration has an invalid ${field} (${JSON.stringify(value ?? null)})`);
}

function isPlainObject(value: unknown): value is JsonObject {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const prototype = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}

/** MmuOptions with its unset fields dropped (JSON has no undefined). */
function withoutUndefined(options: MmuOptions): JsonObject {
  return Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined)) as JsonObject;
}
