/**
 * bytevisor's library entry point (`import … from 'bytevisor'`): the kernel (hypervisor, VMs,
 * guest memory), the standard devices, the services (checkpoint files, large pages, swap), the
 * guest ISA (assembler, disassembler, images) and the native host-memory layer. Each is also its
 * own entry point: `bytevisor/kernel`, `bytevisor/devices`, `bytevisor/services/checkpoint`,
 * `bytevisor/services/memory`, `bytevisor/guest-isa`, `bytevisor/native` (package.json `exports`).
 */
export * from './kernel/index.ts';
export * from './devices/index.ts';
export * from './services/checkpoint/index.ts';
export * from './services/memory/index.ts';
export * from './guest-isa/index.ts';
export * from './native/index.ts';
