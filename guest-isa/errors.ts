/**
 * The base of every typed bytevisor error. Each kind has a stable `code` (for programs) and a
 * one-line message (for people); tools print `error: <message>` and exit non-zero, never a stack
 * trace, for any BvError. This lives in guest-isa because it is the lowest layer: every other
 * part of the project may import it.
 */
export class BvError extends Error {
  constructor(
    /** Stable machine-readable code, e.g. `BV_IMAGE_TRUNCATED`. */
    readonly code: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = new.target.name;
  }
}
