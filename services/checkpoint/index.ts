/**
 * The checkpoint file layer (T-10, T-11): a versioned, checksummed container of a VM's
 * configuration, vCPU and device states and its memory, written crash-safely through a staging
 * buffer and read lazily block by block. docs/checkpoint-format.md specifies the bytes.
 */
export { CHECKPOINT_ERROR_CODES, CheckpointError, type CheckpointErrorCode } from './errors.ts';
export {
  BLOCK_ALIGNMENT,
  DEFAULT_STAGING_BYTES,
  FORMAT_VERSION,
  MAX_BLOCK_PAGES,
  PAGE_BYTES,
  type BlockKindName,
  type CheckpointContents,
  type CheckpointState,
  type DeviceState,
  type JsonObject,
  type JsonValue,
} from './format.ts';
export {
  CheckpointWriter,
  removeStaleTempFiles,
  writeCheckpoint,
  type BeginOptions,
  type Compression,
  type PageSource,
  type WriteOptions,
  type WriteStats,
} from './writer.ts';
export {
  CheckpointReader,
  diffCheckpoints,
  type BlockInfo,
  type BlockPages,
  type OpenOptions,
  type CheckpointDiff,
  type CheckpointSummary,
  type PageRange,
  type PageRun,
  type RawBlockExtent,
  type RegionEntries,
} from './reader.ts';
// VM-level checkpoints (save, restore lazy/eager/map, live snapshots): docs/checkpoints.md.
export {
  currentPage,
  decodeVmCheckpoint,
  IMAGE_RECORD,
  saveVmCheckpoint,
  vmCheckpointContents,
  VM_CHECKPOINT_KIND,
  VM_STATE_VERSION,
  VmCheckpointError,
  type DecodedVmCheckpoint,
  type VmCheckpointErrorCode,
  type VmSaveOptions,
} from './vm-checkpoint.ts';
export { readVmCheckpointConfig, restoreVmCheckpoint, RestoredVm, type PrefetchOptions, type RestoreMode, type RestoreOptions } from './restore.ts';
export { LiveSnapshot, startLiveSnapshot, type LiveSnapshotOptions } from './live-snapshot.ts';
