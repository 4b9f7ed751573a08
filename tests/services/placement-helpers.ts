/** What the placement tests share. */
import { expect } from 'vitest';
import { PlacementError } from '../../services/placement/index.ts';

/** Runs `fn` and checks it threw a PlacementError with `code`. */
export function expectCode(fn: () => unknown, code: string): void {
  let thrown: unknown;
  try {
    fn();
  } catch (error) {
    thrown = error;
  }
  expect(thrown).toBeInstanceOf(PlacementError);
  expect((thrown as PlacementError).code).toBe(code);
}
