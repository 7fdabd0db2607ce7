#!/usr/bin/env node
'use strict';
// npm's install step: use the prebuilt addon and launcher shipped in prebuilds/<platform>-<arch>
// when they load here (linux-x64 with glibc); otherwise build both from source with node-gyp
// (npm puts its own node-gyp on PATH for install scripts). With scripts blocked
// (--ignore-scripts) this never runs: src/sys/native.ts still finds the prebuilds, and
// --help, --version and --print-capabilities need no addon at all.
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
const glibc = process.report && process.report.getReport().header.glibcVersionRuntime;

function prebuiltFits() {
  if (!glibc) return 'not a glibc system';
  for (const f of ['sys_addon.node', 'virtiofsd-ts-sandbox'])
    if (!fs.existsSync(path.join(dir, f))) return `no prebuilt ${f} for ${path.basename(dir)}`;
  // Loaded in a child, so that a bad binary cannot take this process down.
  const r = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(path.join(dir, 'sys_addon.node'))})`], { encoding: 'utf8' });
  if (r.status !== 0) return `the prebuilt addon does not load: ${r.stderr.trim().split('\n')[0]}`;
  const l = spawnSync(path.join(dir, 'virtiofsd-ts-sandbox'), ['--', '/bin/true'], { encoding: 'utf8' });
  if (l.status !== 0) return `the prebuilt launcher does not run: ${(l.stderr || l.error || '').toString().trim()}`;
  return null;
}

const why = prebuiltFits();
if (why === null) {
  process.stdout.write(`virtiofsd-ts: using the prebuilt addon (${path.basename(dir)})\n`);
  process.exit(0);
}
process.stdout.write(`virtiofsd-ts: ${why}; building from source\n`);
const r = spawnSync('node-gyp', ['rebuild'], { cwd: root, stdio: 'inherit', shell: false });
process.exit(r.status === null ? 1 : r.status);
