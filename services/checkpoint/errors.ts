/**
 * Typed errors of the checkpoint file layer. Every damaged or foreign file is refused with one of
 * these, and `where` names the part that is bad (`header`, `section table`, `section CONFIG`,
 * `block 12`, `memory index`…), so a tool can print one line that says what to look at.
 */
import { BvError } from '../../guest-isa/errors.ts';

/** Stable codes of every checkpoint error (see docs/checkpoint-format.md). */
export const CHECKPOINT_ERROR_CODES = [
  /** The file does not start with the checkpoint magic (empty, or some other kind of file). */
  'BV_CKPT_NOT_CHECKPOINT',
  /** The file names a format version this build does not read; the message names both. */
  'BV_CKPT_VERSION',
  /** A valid header asks for something this build does not know (flag bits, page size). */
  'BV_CKPT_UNSUPPORTED',
  /** The file is shorter (or longer) than its header says: an interrupted copy or a cut file. */
  'BV_CKPT_TRUNCATED',
  /** A CRC-32 over the header, section table, a section or a memory block does not match. */
  'BV_CKPT_CHECKSUM',
  /** Checksums match but the structure is inconsistent (offsets, lengths, index, JSON, lz4). */
  'BV_CKPT_CORRUPT',
  /** The caller broke the API contract (page length, page number, duplicate page, non-JSON state). */
  'BV_CKPT_BAD_ARGUMENT',
  /** Use of a reader or writer after close()/finish()/abort(). */
  'BV_CKPT_CLOSED',
  /** A file-system call failed (missing file, permission, disk full); the cause is attached. */
  'BV_CKPT_IO',
] as const;

/** One of CHECKPOINT_ERROR_CODES. */
export type CheckpointErrorCode = (typeof CHECKPOINT_ERROR_CODES)[number];

/** A checkpoint file failure: damage, a bad argument, I/O (see CHECKPOINT_ERROR_CODES). */
export class CheckpointError extends BvError {
  /** One of CHECKPOINT_ERROR_CODES. */
  declare readonly code: CheckpointErrorCode;

  constructor(
    code: CheckpointErrorCode,
    message: string,
    /** The part of the file (or API) that is bad, e.g. `section DEVICES` or `block 3`; '' when none. */
    readonly where: string = '',
    options?: { cause?: unknown },
  ) {
    super(code, message, options);
  }
}
