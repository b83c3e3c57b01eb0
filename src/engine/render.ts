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
    return step.method === 'command'
      ? `peer ${step.peer} (${step.peerAddress}) with the command ${JSON.stringify(step.argv ?? [])}`
      : `a snapshot of peer ${step.peer} ([${step.peerAddress}]:${step.port})`;
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
export function renderPlanText(header: PlanHeader, steps: readonly Step[], showContents = false): string {
  const out: string[] = [];
  // Planners return steps in boot order, so a phase's first step says where it stands.
  const phases = [...new Set(steps.map((step) => step.phase))];
  out.push(
    `bosun plan for node ${header.node} of cluster ${header.cluster}, spec version ${header.version} (${header.distro}, ${header.observed === 'blank' ? 'as for a blank host' : 'from what this host has now'})`,
  );
  out.push(
    `${steps.length} step${steps.length === 1 ? '' : 's'} in ${phases.length} phase${phases.length === 1 ? '' : 's'}; secrets are shown as <redacted:...>`,
  );
  let n = 0;
  for (const phase of phases) {
    const ps = steps.filter((s) => s.phase === phase);
    const pending = ps.find((s) => s.kind === 'pending');
    out.push('');
    out.push(
      pending && pending.kind === 'pending' ? `${phase}  [NOT IMPLEMENTED YET (issue #${pending.issue}): shows what it will do; apply refuses it]` : phase,
    );
    for (const s of ps) {
      n += 1;
      out.push(`  ${String(n).padStart(3)}. ${describeStep(s)}`);
      if (s.kind !== 'pending') out.push(`       why: ${s.why}`);
      if (showContents && s.kind === 'write')
        out.push(
          ...showContent(s.content)
            .replace(/\n$/, '')
            .split('\n')
            .map((l) => `       | ${l}`),
        );
    }
  }
  if (steps.length === 0) out.push('', 'nothing to do: the host matches the spec');
  return out.join('\n') + '\n';
}

/** The plan for machines: every field of every step, secrets as markers. */
export function planToJson(header: PlanHeader, steps: readonly Step[]): unknown {
  return {
    ...header,
    steps: steps.map((step, i) => {
      const base = { n: i + 1, phase: step.phase, kind: step.kind, why: step.why };
      switch (step.kind) {
        case 'exec':
          return {
            ...base,
            argv: step.argv,
            ...(step.stdin !== undefined ? { stdin: showContent(step.stdin) } : {}),
            ...(step.timeoutSeconds ? { timeoutSeconds: step.timeoutSeconds } : {}),
            ...(step.destructive ? { destructive: true } : {}),
            ...(step.retryForSeconds !== undefined ? { retryForSeconds: step.retryForSeconds } : {}),
          };
        case 'unit':
          return { ...base, argv: stepArgv(step) };
        case 'write':
          return { ...base, path: step.path, mode: showMode(step.mode), owner: step.owner, group: step.group, content: showContent(step.content) };
        case 'mkdir':
          return { ...base, path: step.path, mode: showMode(step.mode), owner: step.owner, group: step.group };
        case 'remove':
          return { ...base, path: step.path };
        case 'wait':
          return { ...base, path: step.path, timeoutSeconds: step.timeoutSeconds };
        case 'refresh':
          return { ...base, argv: ['dnf', '-y', '--refresh', 'upgrade', ...step.packages], packages: step.packages, deadlineSeconds: step.deadlineSeconds };
        case 'pending':
          return { ...base, issue: step.issue };
        case 'restore':
          if (step.from === 'peer') {
            return {
              ...base,
              from: step.from,
              method: step.method,
              peer: step.peer,
              peerAddress: step.peerAddress,
              ...(step.port !== undefined ? { port: step.port } : {}),
              ...(step.argv ? { argv: step.argv } : {}),
              target: step.target,
              marker: step.marker,
              ...(step.fallback ? { fallback: `backup ${step.fallback.backup} of s3://${step.fallback.bucket}/${step.fallback.prefix}` } : {}),
            };
          }
          return {
            ...base,
            from: step.from,
            source: `s3://${step.bucket}/${step.prefix}`,
            backup: step.backup,
            target: step.target,
            marker: step.marker,
            ...(step.bandwidthLimitMiBps ? { bandwidthLimitMiBps: step.bandwidthLimitMiBps } : {}),
            backupKey: step.backupKey ? `<redacted:${step.backupKey.label}>` : 'host identity',
            ...(step.credentials
              ? { credentials: `<redacted:${step.credentials.accessKeyId.label}>, <redacted:${step.credentials.secretAccessKey.label}>` }
              : {}),
          };
      }
    }),
  };
}
