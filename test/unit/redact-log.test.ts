import assert from 'node:assert/strict';
import { inspect } from 'node:util';
import { describe, it } from 'node:test';
import { OpenedSecret, Redactor } from '../../src/secrets/redact.js';
import { createLogger, toJournalFields } from '../../src/log.js';

describe('redaction', () => {
  it('removes every registered secret, in its plain, base64, hex and JSON-escaped forms', () => {
    const r = new Redactor();
    const key = Buffer.from('s3cr3t"key\n');
    r.add(key);
    const line = `a ${key.toString()} b ${key.toString('base64')} c ${key.toString('hex')} d ${JSON.stringify(key.toString())}`;
    const out = r.redact(line);
    assert.ok(!out.includes('s3cr3t'), out);
    assert.ok(!out.includes(key.toString('base64')) && !out.includes(key.toString('hex')), out);
  });

  it('an opened secret prints as <redacted> however it is turned into text', () => {
    const s = new OpenedSecret('disks.luks.key', Buffer.from('topsecret'));
    assert.equal(`${String(s)}`, '<redacted>');
    assert.equal(JSON.stringify({ s }), '{"s":"<redacted>"}');
    assert.ok(!inspect(s).includes('topsecret'));
    assert.equal(s.reveal().toString(), 'topsecret');
  });
});

describe('logging', () => {
  it('maps pino records to journal fields and priorities', () => {
    const f = toJournalFields({
      level: 50,
      time: 1,
      pid: 2,
      hostname: 'h',
      msg: 'step failed',
      phase: 'disks',
      specVersion: 7,
      step: 3,
      errorCode: 'E_EXEC',
      detail: { a: 1 },
    });
    assert.equal(f.priority, 3);
    assert.equal(f.method, 'err');
    assert.equal(f.message, 'step failed');
    assert.deepEqual(f.fields, { PHASE: 'disks', SPEC_VERSION: '7', STEP: '3', ERROR_CODE: 'E_EXEC', DETAIL: '{"a":1}' });
    assert.equal(toJournalFields({ level: 30, msg: 'x' }).priority, 6);
    assert.equal(toJournalFields({ level: 40, msg: 'x' }).priority, 4);
    assert.equal(toJournalFields({ level: 20, msg: 'x' }).priority, 7);
  });

  it('sends structured, redacted entries to journald', () => {
    const sent: { method: string; msg: string; fields?: Record<string, string> }[] = [];
    const fake = new Proxy({}, { get: (_t, method: string) => (msg: string, fields?: Record<string, string>) => sent.push({ method, msg, fields }) });
    const redactor = new Redactor();
    redactor.add('hunter2hunter2');
    const { logger, sink } = createLogger({ redactor, target: 'journald', loadJournald: () => fake as never });
    assert.equal(sink, 'journald');
    logger.child({ phase: 'network', specVersion: 4 }).warn('psk hunter2hunter2 rejected');
    assert.equal(sent.length, 1);
    assert.equal(sent[0]!.method, 'warning');
    assert.equal(sent[0]!.msg, 'psk <redacted> rejected');
    assert.equal(sent[0]!.fields!.PHASE, 'network');
    assert.equal(sent[0]!.fields!.SPEC_VERSION, '4');
  });

  it('falls back to stdout, saying so once, when the binding cannot load', () => {
    const warnings: string[] = [];
    const { sink } = createLogger({
      redactor: new Redactor(),
      target: 'journald',
      warn: (l) => warnings.push(l),
      loadJournald: () => {
        throw new Error('libsystemd.so.0: cannot open shared object file');
      },
    });
    assert.equal(sink, 'stdout');
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]!, /journald logging unavailable.*libsystemd/);
  });

  it('loads the native systemd-journald binding on this machine', () => {
    // The project installs libsystemd-dev before npm ci; if the addon did not build, this must fail, not skip.
    const warnings: string[] = [];
    const { sink } = createLogger({ redactor: new Redactor(), target: 'journald', warn: (l) => warnings.push(l) });
    assert.deepEqual(warnings, []);
    assert.equal(sink, 'journald');
  });
});
