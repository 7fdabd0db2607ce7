import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts', 'src/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 120_000,
    // QEMU guests and daemons are heavy on a 2-core machine: one file at a time.
    fileParallelism: false,
    pool: 'forks',
  },
});
