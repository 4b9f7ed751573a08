// Saved vCPU state may come from a damaged or edited checkpoint: every vCPU is checked before
// any is loaded, and a bad one is refused with a KernelError naming the vCPU and the field.
import { describe, expect, it } from 'vitest';
import { createHypervisor, KernelError, type VmState } from '../../kernel/index.ts';

const MiB = 2 ** 20;

function twoVcpuVm() {
  const hv = createHypervisor({ hostMemoryBytes: 8 * MiB });
  const vm = hv.createVm({ memoryBytes: MiB, vcpus: 2 });
  vm.vcpus[0]!.pc = 0x1000;
  vm.vcpus[1]!.pc = 0x2000;
  return vm;
}

function refused(vm: ReturnType<typeof twoVcpuVm>, state: VmState): KernelError {
  try {
    vm.restoreState(state);
  } catch (error) {
    expect(error).toBeInstanceOf(KernelError);
    return error as KernelError;
  }
  throw new Error('restoreState accepted a bad state');
}

describe('saved vCPU state', () => {
  const cases: [string, (state: VmState) => void, RegExp][] = [
    ['null', (s) => ((s.vcpus as unknown[])[1] = null), /vCPU 1: the saved state is not an object/],
    ['registers missing', (s) => delete (s.vcpus[1] as Partial<VmState['vcpus'][0]>).regs, /vCPU 1: expected 16 numeric registers/],
    ['a register that is a string', (s) => ((s.vcpus[1]!.regs as unknown[])[3] = 'x'), /vCPU 1: expected 16 numeric registers/],
    ['pc missing', (s) => delete (s.vcpus[1] as Partial<VmState['vcpus'][0]>).pc, /vCPU 1: field pc is not a number/],
    ['negative instret', (s) => (s.vcpus[1]!.instret = -5), /vCPU 1: instret and clock/],
    ['a string deadline', (s) => ((s.vcpus[1] as unknown as Record<string, unknown>).timerDeadline = 'soon'), /vCPU 1: field timerDeadline/],
  ];
  for (const [what, damage, message] of cases) {
    it(`refuses ${what} in the second vCPU and loads neither`, () => {
      const source = twoVcpuVm();
      source.vcpus[0]!.pc = 0x4444;
      const state = structuredClone(source.captureState());
      damage(state);
      const target = twoVcpuVm();
      const error = refused(target, state);
      expect(error.code).toBe('BV_BAD_VCPU_STATE');
      expect(error.message).toMatch(message);
      expect(target.vcpus[0]!.pc).toBe(0x1000); // the good first vCPU was not loaded either
      expect(target.vcpus[1]!.pc).toBe(0x2000);
    });
  }

  it('loads a good state', () => {
    const source = twoVcpuVm();
    source.vcpus[1]!.pc = 0x4444;
    const target = twoVcpuVm();
    target.restoreState(structuredClone(source.captureState()));
    expect(target.vcpus[1]!.pc).toBe(0x4444);
  });
});
