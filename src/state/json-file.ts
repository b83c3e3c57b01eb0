import { BosunError } from '../errors.js';
import { readFileIfExists } from '../host/files.js';

/**
 * A JSON file of the state dir, or undefined when it is not there. Every such
 * file is written atomically, so one that does not parse is disk corruption or
 * a hand edit: say so with what to do (`advice`) rather than guess.
 */
export async function readJsonFile<T>(path: string, advice: string): Promise<T | undefined> {
  const buf = await readFileIfExists(path);
  if (!buf) return undefined;
  try {
    return JSON.parse(buf.toString('utf8')) as T;
  } catch {
    throw new BosunError('E_JOURNAL', `${path} is not valid JSON; ${advice}`, { path });
  }
}
