/**
 * Across hosts (T-13): the host-to-host transport (a versioned, framed, checksummed channel over
 * mutual TLS, reused by any service that talks to another host) and live migration by pre-copy.
 * docs/migration.md describes the protocol, the API and the figures.
 */
export { MIGRATION_ERROR_CODES, MigrationError, TRANSPORT_ERROR_CODES, TransportError, type MigrationErrorCode, type TransportErrorCode } from './errors.ts';
export {
  connect,
  DEFAULT_MAX_FRAME_BYTES,
  DEFAULT_STALL_TIMEOUT_MS,
  encodeFrame,
  FIRST_APP_FRAME_TYPE,
  FRAME_HEADER_BYTES,
  FRAME_MAGIC,
  FRAME_TRAILER_BYTES,
  FramedChannel,
  TRANSPORT_VERSION,
  TransportFrame,
  TransportServer,
  type ChannelFaults,
  type ChannelOptions,
  type ChannelStats,
  type ConnectOptions,
  type Frame,
  type ListenOptions,
  type PeerHello,
  type PreparedFrame,
  type RefusedPeer,
  type TlsFiles,
  type HostPort,
  splitHostPort,
} from './transport.ts';
export {
  MIGRATION_PROTOCOL,
  MIGRATION_VERSIONS,
  MigrationFrame,
  MigrationReceiver,
  PrecopySender,
  REMOTE_PAGE_WAIT_REASON,
  type DestinationHooks,
  type PostcopyFigures,
  type MigrationFigures,
  type ReceiveFigures,
  type RoundFigures,
  type SendOptions,
  type SourceHooks,
} from './migration.ts';
export { MigrationCounters, type MigrationStatsReport } from './stats.ts';
export {
  adoptReceivedDisk, decodeDiskFrame, describeDisk, DirtySectorLog, discardReceivedDisk, DISK_FRAME_BYTES, diskFrames, parseMigratedDisk, receivingDisk, writeDiskRuns,
  type DiskRun, type MigratedDisk, type ReceivingDisk,
} from './disk.ts';
export {
  outputCommit,
  REPLICATION_PROTOCOL,
  REPLICATION_VERSIONS,
  ReplicaReceiver,
  ReplicationFrame,
  ReplicationSender,
  type ActivateHooks,
  type HeldOutput,
  type ReplicaFigures,
  type ReplicaOptions,
  type ReplicateOptions,
  type ReplicationFigures,
  type ReplicationHooks,
} from './replication.ts';
