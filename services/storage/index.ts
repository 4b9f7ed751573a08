/**
 * Decentralised IO control (PARDA, T-19; docs/storage-io.md): a host-wide window of IOs in flight
 * adjusted from a latency average that every host publishes in a shared statistics file.
 */
export { StorageIoError, type StorageIoErrorCode } from './errors.ts';
export { admitted, betaOf, clusterLatency, ewmaLatency, nextWindow, normalisedLatency, predictedLatency, REFERENCE_IO_BYTES, sizeFactor, type LatencySample, type WindowLawInput } from './law.ts';
export { decodeBlock, encodeBlock, StatsFile, StatsFlag, STATS_BLOCK_BYTES, STATS_MAGIC, STATS_MAX_HOSTS, STATS_VERSION, type HostBlock, type StatsSnapshot } from './stats-file.ts';
export {
  DEFAULT_IO_SHARES,
  MAX_IO_SHARES,
  PardaController,
  STORAGE_IO_DEFAULTS,
  type PeerStatus,
  type StorageIoClock,
  type StorageIoOptions,
  type StorageIoStatus,
  type StorageIoUpdate,
  type VmIoStatus,
} from './controller.ts';
export { RemoteIoGate, RemoteIoLink, RemoteIoOp, type RemoteIoEvent, type RemoteIoGrant, type RemoteIoStatus } from './remote-gate.ts';
export { SimulatedDevice, simulateCluster, type SimulatedDeviceOptions, type SimulatedHost, type SimulatedHostFigures } from './model.ts';
