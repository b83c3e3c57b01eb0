import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { signEnvelope, verifyEnvelope } from '../../src/bus/envelope.js';
import { murmur2, partitionFor } from '../../src/bus/murmur2.js';
import { publicKeyString } from '../../src/identity/seal.js';
import { examplesDir } from '../helpers.js';

describe('Kafka default partitioner', () => {
  it('matches the Java client murmur2 on known vectors', () => {
    // Vectors from Kafka's own UtilsTest (org.apache.kafka.common.utils).
    const cases: [string, number][] = [
      ['21', -973932308],
      ['foobar', -790332482],
      ['a-little-bit-long-string', -985981536],
      ['a-little-bit-longer-string', -1486304829],
      ['lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8', -58897971],
      ['abc', 479470107],
    ];
    for (const [k, v] of cases) assert.equal(murmur2(Buffer.from(k)), v, k);
  });

  it('spreads node ids over partitions and is stable', () => {
    assert.equal(partitionFor('node-a', 12), partitionFor('node-a', 12));
    const seen = new Set(Array.from({ length: 1000 }, (_, i) => partitionFor(`node-${i}`, 12)));
    assert.equal(seen.size, 12);
  });
});

describe('signed envelopes', () => {
  const cp = generateKeyPairSync('ed25519');
  const other = generateKeyPairSync('ed25519');
  const trusted = [{ id: 'cp-2026', publicKey: publicKeyString('ed25519', cp.publicKey) }];
  const spec = async () => JSON.parse(await readFile(join(examplesDir, 'node-a.json'), 'utf8')) as Record<string, unknown>;

  it('a spec signed by a trusted key verifies', async () => {
    const r = verifyEnvelope(JSON.stringify(signEnvelope(await spec(), 'cp-2026', cp.privateKey)), { node: 'node-a', trusted });
    assert.ok(r.ok);
    assert.equal(r.spec.version, 1);
  });

  it('several trusted keys at once allow rotation', async () => {
    const both = [...trusted, { id: 'cp-2027', publicKey: publicKeyString('ed25519', other.publicKey) }];
    assert.ok(verifyEnvelope(JSON.stringify(signEnvelope(await spec(), 'cp-2027', other.privateKey)), { node: 'node-a', trusted: both }).ok);
  });

  it('refuses, with a reason, everything that is not a fresh, signed spec for this node', async () => {
    const s = await spec();
    const good = signEnvelope(s, 'cp-2026', cp.privateKey);
    const reason = (raw: string | null, lastApplied?: number) => {
      const r = verifyEnvelope(raw, { node: 'node-a', trusted, lastApplied });
      assert.equal(r.ok, false);
      return r.ok ? '' : r.refusal.reason;
    };
    assert.equal(reason('{not json'), 'malformed');
    assert.equal(reason(null), 'malformed');
    assert.equal(reason(JSON.stringify({ ...good, format: 'v0' })), 'malformed');
    assert.equal(reason(JSON.stringify(signEnvelope(s, 'stranger', other.privateKey))), 'unknown-key');
    assert.equal(reason(JSON.stringify({ ...good, keyId: 'cp-2026', signature: signEnvelope(s, 'cp-2026', other.privateKey).signature })), 'bad-signature');
    const tampered = Buffer.from(good.payload, 'base64url').toString().replace('"version":1', '"version":9');
    assert.equal(reason(JSON.stringify({ ...good, payload: Buffer.from(tampered).toString('base64url') })), 'bad-signature');
    assert.equal(reason(JSON.stringify(signEnvelope({ ...s, version: 0 }, 'cp-2026', cp.privateKey))), 'invalid-spec');
    assert.equal(reason(JSON.stringify(signEnvelope({ ...s, node: 'node-z' }, 'cp-2026', cp.privateKey))), 'wrong-node');
    assert.equal(reason(JSON.stringify(good), 1), 'stale-version');
  });
});
