// The bundle the RPM and the lab guests run (rpm/bundle, made by `npm run build`):
// it starts, it has its worker entry points where the pool looks for them, and
// kafkajs is in it once, so that the idle fix (src/bus/kafkajs-idle.ts) patches
// the queue class kafkajs itself uses, not a second copy.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { repoRoot } from '../helpers.js';
import { assertBundleFresh } from '../lab/driver.js';

const run = promisify(execFile);
const bundle = join(repoRoot, 'dist/bundle');

describe('the bundle (rpm/bundle)', () => {
  it('exists and is not older than tsc output (npm run build makes both)', () => {
    // The check every lab run makes before it boots a guest.
    assert.doesNotThrow(() => assertBundleFresh(repoRoot));
  });

  it('starts: --help and a command that loads the spec parser', async () => {
    const help = await run(process.execPath, [join(bundle, 'cli.js'), '--help']);
    assert.match(help.stdout, /usage: bosun <command>/);
    const v = await run(process.execPath, [join(bundle, 'cli.js'), 'validate', join(repoRoot, 'examples/node-a.json')]);
    assert.match(v.stdout, /valid \(node node-a, version \d+\)/);
  });

  it('has the worker threads at the top, where new URL(./<name>.js, import.meta.url) finds them from any chunk', () => {
    for (const w of ['chunk-worker.js', 'digest-worker.js']) assert.ok(existsSync(join(bundle, w)), `${w} is missing`);
  });

  it('holds kafkajs once, the queue class the idle fix patches included', () => {
    const files = readdirSync(bundle).filter((f) => f.endsWith('.js'));
    const text = files.map((f) => readFileSync(join(bundle, f), 'utf8')).join('\n');
    // esbuild marks each bundled module with a comment naming its path.
    const count = (path: string) => text.split(`// node_modules/kafkajs/${path}\n`).length - 1;
    assert.equal(count('src/network/requestQueue/index.js'), 1);
    assert.equal(count('src/cluster/index.js'), 1);
    assert.doesNotMatch(text, /require\(["']kafkajs/, 'no kafkajs module is left to node_modules at run time');
  });
});
