"""``prsm-edge api METHOD``: call an API method over MQTT (or the agent's local HTTP API with --local)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prsm_edge import paths
from prsm_edge import settings as settings_mod
from prsm_edge.errors import ConfigError
from prsm_edge.identity import KEY_FILE, load_or_create
from prsm_edge.io.api_client import connect
from prsm_edge.io.clock import now_ms
from prsm_edge.node.owner_api import LOCAL_API_FILE
from prsm_edge.node.owners import cli_owner
from prsm_edge.protocol.api import METHODS, Access, ApiError, ErrorCode, result_of, seal_request
from prsm_edge.protocol.messages import ApiResponse

OWNER_KEY_DIR = "owner"


def register(sub: Any) -> None:
    """Add the ``api`` command."""
    parser = sub.add_parser(
        "api",
        help="call an API method (status, earnings, configure, ...) of a node or its group",
        description=(
            "Call one API method as a signed request. Reads (status, optimize, analytics, earnings, "
            "network-summary, health) answer anyone; changes (configure, update, pause, auto-optimize, "
            "verify, benchmark) are signed with this user's owner key and refused unless it is paired "
            "with the node (`prsm-edge owner pair --cli`). On a node whose agent runs here, and with no "
            "--broker given, the agent's local API answers; over MQTT (--broker) the group's coordinator "
            "answers reads and relays changes to the node."
        ),
    )
    parser.add_argument("method", choices=sorted(METHODS), help="the method to call")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter (VALUE read as JSON when it parses, else as text); for configure and update "
        "every parameter is a setting, e.g. --param cpu_allocation_percentage=0.7",
    )
    parser.add_argument("--node", default=None, help="the node (user id); default: this machine's node")
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    parser.add_argument("--broker", default=None, help="the group's broker (default: from settings)")
    parser.add_argument("--site", default=None, help="site (default: from settings)")
    parser.add_argument("--group", default=None, help="group (default: from settings)")
    parser.add_argument(
        "--local",
        nargs="?",
        const="",
        default=None,
        metavar="URL",
        help="call the agent's local HTTP API instead (default: the URL the running agent wrote)",
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="the node's state folder (default: data dir)"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")
    parser.set_defaults(handler=_run)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def build_params(method_name: str, pairs: list[str], node: str | None) -> dict[str, Any]:
    """The request's params from ``--param`` pairs (settings methods nest them under ``settings``)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {pair!r} must look like KEY=VALUE")
        values[key] = _value(text)
    params: dict[str, Any] = {"settings": values} if method_name in ("configure", "update") else values
    if METHODS[method_name].per_node and node is not None:
        params["node"] = node
    return params


def _this_node(workdir: Path | None) -> str | None:
    folder = workdir or paths.data_dir()
    if not (folder / KEY_FILE).exists():
        return None
    return load_or_create(folder).node_id


def _owner_signer() -> Any:
    return cli_owner(paths.config_dir() / OWNER_KEY_DIR)[1]


async def _call_mqtt(args: argparse.Namespace, params: dict[str, Any]) -> ApiResponse:
    s = settings_mod.load()
    broker = args.broker or s.broker_url
    group = args.group or s.group
    if broker is None or group is None:
        raise ConfigError("name the group's broker and group: --broker mqtt://HOST:PORT --group NAME")
    async with connect(broker, args.site or s.site, group, _owner_signer()) as client:
        return await client.call(args.method, params, timeout_s=args.timeout)


def _running_agent(workdir: Path | None) -> bool:
    return ((workdir or paths.data_dir()) / LOCAL_API_FILE).exists()


def _local_url(args: argparse.Namespace) -> str:
    if args.local:
        return str(args.local).rstrip("/")
    path = (args.workdir or paths.data_dir()) / LOCAL_API_FILE
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["url"])
    except (OSError, ValueError, KeyError):
        raise ConfigError(
            f"no running agent's local API found ({path} is missing): start it with `prsm-edge join`, "
            "or give --local http://127.0.0.1:PORT"
        ) from None


def _call_local(args: argparse.Namespace, params: dict[str, Any]) -> dict[str, Any]:
    spec = METHODS[args.method]
    path = spec.path.replace("{user_id}", str(params.get("node", "")))
    url = _local_url(args) + path
    body = None
    headers = {"Accept": "application/json"}
    if spec.access is Access.OWNER:
        signed = seal_request(
            _owner_signer(), args.method, params, txid=secrets.token_hex(8), now_ms=now_ms()
        )
        body = json.dumps({"signed": base64.b64encode(signed).decode("ascii")}).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=body, method=spec.http, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        raw = exc.read() or b"{}"
    except (urllib.error.URLError, TimeoutError) as exc:
        raise ApiError(
            ErrorCode.NOT_AVAILABLE,
            f"cannot reach the agent's local API at {url} ({exc}): is the agent running? "
            "(or ask the group over MQTT with --broker)",
        ) from None
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ApiError(
            ErrorCode.BAD_REQUEST, f"{url} did not answer with a JSON map: is it a prsm-edge agent?"
        )
    if not data.get("ok"):
        try:
            code = ErrorCode(data.get("code", "bad_request"))
        except ValueError:
            code = ErrorCode.BAD_REQUEST
        raise ApiError(code, str(data.get("error", "refused")))
    result: dict[str, Any] = data.get("result", {})
    return result


def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
        return
    for key, value in result.items():
        shown = json.dumps(value, default=str) if isinstance(value, dict | list) else value
        print(f"{key}: {shown}")


def _run(args: argparse.Namespace) -> int:
    spec = METHODS[args.method]
    node = args.node or (_this_node(args.workdir) if spec.per_node else None)
    if spec.per_node and node is None:
        raise ConfigError(f"{args.method} concerns one node: name it with --node ID")
    params = build_params(args.method, args.param, node)
    if args.local is None and args.broker is None and _running_agent(args.workdir):
        args.local = ""  # the agent on this machine answers; --broker asks the group over MQTT
    try:
        if args.local is not None:
            result = _call_local(args, params)
        else:
            result = result_of(asyncio.run(_call_mqtt(args, params)))
    except ApiError as exc:
        if args.json:
            print(json.dumps({"ok": False, "code": exc.code.value, "error": exc.message}))
        else:
            print(f"prsm-edge: {args.method} refused ({exc.code.value}): {exc.message}", file=sys.stderr)
        return 1
    _print(result, args.json)
    return 0
