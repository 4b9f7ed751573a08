import { BvError } from '../../guest-isa/errors.ts';

/** Codes of StorageIoError. */
export type StorageIoErrorCode =
  /** A setting out of range (the message names it). */
  | 'BV_STORAGE_CONFIG'
  /** The statistics file could not be opened, read or written. */
  | 'BV_STORAGE_FILE'
  /** Another live host writes the slot this host was given (host_id). */
  | 'BV_STORAGE_SLOT_BUSY';

/** A failure of decentralised IO control (services/storage, docs/storage-io.md). */
export class StorageIoError extends BvError {
  constructor(code: StorageIoErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}
