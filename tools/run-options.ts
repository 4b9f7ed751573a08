/**
 * tools/run's command line: every option the parser accepts, the usage line and the --help text.
 * Kept apart from tools/run.ts (which runs a guest when imported) so that tests can check that
 * the help names every option the parser accepts (tests/tools/run-help.test.ts).
 */
import { USAGE_EXIT_CODE } from './cli.ts';

/** Options without a value. */
export const RUN_FLAGS = ['--stats', '--json', '--trace', '--help', '-h', '--no-traces', '--promote-hot', '--reclaim-cold', '--disk-async', '--disk-direct'] as const;

/** Options with one value (`--mem 64M` or `--mem=64M`). */
export const RUN_VALUE_OPTIONS = [
  '--mem', '--vcpus', '--max-insns', '--input', '--host-mem', '--mmu', '--batch', '--large-pages', '--disk',
  '--checkpoint-path', '--restore', '--restore-mode', '--fork-at', '--forks', '--checkpoint-on-exit', '--api-sock', '--tier',
] as const;

/** Options with two values: an instruction count and a path. */
export const RUN_TWO_VALUE_OPTIONS = ['--checkpoint-at', '--snapshot-at'] as const;

/** Every option the parser accepts. */
export const RUN_OPTIONS: readonly string[] = [...RUN_FLAGS, ...RUN_VALUE_OPTIONS, ...RUN_TWO_VALUE_OPTIONS];

export const RUN_USAGE =
  'usage: run <image.bvx | prog.s> [--mem SIZE] [--vcpus N] [--max-insns N] [--input TEXT] [--host-mem SIZE] [--tier T]\n' +
  '           [--stats [--json]] [--trace] [--mmu shadow|nested] [--no-traces] [--batch N] [--large-pages P]\n' +
  '           [--promote-hot] [--reclaim-cold] [--disk PATH [--disk-async [--disk-direct]]]\n' +
  '           [--checkpoint-at N PATH] [--snapshot-at N PATH]\n' +
  '           [--checkpoint-path PATH] [--checkpoint-on-exit PATH] [--fork-at N --forks K] [--api-sock PATH]\n' +
  '           [-- boot args...]\n' +
  '       run --restore PATH [--restore-mode lazy|eager|map] [options but --mem, --vcpus, --mmu, --batch, --large-pages, boot args]\n' +
  '       run --help';

/** How the process exits when the guest does not power off by itself (docs/run.md). */
export const RunExitCode = {
  LOAD_ERROR: 1,
  USAGE: USAGE_EXIT_CODE,
  GUEST_ERROR: 3,
  BUDGET: 4,
  HOST_ERROR: 5,
  IDLE: 6,
  /** The guest ended (exit 0) before a --checkpoint-at, --snapshot-at or --fork-at point. */
  POINT_NOT_REACHED: 7,
  /** Stopped cleanly by SIGINT (Ctrl-C): 128 + 2, what a shell reports for a process SIGINT killed. */
  INTERRUPTED_INT: 130,
  /** Stopped cleanly by SIGTERM: 128 + 15. */
  INTERRUPTED_TERM: 143,
} as const;

export const RUN_HELP = `${RUN_USAGE}

Boots a BV32 guest (a .bvx image, or assembly source ending in .s) and exits with its exit code.

The machine:
  --mem SIZE        guest RAM (default 64M; a multiple of 4 KiB, at most 3840M)
  --vcpus N         virtual CPUs, 1..32 (default 1)
  --max-insns N     stop after N instructions in total (exit 4)
  --input TEXT      console input, given up front; the guest sees end of input after it
                    (otherwise the console reads stdin, and end of input is stdin closing)
  --host-mem SIZE   host memory pool (default: guest RAM rounded up to 4 MiB, plus 16 MiB;
                    a multiple of 4M, at most 4G); raise it when the host runs out of memory
  --disk PATH       attach a block device: a raw image or an overlay (writes go to an overlay
                    next to it, never into a raw image; see docs/block-device.md)
  --disk-async      the block device also takes asynchronous requests (several in flight,
                    completion interrupts; the nanokernel then queues its disk requests)
  --disk-direct     with --disk-async: those requests bypass the host page cache (O_DIRECT)
  --tier T          execution tier: jit (hot guest code compiled to JavaScript; the same
                    results, faster) or interp (the interpreter); default jit, or interp when
                    the environment has BV_TIER=interp (docs/performance.md, "Compiled tier")
  -- ARGS...        boot arguments for the guest (joined with spaces)

Reports:
  --stats           print run statistics to stderr afterwards
  --json            with --stats: the statistics as one JSON document, the last line of stderr
  --trace           print every instruction to stderr (slow)

Memory virtualisation (docs/mmu.md, docs/large-pages.md):
  --mmu MODE        shadow (default: shadow page tables kept coherent by traces) or nested
  --no-traces       shadow mode without traces: every guest sfence drops all shadow state
  --batch N         shadow mode: neighbouring PTEs cached per page walk (0..1023, default 16)
  --large-pages P   back 4 MiB guest regions with host runs: superpages (default), always, off
  --promote-hot     T-3: count accessed pages per region, then move the hottest onto host runs
  --reclaim-cold    T-4: break up low-activity large regions, swap their cold pages to a file

VM state (docs/checkpoints.md):
  --checkpoint-at N PATH   after exactly N instructions save a checkpoint to PATH, then go on
  --snapshot-at N PATH     after exactly N instructions start a live snapshot to PATH
  --checkpoint-path PATH   let the guest ask for checkpoints (the CHECKPOINT hypercall) to PATH
  --checkpoint-on-exit PATH  when the run stops on a signal, --max-insns or idle, save the VM
                           to PATH (run it on with --restore PATH)
  --restore PATH           run the VM saved in a checkpoint instead of an image (its memory,
                           vCPUs, boot arguments and disk come from the file)
  --restore-mode MODE      with --restore: lazy (default: pages on first access, prefetched in
                           the background), eager (all before the first instruction) or map
  --fork-at N --forks K    after exactly N instructions fork K copy-on-write children; each
                           runs after the parent, its output under '--- fork i ---'; '{fork}'
                           in --input becomes the child's number
  A point past the end of the run is reported with a warning and nothing is written (exit 7).

Control (docs/api.md):
  --api-sock PATH   serve the host's control API for this VM on a Unix socket while it runs
                    (pause, resume, snapshot, fork, stats, console, as tools/host does); not
                    with --checkpoint-at, --snapshot-at, --fork-at or --checkpoint-path

  -h, --help        print this help

SIGINT (Ctrl-C) or SIGTERM stops the guest cleanly: the console is flushed, --stats printed,
--checkpoint-on-exit written; a second signal ends the process at once.

Exit codes: the guest's exit code & 0xff; 1 image or assembly error; 2 bad command line;
3 guest error; 4 instruction limit reached; 5 host error; 6 guest idle forever;
7 the guest ended (with exit code 0) before a --checkpoint-at, --snapshot-at or --fork-at point;
130 stopped by SIGINT; 143 stopped by SIGTERM. See docs/run.md.`;
