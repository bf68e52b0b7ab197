"""What a conversion and an evaluation produced, for people (plain-text tables; the library never
prints) and for machines (`report_json`: the schema is in docs/guide/reports.md), written with its plots
(`write_report`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..config import E_MAC_PJ, E_SOP_PJ
from ..errors import UserError, param
from ..files import Files, write_atomic
from . import layers as layer_kinds


def layers_table(layers) -> str:
    rows = [("layer", "role", "channels", "theta mean", "min", "max", "silent")]
    for l in layers:
        th = np.asarray(l.theta, np.float32)
        rows.append((l.name, l.role, str(l.channels or th.size), f"{th.mean():.4g}", f"{th.min():.4g}",
                     f"{th.max():.4g}", str(int(np.sum(th == 0)))))
    return _format(rows)


def _pct(x):
    return "-" if x is None else f"{100 * x:.2f}%"


def _num(x, fmt):
    return "-" if x is None else format(x, fmt)


# per task: (column, key in the metric's result, formatter)
TASK_COLUMNS = {
    "classify": [("top-1", "top1", _pct), ("top-5", "top5", _pct)],
    "segment": [("mIoU", "miou", _pct), ("pixel acc.", "pixel_accuracy", _pct)],
    "detect": [("mAP", "map", _pct), ("mAP@.5", "map50", _pct)],
    "regress": [("MSE", "mse", lambda x: _num(x, ".4g")), ("PSNR dB", "psnr", lambda x: _num(x, ".2f"))],
}


def _task_cells(task, figures) -> tuple:
    return tuple(fmt((figures or {}).get(key)) for _, key, fmt in TASK_COLUMNS[task])


def eval_table(result, e_sop: float = E_SOP_PJ, e_mac: float = E_MAC_PJ) -> str:
    lines = [f"samples: {result.samples}"]
    task = getattr(result, "task", None)
    macs = f"   ANN MACs/img: {result.ann_macs:.3g}" if result.ann_macs else ""
    if task and result.ann_metrics:
        lines.append("ANN: " + ", ".join(f"{name} {cell}" for (name, _, _), cell
                                         in zip(TASK_COLUMNS[task], _task_cells(task, result.ann_metrics))) + macs)
    elif result.ann_accuracy is not None:
        lines.append(f"ANN accuracy: {_pct(result.ann_accuracy)}" + macs)
    comp = getattr(result, "compensated_macs", 0.0)
    if comp:
        lines.append(f"spiking: {100 * (result.spiking_fraction or 0):.1f}% of the ANN's MACs run as spike-driven "
                     f"accumulates; the non-linear nodes between neurons do {comp:.3g} analog operations per step "
                     "(counted as MACs)")
    steps = any(r.get("steps_used") is not None for r in result.rows)
    delays = any("delay" in r for r in result.rows)
    figures = tuple(name for name, _, _ in TASK_COLUMNS[task]) if task else ("accuracy",)
    rows = [("T",) + (("D",) if delays else ()) + figures + ("agreement", "rel.error", "SOPs/img")
            + (("MACs/img",) if comp else ()) + ("energy vs ANN",) + (("mean steps",) if steps else ())]
    for r in result.rows:
        ratio = "-"
        if result.ann_macs and r["sops"] is not None:
            snn_pj = r.get("analog_macs", r["pre_macs"]) * e_mac + r["sops"] * e_sop
            ratio = f"{snn_pj / (result.ann_macs * e_mac):.3f}"
        cells = _task_cells(task, r.get("metrics")) if task else (_pct(r["accuracy"]),)
        rows.append((str(r["T"]),) + ((str(r.get("delay", "-")),) if delays else ()) + cells
                    + (_pct(r["agreement"]), "-" if r["rel_error"] is None else f"{r['rel_error']:.4f}",
                       "-" if r["sops"] is None else f"{r['sops']:.3g}")
                    + ((f"{r.get('analog_macs', r['pre_macs']):.3g}",) if comp else ()) + (ratio,)
                    + ((f"{r['steps_used']:.1f}",) if steps else ()))
    return "\n".join(lines + [_format(rows)])


def delay_line(result, info) -> str:
    """How the readout delay D of each evaluated T was chosen, and what became of the corrections."""
    per_t = ", ".join(f"T={r['T']} D={r['delay']}" for r in result.rows)
    rule = {"scaled": f"the model's D={info.delay} at its T={info.timesteps}, scaled in proportion to T",
            "fixed": "--delay, the same at every T",
            "auto": "--delay auto: per T, the D whose output is closest to the ANN's on this data",
            "own": f"the model's D={info.delay} at every T (built into this older looped model)"
            }.get(result.delay_rule, result.delay_rule)
    line = f"readout delay: {rule} ({per_t})"
    correction = (info.thresholds or {}).get("correction") or {}
    if correction.get("kind") and any(r["T"] != info.timesteps for r in result.rows):
        line += (f"; the {correction['kind']} correction made for T={correction.get('timesteps', info.timesteps)} "
                 "is kept at every T")
    return line


def _format(rows) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for k, r in enumerate(rows):
        out.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def inspection_text(d: dict) -> str:
    """The `onnx2snn inspect` report for people (the dict is inspection.inspect_model's)."""
    lines = [f"model: {d['model']} (opset {d['opset']}" + (f", {d['producer']})" if d["producer"] else ")")]
    lines.append("inputs:")
    lines += [f"  {i['name']}: {i['dtype']} {i['shape']} - {i['data']}" for i in d["inputs"]]
    lines.append("outputs: " + ", ".join(f"{o['name']} {o['type']}" for o in d["outputs"]))
    rows = [("activation", "kind", "channel axis", "channels", "cap")]
    rows += [(a["name"], a["kind"], str(a["axis"]), str(a["channels"] or "?"),
              "-" if a["cap"] is None else f"{a['cap']:g}") for a in d["activations"]]
    lines += [f"\n{len(d['activations'])} activation(s) become IF neurons:", _format(rows)]
    if d["maxpools"]:
        lines.append("\nmax pools after activations:")
        lines += [f"  {p['name']} (after {p['after']}): {p['handling']}" for p in d["maxpools"]]
    r = d["regions"]
    lines.append(f"\nregions: {len(r['pre'])} node(s) run once before the first neuron, {len(r['spiking'])} "
                 f"between neurons at every step, {len(r['post'])} once on the averaged readout")
    if d.get("sites"):
        lines.append(f"\n{len(d['sites'])} non-ReLU activation(s) spike (their outputs feed weighted layers):")
        lines += [f"  {s['op']} '{s['node']}': " + ("signed, a pair of neurons for the positive and the negative part"
                                                    if s["signed"] else "non-negative, one neuron") for s in d["sites"]]
    if d.get("compensated"):
        lines.append(f"\n{len(d['compensated'])} non-linear node(s) between neurons run with expectation compensation "
                     "(on the running means of their inputs, every step):")
        lines.append("  " + ", ".join(f"{c['op']} '{c['node']}'" for c in d["compensated"]))
    if d["analog"]:
        lines.append("kept analog (--keep-analog: on each step's input, not compensated): " + ", ".join(d["analog"]))
    if d.get("frozen"):
        lines.append("frozen to fixed affines (--freeze-norm, from calibration data): " + ", ".join(d["frozen"]))
    if d["blocking"]:
        lines.append(f"\nnot convertible: {len(d['blocking'])} blocking node(s):")
        lines += [f"  {b['op'] or ''} '{b['node']}': {b['reason']}"
                  + (" (--keep-analog would keep it analog)" if b["keep_analog_helps"] else "")
                  + (" (--freeze-norm would freeze it to a fixed per-channel affine from calibration data)"
                     if b.get("freeze_norm_helps") else "")
                  if b["node"] else f"  {b['reason']}" for b in d["blocking"]]
    else:
        lines.append("\nconvertible")
    if "nir" in d:
        v = d["nir"]
        if v["exportable"]:
            lines.append("NIR export (export-nir): yes; input: " + (
                "the image at every step (direct coding)" if v["input_coding"] == "direct"
                else f"the current into the first neurons, computed on the host ({v['reason']})"))
            after = [h["node"] for h in v["host"] if h["when"] == "after"]
            if after:
                lines.append("  stays on the host after the readout: " + ", ".join(after))
        else:
            lines.append(f"NIR export (export-nir): no: {v['reason']}")
    return "\n".join(lines)


def _energy_pj(row, e_sop: float, e_mac: float):
    if row.get("sops") is None:
        return None
    return row.get("analog_macs", row["pre_macs"]) * e_mac + row["sops"] * e_sop


def _sop_at(result, fraction: float):
    """SOP90 / SOP95 (Bu et al.): the SOPs per image at the first evaluated T whose task metric (top-1
    accuracy, mIoU, mAP, PSNR) reaches `fraction` of the ANN's (agreement with the ANN when there are
    no labels)."""
    task, ann = getattr(result, "task", None), None
    if task and result.ann_metrics and result.primary() is not None:
        basis, ann = ("accuracy" if result.primary_key == "top1" else result.primary_key), result.primary()
        value = result.primary
    else:
        basis = "accuracy" if result.ann_accuracy is not None else "agreement"
        ann = result.ann_accuracy if basis == "accuracy" else 1.0
        value = lambda r: r.get(basis)    # noqa: E731
    for r in result.rows:
        if value(r) is not None and r["sops"] is not None and value(r) >= fraction * ann:
            return {"T": r["T"], "sops": r["sops"], "basis": basis}
    return None


def report_json(result, e_sop: float = E_SOP_PJ, e_mac: float = E_MAC_PJ, model: str = "", analog=()) -> dict:
    """The report of an evaluation: per T, per layer, and the paper's energy metrics; `analog`:
    the nodes kept analog between neurons (--keep-analog), which do not spike."""
    ann_pj = result.ann_macs * e_mac if result.ann_macs else None
    rows = []
    for r in result.rows:
        pj = _energy_pj(r, e_sop, e_mac)
        rows.append({"T": r["T"], "delay": r.get("delay"), "accuracy": r["accuracy"], "metrics": r.get("metrics"),
                     "agreement": r["agreement"], "rel_error": r["rel_error"], "sops": r["sops"], "energy_pj": pj,
                     "energy_ratio": pj / ann_pj if pj is not None and ann_pj else None,
                     "frames_per_joule": 1e12 / pj if pj else None, "steps_used": r.get("steps_used"),
                     "analog_macs": r.get("analog_macs", r.get("pre_macs"))})
    return {"model": model, "samples": result.samples, "task": getattr(result, "task", None),
            "metric": getattr(result, "primary_key", None),
            "energy_constants_pj": {"sop": e_sop, "mac": e_mac},
            "ann": {"accuracy": result.ann_accuracy, "metrics": getattr(result, "ann_metrics", None),
                    "macs": result.ann_macs or None, "energy_pj": ann_pj,
                    "frames_per_joule": 1e12 / ann_pj if ann_pj else None},
            "timesteps": rows, "sop90": _sop_at(result, 0.90), "sop95": _sop_at(result, 0.95),
            "layers_T": result.layers_T, "layers": result.layers, "analog": list(analog),
            "spiking_fraction": getattr(result, "spiking_fraction", None),
            "compensated_macs_per_step": getattr(result, "compensated_macs", 0.0)}


def report_lines(report: dict) -> str:
    """The short terminal summary of a report (the JSON has the rest)."""
    parts = []
    for key, label in (("sop90", "SOP90"), ("sop95", "SOP95")):
        v = report[key]
        parts.append(f"{label} {v['sops']:.3g} (T={v['T']})" if v else f"{label} not reached")
    fpj = report["ann"]["frames_per_joule"]
    best = [r["frames_per_joule"] for r in report["timesteps"] if r["frames_per_joule"]]
    if fpj and best:
        parts.append(f"frames/J: ANN {fpj:.3g}, SNN {best[-1]:.3g} at T={report['timesteps'][-1]['T']}")
    if report["layers"]:
        rates = [l["firing_rate"] for l in report["layers"]]
        worst = max(report["layers"], key=lambda l: l["rate_error"] or 0)
        parts.append(f"firing rate {min(rates):.3f}-{max(rates):.3f} spikes/neuron/step at T={report['layers_T']}")
        if worst["rate_error"] is not None:
            parts.append(f"largest rate error {worst['rate_error']:.3f} ({worst['name']})")
        kinds = layer_kinds.by_kind(report["layers"])
        if kinds:          # where the error enters: mean rate error added over the layer's inputs, by kind
            parts.append("error added by layer kind: " + ", ".join(
                f"{kind} {added:+.3f} ({n} layers, rate error {mean:.3f})" for kind, n, mean, added in kinds))
    return "; ".join(parts)


PLOTS = ("accuracy_vs_T.png", "firing_rates.png", "rate_error.png", "thresholds.png")


def check_report_outputs(files: Files, report_path, plot_dir) -> None:
    if report_path:
        files.output(report_path, param("report_path"))
    if plot_dir:
        if not Path(plot_dir).is_dir():
            raise UserError(f"{param('plot_dir')} {plot_dir}: not a folder")
        for name in PLOTS:
            files.output(Path(plot_dir) / name, param("plot_dir"))


def write_report(result, report_path=None, plot_dir=None, e_sop: float = E_SOP_PJ,
                 e_mac: float = E_MAC_PJ, model: str = "", analog=()) -> dict:
    """The report (JSON) and plots of an evaluation (evaluation.EvalResult) with per-layer statistics."""
    from .plots import plot_report
    report = report_json(result, e_sop, e_mac, model, analog)
    if report_path:
        write_atomic(report_path, json.dumps(report, indent=1, sort_keys=True).encode(), param("report_path"))
    if plot_dir:
        plot_report(report, plot_dir)
    return report
