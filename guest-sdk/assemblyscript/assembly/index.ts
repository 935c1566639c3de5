// runbox ABI v1 for AssemblyScript steps.
//
// Every function of the ABI (guest-sdk/ABI.md) with AssemblyScript types:
// strings in and out (UTF-8 on the wire), typed outcomes, a KV read that
// grows its buffer, tool answers decoded (a long one read back with
// `last_tool_answer`: calling a tool again runs it again), and an `abort` that escalates with
// the file and line instead of importing `env.abort` (which runbox refuses).
// Only the functions a step calls end up imported, so a step asks for no
// capability it does not use.
//
// Build (asconfig.json has these):
//   asc assembly/step.ts --outFile step.wasm --exportStart _start \
//     --use abort=assembly/runbox/abort --runtime stub -O

@external("runbox:step/v1", "input_len")
declare function input_len(): i32;
@external("runbox:step/v1", "input_read")
declare function input_read(ptr: usize, cap: i32): i32;
@external("runbox:step/v1", "log")
declare function log_(level: i32, ptr: usize, len: i32): void;
@external("runbox:step/v1", "finish")
declare function finish_(outcome: i32, ptr: usize, len: i32): void;
@external("runbox:step/v1", "last_tool_answer")
declare function last_tool_answer(buf: usize, cap: i32): i64;
@external("runbox:kv-read/v1", "get")
declare function kv_get(kp: usize, kl: i32, buf: usize, cap: i32): i64;
@external("runbox:kv-write/v1", "put")
declare function kv_put(kp: usize, kl: i32, vp: usize, vl: i32): i32;
@external("runbox:kv-write/v1", "delete")
declare function kv_delete(kp: usize, kl: i32): i32;
@external("runbox:tool-read/v1", "call")
declare function tool_read(np: usize, nl: i32, ap: usize, al: i32, buf: usize, cap: i32): i64;
@external("runbox:tool-mutate/v1", "call")
declare function tool_mutate(np: usize, nl: i32, ap: usize, al: i32, buf: usize, cap: i32): i64;

/** Negative return codes of ABI v1. */
export namespace Code {
  export const NOT_FOUND: i32 = -1;
  export const DENIED: i32 = -2;
  export const TOO_LARGE: i32 = -3;
  export const INVALID: i32 = -4;
  export const BUDGET: i32 = -5;
  export const TOOL_FAILURE: i32 = -6;
}

function utf8(s: string): ArrayBuffer {
  return String.UTF8.encode(s);
}

function ptr(b: ArrayBuffer): usize {
  return changetype<usize>(b);
}

// ---------------------------------------------------------------------------
// Outcomes: each ends the step (`finish` does not return).

/** Ends the step `ok` with a JSON output (a JSON text, e.g. `{"class":"healthy"}`). */
export function ok(outputJson: string = ""): void {
  const b = utf8(outputJson);
  finish_(0, ptr(b), b.byteLength);
}

/** Ends the step asking for another attempt (within `max_retries`). */
export function retry(reason: string): void {
  const b = utf8(reason);
  finish_(1, ptr(b), b.byteLength);
}

/** Ends the step handing the incident to a human. */
export function escalate(reason: string): void {
  const b = utf8(reason);
  finish_(2, ptr(b), b.byteLength);
}

/** Ends the step as failed (the runbook's `on.fail` follows). */
export function fail(reason: string): void {
  const b = utf8(reason);
  finish_(3, ptr(b), b.byteLength);
}

/** The handler for `--use abort=…`: an assertion or runtime error escalates
 * with where it happened, instead of importing `env.abort`. */
export function abort(message: string | null, fileName: string | null, line: u32, column: u32): void {
  let m = "abort";
  if (message !== null) m = message;
  let f = "?";
  if (fileName !== null) f = fileName;
  escalate(m + " at " + f + ":" + line.toString() + ":" + column.toString());
  unreachable();
}

// ---------------------------------------------------------------------------
// Input and logs.

/** The step's input document, as JSON text. */
export function inputText(): string {
  const len = input_len();
  const buf = new ArrayBuffer(len);
  const n = input_read(ptr(buf), len);
  return String.UTF8.decode(buf.slice(0, n));
}

/** Log lines, kept in the step record (0 trace … 4 error). */
export namespace log {
  export function at(level: i32, message: string): void {
    const b = utf8(message);
    log_(level, ptr(b), b.byteLength);
  }
  export function debug(message: string): void { at(1, message); }
  export function info(message: string): void { at(2, message); }
  export function warn(message: string): void { at(3, message); }
  export function error(message: string): void { at(4, message); }
}

// ---------------------------------------------------------------------------
// KV.

/** The step KV (grants `kv_read`, `kv_write`). */
export namespace kv {
  /** The value of `key`, or null when absent. Other errors escalate. */
  export function get(key: string): string | null {
    const k = utf8(key);
    let cap = 256;
    while (true) {
      const buf = new ArrayBuffer(cap);
      const n = kv_get(ptr(k), k.byteLength, ptr(buf), cap);
      if (n == <i64>Code.NOT_FOUND) return null;
      if (n < 0) {
        escalate("kv.get(" + key + ") returned " + n.toString());
        unreachable();
      }
      if (n <= <i64>cap) return String.UTF8.decode(buf.slice(0, <i32>n));
      cap = <i32>n; // the full length: read again with room for it
    }
  }

  /** Stages a write; returns 0 or a negative code. */
  export function put(key: string, value: string): i32 {
    const k = utf8(key);
    const v = utf8(value);
    return kv_put(ptr(k), k.byteLength, ptr(v), v.byteLength);
  }

  /** Stages a delete; returns 0 or a negative code. */
  export function remove(key: string): i32 {
    const k = utf8(key);
    return kv_delete(ptr(k), k.byteLength);
  }
}

// ---------------------------------------------------------------------------
// Tools.

/** What a tool answered. `code` is 0, or the negative ABI code of a call
 * that did not run (then the other fields are empty). */
export class Answer {
  code: i32 = 0;
  rc: i32 = -1;
  stdout: string = "";
  stderr: string = "";
  truncated: bool = false;
  timedOut: bool = false;
}

/** The buffer an answer is first read into; most answers fit. */
const FIRST_CAP: i32 = 16 * 1024;

function call(mutate: bool, name: string, argsJson: string): Answer {
  const n = utf8(name);
  const a = utf8(argsJson);
  let buf = new ArrayBuffer(FIRST_CAP);
  const len = mutate
    ? tool_mutate(ptr(n), n.byteLength, ptr(a), a.byteLength, ptr(buf), FIRST_CAP)
    : tool_read(ptr(n), n.byteLength, ptr(a), a.byteLength, ptr(buf), FIRST_CAP);
  const answer = new Answer();
  if (len < 0) {
    answer.code = <i32>len;
    return answer;
  }
  if (len > <i64>FIRST_CAP) {
    // Calling the tool again would run it again: read back the answer the
    // host kept instead.
    buf = new ArrayBuffer(<i32>len);
    const again = last_tool_answer(ptr(buf), <i32>len);
    if (again != len) {
      answer.code = again < 0 ? <i32>again : Code.INVALID;
      return answer;
    }
  }
  const text = String.UTF8.decode(buf.slice(0, <i32>len));
  answer.rc = <i32>json.int(text, "rc");
  answer.stdout = json.str(text, "stdout");
  answer.stderr = json.str(text, "stderr");
  answer.truncated = json.flag(text, "truncated");
  answer.timedOut = json.flag(text, "timed_out");
  return answer;
}

/** Tool calls (grant `tools`; the tools file says read or mutate). */
export namespace tool {
  /** Calls a `read` tool with JSON object args. */
  export function read(name: string, argsJson: string = "{}"): Answer {
    return call(false, name, argsJson);
  }
  /** Calls a `mutate` tool (needs the mutation token). */
  export function mutate(name: string, argsJson: string = "{}"): Answer {
    return call(true, name, argsJson);
  }
}

// ---------------------------------------------------------------------------
// Just enough JSON for inputs and tool answers: top-level fields of an object.

export namespace json {
  function valueStart(text: string, field: string): i32 {
    const needle = "\"" + field + "\"";
    let i = text.indexOf(needle);
    while (i >= 0) {
      let j = i + needle.length;
      while (j < text.length && text.charCodeAt(j) == 32) j++;
      if (j < text.length && text.charCodeAt(j) == 58) {
        j++;
        while (j < text.length && text.charCodeAt(j) == 32) j++;
        return j;
      }
      i = text.indexOf(needle, i + 1);
    }
    return -1;
  }

  /** A string field, unescaped; "" when absent or not a string. */
  export function str(text: string, field: string): string {
    let i = valueStart(text, field);
    if (i < 0 || text.charCodeAt(i) != 34) return "";
    let out = "";
    i++;
    while (i < text.length) {
      const c = text.charCodeAt(i);
      if (c == 34) break;
      if (c == 92 && i + 1 < text.length) {
        const e = text.charCodeAt(i + 1);
        i += 2;
        if (e == 110) out += "\n";
        else if (e == 116) out += "\t";
        else if (e == 114) out += "\r";
        else if (e == 98) out += "\b";
        else if (e == 102) out += "\f";
        else if (e == 117 && i + 4 <= text.length) {
          out += String.fromCharCode(<i32>I32.parseInt(text.substr(i, 4), 16));
          i += 4;
        } else out += String.fromCharCode(e);
        continue;
      }
      out += String.fromCharCode(c);
      i++;
    }
    return out;
  }

  /** An integer field; 0 when absent. */
  export function int(text: string, field: string): i64 {
    const i = valueStart(text, field);
    if (i < 0) return 0;
    let j = i;
    while (j < text.length) {
      const c = text.charCodeAt(j);
      if (!(c == 45 || (c >= 48 && c <= 57))) break;
      j++;
    }
    return I64.parseInt(text.substring(i, j));
  }

  /** A boolean field; false when absent. */
  export function flag(text: string, field: string): bool {
    const i = valueStart(text, field);
    return i >= 0 && text.startsWith("true", i);
  }

  /** `s` as a JSON string literal. */
  export function quote(s: string): string {
    let out = "\"";
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c == 34) out += "\\\"";
      else if (c == 92) out += "\\\\";
      else if (c == 10) out += "\\n";
      else if (c < 32) out += "\\u" + c.toString(16).padStart(4, "0");
      else out += String.fromCharCode(c);
    }
    return out + "\"";
  }
}
