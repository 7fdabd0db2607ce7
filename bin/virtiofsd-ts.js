#!/usr/bin/env node
'use strict';
// The installed command: runs the compiled CLI (npm run build produces dist/).
require('../dist/cli.js')
  .main(process.argv.slice(2))
  .then(
    (code) => process.exit(code),
    (err) => {
      process.stderr.write(`virtiofsd-ts: ${err && err.stack ? err.stack : err}\n`);
      process.exit(1);
    },
  );
