/**
 * PARDA's arithmetic (T-19, docs/storage-io.md), as pure functions: the latency average, the
 * normalisation of a latency by IO size, the cluster average over the hosts' published blocks,
 * and the window control law. The controller (controller.ts) feeds them; tests check them alone.
 */

/** The IO size every latency is normalised to: 4 KiB. */
export const REFERENCE_IO_BYTES = 4096;

/**
 * The exponentially weighted moving average PARDA keeps of a host's latency:
 * L(t) = (1 − α)·l + α·L(t − 1), where l is the period's mean latency and α (0 … 1) weighs
 * history. `previous` null (no history yet) gives the sample itself.
 */
export function ewmaLatency(previous: number | null, sample: number, alpha: number): number {
  return previous === null ? sample : (1 - alpha) * sample + alpha * previous;
}

/**
 * How much one IO of `bytes` costs against a 4 KiB one, in the linear service-time model
 * t(s) = c + s / B (a fixed cost c per IO, then transfer at bandwidth B). The knee k = c·B is the
 * transfer size that costs as much as the fixed part; the factor is t(4 KiB) / t(s) =
 * (k + 4096) / (k + s). Multiplying a measured latency by it gives the latency the IO would have
 * seen at 4 KiB, so hosts issuing different sizes compare on one scale.
 */
export function sizeFactor(bytes: number, kneeBytes: number): number {
  return (kneeBytes + REFERENCE_IO_BYTES) / (kneeBytes + Math.max(0, bytes));
}

/** A latency normalised to a 4 KiB IO (see sizeFactor). */
export function normalisedLatency(latencyNs: number, bytes: number, kneeBytes: number): number {
  return latencyNs * sizeFactor(bytes, kneeBytes);
}

/** One host's published figures as the cluster average needs them. */
export interface LatencySample {
  /** The host's L(t), ns (normalised). */
  latencyNs: number;
  /** IOs the host completed in its last period (the weight). */
  ioCount: number;
}

/**
 * The cluster's average latency: each live host's L weighted by its IO count, so a host doing
 * little weighs little. Null when no host completed an IO (nothing to control on).
 */
export function clusterLatency(samples: readonly LatencySample[]): number | null {
  let weighted = 0;
  let count = 0;
  for (const sample of samples) {
    if (!(sample.ioCount > 0) || !(sample.latencyNs > 0) || !Number.isFinite(sample.latencyNs)) continue;
    weighted += sample.latencyNs * sample.ioCount;
    count += sample.ioCount;
  }
  return count === 0 ? null : weighted / count;
}

/** The control law's inputs. */
export interface WindowLawInput {
  /** w(t): IOs this host may have in flight now. */
  window: number;
  /** L(t): the latency the law reacts to (the cluster average), ns; null: none known. */
  latencyNs: number | null;
  /** 𝓛: the latency threshold, ns. */
  thresholdNs: number;
  /** γ (0 … 1]: how far one step moves towards the law's target. */
  gamma: number;
  /** β: this host's additive term, proportional to its IO shares. */
  beta: number;
  /** Smallest window. */
  windowMin: number;
  /** Largest window. */
  windowMax: number;
  /**
   * The most requests this host had outstanding (in flight and queued) in the period, or null.
   * The window is kept at or below it (and at or above windowMin): a window the host does not
   * fill says nothing about the device, and the law would otherwise raise it without bound while
   * the others' latency is low, letting a later burst through unchecked.
   */
  demand?: number | null;
}

/**
 * PARDA's law: w(t+1) = (1 − γ)·w(t) + γ·((𝓛 / L(t))·w(t) + β), clamped to [w_min, w_max].
 * With no latency known the window stays. With `demand`, the result is at most max(demand, w_min).
 */
export function nextWindow(input: WindowLawInput): number {
  const { window, latencyNs, thresholdNs, gamma, beta, windowMin, windowMax } = input;
  let next = window;
  if (latencyNs !== null && latencyNs > 0 && Number.isFinite(latencyNs)) {
    next = (1 - gamma) * window + gamma * ((thresholdNs / latencyNs) * window + beta);
  }
  if (input.demand != null) next = Math.min(next, Math.max(input.demand, windowMin));
  return clamp(next, windowMin, windowMax);
}

/** β of a host whose VMs hold `shares` IO shares: `betaPer1000` per 1000 shares (the default VM's). */
export function betaOf(shares: number, betaPer1000: number): number {
  return (betaPer1000 * shares) / 1000;
}

/**
 * The fixed point of the law for hosts that all see one latency: w = β·L / (L − 𝓛), so windows
 * settle in the ratio of their β. Given the device's throughput X (IOs per ns, saturated) and
 * Little's law L = W / X, the cluster latency settles at L = 𝓛 + Σβ / X. Null when the law has no
 * fixed point (Σβ ≤ 0). Used by docs and tests to predict where a run should settle.
 */
export function predictedLatency(thresholdNs: number, betaSum: number, throughputPerNs: number): number | null {
  return betaSum > 0 && throughputPerNs > 0 ? thresholdNs + betaSum / throughputPerNs : null;
}

/** Whole requests a window admits: at least one, so a host always makes progress. */
export function admitted(window: number): number {
  return Math.max(1, Math.floor(window + 0.5));
}

function clamp(value: number, min: number, max: number): number {
  return value < min ? min : value > max ? max : value;
}
