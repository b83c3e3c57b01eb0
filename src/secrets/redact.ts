import { inspect } from 'node:util';

export const REDACTED = '<redacted>';

/**
 * Every secret opened during this process is registered here, and every log
 * line, error message and captured command output passes through `redact`
 * before it leaves the process. One place, so no code path can forget.
 */
export class Redactor {
  readonly #needles = new Set<string>();

  add(secret: string | Uint8Array): void {
    const text = typeof secret === 'string' ? secret : Buffer.from(secret).toString('utf8');
    // Short values would redact half the log and are not secrets anyone should use.
    for (const form of [text, text.trim()]) if (form.length >= 4) this.#needles.add(form);
    if (typeof secret !== 'string') {
      const buf = Buffer.from(secret);
      this.#needles.add(buf.toString('base64'));
      this.#needles.add(buf.toString('hex'));
    }
  }

  get size(): number {
    return this.#needles.size;
  }

  redact(text: string): string {
    let out = text;
    // Longest first, so a secret that contains another is removed whole.
    for (const n of [...this.#needles].sort((a, b) => b.length - a.length)) {
      if (out.includes(n)) out = out.split(n).join(REDACTED);
      const json = JSON.stringify(n).slice(1, -1);
      if (json !== n && out.includes(json)) out = out.split(json).join(REDACTED);
    }
    return out;
  }
}

/**
 * An opened secret held in memory. It prints as <redacted> however it is
 * stringified, inspected or serialised, so passing one to a logger or into an
 * error by mistake leaks nothing; only `reveal()` gives the bytes.
 */
export class OpenedSecret {
  readonly #value: Buffer;
  readonly label: string;

  constructor(label: string, value: Buffer) {
    this.label = label;
    this.#value = value;
  }

  reveal(): Buffer {
    return this.#value;
  }

  toString(): string {
    return REDACTED;
  }

  toJSON(): string {
    return REDACTED;
  }

  [inspect.custom](): string {
    return `OpenedSecret(${this.label}: ${REDACTED})`;
  }
}
