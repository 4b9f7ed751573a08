import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['tests/**/*.test.ts'],
    // Guest programs and the native addon are real work: give them room, but a hang still fails.
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
  },
});
