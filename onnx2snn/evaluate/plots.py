"""`--plot DIR`: PNG figures of a report (matplotlib, the onnx2snn[plots] extra).

accuracy_vs_T.png (the task's metric - top-1, mIoU, mAP or PSNR - or accuracy, and agreement
against T, with the ANN's line), firing_rates.png,
rate_error.png (per layer, at the report's largest T) and thresholds.png (per-layer threshold
distributions). Each file is written atomically.
"""
from __future__ import annotations

import io
from pathlib import Path

from ..errors import UserError, param
from ..files import write_atomic


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UserError(f"{param('plot_dir')}: matplotlib is not installed (pip install 'onnx2snn[plots]')") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return write_atomic(path, buf.getvalue(), param("plot_dir"))


def plot_report(report: dict, folder) -> list:
    """Write the figures of `report` (report.report_json) into `folder`; returns their paths."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{param('plot_dir')} {folder}: not a folder")
    plt = _pyplot()
    written = []
    rows = report["timesteps"]
    ts = [r["T"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    metric, task = report.get("metric"), report.get("task")
    if metric:       # the task's headline figure (top1, miou, map: fractions; psnr: dB)
        scale, unit = (1, "dB") if metric == "psnr" else (100, "%")
        values = [(r.get("metrics") or {}).get(metric) for r in rows]
        ann = (report["ann"].get("metrics") or {}).get(metric)
        if any(v is not None for v in values):
            ax.plot(ts, [scale * (v or 0) for v in values], marker="o", label=f"SNN {metric}")
        if ann is not None:
            ax.axhline(scale * ann, color="k", linestyle="--", label=f"ANN {metric}")
        if metric != "psnr" and any(r["agreement"] is not None for r in rows):
            ax.plot(ts, [100 * (r["agreement"] or 0) for r in rows], marker="o", label="agreement with the ANN")
        title = f"{task}: {metric} vs T"
    else:
        unit, title = "%", "accuracy vs T"
        for key, label in (("accuracy", "SNN accuracy"), ("agreement", "top-1 agreement with the ANN")):
            if any(r[key] is not None for r in rows):
                ax.plot(ts, [100 * (r[key] or 0) for r in rows], marker="o", label=label)
        if report["ann"]["accuracy"] is not None:
            ax.axhline(100 * report["ann"]["accuracy"], color="k", linestyle="--", label="ANN accuracy")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="timesteps T", ylabel=unit, title=title)
    ax.legend()
    written.append(_save(fig, folder / "accuracy_vs_T.png"))
    plt.close(fig)
    layers = report["layers"]
    if layers:
        names = [l["name"] for l in layers]
        for key, fname, title in (("firing_rate", "firing_rates.png", "firing rate (spikes / neuron / step)"),
                                  ("rate_error", "rate_error.png", "rate error vs the clipped ANN")):
            fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 4))
            ax.bar(range(len(names)), [l[key] or 0 for l in layers])
            ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
            ax.set(title=f"{title}, T={report['layers_T']}")
            written.append(_save(fig, folder / fname))
            plt.close(fig)
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 4))
        ax.boxplot([l["theta"]["values"] for l in layers], showfliers=True)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=90, fontsize=7)
        ax.set(title="thresholds per layer", ylabel="theta")
        written.append(_save(fig, folder / "thresholds.png"))
        plt.close(fig)
    return written
