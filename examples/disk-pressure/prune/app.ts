// prune: deletes a volume's oldest logs through the mutating `prune_logs`
// tool (once: each call runs it again), and counts the prunes in KV.
import { step, kv, log, ok, fail, tools } from "./runbox.js";

export const run = step((input) => {
  const volume = String(input.volume);
  const keep = Number(input.keep);
  const answer = tools.mutate("prune_logs", { volume, keep });
  if (answer.rc !== 0) {
    return fail(`prune_logs ${volume} failed (rc ${answer.rc}): ${answer.stderr.slice(0, 200)}`);
  }
  const freed = JSON.parse(answer.stdout) as { deleted: number; freed_mib: number };
  log.info(`${volume}: deleted ${freed.deleted} logs, freed ${freed.freed_mib} MiB`);
  const key = `vol/${volume}/prunes`;
  kv.put(key, String(Number(kv.get(key) ?? "0") + 1));
  return ok(freed);
});
