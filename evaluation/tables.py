"""The paper's tables (Tab. 4: text-to-image; Tab. 5 / 6: editing on DIV2K / Cat2Dog) and Fig. 5.

Rows come from run summaries (``summary.json``): one row per group (a generation method, or an
editing method x n_max x target CFG). Each table is written three ways: markdown (ours in the
paper's layout, then the paper's own rows in the same layout for comparison), CSV and JSON (ours,
with the settings). Missing metrics print as "-".

Editing runs whose pairs carry masks (PIE-Bench) add a second table in PIE-Bench's layout: the
region metrics of ``evaluation.region_metrics``, printed times PIE-Bench's scales (structure
distance x 10^3, LPIPS x 10^3, MSE x 10^4, SSIM x 10^2); the CSV and JSON hold the raw values.

The Fig. 5 plot (CLIP score to the target against LPIPS to the source, one line per method, one
dot per target CFG) is drawn with PIL only, so it works in the core install.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw, ImageFont

from evaluation.metrics import METRIC_ORDER, METRICS
from evaluation.region_metrics import REGION_METRICS, REGION_ORDER
from evaluation.results import write_json_atomically
from softrepa.images import write_png

MODEL_LABELS = {"sd3": "SD3", "sd15": "SD1.5", "sdxl": "SDXL"}
OURS_SUFFIX = " +Ours"
DECIMALS = {"imagereward": 3, "pickscore": 3, "clip": 3, "hps": 3, "fid": 3, "lpips": 3}

# The paper's numbers (SoftREPA paper, Tab. 4-6). Editing CFGs are in the authors' guidance
# convention (target c + w (c - u)): see editing/flowedit.py.
_P = ("imagereward", "pickscore", "clip", "hps", "fid", "lpips")
PAPER_T2I = [
    {"model": "SD1.5", "nfe": 30, "cfg": 7.0, **dict(zip(_P, (0.177, 21.478, 0.264, 0.250, 24.598, 0.438)))},
    {"model": "SD1.5 +Ours", "nfe": 30, "cfg": 7.0, **dict(zip(_P, (0.273, 21.541, 0.270, 0.252, 25.358, 0.437)))},
    {"model": "SDXL", "nfe": 30, "cfg": 7.0, **dict(zip(_P, (0.750, 22.389, 0.267, 0.273, 24.697, 0.420)))},
    {"model": "SDXL +Ours", "nfe": 30, "cfg": 7.0, **dict(zip(_P, (0.852, 22.620, 0.268, 0.283, 26.040, 0.423)))},
    {"model": "SD3", "nfe": 28, "cfg": 4.0, **dict(zip(_P, (0.942, 22.549, 0.263, 0.280, 31.595, 0.424)))},
    {"model": "SD3 +Ours", "nfe": 28, "cfg": 4.0, **dict(zip(_P, (1.085, 22.550, 0.269, 0.289, 36.214, 0.428)))},
]


def _edit_rows(rows: Sequence[tuple]) -> list[dict]:
    return [{"model": model, "n_max": n_max, "tar_cfg": cfg, **dict(zip(_P, values))}
            for model, n_max, cfg, *values in rows]


PAPER_EDIT = {
    "DIV2K": _edit_rows([
        ("FlowEdit", 33, 13.5, 0.380, 21.749, 0.261, 0.255, 52.038, 0.154),
        ("FlowEdit", 33, 16.5, 0.466, 21.824, 0.263, 0.259, 55.371, 0.180),
        ("FlowEdit", 33, 19.5, 0.510, 21.869, 0.265, 0.261, 58.069, 0.200),
        ("FlowEdit +Ours", 30, 9, 0.466, 21.884, 0.263, 0.260, 52.633, 0.149),
        ("FlowEdit +Ours", 30, 11, 0.564, 21.985, 0.268, 0.265, 56.900, 0.178),
        ("FlowEdit +Ours", 30, 13, 0.627, 22.050, 0.272, 0.270, 59.710, 0.201)]),
    "Cat2Dog": _edit_rows([
        ("FlowEdit", 33, 13.5, 0.937, 20.726, 0.225, 0.266, 197.1, 0.199),
        ("FlowEdit", 33, 16.5, 0.908, 20.641, 0.229, 0.272, 201.05, 0.217),
        ("FlowEdit", 33, 19.5, 0.882, 20.572, 0.232, 0.276, 202.92, 0.234),
        ("FlowEdit +Ours", 30, 7, 1.111, 21.143, 0.226, 0.269, 198.71, 0.173),
        ("FlowEdit +Ours", 30, 9, 1.144, 21.221, 0.234, 0.283, 208.18, 0.204),
        ("FlowEdit +Ours", 30, 11, 1.144, 21.224, 0.239, 0.290, 214.72, 0.230),
        ("FlowEdit +Ours", 30, 13, 1.135, 21.200, 0.241, 0.293, 219.35, 0.252)]),
}


@dataclass(frozen=True)
class TableLayout:
    name: str
    title: str
    setting_columns: tuple[tuple[str, str], ...]  # (row field, header)


LAYOUTS = {
    "t2i": TableLayout("t2i", "Text-to-image (paper Table 4 layout)", (("model", "Model"), ("nfe", "NFE"),
                                                                        ("cfg", "CFG"))),
    "edit": TableLayout("edit", "Image editing (paper Table 5/6 layout)", (("model", "Model"), ("n_max", "NMAX"),
                                                                           ("tar_cfg", "target CFG"))),
}


def get_layout(name: str) -> TableLayout:
    if name not in LAYOUTS:
        raise ValueError(f"unknown table layout {name!r}; choose from {sorted(LAYOUTS)}")
    return LAYOUTS[name]


def method_label(base: str, method: str) -> str:
    """'SD3' / 'SD3 +Ours' (or 'FlowEdit' / 'FlowEdit +Ours') for the vanilla / tokens method."""
    if method == "vanilla":
        return base
    if method == "tokens":
        return base + OURS_SUFFIX
    raise ValueError(f"unknown method {method!r}; expected 'vanilla' or 'tokens'")


def rows_from_summary(summary: dict) -> list[dict]:
    """Table rows from one run's ``summary.json``."""
    layout = get_layout(summary["task"])
    rows = []
    for group in summary["groups"]:
        if layout.name == "t2i":
            row = {"model": method_label(MODEL_LABELS.get(summary["kind"], summary["kind"]), group["method"]),
                   "nfe": group["steps"], "cfg": group["cfg"]}
        else:
            row = {"model": method_label("FlowEdit", group["method"]), "n_max": group["n_max"],
                   "tar_cfg": group["tar_cfg"], "dataset": summary.get("dataset", "")}
        row.update({name: group["metrics"].get(name) for name in METRIC_ORDER})
        row.update({name: group["metrics"][name] for name in REGION_ORDER if name in group["metrics"]})
        row["n"] = group["n"]
        rows.append(row)
    return rows


def _format(value: Any, metric: str | None = None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if metric is not None:
        return f"{float(value):.{DECIMALS[metric]}f}"
    if isinstance(value, float) and value.is_integer():
        return f"{value:g}"
    return str(value)


def _header(layout: TableLayout) -> list[str]:
    arrows = {True: "↑", False: "↓"}
    return [h for _, h in layout.setting_columns] + [
        f"{METRICS[m].label}{arrows[METRICS[m].higher_is_better]}" for m in METRIC_ORDER]


def markdown_table(rows: Sequence[dict], layout: TableLayout) -> str:
    header = _header(layout)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for row in rows:
        cells = [_format(row.get(field)) for field, _ in layout.setting_columns]
        cells += [_format(row.get(metric), metric) for metric in METRIC_ORDER]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def region_markdown_table(rows: Sequence[dict], layout: TableLayout) -> str | None:
    """PIE-Bench's layout for the region metrics, each times its scale; None when no row has any
    (rows of runs without masks)."""
    if not any(name in row for row in rows for name in REGION_ORDER):
        return None
    names = REGION_ORDER
    arrows = {True: "↑", False: "↓"}
    header = [h for _, h in layout.setting_columns]
    for name in names:
        spec = REGION_METRICS[name]
        scale = f" ×10^{round(math.log10(spec.scale))}" if spec.scale != 1 else ""
        header.append(f"{spec.label}{scale}{arrows[spec.higher_is_better]}")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for row in rows:
        cells = [_format(row.get(field)) for field, _ in layout.setting_columns]
        for name in names:
            value = row.get(name)
            if value is not None and math.isinf(float(value)):
                cells.append("inf" if value > 0 else "-inf")
            else:
                cells.append("-" if value is None or math.isnan(float(value))
                             else f"{float(value) * REGION_METRICS[name].scale:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paper_rows(layout: TableLayout, dataset: str | None = None) -> list[dict]:
    if layout.name == "t2i":
        return PAPER_T2I
    if dataset in PAPER_EDIT:
        return PAPER_EDIT[dataset]
    return []


def write_table(rows: Sequence[dict], layout_name: str, out_prefix: str | os.PathLike, *, dataset: str | None = None,
                notes: Sequence[str] = (), settings: dict | None = None) -> dict[str, Path]:
    """Write ``<prefix>.md``, ``.csv`` and ``.json``; returns their paths."""
    layout = get_layout(layout_name)
    prefix = Path(out_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    title = layout.title + (f", {dataset}" if dataset else "")
    parts = [f"## {title}", "", markdown_table(rows, layout), ""]
    region = region_markdown_table(rows, layout)
    if region:
        parts += ["### Region metrics (PIE-Bench layout; the dataset's masks of the edited region)", "", region, ""]
    parts += [f"- {note}" for note in notes]
    reference = paper_rows(layout, dataset)
    if reference:
        which = "Table 4" if layout.name == "t2i" else ("Table 5" if dataset == "DIV2K" else "Table 6")
        parts += ["", f"### The paper's numbers ({which})", "", markdown_table(reference, layout), ""]
    paths = {"md": prefix.with_suffix(".md"), "csv": prefix.with_suffix(".csv"), "json": prefix.with_suffix(".json")}
    paths["md"].write_text("\n".join(parts).rstrip() + "\n", encoding="utf-8")

    fields = [f for f, _ in layout.setting_columns] + list(METRIC_ORDER) + ["n"]
    fields += [name for name in REGION_ORDER if any(name in row for row in rows)]
    extra = sorted({k for row in rows for k in row} - set(fields))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields + extra, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in fields + extra})
    paths["csv"].write_text(buffer.getvalue(), encoding="utf-8")
    write_json_atomically(paths["json"], {"layout": layout.name, "dataset": dataset, "rows": list(rows),
                                          "paper": reference, "notes": list(notes), "settings": settings or {}})
    return paths


# ----------------------------------------------------------------------------- Fig. 5 plot (PIL)

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75)]


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except TypeError:  # old Pillow: fixed bitmap font
        return ImageFont.load_default()


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=raw)
    start = math.ceil(low / step) * step
    ticks = []
    value = start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def plot_clip_vs_lpips(series: dict[str, list[tuple[float, float, float]]], path: str | os.PathLike,
                       title: str = "CLIP score vs LPIPS", size: tuple[int, int] = (720, 540),
                       x_label: str = "LPIPS to source (lower: closer)",
                       y_label: str = "CLIP score to target (higher: better)") -> Path:
    """Fig. 5: one line per method through its points (lpips, clip, cfg), sorted by CFG, each dot
    labelled with its CFG. ``series``: method label -> [(lpips, clip, cfg), ...]."""
    points = [(x, y) for values in series.values() for x, y, _ in values]
    if not points:
        raise ValueError("nothing to plot: no (LPIPS, CLIP) points")
    width, height = size
    left, right, top, bottom = 80, 24, 48, 64
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    pad_x = (max(xs) - min(xs)) * 0.08 or abs(xs[0]) * 0.05 or 0.01
    pad_y = (max(ys) - min(ys)) * 0.08 or abs(ys[0]) * 0.05 or 0.01
    x0, x1, y0, y1 = min(xs) - pad_x, max(xs) + pad_x, min(ys) - pad_y, max(ys) + pad_y

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (width - left - right),
                height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom))

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(14), _font(11)
    draw.rectangle([left, top, width - right, height - bottom], outline=(0, 0, 0))
    for tick in _nice_ticks(x0, x1):
        px, _ = to_pixel(tick, y0)
        draw.line([px, height - bottom, px, height - bottom + 5], fill=(0, 0, 0))
        draw.line([px, top, px, height - bottom], fill=(235, 235, 235))
        draw.text((px, height - bottom + 8), f"{tick:g}", fill=(0, 0, 0), font=small, anchor="mt")
    for tick in _nice_ticks(y0, y1):
        _, py = to_pixel(x0, tick)
        draw.line([left - 5, py, left, py], fill=(0, 0, 0))
        draw.line([left, py, width - right, py], fill=(235, 235, 235))
        draw.text((left - 8, py), f"{tick:g}", fill=(0, 0, 0), font=small, anchor="rm")
    draw.text((width / 2, 16), title, fill=(0, 0, 0), font=font, anchor="mt")
    draw.text(((left + width - right) / 2, height - 18), x_label, fill=(0, 0, 0), font=font, anchor="mm")
    label = Image.new("RGB", (height - top - bottom, 22), "white")  # rotated y-axis label
    ImageDraw.Draw(label).text((label.width / 2, 11), y_label, fill=(0, 0, 0), font=font, anchor="mm")
    image.paste(label.rotate(90, expand=True), (6, top))

    for number, (method, values) in enumerate(series.items()):
        colour = PALETTE[number % len(PALETTE)]
        ordered = sorted(values, key=lambda v: v[2])
        pixels = [to_pixel(x, y) for x, y, _ in ordered]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        for (px, py), (_, _, cfg) in zip(pixels, ordered):
            draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour)
            draw.text((px + 6, py - 6), f"{cfg:g}", fill=colour, font=small, anchor="lb")
        legend_y = top + 10 + 18 * number
        draw.line([left + 12, legend_y, left + 32, legend_y], fill=colour, width=2)
        draw.ellipse([left + 18, legend_y - 3, left + 24, legend_y + 3], fill=colour)
        draw.text((left + 38, legend_y), method, fill=(0, 0, 0), font=small, anchor="lm")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_png(image, path)  # atomic: the plot lives in a resumable run folder


def plot_series_from_rows(rows: Sequence[dict]) -> dict[str, list[tuple[float, float, float]]]:
    """Fig. 5 series from editing table rows: model label -> [(lpips, clip, tar_cfg)], rows lacking
    either metric left out. Methods with several n_max values get one line per n_max."""
    n_max_per_model: dict[str, set] = {}
    for row in rows:
        n_max_per_model.setdefault(row["model"], set()).add(row["n_max"])
    series: dict[str, list[tuple[float, float, float]]] = {}
    for row in rows:
        if row.get("lpips") is None or row.get("clip") is None:
            continue
        label = row["model"] if len(n_max_per_model[row["model"]]) == 1 else f"{row['model']} (n_max {row['n_max']})"
        series.setdefault(label, []).append((float(row["lpips"]), float(row["clip"]), float(row["tar_cfg"])))
    return series
