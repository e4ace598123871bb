"""The report's quantization section: each student's full-precision and quantized variants side by side.

Why: the question a user asks of quantization is "what did it cost and what did it buy?", so each
variant is shown beside its full-precision student on the same held-out problems: greedy accuracy
with a 95% Wilson interval, the paired difference to full precision (same problems, CI
from resampling problems), weight bytes on disk and decode tokens/s. Everything is read from files
the evaluate and quantize stages wrote (``evaluate/<student>/completions.jsonl``,
``quantize/<student>/<variant>/{summary.json,eval/completions.jsonl}``).

    section = collect("runs/demo", cfg)      # None when no variant has been made
    markdown(section), html(section)
"""

from __future__ import annotations

import html as _html
import json
import math
from pathlib import Path
from typing import Any, Mapping

from reasondistill.layout import Layout
from reasondistill.records import iter_jsonl

REFERENCE_NOTE = ("full precision = the trained student in float32 (the issue's 'bf16' reference; this CPU "
                  "computes fp32, and bf16 weights would round the same student a second time)")


def _correct(path: Path) -> dict[str, bool]:
    return {obj["problem_id"]: obj["verdict"] == "correct" for _, obj in iter_jsonl(path)} if path.exists() else {}


def collect(root: str | Path, cfg) -> dict[str, Any] | None:
    """``{"note", "students": {name: {"reference": {...}, "variants": {label: {...}}}}}`` or None."""
    from reasondistill.evaluate.metrics import with_ci

    lay = Layout(root)
    students: dict[str, Any] = {}
    for s in cfg.students:
        variants = {}
        ref_rows = _correct(lay.eval(s.name).completions)
        for q in getattr(s, "quantize", None) or []:
            f = lay.quantize(s.name, q.label)
            if not f.summary.exists():
                continue
            summary = json.loads(f.summary.read_text())
            rows = _correct(f.eval.completions)
            shared = sorted(rows.keys() & ref_rows.keys())
            variants[q.label] = {
                **{k: summary.get(k) for k in ("method", "bits", "group_size", "teacher", "format", "size_ratio",
                                              "speed_ratio", "quantized_layers")},
                "accuracy_ci": with_ci([float(v) for v in rows.values()]),
                "delta_ci": with_ci([float(rows[i]) - float(ref_rows[i]) for i in shared]) if shared else None,
                "weight_bytes": summary["quantized"]["weight_bytes"],
                "tokens_per_s": summary["quantized"].get("tokens_per_s"),
                "reference_tokens_per_s": summary["reference"].get("tokens_per_s"),
                "reference_weight_bytes": summary["reference"]["weight_bytes"],
                "finetune": summary.get("finetune"),
            }
        if variants:
            first = next(iter(variants.values()))
            students[s.name] = {"reference": {"accuracy_ci": with_ci([float(v) for v in ref_rows.values()])
                                              if ref_rows else None,
                                              "weight_bytes": first["reference_weight_bytes"]},
                                "variants": variants}
    return {"note": REFERENCE_NOTE, "students": students} if students else None


def _pct(m: Mapping[str, Any] | None, signed: bool = False) -> str:
    if not m or m.get("value") is None or (isinstance(m["value"], float) and math.isnan(m["value"])):
        return "–"
    spec = "+.1f" if signed else ".1f"
    return f"{100 * m['value']:{spec}} [{100 * m['ci_low']:{spec}}, {100 * m['ci_high']:{spec}}]"


def _num(x: Any, spec: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


HEAD = ["student", "variant", "method", "bits", "group", "accuracy % [95% CI]", "Δ vs full precision, points [95% CI]",
        "weights kB", "size vs fp", "decode tok/s (fp → quantized)", "speed vs fp"]


def table_rows(section: Mapping[str, Any]) -> list[list[str]]:
    out = []
    for name, st in section["students"].items():
        ref = st["reference"]
        out.append([name, "full precision (fp32)", "–", "32", "–", _pct(ref["accuracy_ci"]), "–",
                    _num(ref["weight_bytes"] / 1e3, ".0f"), "1.00", "–", "1.00"])
        for label, v in st["variants"].items():
            speed = (f"{_num(v['reference_tokens_per_s'], '.0f')} → {_num(v['tokens_per_s'], '.0f')}"
                     if v.get("tokens_per_s") else "–")
            method = v["method"] + (f" (teacher: {v['teacher']})" if v.get("teacher") else "")
            out.append([name, label, method, str(v["bits"]), _num(v["group_size"], "d") if v["group_size"] else "channel",
                        _pct(v["accuracy_ci"]), _pct(v["delta_ci"], signed=True), _num(v["weight_bytes"] / 1e3, ".0f"),
                        _num(v["size_ratio"], ".2f"), speed, _num(v["speed_ratio"], ".2f")])
    return out


FOOT = ("CIs: 95% Wilson intervals for accuracy, percentile bootstrap over the held-out problems for Δ; Δ is paired (same problems). "
        "Weights: bytes of the safetensors files. Decode: greedy, batch size 1, best of 2 passes, measured in "
        "turns in one process. ")


def markdown(section: Mapping[str, Any] | None) -> str:
    if not section:
        return ""
    lines = ["## Quantized students (quantize stage)", "", "| " + " | ".join(HEAD) + " |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(section)]
    fmt = {v.get("format") for st in section["students"].values() for v in st["variants"].values()}
    return "\n".join(lines + ["", FOOT + section["note"] + ". Format: " + ", ".join(sorted(f for f in fmt if f)) + ".",
                              ""])


def html(section: Mapping[str, Any] | None) -> str:
    if not section:
        return ""
    esc = lambda x: _html.escape(str(x), quote=True)  # noqa: E731
    head = "".join(f"<th>{esc(h)}</th>" for h in HEAD)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in table_rows(section))
    return (f'<h2>Quantized students</h2><table id="quantize-table"><thead><tr>{head}</tr></thead><tbody>{body}'
            f'</tbody></table><p class="muted">{esc(FOOT + section["note"])}.</p>')
