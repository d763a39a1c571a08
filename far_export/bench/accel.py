"""``far-export bench --accel``: the sampling accelerations (``far_runtime/accel.py``) measured
on FAR and MAR, each option set against the same model's defaults.

For each model and option set (``SETS``, or the user's ``--accel-set`` / ``--accel-sets``):

- speed: the set and the defaults generate one batch (tokens and decode) alternately run by
  run in this process (D O O D D O ...), run r of both from seed ``seed + r``, after warm-ups;
  ``speedup`` = the defaults' median time / the set's median time over those paired runs, and
  ``work_ratio`` = the defaults' backbone + head FLOPs / the set's (``flops.plan_flops`` of
  the shape plans): the load-free figure.
- quality (models with trained weights; not ``--preset``): ``images`` images, labels cycling
  over the classes, batch i from seed ``seed + i`` (seed set A: the same randomness for every
  set), scored by ``quality.score_images`` (classifier accuracy, Fréchet distance to real
  images); the defaults also from seed set B (``seed + SEED_SET_B``) for the seed-to-seed
  spread ``|score_A - score_B|``.
- the rule (``passes``): a set passes when its accuracy is at least the defaults' minus 2
  points and its Fréchet distance at most the defaults' plus twice the spread.

The defaults are the README's sampling settings (``quality.DEMO_SAMPLING``: K 16, O 8, CFG 5
constant, temperature 0.8); MAR runs its own DDPM steps (the checkpoint's respacing) and its
head schedule counts DDPM steps per iteration. The report's keys and the table, plot and
targets: ``accel_report.py``."""
from __future__ import annotations

import json
import logging
import shlex
import statistics
import time

import numpy as np

from far_runtime.accel import FLAGS, AccelOptions, accel_options
from far_runtime.errors import FarError

from ..flops import plan_flops

log = logging.getLogger(__name__)

MODELS = ("far", "mar")
SEED_SET_B = 10_000                 # seed set B starts here (A at --seed)
ACCURACY_DROP = 0.02                # the rule: accuracy >= defaults' - 2 points
SPREAD_FACTOR = 2.0                 # ... and Fréchet <= defaults' + 2 x the seed-to-seed spread
DEFAULT_IMAGES = 500                # 50 per class of the demo's 10

#: the option sets measured against each model's defaults: name -> far-runtime generate flags
SETS = {
    "far": {
        "head 8:1": "--head-schedule 8:1",
        "head 8:2": "--head-schedule 8:2",
        "interval 0:0.75": "--cfg-interval 0:0.75",
        "interval 0.25:1": "--cfg-interval 0.25:1",
        "cache 2:3": "--cfg-cache 2:3",
        "cache 1:4": "--cfg-cache 1:4",
        "cache 1:8": "--cfg-cache 1:8",
        "head 8:2 + cache 2:3": "--head-schedule 8:2 --cfg-cache 2:3",
        "head 8:1 + cache 1:4": "--head-schedule 8:1 --cfg-cache 1:4",
        "head 8:2 + cache 1:8": "--head-schedule 8:2 --cfg-cache 1:8",
    },
    "mar": {                        # head schedules in DDPM steps per iteration (MAR's default: 100)
        "head 100:25": "--head-schedule 100:25",
        "head 100:10": "--head-schedule 100:10",
        "head 50:10": "--head-schedule 50:10",
        "head 25:5": "--head-schedule 25:5",
        "interval 0:0.75": "--cfg-interval 0:0.75",
        "cache 2:3": "--cfg-cache 2:3",
        "cache 1:4": "--cfg-cache 1:4",
        "head 50:10 + cache 2:3": "--head-schedule 50:10 --cfg-cache 2:3",
        "head 25:5 + cache 2:3": "--head-schedule 25:5 --cfg-cache 2:3",
        "head 25:5 + cache 1:4": "--head-schedule 25:5 --cfg-cache 1:4",
    },
}
DEFAULTS = "defaults"


# --- option sets: untrusted text in, checked AccelOptions out ---------------------------------

def parse_flags(text, name: str) -> AccelOptions:
    """``"--head-schedule 8:2 --cfg-cache 2:3"`` (also ``--flag=value``) as checked options."""
    if not isinstance(text, str):
        raise FarError(f"Option set '{name}' must be a string of flags, got {type(text).__name__}.")
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise FarError(f"Option set '{name}' is not a readable list of flags ({e}).") from None
    by_flag = {f: k for k, f in FLAGS.items()}
    values, i = {}, 0
    while i < len(words):
        flag, _, value = words[i].partition("=")
        if flag not in by_flag:
            raise FarError(f"Option set '{name}' has '{words[i]}'; its flags are {', '.join(FLAGS.values())}.")
        if not value:
            if i + 1 >= len(words):
                raise FarError(f"Option set '{name}' gives {flag} without a value.")
            i += 1
            value = words[i]
        if by_flag[flag] in values:
            raise FarError(f"Option set '{name}' gives {flag} twice.")
        values[by_flag[flag]] = value
        i += 1
    try:
        return accel_options(**values)
    except FarError as e:
        raise FarError(f"Option set '{name}': {e}") from None


def _check_name(name, where: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 80 or not name.isprintable():
        raise FarError(f"{where} needs a printable set name of 1 to 80 characters, got {name!r}.")
    if name.strip() == DEFAULTS:
        raise FarError(f"{where}: '{DEFAULTS}' is always measured; give the set another name.")
    return name.strip()


def read_sets_file(path: str) -> dict:
    """A JSON file ``{"far": {"name": "flags", ...}, "mar": {...}}`` replacing ``SETS``."""
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise FarError(f"--accel-sets file {path} cannot be read ({e.strerror}).") from None
    except ValueError as e:
        raise FarError(f"--accel-sets file {path} is not JSON ({e}).") from None
    if not isinstance(data, dict) or set(data) - set(MODELS) or not all(isinstance(v, dict) for v in data.values()):
        raise FarError(f"--accel-sets file {path} must hold {{\"far\": {{name: flags}}, \"mar\": {{...}}}}.")
    return {m: {_check_name(n, f"--accel-sets {m}"): flags for n, flags in data.get(m, {}).items()}
            for m in MODELS}


def option_sets(sets_file: str | None = None, extra=()) -> tuple[dict, dict]:
    """``({model: {name: AccelOptions}}, {model: names of the built-in table's sets})``: the
    table (or the file's), plus each ``--accel-set`` ``"[far:|mar:]name=flags"`` (no prefix:
    FAR), which adds a set or replaces one of the same name; every set's syntax checked here."""
    table = read_sets_file(sets_file) if sets_file else {m: dict(SETS[m]) for m in MODELS}
    builtin = {m: set() if sets_file else set(SETS[m]) for m in MODELS}
    for item in extra:
        model, text = "far", item
        for m in MODELS:
            if item.startswith(m + ":"):
                model, text = m, item[len(m) + 1:]
        if "=" not in text:
            raise FarError(f"--accel-set takes '[far:|mar:]name=flags' such as "
                           f"'far:fast=--cfg-cache 1:4', got {item!r}.")
        name, flags = text.split("=", 1)
        name = _check_name(name, "--accel-set")
        table[model][name] = flags
        builtin[model].discard(name)
    return {m: {n: parse_flags(f, n) for n, f in table[m].items()} for m in MODELS}, builtin


def flags_text(opts: AccelOptions) -> str:
    """The options as ``far-runtime generate`` flags (canonical values)."""
    return " ".join(opts.flags())


def head_steps_needed(sets: dict, O: int) -> list[int]:
    """The shortcut head's O values FAR's sets reach (fused graphs to export for each)."""
    top = O
    for opts in sets.values():
        if opts.head_schedule:
            top = max(top, *(int(v) for v in opts.head_schedule.replace(",", ":").split(":")))
    return sorted({O} | {2 ** k for k in range(8) if 2 ** k <= top})


# --- the rule ---------------------------------------------------------------------------------

def passes(accuracy: float, frechet: float, base_accuracy: float, base_frechet: float, spread: float,
           accuracy_drop: float = ACCURACY_DROP, spread_factor: float = SPREAD_FACTOR) -> bool:
    """Accuracy at least the defaults' minus ``accuracy_drop`` (0.02: 2 points) and Fréchet
    distance at most the defaults' plus ``spread_factor`` x the seed-to-seed spread."""
    return bool(accuracy >= base_accuracy - accuracy_drop - 1e-12
                and frechet <= base_frechet + spread_factor * spread)


def best_entry(entries: list) -> dict | None:
    """The fastest (measured speed-up) passing entry, or None when none passes."""
    ok = [e for e in entries if e.get("passes")]
    return max(ok, key=lambda e: e["speedup"]) if ok else None


# --- measuring --------------------------------------------------------------------------------

def settings_for(K: int | None = None, O: int | None = None, cfg: float | None = None) -> dict:
    """The defaults' sampling settings: the README's, any of K, O, CFG replaced when given."""
    from ..quality.score import DEMO_SAMPLING     # imports torch: not at the top (bench's runtime worker is torch-free)
    s = {"K": DEMO_SAMPLING["K"], "O": DEMO_SAMPLING["O"], "cfg": DEMO_SAMPLING["cfg"],
         "cfg_schedule": DEMO_SAMPLING["cfg_schedule"], "temperature": DEMO_SAMPLING["temperature"]}
    for k, v in (("K", K), ("O", O), ("cfg", cfg)):
        if v is not None:
            s[k] = v
    return s


def settings_flags(s: dict, shortcut: bool) -> str:
    return (f"--K {s['K']}" + (f" --O {s['O']}" if shortcut else "")
            + f" --cfg {s['cfg']} --cfg-schedule {s['cfg_schedule']} --temperature {s['temperature']}")


def work(pipe, settings: dict, batch: int, opts: AccelOptions) -> dict:
    """Backbone and head FLOPs of one batch's plan (checks the options against the model)."""
    plan = pipe.plan(batch, settings["K"], settings["O"], settings["cfg"], decode=False, **opts.as_dict())
    return plan_flops(pipe.bundle.manifest["config"], plan)


def time_pair(pipe, settings: dict, opts: AccelOptions, labels, runs: int, warmup: int, seed: int) -> tuple:
    """Seconds of ``runs`` batches each of the defaults and of ``opts``, alternated D O O D ...
    with run r of both from seed ``seed + r``."""
    both = {DEFAULTS: {}, "set": opts.as_dict()}
    for i in range(warmup):
        for acc in both.values():
            pipe.generate(labels, seed=seed + i, **settings, **acc)
    times = {k: [] for k in both}
    for r in range(runs):
        for k in (list(both) if r % 2 == 0 else list(both)[::-1]):
            t0 = time.perf_counter()
            pipe.generate(labels, seed=seed + r, **settings, **both[k])
            times[k].append(time.perf_counter() - t0)
    return times[DEFAULTS], times["set"]


def quality(pipe, settings: dict, opts: AccelOptions, n: int, batch: int, seed: int) -> dict:
    """Accuracy and Fréchet distance of ``n`` images, labels cycling over the classes, batch i
    from seed ``seed + i``."""
    from ..quality.score import score_images
    labels = np.arange(n) % pipe.model["num_classes"]
    t0 = time.perf_counter()
    images = np.concatenate([pipe.generate(labels[s:s + batch], seed=seed + i, **settings, **opts.as_dict())
                             for i, s in enumerate(range(0, n, batch))])
    sc = score_images(images, labels)
    return {"accuracy": sc["accuracy"], "frechet": sc["frechet"], "n": sc["n"],
            "seconds": time.perf_counter() - t0}


def checked_sets(pipe, settings: dict, batch: int, sets: dict, builtin: set, model: str) -> tuple[dict, dict]:
    """``({name: (options, flops)}, {name: why not run})``: every set checked against the
    model before any work; a user's set that does not fit is an error, a built-in one is
    listed as not run."""
    ok, skipped = {}, {}
    for name, opts in sets.items():
        try:
            ok[name] = (opts, work(pipe, settings, batch, opts))
        except FarError as e:
            if name not in builtin:
                raise FarError(f"Option set '{name}' ({flags_text(opts)}) does not fit the {model.upper()} "
                               f"model: {e}") from None
            skipped[name] = str(e)
    return ok, skipped


def measure_model(pipe, model: str, checked: tuple, settings: dict, batch: int, runs: int,
                  warmup: int, seed: int, images: int, say) -> dict:
    """One model's entries (the defaults first), its defaults' scores and spread, its best;
    ``checked``: ``checked_sets``' answer."""
    shortcut = pipe.model["head_kind"] == "shortcut"
    labels = np.arange(batch) % pipe.model["num_classes"]
    base_flops = work(pipe, settings, batch, AccelOptions())
    ok, skipped = checked
    for name, why in skipped.items():
        say(f"{model}: set '{name}' does not fit this model, not run: {why}")
    total = lambda f: f["backbone"] + f["head"]          # noqa: E731
    entries, all_def = [], []
    for name, (opts, fl) in ok.items():
        d, o = time_pair(pipe, settings, opts, labels, runs, warmup, seed)
        all_def += d
        md, mo = statistics.median(d), statistics.median(o)
        say(f"{model}: {name}: {md:.3f}s defaults, {mo:.3f}s with {flags_text(opts)}: {md / mo:.2f}x")
        entries.append({"model": model, "name": name, "options": flags_text(opts), "speedup": md / mo,
                        "speedup_paired_median": statistics.median(a / b for a, b in zip(d, o)),
                        "work_ratio": total(base_flops) / total(fl), "images_per_s": batch / mo,
                        "defaults_images_per_s": batch / md, "seconds_median": mo,
                        "defaults_seconds_median": md, "seconds": o, "defaults_seconds": d,
                        "flops": fl, "accuracy": None, "frechet": None, "passes": None})
    if not all_def:                                      # no sets: the defaults timed on their own
        all_def = time_pair(pipe, settings, AccelOptions(), labels, runs, warmup, seed)[0]
    base = {"model": model, "name": DEFAULTS, "options": "", "speedup": 1.0, "work_ratio": 1.0,
            "images_per_s": batch / statistics.median(all_def), "seconds_median": statistics.median(all_def),
            "seconds": all_def, "flops": base_flops, "accuracy": None, "frechet": None, "passes": None}
    entries.insert(0, base)
    out = {"settings": settings, "settings_flags": settings_flags(settings, shortcut),
           "head_steps": settings["O"] if shortcut else pipe.randomness_steps(),
           "not_run": skipped, "defaults": None}
    if images > 0:
        say(f"{model}: scoring {images} images per set (defaults also on seed set B)")
        qa = quality(pipe, settings, AccelOptions(), images, batch, seed)
        qb = quality(pipe, settings, AccelOptions(), images, batch, seed + SEED_SET_B)
        spread = {"frechet": abs(qa["frechet"] - qb["frechet"]), "accuracy": abs(qa["accuracy"] - qb["accuracy"])}
        out["defaults"] = {"seed_set_a": qa, "seed_set_b": qb, "spread": spread,
                           "accuracy_floor": qa["accuracy"] - ACCURACY_DROP,
                           "frechet_ceiling": qa["frechet"] + SPREAD_FACTOR * spread["frechet"]}
        for e in entries:
            q = qa if e["name"] == DEFAULTS else quality(pipe, settings, ok[e["name"]][0], images, batch, seed)
            e.update(accuracy=q["accuracy"], frechet=q["frechet"], n_images=q["n"], quality_seconds=q["seconds"],
                     passes=passes(q["accuracy"], q["frechet"], qa["accuracy"], qa["frechet"], spread["frechet"]))
            say(f"{model}: {e['name']}: accuracy {q['accuracy']:.3f}, Fréchet {q['frechet']:.2f}, "
                f"passes {e['passes']}")
    out["entries"] = entries
    out["best"] = best_entry(entries)
    return out


# --- the command --------------------------------------------------------------------------------

def models_to_run(source, preset, mar, vae, skip_mar: bool, out: str, seed: int) -> tuple[dict, dict]:
    """``({model: {"source", "vae"}}, {model: why it is left out})``. No SOURCE: the demo FAR,
    and the demo MAR when its checkpoint ships in the assets (else MAR is left out, saying so)."""
    import os
    from ..defaults import ASSETS, DEFAULT_CHECKPOINT, DEFAULT_VAE
    from .models import preset_models
    if source is not None and preset is not None:
        raise FarError("Pass either a CHECKPOINT or BUNDLE, or --preset tiny|small|B (not both).")
    if preset and mar:
        raise FarError("--preset writes its own MAR model; leave out --mar (or pass a CHECKPOINT).")
    models, skipped = {}, {}
    if preset:
        models.update(preset_models(preset, os.path.join(out, "models"), seed, skip_mar))
    else:
        demo_mar = os.path.join(ASSETS, "mar_demo.pth")
        if source is None:
            source, vae = DEFAULT_CHECKPOINT, vae or DEFAULT_VAE
            if mar is None and not skip_mar and os.path.isfile(demo_mar):
                mar = demo_mar
        models["far"] = {"source": source, "vae": vae}
        if skip_mar:
            skipped["mar"] = "MAR was left out (--skip-mar)."
        elif mar is None:
            skipped["mar"] = ("MAR was skipped: no --mar CHECKPOINT was given"
                              + (f" and there is no MAR demo checkpoint at {demo_mar}." if source == DEFAULT_CHECKPOINT
                                 else " (the demo MAR goes with the demo FAR, when no SOURCE is given)."))
        else:
            models["mar"] = {"source": mar, "vae": vae}
    if "mar" in skipped and not skip_mar:
        log.warning(skipped["mar"])
    return models, skipped


def run_accel(source: str | None, out: str, preset: str | None = None, mar: str | None = None,
              vae: str | None = None, K: int | None = None, O: int | None = None, cfg: float | None = None,
              batch: int = 8, threads: int | None = None, runs: int = 5, warmup: int = 1, seed: int = 0,
              images: int = DEFAULT_IMAGES, sets_file: str | None = None, extra_sets=(),
              skip_mar: bool = False, say=None) -> dict:
    """Measure every option set of FAR (and MAR) against its defaults; write ``bench.json``,
    ``bench.md`` and ``accel.png`` into ``out``. ``--preset``: speed ratios only (random
    weights: no quality, ``passes`` null)."""
    import os
    from far_runtime.info import machine_info
    from far_runtime.pipeline import Pipeline
    from .accel_report import TARGETS, write_accel_report
    from .models import ensure_bundle
    from .sweep import machine_load
    say = say or log.info
    if runs < 1 or warmup < 0 or batch < 1 or images < 0:
        raise FarError(f"--runs and --batch must be at least 1, --warmup and --accel-images at least 0 "
                       f"(got {runs}, {batch}, {warmup}, {images}).")
    sets, builtin = option_sets(sets_file, extra_sets)
    settings = settings_for(K, O, cfg)
    threads = threads or os.cpu_count() or 1
    images = 0 if preset else images
    os.makedirs(out, exist_ok=True)
    t_start, load_before = time.time(), machine_load()
    models, skipped = models_to_run(source, preset, mar, vae, skip_mar, out, seed)
    report = {"command": None, "kind": "accel", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_start)),
              "preset": preset, "threads": threads, "batch": batch, "runs": runs, "warmup": warmup,
              "seed": seed, "seed_set_b": seed + SEED_SET_B, "images": images,
              "quality": ("not judged: --preset models have random weights (speed ratios only)" if preset
                          else "quality.score_images: the demo classifier's accuracy and Fréchet distance"),
              "rule": {"accuracy_drop": ACCURACY_DROP, "spread_factor": SPREAD_FACTOR,
                       "text": "accuracy >= the defaults' - 2 points and Fréchet <= the defaults' + "
                               "2 x |Fréchet(seed set A) - Fréchet(seed set B)| of the defaults"},
              "machine": machine_info(), "models": {}, "accel": [], "accel_best": {},
              "accel_skipped": skipped, "accel_targets": {}}
    pipes = {}
    for model in MODELS:                   # every model loaded and every set checked before any timing
        if model not in models:
            report["accel_best"][model] = None
            continue
        m = models[model]
        bundle = ensure_bundle(m["source"], m["vae"], os.path.join(out, "bundles", model),
                               head_steps_needed(sets["far"], settings["O"]), batch, say)
        pipe = Pipeline.load(bundle, threads=threads)
        want = "shortcut" if model == "far" else "diffusion"
        if pipe.variant.name not in ("far", "mar") or pipe.model["head_kind"] != want:
            raise FarError(f"bench --accel measures masked {model.upper()} models ({want} head); "
                           f"{m['source']} is {pipe.variant.title}.")
        pipes[model] = (pipe, bundle, checked_sets(pipe, settings, batch, sets[model], builtin[model], model))
    for model, (pipe, bundle, checked) in pipes.items():
        say(f"{model}: {len(checked[0])} option sets against the defaults, batch {batch}, {threads} threads")
        res = measure_model(pipe, model, checked, settings, batch, runs, warmup, seed, images, say)
        report["models"][model] = {"source": models[model]["source"], "bundle": os.path.abspath(bundle),
                                   **{k: res[k] for k in ("settings", "settings_flags", "head_steps",
                                                          "defaults", "not_run")}}
        report["accel"] += res["entries"]
        report["accel_best"][model] = res["best"]
        if res["best"] is not None:
            target, moon = TARGETS[model]
            report["accel_targets"][model] = {"target": target, "moonshot": moon,
                                              "best_speedup": res["best"]["speedup"],
                                              "met": res["best"]["speedup"] >= target,
                                              "moonshot_met": res["best"]["speedup"] >= moon}
    report["load"] = {"before": load_before, "after": machine_load()}
    report["seconds"] = time.time() - t_start
    write_accel_report(report, out)
    return report
