"""The run report of `ecamp run`: one self-contained ``report.html`` plus the same figures as PNG.

Sections: the stages (status, wall time, fingerprint), the downstream results against the
random-init baseline, training curves of every stage that logged ``metrics.csv``, attention
overlays (when the attention stage ran), masked-image reconstructions and super-resolved
output of the pre-trained ECAMP model, and every resolved config.  Images are inlined as
base64 PNG so the file can be mailed or archived alone; ``figures/`` holds the same PNGs.
A figure that cannot be drawn becomes a note in the report, never a failed stage.

`ecamp report --runs DIR ...` (:func:`build_seeds_report`) writes the report of several finished
runs, one per world seed: each seed's delta against random init, the mean delta with its
standard error and error bars, and one sentence naming the robust effects.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecamp.errors import UserError
from ecamp.utils.io import atomic_write_bytes, atomic_write_text
from ecamp.utils.logging import get_logger
from ecamp.utils.records import RECORD
from ecamp.utils.secrets import mask_secrets
from ecamp.viz.curves import curves_png, find_metric_files, read_metrics

if TYPE_CHECKING:  # heavy: imported where used, so `ecamp --help` stays fast
    import numpy as np

log = get_logger(__name__)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;
color:#1d2330;line-height:1.45;padding:0 16px}
h1{font-size:1.6em;margin-bottom:0}h2{border-bottom:2px solid #d8dde6;padding-bottom:4px;margin-top:32px}
.sub{color:#5b6475;margin-top:2px}table{border-collapse:collapse;margin:8px 0}
th,td{border:1px solid #d8dde6;padding:4px 10px;text-align:left}th{background:#eef1f6}
td.num{text-align:right;font-variant-numeric:tabular-nums}.win{color:#137333;font-weight:600}
.lose{color:#b3261e}figure{margin:12px 0}figure img{max-width:100%;border:1px solid #e3e6ec}
figcaption{color:#5b6475;font-size:.9em}pre{background:#f6f8fa;padding:8px;overflow-x:auto;font-size:.85em}
.note{background:#fff6e0;border-left:4px solid #e0a400;padding:6px 10px}
details{margin:6px 0}summary{cursor:pointer;font-weight:600}
"""


# --------------------------------------------------------------------------- figures


def _png_of(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def results_png(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Grouped bars: each (task, metric), pre-trained vs random init."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = list(dict.fromkeys((r["task"], r["metric"]) for r in rows))
    vals = {(r["task"], r["metric"], r["encoder"]): _num(r["value"]) for r in rows}
    fig = Figure(figsize=(max(4.0, 1.6 * len(keys) + 1), 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(keys))
    for k, (enc, color) in enumerate((("pretrained", "#1a73e8"), ("random", "#9aa0a6"))):
        h = [vals.get((t, m, enc), np.nan) for t, m in keys]
        ax.bar(x + (k - 0.5) * 0.38, h, width=0.38, label=enc, color=color)
    ax.set_xticks(x, [f"{t}\n{m}" for t, m in keys], fontsize=8)
    ax.set_ylim(0, 1.0)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("pre-trained vs random-init encoder", fontsize=10)
    fig.tight_layout()
    return _png_of(fig)


def load_ecamp_checkpoint(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """The ECAMP model (eval mode) of the training checkpoint file ``path`` and its saved config."""
    from ecamp.config import ModelConfig, from_dict
    from ecamp.models.checkpoints import read_checkpoint, state_dict_of
    from ecamp.models.factory import create_model

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no pre-training checkpoint")
    state = read_checkpoint(p)  # the one models-level weights-only reader
    cfg = (state.get("config") if isinstance(state, dict) else None) or {}
    if "model" not in cfg:
        raise UserError(f"{p}: the checkpoint holds no model config")
    model = create_model(from_dict(ModelConfig, cfg["model"]))
    model.load_state_dict(state_dict_of(state, str(p)))
    return model.eval(), cfg


def _sample_images(
    manifest: str, image_root: str, n: int, size: int
) -> tuple[list[str], np.ndarray]:
    """``n`` images (test split first) as (n, size, size) floats in [0, 1]."""
    import numpy as np

    from ecamp.data.images import load_image_resized
    from ecamp.data.manifest import read_table, resolve_image

    df = read_table(manifest)
    if "split" in df.columns:
        order = {"test": 0, "val": 1, "train": 2}  # read_table normalised the names
        df = df.iloc[np.argsort([order.get(str(s), 3) for s in df["split"]], kind="stable")]
    df = df.head(n)
    root = image_root or df.attrs.get("root")
    imgs = [load_image_resized(resolve_image(str(p), root), size) for p in df["image"]]
    return [str(i) for i in df["id"]], np.stack(imgs).astype(np.float32) / 255.0


def reconstruction_png(
    checkpoint: str | Path, manifest: str, image_root: str = "", n: int = 4, seed: int = 0
) -> bytes:
    """Rows of (original, masked input, reconstruction, super-resolved output) of the ECAMP model."""
    import numpy as np
    import torch
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    model, cfg = load_ecamp_checkpoint(checkpoint)
    mc = model.cfg
    data = cfg.get("data") or {}
    mean, std = float(data.get("mean", 0.4721)), float(data.get("std", 0.3037))
    ids, imgs = _sample_images(manifest, image_root, n, mc.hr_size)
    x = torch.from_numpy((imgs - mean) / std)[:, None].repeat(1, mc.in_chans, 1, 1)
    torch.manual_seed(seed)  # the same patches are masked in every report of this run
    with torch.no_grad():
        out = model.reconstruct({"image_hr": x})

    def show(t: torch.Tensor | None) -> np.ndarray | None:
        return None if t is None else (t[:, 0].float() * std + mean).clamp(0, 1).cpu().numpy()

    mask = out["mask"][:, 0].cpu().numpy() if out["mask"] is not None else None
    inp = show(out["input_lr"])
    rec = show(out["pred_lr"])
    assert inp is not None and rec is not None and mask is not None
    masked = np.where(mask > 0.5, 0.15, inp)
    pasted = np.where(mask > 0.5, rec, inp)  # MAE-style: visible patches are the input's
    panels = [
        ("original (high-res)", imgs),
        (f"masked input ({mc.img_size} px)", masked),
        ("reconstruction", pasted),
    ]
    sr = show(out.get("sr"))
    if sr is not None:
        panels.append((f"super-resolved ({mc.hr_size} px)", sr))
    fig = Figure(figsize=(2.4 * len(panels), 2.5 * len(ids) + 0.3), dpi=100)
    FigureCanvasAgg(fig)
    for r, key in enumerate(ids):
        for c, (title, arr) in enumerate(panels):
            ax = fig.add_subplot(len(ids), len(panels), r * len(panels) + c + 1)
            ax.imshow(arr[r], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
            if c == 0:
                ax.set_ylabel(key, fontsize=7)
    fig.tight_layout()
    return _png_of(fig)


# --------------------------------------------------------------------------- HTML


def _img_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _results_html(rows: Sequence[Mapping[str, Any]]) -> str:
    from ecamp.eval.results import pivot_results

    keyed = pivot_results(rows)
    if not keyed:
        return '<p class="note">No downstream results (the finetune stages did not run).</p>'
    out = [
        "<table><tr><th>task</th><th>metric</th><th>pre-trained</th><th>random init</th><th>&Delta;</th></tr>"
    ]
    for (task, metric), v in keyed.items():
        p, q = v.get("pretrained"), v.get("random")
        delta, cls = "", ""
        if p is not None and q is not None:
            delta, cls = f"{p - q:+.4f}", "win" if p > q else "lose"
        fmt = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
        out.append(
            f"<tr><td>{html.escape(task)}</td><td>{html.escape(metric)}</td><td class='num'>{fmt(p)}</td>"
            f"<td class='num'>{fmt(q)}</td><td class='num {cls}'>{delta}</td></tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def _stage_records(run_dir: Path) -> list[dict[str, Any]]:
    recs = []
    for p in sorted(run_dir.rglob(RECORD)):
        if any(part.endswith(".previous") for part in p.relative_to(run_dir).parts):
            continue
        try:
            recs.append(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return recs


class _Report:
    """Collects sections and figures; writes the HTML and the PNGs."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.parts: list[str] = []
        self.figures: list[Path] = []

    def add(self, text: str) -> None:
        self.parts.append(text)

    def figure(self, name: str, png: bytes, caption: str) -> None:
        path = atomic_write_bytes(self.out_dir / "figures" / f"{name}.png", png)
        self.figures.append(path)
        self.add(
            f"<figure>{_img_tag(png, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def note(self, text: str) -> None:
        self.add(f'<p class="note">{html.escape(text)}</p>')

    def attempt(self, what: str, fn: Any) -> None:
        """Run one figure builder; a failure becomes a note (the report is still written)."""
        try:
            fn()
        except Exception as e:  # a broken figure must not lose the rest of the report
            log.warning("report: %s failed: %s: %s", what, type(e).__name__, e)
            self.note(f"{what}: not drawn ({type(e).__name__}: {e})")


def build_report(
    run_dir: str | Path,
    out_dir: str | Path,
    inputs: Mapping[str, Mapping[str, Any]],
    pipeline: Mapping[str, Any] | None = None,
    n_images: int = 4,
) -> Path:
    """Write ``out_dir/report.html`` and ``out_dir/figures/*.png`` for a pipeline run.

    ``inputs`` maps stage name -> that stage's result (as ``ecamp run`` passes them):
    ``rows`` of downstream results, ``guidance`` of the attention stage, ``checkpoints``
    (the folder), ``checkpoint`` (its newest file) and ``manifest`` of the pre-training stage.
    """
    import yaml

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rep = _Report(out_dir)
    order = {name: i for i, name in enumerate(inputs)}  # pipeline order; unknown stages last
    records = sorted(
        _stage_records(run_dir), key=lambda r: order.get(str(r.get("stage")), len(order))
    )
    rows = [r for res in inputs.values() for r in (res.get("rows") or [])]

    rep.add(
        "<h2>Stages</h2><table><tr><th>stage</th><th>seconds</th><th>finished</th><th>fingerprint</th></tr>"
    )
    for rec in records:
        if rec.get("stage") == "report":
            continue
        rep.add(
            f"<tr><td>{html.escape(str(rec.get('stage')))}</td><td class='num'>{float(rec.get('seconds', 0)):.1f}</td>"
            f"<td>{html.escape(str(rec.get('finished', '')))}</td><td><code>{html.escape(str(rec.get('fingerprint')))}</code></td></tr>"
        )
    rep.add("</table>")

    rep.add("<h2>Downstream results vs random-init baseline</h2>")
    rep.add(_results_html(rows))
    if rows:
        rep.attempt(
            "results chart",
            lambda: rep.figure("results", results_png(rows), "pre-trained vs random init"),
        )

    rep.add("<h2>Training curves</h2>")
    n_curves = 0
    groups: dict[
        str, list[str]
    ] = {}  # sub-stages (finetune.<run>.<encoder>) fold under their group
    for name in inputs:
        groups.setdefault(name.split(".")[0] if "." in name else name, []).append(name)
    for group, names in groups.items():
        files = [f for n in names for f in find_metric_files(run_dir.joinpath(*n.split(".")))]
        folded = len(names) > 1 or "." in names[0]
        if folded and files:
            rep.add(f"<details><summary>{html.escape(group)}: {len(files)} curve files</summary>")
        for f in files:
            label = str(f.relative_to(run_dir))
            slug = str(f.relative_to(run_dir).with_suffix("")).replace("/", "_")
            rep.attempt(
                f"curves of {label}",
                lambda f=f, label=label, slug=slug: rep.figure(
                    f"curves_{slug}", curves_png(read_metrics(f), label), label
                ),
            )
            n_curves += 1
        if folded and files:
            rep.add("</details>")
    if not n_curves:
        rep.note("No stage logged a metrics.csv.")

    att = inputs.get("attention") or {}
    rep.add("<h2>GLoRIA attention overlays (super-resolution guidance, not Figure 4)</h2>")
    if att.get("guidance"):

        def overlays() -> None:
            from ecamp.viz.attention import show

            png = show(
                att["guidance"],
                out_dir / "figures" / "attention.png",
                att.get("manifest"),
                n=max(1, n_images * 2),
            )
            rep.figures.append(Path(png))
            rep.add(
                f"<figure>{_img_tag(Path(png).read_bytes(), 'attention overlays')}"
                "<figcaption>GLoRIA's entity attention maps over their images (what guides the SR loss); "
                "titles: the entity sentences</figcaption></figure>"
            )

        rep.attempt("attention overlays", overlays)
    else:
        rep.note(
            "The attention stage did not run: pre-training used uniform super-resolution guidance."
        )

    pre = inputs.get("pretrain") or {}
    rep.add("<h2>Masked-image reconstruction and super-resolution</h2>")
    if pre.get("checkpoint") and pre.get("manifest"):
        rep.attempt(
            "reconstructions",
            lambda: rep.figure(
                "reconstructions",
                reconstruction_png(
                    pre["checkpoint"], pre["manifest"], pre.get("image_root", ""), n_images
                ),
                "the pre-trained ECAMP model on held-out images: masked patches are predicted, "
                "the prediction is super-resolved",
            ),
        )
    else:
        rep.note("No pre-training checkpoint in this run.")

    rep.add("<h2>MSCF attention after pre-training (the paper's Figure 4)</h2>")
    if pre.get("checkpoints") and pre.get("manifest"):

        def mscf() -> None:
            from ecamp.viz.mscf import show as show_mscf

            res = show_mscf(
                pre["checkpoints"],
                out_dir / "figures",
                n=max(1, n_images * 2),
                manifest=pre["manifest"],
                device="cpu",
                image_root=pre.get("image_root") or None,
            )
            png = Path(res["figure"])
            rep.figures.append(png)
            score = (
                f" Over {res['n']} (image, lesion) pairs, {res['mass_in_box']:.3f} of the "
                f"attention falls in the lesion boxes against {res['uniform']:.3f} for a flat "
                f"map (ratio {res['ratio']:.2f})."
                if res["n"]
                else " The manifest has no lesion boxes to score the maps against."
            )
            rep.add(
                f"<figure>{_img_tag(png.read_bytes(), 'MSCF attention')}<figcaption>"
                "the cross-attention of MSCF's local path from each entity sentence's tokens "
                "to the image patches, red: that lesion's boxes."
                f"{html.escape(score)}</figcaption></figure>"
            )

        rep.attempt("MSCF attention", mscf)
    else:
        rep.note("No pre-training checkpoint in this run.")

    rep.add("<h2>Resolved configs</h2>")
    if pipeline:
        rep.add(
            f"<details open><summary>pipeline</summary><pre>{html.escape(yaml.safe_dump(mask_secrets(dict(pipeline)), sort_keys=False))}</pre></details>"
        )
    for rec in records:
        if rec.get("config"):
            rep.add(
                f"<details><summary>{html.escape(str(rec.get('stage')))}</summary>"
                f"<pre>{html.escape(yaml.safe_dump(mask_secrets(rec['config']), sort_keys=False))}</pre></details>"
            )

    title = html.escape(str((pipeline or {}).get("name") or "ecamp run"))
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{_CSS}</style></head><body><h1>{title}</h1>"
        f"<p class='sub'>run directory <code>{html.escape(str(run_dir.resolve()))}</code> &middot; "
        f"written {time.strftime('%Y-%m-%d %H:%M:%S')}</p>"
        + "\n".join(rep.parts)
        + "</body></html>\n"
    )
    return atomic_write_text(out_dir / "report.html", page)


# --------------------------------------------------------------------------- over seeds

HELP = "the report of several `ecamp run` folders (world seeds): deltas with error bars, robustness"


def seeds_png(stats: Mapping[tuple[str, str], Any]) -> bytes:
    """Per (task, metric): the mean delta (bar), +-2 SE (error bar) and each seed's delta (dots)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = [k for k, s in stats.items() if s.mean is not None]
    fig = Figure(figsize=(max(4.0, 1.3 * len(keys) + 1.5), 3.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(keys))
    means = [stats[k].mean for k in keys]
    errs = [2 * (stats[k].se or 0.0) for k in keys]
    colors = ["#137333" if stats[k].robust else "#9aa0a6" for k in keys]
    ax.bar(x, means, width=0.6, color=colors, yerr=errs, capsize=5, ecolor="#1d2330")
    for i, k in enumerate(keys):
        vals = list(stats[k].values.values())
        ax.scatter(
            np.full(len(vals), i) + np.linspace(-0.15, 0.15, len(vals)),
            vals,
            s=14,
            color="#1a73e8",
            zorder=3,
        )
    ax.axhline(0.0, color="#1d2330", linewidth=0.8)
    ax.set_xticks(x, [f"{t}\n{m}" for t, m in keys], fontsize=8)
    ax.set_ylabel("pre-trained - random", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(
        "delta over seeds: bar = mean, error bar = 2 SE, dots = seeds (green: robust)", fontsize=9
    )
    fig.tight_layout()
    return _png_of(fig)


def _seeds_table_html(stats: Mapping[tuple[str, str], Any], seeds: Sequence[str]) -> str:
    from ecamp.eval.results import format_mean_se

    head = "".join(f"<th>seed {html.escape(s)}</th>" for s in seeds)
    out = [
        f"<table><tr><th>task</th><th>metric</th>{head}<th>mean &Delta; &plusmn; SE</th>"
        "<th>&gt; 2 SE</th><th>robust</th></tr>"
    ]
    for (task, metric), s in stats.items():
        cells = "".join(
            f"<td class='num {'win' if s.values[x] > 0 else 'lose'}'>{s.values[x]:+.4f}</td>"
            if x in s.values
            else "<td class='num'>-</td>"
            for x in seeds
        )
        out.append(
            f"<tr><td>{html.escape(task)}</td><td>{html.escape(metric)}</td>{cells}"
            f"<td class='num'>{html.escape(format_mean_se(s))}</td>"
            f"<td>{'yes' if s.above_2se else 'no'}</td>"
            f"<td class='{'win' if s.robust else 'lose'}'>{'yes' if s.robust else 'no'}</td></tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def seed_label(run_dir: str | Path) -> str:
    """A run's world seed (``data.synthetic_seed`` of its ``pipeline.yaml``), else its folder name."""
    import yaml

    path = Path(run_dir) / "pipeline.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        seed = (data.get("data") or {}).get("synthetic_seed")
    except (OSError, yaml.YAMLError, AttributeError):
        seed = None
    return str(seed) if seed is not None else Path(run_dir).name


def build_seeds_report(
    runs: Mapping[str, str | Path], out_dir: str | Path, title: str = "ecamp run over seeds"
) -> Path:
    """Write ``out_dir/report.html`` (and ``figures/seeds.png``) for finished runs ``{seed: dir}``.

    Shows each seed's delta (pre-trained minus random init) per task and metric, the mean with
    its standard error and error bars, and one sentence naming the robust effects.
    """
    from ecamp.eval.results import pivot_results, robust_sentence, run_rows, seed_deltas

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = {str(s): run_rows(d) for s, d in runs.items()}
    stats = seed_deltas(rows)
    sentence = robust_sentence(stats)
    rep = _Report(out_dir)
    rep.add(f"<p><strong>{html.escape(sentence)}</strong></p>")
    rep.add("<h2>Pre-trained minus random init, per seed</h2>")
    rep.add(_seeds_table_html(stats, list(rows)) if stats else "<p class='note'>No results.</p>")
    rep.add(
        "<p class='sub'>SE: standard error of the mean delta over seeds (sample standard "
        "deviation / &radic;n). Robust: mean &gt; 2 SE and every seed's delta positive.</p>"
    )
    if stats:
        rep.attempt(
            "seeds chart",
            lambda: rep.figure("seeds", seeds_png(stats), "mean delta over seeds, error bars 2 SE"),
        )
    rep.add("<h2>Runs</h2><table><tr><th>seed</th><th>run directory</th><th>seconds</th></tr>")
    for s, d in runs.items():
        try:
            secs = f"{json.loads((Path(d) / 'pipeline.json').read_text())['seconds']:.1f}"
        except (OSError, ValueError, KeyError, TypeError):
            secs = "-"
        rep.add(
            f"<tr><td>{html.escape(str(s))}</td><td><code>{html.escape(str(Path(d).resolve()))}"
            f"</code></td><td class='num'>{secs}</td></tr>"
        )
    rep.add("</table>")
    for s, r in rows.items():
        rep.add(f"<details><summary>seed {html.escape(s)}: values</summary>")
        rep.add(_results_html(r) if pivot_results(r) else "<p>-</p>")
        rep.add("</details>")
    t = html.escape(title)
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{t}</title>"
        f"<style>{_CSS}</style></head><body><h1>{t}</h1>"
        f"<p class='sub'>{len(runs)} runs &middot; written {time.strftime('%Y-%m-%d %H:%M:%S')}</p>"
        + "\n".join(rep.parts)
        + "</body></html>\n"
    )
    atomic_write_text(
        out_dir / "summary.json",
        json.dumps(
            {
                "sentence": sentence,
                "deltas": {f"{t}/{m}": v.as_dict() for (t, m), v in stats.items()},
            },
            indent=1,
        )
        + "\n",
    )
    return atomic_write_text(out_dir / "report.html", page)


def add_arguments(parser: Any) -> None:
    """Flags of `ecamp report`."""
    parser.add_argument(
        "--runs",
        nargs="+",
        required=True,
        metavar="DIR",
        help="finished `ecamp run` folders, one per world seed (data.synthetic_seed); 2+ for a spread",
    )
    parser.add_argument(
        "--output",
        "-o",
        required=True,
        metavar="DIR",
        help="where report.html, figures/seeds.png and summary.json go",
    )
    parser.add_argument("--title", default="ecamp run over seeds", help="the report's title")


def run(args: Any) -> int:
    """Entry point of `ecamp report`."""
    labels = [seed_label(d) for d in args.runs]
    if len(set(labels)) < len(labels):  # same seed twice (e.g. two thread counts): use folders
        labels = [str(Path(d)) for d in args.runs]
    path = build_seeds_report(dict(zip(labels, args.runs)), args.output, args.title)
    print(json.loads((Path(args.output) / "summary.json").read_text())["sentence"])
    print(f"report: {path}")
    return 0
