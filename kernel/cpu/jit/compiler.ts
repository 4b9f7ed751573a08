/**
 * The compiled tier's code generator: a region of one decoded code page → a JavaScript function.
 *
 * A region is what static control flow reaches inside the page from one entry index (straight
 * lines, branch and jal targets in the page), up to MAX_REGION_WORDS instructions. The function
 * is a `switch (idx)` inside a loop, one case per instruction, falling through along straight
 * lines; guest registers live in JS locals. It is a specialisation of Vcpu.runSlice's inner loop
 * and keeps that loop's bookkeeping exactly (idx, blockStart, retired, the `retired < checkLimit`
 * test at every taken branch, the slow paths and their order), so it leaves at the same points
 * with the same state:
 *   return 0: "continue the interpreter's inner loop at J.idx" (an instruction the compiler does
 *             not handle — system, illegal, page end — or code that changed under it);
 *   return 1: "continue the outer loop" (cpu.pc set: a trap, a transfer out of the page, the check
 *             limit reached).
 * Everything is driven by the opcode table (guest-isa/opcodes.ts): formats and flags classify each
 * instruction; only the arithmetic itself (ALU_EXPR, BRANCH_COND) is written here, by mnemonic, and
 * the module refuses to load if an instruction of the table has no rule.
 */
import { Cause } from '../../../guest-isa/arch.ts';
import { BY_MNEMONIC, BY_OPCODE, Flag, INSTRUCTIONS } from '../../../guest-isa/opcodes.ts';
import { REG_SINK, WORDS_PER_PAGE } from '../decode-cache.ts';

/** Instructions in one compiled region at most (V8 stops optimising very large functions). */
export const MAX_REGION_WORDS = 384;

/** How the compiler treats an opcode (from the table's format and flags). */
export const enum OpClass { EXIT, ALU, LOAD, STORE, AMO, BRANCH, JAL, JALR, NOP }

/**
 * ALU results by mnemonic, `a` = rs1, `b` = rs2 (or the decoded immediate), `pc` = this
 * instruction's address; each yields an int32 (the interpreter stores into an Int32Array).
 */
const ALU_EXPR: Readonly<Record<string, string>> = {
  add: '(a + b) | 0', sub: '(a - b) | 0', and: 'a & b', or: 'a | b', xor: 'a ^ b',
  sll: 'a << (b & 31)', srl: '(a >>> (b & 31)) | 0', sra: 'a >> (b & 31)',
  slt: '(a < b ? 1 : 0)', sltu: '((a >>> 0) < (b >>> 0) ? 1 : 0)',
  mul: 'Math.imul(a, b)', mulh: 'mulhSigned(a, b)', mulhu: 'mulhUnsigned(a, b)',
  div: '(b === 0 ? -1 : b === -1 ? -a | 0 : (a / b) | 0)',
  divu: '((b >>> 0) === 0 ? -1 : ((a >>> 0) / (b >>> 0)) | 0)',
  rem: '(b === 0 ? a : b === -1 ? 0 : (a % b) | 0)',
  remu: '((b >>> 0) === 0 ? a : ((a >>> 0) % (b >>> 0)) | 0)',
  addi: '(a + b) | 0', andi: 'a & b', ori: 'a | b', xori: 'a ^ b',
  slti: '(a < b ? 1 : 0)', sltiu: '((a >>> 0) < (b >>> 0) ? 1 : 0)',
  slli: 'a << b', srli: '(a >>> b) | 0', srai: 'a >> b',
  lui: 'b', auipc: '(pc + b) | 0',
};

/** Branch conditions by mnemonic (`a` = rs1, `b` = rs2). */
const BRANCH_COND: Readonly<Record<string, string>> = {
  beq: 'a === b', bne: 'a !== b', blt: 'a < b', bge: 'a >= b', bltu: '(a >>> 0) < (b >>> 0)', bgeu: '(a >>> 0) >= (b >>> 0)',
};

/** ALU instructions whose second operand is the decoded immediate (I, SHIFT and U formats). */
const IMMEDIATE_FORMATS = new Set(['I', 'SHIFT', 'U']);

/** Opcodes the strip-miner recognises by mnemonic (induction steps). */
const BY_MNEMONIC_OPCODE = { addi: BY_MNEMONIC.get('addi')!.opcode } as const;

/** Per opcode byte: OpClass, derived from the table once. */
const classOf = new Uint8Array(256); // OpClass.EXIT (0) for unassigned opcodes, ILLEGAL and PAGE_END
const usesImm = new Uint8Array(256);
const memWidthOf = new Uint8Array(256);
const signExtends = new Uint8Array(256);

for (const spec of INSTRUCTIONS) {
  const op = spec.opcode;
  const f = spec.flags;
  memWidthOf[op] = spec.memWidth;
  signExtends[op] = (f & Flag.SIGN_EXTENDS) !== 0 ? 1 : 0;
  let cls: OpClass;
  if ((f & Flag.SYSTEM) !== 0 || (spec.format === 'NONE' && (f & Flag.ENDS_BLOCK) !== 0)) cls = OpClass.EXIT; // CSRs, sret, wfi, sfence, hcall, ecall, ebreak
  else if ((f & Flag.LOADS) !== 0 && (f & Flag.STORES) !== 0) cls = OpClass.AMO;
  else if ((f & Flag.LOADS) !== 0) cls = OpClass.LOAD;
  else if ((f & Flag.STORES) !== 0) cls = OpClass.STORE;
  else if (spec.format === 'BRANCH') cls = OpClass.BRANCH;
  else if (spec.format === 'J') cls = OpClass.JAL;
  else if ((f & Flag.ENDS_BLOCK) !== 0 && spec.format === 'I') cls = OpClass.JALR;
  else if (spec.format === 'NONE') cls = OpClass.NOP; // fence
  else cls = OpClass.ALU;
  if (cls === OpClass.ALU && ALU_EXPR[spec.mnemonic] === undefined) throw new Error(`jit: no ALU rule for ${spec.mnemonic}`);
  if (cls === OpClass.BRANCH && BRANCH_COND[spec.mnemonic] === undefined) throw new Error(`jit: no branch rule for ${spec.mnemonic}`);
  if (cls === OpClass.LOAD && spec.memWidth === 0) throw new Error(`jit: load ${spec.mnemonic} without a width`);
  classOf[op] = cls;
  usesImm[op] = IMMEDIATE_FORMATS.has(spec.format) ? 1 : 0;
}

/** How the compiler treats an opcode byte (tests check every table entry has a class). */
export function opClass(opcode: number): OpClass {
  return classOf[opcode & 0xff] as OpClass;
}

/** Slow-path result codes, as Vcpu returns them. */
const SLOW_TRAP = 1;
const SLOW_RESYNC = 2;

/** The generated function's parameters (see JitRunner.enter). */
const PARAMS = ['cpu', 'J', 'regs', 'pageVa', 'idx', 'retired', 'checkLimit', 'rtlb', 'wtlb', 'ctx', 'wctx'] as const;

/** A compiled region: the JS source (for tests and debugging) and the instructions it holds. */
export interface RegionSource {
  source: string;
  words: number;
}

function reg(r: number): string {
  return r === 0 ? '0' : `r${r}`;
}

/** `rd = <the ALU result>;` for the instruction at word `i` of the page (rd not the sink). */
function aluStatement(op: number, rd: number, rs1: number, rs2: number, imm: number, i: number): string {
  const b = usesImm[op] === 1 ? `(${imm})` : reg(rs2);
  return `r${rd} = ${ALU_EXPR[BY_OPCODE[op]!.mnemonic]!.replace(/\ba\b/g, reg(rs1)).replace(/\bb\b/g, b).replace(/\bpc\b/g, `((pageVa + ${i * 4}) | 0)`)};`;
}

/**
 * Generates the body of the region entered at `entry` of the decoded page at `base`, or null
 * when the entry instruction is one the compiler leaves to the interpreter.
 */
export function generateRegion(ops: Int32Array, imms: Int32Array, base: number, entry: number): RegionSource | null {
  if (opClass(ops[base + entry]! & 0xff) === OpClass.EXIT) return null;
  // Reachable instructions of the page, breadth first from the entry.
  const member = new Uint8Array(WORDS_PER_PAGE + 1);
  const queue = [entry];
  member[entry] = 1;
  let count = 1;
  const add = (i: number): void => {
    if (i < 0 || i > WORDS_PER_PAGE || member[i] === 1 || count >= MAX_REGION_WORDS) return;
    member[i] = 1;
    count++;
    queue.push(i);
  };
  for (let q = 0; q < queue.length; q++) {
    const i = queue[q]!;
    if (i === WORDS_PER_PAGE) continue; // PAGE_END
    const w = ops[base + i]!;
    const cls = opClass(w & 0xff);
    if (cls === OpClass.EXIT || cls === OpClass.JALR) continue;
    if (cls === OpClass.JAL) { add(i + imms[base + i]!); continue; }
    if (cls === OpClass.BRANCH) add(i + imms[base + i]!);
    add(i + 1);
  }
  const indices: number[] = [];
  for (let i = 0; i <= WORDS_PER_PAGE; i++) if (member[i] === 1) indices.push(i);

  // Registers the region reads or writes (loaded at entry and after slow paths), and writes
  // (stored back at exits and before slow paths, which may look at them: MMIO devices, traps).
  let used = 0;
  let written = 0;
  for (const i of indices) {
    if (i === WORDS_PER_PAGE) continue;
    const w = ops[base + i]!;
    const rd = (w >> 8) & 31;
    used |= (1 << ((w >> 13) & 31)) | (1 << ((w >> 18) & 31));
    if (rd !== REG_SINK) { used |= 1 << rd; written |= 1 << rd; }
  }
  used &= 0xfffe;
  written &= 0xfffe;
  const regList = (mask: number): number[] => Array.from({ length: 15 }, (_, k) => k + 1).filter((r) => (mask & (1 << r)) !== 0);
  const writeBack = regList(written).map((r) => `regs[${r}] = r${r};`).join(' ');
  // After a slow path the TLB may have changed: forget the last pages hit (see LOAD below).
  const reload = `${regList(used).map((r) => `r${r} = regs[${r}];`).join(' ')} rTag = 0; wTag = 0;`;

  const out: string[] = [];
  out.push('"use strict";');
  out.push('const i32 = J.i32, u8 = J.u8, i8 = J.i8, u16 = J.u16, i16 = J.i16, code = J.code;');
  out.push('const mulhSigned = J.mulhSigned, mulhUnsigned = J.mulhUnsigned;');
  out.push('const version = code.version;');
  out.push(`let ${Array.from({ length: 15 }, (_, k) => `r${k + 1} = 0`).join(', ')};`);
  out.push('let rTag = 0, rAdd = 0, wTag = 0, wAdd = 0;');
  out.push(reload);
  out.push('let blockStart = idx, hits = 0, res = 0, va = 0, e = 0, g = 0, s = 0, t = 0, n = 0, n0 = 0, ex = 0;');
  out.push(`let ${Array.from({ length: Math.max(1, memoryOps(ops, base, indices)) }, (_, k) => `m${k} = 0`).join(', ')};`);
  out.push('exit: for (;;) {');
  out.push('switch (idx) {');
  const loopEnd = innermostLoops(ops, imms, base, member, entry);
  let openLoop = -1;
  for (let n = 0; n < indices.length; n++) {
    const i = indices[n]!;
    const next = indices[n + 1];
    const pcExpr = `((pageVa + ${i * 4}) | 0)`;
    if (openLoop >= 0) {
      out.push('{');
    } else if (loopEnd[i]! > 0) {
      // A native loop: its body runs without the switch; only its head is a case.
      openLoop = loopEnd[i]!;
      out.push(`case ${i}: { loop: for (;;) {`);
      const fast = stripMinedLoop(ops, imms, base, i, openLoop);
      if (fast !== null) out.push(fast);
      out.push('{');
    } else {
      out.push(`case ${i}: {`);
    }
    if (i === WORDS_PER_PAGE) {
      out.push(`idx = ${i}; break exit; }`);
      continue;
    }
    const w = ops[base + i]!;
    const op = w & 0xff;
    const rd = (w >> 8) & 31;
    const rs1 = (w >> 13) & 31;
    const rs2 = (w >> 18) & 31;
    const imm = imms[base + i]!;
    const cls = opClass(op);
    const dst = rd === REG_SINK ? 't' : `r${rd}`;
    // A slow-path call in the interpreter's order: count, publish, set pc, call.
    const beforeSlow = `retired += ${i} - blockStart; blockStart = ${i}; ${writeBack} cpu.sliceRetired = retired; cpu.pc = ${pcExpr};`;
    // After a slow path that completed: registers may have been read or written by a device, and
    // a store may have changed decoded code (this region's included): then the interpreter goes on.
    const afterSlow = `${reload} if (code.version !== version) { idx = ${i + 1}; break exit; }`;
    let falls = true;
    switch (cls) {
      case OpClass.EXIT:
        out.push(`idx = ${i}; break exit;`);
        falls = false;
        break;
      case OpClass.NOP:
        break;
      case OpClass.ALU: {
        if (rd !== REG_SINK) out.push(aluStatement(op, rd, rs1, rs2, imm, i));
        break;
      }
      case OpClass.LOAD: {
        const width = memWidthOf[op]!;
        const signed = signExtends[op] === 1;
        const mask = width === 4 ? -4093 : width === 2 ? -4095 : -4096;
        const view = width === 4 ? 'i32' : width === 2 ? (signed ? 'i16' : 'u16') : signed ? 'i8' : 'u8';
        const shift = width === 4 ? 2 : width === 2 ? 1 : 0;
        // The TLB compare, first against the last entry this function hit (kept in locals: the
        // TLB only changes in slow paths, after which they are forgotten), then the TLB itself.
        // A tag always has TAG_VALID set, so 0 never matches; a misaligned address never does.
        out.push(`va = (${reg(rs1)} + (${imm})) | 0; g = (va & ${mask}) | ctx;`);
        out.push(`if (g === rTag) { ${dst} = ${view}[(va + rAdd) >>> ${shift}]; hits++; }`);
        out.push(`else if (rtlb[e = ((va >>> 12) & 0x3ffff) << 1] === g) { rTag = g; rAdd = rtlb[e + 1]; ${dst} = ${view}[(va + rAdd) >>> ${shift}]; hits++; }`);
        out.push(`else { ${beforeSlow} if (cpu.loadSlow(va, ${width}, ${signed}) === ${SLOW_TRAP}) { res = 1; break exit; } ${reload} ${dst} = cpu.slowValue; if (code.version !== version) { idx = ${i + 1}; break exit; } }`);
        break;
      }
      case OpClass.STORE: {
        const width = memWidthOf[op]!;
        const mask = width === 4 ? -4093 : width === 2 ? -4095 : -4096;
        const view = width === 4 ? 'i32' : width === 2 ? 'u16' : 'u8';
        const shift = width === 4 ? 2 : width === 2 ? 1 : 0;
        out.push(`va = (${reg(rs1)} + (${imm})) | 0; g = (va & ${mask}) | wctx;`);
        out.push(`if (g === wTag) { ${view}[(va + wAdd) >>> ${shift}] = ${reg(rs2)}; hits++; }`);
        out.push(`else if (wtlb[e = ((va >>> 12) & 0x3ffff) << 1] === g) { wTag = g; wAdd = wtlb[e + 1]; ${view}[(va + wAdd) >>> ${shift}] = ${reg(rs2)}; hits++; }`);
        out.push(`else { ${beforeSlow} s = cpu.storeSlow(va, ${width}, ${reg(rs2)});`);
        out.push(`if (s !== 0) { if (s === ${SLOW_RESYNC}) { retired++; cpu.pc = (cpu.pc + 4) | 0; } res = 1; break exit; } ${afterSlow} }`);
        break;
      }
      case OpClass.AMO: {
        out.push(`${beforeSlow} s = cpu.amoSlow(${op}, ${reg(rs1)}, ${reg(rs2)}); if (s === ${SLOW_TRAP}) { res = 1; break exit; }`);
        out.push(`${reload} ${dst} = cpu.slowValue;`);
        out.push(`if (s === ${SLOW_RESYNC}) { retired++; cpu.pc = (cpu.pc + 4) | 0; res = 1; break exit; }`);
        out.push(`if (code.version !== version) { idx = ${i + 1}; break exit; }`);
        break;
      }
      case OpClass.BRANCH:
      case OpClass.JAL: {
        const target = i + imm;
        let taken = `retired += ${i} - blockStart + 1; `;
        if (target >= 0 && target < WORDS_PER_PAGE) {
          // In the page: go on while under the check limit, as the interpreter's inner loop does.
          taken += member[target] === 1
            ? `if (retired < checkLimit) { idx = blockStart = ${target}; continue exit; } `
            : `if (retired < checkLimit) { idx = blockStart = ${target}; break exit; } `;
        }
        taken += `cpu.pc = (pageVa + ${target * 4}) | 0; res = 1; break exit;`;
        if (cls === OpClass.JAL) {
          if (rd !== REG_SINK) out.push(`${dst} = (pageVa + ${i * 4 + 4}) | 0;`);
          out.push(taken);
          falls = false;
        } else {
          const cond = BRANCH_COND[BY_OPCODE[op]!.mnemonic]!.replace(/\ba\b/g, reg(rs1)).replace(/\bb\b/g, reg(rs2));
          // The back-edge of a native loop goes round it instead of through the switch.
          out.push(`if (${cond}) { ${i === openLoop ? taken.replace('continue exit;', 'continue loop;') : taken} }`);
        }
        break;
      }
      case OpClass.JALR: {
        out.push(`va = (${reg(rs1)} + (${imm})) | 0; retired += ${i} - blockStart;`);
        out.push(`if ((va & 3) !== 0) { ${writeBack} cpu.pc = ${pcExpr}; cpu.trap(${Cause.INSN_MISALIGNED}, va); res = 1; break exit; }`);
        if (rd !== REG_SINK) out.push(`${dst} = (pageVa + ${i * 4 + 4}) | 0;`);
        // A target in the page dispatches again (the switch's default hands unknown ones back).
        out.push('retired++; if ((va & -4096) === pageVa && retired < checkLimit) { idx = blockStart = (va >>> 2) & 1023; continue exit; }');
        out.push('cpu.pc = va; res = 1; break exit;');
        falls = false;
        break;
      }
    }
    // Falling into an instruction outside the region: the interpreter goes on from there.
    out.push('}');
    if (i === openLoop) {
      out.push('break; } }'); // not taken: leave the loop and its case
      openLoop = -1;
    }
    if (openLoop < 0 && falls && next !== i + 1) out.push(`idx = ${i + 1}; break exit;`);
  }
  out.push('default: break exit;');
  out.push('}');
  out.push('}');
  out.push(writeBack);
  out.push('J.idx = idx; J.blockStart = blockStart; J.retired = retired; J.hits = hits;');
  out.push('return res;');
  return { source: out.join('\n'), words: indices.length };
}

/** Loads and stores among a region's instructions (each strip-mined loop's ops get a local m<k>). */
function memoryOps(ops: Int32Array, base: number, indices: readonly number[]): number {
  let count = 0;
  for (const i of indices) {
    if (i === WORDS_PER_PAGE) continue;
    const cls = opClass(ops[base + i]! & 0xff);
    if (cls === OpClass.LOAD || cls === OpClass.STORE) count++;
  }
  return count;
}

/** Strip-mined iterations at most per pass (keeps the count a small integer). */
const MAX_STRIP = 1 << 16;

/**
 * The fast version of a native loop T..B (B its backward branch), or null when the loop does not
 * qualify. A loop qualifies when it loads or stores, every load and store addresses through a
 * register the body does not write (invariant) or writes exactly once with `addi r, r, c`
 * (an induction variable) with c a multiple of the access width, and the body has no AMO.
 * Then, at the loop head, for as many iterations n as every access stays in the page it is in now
 * (whose translation hits the TLB now: aligned, permitted, for a store writable without a slow
 * path) and as the check limit allows, the body runs with each access's host address computed from
 * the register alone: no tag compare. The TLB cannot change during those iterations, since it only
 * changes in slow paths and the fast body has none; a TLB-hitting store cannot touch decoded code
 * (the write TLB never maps a page that holds some). `retired` and `hits` advance per iteration as
 * in the checked body, so every exit leaves the interpreter's state; when n runs out the checked
 * loop head decides again (a page crossing takes one checked iteration).
 */
function stripMinedLoop(ops: Int32Array, imms: Int32Array, base: number, head: number, branch: number): string | null {
  const writes = new Uint8Array(17);
  const stride = new Int32Array(17);
  const strideAt = new Int32Array(17); // body position of the induction addi
  const addiOp = BY_MNEMONIC_OPCODE.addi;
  let accesses = 0;
  for (let k = head; k < branch; k++) {
    const w = ops[base + k]!;
    const op = w & 0xff;
    const cls = opClass(op);
    if (cls === OpClass.AMO) return null;
    if (cls === OpClass.LOAD || cls === OpClass.STORE) accesses++;
    if (cls === OpClass.STORE || cls === OpClass.NOP) continue;
    const rd = (w >> 8) & 31;
    if (rd === REG_SINK) continue;
    writes[rd]!++;
    if (op === addiOp && ((w >> 13) & 31) === rd) { stride[rd] = imms[base + k]!; strideAt[rd] = k; } else stride[rd] = 0x7fffffff; // not an induction step
  }
  if (accesses === 0) return null;
  const length = branch - head + 1;
  const setup: string[] = [];
  const body: string[] = [];
  // What each register holds at this point of an iteration, as far as addresses go: an invariant
  // register (or none) plus an offset in [lo, hi] that moves in steps of `align` — the shape of a
  // table lookup, `andi t, x, MASK; slli t, t, K; add t, t, TABLE` (CRC-32's). UNKNOWN otherwise.
  const UNKNOWN = -2;
  const NO_BASE = -1;
  const fBase = new Int32Array(17).fill(UNKNOWN);
  const fLo = new Float64Array(17);
  const fHi = new Float64Array(17);
  const fAlign = new Float64Array(17);
  for (let r = 0; r < 16; r++) {
    if (r === 0) { fBase[0] = NO_BASE; fAlign[0] = 1 << 30; } else if (writes[r] === 0) { fBase[r] = r; fAlign[r] = 1 << 30; }
  }
  let m = 0;
  for (let k = head; k < branch; k++) {
    const w = ops[base + k]!;
    const op = w & 0xff;
    const cls = opClass(op);
    const rd = (w >> 8) & 31;
    const rs1 = (w >> 13) & 31;
    const rs2 = (w >> 18) & 31;
    const imm = imms[base + k]!;
    if (cls === OpClass.ALU) {
      if (rd !== REG_SINK) {
        body.push(aluStatement(op, rd, rs1, rs2, imm, k));
        trackOffset(op, rd, rs1, rs2, imm, fBase, fLo, fHi, fAlign, stride[rd] !== 0x7fffffff && writes[rd] === 1);
      }
      continue;
    }
    if (cls !== OpClass.LOAD && cls !== OpClass.STORE) continue; // NOP
    const width = memWidthOf[op]!;
    let c = 0;
    let ranged = false;
    if (rs1 !== 0 && writes[rs1]! > 0) {
      if (writes[rs1] === 1 && stride[rs1] !== 0x7fffffff) {
        c = stride[rs1]!;
        if (c % width !== 0) return null;
      } else if (fBase[rs1]! !== UNKNOWN && fAlign[rs1]! % width === 0 && (fLo[rs1]! + imm) % width === 0 && fHi[rs1]! - fLo[rs1]! < 4096) {
        ranged = true;
      } else {
        return null;
      }
    }
    const load = cls === OpClass.LOAD;
    const signed = signExtends[op] === 1;
    const mask = width === 4 ? -4093 : width === 2 ? -4095 : -4096;
    const view = width === 4 ? 'i32' : width === 2 ? (load && signed ? 'i16' : 'u16') : load && signed ? 'i8' : 'u8';
    const shift = width === 4 ? 2 : width === 2 ? 1 : 0;
    const tlb = load ? 'rtlb' : 'wtlb';
    // The first iteration's address: the induction step already taken when it comes before.
    const first = c !== 0 && strideAt[rs1]! < k ? imm + c : imm;
    const inPage = c > 0 ? `((${4096 - width} - (va & 4095)) / ${c} | 0) + 1` : c < 0 ? `((va & 4095) / ${-c} | 0) + 1` : null;
    const tagged = `${tlb}[e = ((va >>> 12) & 0x3ffff) << 1] !== ((va & ${mask}) | ${load ? 'ctx' : 'wctx'})`;
    if (ranged) {
      // Every address the access can take, [base + lo + imm, base + hi + imm + width), in one page that hits.
      const b = fBase[rs1] === NO_BASE ? '0' : reg(fBase[rs1]!);
      setup.push(`va = (${b} + (${fLo[rs1]! + imm})) | 0; g = (${b} + (${fHi[rs1]! + imm + width - 1})) | 0; if (((va ^ g) >>> 12) !== 0 || (g >>> 0) < (va >>> 0) || ${tagged}) n = 0; else m${m} = ${tlb}[e + 1] + (${imm});`);
    } else {
      setup.push(`va = (${reg(rs1)} + (${first})) | 0; if (${tagged}) n = 0; else { m${m} = ${tlb}[e + 1] + (${imm});${inPage === null ? '' : ` g = ${inPage}; if (g < n) n = g;`} }`);
    }
    const at = `[(${reg(rs1)} + m${m}) >>> ${shift}]`;
    if (load) body.push(`${rd === REG_SINK ? 't' : `r${rd}`} = ${view}${at};`);
    else body.push(`${view}${at} = ${reg(rs2)};`);
    if (load && rd !== REG_SINK) fBase[rd] = UNKNOWN; // after its own address was read from it
    m++;
  }
  const bw = ops[base + branch]!;
  const mnemonic = BY_OPCODE[bw & 0xff]!.mnemonic;
  const cond = BRANCH_COND[mnemonic]!.replace(/\ba\b/g, reg((bw >> 13) & 31)).replace(/\bb\b/g, reg((bw >> 18) & 31));
  const head0 = [
    `if (blockStart === ${head}) {`,
    `n = checkLimit - retired - 1; n = n < ${length} ? 0 : n >= ${MAX_STRIP * length} ? ${MAX_STRIP} : (n / ${length}) | 0;`,
    ...setup,
  ];
  const exitAt = countedExit(mnemonic, (bw >> 13) & 31, (bw >> 18) & 31, writes, stride);
  if (exitAt !== null) {
    // The iteration at which the branch falls through is known at the strip's entry: the loop
    // runs on one counter, with no compare per iteration (prefix sum: see docs/performance.md).
    return [
      ...head0,
      `if (n > 0) { J.strips++; ${exitAt} if (g !== 0 && g <= n) { n = g; ex = 1; } else ex = 0; n0 = n; fast: for (;;) {`,
      ...body,
      'if (--n !== 0) continue fast;',
      `if (ex === 0) { retired += ${length} * n0; hits += ${accesses} * n0; continue loop; }`,
      // The last iteration's instructions are counted where the code after the loop ends its block.
      `retired += ${length} * (n0 - 1); hits += ${accesses} * n0; break loop; } } }`,
    ].join('\n');
  }
  return [
    ...head0,
    // The counts are settled once per strip, from the iterations done (n0 - n), not per iteration.
    'if (n > 0) { J.strips++; n0 = n; fast: for (;;) {',
    ...body,
    `if (${cond}) { if (--n !== 0) continue fast; retired += ${length} * n0; hits += ${accesses} * n0; continue loop; }`,
    `n0 = n0 - n + 1; retired += ${length} * (n0 - 1); hits += ${accesses} * n0; break loop; } } }`,
  ].join('\n');
}

/**
 * For a loop closed by `bne ind, inv` (either order) where `ind` is the body's only write to it, an
 * induction step `addi ind, ind, c`, and `inv` is not written: a statement setting `g` to the
 * iteration after which the branch falls through (1 …), or 0 when that is not within a strip.
 * The k-th iteration leaves ind0 + k·c, equal to inv (mod 2^32) first at k = d / c when c divides
 * the distance d = inv − ind0 taken in c's direction (as an unsigned number); otherwise every
 * solution has k ≥ 2^32 / |c| > MAX_STRIP, since |c| < 2^16. Null for any other loop.
 */
function countedExit(mnemonic: string, ra: number, rb: number, writes: Uint8Array, stride: Int32Array): string | null {
  if (mnemonic !== 'bne') return null;
  for (const [ind, inv] of [[ra, rb], [rb, ra]] as const) {
    const c = stride[ind]!;
    if (ind === 0 || writes[ind] !== 1 || c === 0x7fffffff || c === 0 || Math.abs(c) >= 1 << 16 || (inv !== 0 && writes[inv] !== 0)) continue;
    const distance = c > 0 ? `(${reg(inv)} - ${reg(ind)}) >>> 0` : `(${reg(ind)} - ${reg(inv)}) >>> 0`;
    return `g = ${distance}; g = g % ${Math.abs(c)} === 0 ? g / ${Math.abs(c)} : 0;`;
  }
  return null;
}

/**
 * Updates the address shape of `rd` after an ALU instruction in a strip-mined loop body (see
 * stripMinedLoop): andi with a non-negative mask gives [0, mask]; slli scales a shape without a
 * base; add joins a shape without a base to one with; addi shifts. An induction register keeps
 * no shape (its accesses are handled by stride). Anything else: unknown.
 */
function trackOffset(op: number, rd: number, rs1: number, rs2: number, imm: number, fBase: Int32Array, fLo: Float64Array, fHi: Float64Array, fAlign: Float64Array, induction: boolean): void {
  const UNKNOWN = -2;
  const NO_BASE = -1;
  const mnemonic = BY_OPCODE[op]!.mnemonic;
  let base = UNKNOWN;
  let lo = 0;
  let hi = 0;
  let align = 1;
  if (induction) {
    base = UNKNOWN;
  } else if (mnemonic === 'andi' && imm >= 0) {
    base = NO_BASE; lo = 0; hi = imm; align = 1;
  } else if (mnemonic === 'slli' && fBase[rs1] === NO_BASE && fLo[rs1]! >= 0 && fHi[rs1]! * 2 ** imm < 2 ** 24) {
    base = NO_BASE; lo = fLo[rs1]! * 2 ** imm; hi = fHi[rs1]! * 2 ** imm; align = fAlign[rs1]! * 2 ** imm;
  } else if (mnemonic === 'addi' && fBase[rs1] !== UNKNOWN) {
    base = fBase[rs1]!; lo = fLo[rs1]! + imm; hi = fHi[rs1]! + imm; align = fAlign[rs1]!;
  } else if (mnemonic === 'add' && fBase[rs1] !== UNKNOWN && fBase[rs2] !== UNKNOWN && (fBase[rs1] === NO_BASE || fBase[rs2] === NO_BASE)) {
    base = fBase[rs1] === NO_BASE ? fBase[rs2]! : fBase[rs1]!;
    lo = fLo[rs1]! + fLo[rs2]!; hi = fHi[rs1]! + fHi[rs2]!; align = Math.min(fAlign[rs1]!, fAlign[rs2]!);
  }
  fBase[rd] = Math.abs(lo) < 2 ** 24 && Math.abs(hi) < 2 ** 24 ? base : UNKNOWN;
  fLo[rd] = lo;
  fHi[rd] = hi;
  fAlign[rd] = align;
}

/**
 * Innermost loops of a region that can be native JS loops: a backward branch at B to T whose body
 * T..B-1 is straight-line code (ALU, loads, stores, AMOs: no control transfer) entered only at T
 * (no branch or jump of the region targets T+1..B, and the region's entry is not there).
 * Returns, per index, B for a loop head T, else 0.
 */
function innermostLoops(ops: Int32Array, imms: Int32Array, base: number, member: Uint8Array, entry: number): Int16Array {
  const loopEnd = new Int16Array(WORDS_PER_PAGE + 1);
  const targeted = new Uint8Array(WORDS_PER_PAGE + 1);
  for (let i = 0; i < WORDS_PER_PAGE; i++) {
    if (member[i] !== 1) continue;
    const cls = opClass(ops[base + i]! & 0xff);
    const target = i + imms[base + i]!;
    if ((cls === OpClass.BRANCH || cls === OpClass.JAL) && target >= 0 && target < WORDS_PER_PAGE) targeted[target] = 1;
  }
  for (let b = 0; b < WORDS_PER_PAGE; b++) {
    if (member[b] !== 1 || opClass(ops[base + b]! & 0xff) !== OpClass.BRANCH) continue;
    const t = b + imms[base + b]!;
    if (t < 0 || t >= b || (entry > t && entry <= b)) continue;
    let straight = true;
    for (let k = t; k < b && straight; k++) {
      const cls = opClass(ops[base + k]! & 0xff);
      straight = member[k] === 1 && (k === t || targeted[k] === 0) && (cls === OpClass.ALU || cls === OpClass.LOAD || cls === OpClass.STORE || cls === OpClass.AMO || cls === OpClass.NOP);
    }
    if (straight && targeted[b] === 0) loopEnd[t] = b;
  }
  return loopEnd;
}

/** The function type of a compiled region (see PARAMS; returns 0 or 1, see the module comment). */
export type RegionFn = (
  cpu: unknown, J: unknown, regs: Int32Array, pageVa: number, idx: number, retired: number, checkLimit: number,
  rtlb: Int32Array, wtlb: Int32Array, ctx: number, wctx: number,
) => number;

/** Turns generated source into a function. */
export function instantiate(source: string): RegionFn {
  // eslint-disable-next-line @typescript-eslint/no-implied-eval -- the point of a compiled tier
  return new Function(...PARAMS, source) as RegionFn;
}
