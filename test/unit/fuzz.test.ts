// Bad input, fuzzed (issue 11): property-based tests over every parser that
// reads bytes from outside — the NodeSpec and AgentSettings parsers (the
// `bosun validate` / `apply` path), the signed envelope the agent takes off
// Kafka, and the backup manifest reader. Any byte string, and near-valid
// documents with fields dropped, retyped, truncated, bloated, nested deep or
// named __proto__, must give a clear rejection (a result or BackupError with a
// path-level message that never quotes a value), never an uncaught exception,
// a hang or a partial apply.
//
// Fixed seed; a failure names it and fast-check's counterexample path:
//   BOSUN_FUZZ_SEED=<seed> [BOSUN_FUZZ_PATH=<path>] node --test dist/test/unit/fuzz.test.js
// BOSUN_FUZZ_SCALE=10 runs ten times as many cases (a longer hunt).
import assert from 'node:assert/strict';
import { generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { BackupError } from '../../src/backup/errors.js';
import {
  FORMAT_V1,
  deriveKeys,
  encodeManifest,
  checkManifestSignature,
  openManifestBody,
  parseManifest,
  type Manifest,
  type ManifestHeaderV1,
} from '../../src/backup/format.js';
import { createBackup, restoreFromObjectStorage } from '../../src/backup/index.js';
import { TransportError, type ByteRange, type GetResult, type Transport } from '../../src/backup/transport.js';
import { ENVELOPE_FORMAT, signEnvelope, verifyEnvelope } from '../../src/bus/envelope.js';
import { openSealed, publicKeyString } from '../../src/identity/seal.js';
import { parseAgentSettings, parseJsonText, parseNodeSpec, type ParseResult, type Problem } from '../../src/spec/validate.js';
import { examplesDir, runCli, withTempDir } from '../helpers.js';

const SEED = Number(process.env.BOSUN_FUZZ_SEED ?? 20261122);
const PATH = process.env.BOSUN_FUZZ_PATH;
const SCALE = Number(process.env.BOSUN_FUZZ_SCALE ?? 1);
/** One case may take this long at most; more counts as a hang (the machine is shared and slow, hence the margin). */
const CASE_LIMIT_MS = 3_000;
/** Planted in generated values: no message, path or report may ever repeat it (values are never quoted). */
const MARK = 'S3CRET-fuzz-value';

const stats: Record<string, { runs: number; ms: number; slowestMs: number }> = {};

/** Run a property with the fixed seed; a failure says how to reproduce it. */
function check<T>(name: string, arb: fc.Arbitrary<T>, body: (v: T) => void, numRuns: number): void {
  const s = (stats[name] = { runs: 0, ms: 0, slowestMs: 0 });
  const t0 = performance.now();
  try {
    fc.assert(
      fc.property(arb, (v) => {
        const t = performance.now();
        body(v);
        const ms = performance.now() - t;
        s.runs += 1;
        s.slowestMs = Math.max(s.slowestMs, ms);
        assert.ok(ms < CASE_LIMIT_MS, `one case took ${Math.round(ms)} ms (limit ${CASE_LIMIT_MS} ms): a hang`);
      }),
      { seed: SEED, numRuns: Math.max(1, Math.round(numRuns * SCALE)), ...(PATH ? { path: PATH } : {}) },
    );
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    throw new Error(`fuzz "${name}" failed; reproduce with BOSUN_FUZZ_SEED=${SEED} (fast-check's seed and path are below)\n${msg}`, { cause: e });
  } finally {
    s.ms = Math.round(performance.now() - t0);
  }
}

async function checkAsync<T>(name: string, arb: fc.Arbitrary<T>, body: (v: T) => Promise<void>, numRuns: number): Promise<void> {
  const s = (stats[name] = { runs: 0, ms: 0, slowestMs: 0 });
  const t0 = performance.now();
  try {
    await fc.assert(
      fc.asyncProperty(arb, async (v) => {
        const t = performance.now();
        await body(v);
        s.runs += 1;
        s.slowestMs = Math.max(s.slowestMs, performance.now() - t);
      }),
      { seed: SEED, numRuns: Math.max(1, Math.round(numRuns * SCALE)), timeout: 10_000, ...(PATH ? { path: PATH } : {}) },
    );
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    throw new Error(`fuzz "${name}" failed; reproduce with BOSUN_FUZZ_SEED=${SEED} (fast-check's seed and path are below)\n${msg}`, { cause: e });
  } finally {
    s.ms = Math.round(performance.now() - t0);
  }
}

// ------------------------------------------------------------ generators

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type Seg = string | number;

const example = (name: string): Json => JSON.parse(readFileSync(join(examplesDir, name), 'utf8')) as Json;

/** Every path in a document, the root included. */
function pathsOf(doc: Json, prefix: Seg[] = [], out: Seg[][] = []): Seg[][] {
  out.push(prefix);
  if (Array.isArray(doc)) doc.forEach((v, i) => pathsOf(v, [...prefix, i], out));
  else if (doc !== null && typeof doc === 'object') for (const k of Object.keys(doc)) pathsOf(doc[k]!, [...prefix, k], out);
  return out;
}

function nested(depth: number, leaf: Json, asObject: boolean): Json {
  let v = leaf;
  for (let i = 0; i < depth; i++) v = asObject ? { a: v } : [v];
  return v;
}

const HUGE = [1e308, -1e308, 2 ** 53, 2 ** 53 + 2, 2 ** 64, -(2 ** 63), 0.5, -1, -0, 1e-300, 4294967295, 4294967296, 65536] as const;
const NASTY_KEYS = ['__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', '', ' ', '\u0000', 'ａ'] as const;

/** One structural change at one place in a document. */
type Mutation =
  | { op: 'drop'; at: number }
  | { op: 'retype'; at: number; value: Json }
  | { op: 'huge'; at: number; value: number }
  | { op: 'long'; at: number; length: number }
  | { op: 'deep'; at: number; depth: number; asObject: boolean }
  | { op: 'key'; at: number; key: string; value: Json };

const jsonLeaf: fc.Arbitrary<Json> = fc.oneof(
  fc.constant(null),
  fc.boolean(),
  fc.double({ noNaN: true, noDefaultInfinity: true }),
  fc.integer(),
  fc.string({ maxLength: 20 }),
  fc.constant(MARK),
);
const anyJson: fc.Arbitrary<Json> = fc.oneof({ weight: 3, arbitrary: jsonLeaf }, { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 3 }) as fc.Arbitrary<Json> });

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constant('drop' as const), at: fc.nat() }),
  fc.record({ op: fc.constant('retype' as const), at: fc.nat(), value: anyJson }),
  fc.record({ op: fc.constant('huge' as const), at: fc.nat(), value: fc.constantFrom(...HUGE) }),
  fc.record({ op: fc.constant('long' as const), at: fc.nat(), length: fc.constantFrom(300, 70_000, 1_000_000) }),
  fc.record({ op: fc.constant('deep' as const), at: fc.nat(), depth: fc.constantFrom(50, 2_000), asObject: fc.boolean() }),
  fc.record({ op: fc.constant('key' as const), at: fc.nat(), key: fc.oneof(fc.constantFrom(...NASTY_KEYS), fc.string({ maxLength: 8 })), value: anyJson }),
);

/** How the mutated document reaches the parser: as JSON text, cut short, or with bytes of invalid UTF-8 spliced in. */
type TextDamage = { kind: 'none' } | { kind: 'truncate'; at: number } | { kind: 'bytes'; at: number; bytes: Uint8Array };
const textDamage: fc.Arbitrary<TextDamage> = fc.oneof(
  { weight: 4, arbitrary: fc.constant({ kind: 'none' as const }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }) },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('bytes' as const),
      at: fc.nat(),
      bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }).map((b) => b.map((x) => x | 0x80)),
    }),
  },
);

/** Apply one mutation in place; returns the path it touched. */
function mutate(doc: { root: Json }, m: Mutation): Seg[] {
  const paths = pathsOf(doc.root);
  const path = paths[m.at % paths.length]!;
  const parentPath = path.slice(0, -1);
  let parent: Json = doc.root;
  for (const seg of parentPath) parent = (parent as Record<Seg, Json>)[seg]!;
  const last = path[path.length - 1];
  const set = (v: Json): void => {
    if (last === undefined) doc.root = v;
    else Object.defineProperty(parent, last, { value: v, enumerable: true, writable: true, configurable: true });
  };
  const current: Json = last === undefined ? doc.root : (parent as Record<Seg, Json>)[last]!;
  switch (m.op) {
    case 'drop':
      if (last === undefined) doc.root = null;
      else if (Array.isArray(parent)) parent.splice(last as number, 1);
      else delete (parent as Record<string, Json>)[last];
      return path;
    case 'retype':
      set(m.value);
      return path;
    case 'huge':
      set(m.value);
      return path;
    case 'long':
      set(`${MARK}${'x'.repeat(m.length)}`);
      return path;
    case 'deep':
      set(nested(m.depth, MARK, m.asObject));
      return path;
    case 'key': {
      // Into the object at this path (or its nearest object ancestor): "__proto__" as an own key, as JSON.parse makes it.
      let target: Json = current;
      let at = path;
      if (target === null || typeof target !== 'object' || Array.isArray(target)) {
        target = parentPath.length === 0 && (parent === null || typeof parent !== 'object' || Array.isArray(parent)) ? doc.root : parent;
        at = parentPath;
      }
      if (target === null || typeof target !== 'object' || Array.isArray(target)) return path;
      Object.defineProperty(target, m.key, { value: m.value, enumerable: true, writable: true, configurable: true });
      return [...at, m.key];
    }
  }
}

function render(root: Json, damage: TextDamage): { bytes: Buffer; damaged: boolean } {
  const text = Buffer.from(JSON.stringify(root) ?? 'null', 'utf8');
  if (damage.kind === 'truncate') return { bytes: text.subarray(0, damage.at % Math.max(1, text.length)), damaged: true };
  if (damage.kind === 'bytes') {
    const at = damage.at % (text.length + 1);
    return { bytes: Buffer.concat([text.subarray(0, at), damage.bytes, text.subarray(at)]), damaged: true };
  }
  return { bytes: text, damaged: false };
}

const nearValid = (base: Json) =>
  fc.record({ mutations: fc.array(mutation, { minLength: 1, maxLength: 3 }), damage: textDamage }).map(({ mutations, damage }) => {
    const doc = { root: structuredClone(base) };
    const touched = mutations.map((m) => mutate(doc, m));
    return { ...render(doc.root, damage), touched, mutations, damage };
  });

// ------------------------------------------------------------ the spec and settings parsers

const hasOwnProto = (v: unknown): boolean => {
  const stack = [v];
  while (stack.length > 0) {
    const x = stack.pop();
    if (x === null || typeof x !== 'object') continue;
    if (Object.prototype.hasOwnProperty.call(x, '__proto__') || (!Array.isArray(x) && Object.getPrototypeOf(x) !== Object.prototype)) return true;
    stack.push(...Object.values(x));
  }
  return false;
};

/** The `bosun validate` path: bytes → UTF-8 text (as readFile does) → JSON → schema. */
function validateBytes(bytes: Buffer, parse: (v: unknown) => ParseResult<unknown>): ParseResult<unknown> {
  const json = parseJsonText(bytes.toString('utf8'));
  return json.ok ? parse(json.value) : json;
}

function assertClearRejection(problems: Problem[], what: string): void {
  assert.ok(problems.length > 0, `${what}: a rejection names at least one problem`);
  for (const p of problems) {
    assert.equal(typeof p.path, 'string');
    assert.equal(typeof p.message, 'string');
    assert.ok(p.path.length > 0 && p.message.length > 0, `${what}: ${JSON.stringify(p)}`);
    assert.ok(p.message.length < 400, `${what}: a message short enough to read: ${p.message.slice(0, 100)}…`);
    assert.ok(!p.message.includes(MARK), `${what}: a message quotes a value: ${p.message.slice(0, 200)}`);
  }
}

/** `disks.raid.level`, `peers[1].psk` — as formatPath writes it. */
function fmt(path: Seg[]): string {
  let out = '';
  for (const seg of path) out += typeof seg === 'number' ? `[${seg}]` : out === '' ? seg : `.${seg}`;
  return out === '' ? '(root)' : out;
}

function checkParser(name: string, base: Json, parse: (v: unknown) => ParseResult<unknown>, runs: { bytes: number; near: number }): void {
  check(
    `${name}: any bytes`,
    fc.oneof(
      fc.uint8Array({ maxLength: 2048 }),
      fc.string({ unit: 'binary', maxLength: 512 }).map((s) => new TextEncoder().encode(s)),
    ),
    (b) => {
      const r = validateBytes(Buffer.from(b), parse);
      if (!r.ok) assertClearRejection(r.problems, name);
    },
    runs.bytes,
  );

  check(
    `${name}: any JSON value`,
    fc.jsonValue({ maxDepth: 5 }),
    (v) => {
      const r = parse(v);
      if (!r.ok) assertClearRejection(r.problems, name);
      else assert.ok(!hasOwnProto(r.value));
    },
    runs.bytes,
  );

  check(
    `${name}: near-valid documents`,
    nearValid(base),
    (c) => {
      const r = validateBytes(c.bytes, parse);
      const what = `${name} after ${JSON.stringify(c.mutations.map((m) => ({ ...m, value: 'value' in m ? typeof m.value : undefined })))} ${c.damage.kind}`;
      if (!r.ok) {
        assertClearRejection(r.problems, what);
        // A change to one field, with the text intact, is reported at that field, an ancestor, a descendant or a sibling of it.
        if (!c.damaged && c.touched.length === 1 && r.problems[0]!.path !== '(root)') {
          const parent = fmt(c.touched[0]!.slice(0, -1));
          assert.ok(
            r.problems.some((p) => parent === '(root)' || p.path === parent || p.path.startsWith(`${parent}.`) || p.path.startsWith(`${parent}[`)),
            `${what}: reported at ${r.problems.map((p) => p.path).join(', ')}, far from ${fmt(c.touched[0]!)}`,
          );
        }
        return;
      }
      // Accepted: no "__proto__" may have slipped through (it would silently drop a record entry), and the result parses again.
      assert.ok(!c.touched.some((p) => p.includes('__proto__')), `${what}: a "__proto__" key was accepted`);
      assert.ok(!hasOwnProto(r.value), `${what}: the parsed value carries a __proto__`);
      assert.ok(parse(JSON.parse(JSON.stringify(r.value))).ok, `${what}: the parsed value does not parse again`);
    },
    runs.near,
  );
}

describe('fuzz: bad input gets a clear rejection, never a crash or a hang', { timeout: 120_000 }, () => {
  it('NodeSpec parser (bosun validate / apply path)', () => {
    checkParser('NodeSpec', example('node-a.json'), parseNodeSpec, { bytes: 300, near: 200 });
  });

  it('AgentSettings parser', () => {
    checkParser('AgentSettings', example('agent.json'), parseAgentSettings, { bytes: 300, near: 200 });
  });

  it('"__proto__" is refused wherever it appears, also in records, where it would vanish silently', () => {
    const spec = example('node-a.json') as Record<string, Json>;
    const withRecord = JSON.parse(JSON.stringify(spec).replace('"settings":{', '"settings":{"__proto__":{"x":1},')) as unknown;
    const text = JSON.stringify(spec);
    assert.ok(text.includes('"settings":{'), 'the example has config settings to put the key into');
    const r = parseNodeSpec(withRecord);
    assert.equal(r.ok, false);
    assert.ok(
      !r.ok && r.problems.some((p) => /^container\.config\.files\..*\.settings\.__proto__$/.test(p.path) && /"__proto__" is not allowed/.test(p.message)),
      JSON.stringify(r),
    );
    const top = parseNodeSpec(JSON.parse('{"__proto__": {"node": "x"}, "apiVersion": "bosun/v1", "cluster": "c", "node": "n", "version": 1}'));
    assert.deepEqual(top, { ok: false, problems: [{ path: '__proto__', message: 'the field name "__proto__" is not allowed' }] });
  });

  it('nesting 200 000 deep, a 20 MB string and a 1e308 version are rejected quickly', () => {
    for (const text of [
      '['.repeat(200_000) + ']'.repeat(200_000),
      '{"a":'.repeat(200_000) + '1' + '}'.repeat(200_000),
      JSON.stringify({ apiVersion: 'bosun/v1', cluster: 'c', node: 'n', version: 1e308 }),
      JSON.stringify({ apiVersion: 'bosun/v1', cluster: 'c', node: 'x'.repeat(20_000_000), version: 1 }),
    ]) {
      const t = performance.now();
      for (const parse of [parseNodeSpec, parseAgentSettings]) {
        const r = validateBytes(Buffer.from(text), parse);
        assert.equal(r.ok, false);
        if (!r.ok) assertClearRejection(r.problems, text.slice(0, 20));
      }
      assert.ok(performance.now() - t < 2 * CASE_LIMIT_MS, `${text.slice(0, 20)}… took ${Math.round(performance.now() - t)} ms`);
    }
  });

  it('the CLI: validate exits 3 with problems, apply exits 3 and leaves the state directory empty (no partial apply)', async () => {
    const spec = example('node-a.json');
    const settings = example('agent.json') as Record<string, Json>;
    const samples = fc.sample(nearValid(spec), { seed: SEED, numRuns: 40 }).filter((c) => !validateBytes(c.bytes, parseNodeSpec).ok);
    const picked = [
      Buffer.from([0x7b, 0xff, 0xfe, 0x22, 0xc3, 0x28, 0x7d]),
      Buffer.from('['.repeat(100_000) + ']'.repeat(100_000)),
      Buffer.from(JSON.stringify(spec).replace('"settings":{', '"settings":{"__proto__":{"x":1},')),
      ...samples.slice(0, 1).map((c) => c.bytes),
    ];
    await withTempDir(async (dir) => {
      const state = join(dir, 'state');
      await mkdir(state);
      await writeFile(join(dir, 'agent.json'), JSON.stringify({ ...settings, stateDir: state }));
      for (const [i, bytes] of picked.entries()) {
        const file = join(dir, `bad-${i}.json`);
        await writeFile(file, bytes);
        const v = await runCli(['validate', file, '--json']);
        assert.equal(v.code, 3, `validate sample ${i}: ${v.stderr}`);
        const out = JSON.parse(v.stdout) as { ok: boolean; files: { problems: Problem[] }[] };
        assertClearRejection(out.files[0]!.problems, `validate sample ${i}`);
        if (i % 2 === 1) continue; // apply (a second node start-up) for half of them: the file's time budget
        const a = await runCli(['apply', file, '--settings', join(dir, 'agent.json'), '--json']);
        assert.equal(a.code, 3, `apply sample ${i}: ${a.stdout}${a.stderr}`);
        assert.ok(!/at .*\.js:\d+/.test(a.stdout + a.stderr), `apply sample ${i}: no stack trace`);
        assert.deepEqual(await readdir(state), [], `apply sample ${i}: nothing written to the state directory`);
      }
    });
  });
});

// ------------------------------------------------------------ the envelope (what the agent takes off Kafka)

const REASONS = new Set(['malformed', 'unknown-key', 'bad-signature', 'invalid-spec', 'wrong-node', 'stale-version']);
const DOMAIN = Buffer.from(`${ENVELOPE_FORMAT}\0`);

function signBytes(payload: Buffer, keyId: string, key: KeyObject): string {
  return JSON.stringify({
    format: ENVELOPE_FORMAT,
    keyId,
    payload: payload.toString('base64url'),
    signature: sign(null, Buffer.concat([DOMAIN, payload]), key).toString('base64url'),
  });
}

describe('fuzz: the signed envelope', { timeout: 120_000 }, () => {
  const cp = generateKeyPairSync('ed25519');
  const trusted = [{ id: 'cp-1', publicKey: publicKeyString('ed25519', cp.publicKey) }];
  const spec = example('node-b.json');
  const opts = { node: 'node-b', trusted, lastApplied: 0 };

  /** What the agent does with a message (src/daemon/intake.ts): verify, and on refusal report it as an event. */
  function receive(raw: Buffer | string | null): ReturnType<typeof verifyEnvelope> {
    const v = verifyEnvelope(raw, opts);
    if (v.ok) {
      assert.equal(v.spec.node, 'node-b');
      assert.equal(v.keyId, 'cp-1');
      return v;
    }
    assert.ok(REASONS.has(v.refusal.reason), v.refusal.reason);
    assert.ok(typeof v.refusal.message === 'string' && v.refusal.message.length > 0 && v.refusal.message.length < 400);
    assert.ok(
      !['\n', '\r', '\u001b'].some((c) => v.refusal.message.includes(c)),
      `a raw control character in the refusal: ${JSON.stringify(v.refusal.message)}`,
    );
    // The one value a refusal names is an unknown key id (an operator needs it): escaped and at most 64 characters.
    const message =
      v.refusal.reason === 'unknown-key'
        ? v.refusal.message.replace(/^signed with key ("(?:[^"\\]|\\.){0,400}"), which/, (_, q: string) => {
            assert.ok((JSON.parse(q) as string).length <= 64, `key id quoted at length: ${q.slice(0, 100)}`);
            return 'signed with key <id>, which';
          })
        : v.refusal.message;
    const event = JSON.stringify({ kind: 'refused', ...v.refusal, message });
    assert.ok(!event.includes(MARK), `the refusal event quotes a value: ${event.slice(0, 300)}`);
    if (v.refusal.reason === 'invalid-spec') assertClearRejection(v.refusal.problems, 'envelope');
    return v;
  }

  it('any bytes, any JSON, envelope-shaped junk: refused with a reason, never a throw', () => {
    check(
      'envelope: any bytes',
      fc.oneof(
        fc.uint8Array({ maxLength: 2048 }).map((b) => Buffer.from(b)),
        fc.string({ maxLength: 300 }),
        fc.constant(null),
      ),
      (raw) => {
        assert.equal(receive(raw).ok, false);
      },
      400,
    );
    const field = fc.oneof(fc.string({ maxLength: 80 }), fc.string({ unit: 'binary', maxLength: 80 }), fc.constant(MARK), anyJson);
    const envelopeish = fc
      .record(
        {
          format: fc.oneof(fc.constant(ENVELOPE_FORMAT), field),
          keyId: fc.oneof(fc.constant('cp-1'), field),
          payload: fc.oneof(fc.base64String({ maxLength: 200 }), field, fc.constant(Buffer.from(JSON.stringify(spec)).toString('base64url'))),
          signature: fc.oneof(fc.base64String({ maxLength: 100 }), field),
          extra: field,
        },
        { requiredKeys: [] },
      )
      .chain((o) => fc.constantFrom(...NASTY_KEYS).map((k) => ({ ...o, [k]: MARK })));
    check(
      'envelope: shaped junk',
      envelopeish,
      (o) => {
        assert.equal(receive(JSON.stringify(o)).ok, false);
      },
      400,
    );
  });

  it('properly signed near-valid specs: accepted as a whole or refused as a whole', () => {
    check(
      'envelope: signed near-valid specs',
      nearValid(spec),
      (c) => {
        const v = receive(signBytes(c.bytes, 'cp-1', cp.privateKey));
        const direct = validateBytes(c.bytes, parseNodeSpec);
        assert.equal(
          v.ok,
          direct.ok && (direct.value as { node: string }).node === 'node-b',
          'the agent accepts exactly what the parser accepts for this node',
        );
      },
      150,
    );
  });

  it('tampered envelopes never verify', () => {
    const good = signEnvelope(spec, 'cp-1', cp.privateKey);
    assert.ok(receive(JSON.stringify(good)).ok, 'the untampered envelope verifies');
    const tamper = fc.record({
      field: fc.constantFrom('payload' as const, 'signature' as const),
      at: fc.nat(),
      ch: fc.constantFrom(...'ABCDEFabcdef0123456789-_'),
      cut: fc.boolean(),
    });
    check(
      'envelope: tampered',
      tamper,
      (t) => {
        const s = good[t.field];
        const at = t.at % s.length;
        const changed = t.cut ? s.slice(0, at) : s.slice(0, at) + t.ch + s.slice(at + 1);
        const env = { ...good, [t.field]: changed };
        if (Buffer.from(changed, 'base64url').equals(Buffer.from(s, 'base64url'))) return; // only padding bits changed: the same bytes
        const v = receive(JSON.stringify(env));
        assert.equal(v.ok, false);
        assert.equal(!v.ok && v.refusal.reason, 'bad-signature');
      },
      400,
    );
  });
});

// ------------------------------------------------------------ the backup manifest

const ID = '20250102T030405Z-1a2b3c4d';

function header(over: Partial<ManifestHeaderV1> = {}): ManifestHeaderV1 {
  return {
    format: FORMAT_V1,
    backupId: ID,
    createdAt: '2025-01-02T03:04:05.000Z',
    recipient: 'x25519:' + 'A'.repeat(43),
    sealedDataKey: 'bosun-sealed-v1.xyz',
    chunkSize: 4096,
    cipher: 'aes-256-gcm',
    compression: 'zstd',
    hash: 'sha256',
    stats: { files: 1, dirs: 2, symlinks: 1, hardlinks: 1, bytes: 5000, storedBytes: 200, chunks: 2, packs: 1, skipped: 0 },
    ...over,
  };
}

const validBody = (): Json => ({
  entries: [
    { type: 'dir', path: '.', mode: 0o755, uid: 0, gid: 0, mtimeNs: '1700000000000000000' },
    { type: 'dir', path: 'd', mode: 0o755, uid: 0, gid: 0, mtimeNs: '1700000000000000000' },
    {
      type: 'file',
      path: 'd/f',
      mode: 0o644,
      uid: 0,
      gid: 0,
      mtimeNs: '1700000000000000000',
      size: 5000,
      sha256: 'a'.repeat(64),
      sparse: false,
      chunks: [0, 1],
    },
    { type: 'symlink', path: 'l', target: '/nowhere', uid: 0, gid: 0, mtimeNs: '1' },
    { type: 'hardlink', path: 'h', target: 'd/f' },
  ],
  chunks: [
    [0, 0, 100, 4096, 1, 'b'.repeat(64)],
    [0, 100, 100, 904, 1, 'c'.repeat(64)],
  ],
  packs: [{ key: `backups/${ID}/packs/000000.pack`, size: 200 }],
});

/** Everything a restorer does with manifest bytes before it touches a disk. */
function readManifest(bytes: Buffer, manifestKey: Buffer): void {
  const sealed = parseManifest(bytes);
  checkManifestSignature(sealed);
  openManifestBody(sealed, manifestKey);
}

function expectBackupError(fn: () => void, what: string): BackupError | undefined {
  try {
    fn();
    return undefined;
  } catch (e) {
    assert.ok(e instanceof BackupError, `${what}: threw ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}, not a BackupError`);
    assert.ok(e.message.length > 0 && e.message.length < 600 && !e.message.includes(MARK), `${what}: ${e.message.slice(0, 200)}`);
    return e;
  }
}

/** Damage to bytes: flip, overwrite, cut, insert or delete, at several places. */
type ByteOp =
  | { kind: 'flip'; at: number; bit: number }
  | { kind: 'set'; at: number; byte: number }
  | { kind: 'cut'; at: number }
  | { kind: 'insert'; at: number; bytes: Uint8Array }
  | { kind: 'delete'; at: number; n: number };
const byteDamage: fc.Arbitrary<ByteOp[]> = fc.array(
  fc.oneof(
    fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
    fc.record({ kind: fc.constant('set' as const), at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }),
    fc.record({ kind: fc.constant('cut' as const), at: fc.nat() }),
    fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
    fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 16 }) }),
  ),
  { minLength: 1, maxLength: 4 },
);

function damage(src: Buffer, ops: ByteOp[]): Buffer {
  let b = Buffer.from(src);
  for (const op of ops) {
    const at = op.at % Math.max(1, b.length);
    if (op.kind === 'flip' && b.length > 0) b[at] = b[at]! ^ (1 << op.bit);
    else if (op.kind === 'set' && b.length > 0) b[at] = op.byte;
    else if (op.kind === 'cut') b = b.subarray(0, at);
    else if (op.kind === 'insert') b = Buffer.concat([b.subarray(0, at), op.bytes, b.subarray(at)]);
    else if (op.kind === 'delete') b = Buffer.concat([b.subarray(0, at), b.subarray(at + op.n)]);
  }
  return b;
}

describe('fuzz: the backup manifest reader', { timeout: 120_000 }, () => {
  const dataKey = Buffer.alloc(32, 7);
  const keys = deriveKeys(dataKey, ID);
  const signer = generateKeyPairSync('ed25519');
  const signerKey = publicKeyString('ed25519', signer.publicKey);
  const encode = (body: Json, h: ManifestHeaderV1 = header(), signed = false): Buffer =>
    encodeManifest({ header: h, body } as unknown as Manifest, keys.manifest, signed ? (d) => sign(null, d, signer.privateKey) : undefined);
  const unsigned = encode(validBody());
  const signedBytes = encode(validBody(), header({ signer: signerKey }), true);

  it('the untampered manifests open', () => {
    readManifest(unsigned, keys.manifest);
    readManifest(signedBytes, keys.manifest);
  });

  it('any bytes, and bytes behind the right magic: a format error, never a throw of another kind', () => {
    const magicThen = fc.tuple(fc.uint8Array({ maxLength: 600 }), fc.nat({ max: 700 })).map(([tail, hlen]) => {
      const h = Buffer.alloc(4);
      h.writeUInt32BE(hlen);
      return Buffer.concat([Buffer.from('BSNMANI1', 'latin1'), h, tail]);
    });
    check(
      'manifest: any bytes',
      fc.oneof(
        fc.uint8Array({ maxLength: 2048 }).map((b) => Buffer.from(b)),
        magicThen,
      ),
      (b) => {
        assert.ok(
          expectBackupError(() => readManifest(b, keys.manifest), 'random bytes'),
          'random bytes never open',
        );
      },
      500,
    );
  });

  it('any damage to a real manifest, signed or not, is detected: never opened, never another kind of error', () => {
    check(
      'manifest: damaged',
      fc.tuple(fc.boolean(), byteDamage),
      ([isSigned, ops]) => {
        const src = isSigned ? signedBytes : unsigned;
        const b = damage(src, ops);
        if (b.equals(src)) return;
        assert.ok(
          expectBackupError(() => readManifest(b, keys.manifest), `damage ${JSON.stringify(ops)}`),
          `damage ${JSON.stringify(ops)} went unnoticed`,
        );
      },
      800,
    );
  });

  it('authentic manifests with near-valid headers and bodies (a writer bug, or a key holder gone bad): a format error, or a manifest that passes every structural rule', () => {
    check(
      'manifest: authentic near-valid body',
      nearValid(validBody()),
      (c) => {
        let body: unknown;
        try {
          body = JSON.parse(c.bytes.toString('utf8'));
        } catch {
          return; // text damage: covered by the damaged-bytes property
        }
        expectBackupError(() => readManifest(encode(body as Json), keys.manifest), 'body');
      },
      200,
    );
    check(
      'manifest: authentic near-valid header',
      nearValid(header() as unknown as Json),
      (c) => {
        let h: unknown;
        try {
          h = JSON.parse(c.bytes.toString('utf8'));
        } catch {
          return;
        }
        if (h === null || typeof h !== 'object') return;
        let bytes: Buffer;
        try {
          bytes = encode(validBody(), h as ManifestHeaderV1);
        } catch {
          return; // the writer itself refuses (e.g. a header JSON.stringify cannot write)
        }
        expectBackupError(() => readManifest(bytes, keys.manifest), 'header');
      },
      200,
    );
  });
});

// ------------------------------------------------------------ restore from a damaged store: nothing written

class MemoryTransport implements Transport {
  readonly objects = new Map<string, Buffer>();
  describe(key: string): string {
    return `mem://${key}`;
  }
  // eslint-disable-next-line @typescript-eslint/require-await
  async get(key: string, range?: ByteRange): Promise<GetResult> {
    const o = this.objects.get(key);
    if (!o) throw new TransportError('not-found', `${key}: no such object`, 404);
    if (range && range.start >= o.length) throw new TransportError('range', `${key}: range past the end`, 416);
    const part = range ? o.subarray(range.start, Math.min(o.length, range.end + 1)) : o;
    return {
      objectSize: o.length,
      body: (async function* () {
        await Promise.resolve();
        yield part;
      })(),
    };
  }
  // eslint-disable-next-line @typescript-eslint/require-await
  async put(key: string, body: Buffer): Promise<void> {
    this.objects.set(key, Buffer.from(body));
  }
}

describe('fuzz: restore from a store holding a damaged manifest or pointer', { timeout: 120_000 }, () => {
  it('fails with a BackupError and writes nothing to the target', async () => {
    await withTempDir(async (dir) => {
      const src = join(dir, 'src');
      await mkdir(join(src, 'd'), { recursive: true });
      await writeFile(join(src, 'd', 'f'), Buffer.alloc(20_000, 3));
      await writeFile(join(src, 'g'), 'hello');
      const recipient = generateKeyPairSync('x25519');
      const store = new MemoryTransport();
      const made = await createBackup({ source: src, transport: store, recipient: recipient.publicKey, chunkSize: 4096, workers: 1 });
      const manifestKey = [...store.objects.keys()].find((k) => k.endsWith('manifest'))!;
      const pristine = new Map(store.objects);
      const openDataKey = (sealed: string) => openSealed(recipient.privateKey, recipient.publicKey, sealed);
      const fast = { attempts: 2, baseDelayMs: 1, maxDelayMs: 2 };

      // The pristine store restores: the harness is sound.
      const ok = await restoreFromObjectStorage({ transport: store, backupId: 'latest', target: join(dir, 'ok'), openDataKey, workers: 1, retry: fast });
      assert.equal(ok.backupId, made.backupId);

      let n = 0;
      const outcomes: Record<string, number> = {};
      await checkAsync(
        'restore: damaged manifest or latest pointer',
        fc.tuple(fc.constantFrom('manifest' as const, 'latest' as const), byteDamage),
        async ([which, ops]) => {
          const key = which === 'manifest' ? manifestKey : 'latest.json';
          const damaged = damage(pristine.get(key)!, ops);
          if (damaged.equals(pristine.get(key)!)) return;
          store.objects.clear();
          for (const [k, v] of pristine) store.objects.set(k, v);
          store.objects.set(key, damaged);
          const target = join(dir, `t${n++}`);
          let err: unknown;
          try {
            await restoreFromObjectStorage({ transport: store, backupId: 'latest', target, openDataKey, workers: 1, retry: fast });
          } catch (e) {
            err = e;
          }
          const outcome = err instanceof BackupError ? `${which}: ${err.reason}` : err === undefined ? `${which}: restored whole` : `${which}: other`;
          outcomes[outcome] = (outcomes[outcome] ?? 0) + 1;
          // A damaged pointer may still name the right backup (JSON allows some edits); then the restore is whole.
          if (err === undefined && which === 'latest') {
            assert.equal(readFileSync(join(target, 'g'), 'utf8'), 'hello');
            return;
          }
          assert.ok(
            err instanceof BackupError,
            `damaged ${which} (${JSON.stringify(ops)}): ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`,
          );
          assert.ok(!existsSync(target), `damaged ${which}: the target was created`);
        },
        150,
      );
      process.stderr.write(`[fuzz] restore outcomes: ${JSON.stringify(outcomes)}\n`);
      assert.ok((outcomes['manifest: format'] ?? 0) + (outcomes['manifest: integrity'] ?? 0) > 0, 'damaged manifests were read and refused');
    });
  });
});

describe('fuzz figures', () => {
  it('prints runs and times per property', () => {
    const total = Object.values(stats).reduce((a, s) => a + s.runs, 0);
    process.stderr.write(
      `[fuzz] seed ${SEED}, scale ${SCALE}: ${total} cases\n${Object.entries(stats)
        .map(([k, s]) => `  ${k}: ${s.runs} runs, ${s.ms} ms, slowest case ${Math.round(s.slowestMs)} ms`)
        .join('\n')}\n`,
    );
    assert.ok(total > 0);
  });
});
