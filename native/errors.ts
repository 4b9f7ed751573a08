import { BvError } from '../guest-isa/errors.ts';

/** Stable codes of every error the native addon raises (see docs/native.md). */
export const NATIVE_ERROR_CODES = [
  /** Wrong type, not a non-negative safe integer, empty string, unknown mode or kind; a preadAsync target detached before the read settled. */
  'BV_NATIVE_BAD_ARGUMENT',
  /** A range outside the region, or a file range past the end of the file. */
  'BV_NATIVE_OUT_OF_RANGE',
  /** An offset, length or size that must be a multiple of HOST_PAGE_SIZE (or of an O_DIRECT file's directAlignment) is not. */
  'BV_NATIVE_UNALIGNED',
  /** A region above 4 GiB (the N-API limit for one ArrayBuffer); an async file transfer above 64 MiB. */
  'BV_NATIVE_TOO_LARGE',
  /** Use of a region or file after close(). */
  'BV_NATIVE_CLOSED',
  /** An operation that this kind of region does not offer (mapFilePrivate on a shared region); O_DIRECT on a file system without it. */
  'BV_NATIVE_UNSUPPORTED',
  /** Shrinking a file that a live region maps (touching the lost pages would kill the process). */
  'BV_NATIVE_BUSY',
  /** A system call failed; errnoName, syscall and path say which and why. */
  'BV_NATIVE_IO',
  /** The addon binary is missing: run `npm install`. */
  'BV_NATIVE_NOT_BUILT',
] as const;

/** One of NATIVE_ERROR_CODES. */
export type NativeErrorCode = (typeof NATIVE_ERROR_CODES)[number];

/** What a NativeError says about a failed system call. */
export interface NativeErrorDetails {
  /** Symbolic errno, e.g. `ENOENT` (BV_NATIVE_IO only). */
  readonly errnoName?: string;
  /** The failing system call, e.g. `open` (BV_NATIVE_IO only). */
  readonly syscall?: string;
  /** The path involved, when there is one. */
  readonly path?: string;
}

/** A typed failure of the native addon: bad arguments, closed objects, system call errors. */
export class NativeError extends BvError {
  /** One of NATIVE_ERROR_CODES. */
  declare readonly code: NativeErrorCode;
  /** Symbolic errno, e.g. `ENOENT` (BV_NATIVE_IO only). */
  readonly errnoName: string | undefined;
  /** The failing system call, e.g. `open` (BV_NATIVE_IO only). */
  readonly syscall: string | undefined;
  /** The path involved, when there is one. */
  readonly path: string | undefined;

  constructor(code: NativeErrorCode, message: string, details: NativeErrorDetails = {}) {
    super(code, message);
    this.errnoName = details.errnoName;
    this.syscall = details.syscall;
    this.path = details.path;
  }
}

const knownCodes: ReadonlySet<string> = new Set(NATIVE_ERROR_CODES);

/**
 * Rethrows an error raised by the addon as a NativeError. The addon marks its errors with a
 * `code` property; anything else (a bug, not a caller's mistake) passes through unchanged.
 */
export function rethrowNative(error: unknown): never {
  if (error instanceof Error && !(error instanceof NativeError)) {
    const fields = error as Error & { code?: unknown; errnoName?: unknown; syscall?: unknown; path?: unknown };
    if (typeof fields.code === 'string' && knownCodes.has(fields.code)) {
      throw new NativeError(fields.code as NativeErrorCode, error.message, {
        errnoName: typeof fields.errnoName === 'string' ? fields.errnoName : undefined,
        syscall: typeof fields.syscall === 'string' ? fields.syscall : undefined,
        path: typeof fields.path === 'string' ? fields.path : undefined,
      });
    }
  }
  throw error;
}
