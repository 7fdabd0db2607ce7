import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { OPTIONS } from '../../src/cli';
import { renderReference, rewriteReadme } from '../../scripts/options-reference';

const README = path.resolve(__dirname, '../../README.md');

describe("README's options reference", () => {
  it('is what scripts/options-reference.ts writes from the yargs definitions (run `npm run options-reference`)', () => {
    const readme = fs.readFileSync(README, 'utf8');
    expect(rewriteReadme(readme)).toBe(readme);
  });

  it('names every option', () => {
    const reference = renderReference();
    for (const name of Object.keys(OPTIONS)) expect(reference).toContain(name.length === 1 ? `\`-${name}` : `\`--${name}`);
  });
});
