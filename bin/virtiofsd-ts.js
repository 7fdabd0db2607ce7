#!/usr/bin/env node
'use strict';
// Before anything else: SIGUSR1 would open Node's inspector on 127.0.0.1:9229,
// and whoever connects to it runs code as the daemon (root). A listener of our
// own replaces Node's handler; the daemon adds what SIGUSR1 does for it.
process.on('SIGUSR1', () => {});
// An inspector opened by --inspect or NODE_OPTIONS is closed as well.
require('node:inspector').close();
// Until the daemon has handlers of its own, a stop asked for during start-up ends the
// process at once: as pid 1 of its pid namespace, Node would otherwise ignore it.
const stopEarly = () => process.exit(0);
for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.once(signal, stopEarly);
// The installed command: runs the compiled CLI (npm run build produces dist/).
require('../dist/cli.js')
  .main(process.argv.slice(2), { stopEarly })
  .then(
    (code) => process.exit(code),
    (err) => {
      process.stderr.write(`virtiofsd-ts: ${err && err.stack ? err.stack : err}\n`);
      process.exit(1);
    },
  );
