/**
 * Clean copies from the disk (T-17, issue 12's clean-copy sources): a guest page the block device
 * filled from the disk (a page-cache read), or stored to it (a write-back), holds exactly the
 * disk's sectors until the guest writes the page, so recovery can read them again. The block
 * device tells about each completed transfer (BlockDevice.onTransfer); every whole 4 KiB page of
 * it is admitted into the clean copy (CleanCopySink.admit) with a source that re-reads its 8
 * sectors. A later write to any of those sectors, from another page, ends the admission (the
 * disk no longer holds this page's bytes); the page's own first write ends it too (the sink
 * releases the source).
 */
import type { CleanCopySink, CleanSource } from './types.ts';

const PAGE_BYTES = 4096;
const SECTOR_BYTES = 512;
const SECTORS_PER_PAGE = PAGE_BYTES / SECTOR_BYTES;

/** What this needs of a block device (devices/block.ts BlockDevice). */
export interface TransferringDisk {
  onTransfer: ((direction: 'read' | 'write', gpa: number, firstSector: number, bytes: number) => void) | null;
  readonly disk: { read(firstSector: number, count: number): Uint8Array };
}

/** Counters of DiskCleanCopies. */
export interface DiskCleanCopyStats {
  /** Pages admitted after a transfer. */
  admitted: number;
  /** Admissions ended because their sectors were written from another page. */
  overwritten: number;
}

/** Keeps clean copies of the pages a block device moves to and from the disk. */
export class DiskCleanCopies {
  readonly stats: DiskCleanCopyStats = { admitted: 0, overwritten: 0 };
  /** First sector of each admitted page's copy, by page; and the page whose copy each sector is part of. */
  private readonly sectorOfPage = new Map<number, number>();
  private readonly pageOfSector = new Map<number, number>();

  /** Starts listening to `block` (replacing its onTransfer); stop() undoes it. */
  constructor(private readonly block: TransferringDisk, private readonly sink: CleanCopySink) {
    block.onTransfer = (direction, gpa, firstSector, bytes) => this.transferred(direction, gpa, firstSector, bytes);
  }

  /** Stops admitting pages; admitted ones stay until written. */
  stop(): void {
    if (this.block.onTransfer !== null) this.block.onTransfer = null;
  }

  /** Pages whose disk copy is held now. */
  get pagesHeld(): number {
    return this.sectorOfPage.size;
  }

  /** The pages whose disk copy is held now, in order. */
  heldPages(): number[] {
    return [...this.sectorOfPage.keys()].sort((x, y) => x - y);
  }

  private transferred(direction: 'read' | 'write', gpa: number, firstSector: number, bytes: number): void {
    // Sectors just written hold the new data: any other page's copy of them is gone.
    if (direction === 'write') {
      for (let sector = firstSector; sector < firstSector + bytes / SECTOR_BYTES; sector++) {
        const gpn = this.pageOfSector.get(sector);
        if (gpn !== undefined) {
          this.forget(gpn);
          this.stats.overwritten++;
        }
      }
    }
    for (let offset = (PAGE_BYTES - (gpa % PAGE_BYTES)) % PAGE_BYTES; offset + PAGE_BYTES <= bytes; offset += PAGE_BYTES) {
      this.admit((gpa + offset) / PAGE_BYTES, firstSector + offset / SECTOR_BYTES);
    }
  }

  private admit(gpn: number, sector: number): void {
    this.forget(gpn);
    const source: CleanSource = {
      name: 'disk',
      read: () => {
        if (this.sectorOfPage.get(gpn) !== sector) return null; // overwritten since, or readmitted elsewhere
        try {
          const bytes = this.block.disk.read(sector, SECTORS_PER_PAGE);
          return bytes.length === PAGE_BYTES ? bytes : null;
        } catch {
          return null;
        }
      },
      release: () => {
        if (this.sectorOfPage.get(gpn) === sector) this.forget(gpn);
      },
    };
    this.sectorOfPage.set(gpn, sector);
    for (let i = 0; i < SECTORS_PER_PAGE; i++) this.pageOfSector.set(sector + i, gpn);
    if (this.sink.admit(gpn, source)) this.stats.admitted++;
    else this.forget(gpn);
  }

  private forget(gpn: number): void {
    const sector = this.sectorOfPage.get(gpn);
    if (sector === undefined) return;
    this.sectorOfPage.delete(gpn);
    for (let i = 0; i < SECTORS_PER_PAGE; i++) if (this.pageOfSector.get(sector + i) === gpn) this.pageOfSector.delete(sector + i);
  }
}
