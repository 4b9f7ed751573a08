/**
 * Scanning a guest's own page tables for accessed leaves (T-3 in nested mode, where the guest's
 * A bits are the only accessed information): the walk reads tables through the P2M without
 * exits, and clears an A bit the way the walk sets it (protections resolved, decoded code
 * patched), so the next access walks again and sets it again.
 */
import { PAGE_SIZE, Pte, PTE_PPN_SHIFT } from '../../guest-isa/arch.ts';
import type { PhysicalPageTables } from './sv32.ts';

/**
 * What a scan needs: present pages' host offsets and the walk's own page-table write path. A Vm
 * is one: services pass their VM.
 */
export interface PageTableScanHost extends PhysicalPageTables {
  /** Host offset of guest-physical `gpa` when its page is present, else -1 (nothing is resolved). */
  hostOffsetIfPresent(gpa: number): number;
}

/**
 * Visits every valid, accessed leaf under the given root tables (guest page numbers): for a
 * 4 KiB leaf with the guest page it maps, for a superpage with the first guest page of its 4 MiB
 * region (one A bit for the whole region). When `visit` returns true the leaf's A bit is cleared.
 * Tables that are not present are skipped (nothing is resolved or allocated). Returns how many A
 * bits were cleared.
 */
export function scanAccessedLeaves(host: PageTableScanHost, rootGpns: Iterable<number>, visit: (mappedGpn: number, superpage: boolean) => boolean): number {
  const words = host.hostPool32;
  let cleared = 0;
  const clear = (pteGpa: number): void => {
    const hostOffset = host.hostOffsetForPageTableWrite(pteGpa);
    if (hostOffset < 0) return;
    words[hostOffset >>> 2]! &= ~Pte.A;
    host.flushCodePatch();
    cleared++;
  };
  const leafTables = new Set<number>();
  for (const rootGpn of new Set(rootGpns)) {
    const rootOffset = host.hostOffsetIfPresent(rootGpn * PAGE_SIZE);
    if (rootOffset < 0) continue;
    for (let i = 0; i < 1024; i++) {
      const pte = words[(rootOffset >>> 2) + i]!;
      if ((pte & Pte.V) === 0) continue;
      if ((pte & (Pte.R | Pte.X)) === 0) {
        leafTables.add(pte >>> PTE_PPN_SHIFT);
        continue;
      }
      if ((pte & Pte.A) === 0) continue;
      const regionFirstGpn = (pte >>> PTE_PPN_SHIFT) & ~1023;
      if (visit(regionFirstGpn, true)) clear(rootGpn * PAGE_SIZE + i * 4);
    }
  }
  for (const tableGpn of leafTables) {
    const tableOffset = host.hostOffsetIfPresent(tableGpn * PAGE_SIZE);
    if (tableOffset < 0) continue;
    for (let i = 0; i < 1024; i++) {
      const pte = words[(tableOffset >>> 2) + i]!;
      if ((pte & (Pte.V | Pte.A)) !== (Pte.V | Pte.A) || (pte & (Pte.R | Pte.X)) === 0) continue;
      if (visit(pte >>> PTE_PPN_SHIFT, false)) clear(tableGpn * PAGE_SIZE + i * 4);
    }
  }
  return cleared;
}
