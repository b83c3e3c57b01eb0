import assert from 'node:assert/strict';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, it } from 'node:test';
import { ESLint, type Linter } from 'eslint';
import tseslint from 'typescript-eslint';
import { repoRoot } from '../helpers.js';

/**
 * The layers of src/ (test/eslint-layers.js) as In/Out records: a file, an
 * import it makes, and whether lint lets it through. A back-import (a module
 * importing from a layer above its own) must fail `npm run lint`.
 */
const RECORDS: { file: string; imports: string; allowed: boolean }[] = [
  { file: 'src/host/exec.ts', imports: './files.js', allowed: true },
  { file: 'src/host/exec.ts', imports: '../errors.js', allowed: true },
  { file: 'src/host/exec.ts', imports: '../secrets/redact.js', allowed: false },
  { file: 'src/host/index.ts', imports: '../engine/step.js', allowed: false },
  { file: 'src/log.ts', imports: './host/exec.js', allowed: true },
  { file: 'src/log.ts', imports: './secrets/redact.js', allowed: false },
  { file: 'src/state/journal.ts', imports: '../host/files.js', allowed: true },
  { file: 'src/state/journal.ts', imports: '../engine/step.js', allowed: false },
  { file: 'src/secrets/open.ts', imports: '../identity/host-identity.js', allowed: true },
  { file: 'src/engine/apply.ts', imports: '../state/journal.js', allowed: true },
  { file: 'src/engine/apply.ts', imports: '../phases/index.js', allowed: false },
  { file: 'src/engine/apply.ts', imports: '../apply-node.js', allowed: false },
  { file: 'src/backup/peer/client.ts', imports: '../../secrets/redact.js', allowed: true },
  { file: 'src/backup/peer/client.ts', imports: '../restore-step.js', allowed: true },
  { file: 'src/backup/peer/client.ts', imports: '../../phases/index.js', allowed: false },
  { file: 'src/backup/peer/client.ts', imports: '../../daemon/agent.js', allowed: false },
  { file: 'src/phases/disks/index.ts', imports: './health.js', allowed: true },
  { file: 'src/phases/restore/index.ts', imports: '../../backup/marker.js', allowed: true },
  { file: 'src/phases/disks/index.ts', imports: '../../health/collect.js', allowed: false },
  { file: 'src/phases/disks/index.ts', imports: '../../bus/kafka.js', allowed: false },
  { file: 'src/health/collect.ts', imports: '../phases/index.js', allowed: true },
  { file: 'src/apply-node.ts', imports: './phases/index.js', allowed: true },
  { file: 'src/apply-node.ts', imports: './cli.js', allowed: false },
  { file: 'src/bus/reporter.ts', imports: '../daemon/agent.js', allowed: false },
  { file: 'src/cli/apply.ts', imports: '../apply-node.js', allowed: true },
  { file: 'src/cli.ts', imports: './daemon/run.js', allowed: true },
];

async function layerConfig(): Promise<Linter.Config[]> {
  const { layerRules } = (await import(pathToFileURL(join(repoRoot, 'test/eslint-layers.js')).href)) as { layerRules: Linter.Config[] };
  return [{ files: ['**/*.ts'], languageOptions: { parser: tseslint.parser } }, ...layerRules];
}

async function restrictedImports(eslint: ESLint, file: string, specifier: string): Promise<string[]> {
  const [result] = await eslint.lintText(`import { thing } from '${specifier}';\nexport { thing };\n`, { filePath: join(repoRoot, file) });
  return result!.messages.filter((message) => message.ruleId === 'no-restricted-imports').map((message) => message.message);
}

describe('the layers of src/ (lint)', () => {
  it('lets an import through exactly when it points to its own layer or one below', async () => {
    const eslint = new ESLint({ cwd: repoRoot, overrideConfigFile: true, overrideConfig: await layerConfig() });
    for (const record of RECORDS) {
      const problems = await restrictedImports(eslint, record.file, record.imports);
      assert.equal(problems.length === 0, record.allowed, `${record.file} importing ${record.imports}: ${problems.join('; ') || 'allowed'}`);
      if (!record.allowed) assert.match(problems[0]!, /is in a layer above .*imports in src\/ point down/);
    }
  });

  it('fails `npm run lint` (the project config) on a back-import, naming the layer', async () => {
    const eslint = new ESLint({ cwd: repoRoot, overrideConfigFile: join(repoRoot, 'test/eslint.config.js') });
    const problems = await restrictedImports(eslint, 'src/host/exec.ts', '../engine/step.js');
    assert.deepEqual(problems, [
      "'../engine/step.js' import is restricted from being used by a pattern. engine is in a layer above host, log.ts, errors.ts, version.ts, canonical-json.ts: imports in src/ point down (test/eslint-layers.js)",
    ]);
    assert.deepEqual(await restrictedImports(eslint, 'src/engine/apply.ts', '../state/journal.js'), []);
  });
});
