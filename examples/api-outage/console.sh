# The web console, sourced by run.sh --console: `runbox serve` with its
# console on localhost, a one-time link that enrolls a passkey for alice,
# and an agent (here: this script, over HTTP) that runs the incident up to
# the approval gate. alice approves in the browser with her passkey; the
# script then runs the incident to its end and stops the server.
# Needs from run.sh: $work $id $RUNBOX_BIN, runbox(), say().

console_run() {
    local token url console status
    token="$(runbox agent add demo-agent --can mutate)"
    setsid "$RUNBOX_BIN" serve --listen 127.0.0.1:0 --runbooks "$work" \
        </dev/null 2> "$work/state/serve.log" &
    echo $! > "$work/state/serve.pid"
    for _ in $(seq 200); do
        console="$(sed -n 's/^console on //p' "$work/state/serve.log")"
        [ -n "$console" ] && break
        sleep 0.05
    done
    [ -n "$console" ] || { cat "$work/state/serve.log"; exit 1; }
    url="${console%/ui}"

    api() { curl -sS -H "Authorization: Bearer $token" -H 'content-type: application/json' -X POST --data "$2" "$url$1"; }
    status() { curl -sS -H "Authorization: Bearer $token" "$url/v1/incidents/$id" | python3 -c 'import json, sys; print(json.load(sys.stdin)["status"])'; }

    say "runbox human add alice --passkey   (open the link in a browser on this machine to make alice's passkey)"
    runbox human add alice --passkey --label demo

    say "the agent opens $id and runs it to the approval gate (POST /v1/incidents, …/steps:run)"
    api /v1/incidents "{\"runbook\": \"api-outage\", \"id\": \"$id\", \"params\": {\"service\": \"api\"}}" > /dev/null
    for _ in $(seq 10); do
        [ "$(status)" = awaiting-approval ] && break
        api "/v1/incidents/$id/steps:run" '{}' > /dev/null
    done

    say "open $console/incidents/$id, sign in with alice's passkey and approve the restart"
    echo "(waiting up to 30 minutes for the approval; Ctrl-C stops the example)"
    for _ in $(seq 18000); do
        status="$(status)"
        [ "$status" != awaiting-approval ] && break
        sleep 0.1
    done
    echo "status: $status"

    say "the agent runs $id to its end (restart, verify, resolve)"
    for _ in $(seq 10); do
        case "$(status)" in resolved | failed | escalated) break ;; esac
        api "/v1/incidents/$id/steps:run" '{}' > /dev/null
    done
    status

    # The rest of the example reads the data dir that `serve` holds.
    kill "$(cat "$work/state/serve.pid")"
    while kill -0 "$(cat "$work/state/serve.pid")" 2>/dev/null; do sleep 0.05; done
    rm -f "$work/state/serve.pid"
}
