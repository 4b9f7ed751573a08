/**
 * The partition bus (T-20, docs/bus.md): channels between guests and the host, and between two
 * guests relayed by the host, over the CHANNEL device (devices/channel.ts).
 */
export { Bus, BusError, formatVersion, PACKET_HEADER_BYTES, parseVersion, RingHeader } from './bus.ts';
export type { BusChannelConfig, BusChannelInfo, BusEndCounters, BusEndInfo, BusControlMessage, BusCreditMessage, BusFailure, BusLink, BusLinkMessage, BusOptions, BusPacketsMessage, BusRemoteEnd, BusTotals } from './bus.ts';
