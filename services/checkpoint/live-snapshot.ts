/**
 * Checkpoints while the VM runs (T-12). The pause is only startLiveSnapshot itself: it captures
 * the CPU and component state (a block device seals its overlay there, which switches the disk
 * to copy-on-write) and opens a write epoch in the kernel, without touching guest memory. Then
 * the guest resumes:
 *
 * - the first guest write to a page not yet saved calls the epoch hook first, which copies the
 *   page's old contents into the checkpoint writer (addPage copies before it returns);
 * - a ticker (deterministic: every N guest instructions) claims and saves K pages per tick in
 *   page order; a page already claimed by a write is skipped.
 *
 * When every page is saved the epoch ends and the file is finished with the state captured at
 * the pause. So the file holds exactly the VM as it was at the pause, equal page for page to a
 * stop-the-world saveVmCheckpoint taken at the same instruction.
 */
import type { GuestImage } from '../../guest-isa/image-types.ts';
import type { Vm, VmState } from '../../kernel/index.ts';
import { CheckpointWriter } from './writer.ts';
import type { BeginOptions, WriteStats } from './writer.ts';
import { checkSaveableState, currentPage, settlePoisonedPages, vmCheckpointContents, VmCheckpointError } from './vm-checkpoint.ts';
import type { VmSaveOptions } from './vm-checkpoint.ts';
import type { CheckpointState, JsonObject } from './format.ts';

/** Options of startLiveSnapshot (and those of saveVmCheckpoint). */
export interface LiveSnapshotOptions extends VmSaveOptions {
  /** Pages the background saver copies per tick (default 256 = 1 MiB); pages already saved by writes are skipped free. */
  pagesPerTick?: number;
  /** Guest instructions between ticks (default 20,000: about one scheduling round). */
  everyInstructions?: number;
}

const DEFAULT_PAGES_PER_TICK = 256;
const DEFAULT_EVERY_INSTRUCTIONS = 20_000;

type Phase = 'saving' | 'done' | 'failed' | 'aborted';

function checkPositive(name: string, value: number): void {
  if (!Number.isSafeInteger(value) || value <= 0) throw new VmCheckpointError('BV_VMCKPT_BAD_REQUEST', `${name} must be a positive integer, got ${String(value)}`);
}

/**
 * Starts a snapshot of `vm` into `path` while the VM is stopped between runs; returns at once
 * (the pause). Keep running the VM: the snapshot completes in the background, or call finish()
 * to complete it now. Only one snapshot per VM at a time.
 */
export function startLiveSnapshot(vm: Vm, path: string, options: LiveSnapshotOptions = {}): LiveSnapshot {
  return new LiveSnapshot(vm, path, options);
}

/**
 * A checkpoint being written while its VM runs (startLiveSnapshot). It completes in the
 * background as the VM runs, or at once with finish(); the file then holds the VM as it was at
 * the pause.
 */
export class LiveSnapshot {
  /** The VM being saved. */
  declare readonly vm: Vm;
  /** The checkpoint file it writes (created on first use, replaced atomically at the end). */
  declare readonly path: string;
  /** Guest pages to save (guest RAM / 4096). */
  declare readonly pageCount: number;
  /** Milliseconds the VM was held in startLiveSnapshot. */
  declare readonly pauseMs: number;
  /** Guest instructions retired when the snapshot was taken: the file's point in time. */
  declare readonly atInstruction: number;

  /** Created on first use, after the pause: creating the file is most of what a pause would cost. */
  #writerInstance: CheckpointWriter | null = null;
  readonly #writerOptions: BeginOptions;
  /**
   * What the pause captured; turned into checkpoint form (vmCheckpointContents) only when the
   * file is finished, so the pause does not pay for it.
   */
  readonly #captured: { state: VmState; image: GuestImage | null; extra: JsonObject | undefined };
  readonly #onProgress: ((done: number, total: number) => void) | undefined;
  #phase: Phase = 'saving';
  #cursor = 0;
  #savedByWrites = 0;
  #savedByTicker = 0;
  #error: Error | null = null;
  #stats: WriteStats | null = null;
  /** Pages poisoned after the pause, found so by the saver before it saved them, and not rebuilt. */
  readonly #poisonedLater: number[] = [];

  /** @internal Use startLiveSnapshot. */
  constructor(vm: Vm, path: string, options: LiveSnapshotOptions) {
    const started = performance.now();
    const pagesPerTick = options.pagesPerTick ?? DEFAULT_PAGES_PER_TICK;
    const everyInstructions = options.everyInstructions ?? DEFAULT_EVERY_INSTRUCTIONS;
    checkPositive('pagesPerTick', pagesPerTick);
    checkPositive('everyInstructions', everyInstructions);
    if (vm.memory.writeEpochActive) throw new VmCheckpointError('BV_VMCKPT_BAD_REQUEST', `${vm.name}: a snapshot of this VM is already being taken`);
    this.vm = vm;
    this.path = path;
    this.pageCount = vm.memory.pageCount;
    this.atInstruction = vm.instructionsRetired;
    this.#onProgress = options.onProgress;
    const writerOptions: BeginOptions = { pageCount: this.pageCount };
    if (options.compression !== undefined) writerOptions.compression = options.compression;
    if (options.stagingBytes !== undefined) writerOptions.stagingBytes = options.stagingBytes;
    // The writer's own progress counts pages as they are added; ours is reported per tick.
    this.#writerOptions = writerOptions;
    settlePoisonedPages(vm); // costs nothing unless pages are poisoned
    const state = vm.captureState();
    checkSaveableState(vm, state); // fails now, not at the end
    this.#captured = { state, image: vm.image, extra: options.extra };
    vm.memory.beginWriteEpoch((gpn, bytes) => this.#saveBeforeWrite(gpn, bytes));
    vm.addTicker(everyInstructions, () => this.#tick(pagesPerTick));
    // RAM goes back to the image on reset without guest writes: the old contents would be lost.
    vm.onReset(() => this.#fail(new VmCheckpointError('BV_VMCKPT_SNAPSHOT_FAILED', `${vm.name}: the VM was reset while the snapshot ${path} was being taken`)));
    this.pauseMs = performance.now() - started;
  }

  #writer(): CheckpointWriter {
    this.#writerInstance ??= CheckpointWriter.begin(this.path, this.#writerOptions);
    return this.#writerInstance;
  }

  /** True once the file is complete (renamed into place). */
  get done(): boolean {
    return this.#phase === 'done';
  }

  /** Pages saved so far (by guest writes and by the background saver). */
  get pagesSaved(): number {
    return this.#savedByWrites + this.#savedByTicker;
  }

  /** Pages saved because the guest was about to write them (their old contents). */
  get savedByWrites(): number {
    return this.#savedByWrites;
  }

  /** Pages saved by the background saver. */
  get savedByTicker(): number {
    return this.#savedByTicker;
  }

  /** Why the snapshot failed (it no longer runs; the target file is untouched), or null. */
  get error(): Error | null {
    return this.#error;
  }

  /** The finished file's statistics, or null until done. */
  get stats(): WriteStats | null {
    return this.#stats;
  }

  /**
   * Saves every remaining page now and finishes the file (call between runs, e.g. at the end of
   * a run). Throws the failure if the snapshot failed; returns the stats if already done.
   */
  finish(): WriteStats {
    if (this.#phase === 'saving') this.#save(Infinity);
    if (this.#phase === 'done') return this.#stats!;
    if (this.#phase === 'aborted') throw new VmCheckpointError('BV_VMCKPT_SNAPSHOT_FAILED', `the snapshot ${this.path} was aborted`);
    throw this.#error!;
  }

  /** Gives up: ends the write epoch and deletes the temp file; the target is untouched. */
  abort(): void {
    if (this.#phase !== 'saving') return;
    this.#phase = 'aborted';
    this.vm.memory.endWriteEpoch();
    this.#writerInstance?.abort();
  }

  // -------------------------------------------------------------------------------------------

  /** Epoch hook: runs inside a guest store, before it lands. Never throws into the guest. */
  #saveBeforeWrite(gpn: number, bytes: Uint8Array): void {
    if (this.#phase !== 'saving') return;
    try {
      this.#writer().addPage(gpn, bytes);
      this.#savedByWrites++;
    } catch (error) {
      this.#fail(error as Error);
    }
  }

  #tick(pages: number): void {
    if (this.#phase === 'saving') this.#save(pages);
  }

  /**
   * Claims and saves up to `budget` pages from the cursor on; pages a guest write saved already
   * are skipped at no cost. Finishes the file after the last page.
   */
  #save(budget: number): void {
    const vm = this.vm;
    const poisonedLater = this.#poisonedLater;
    const onPoisoned = (gpn: number): void => void poisonedLater.push(gpn);
    try {
      for (; this.#cursor < this.pageCount && budget > 0; this.#cursor++) {
        const gpn = this.#cursor;
        if (!vm.memory.claimPage(gpn)) continue; // a guest write saved it already
        this.#writer().addPage(gpn, currentPage(vm, gpn, onPoisoned));
        this.#savedByTicker++;
        budget--;
      }
      this.#onProgress?.(this.pagesSaved, this.pageCount);
      if (this.#cursor === this.pageCount) {
        vm.memory.endWriteEpoch();
        const { state, image, extra } = this.#captured;
        const contents: CheckpointState = vmCheckpointContents(vm, state, extra, image);
        if (this.#poisonedLater.length > 0) {
          // Errors after the pause in pages not saved yet: their pause-time bytes are gone.
          const listed = (contents.config.poisonedPages ?? []) as number[];
          contents.config.poisonedPages = [...new Set([...listed, ...this.#poisonedLater])].sort((a, b) => a - b);
        }
        this.#stats = this.#writer().finish(contents);
        this.#phase = 'done';
      }
    } catch (error) {
      this.#fail(error as Error);
    }
  }

  #fail(error: Error): void {
    if (this.#phase !== 'saving') return;
    this.#phase = 'failed';
    this.#error = error;
    this.vm.memory.endWriteEpoch();
    this.#writerInstance?.abort();
  }
}
