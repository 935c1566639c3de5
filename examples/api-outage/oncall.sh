# The on-call loop's door in, sourced by run.sh --oncall: a webhook receiver
# for escalations (notify.toml), `runbox serve` with a route for the alert
# (routes.toml), and a real Alertmanager posting to it. The alert opens the
# incident, whose id the route derives from the alert group: sets $id.
# Needs from run.sh: $here $work $data_dir $RUNBOX_BIN, runbox(), say().

oncall_open() {
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/hook.key"
    setsid python3 "$here/receiver.py" "$work/hook.key" "$work/state/receiver.port" \
        </dev/null > "$work/state/receiver.log" 2>&1 &
    echo $! > "$work/state/receiver.pid"
    for _ in $(seq 100); do [ -s "$work/state/receiver.port" ] && break; sleep 0.05; done
    # Print what the receiver prints, as it prints it.
    tail -n +1 -f "$work/state/receiver.log" &
    echo $! > "$work/state/tail.pid"

    cat > "$data_dir/notify.toml" <<TOML
[[sinks]]
name = "example-receiver"
kind = "webhook"
url = "http://127.0.0.1:$(cat "$work/state/receiver.port")/hook"
secret_file = "$work/hook.key"
events = ["approval-required", "escalated", "in-doubt", "resolved"]
TOML
    cat > "$data_dir/routes.toml" <<'TOML'
[[routes]]
name = "api-down"
match = ['alertname="ApiDown"']
runbook = "api-outage"
params = { service = "{labels.service}" }
TOML
    say "notify.toml sends escalations to receiver.py; routes.toml opens api-outage for ApiDown"
    cat "$data_dir/routes.toml"
    runbox agent add am --can alert > "$work/am.token"

    setsid "$RUNBOX_BIN" serve --listen 127.0.0.1:0 --runbooks "$work" \
        </dev/null 2> "$work/state/serve.log" &
    echo $! > "$work/state/serve.pid"
    local url=""
    for _ in $(seq 200); do
        url="$(sed -n 's/^listening on //p' "$work/state/serve.log")"
        [ -n "$url" ] && break
        sleep 0.05
    done
    [ -n "$url" ] || { cat "$work/state/serve.log"; exit 1; }

    local am_port
    am_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    mkdir -p "$work/am-data"
    cat > "$work/alertmanager.yml" <<YAML
route:
  receiver: runbox
  group_by: ['alertname', 'service']
  group_wait: 1s
receivers:
  - name: runbox
    webhook_configs:
      - url: $url/v1/alerts
        http_config:
          authorization:
            credentials_file: $work/am.token
YAML
    setsid prometheus-alertmanager --config.file="$work/alertmanager.yml" \
        --storage.path="$work/am-data" --web.listen-address="127.0.0.1:$am_port" \
        --cluster.listen-address= </dev/null > "$work/state/alertmanager.log" 2>&1 &
    echo $! > "$work/state/alertmanager.pid"

    say "an alert fires: POST /api/v2/alerts to Alertmanager (127.0.0.1:$am_port), which sends it to runbox serve"
    local alert='[{"labels": {"alertname": "ApiDown", "service": "api", "severity": "page"}, "annotations": {"summary": "the API answers 503"}}]'
    for _ in $(seq 100); do
        python3 - "$am_port" "$alert" <<'PY' && break
import sys, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/api/v2/alerts", sys.argv[2].encode(),
                             {"content-type": "application/json"})
try:
    urllib.request.urlopen(req, timeout=2)
except Exception:
    sys.exit(1)
PY
        sleep 0.2
    done
    id=""
    for _ in $(seq 300); do
        id="$(runbox list --json 2>/dev/null | python3 -c 'import json, sys
ids = [i["id"] for i in json.load(sys.stdin)]
print(next((i for i in ids if i.startswith("ALERT-")), ""))' 2>/dev/null)"
        [ -n "$id" ] && break
        sleep 0.1
    done
    [ -n "$id" ] || { echo "the alert opened no incident; serve said:"; cat "$work/state/serve.log"; exit 1; }
    say "runbox status $id   (opened by the alert)"
    runbox status "$id"

    # From here the example runs the incident from the terminal, which
    # needs the data dir that `serve` holds.
    local pid
    for pid in alertmanager serve; do
        kill "$(cat "$work/state/$pid.pid")"
        while kill -0 "$(cat "$work/state/$pid.pid")" 2>/dev/null; do sleep 0.05; done
        rm -f "$work/state/$pid.pid"
    done
}
