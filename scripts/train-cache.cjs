// Makes the bundle's V8 code cache after representative runs (scripts/bundle.mjs runs this with
// bin/dsync's Node flags): the cache then holds the functions such runs compile, 0.44 MB, instead
// of every function of the bundle, 0.77 MB, which each run would read and deserialise. A 10k
// no-change run: 133 ms against 138 ms (BENCHMARKS.md, session 10). Functions no training run
// reaches (mbox, the remote transport, error paths) are compiled when first used: training
// an mbox conversion too made the cache 0.58 MB, for runs where a few milliseconds matter least.
//   node FLAGS scripts/train-cache.cjs BUNDLE CACHE   (absolute paths; exit 1 on failure)
'use strict';
const fs = require('node:fs'), vm = require('node:vm'), v8 = require('node:v8'), os = require('node:os'), path = require('node:path');
const { wrap, createRequire } = require('node:module');
const [bundle, cache] = process.argv.slice(2);

async function train(main) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dsync-cache-'));
  try {
    const a = path.join(dir, 'a'), b = path.join(dir, 'b'), c = path.join(dir, 'c');
    const quiet = { write: () => true };
    const io = { stdout: quiet, stderr: quiet, env: { HOME: dir, USER: os.userInfo().username } };
    const mail = (i) => `From: a${i}@example.org\nTo: b@example.org\nSubject: training ${i}\nDate: Mon, 1 Jan 2024 10:00:00 +0000\nMessage-ID: <t${i}@example.org>\n\nbody ${i}\n`;
    for (const [folder, n] of [['', 30], ['.Work', 20], ['.Work.Projects', 10]]) {
      for (const sub of ['cur', 'new', 'tmp']) fs.mkdirSync(path.join(a, folder, sub), { recursive: true });
      for (let i = 0; i < n; i++) fs.writeFileSync(path.join(a, folder, 'cur', `17000000${String(i).padStart(2, '0')}.M${i}P1.train:2,${i % 3 ? 'S' : ''}`), mail(i));
    }
    const run = async (...args) => {
      const code = await main(args, io);
      if (code !== 0 && code !== 2) throw new Error(`training run exited ${code}: ${args.join(' ')}`);
    };
    const mirror = () => run('-o', `mail_location=maildir:${a}`, 'mirror', `maildir:${b}`);
    await mirror(); // initial
    await mirror(); // no change
    // Changes on both sides: flags, a new mail each, an expunge.
    const cur = path.join(a, 'cur');
    const first = fs.readdirSync(cur).sort()[0];
    fs.renameSync(path.join(cur, first), path.join(cur, first.replace(/:2,.*$/, ':2,FS')));
    fs.writeFileSync(path.join(a, 'new', '1700001000.M1P2.train'), mail(100));
    fs.writeFileSync(path.join(b, '.Work', 'new', '1700001001.M1P3.train'), mail(101));
    const bcur = path.join(b, '.Work', 'cur');
    fs.unlinkSync(path.join(bcur, fs.readdirSync(bcur).sort()[1]));
    await mirror();
    await new Promise((r) => setTimeout(r, 50));
    await mirror(); // no change again
    await run('-f', '-o', `mail_location=maildir:${a}`, 'mirror', `maildir:${b}`);
    await run('-o', `mail_location=maildir:${a}`, 'backup', `maildir:${c}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

(async () => {
  v8.setFlagsFromString('--no-flush-bytecode');
  const script = new vm.Script(wrap(fs.readFileSync(bundle, 'utf8')), { filename: bundle });
  const mod = { exports: {} };
  script.runInThisContext()(mod.exports, createRequire(bundle), mod, bundle, path.dirname(bundle));
  await train(mod.exports.main);
  v8.setFlagsFromString('--flush-bytecode');
  fs.writeFileSync(cache, script.createCachedData());
  process.exit(0);
})().catch((e) => {
  process.stderr.write(`training the code cache failed: ${e && e.stack || e}\n`);
  process.exit(1);
});
