/** Run `fn` on 0..count-1, at most `parallel` at a time, without making a promise per item up front. */
export async function forEachLimited(count: number, parallel: number, fn: (index: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(parallel, count) }, async () => {
      while (next < count) await fn(next++);
    }),
  );
}
