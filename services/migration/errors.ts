/**
 * Typed errors of the host-to-host transport and of live migration. Every refusal has a stable
 * code and a one-line message that names what was wrong (docs/migration.md lists them).
 */
import { BvError } from '../../guest-isa/errors.ts';

/** Stable codes of transport errors. */
export const TRANSPORT_ERROR_CODES = [
  /** The options are unusable: neither TLS files nor `insecure`, an unreadable certificate file, a bad limit. */
  'BV_XPORT_CONFIG',
  /** The peer could not be reached (refused, unreachable, name not resolved). */
  'BV_XPORT_CONNECT',
  /** The peer speaks another transport version or application protocol version; the message names both. */
  'BV_XPORT_VERSION',
  /** The peer speaks another application protocol (a migration stream sent to a replication port). */
  'BV_XPORT_PROTOCOL',
  /** A frame failed its checks: wrong magic, header or payload checksum, an unknown frame type. */
  'BV_XPORT_CORRUPT',
  /** The stream ended in the middle of a frame, or before the peer said goodbye. */
  'BV_XPORT_TRUNCATED',
  /** The peer sent nothing (or accepted nothing) for longer than the stall timeout. */
  'BV_XPORT_STALLED',
  /** A frame larger than the receiver's limit was announced (or a sender tried to send one). */
  'BV_XPORT_OVERSIZE',
  /** The TLS handshake failed on a certificate: ours or theirs is not trusted. */
  'BV_XPORT_UNTRUSTED',
  /** The peer gave up and said why (an ERROR frame); the message carries its reason. */
  'BV_XPORT_PEER_ERROR',
  /** The channel was closed (locally, or a fault injection cut it) and cannot be used. */
  'BV_XPORT_CLOSED',
] as const;

/** One of TRANSPORT_ERROR_CODES. */
export type TransportErrorCode = (typeof TRANSPORT_ERROR_CODES)[number];

/** A transport failure (see TRANSPORT_ERROR_CODES). */
export class TransportError extends BvError {
  /** One of TRANSPORT_ERROR_CODES. */
  declare readonly code: TransportErrorCode;

  constructor(
    code: TransportErrorCode,
    message: string,
    options?: {
      cause?: unknown;
    },
  ) {
    super(code, message, options);
  }
}

/** Stable codes of migration errors (the transport's own failures stay TransportErrors). */
export const MIGRATION_ERROR_CODES = [
  /** A request that cannot be honoured (a bad option, a VM in the wrong state, a mode not built). */
  'BV_MIG_BAD_REQUEST',
  /** The peer broke the migration protocol (a frame out of order, a page outside the VM). */
  'BV_MIG_PROTOCOL',
  /** The VM's state could not be captured or applied on the other side. */
  'BV_MIG_STATE',
  /** The migration took longer than its timeout. */
  'BV_MIG_TIMEOUT',
  /** The migration was cancelled (the VM stopped, was deleted, or the host closed). */
  'BV_MIG_CANCELLED',
  /** The VM's disk cannot be moved: its base image is not the same file on the destination, or the received overlay cannot be written. */
  'BV_MIG_DISK',
] as const;

/** One of MIGRATION_ERROR_CODES. */
export type MigrationErrorCode = (typeof MIGRATION_ERROR_CODES)[number];

/** A migration failure that is not the transport's (see MIGRATION_ERROR_CODES). */
export class MigrationError extends BvError {
  /** One of MIGRATION_ERROR_CODES. */
  declare readonly code: MigrationErrorCode;

  constructor(code: MigrationErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}
