#!/usr/bin/env python3
"""http_probe tool: prints the HTTP status of GET /health on a service, or 000
when it does not answer. Reads the service's port from state/NAME.port."""
import os
import sys
import urllib.error
import urllib.request

name = sys.argv[1]
state = os.path.join(os.path.dirname(os.path.abspath(__file__)), "state")
try:
    with open(os.path.join(state, name + ".port")) as f:
        port = int(f.read().strip())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception as e:  # unreachable, no port file, timeout
    print("000")
    print(f"probe: {e}", file=sys.stderr)
