#!/usr/bin/python3
"""Healthy when this member's PostgreSQL runs and the cluster has a leader.

Compose starts `init` once every member is healthy: by then a primary
takes writes, which is what `target_session_attrs=read-write` looks for.
"""

import json
import sys
import urllib.request

API = "http://127.0.0.1:8008"

try:
    # /health answers 200 only while this member's PostgreSQL is running.
    urllib.request.urlopen(f"{API}/health", timeout=3)
    with urllib.request.urlopen(f"{API}/cluster", timeout=3) as response:
        members = json.load(response)["members"]
except (OSError, ValueError, KeyError) as error:
    print(error)
    sys.exit(1)
if not any(m.get("role") == "leader" and m.get("state") == "running" for m in members):
    print("no leader yet")
    sys.exit(1)
