/*
 * restart_budget: a guard before a restart. Reads svc/<service>/restarts and
 * escalates when the service was already restarted `max` times (default 3),
 * so a flapping service gets a human instead of a restart loop.
 *
 * Input: {"service": "api", "max": 3}. Grants: kv_read = ["svc/{service}/restarts"].
 * Outcomes: ok with {"restarts": N}; escalate when N >= max; fail on bad input.
 *
 *   clang --target=wasm32-wasi --sysroot=/usr -O2 -o restart_budget.wasm restart_budget.c
 */
#include <stdio.h>
#include <stdlib.h>

#include "../../guest-sdk/c/runbox.h"

/* Finds "name": and returns a pointer just past the colon and blanks, or NULL.
 * Enough for the flat objects runbooks pass; not a general JSON parser. */
static const char *field(const char *json, const char *name) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\"", name);
    const char *at = strstr(json, pattern);
    if (!at) return NULL;
    at += strlen(pattern);
    while (*at == ' ' || *at == ':') at++;
    return at;
}

int main(void) {
    static char input[4096];
    int32_t n = rb_input_read(input, sizeof input - 1);
    if (n < 0) n = 0;
    input[n] = '\0';

    char service[64];
    const char *s = field(input, "service");
    if (!s || *s != '"' || sscanf(s + 1, "%63[A-Za-z0-9._-]\"", service) != 1) {
        rb_finish_str(RB_FAIL, "input needs a \"service\" string of letters, digits, . _ -");
        return 0;
    }
    const char *m = field(input, "max");
    long max = m ? strtol(m, NULL, 10) : 3;

    char key[128], value[32] = {0};
    snprintf(key, sizeof key, "svc/%s/restarts", service);
    int64_t got = rb_kv_get_str(key, value, sizeof value - 1);
    long restarts = 0;
    if (got >= 0) {
        restarts = strtol(value, NULL, 10);
    } else if (got != RB_NOT_FOUND) {
        char reason[160];
        snprintf(reason, sizeof reason, "cannot read %s: error %lld", key, (long long)got);
        rb_finish_str(RB_ESCALATE, reason);
        return 0;
    }

    char out[160];
    if (restarts >= max) {
        snprintf(out, sizeof out, "%s was restarted %ld times already (budget %ld): a human should look",
                 service, restarts, max);
        rb_finish_str(RB_ESCALATE, out);
    } else {
        snprintf(out, sizeof out, "{\"restarts\":%ld,\"budget\":%ld}", restarts, max);
        rb_finish_str(RB_OK, out);
    }
    return 0;
}
