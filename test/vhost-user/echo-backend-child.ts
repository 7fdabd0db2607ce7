/**
 * An echo back-end in a process of its own (run with `node --import tsx`), for
 * tests whose failure mode is a blocked event loop: the test can still time
 * out, and SIGTERM tells whether the loop is alive. Prints "listening" when
 * ready; exits 0 on SIGTERM, as the daemon's CLI does.
 */
import { listenEcho } from './echo-backend';

const socketPath = process.argv[2];
const listener = listenEcho(socketPath, (line) => process.stderr.write(`${line}\n`));
// A JavaScript handler, like the daemon's: it only runs if the event loop does.
process.once('SIGTERM', () => {
  listener.close(true);
  process.exit(0);
});
process.stdout.write('listening\n');
