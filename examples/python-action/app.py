"""A Python component action: `mypack.deploy`, the Python twin of examples/deploy-component.

Parameters arrive as JSON on stdin (`{"target": "staging"}`), the result is the JSON this prints,
failure is a non-zero exit (Attune's action convention). It reads `api_key` and `db_password`
through the `get-secret` import of attune-wasm (`wit/action.wit`) and prints only what is safe to
print about them: their length in UTF-8 bytes and a SHA-256 prefix, never the values.
Without `api_key` it prints the result, writes a line to stderr and exits with status 1.

Build: see README.md (componentize-py, world `python-action` in wit/).
"""

import hashlib
import json
import os
import sys

from wit_world import exports
from componentize_py_types import Err
from wit_world.imports import secrets


def describe(name: str) -> dict:
    """Length and SHA-256 prefix of secret `name`, or the WIT error it got (e.g. `not-found`)."""
    try:
        value = secrets.get_secret(name)
    except Err as e:
        return {"error": e.value.name.lower().replace("_", "-")}
    data = value.encode("utf-8")
    return {"len": len(data), "sha256_prefix": hashlib.sha256(data).hexdigest()[:8]}


def read_params() -> dict:
    """The JSON object on stdin, or `{}` when stdin is empty or not a JSON object."""
    try:
        params = json.loads(sys.stdin.read() or "{}")
    except ValueError:
        return {}
    return params if isinstance(params, dict) else {}


class Run(exports.Run):
    """The `wasi:cli/run` export: the action's entry point."""

    def run(self) -> None:
        params = read_params()
        target = params.get("target")
        api_key = describe("api_key")
        ok = "error" not in api_key
        result = {
            "action": os.environ.get("ATTUNE_ACTION_REF", ""),
            "door": "get-secret",
            "language": "python",
            "target": target if isinstance(target, str) else "staging",
            "deployed": ok,
            "api_key": api_key,
            "db_password": describe("db_password"),
        }
        print(json.dumps(result, separators=(",", ":")), flush=True)
        if not ok:
            print("deploy failed: api_key is required", file=sys.stderr, flush=True)
            # `run` returning an error is the command's failure: exit status 1.
            raise Err(None)
