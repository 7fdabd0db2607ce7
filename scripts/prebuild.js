#!/usr/bin/env node
'use strict';
// npm pack/publish (prepack): build the addon and the sandbox launcher and copy them into
// prebuilds/<platform>-<arch>/, which the package ships (scripts/install.js, src/sys/native.ts).
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
execFileSync('npx', ['node-gyp', 'rebuild'], { cwd: root, stdio: 'inherit' });
const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
fs.mkdirSync(dir, { recursive: true });
for (const f of ['sys_addon.node', 'virtiofsd-ts-sandbox']) {
  fs.copyFileSync(path.join(root, 'build', 'Release', f), path.join(dir, f));
  fs.chmodSync(path.join(dir, f), 0o755);
}
process.stdout.write(`prebuilds: ${path.relative(root, dir)}\n`);
