/**
 * Sv32 paging (SPEC.md §12): the walk, permissions against a reference model written from the
 * SPEC text, superpages, A/D bits, sfence, ASIDs, and turning paging on and off — in every
 * translation configuration of the kernel (shadow tables with and without traces, nested walks).
 *
 * Page tables are written from the host into guest RAM (tests/kernel/helpers.ts HostPageTables):
 * the root's entry 0 maps the first 4 MiB onto itself for the supervisor, so kernel code, data
 * and the tables themselves stay reachable (and writable by the guest) once paging is on.
 */
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Cause, DeviceTable, GuestPhys, Pte, StatusBit } from '../../guest-isa/arch.ts';
import { encodeInstruction } from '../../guest-isa/encoding.ts';
import { createHypervisor, type MmuOptions, type RunResult } from '../../kernel/index.ts';
import { bootGuest, expectHalted, hex, HostPageTables, MiB, MMU_CONFIGS, pte, ptbrFor, writeWord, type Guest } from './helpers.ts';

const hv = createHypervisor({ hostMemoryBytes: 64 * MiB });
afterEach(() => {
  for (const vm of [...hv.vms]) hv.destroyVm(vm);
});

const ROOT = 0x10_0000;
const FIRST_TABLE = 0x10_1000;
const { V, R, W, X, U, G, A, D } = Pte;
const { SUM, MXR, SPP } = StatusBit;

interface PagedGuest extends Guest {
  tables: HostPageTables;
}

/** Boots `source` (which may use PTBR, PTBR_ASID2 …) with host-built page tables at ROOT. */
function bootPaged(source: string, memoryBytes = 16 * MiB): PagedGuest {
  const constants = `
        .equ PTBR, ${hex(ptbrFor(ROOT, 1))}
        .equ PTBR_ASID2, ${hex(ptbrFor(ROOT, 2))}
`;
  const guest = bootGuest(constants + source, { hv, memoryBytes, mmu: currentMmu });
  const tables = new HostPageTables(guest.vm, ROOT, FIRST_TABLE);
  return Object.assign(guest, { tables });
}

function fill(guest: Guest, gpa: number, value: number): void {
  writeWord(guest.vm, gpa, value);
}

/** The MMU configuration the running block of tests uses (set by describeEachMmu). */
let currentMmu: MmuOptions = {};

/** The conformance suite must hold in every MMU configuration: one block per configuration. */
function describeEachMmu(title: string, body: () => void): void {
  for (const [name, options] of MMU_CONFIGS) {
    describe(`${title} [MMU: ${name}]`, () => {
      beforeAll(() => {
        currentMmu = options;
      });
      body();
    });
  }
}

// -------------------------------------------------------------------------------------------------

describeEachMmu('the reference walk of SPEC.md §12.8 (worked example)', () => {
  /**
   * The example's tables: root at 0x10000 (ptbr 0x80000010), entry 1 as given; the code is reached
   * through an identity superpage for the supervisor (entry 0) and, for user mode, through a
   * user alias of the same memory at 0x00800000 (entry 2).
   */
  function example(rootEntry1: number, body: string, user = false): Guest {
    const guest = bootGuest(`
_start: la t0, handler
        csrrw zero, tvec, t0
        li t0, 0x80000010
        csrrw zero, ptbr, t0
${user ? `        la t0, 1f
        li t1, 0x00800000
        add t0, t0, t1
        csrrw zero, epc, t0
        li t0, ${SPP}
        csrrc zero, status, t0
        sret
1:` : ''}
${body}
        ${user ? 'ecall' : 'exiti 0'}
handler: exiti 0x77
`, { hv, memoryBytes: 8 * MiB, mmu: currentMmu });
    const vm = guest.vm;
    vm.writePhysical(0x10000, new Uint8Array(4096));
    vm.writePhysical(0x11000, new Uint8Array(4096));
    writeWord(vm, 0x10000, 0x0000_00cf);
    writeWord(vm, 0x10004, rootEntry1);
    writeWord(vm, 0x10008, 0x0000_00df);
    writeWord(vm, 0x1100c, 0x000a_9407);
    writeWord(vm, 0x2a_5a24, 0x600d_f00d);
    return guest;
  }

  it('lw from 0x00403a24 reads PA 0x002a5a24 and sets A: the PTE becomes 0x000a9447', () => {
    const guest = example(0x0000_4401, '        li t1, 0x00403a24\n        lw a2, 0(t1)');
    expectHalted(guest.run({ maxInstructions: 1000 }), 0);
    expect(hex(guest.vcpu().regs[6]!)).toBe(hex(0x600d_f00d));
    expect(hex(guest.word(0x1100c))).toBe(hex(0x000a_9447));
  });

  it('sw to the same address writes PA 0x002a5a24 and sets A and D: 0x000a94c7', () => {
    const guest = example(0x0000_4401, '        li t1, 0x00403a24\n        li t2, 0x1234\n        sw t2, 0(t1)');
    expectHalted(guest.run({ maxInstructions: 1000 }), 0);
    expect(hex(guest.word(0x2a_5a24))).toBe(hex(0x1234));
    expect(hex(guest.word(0x1100c))).toBe(hex(0x000a_94c7));
  });

  it('in U mode the same lw is a load page fault (the page has U = 0), tval = the address', () => {
    const guest = example(0x0000_4401, '        li t1, 0x00403a24\n        lw a2, 0(t1)', true);
    expectHalted(guest.run({ maxInstructions: 1000 }), 0x77);
    expect(guest.vcpu().cause).toBe(Cause.LOAD_PAGE_FAULT);
    expect(hex(guest.vcpu().tval)).toBe(hex(0x0040_3a24));
  });

  it('the superpage root entry 0x001000cf maps 0x00403a24 onto itself', () => {
    const guest = example(0x0010_00cf, '        li t1, 0x00403a24\n        lw a2, 0(t1)', false);
    guest.vm.writePhysical(0x40_3a24, new Uint8Array([1, 2, 3, 4]));
    expectHalted(guest.run({ maxInstructions: 1000 }), 0);
    expect(hex(guest.vcpu().regs[6]!)).toBe(hex(0x0403_0201));
  });

  it('the misaligned superpage 0x001004cf is a page fault', () => {
    const guest = example(0x0010_04cf, '        li t1, 0x00403a24\n        lw a2, 0(t1)', false);
    expectHalted(guest.run({ maxInstructions: 1000 }), 0x77);
    expect(guest.vcpu().cause).toBe(Cause.LOAD_PAGE_FAULT);
  });
});

// -------------------------------------------------------------------------------------------------

type AccessName = 'load' | 'store' | 'amo' | 'fetch';
const ACCESSES: AccessName[] = ['load', 'store', 'amo', 'fetch'];

/**
 * The permission rules of SPEC.md §12.4 steps 3–5, for a level-0 entry. Returns the trap cause
 * the access raises; a permitted access reaches the `ecall` after it (cause 8 or 9).
 */
function referenceCause(flags: number, user: boolean, sum: boolean, mxr: boolean, access: AccessName): number {
  const pageFault = access === 'load' ? Cause.LOAD_PAGE_FAULT : access === 'fetch' ? Cause.INSN_PAGE_FAULT : Cause.STORE_PAGE_FAULT;
  const r = (flags & R) !== 0;
  const w = (flags & W) !== 0;
  const x = (flags & X) !== 0;
  if ((flags & V) === 0 || (!r && w)) return pageFault; // step 3: invalid or reserved
  if (!r && !x) return pageFault; // step 4: a pointer at level 0
  const userPage = (flags & U) !== 0;
  if (user && !userPage) return pageFault;
  if (!user && userPage && (access === 'fetch' || !sum)) return pageFault;
  const allowed = access === 'fetch' ? x : access === 'load' ? r || (x && mxr) : w;
  if (!allowed) return pageFault;
  return user ? Cause.ECALL_USER : Cause.ECALL_SUPERVISOR;
}

describeEachMmu('permissions: every R/W/X/U × mode × SUM × MXR × access against the SPEC rules', () => {
  const PAGE_VA = 0x4000_0000;
  const FRAMES = 0x20_0000;
  const USER_STUBS_VA = 0x4010_0000;

  it('all 512 combinations', () => {
    interface PermCase { flags: number; user: boolean; sum: boolean; mxr: boolean; access: AccessName; va: number }
    const cases: PermCase[] = [];
    for (let kind = 0; kind < 16; kind++) {
      const flags = V | A | D | ((kind >> 1) << 1) | ((kind & 1) !== 0 ? U : 0); // X W R from bits 3..1
      const va = PAGE_VA + kind * 0x1000;
      for (const user of [false, true]) {
        for (const sum of [false, true]) {
          for (const mxr of [false, true]) {
            for (const access of ACCESSES) cases.push({ flags, user, sum, mxr, access, va });
          }
        }
      }
    }
    const caseCode = cases.map((c, i) => {
      const stub = `st_${c.access}`;
      const enter = c.user
        ? `        li t3, ${hex(USER_STUBS_VA)} + (${stub} - stubs)
        csrrw zero, epc, t3
        li t0, ${SPP}
        csrrc zero, status, t0
        sret`
        : `        la t3, ${stub}
        jalr zero, t3, 0`;
      return `
        li t0, ${(c.sum ? SUM : 0) | (c.mxr ? MXR : 0)}
        csrrw zero, status, t0
        sfence zero, zero
        li t1, ${hex(c.va)}
        li t2, 5
        la s1, case${i + 1}
${enter}
case${i + 1}:`;
    });
    const guest = bootPaged(`
_start: la s0, results
        la t0, handler
        csrrw zero, tvec, t0
        li t0, PTBR
        csrrw zero, ptbr, t0
${caseCode.join('\n')}
        exiti 0
handler:                              # record the cause, continue at s1 in S mode
        csrrs t0, cause, zero
        sw t0, 0(s0)
        addi s0, s0, 4
        csrrw zero, epc, s1
        li t0, ${SPP}
        csrrs zero, status, t0
        sret
        .align 12
stubs:                                # run in S at their own address, in U through USER_STUBS_VA
st_load:  lw t2, 0x100(t1)
          ecall
st_store: sw t2, 0x100(t1)
          ecall
st_amo:   addi t3, t1, 0x100
          amoadd t2, t2, (t3)
          ecall
st_fetch: jalr zero, t1, 0            # the page holds an ecall at offset 0
        .align 12
        .data
results: .space ${cases.length * 4}
`);
    const ecall = encodeInstruction('ecall', {});
    for (let kind = 0; kind < 16; kind++) {
      const frame = FRAMES + kind * 0x1000;
      fill(guest, frame, ecall);
      const flags = V | A | D | ((kind >> 1) << 1) | ((kind & 1) !== 0 ? U : 0);
      guest.tables.setLeaf(PAGE_VA + kind * 0x1000, pte(frame, flags));
    }
    guest.tables.map(USER_STUBS_VA, guest.sym('stubs'), V | R | X | U | A);
    expectHalted(guest.run({ maxInstructions: 1_000_000 }), 0);
    const got = guest.words(guest.sym('results'), cases.length);
    const mismatches = cases.flatMap((c, i) => {
      const want = referenceCause(c.flags, c.user, c.sum, c.mxr, c.access);
      if (got[i] === want) return [];
      const perms = `${c.flags & X ? 'X' : '-'}${c.flags & W ? 'W' : '-'}${c.flags & R ? 'R' : '-'}${c.flags & U ? 'U' : '-'}`;
      return [`${c.access} of a ${perms} page in ${c.user ? 'U' : 'S'} mode (SUM ${+c.sum}, MXR ${+c.mxr}): cause ${got[i]}, want ${want}`];
    });
    expect(mismatches).toEqual([]);
    // The reference really distinguishes the cases (it is not trivially all-faults or all-OK).
    expect(new Set(cases.map((c) => referenceCause(c.flags, c.user, c.sum, c.mxr, c.access))).size).toBeGreaterThanOrEqual(5);
  });
});

// -------------------------------------------------------------------------------------------------

describeEachMmu('walk results', () => {
  /** Runs `body` with paging on; a trap powers off with 0x77. */
  function paged(body: string, setup: (guest: PagedGuest) => void, memoryBytes?: number): PagedGuest & { last: RunResult } {
    const guest = bootPaged(`
_start: la t0, handler
        csrrw zero, tvec, t0
        li t0, PTBR
        csrrw zero, ptbr, t0
${body}
        exiti 0
handler: exiti 0x77
`, memoryBytes);
    setup(guest);
    return Object.assign(guest, { last: guest.run({ maxInstructions: 100_000 }) });
  }

  it('a 4 MiB superpage maps every 4 KiB page of its region, offsets preserved', () => {
    const guest = paged(`
        li t1, 0x40400000
        lw s1, 0(t1)
        li t1, 0x40401ffc
        lw s2, 0(t1)
        li t1, 0x407ff000
        lw s3, 0(t1)`, (g) => {
      g.tables.setRoot(0x40400000 >>> 22, pte(0x40_0000, V | R | A));
      fill(g, 0x40_0000, 0x1111);
      fill(g, 0x40_1ffc, 0x2222);
      fill(g, 0x7f_f000, 0x3333);
    });
    expectHalted(guest.last, 0);
    const regs = guest.vcpu().regs;
    expect([regs[13], regs[14], regs[15]]).toEqual([0x1111, 0x2222, 0x3333]);
  });

  it('a superpage whose PPN[0] is not 0 is a page fault for every access kind', () => {
    for (const [body, cause] of [
      ['lw a0, 0(t1)', Cause.LOAD_PAGE_FAULT],
      ['sw a0, 0(t1)', Cause.STORE_PAGE_FAULT],
      ['jalr zero, t1, 0', Cause.INSN_PAGE_FAULT],
    ] as const) {
      const guest = paged(`        li t1, 0x40400000\n        ${body}`, (g) => {
        g.tables.setRoot(0x40400000 >>> 22, pte(0x40_1000, V | R | W | X | A | D));
      });
      expectHalted(guest.last, 0x77);
      expect(guest.vcpu().cause, body).toBe(cause);
      hv.destroyVm(guest.vm);
    }
  });

  it('W without R is reserved at either level, and a pointer at level 0 is a page fault', () => {
    for (const [entry, where] of [
      [V | W | A | D, 'leaf'],
      [V | W | X | A | D, 'leaf'],
      [V, 'leaf'],
      [V | W | A | D, 'root'],
    ] as const) {
      const guest = paged('        li t1, 0x40400000\n        lw a0, 0(t1)', (g) => {
        if (where === 'root') g.tables.setRoot(0x40400000 >>> 22, pte(0x40_0000, entry));
        else g.tables.setLeaf(0x4040_0000, pte(0x20_0000, entry));
      });
      expectHalted(guest.last, 0x77);
      expect(guest.vcpu().cause, `${where} ${entry}`).toBe(Cause.LOAD_PAGE_FAULT);
      hv.destroyVm(guest.vm);
    }
  });

  it('a physical address at or beyond 4 GiB is an access fault (4 KiB leaf and superpage)', () => {
    for (const [setup, body, cause] of [
      [(g: PagedGuest) => g.tables.setLeaf(0x4000_0000, ((0x10_0000 << 10) | V | R | W | A | D) >>> 0), 'lw a0, 0(t1)', Cause.LOAD_ACCESS_FAULT],
      [(g: PagedGuest) => g.tables.setLeaf(0x4000_0000, ((0x3f_ffff << 10) | V | R | W | A | D) >>> 0), 'sw a0, 4(t1)', Cause.STORE_ACCESS_FAULT],
      [(g: PagedGuest) => g.tables.setRoot(0x100, ((0x400 << 20) | V | R | X | A) >>> 0), 'jalr zero, t1, 0', Cause.INSN_ACCESS_FAULT],
    ] as const) {
      const guest = paged(`        li t1, 0x40000000\n        ${body}`, setup);
      expectHalted(guest.last, 0x77);
      expect(guest.vcpu().cause, body).toBe(cause);
      expect(guest.vcpu().tval & ~7).toBe(0x4000_0000);
      hv.destroyVm(guest.vm);
    }
  });

  it('a next-level table outside RAM is an access fault of the access kind', () => {
    for (const [body, cause] of [
      ['lw a0, 0(t1)', Cause.LOAD_ACCESS_FAULT],
      ['amoor a0, a0, (t1)', Cause.STORE_ACCESS_FAULT],
      ['jalr zero, t1, 0', Cause.INSN_ACCESS_FAULT],
    ] as const) {
      const guest = paged(`        li t1, 0x40000000\n        ${body}`, (g) => g.tables.setRoot(0x100, pte(0x8000_0000, V)));
      expectHalted(guest.last, 0x77);
      expect(guest.vcpu().cause, body).toBe(cause);
      hv.destroyVm(guest.vm);
    }
  });

  it('a leaf onto the device table reads it with lw; lb and sw there are access faults', () => {
    const table = paged('        li t1, 0x40000000\n        lw s1, 0(t1)\n        lw s2, 8(t1)', (g) => g.tables.map(0x4000_0000, GuestPhys.DEVICE_TABLE, V | R | W | A | D));
    expectHalted(table.last, 0);
    expect(hex(table.vcpu().regs[13]!)).toBe(hex(DeviceTable.MAGIC));
    expect(table.vcpu().regs[14]).toBe(16 * MiB);
    for (const [body, cause] of [['lb a0, 0(t1)', Cause.LOAD_ACCESS_FAULT], ['sw a0, 0(t1)', Cause.STORE_ACCESS_FAULT]] as const) {
      const guest = paged(`        li t1, 0x40000000\n        ${body}`, (g) => g.tables.map(0x4000_0000, GuestPhys.DEVICE_TABLE, V | R | W | A | D));
      expectHalted(guest.last, 0x77);
      expect(guest.vcpu().cause, body).toBe(cause);
      expect(hex(guest.vcpu().tval)).toBe(hex(0x4000_0000));
    }
  });
});

// -------------------------------------------------------------------------------------------------

describeEachMmu('accessed and dirty bits (SPEC.md §12.6)', () => {
  const VA = 0x4000_0000;
  const FRAME = 0x20_0000;

  function run(body: string, flags: number, superpage = false): { guest: PagedGuest; pteAddress: number } {
    const guest = bootPaged(`
_start: la t0, handler
        csrrw zero, tvec, t0
        li t0, PTBR
        csrrw zero, ptbr, t0
        li t1, ${hex(VA)}
${body}
        exiti 0
handler: exiti 0x77
`);
    let pteAddress: number;
    if (superpage) {
      guest.tables.setRoot(VA >>> 22, pte(0x40_0000, flags));
      pteAddress = ROOT + (VA >>> 22) * 4;
    } else {
      pteAddress = guest.tables.setLeaf(VA, pte(FRAME, flags));
    }
    fill(guest, superpage ? 0x40_0000 : FRAME, encodeInstruction('jalr', { rd: 0, rs1: 1, imm: 0 })); // "ret" for fetches
    return { guest, pteAddress };
  }

  const cases: [string, string, number, number][] = [
    ['a load sets A only', 'lw a0, 0(t1)', V | R | W, A],
    ['a store sets A and D', 'sw a0, 4(t1)', V | R | W, A | D],
    ['a load, then a store through the same cached translation, sets D', 'lw a0, 0(t1)\n        sw a0, 4(t1)', V | R | W, A | D],
    ['an AMO sets A and D', 'amoadd a0, a0, (t1)', V | R | W, A | D],
    ['a fetch sets A only', 'jal ra, 1f\n1:      addi ra, ra, 8\n        jalr zero, t1, 0', V | R | X, A],
    ['a store that faults sets nothing', 'sw a0, 0(t1)', V | R, 0],
  ];
  for (const [name, body, flags, wantAd] of cases) {
    it(`${name} (4 KiB page)`, () => {
      const { guest, pteAddress } = run(`        ${body}`, flags);
      guest.run({ maxInstructions: 1000 });
      expect(hex(guest.word(pteAddress))).toBe(hex(pte(FRAME, flags | wantAd)));
    });
    it(`${name} (superpage)`, () => {
      const { guest, pteAddress } = run(`        ${body}`, flags, true);
      guest.run({ maxInstructions: 1000 });
      expect(hex(guest.word(pteAddress))).toBe(hex(pte(0x40_0000, flags | wantAd)));
    });
  }

  it('A and D cleared by the guest are set again after an sfence', () => {
    const leafAddress = FIRST_TABLE + ((VA >>> 12) & 0x3ff) * 4;
    const { guest, pteAddress } = run(`
        sw a0, 0(t1)                  # A and D set
        li t2, ${hex(leafAddress)}
        li t3, ${hex(pte(FRAME, V | R | W))}
        sw t3, 0(t2)                  # the guest clears A and D
        sfence t1, zero
        lw a0, 0(t1)                  # A again, D stays clear
        lw s1, 0(t2)
        sw a0, 8(t1)                  # D again
        lw s2, 0(t2)`, V | R | W);
    expect(pteAddress).toBe(leafAddress);
    expectHalted(guest.run({ maxInstructions: 1000 }), 0);
    const regs = guest.vcpu().regs;
    expect(hex(regs[13]!)).toBe(hex(pte(FRAME, V | R | W | A)));
    expect(hex(regs[14]!)).toBe(hex(pte(FRAME, V | R | W | A | D)));
  });
});

// -------------------------------------------------------------------------------------------------

describeEachMmu('cached translations and sfence (SPEC.md §12.7)', () => {
  const VA = 0x4000_0000;
  const OLD = 0x20_0000;
  const NEW = 0x20_1000;

  /** Reads VA, remaps it from OLD to NEW in the guest, runs `flush`, reads and writes VA again. */
  function remap(flush: string): PagedGuest {
    const guest = bootPaged(`
_start: la t0, handler
        csrrw zero, tvec, t0
        li t0, PTBR                   # ASID 1
        csrrw zero, ptbr, t0
        li t1, ${hex(VA)}
        lw a0, 0(t1)                  # caches the old translation (read and write)
        sw a0, 8(t1)
        li t2, ${hex(pte(NEW, V | R | W | A | D))}
        li t3, ${hex(FIRST_TABLE)}
        sw t2, 0(t3)                  # remap
        li t0, 1
${flush}
        lw s2, 0(t1)
        li t2, 0x5555
        sw t2, 4(t1)
        exiti 0
handler: exiti 0x77
`);
    guest.tables.setLeaf(VA, pte(OLD, V | R | W | A | D));
    fill(guest, OLD, 0x01d);
    fill(guest, NEW, 0x0e0);
    return guest;
  }

  for (const [name, flush] of [
    ['sfence zero, zero (everything)', 'sfence zero, zero'],
    ['sfence by address', 'sfence t1, zero'],
    ['sfence by ASID', 'sfence zero, t0'],
    ['sfence by address and ASID', 'sfence t1, t0'],
  ] as const) {
    it(`${name}: the new mapping is used for loads and stores`, () => {
      const guest = remap(`        ${flush}`);
      expectHalted(guest.run({ maxInstructions: 1000 }), 0);
      expect(hex(guest.vcpu().regs[14]!)).toBe(hex(0x0e0));
      expect(hex(guest.word(NEW + 4))).toBe(hex(0x5555));
      expect(guest.word(OLD + 4)).toBe(0);
    });
  }

  it('sfence by address on a superpage removes the whole 4 MiB mapping', () => {
    const guest = bootPaged(`
_start: li t0, PTBR
        csrrw zero, ptbr, t0
        li t1, 0x40400000
        lw s0, 0(t1)
        lw s1, 0x1000(t1)             # another 4 KiB page of the same superpage
        li t2, ${hex(pte(0x80_0000, V | R | W | A | D))}
        li t3, ${hex(ROOT + (0x4040_0000 >>> 22) * 4)}
        sw t2, 0(t3)                  # point the superpage elsewhere
        sfence t1, zero               # by the address of its first page
        lw s2, 0x1000(t1)
        lw s3, 0(t1)
        exiti 0
`);
    guest.tables.setRoot(0x4040_0000 >>> 22, pte(0x40_0000, V | R | W | A | D));
    fill(guest, 0x40_0000, 0xa0);
    fill(guest, 0x40_1000, 0xa1);
    fill(guest, 0x80_0000, 0xb0);
    fill(guest, 0x80_1000, 0xb1);
    expectHalted(guest.run({ maxInstructions: 1000 }), 0);
    const regs = guest.vcpu().regs;
    expect([regs[12], regs[13], regs[14], regs[15]].map((v) => hex(v!))).toEqual([0xa0, 0xa1, 0xb1, 0xb0].map(hex));
  });

  it('a changed pointer entry takes effect after sfence zero, zero', () => {
    const guest = bootPaged(`
_start: li t0, PTBR
        csrrw zero, ptbr, t0
        li t1, ${hex(VA)}
        lw s1, 0(t1)
        li t2, ${hex(pte(0x30_0000, V))}
        li t3, ${hex(ROOT + (VA >>> 22) * 4)}
        sw t2, 0(t3)                  # a different second-level table
        sfence zero, zero
        lw s2, 0(t1)
        exiti 0
`);
    guest.tables.setLeaf(VA, pte(OLD, V | R | A));
    guest.vm.writePhysical(0x30_0000, new Uint8Array(4096));
    writeWord(guest.vm, 0x30_0000, pte(NEW, V | R | A));
    fill(guest, OLD, 1);
    fill(guest, NEW, 2);
    expectHalted(guest.run({ maxInstructions: 1000 }), 0);
    expect([guest.vcpu().regs[13], guest.vcpu().regs[14]]).toEqual([1, 2]);
  });

  it('a remapped code page runs the new code after sfence (execute translations are flushed too)', () => {
    const guest = bootPaged(`
_start: li t0, PTBR
        csrrw zero, ptbr, t0
        li t1, ${hex(VA)}
        jalr ra, t1, 0                # runs OLD: a0 = 1
        addi s1, a0, 0
        li t2, ${hex(pte(NEW, V | R | X | A))}
        li t3, ${hex(FIRST_TABLE)}
        sw t2, 0(t3)
        sfence t1, zero
        jalr ra, t1, 0                # runs NEW: a0 = 2
        addi s2, a0, 0
        exiti 0
`);
    guest.tables.setLeaf(VA, pte(OLD, V | R | X | A));
    const code = (value: number): Uint8Array =>
      new Uint8Array(new Uint32Array([encodeInstruction('addi', { rd: 4, rs1: 0, imm: value }), encodeInstruction('jalr', { rd: 0, rs1: 1, imm: 0 })]).buffer);
    guest.vm.writePhysical(OLD, code(1));
    guest.vm.writePhysical(NEW, code(2));
    expectHalted(guest.run({ maxInstructions: 1000 }), 0);
    expect([guest.vcpu().regs[13], guest.vcpu().regs[14]]).toEqual([1, 2]);
  });

  it('an invalid entry made valid needs no sfence (demand paging from a page-fault handler)', () => {
    const guest = bootPaged(`
_start: la t0, handler
        csrrw zero, tvec, t0
        li t0, PTBR
        csrrw zero, ptbr, t0
        li t1, ${hex(VA)}
        lw s1, 0(t1)                  # faults once; the handler maps the page; the lw retries
        exiti 0
handler:
        addi s3, s3, 1
        li t2, ${hex(pte(NEW, V | R | W | A | D))}
        li t3, ${hex(FIRST_TABLE)}
        sw t2, 0(t3)
        li t0, ${SPP}
        csrrs zero, status, t0
        sret
`);
    guest.tables.setLeaf(VA, 0);
    fill(guest, NEW, 0x4242);
    expectHalted(guest.run({ maxInstructions: 1000 }), 0);
    expect(guest.vcpu().regs[15]).toBe(1);
    expect(guest.vcpu().regs[13]).toBe(0x4242);
  });

  it('switching ptbr between ASIDs without any sfence keeps both address spaces correct', () => {
    const ROOT_B = 0x18_0000;
    const guest = bootPaged(`
_start: la s0, results
        li s1, PTBR                   # root A, ASID 1
        li s2, ${hex(ptbrFor(ROOT_B, 2))}
        li t1, ${hex(VA)}
        li t3, 4
1:      csrrw zero, ptbr, s1
        lw a0, 0(t1)
        sw a0, 0(s0)
        addi a0, a0, 0x100
        sw a0, 4(t1)                  # a store in A's space only
        csrrw zero, ptbr, s2
        lw a1, 0(t1)
        sw a1, 4(s0)
        lw a2, 4(t1)                  # B never sees A's store
        sw a2, 8(s0)
        addi s0, s0, 12
        addi t3, t3, -1
        bne t3, zero, 1b
        exiti 0
        .data
results: .space 48
`);
    const tablesB = new HostPageTables(guest.vm, ROOT_B, 0x18_1000);
    guest.tables.setLeaf(VA, pte(OLD, V | R | W | A | D));
    tablesB.setLeaf(VA, pte(NEW, V | R | W | A | D));
    fill(guest, OLD, 0xaaa);
    fill(guest, NEW, 0xbbb);
    expectHalted(guest.run({ maxInstructions: 10_000 }), 0);
    expect(guest.words(guest.sym('results'), 12)).toEqual(Array(4).fill([0xaaa, 0xbbb, 0]).flat());
    expect(guest.word(OLD + 4)).toBe(0xaaa + 0x100);
  });

  it('an ASID reused for another address space is correct after sfence of that ASID', () => {
    const ROOT_B = 0x18_0000;
    const guest = bootPaged(`
_start: li t0, PTBR                   # root A, ASID 1
        csrrw zero, ptbr, t0
        li t1, ${hex(VA)}
        lw s1, 0(t1)
        li t0, ${hex(ptbrFor(ROOT_B, 1))} # root B, the same ASID
        csrrw zero, ptbr, t0
        li t2, 1
        sfence zero, t2
        lw s2, 0(t1)
        exiti 0
`);
    const tablesB = new HostPageTables(guest.vm, ROOT_B, 0x18_1000);
    guest.tables.setLeaf(VA, pte(OLD, V | R | A));
    tablesB.setLeaf(VA, pte(NEW, V | R | A));
    fill(guest, OLD, 0xaaa);
    fill(guest, NEW, 0xbbb);
    expectHalted(guest.run({ maxInstructions: 1000 }), 0);
    expect([guest.vcpu().regs[13], guest.vcpu().regs[14]]).toEqual([0xaaa, 0xbbb]);
  });

  it('global pages are shared by every address space', () => {
    const ROOT_B = 0x18_0000;
    const guest = bootPaged(`
_start: li t0, PTBR
        csrrw zero, ptbr, t0
        li t1, ${hex(VA)}
        lw s1, 0(t1)
        li t0, ${hex(ptbrFor(ROOT_B, 2))}
        csrrw zero, ptbr, t0
        lw s2, 0(t1)
        exiti 0
`);
    const tablesB = new HostPageTables(guest.vm, ROOT_B, 0x18_1000);
    guest.tables.setLeaf(VA, pte(OLD, V | R | A | G));
    tablesB.setLeaf(VA, pte(OLD, V | R | A | G));
    fill(guest, OLD, 0x6161);
    expectHalted(guest.run({ maxInstructions: 1000 }), 0);
    expect([guest.vcpu().regs[13], guest.vcpu().regs[14]]).toEqual([0x6161, 0x6161]);
  });
});

// -------------------------------------------------------------------------------------------------

describeEachMmu('status and ptbr changes take effect at the next instruction, without sfence', () => {
  it('paging off ↔ on: the same address alternates between physical and translated', () => {
    const guest = bootPaged(`
_start: la s0, results
        li s1, PTBR
        li t1, 0x00800000
        li t3, 3
1:      lw a0, 0(t1)                  # paging off: PA 0x800000
        sw a0, 0(s0)
        csrrw zero, ptbr, s1
        lw a0, 0(t1)                  # paging on: PA 0xc00000
        sw a0, 4(s0)
        csrrw zero, ptbr, zero
        addi s0, s0, 8
        addi t3, t3, -1
        bne t3, zero, 1b
        exiti 0
        .data
results: .space 24
`);
    guest.tables.setRoot(0x0080_0000 >>> 22, pte(0xc0_0000, V | R | W | A | D));
    fill(guest, 0x80_0000, 0x0ff);
    fill(guest, 0xc0_0000, 0x0a0);
    expectHalted(guest.run({ maxInstructions: 1000 }), 0);
    expect(guest.words(guest.sym('results'), 6)).toEqual([0x0ff, 0x0a0, 0x0ff, 0x0a0, 0x0ff, 0x0a0]);
  });

  it('clearing SUM stops supervisor access to user pages at once', () => {
    const guest = bootPaged(`
_start: la t0, handler
        csrrw zero, tvec, t0
        li t0, PTBR
        csrrw zero, ptbr, t0
        li t0, ${SUM}
        csrrs zero, status, t0
        li t1, 0x40000000
        lw s1, 0(t1)                  # allowed with SUM
        sw s1, 4(t1)
        csrrc zero, status, t0
        lw s2, 0(t1)                  # must fault now
        exiti 0
handler: exiti 0x77
`);
    guest.tables.setLeaf(0x4000_0000, pte(0x20_0000, V | R | W | U | A | D));
    fill(guest, 0x20_0000, 0x5a);
    expectHalted(guest.run({ maxInstructions: 1000 }), 0x77);
    expect(guest.vcpu().regs[13]).toBe(0x5a);
    expect(guest.vcpu().cause).toBe(Cause.LOAD_PAGE_FAULT);
  });

  for (const user of [false, true]) {
    it(`clearing MXR stops ${user ? 'user' : 'supervisor'} loads from an execute-only page at once`, () => {
      const flags = V | X | A | (user ? U : 0);
      const guest = bootPaged(`
_start: la s0, results
        la t0, handler
        csrrw zero, tvec, t0
        li t0, PTBR
        csrrw zero, ptbr, t0
        li t0, ${MXR}
        csrrs zero, status, t0
        li t1, 0x40000000
${user ? `        li t0, 0x40001000
        csrrw zero, epc, t0
        li t0, ${SPP}
        csrrc zero, status, t0
        sret                          # to the user code page
` : `        lw a0, 0(t1)                  # allowed with MXR
        sw a0, 0(s0)
        li t0, ${MXR}
        csrrc zero, status, t0
        lw a0, 0(t1)                  # must fault now
        sw a0, 4(s0)
`}
        exiti 0
handler:
        csrrs t0, cause, zero
        sw t0, 8(s0)
        li t2, 8
        bne t0, t2, 1f                # not the user's first ecall: done
        li t0, ${MXR}                 # the user's ecall: clear MXR, return after it
        csrrc zero, status, t0
        csrrs t0, epc, zero
        addi t0, t0, 4
        csrrw zero, epc, t0
        sret
1:      exiti 0x77
        .data
results: .space 12
`);
      guest.tables.setLeaf(0x4000_0000, pte(0x20_0000, flags));
      fill(guest, 0x20_0000, 0x3c3c);
      if (user) {
        // User code: load (MXR = 1), ecall (the handler clears MXR), load again (must fault).
        const words = [
          encodeInstruction('lw', { rd: 13, rs1: 9, imm: 0 }),
          encodeInstruction('ecall', {}),
          encodeInstruction('lw', { rd: 14, rs1: 9, imm: 0 }),
          encodeInstruction('ebreak', {}),
        ];
        guest.vm.writePhysical(0x20_1000, new Uint8Array(new Uint32Array(words).buffer));
        guest.tables.setLeaf(0x4000_1000, pte(0x20_1000, V | R | X | U | A));
      }
      expectHalted(guest.run({ maxInstructions: 1000 }), 0x77);
      const vcpu = guest.vcpu();
      if (user) expect(vcpu.regs[13]).toBe(0x3c3c);
      else expect(guest.word(guest.sym('results'))).toBe(0x3c3c);
      expect(vcpu.cause).toBe(Cause.LOAD_PAGE_FAULT);
      expect(hex(vcpu.tval)).toBe(hex(0x4000_0000));
    });
  }
});

