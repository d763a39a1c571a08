"""One ``POST /generate`` request: parsed, typed and checked against the bundle before batching.

Every check a request can fail happens here, in the replica's request handler, before the
request joins a batch: so a bad request gets its own HTTP 400 and never fails the requests
it would have been batched with. A request's defaults are ``far-runtime generate``'s, read
from ``far_runtime.defaults`` (data: no library module imports the CLI to learn them;
tests/test_serve.py checks they equal the command's option defaults). K's default is the
model's variant's (``variant.default_k``): 16 for FAR/MAR, L for FAR-Causal, whose only valid K is L.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from ..accel import AccelOptions, accel_options
from ..defaults import CFG_SCHEDULES, SAMPLING
from ..variants import variant_for
from ..errors import FarError
from ..options import check_sampling

MAX_INT_DIGITS = 40              # 2**64-1 has 20 digits; no setting needs more than 40

MAX_BODY_BYTES = 64 * 1024
READ_TIMEOUT_S = 10.0            # a whole request body must arrive within this (HTTP 408; ingress.py)
REQUEST_TIMEOUT_S = 300.0        # a whole request, queue and batch included (HTTP 503)
ACCEL_EXAMPLES = {"head_schedule": '"8:1"', "cfg_interval": '"0.25:1"', "cfg_cache": '"2:3"'}
MAX_SEED = 2 ** 64 - 1
OUTPUTS = ("png", "npy", "latents")

ACCEL_KEYS = ("head_schedule", "cfg_interval", "cfg_cache")           # accel.py: strings, null = off
SETTINGS = ("seed", "K", "O", "cfg", "cfg_schedule", "temperature", *ACCEL_KEYS)   # every key but "class"
KEYS = ("class", *SETTINGS)


class RequestError(FarError):
    """A request the server refuses (HTTP 400): the message is one sentence."""


@dataclass(frozen=True)
class GenerateRequest:
    label: int
    seed: int
    K: int
    O: int
    cfg: float
    cfg_schedule: str
    temperature: float
    output: str = "png"          # "png", "npy" (uint8 image array) or "latents" (token latents .npy)
    accel: AccelOptions = AccelOptions()     # the acceleration options, canonical (accel.py)

    @property
    def settings(self) -> tuple:
        """What requests must share to run in one batch; seeds and classes may differ."""
        return (self.K, self.O, self.cfg, self.cfg_schedule, self.temperature, self.accel)


def request_defaults(model: dict) -> dict:
    """What a request left out takes, by JSON key: ``far-runtime generate``'s defaults for ``model``."""
    return {**{key: SAMPLING[key] for key in SETTINGS if key != "K"}, "K": variant_for(model).default_k(model)}


def _reject_constant(name: str):
    raise RequestError(f"The request body holds {name}, which is not a number JSON allows.")


def _int(body: dict, key: str) -> int:
    v = body[key]
    if type(v) is not int:                      # bool is an int subclass: refuse it too
        raise RequestError(f"'{key}' must be an integer, got {json.dumps(v)}.")
    return v


def _float(body: dict, key: str) -> float:
    v = body[key]
    try:
        ok = type(v) in (int, float) and math.isfinite(float(v))
    except OverflowError:                       # an int beyond float range, e.g. 10**400
        ok = False
    if not ok:
        shown = json.dumps(v) if type(v) is not int else f"an integer of {len(str(abs(v)))} digits"
        raise RequestError(f"'{key}' must be a finite number, got {shown}.")
    return float(v)


def _parse_int(text: str) -> int:
    """JSON integers, refused past ``MAX_INT_DIGITS`` digits before Python converts them."""
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise RequestError(f"The request body holds an integer of {len(text.lstrip('-'))} digits; "
                           f"no setting takes more than {MAX_INT_DIGITS}.")
    return int(text)


def parse_body(body: bytes) -> dict:
    """The JSON object of a request body; anything else is a ``RequestError``."""
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(f"The request body is larger than {MAX_BODY_BYTES} bytes.")
    try:
        obj = json.loads(body.decode("utf-8"), parse_constant=_reject_constant, parse_int=_parse_int)
    except UnicodeDecodeError:
        raise RequestError("The request body is not UTF-8 text.") from None
    except json.JSONDecodeError as e:
        raise RequestError(f"The request body is not valid JSON ({e.msg} at position {e.pos}).") from None
    except RecursionError:
        raise RequestError("The request body nests too deeply to be a generate request.") from None
    except (ValueError, OverflowError) as e:    # e.g. Python's int-digit limit: not JSONDecodeError
        raise RequestError(f"The request body holds a value Python cannot read ({str(e)[:80]}).") from None
    if not isinstance(obj, dict):
        raise RequestError("The request body must be a JSON object such as {\"class\": 3}.")
    return obj


def parse_output(query: dict) -> str:
    """``?format=png|npy`` and ``?latents=0|1`` to one of ``OUTPUTS``."""
    unknown = sorted(set(query) - {"format", "latents"})
    if unknown:
        raise RequestError(f"Unknown query parameter '{unknown[0]}'; use format=png|npy or latents=1.")
    fmt = query.get("format", "png")
    if fmt not in ("png", "npy"):
        raise RequestError(f"format must be 'png' or 'npy', got {fmt!r}.")
    latents = query.get("latents", "0")
    if latents not in ("0", "1"):
        raise RequestError(f"latents must be 0 or 1, got {latents!r}.")
    if latents == "1":
        if "format" in query and fmt != "npy":
            raise RequestError("latents=1 returns a .npy array; it cannot be combined with format=png.")
        return "latents"
    return fmt


class RequestChecker:
    """Checks requests against one loaded pipeline: its classes, head graphs and K range."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.defaults = request_defaults(pipe.model)

    def check(self, obj: dict, output: str = "png") -> GenerateRequest:
        unknown = sorted(set(obj) - set(KEYS))
        if unknown:
            raise RequestError(f"Unknown key '{unknown[0]}'; a request may hold {', '.join(KEYS)}.")
        if "class" not in obj:
            raise RequestError("The request has no 'class'; send e.g. {\"class\": 3}.")
        body = {**self.defaults, **obj}
        label = _int(body, "class")
        seed = _int(body, "seed")
        if not 0 <= seed <= MAX_SEED:
            raise RequestError(f"'seed' must be in 0..2**64-1, got {seed}.")
        K, O = _int(body, "K"), _int(body, "O")
        cfg, temperature = _float(body, "cfg"), _float(body, "temperature")
        schedule = body["cfg_schedule"]
        if not isinstance(schedule, str) or schedule not in CFG_SCHEDULES:
            raise RequestError(f"'cfg_schedule' must be one of {', '.join(CFG_SCHEDULES)}, "
                               f"got {json.dumps(schedule)}.")
        if temperature < 0:
            raise RequestError(f"'temperature' must be at least 0, got {temperature}.")
        for key in ACCEL_KEYS:
            if body[key] is not None and not isinstance(body[key], str):
                raise RequestError(f"'{key}' must be a string such as {ACCEL_EXAMPLES[key]} or null, "
                                   f"got {json.dumps(body[key])}.")
        try:
            accel = accel_options(*(body[key] for key in ACCEL_KEYS))
            self.pipe.check_labels([label])
            # ``far-runtime generate``'s own check: the server refuses exactly what it refuses.
            check_sampling(K, O, cfg, temperature, seed, check_o=self.pipe.model["head_kind"] == "shortcut")
            # The pipeline's own plan for this request alone: a head graph for O, and the
            # variant's K rule (FAR-Causal: K is L), refused as ``generate`` refuses them.
            self.pipe.plan(1, K, O, cfg, **accel.as_dict())
        except RequestError:
            raise
        except FarError as e:
            raise RequestError(str(e)) from None
        return GenerateRequest(label, seed, K, O, cfg, schedule, temperature, output, accel)
