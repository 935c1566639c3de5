/*
 * runbox.h: write runbox steps in C against ABI v1 (see ../ABI.md).
 *
 * Build a step as a WASI command:
 *   clang --target=wasm32-wasi --sysroot=/usr -O2 -o step.wasm step.c
 * (Debian: clang lld wasi-libc libclang-rt-14-dev-wasm32). Only functions
 * you call become imports, so a step importing nothing it was not granted
 * simply never calls the ungranted ones.
 *
 * Return codes: >= 0 success (a length where one is returned), negative:
 * RB_NOT_FOUND, RB_DENIED, RB_TOO_LARGE, RB_INVALID, RB_BUDGET, RB_TOOL_FAILURE.
 */
#ifndef RUNBOX_H
#define RUNBOX_H

#include <stdint.h>
#include <string.h>

#define RB_IMPORT(module, name) \
    __attribute__((import_module(module), import_name(name)))

/* Error codes (negative returns). */
enum {
    RB_NOT_FOUND = -1,    /* key absent */
    RB_DENIED = -2,       /* refused by policy; the attempt will escalate */
    RB_TOO_LARGE = -3,    /* key or value over its limit */
    RB_INVALID = -4,      /* bad pointer, length, UTF-8 or JSON */
    RB_BUDGET = -5,       /* per-attempt budget used up; calling again stops the step */
    RB_TOOL_FAILURE = -6  /* tool could not be started */
};

/* Outcomes for rb_finish. */
enum { RB_OK = 0, RB_RETRY = 1, RB_ESCALATE = 2, RB_FAIL = 3 };

/* Log levels for rb_log. */
enum { RB_TRACE = 0, RB_DEBUG = 1, RB_INFO = 2, RB_WARN = 3, RB_ERROR = 4 };

/* runbox:step/v1 (always linked) */
RB_IMPORT("runbox:step/v1", "input_len") int32_t rb_input_len(void);
RB_IMPORT("runbox:step/v1", "input_read") int32_t rb_input_read(void *buf, int32_t len);
RB_IMPORT("runbox:step/v1", "log") void rb_log(int32_t level, const void *msg, int32_t len);
/* Ends the step: RB_OK with JSON output (or empty), otherwise a UTF-8 reason.
 * Does not return. */
RB_IMPORT("runbox:step/v1", "finish")
void rb_finish(int32_t outcome, const void *bytes, int32_t len);

/* Copies the answer of this attempt's most recent tool call again (up to cap
 * bytes) and returns its full length, or RB_NOT_FOUND when the last call gave
 * no answer (none made yet, or it was refused or could not run). Not a tool
 * call: it runs nothing and costs no tool budget.
 *
 * **Calling a tool again runs it again.** When rb_tool_read or rb_tool_mutate
 * returns a length larger than your buffer, read the answer with this call;
 * never repeat the tool call to get it (a mutating tool would mutate twice):
 *
 *     int64_t n = rb_tool_read(name, nl, args, al, buf, sizeof buf);
 *     if (n > (int64_t)sizeof buf) {
 *         char *all = malloc((size_t)n);
 *         rb_last_tool_answer(all, (int32_t)n);
 *     }
 */
RB_IMPORT("runbox:step/v1", "last_tool_answer")
int64_t rb_last_tool_answer(void *buf, int32_t cap);

/* runbox:kv-read/v1 (needs a kv_read grant). Returns the value length, which
 * may exceed cap (then only cap bytes were copied), or RB_NOT_FOUND. */
RB_IMPORT("runbox:kv-read/v1", "get")
int64_t rb_kv_get(const void *key, int32_t key_len, void *buf, int32_t cap);

/* runbox:kv-write/v1 (needs a kv_write grant). Writes are staged and committed
 * with the step's outcome. */
RB_IMPORT("runbox:kv-write/v1", "put")
int32_t rb_kv_put(const void *key, int32_t key_len, const void *val, int32_t val_len);
RB_IMPORT("runbox:kv-write/v1", "delete")
int32_t rb_kv_delete(const void *key, int32_t key_len);

/* runbox:tool-read/v1 and runbox:tool-mutate/v1: args is a JSON object; the
 * answer is JSON {"rc","stdout","stderr","truncated","timed_out"}; returns
 * its length (may exceed cap: then read it whole with rb_last_tool_answer).
 * **Each call runs the tool: never call again for a longer answer.** */
RB_IMPORT("runbox:tool-read/v1", "call")
int64_t rb_tool_read(const void *name, int32_t name_len, const void *args, int32_t args_len,
                     void *buf, int32_t cap);
RB_IMPORT("runbox:tool-mutate/v1", "call")
int64_t rb_tool_mutate(const void *name, int32_t name_len, const void *args, int32_t args_len,
                       void *buf, int32_t cap);

/* Conveniences over NUL-terminated strings. */
static inline void rb_log_str(int32_t level, const char *msg) {
    rb_log(level, msg, (int32_t)strlen(msg));
}
static inline void rb_finish_str(int32_t outcome, const char *bytes) {
    rb_finish(outcome, bytes, (int32_t)strlen(bytes));
}
static inline int64_t rb_kv_get_str(const char *key, char *buf, int32_t cap) {
    return rb_kv_get(key, (int32_t)strlen(key), buf, cap);
}
static inline int32_t rb_kv_put_str(const char *key, const char *val) {
    return rb_kv_put(key, (int32_t)strlen(key), val, (int32_t)strlen(val));
}

#endif /* RUNBOX_H */
