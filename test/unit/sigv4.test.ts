// The SigV4 signer of bosun's direct ranged GETs (src/backup/sigv4.ts).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { SigV4Signer, amzDate, encodeSegment, objectPath } from '../../src/backup/sigv4.js';

// The example in Amazon's S3 documentation ("Signature Calculations for the
// Authorization Header", GET Object with a Range header).
const EXAMPLE = { accessKeyId: 'AKIAIOSFODNN7EXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY' };

describe('SigV4 signer', () => {
  it('signs the S3 documentation example (GET with a Range) as Amazon does', () => {
    const h = new SigV4Signer('us-east-1').signGet(
      'examplebucket.s3.amazonaws.com',
      '/test.txt',
      { Range: 'bytes=0-9' },
      EXAMPLE,
      new Date('2013-05-24T00:00:00Z'),
    );
    assert.equal(
      h.authorization,
      'AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41',
    );
    assert.equal(h['x-amz-date'], '20130524T000000Z');
    assert.equal(h.range, 'bytes=0-9');
    assert.equal(h.host, undefined, 'the caller writes the Host header itself');
  });

  it('signs a session token, and a new day or secret gives a new signature', () => {
    const s = new SigV4Signer('eu-west-1');
    const day1 = new Date('2026-12-04T10:00:00Z');
    const a = s.signGet('s3.example:9000', '/b/k', {}, { ...EXAMPLE, sessionToken: 'tok' }, day1);
    assert.equal(a['x-amz-security-token'], 'tok');
    assert.match(a.authorization!, /SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token,/);
    assert.match(a.authorization!, /\/20261204\/eu-west-1\/s3\/aws4_request/);
    const b = s.signGet('s3.example:9000', '/b/k', {}, EXAMPLE, new Date('2026-12-05T10:00:00Z'));
    const c = s.signGet('s3.example:9000', '/b/k', {}, { ...EXAMPLE, secretAccessKey: 'other' }, new Date('2026-12-05T10:00:00Z'));
    assert.notEqual(b.authorization, c.authorization);
    const again = s.signGet('s3.example:9000', '/b/k', {}, EXAMPLE, new Date('2026-12-05T10:00:00Z'));
    assert.equal(again.authorization, b.authorization, 'same inputs, same signature (the cached key is the right one)');
    assert.ok(!JSON.stringify([a, b, c]).includes(EXAMPLE.secretAccessKey), 'the secret is in no header');
  });

  it('encodes each key segment once, RFC 3986 style', () => {
    assert.equal(encodeSegment("a b+c=d!e'(f)*~_.-"), 'a%20b%2Bc%3Dd%21e%27%28f%29%2A~_.-');
    assert.equal(encodeSegment('zürich'), 'z%C3%BCrich');
    assert.equal(objectPath('', 'bkt', 'pg/node a/packs/0001'), '/bkt/pg/node%20a/packs/0001');
    assert.equal(objectPath('/base/', 'bkt', 'k'), '/base/bkt/k');
    assert.equal(amzDate(new Date('2026-01-02T03:04:05.678Z')), '20260102T030405Z');
  });
});
