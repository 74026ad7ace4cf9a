"""Checking and storing a leaderboard submission: a results.json and, optionally, the samples.jsonl behind it.

`validate_submission` reads the bytes as data only — JSON is parsed, nothing is imported or executed — and
returns every problem it finds in plain words (an empty list: valid). `store_submission` writes a valid one
under the results folder, in a new subfolder named by its content digest (never by a name the user gave),
with a status file that starts at "pending review"; a maintainer sets it to "accepted" after review.

    vattr-bench check-submission runs/my-run            # a folder with results.json [+ samples.jsonl]
    vattr-bench check-submission runs/my-run/results.json
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .metrics.registry import COST_METRICS, METRICS, SPAN_METRICS
from .leaderboard.table import PROTOCOL_DEFAULTS, STATUS_FILE, protocol_of, results_digest

SUPPORTED_SCHEMAS = (1, 2)
MAX_RESULTS_BYTES = 4 * 1024 * 1024  # a results.json of 5 benchmarks × 20 methods is ~100 kB
MAX_SAMPLES_BYTES = 64 * 1024 * 1024  # samples.jsonl of 50 samples × 5 benchmarks × 10 methods is a few MB
MAX_NAME_LENGTH = 80
MAX_LISTED = 12  # problems of one kind listed before "and N more"
# model, benchmark and method names end up in a table and in HTML: letters, digits and a few separators only
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+@/()\- ]*")
# magic bytes of archives and compressed files: never unpacked, refused
ARCHIVE_MAGIC = {b"PK\x03\x04": "zip", b"PK\x05\x06": "zip", b"\x1f\x8b": "gzip", b"BZh": "bzip2",
                 b"\xfd7zXZ\x00": "xz", b"7z\xbc\xaf\x27\x1c": "7z", b"Rar!": "rar", b"\x28\xb5\x2f\xfd": "zstd"}
ARCHIVE_SUFFIXES = (".zip", ".gz", ".tgz", ".tar", ".bz2", ".xz", ".7z", ".rar", ".zst")
# keys every results.json has, and those schema 2 added (metric names come from the registry)
TOP_KEYS = {1: ("schema_version", "model", "config", "results"),
            2: ("schema_version", "model", "config", "results", "ranking_metric")}
ENTRY_KEYS = {1: ("n_samples", "n_spans"),
              2: ("n_samples", "n_spans", "n_failed", "reference", "reads_ground_truth", "flags")}
SCHEMA2_ONLY_METRICS = ("r2_signed", "r2_partial_size")
TOLERANCE = 1e-6  # results.json holds the float64 means; a mean recomputed from samples.jsonl must agree to this


@dataclass
class CheckedSubmission:
    problems: list[str] = field(default_factory=list)
    payload: dict | None = None
    digest: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_submission(results: bytes, samples: bytes | None = None, existing: dict[str, str] | None = None,
                        results_name: str = "results.json", samples_name: str = "samples.jsonl") -> CheckedSubmission:
    """Every problem of a submission, in plain words. ``existing``: digest -> where that run already is (for
    the duplicate check). The names are only reported on, never used to store anything."""
    checked = CheckedSubmission()
    problems = checked.problems
    for name, data, limit in ((results_name, results, MAX_RESULTS_BYTES), (samples_name, samples, MAX_SAMPLES_BYTES)):
        if data is not None:
            problems.extend(_file_problems(name, data, limit))
    if problems:
        return checked  # not read further: an archive, a huge file or a hostile name is not parsed
    try:
        payload = json.loads(results.decode("utf-8"))
    except UnicodeDecodeError as e:
        problems.append(f"{results_name} is not UTF-8 text ({e.reason} at byte {e.start})")
        return checked
    except json.JSONDecodeError as e:
        problems.append(f"{results_name} is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})")
        return checked
    if not isinstance(payload, dict):
        problems.append(f"{results_name} must hold a JSON object (a table), not a {type(payload).__name__}")
        return checked
    checked.payload = payload
    problems.extend(_results_problems(payload, results_name))
    if problems:
        return checked
    checked.digest = results_digest(payload)
    if existing and checked.digest in existing:
        problems.append(f"these results are already on the leaderboard ({existing[checked.digest]}; content digest "
                        f"{checked.digest}): the same model, protocol and numbers")
    if samples is not None:
        problems.extend(_samples_problems(payload, samples, samples_name))
    return checked


def _file_problems(name: str, data: bytes, limit: int) -> list[str]:
    problems = []
    if not _plain_file_name(name):
        problems.append(f"the file name {name[:100]!r} is not a plain file name (no folders, '..', control "
                        "characters or names over 200 characters)")
    kind = next((k for magic, k in ARCHIVE_MAGIC.items() if data.startswith(magic)), None)
    if kind or name.lower().endswith(ARCHIVE_SUFFIXES):
        problems.append(f"{_shown(name)} is an archive ({kind or name.rsplit('.', 1)[-1]}); archives are not "
                        "unpacked: upload results.json and samples.jsonl themselves")
    if len(data) > limit:
        problems.append(f"{_shown(name)} is {len(data) / 2**20:.1f} MB; the limit is {limit / 2**20:.0f} MB")
    if not data.strip():
        problems.append(f"{_shown(name)} is empty")
    return problems


def _plain_file_name(name: str) -> bool:
    return (0 < len(name) <= 200 and name not in (".", "..") and "/" not in name and "\\" not in name
            and not any(ord(c) < 32 or ord(c) == 127 for c in name))


def _shown(name: str) -> str:
    return name if _plain_file_name(name) else "the file"


def _safe_name(text) -> bool:
    return isinstance(text, str) and len(text) <= MAX_NAME_LENGTH and SAFE_NAME.fullmatch(text) is not None \
        and ".." not in text


def _listed(problems: list[str]) -> list[str]:
    if len(problems) <= MAX_LISTED:
        return problems
    return problems[:MAX_LISTED] + [f"… and {len(problems) - MAX_LISTED} more problems of the same kinds"]


def _results_problems(payload: dict, name: str) -> list[str]:
    from .benchmarks import FAMILIES, SOURCES, SPLITS
    from .regions import OPERATORS, PROTOCOLS
    from .regions.protocols import K_RANGE

    version = payload.get("schema_version")
    if version not in SUPPORTED_SCHEMAS:
        return [f"{name}: schema_version is {version!r}; this leaderboard reads versions "
                f"{', '.join(map(str, SUPPORTED_SCHEMAS))} (results.json written by `vattr-bench evaluate`)"]
    problems = [f"{name}: the key {key!r} is missing" for key in TOP_KEYS[version] if key not in payload]
    if not _safe_name(payload.get("model")):
        problems.append(f"{name}: model {str(payload.get('model'))[:100]!r} is not a name of up to {MAX_NAME_LENGTH} "
                        "letters, digits and _ . : + @ / ( ) - or spaces")
    config = payload.get("config")
    if not isinstance(config, dict):
        problems.append(f"{name}: config must be a table with the run's protocol")
        config = {}
    missing = [k for k in PROTOCOL_DEFAULTS if k != "real_set" and k not in config]
    if missing:
        problems.append(f"{name}: the protocol is incomplete: config lacks {', '.join(missing)}")
    protocol = protocol_of(config)
    allowed = {"regions": PROTOCOLS, "ablation": OPERATORS, "split": SPLITS, "source": SOURCES}
    for key, choices in allowed.items():
        if key in config and protocol[key] not in choices:
            problems.append(f"{name}: config.{key} is {protocol[key]!r}; one of {', '.join(choices)}")
    if "k" in config and not (isinstance(protocol["k"], int) and K_RANGE[0] <= protocol["k"] <= K_RANGE[1]):
        problems.append(f"{name}: config.k is {protocol['k']!r}; a whole number in {K_RANGE[0]}–{K_RANGE[1]}")
    if "n_subsets" in config and not (isinstance(protocol["n_subsets"], int) and protocol["n_subsets"] >= 2):
        problems.append(f"{name}: config.n_subsets is {protocol['n_subsets']!r}; a whole number of at least 2")
    results = payload.get("results")
    if not isinstance(results, dict) or not results:
        return problems + [f"{name}: results must be a non-empty table benchmark -> method -> metrics"]
    entry_problems = []
    for benchmark, methods in results.items():
        if benchmark not in FAMILIES:
            entry_problems.append(f"{name}: benchmark {str(benchmark)[:60]!r} is not one of {', '.join(FAMILIES)}")
            continue
        if not isinstance(methods, dict) or not methods:
            entry_problems.append(f"{name}: results.{benchmark} must be a non-empty table method -> metrics")
            continue
        for method, entry in methods.items():
            where = f"{name}: results.{benchmark}.{method if _safe_name(method) else '?'}"
            if not _safe_name(method):
                entry_problems.append(f"{name}: method name {str(method)[:100]!r} in results.{benchmark} is not a "
                                      f"name of up to {MAX_NAME_LENGTH} letters, digits and _ . : + @ / ( ) -")
            if not isinstance(entry, dict):
                entry_problems.append(f"{where} must be a table of metrics")
                continue
            entry_problems.extend(_entry_problems(entry, version, where))
    return problems + _listed(entry_problems)


def _entry_problems(entry: dict, version: int, where: str) -> list[str]:
    problems = []
    metrics = [m for m in METRICS if version >= 2 or m not in SCHEMA2_ONLY_METRICS]
    for key in (*metrics, *ENTRY_KEYS[version]):
        if key not in entry:
            problems.append(f"{where}: the key {key!r} is missing")
    for m in metrics:
        value = entry.get(m)
        if value is None:
            continue  # a metric with no defined value (e.g. pointing game without evidence boxes)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            problems.append(f"{where}.{m} is {value!r}, not a finite number")
            continue
        lo, hi = METRICS[m].range
        if (lo is not None and value < lo - TOLERANCE) or (hi is not None and value > hi + TOLERANCE):
            problems.append(f"{where}.{m} is {value:g}, outside its range "
                            f"[{'-∞' if lo is None else f'{lo:g}'}, {'∞' if hi is None else f'{hi:g}'}]")
    for key in ("n_samples", "n_spans", "n_failed", "n_spans_scored", "n_spans_undefined"):
        value = entry.get(key)
        if key in entry and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            problems.append(f"{where}.{key} is {value!r}, not a whole number ≥ 0")
    for key in ("reference", "reads_ground_truth"):
        if key in entry and not isinstance(entry[key], bool):
            problems.append(f"{where}.{key} is {entry[key]!r}, not true or false")
    if entry.get("reads_ground_truth") is True and entry.get("reference") is False:
        problems.append(f"{where}: a method that reads the ablation ground truth must be marked reference: true")
    flags = entry.get("flags", [])
    if not (isinstance(flags, list) and all(isinstance(f, str) and len(f) <= 200 for f in flags)):
        problems.append(f"{where}.flags must be a list of short texts")
    ci = entry.get("ci95", {})
    if not isinstance(ci, dict):
        problems.append(f"{where}.ci95 must be a table metric -> [low, high] or null")
    else:
        for m, interval in ci.items():
            if interval is None:
                continue
            if not (isinstance(interval, list) and len(interval) == 2
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in interval)
                    and interval[0] <= interval[1]):
                problems.append(f"{where}.ci95.{m} is {str(interval)[:60]}, not [low, high] with low ≤ high")
    return problems


def _samples_problems(payload: dict, samples: bytes, name: str) -> list[str]:
    """samples.jsonl against the aggregates: for every (benchmark, method) of results.json, the samples
    and spans counted, failures, and the means of the span and cost metrics recomputed from the lines."""
    try:
        text = samples.decode("utf-8")
    except UnicodeDecodeError as e:
        return [f"{name} is not UTF-8 text ({e.reason} at byte {e.start})"]
    groups: dict[tuple, list[dict]] = {}
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{name} line {number} is not valid JSON ({e.msg})")
            continue
        if not (isinstance(record, dict) and isinstance(record.get("benchmark"), str)
                and isinstance(record.get("method"), str) and "sample_id" in record):
            problems.append(f"{name} line {number} lacks benchmark, sample_id or method")
            continue
        if "error" not in record and not isinstance(record.get("span_metrics"), dict):
            problems.append(f"{name} line {number} ({record['method']} on {record['sample_id']}) has neither "
                            "span_metrics nor error")
            continue
        groups.setdefault((record["benchmark"], record["method"]), []).append(record)
    if problems:
        return _listed(problems)
    version = payload["schema_version"]
    for benchmark, methods in payload["results"].items():
        for method, entry in methods.items():
            records = groups.pop((benchmark, method), None)
            if records is None:
                problems.append(f"{name} has no line for {method} on {benchmark}, which results.json reports")
                continue
            problems.extend(_aggregate_problems(entry, records, f"{method} on {benchmark}", version))
    for benchmark, method in sorted(groups):
        problems.append(f"{name} has lines for {method} on {benchmark}, which results.json does not report")
    return _listed(problems)


def _aggregate_problems(entry: dict, records: list[dict], what: str, version: int) -> list[str]:
    ok = [r for r in records if "error" not in r]
    problems = []
    counts = {"n_samples": len(ok), "n_spans": sum(int(r.get("n_spans", 0)) for r in ok)}
    if "n_failed" in entry or len(ok) < len(records):
        counts["n_failed"] = len(records) - len(ok)
    for key, value in counts.items():
        if entry.get(key, 0) != value:
            problems.append(f"{what}: results.json says {key} {entry.get(key, 0)}, samples.jsonl has {value}")
    for m in SPAN_METRICS:
        if entry.get(m) is None or not all(m in r["span_metrics"] for r in ok):
            continue  # a metric the lines do not carry (a schema-2 metric in an older samples.jsonl) is not checked
        per_span = [v for r in ok for v in r["span_metrics"][m]]
        # schema 1 drops undefined (null) spans from a mean; schema 2 counts an undefined correlation as 0
        readings = [_mean(per_span, None)]
        if version >= 2 and any(v is None for v in per_span):
            readings.append(_mean(per_span, 0.0))
        if not any(r is not None and math.isclose(r, entry[m], rel_tol=TOLERANCE, abs_tol=TOLERANCE) for r in readings):
            shown = ", ".join("none" if r is None else f"{r:.6g}" for r in readings)
            problems.append(f"{what}: results.json says {m} {entry[m]:.6g}, the mean over samples.jsonl's spans is {shown}")
    for m in COST_METRICS:
        values = [r.get(m) for r in ok if isinstance(r.get(m), (int, float))]
        if entry.get(m) is None or not values:
            continue
        mean = sum(values) / len(values)
        if not math.isclose(mean, entry[m], rel_tol=TOLERANCE, abs_tol=1e-9):
            problems.append(f"{what}: results.json says {m} {entry[m]:.6g}, samples.jsonl's mean is {mean:.6g}")
    return problems


def _mean(values, undefined: float | None) -> float | None:
    """Mean of per-span values; an undefined value (null) is dropped (``undefined`` None) or counted as it."""
    kept = [float(v) if isinstance(v, (int, float)) and math.isfinite(v) else undefined for v in values]
    kept = [v for v in kept if v is not None]
    return sum(kept) / len(kept) if kept else None


def existing_digests(frame) -> dict[str, str]:
    """digest -> "run R (file F)" of every run a leaderboard table (`load_results`) holds."""
    if frame is None or frame.empty:
        return {}
    first = frame.drop_duplicates("digest")
    return {d: f"run {r} ({f})" for d, r, f in zip(first["digest"], first["run"], first["file"])}


def store_submission(checked: CheckedSubmission, results: bytes, samples: bytes | None, root: Path) -> Path:
    """Write a valid submission under ``root``/<digest>/ (results.json, samples.jsonl when given, status.json
    "pending review") and return the folder. The folder name is the content digest (hex), never a name the
    user gave; an existing folder is never overwritten."""
    if not checked.ok or checked.digest is None or not re.fullmatch(r"[0-9a-f]{16}", checked.digest):
        raise ValueError("only a submission that passed validation can be stored")
    root = Path(root).resolve()
    folder = (root / checked.digest).resolve()
    if folder.parent != root:
        raise ValueError(f"refusing to write outside {root}")
    root.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()
    except FileExistsError:
        raise ValueError(f"a submission with digest {checked.digest} is already stored") from None
    (folder / "results.json").write_bytes(results)
    if samples is not None:
        (folder / "samples.jsonl").write_bytes(samples)
    status = {"status": "pending review", "received": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "digest": checked.digest}
    (folder / STATUS_FILE).write_text(json.dumps(status, indent=1), encoding="utf-8")
    return folder


def read_bundle(path: Path) -> tuple[bytes, bytes | None, str, str | None]:
    """(results bytes, samples bytes or None, their names) of a results.json path or a folder holding
    results.json and optionally samples.jsonl. Sizes are checked before reading (a huge file is not read)."""
    path = Path(path)
    if path.is_dir():
        results_path, samples_path = path / "results.json", path / "samples.jsonl"
        if not results_path.is_file():
            raise FileNotFoundError(f"{path} holds no results.json")
    elif path.is_file():
        results_path, samples_path = path, path.parent / "samples.jsonl"
    else:
        raise FileNotFoundError(f"no such file or folder: {path}")
    return (_read_capped(results_path, MAX_RESULTS_BYTES), _read_capped(samples_path, MAX_SAMPLES_BYTES)
            if samples_path.is_file() else None, results_path.name, samples_path.name if samples_path.is_file() else None)


def _read_capped(path: Path, limit: int) -> bytes:
    """The file's bytes, or its first limit+1 bytes when it is bigger (enough for the size check to fail)."""
    with open(path, "rb") as f:
        return f.read(limit + 1)


def check_path(path: Path, against=()) -> list[str]:
    """Every problem of the submission at ``path`` (see `read_bundle`), duplicates looked for among the
    results under ``against`` (folders that do not exist are skipped; the submission's own file is not its
    own duplicate)."""
    from .leaderboard.table import load_results

    results, samples, results_name, samples_name = read_bundle(path)
    frame, _ = load_results([p for p in against if Path(p).exists()])
    own = Path(path) / "results.json" if Path(path).is_dir() else Path(path)
    if len(frame):
        frame = frame[[Path(f).resolve() != own.resolve() for f in frame["file"]]]
    checked = validate_submission(results, samples, existing_digests(frame), results_name, samples_name or "samples.jsonl")
    return checked.problems



STANDARD_LIMIT = 50  # samples per benchmark in a submission: the shipped leaderboard run's 50 test samples each


def make_bundle(method: str, model: str = "vattr-tiny", output_dir: Path = Path("runs/submission"),
                limit: int = STANDARD_LIMIT, device: str = "cpu") -> Path:
    """`vattr-bench submit`: run ``method`` under the standard protocol (evaluate's defaults: feature-ward
    regions, K 16, knockout, the synthetic test split, 32 LDS subsets) on the first ``limit`` test samples of
    every benchmark, and leave in ``output_dir`` what the Submit tab takes — results.json, samples.jsonl —
    with the method's plugin file copied beside them and a short report.md. Returns the folder."""
    import inspect
    import shutil

    from .evaluate import EvalConfig, evaluate
    from .methods import load_method, parse_method_spec

    loaded = load_method(method)  # fails here, before any model loads, on a bad spec
    output_dir = Path(output_dir)
    cfg = EvalConfig(model=model, methods=[method], benchmark="all", limit=limit, output_dir=str(output_dir),
                     device=device)
    results = evaluate(cfg)
    plugin = parse_method_spec(method).file  # path/file.py:Class[:arguments]
    if plugin is None:
        source = inspect.getsourcefile(type(loaded))
        plugin = Path(source) if source and "vattr_bench" not in Path(source).parts else None
    if plugin is not None:
        shutil.copyfile(plugin, output_dir / plugin.name)
    (output_dir / "report.md").write_text(bundle_report(results, method, plugin, limit), encoding="utf-8")
    return output_dir


def bundle_report(results: dict, method: str, plugin: Path | None, limit: int) -> str:
    from .leaderboard.table import protocol_label

    lines = [f"# Submission: {method} on {results.get('model')}", "",
             f"- protocol: {protocol_label(protocol_of(results.get('config')))}",
             f"- samples per benchmark: {limit}" + ("" if limit == STANDARD_LIMIT else
                                                    f" (the standard is {STANDARD_LIMIT}; ranked beside it, with "
                                                    "n_samples saying how many)"),
             f"- plugin file: {plugin.name if plugin else 'none (a built-in method)'}",
             f"- results.json schema {results.get('schema_version')}, written {results.get('date')}", "",
             "| benchmark | method | r2_signed | r2 | lds | ms/token | n_samples | n_failed |", "|---|---|---|---|---|---|---|---|"]
    for benchmark, methods in results.get("results", {}).items():
        for name, entry in methods.items():
            def cell(key, scale=1.0, entry=entry):
                value = entry.get(key)
                return "–" if value is None else f"{value * scale:.3g}"
            lines.append(f"| {benchmark} | {name} | {cell('r2_signed')} | {cell('r2')} | {cell('lds')} | "
                         f"{cell('sec_per_token', 1000)} | {entry.get('n_samples')} | {entry.get('n_failed', 0)} |")
    lines += ["", "Upload results.json and samples.jsonl in the leaderboard's Submit tab; send the plugin file with "
              "it for review."]
    return "\n".join(lines) + "\n"
