// Writing runbox steps in TypeScript or JavaScript, over componentize-js's
// bindings of the WIT world `runbox:step@1.0.0` (guest-sdk/wit/step.wit is
// the reference; types/ is `jco types` of it).
//
//   import { step, kv, log, ok } from "./runbox.js";
//   export const run = step((input) => {
//     const note = kv.get(`svc/${input.service}/note`);
//     log.info(`note: ${note}`);
//     return ok({ note });
//   });
//
// The function returns an outcome: ok(value), retry(reason),
// escalate(reason) or fail(reason). An exception that escapes it escalates
// with its message: a step that does not know what happened hands over.
//
// The optional capabilities come from ./caps.js, which build.sh writes from
// the imports in wit/world.wit: a toolchain imports every interface of the
// world it builds, so each step's world names only what it is granted.

import { get as inputGet } from "runbox:step/input@1.0.0";
import { log as logLine } from "runbox:step/log@1.0.0";
import type { Answer as WitAnswer, ErrorCode } from "runbox:step/types@1.0.0";
import * as caps from "./caps.js";

/** The host refused a call; `code` is the WIT `error-code`. */
export class Refused extends Error {
  constructor(what: string, readonly code: ErrorCode) {
    super(`${what}: ${code}`);
  }
}

/** How a step ends. */
export type Outcome =
  | { kind: "ok"; value: unknown }
  | { kind: "retry" | "escalate" | "fail"; reason: string };

export const ok = (value: unknown = null): Outcome => ({ kind: "ok", value });
export const retry = (reason: string): Outcome => ({ kind: "retry", reason: String(reason) });
export const escalate = (reason: string): Outcome => ({ kind: "escalate", reason: String(reason) });
export const fail = (reason: string): Outcome => ({ kind: "fail", reason: String(reason) });

/** The thrown err of the world's `run`. componentize-js takes the err
 * from a thrown value's `payload` (or the value itself), so it has both. */
class RunError extends Error {
  readonly tag: string;
  readonly val: string;
  readonly payload: { tag: string; val: string };
  constructor(tag: string, val: string) {
    super(`${tag}: ${val}`);
    this.tag = tag;
    this.val = val;
    this.payload = { tag, val };
  }
}

function isOutcome(x: unknown): x is Outcome {
  const kind = (x as { kind?: unknown } | null)?.kind;
  return kind === "ok" || kind === "retry" || kind === "escalate" || kind === "fail";
}

/** The world's `run` result for `outcome`: the JSON text for `ok` (empty
 * for `null`), a thrown err otherwise. */
function finish(outcome: unknown): string {
  if (!isOutcome(outcome)) {
    // A bare value is most likely a forgotten ok(...): a human should look.
    return finish(escalate(`the step returned ${typeof outcome}, not ok(...)/retry/escalate/fail`));
  }
  if (outcome.kind === "ok") {
    return outcome.value === null || outcome.value === undefined ? "" : JSON.stringify(outcome.value);
  }
  throw new RunError(outcome.kind, outcome.reason);
}

/** The step's input document, parsed from JSON. */
export function input(): any {
  return JSON.parse(inputGet() || "null");
}

/** The world's `run` export for `main`. */
export function step(main: (input: any) => Outcome): () => string {
  return () => {
    let outcome: unknown;
    try {
      outcome = main(input());
    } catch (e) {
      outcome = escalate(e instanceof Error ? `${e.name}: ${e.message}` : String(e));
    }
    return finish(outcome);
  };
}

/** Lines in the step record (each counts against `output_bytes`). */
export const log = {
  debug: (m: string) => logLine("debug", String(m)),
  info: (m: string) => logLine("info", String(m)),
  warn: (m: string) => logLine("warn", String(m)),
  error: (m: string) => logLine("error", String(m)),
};

/** An optional interface, or a `Refused` naming the line the world lacks. */
function need<T>(found: T | null, wit: string): T {
  if (found === null) {
    throw new Refused(
      `this step's world does not import ${wit}: add \`import runbox:step/${wit}@1.0.0;\` to wit/world.wit and grant it in the policy`,
      "denied",
    );
  }
  return found;
}

/** Runs a host call whose refusal componentize-js throws with a payload. */
function refusable<T>(what: string, call: () => T): T {
  try {
    return call();
  } catch (e) {
    const code = (e as { payload?: unknown } | null)?.payload ?? e;
    if (typeof code === "string") throw new Refused(what, code as ErrorCode);
    throw e;
  }
}

const text = new TextDecoder();
const bytes = new TextEncoder();

/** The step KV store: text values (UTF-8); `getBytes` gives the raw one. */
export const kv = {
  getBytes(key: string): Uint8Array | null {
    const read = need(caps.kvRead, "kv-read");
    return refusable(`kv.get ${key}`, () => read.get(key)) ?? null;
  },
  get(key: string): string | null {
    const value = kv.getBytes(key);
    return value === null ? null : text.decode(value);
  },
  /** Stages a write, committed with the step's outcome. */
  put(key: string, value: string | Uint8Array): void {
    const write = need(caps.kvWrite, "kv-write");
    const data = typeof value === "string" ? bytes.encode(value) : value;
    refusable(`kv.put ${key}`, () => write.put(key, data));
  },
  /** Stages a delete, committed with the step's outcome. */
  delete(key: string): void {
    const write = need(caps.kvWrite, "kv-write");
    refusable(`kv.delete ${key}`, () => write.delete(key));
  },
};

/** What a tool answered (`rc` is -1 when killed or timed out). */
export type Answer = WitAnswer;

/** Tools from the registry. Every call runs the tool, and its answer comes
 * back whole: there is never a reason to call again for it. */
export const tools = {
  /** Runs a `read` tool with `args`, its declared arguments. */
  call(name: string, args: Record<string, unknown> = {}): Answer {
    const tool = need(caps.toolRead, "tool-read");
    return refusable(`tool ${name}`, () => tool.call(name, JSON.stringify(args)));
  },
  /** Runs a `mutate` tool. **Each call runs it again**; before the first,
   * the attempt is durably recorded as in flight. */
  mutate(name: string, args: Record<string, unknown> = {}): Answer {
    const tool = need(caps.toolMutate, "tool-mutate");
    return refusable(`tool ${name}`, () => tool.call(name, JSON.stringify(args)));
  },
};
