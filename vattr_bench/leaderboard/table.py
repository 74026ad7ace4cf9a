"""The leaderboard's table: every results.json under some folders read into one long table (a row per run ×
benchmark × method), and the ranked, filtered view the app shows. Plain functions of DataFrames, tested
without a browser.

Two runs are ranked together only under the same *protocol* (what the ground truth depends on apart from the
model: regions, K, ablation operator, split, source and real set, LDS subsets). Reference rows (the ablation
truth itself and the null baselines) are shown, marked and set apart, never ranked.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pandas as pd

from ..metrics.registry import COST_METRICS, HIGHER_IS_BETTER, METRICS, RANKING_METRIC

# What must match for two runs to be ranked together, with the default of each (what `evaluate` uses)
PROTOCOL_DEFAULTS = {"regions": "feature-ward", "k": 16, "ablation": "knockout", "split": "test",
                     "source": "synthetic", "real_set": None, "n_subsets": 32}
# schema-1 files have no `reference` flag: these were their reference rows (the truth, the random baseline)
SCHEMA1_REFERENCES = frozenset({"ablation", "random"})
# a schema-1 file has no r2_signed: it is ranked by r2, and its rank says so
SCHEMA1_FALLBACK = {"r2_signed": "r2"}
STATUS_FILE = "status.json"
LONG_COLUMNS = ["run", "file", "digest", "status", "schema_version", "model", "protocol", "benchmark", "method",
                "reference", "settings", "n_samples", "n_spans", "n_failed", "flags", *METRICS, "ci95"]


def protocol_of(config: dict) -> dict:
    """The protocol part of a run's config, each missing key at evaluate's default."""
    config = config if isinstance(config, dict) else {}
    return {key: config.get(key, default) for key, default in PROTOCOL_DEFAULTS.items()}


def protocol_label(protocol: dict) -> str:
    """One short line naming a protocol, e.g. "feature-ward · K16 · knockout · test · synthetic · 32 subsets"."""
    source = protocol["source"] + (f":{protocol['real_set']}" if protocol.get("real_set") else "")
    return (f"{protocol['regions']} · K{protocol['k']} · {protocol['ablation']} · {protocol['split']} · {source} · "
            f"{protocol['n_subsets']} subsets")


DEFAULT_PROTOCOL = protocol_label(PROTOCOL_DEFAULTS)


def results_digest(payload: dict) -> str:
    """Content digest of a results file: its model, protocol and numbers, not its date, paths or key order —
    the same run written twice, or copied under another name, has the same digest."""
    content = {"model": payload.get("model"), "protocol": protocol_of(payload.get("config")),
               "results": payload.get("results")}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_status(folder: Path) -> str:
    """A submission folder's review status ("pending review", "accepted", …); "" for a run that is not a
    submission (the shipped files, the user's own runs)."""
    try:
        status = json.loads((folder / STATUS_FILE).read_text(encoding="utf-8")).get("status", "")
        return str(status)[:40]
    except (OSError, ValueError, AttributeError):
        return ""


def load_results(paths, optional=()) -> tuple[pd.DataFrame, list[str]]:
    """Long table (one row per run × benchmark × method) from every results.json under ``paths`` (files or
    folders, searched recursively), and one message per file that could not be read: a malformed file is
    reported, never fatal to the others. A path in ``optional`` (the default folders) that does not exist
    is silently empty; any other missing path is reported."""
    rows, problems, files = [], [], []
    optional = {Path(p) for p in optional}
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(p.rglob("*.json")))
        elif p.is_file():
            files.append(p)
        elif p not in optional:
            problems.append(f"{p}: no such file or folder")
    for f in dict.fromkeys(files):  # a file under two of the paths counts once
        if f.name == STATUS_FILE:
            continue
        try:
            payload = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            problems.append(f"{f}: not a readable results.json ({type(e).__name__}: {e})")
            continue
        if not isinstance(payload, dict) or "results" not in payload:
            continue  # some other JSON (an estimator, a perf report): not a results file
        try:
            rows.extend(_rows_of(payload, f))
        except (TypeError, ValueError, AttributeError) as e:
            problems.append(f"{f}: not a readable results.json ({e})")
    return pd.DataFrame(rows, columns=LONG_COLUMNS), problems


def _rows_of(payload: dict, file: Path) -> list[dict]:
    config = payload.get("config") or {}
    if not isinstance(config, dict) or not isinstance(payload["results"], dict):
        raise TypeError("`config` and `results` must be tables")
    schema = int(payload.get("schema_version", 1))
    protocol = protocol_label(protocol_of(config))
    run = str(config.get("output_dir") or file.parent.name)
    settings = config.get("method_settings") or {}
    base = {"run": run, "file": str(file), "digest": results_digest(payload), "status": read_status(file.parent),
            "schema_version": schema, "model": str(payload.get("model", "?")), "protocol": protocol}
    rows = []
    for benchmark, methods in payload["results"].items():
        if not isinstance(methods, dict):
            raise TypeError(f"results[{benchmark!r}] is not a table of methods")
        for method, entry in methods.items():
            if not isinstance(entry, dict):
                raise TypeError(f"results[{benchmark!r}][{method!r}] is not a table of metrics")
            values = {m: _number(entry.get(m), f"results[{benchmark!r}][{method!r}][{m!r}]") for m in METRICS}
            flags = entry.get("flags") or []
            rows.append({**base, "benchmark": str(benchmark), "method": str(method),
                         "reference": bool(entry.get("reference", schema < 2 and method in SCHEMA1_REFERENCES)),
                         "settings": settings_summary(settings.get(method) if isinstance(settings, dict) else None),
                         "n_samples": entry.get("n_samples"), "n_spans": entry.get("n_spans"),
                         "n_failed": int(entry.get("n_failed") or 0),
                         "flags": "; ".join(map(str, flags)) if isinstance(flags, list) else str(flags),
                         **values, "ci95": entry.get("ci95") or {}})
    return rows


def _number(value, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} is {value!r}, not a number")
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float (JSON allows it)
        raise ValueError(f"{where} is {value!r}, out of any metric's range") from None
    return number if math.isfinite(number) else None


def settings_summary(settings, limit: int = 160) -> str:
    """One line of what a method says decides its scores (results.json's ``config.method_settings``), so
    that two rows of one method (say amortized with two estimators) say how they differ: scalar entries as
    key=value (a list of them comma-joined), a path by its file name, a list of tables item by item (";");
    nested tables (held-out scores) left out."""
    scalar = (str, int, float, bool)

    def flat(table: dict) -> list[str]:
        out = []
        for k, v in table.items():
            if isinstance(v, scalar):
                out.append(f"{k}={Path(v).name if k == 'path' and isinstance(v, str) else v}")
            elif isinstance(v, list) and all(isinstance(x, scalar) for x in v):
                out.append(f"{k}={','.join(map(str, v))}")
            elif isinstance(v, list):
                out.append("; ".join(" ".join(flat(x)) for x in v if isinstance(x, dict)))
        return out
    text = " ".join(flat(settings)) if isinstance(settings, dict) else ""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def protocols(frame: pd.DataFrame) -> list[str]:
    """The protocols present, the default one first, then by how many rows each has."""
    counts = frame["protocol"].value_counts()
    return sorted(counts.index, key=lambda p: (p != DEFAULT_PROTOCOL, -counts[p], p))


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")


def filter_rows(frame: pd.DataFrame, protocol: str | None = None, models=None, benchmarks=None,
                search: str = "") -> pd.DataFrame:
    """The rows of one protocol (None: all), of some models and benchmarks (None or empty: all), whose method,
    run or settings contain ``search`` (case-insensitive)."""
    keep = pd.Series(True, index=frame.index)
    if protocol:
        keep &= frame["protocol"] == protocol
    if models:
        keep &= frame["model"].isin(list(models))
    if benchmarks:
        keep &= frame["benchmark"].isin(list(benchmarks))
    if search and search.strip():
        needle = search.strip().lower()
        text = frame["method"].str.lower() + " " + frame["run"].str.lower() + " " + frame["settings"].fillna("").str.lower()
        keep &= text.str.contains(needle, regex=False)
    return frame[keep]


def metric_values(frame: pd.DataFrame, metric: str) -> tuple[pd.Series, pd.Series]:
    """Each row's value of ``metric``, and whether it is a schema-1 stand-in (r2 for r2_signed)."""
    values = frame[metric].astype("float64")
    fallback = SCHEMA1_FALLBACK.get(metric)
    stand_in = pd.Series(False, index=frame.index)
    if fallback is not None:
        stand_in = values.isna() & (frame["schema_version"] < 2) & frame[fallback].notna()
        values = values.where(~stand_in, frame[fallback].astype("float64"))
    return values, stand_in


def ranked_table(frame: pd.DataFrame, protocol: str | None = None, metric: str = RANKING_METRIC, models=None,
                 benchmarks=None, search: str = "", sort_by: str | None = None, intervals: bool = False) -> pd.DataFrame:
    """The leaderboard as shown: a row per (model, method, run) of one protocol, a column per benchmark with
    ``metric`` and their mean, then n_samples, ms per token, n_failed, flags, status, protocol and run.
    Ranked rows first, numbered 1, 2, … by the mean (best first), and shown in that order or sorted by
    ``sort_by`` (any column, its better value first); reference rows after them, unnumbered ("ref"). A schema-1 run ranked by r2
    in place of r2_signed has its rank marked "†". ``intervals``: benchmark cells as text with the run's 95%
    interval."""
    check_metric(metric)
    if protocol is None and len(frame):
        protocol = protocols(frame)[0]
    rows = filter_rows(frame, protocol, models, benchmarks, search)
    fixed = ["rank", "method", "model"]
    tail = ["mean", "n_samples", "ms/token", "n_failed", "flags", "status", "protocol", "run"]
    if rows.empty:
        return pd.DataFrame(columns=fixed + tail)
    values, stand_in = metric_values(rows, metric)
    rows = rows.assign(value=values, stand_in=stand_in)
    index = ["model", "method", "run"]
    # groupby, not pivot_table: only the (model, method, run) that exist, each kept even if its values are all missing
    wide = rows.groupby([*index, "benchmark"])["value"].mean().unstack("benchmark")
    bench_cols = list(wide.columns)
    # a row missing one of the benchmarks shown has no mean: it is not ranked above rows that have them all
    wide["mean"] = wide[bench_cols].mean(axis=1, skipna=False)
    grouped = rows.groupby(index)
    extra = pd.DataFrame({
        "reference": grouped["reference"].any(),
        "stand_in": grouped["stand_in"].any(),
        "n_samples": grouped["n_samples"].min(),  # the fewest of its benchmarks: what its numbers rest on
        "ms/token": grouped["sec_per_token"].mean() * 1000.0,
        "n_failed": grouped["n_failed"].sum().astype(int),
        "flags": grouped["flags"].agg(lambda f: "; ".join(dict.fromkeys(x for x in f if x))),
        "status": grouped["status"].first(),
        "protocol": grouped["protocol"].first(),
    })
    wide = wide.join(extra).reset_index()
    # the rank is by the metric's mean, whatever the rows are then sorted by
    ranked = wide[~wide["reference"]].sort_values("mean", ascending=_ascending("mean", metric, bench_cols),
                                                  na_position="last", kind="stable")
    ranked = ranked.assign(rank=[f"{i}{'†' if s else ''}" for i, s in enumerate(ranked["stand_in"], 1)])
    refs = wide[wide["reference"]].assign(rank="ref")
    key = sort_by if sort_by and sort_by in wide.columns else "mean"
    order = dict(ascending=_ascending(key, metric, bench_cols), na_position="last", kind="stable")
    ranked, refs = ranked.sort_values(key, **order), refs.sort_values(key, **order)
    out = pd.concat([ranked, refs], ignore_index=True)
    if intervals:
        ci = {(r.model, r.method, r.run, r.benchmark): (r.ci95 or {}).get(SCHEMA1_FALLBACK[metric] if r.stand_in else metric)
              for r in rows.itertuples()}
        for bench in bench_cols:
            out[bench] = [_with_interval(v, ci.get((m, meth, run, bench)))
                          for v, m, meth, run in zip(out[bench], out["model"], out["method"], out["run"])]
    out[[c for c in [*bench_cols, "mean"] if out[c].dtype.kind == "f"]] = out[
        [c for c in [*bench_cols, "mean"] if out[c].dtype.kind == "f"]].round(3)
    out["ms/token"] = out["ms/token"].map(_three_figures)
    return out[fixed + bench_cols + tail + ["reference", "stand_in"]]


def display_columns(table: pd.DataFrame) -> list[str]:
    """The columns the app shows (not the helper flags)."""
    return [c for c in table.columns if c not in ("reference", "stand_in")]


def _ascending(column: str, metric: str, bench_cols) -> bool:
    """Sort direction that puts the better value first: the metric's own for its columns, fewer first for
    cost and failures, more samples first, text columns A–Z."""
    if column in (*bench_cols, "mean"):
        return not HIGHER_IS_BETTER[metric]
    return column != "n_samples"


def _three_figures(ms):
    """Milliseconds per token to three significant figures: 0.00074 s is 0.74, never a rounded 0."""
    if ms is None or pd.isna(ms):
        return None
    return float(f"{ms:.3g}")


def _with_interval(value, interval) -> str:
    if value is None or pd.isna(value):
        return ""
    return f"{value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def run_details(frame: pd.DataFrame, model: str, method: str, run: str) -> str:
    """Markdown: everything the table leaves out for one row — settings, protocol, file, status, digest,
    flags and each benchmark's numbers with their intervals."""
    rows = frame[(frame["model"] == model) & (frame["method"] == method) & (frame["run"] == run)]
    if rows.empty:
        return ""
    first = rows.iloc[0]
    lines = [f"**{method}** · {model} · run `{run}`",
             f"- protocol: {first['protocol']}",
             f"- settings: {first['settings'] or '(none recorded)'}",
             f"- status: {first['status'] or 'not a submission'} · schema {first['schema_version']} · "
             f"digest `{first['digest']}`",
             f"- reference row (not ranked): {'yes' if first['reference'] else 'no'}"]
    if any(rows["flags"]):
        lines.append(f"- flags: {'; '.join(dict.fromkeys(f for f in rows['flags'] if f))}")
    metrics = [m for m in METRICS if rows[m].notna().any()]
    header = "| benchmark | n_samples | n_failed | " + " | ".join(metrics) + " |"
    lines += ["", header, "|" + "---|" * (3 + len(metrics))]
    for r in rows.sort_values("benchmark").itertuples():
        cells = []
        for m in metrics:
            v = getattr(r, m)
            if m in COST_METRICS and m == "sec_per_token" and v is not None and not pd.isna(v):
                cells.append(f"{v * 1000:.3g} ms")
            else:
                cells.append(_with_interval(v, (r.ci95 or {}).get(m)))
        lines.append(f"| {r.benchmark} | {r.n_samples} | {r.n_failed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
