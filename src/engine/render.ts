import { createHash } from 'node:crypto';
import { systemctlArgv } from '../host/systemd.js';
import { isSecretRef, type Content } from '../secrets/ref.js';
import type { RestoreStep, Step } from './step.js';

/** Content as it may be shown: every secret replaced by a marker naming it. */
export function showContent(content: Content): string {
  if (typeof content === 'string') return content;
  return content.map((part) => (isSecretRef(part) ? `<redacted:${part.label}>` : part)).join('');
}

export function showMode(mode: number): string {
  return `0${mode.toString(8).padStart(3, '0')}`;
}

/** A shell-like rendering of argv that a person can read and paste. */
export function showArgv(argv: readonly string[]): string {
  return argv.map((a) => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
}

export function stepArgv(step: Step): readonly string[] | undefined {
  if (step.kind === 'exec') return step.argv;
  if (step.kind === 'unit') return systemctlArgv(step.action, step.unit);
  return undefined;
}

/** One line saying exactly what the step does. */
export function describeStep(step: Step): string {
  switch (step.kind) {
    case 'exec':
    case 'unit':
      return `run    ${showArgv(stepArgv(step)!)}${step.kind === 'exec' && step.stdin !== undefined ? `  < ${stdinNote(step.stdin)}` : ''}${step.kind === 'exec' && step.destructive ? '  [DESTRUCTIVE: erases what is on the device]' : ''}${step.kind === 'exec' && step.retryForSeconds !== undefined ? `  (until it succeeds, up to ${step.retryForSeconds}s)` : ''}`;
    case 'write': {
      const shown = showContent(step.content);
      const lines = shown === '' ? 0 : shown.split('\n').length - (shown.endsWith('\n') ? 1 : 0);
      return `write  ${step.path}  mode ${showMode(step.mode)}${owner(step)}  ${lines} line${lines === 1 ? '' : 's'}, sha256:${sha(shown)}${hasSecret(step.content) ? ', holds secrets' : ''}`;
    }
    case 'mkdir':
      return `mkdir  ${step.path}  mode ${showMode(step.mode)}${owner(step)}`;
    case 'remove':
      return `remove ${step.path}`;
    case 'wait':
      return `wait   for ${step.path} (up to ${step.timeoutSeconds}s)`;
    case 'refresh':
      return `run    dnf -y --refresh upgrade ${step.packages.join(' ')}  (transient failures retried for up to ${step.deadlineSeconds}s)`;
    case 'pending':
      return `todo   ${step.why}`;
    case 'restore':
      if (step.from === 'peer') {
        return `restore ${restoreSource(step)} into ${step.target}, then write ${step.marker}${step.bandwidthLimitMiBps ? `  at most ${step.bandwidthLimitMiBps} MiB/s` : ''}${step.fallback ? `; if the peer cannot serve: backup ${step.fallback.backup} of s3://${step.fallback.bucket}/${step.fallback.prefix}` : ''}`;
      }
      return `restore ${restoreSource(step)} into ${step.target}, then write ${step.marker}${step.bandwidthLimitMiBps ? `  at most ${step.bandwidthLimitMiBps} MiB/s` : ''}  (key <redacted:${step.backupKey?.label ?? 'host identity'}>${step.credentials ? `, credentials <redacted:${step.credentials.secretAccessKey.label}>` : ''})`;
  }
}

/** "backup latest of s3://bucket/prefix", "a snapshot of peer node-a ([fd00::a]:7433)" */
export function restoreSource(step: RestoreStep): string {
  if (step.from === 'peer') {
    return step.method === 'command' ? `peer ${step.peer} (${step.peerAddress}) with the command ${JSON.stringify(step.argv ?? [])}` : `a snapshot of peer ${step.peer} ([${step.peerAddress}]:${step.port})`;
  }
  return `backup ${step.backup} of s3://${step.bucket}/${step.prefix}`;
}

function stdinNote(c: Content): string {
  return hasSecret(c) ? showContent(c) : 'input';
}

function hasSecret(c: Content): boolean {
  return typeof c !== 'string' && c.some(isSecretRef);
}

function owner(s: { owner?: number; group?: number }): string {
  return s.owner !== undefined || s.group !== undefined ? `  owner ${s.owner ?? '-'}:${s.group ?? '-'}` : '';
}

function sha(s: string): string {
  return createHash('sha256').update(s).digest('hex').slice(0, 12);
}


export interface PlanHeader {
  node: string;
  cluster: string;
  version: number;
  distro: string;
  observed: 'host' | 'blank';
}

/** The plan for people: phases in order, numbered steps, why each is needed; pending phases marked. */
export function renderPlanText(h: PlanHeader, steps: readonly Step[], showContents = false): string {
  const out: string[] = [];
  // Planners return steps in boot order, so a phase's first step says where it stands.
  const phases = [...new Set(steps.map((step) => step.phase))];
  out.push(`bosun plan for node ${h.node} of cluster ${h.cluster}, spec version ${h.version} (${h.distro}, ${h.observed === 'blank' ? 'as for a blank host' : 'from what this host has now'})`);
  out.push(`${steps.length} step${steps.length === 1 ? '' : 's'} in ${phases.length} phase${phases.length === 1 ? '' : 's'}; secrets are shown as <redacted:...>`);
  let n = 0;
  for (const phase of phases) {
    const ps = steps.filter((s) => s.phase === phase);
    const pending = ps.find((s) => s.kind === 'pending');
    out.push('');
    out.push(pending && pending.kind === 'pending' ? `${phase}  [NOT IMPLEMENTED YET (issue #${pending.issue}): shows what it will do; apply refuses it]` : phase);
    for (const s of ps) {
      n += 1;
      out.push(`  ${String(n).padStart(3)}. ${describeStep(s)}`);
      if (s.kind !== 'pending') out.push(`       why: ${s.why}`);
      if (showContents && s.kind === 'write') out.push(...showContent(s.content).replace(/\n$/, '').split('\n').map((l) => `       | ${l}`));
    }
  }
  if (steps.length === 0) out.push('', 'nothing to do: the host matches the spec');
  return out.join('\n') + '\n';
}

/** The plan for machines: every field of every step, secrets as markers. */
export function planToJson(h: PlanHeader, steps: readonly Step[]): unknown {
  return {
    ...h,
    steps: steps.map((s, i) => {
      const base = { n: i + 1, phase: s.phase, kind: s.kind, why: s.why };
      switch (s.kind) {
        case 'exec':
          return { ...base, argv: s.argv, ...(s.stdin !== undefined ? { stdin: showContent(s.stdin) } : {}), ...(s.timeoutSeconds ? { timeoutSeconds: s.timeoutSeconds } : {}), ...(s.destructive ? { destructive: true } : {}), ...(s.retryForSeconds !== undefined ? { retryForSeconds: s.retryForSeconds } : {}) };
        case 'unit':
          return { ...base, argv: stepArgv(s) };
        case 'write':
          return { ...base, path: s.path, mode: showMode(s.mode), owner: s.owner, group: s.group, content: showContent(s.content) };
        case 'mkdir':
          return { ...base, path: s.path, mode: showMode(s.mode), owner: s.owner, group: s.group };
        case 'remove':
          return { ...base, path: s.path };
        case 'wait':
          return { ...base, path: s.path, timeoutSeconds: s.timeoutSeconds };
        case 'refresh':
          return { ...base, argv: ['dnf', '-y', '--refresh', 'upgrade', ...s.packages], packages: s.packages, deadlineSeconds: s.deadlineSeconds };
        case 'pending':
          return { ...base, issue: s.issue };
        case 'restore':
          if (s.from === 'peer') {
            return {
              ...base,
              from: s.from,
              method: s.method,
              peer: s.peer,
              peerAddress: s.peerAddress,
              ...(s.port !== undefined ? { port: s.port } : {}),
              ...(s.argv ? { argv: s.argv } : {}),
              target: s.target,
              marker: s.marker,
              ...(s.fallback ? { fallback: `backup ${s.fallback.backup} of s3://${s.fallback.bucket}/${s.fallback.prefix}` } : {}),
            };
          }
          return {
            ...base,
            from: s.from,
            source: `s3://${s.bucket}/${s.prefix}`,
            backup: s.backup,
            target: s.target,
            marker: s.marker,
            ...(s.bandwidthLimitMiBps ? { bandwidthLimitMiBps: s.bandwidthLimitMiBps } : {}),
            backupKey: s.backupKey ? `<redacted:${s.backupKey.label}>` : 'host identity',
            ...(s.credentials ? { credentials: `<redacted:${s.credentials.accessKeyId.label}>, <redacted:${s.credentials.secretAccessKey.label}>` } : {}),
          };
      }
    }),
  };
}
