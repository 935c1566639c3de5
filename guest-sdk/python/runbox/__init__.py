"""Writing runbox steps in Python, over the bindings componentize-py
generates for the WIT world `runbox:step@1.0.0` (guest-sdk/wit/step.wit,
the reference).

A step subclasses `Step` as the world class componentize-py looks for:

    import runbox
    from runbox import kv, log, ok, fail

    class WitWorld(runbox.Step):
        def main(self, input):
            note = kv.get(f"svc/{input['service']}/note")
            log.info(f"note: {note}")
            return ok({"note": note})

`main` returns an outcome: `ok(value)`, `retry(reason)`, `escalate(reason)`
or `fail(reason)`. An exception that escapes `main` escalates with its
message: a step that does not know what happened hands over to a human.

Each capability is an interface the step's world imports (`wit/world.wit`
beside the step). Only the imported ones are generated, so this package
takes those it finds: a step that calls one its world does not import is
refused with the line to add, instead of failing to build.
"""

import importlib
import json
from dataclasses import dataclass
from typing import Any, Optional, Union

from componentize_py_types import Err
import wit_world
from wit_world.imports import input as _input
from wit_world.imports import log as _log
from wit_world.imports import types as _types

__all__ = [
    "Step", "Outcome", "Answer", "Refused",
    "ok", "retry", "escalate", "fail", "input",
    "kv", "tools", "log",
]


class Refused(Exception):
    """The host refused a call: `code` is `denied`, `too-large`, `invalid`,
    `budget` or `tool-failure` (see step.wit's `error-code`). A denied call
    is recorded as a violation whatever the step does next."""

    def __init__(self, what: str, code: str):
        super().__init__(f"{what}: {code}")
        self.code = code


def _optional(module: str):
    """The generated bindings of an optional interface, or None when the
    world does not import it. Imported now, while componentize-py
    pre-initializes the step: at run time there is no file system to
    import from."""
    try:
        return importlib.import_module(f"wit_world.imports.{module}")
    except ImportError:
        return None


_OPTIONAL = {m: _optional(m) for m in ("kv_read", "kv_write", "tool_read", "tool_mutate")}


def _interface(module: str):
    """The bindings of an optional interface, or a `Refused` naming the
    line the step's world lacks."""
    found = _OPTIONAL[module]
    if found is None:
        wit = module.replace("_", "-")
        raise Refused(
            f"this step's world does not import {wit}: add "
            f"`import runbox:step/{wit}@1.0.0;` to wit/world.wit and grant it in the policy",
            "denied",
        )
    return found


def _code(err: Err) -> str:
    """The WIT name of a refusal's error code."""
    return err.value.name.lower().replace("_", "-")


# ---------------------------------------------------------------- outcomes

@dataclass(frozen=True)
class Outcome:
    """How the step ends: `kind` is `ok`, `retry`, `escalate` or `fail`."""

    kind: str
    value: Any = None
    reason: str = ""


def ok(value: Any = None) -> Outcome:
    """Ends the step `ok` with `value` as its JSON output."""
    return Outcome("ok", value=value)


def retry(reason: str) -> Outcome:
    """Asks for another attempt (the runbook's `max_retries` and backoff)."""
    return Outcome("retry", reason=str(reason))


def escalate(reason: str) -> Outcome:
    """Stops and hands the incident to a human, with the reason."""
    return Outcome("escalate", reason=str(reason))


def fail(reason: str) -> Outcome:
    """The step failed: the runbook's `fail` transition applies."""
    return Outcome("fail", reason=str(reason))


_ERRORS = {
    "retry": _types.OutcomeError_Retry,
    "escalate": _types.OutcomeError_Escalate,
    "fail": _types.OutcomeError_Fail,
}


def _finish(outcome: Any) -> str:
    """The world's `run` result for `outcome`: the JSON text for `ok`
    (empty for `null`), raised `Err` otherwise."""
    if not isinstance(outcome, Outcome):
        # Returning a bare value is most likely a forgotten `ok(...)` or a
        # reason meant for `fail(...)`: a human should look, not guess.
        outcome = escalate(f"main returned {type(outcome).__name__}, not ok(...)/retry/escalate/fail")
    if outcome.kind == "ok":
        return "" if outcome.value is None else json.dumps(outcome.value)
    raise Err(_ERRORS[outcome.kind](outcome.reason))


class Step(wit_world.WitWorld):
    """The world's `run`: parses the input, calls `main`, maps its outcome."""

    def main(self, input: Any) -> Outcome:  # noqa: A002 - the step's input
        raise NotImplementedError("a step overrides main(self, input)")

    def run(self) -> str:
        try:
            outcome = self.main(input())
        except Exception as e:  # noqa: BLE001 - any escape is a human's call
            outcome = escalate(f"{type(e).__name__}: {e}")
        return _finish(outcome)


def input() -> Any:  # noqa: A001 - the step's input, as the WIT names it
    """The step's input document, parsed from JSON."""
    return json.loads(_input.get() or "null")


# ---------------------------------------------------------------- log

class log:
    """Lines in the step record (each counts against `output_bytes`)."""

    @staticmethod
    def debug(message: str) -> None:
        _log.log(_log.Level.DEBUG, str(message))

    @staticmethod
    def info(message: str) -> None:
        _log.log(_log.Level.INFO, str(message))

    @staticmethod
    def warn(message: str) -> None:
        _log.log(_log.Level.WARN, str(message))

    @staticmethod
    def error(message: str) -> None:
        _log.log(_log.Level.ERROR, str(message))


# ---------------------------------------------------------------- KV

class kv:
    """The step KV store. Values are bytes on the wire; `get` and `put`
    take and give text (UTF-8), `get_bytes` the raw value."""

    @staticmethod
    def get_bytes(key: str) -> Optional[bytes]:
        """The value of `key`, or None when absent."""
        kv_read = _interface("kv_read")
        try:
            return kv_read.get(key)
        except Err as e:
            raise Refused(f"kv.get {key!r}", _code(e)) from None

    @staticmethod
    def get(key: str) -> Optional[str]:
        """The value of `key` as text, or None when absent."""
        value = kv.get_bytes(key)
        return None if value is None else value.decode("utf-8", "replace")

    @staticmethod
    def put(key: str, value: Union[str, bytes]) -> None:
        """Stages a write, committed with the step's outcome."""
        kv_write = _interface("kv_write")
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        try:
            kv_write.put(key, data)
        except Err as e:
            raise Refused(f"kv.put {key!r}", _code(e)) from None

    @staticmethod
    def delete(key: str) -> None:
        """Stages a delete, committed with the step's outcome."""
        kv_write = _interface("kv_write")
        try:
            kv_write.delete(key)
        except Err as e:
            raise Refused(f"kv.delete {key!r}", _code(e)) from None


# ---------------------------------------------------------------- tools

@dataclass(frozen=True)
class Answer:
    """What a tool answered: `rc` (-1 when killed or timed out), `stdout`,
    `stderr`, and whether output was `truncated` or the tool `timed_out`."""

    rc: int
    stdout: str
    stderr: str
    truncated: bool
    timed_out: bool


def _call(module: str, name: str, args: Optional[dict]) -> Answer:
    tool = _interface(module)
    try:
        a = tool.call(name, json.dumps(args or {}))
    except Err as e:
        raise Refused(f"tool {name!r}", _code(e)) from None
    return Answer(a.rc, a.stdout, a.stderr, a.truncated, a.timed_out)


class tools:
    """Tools from the registry. Every call runs the tool: the answer comes
    back whole, so there is never a reason to call again for it."""

    @staticmethod
    def call(name: str, args: Optional[dict] = None) -> Answer:
        """Runs a `read` tool with `args`, its declared arguments."""
        return _call("tool_read", name, args)

    @staticmethod
    def mutate(name: str, args: Optional[dict] = None) -> Answer:
        """Runs a `mutate` tool. **Each call runs it again**; before the
        first, the attempt is durably recorded as in flight."""
        return _call("tool_mutate", name, args)
