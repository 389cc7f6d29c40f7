// Kills a child process in the middle of an mbox append, every time: the child's code runs after
// a prelude that makes it stop for good once its first writev(2) of a FileHandle has completed
// (an mbox append writes in blocks of 4 MB; the first one of a larger mail is then on disk, the
// rest never comes). Used by the tests of interrupted appends.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';

/** Runs `code` (an ES module body) in a child until its first writev, kills it, returns its stdout. */
export async function killAfterFirstWritev(dir: string, code: string): Promise<string> {
  const script = path.join(dir, `stalled-child-${process.pid}.mjs`);
  fs.writeFileSync(
    script,
    `import * as fsp from 'node:fs/promises';
     const probe = await fsp.open(${JSON.stringify(script)}, 'r');
     const proto = Object.getPrototypeOf(probe);
     await probe.close();
     const writev = proto.writev;
     proto.writev = async function (...args) {
       const r = await writev.apply(this, args);
       process.stdout.write('stalled\\n');
       await new Promise(() => {});
       return r;
     };
     ${code}
     process.stdout.write('done\\n');`,
  );
  const child = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  for (let i = 0; i < 3000 && !out.includes('stalled') && child.exitCode === null; i++) await sleep(5);
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  fs.rmSync(script, { force: true });
  return out;
}
