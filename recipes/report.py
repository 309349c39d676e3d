"""What a recipe run leaves behind: metrics.json, report.md, plot.png (headline score vs size
vs latency, one point per model) and the task's own pictures, plus the one-line summary."""
import json
import pathlib

# Row keys that are not scores of the task.
_NOT_SCORES = ("model", "params", "size_kb", "latency_ms", "train_seconds", "source",
               "knowledge", "cached_teacher", "fully_int8")


def row(name, scores, params=None, size_bytes=None, latency_ms=None, seconds=None, **extra):
    """One model's line of the report: its scores, size, latency and training time."""
    line = {"model": name, **scores, "params": params,
            "size_kb": None if size_bytes is None else round(size_bytes / 1024, 1),
            "latency_ms": latency_ms,
            "train_seconds": None if seconds is None else round(seconds, 1)}
    line.update(extra)
    return line


def _fmt(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if value <= 1.0 else f"{value:.2f}"
    return str(value)


def write(out_dir, metrics, pictures=()):
    """Writes metrics.json, plot.png and report.md into `out_dir`.

    `pictures` are the task's own (caption, file name) pairs, already written into `out_dir`.
    """
    out_dir = pathlib.Path(out_dir)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    plot(metrics, out_dir / "plot.png")
    headline = metrics["headline"]
    config = metrics["config"]
    first = metrics["rows"][0]
    score_keys = [k for k in first if k not in _NOT_SCORES and not isinstance(first[k], dict)]
    # A score that is a dict (IoU per class, ...) gets a table of its own below the main one.
    breakdowns = [k for k in first if k not in _NOT_SCORES and isinstance(first[k], dict)]
    lines = [f"# {metrics['task']} recipe report", "",
             f"- data: {metrics['data']}",
             f"- teacher: {metrics['teacher']['source']}",
             f"- knowledge: {config['knowledge']}; student {config['student']} "
             f"x{config['student_width']}, {config['epochs']} epochs",
             f"- total time: {metrics['total_seconds']} s", ""]
    if metrics.get("notes"):
        lines += ["## Warnings", ""] + [f"- {note}" for note in metrics["notes"]] + [""]
    lines += ["| model | " + " | ".join(score_keys) + " | params | size (KB) | latency (ms, "
              "TFLite, 1 thread) | train (s) |",
              "|---|" + "---|" * (len(score_keys) + 4)]
    for r in metrics["rows"]:
        lines.append(f"| {r['model']} | " + " | ".join(_fmt(r.get(k)) for k in score_keys)
                     + f" | {_fmt(r['params'])} | {_fmt(r['size_kb'])} | "
                       f"{_fmt(r['latency_ms'])} | {_fmt(r['train_seconds'])} |")
    for key in breakdowns:
        lines += ["", *_breakdown_table(key, metrics["rows"])]
    art = metrics["artifacts"]
    if art.get("tflite"):
        lines += ["", f"Exported for {art.get('target', 'litert')}: `{art['tflite']}` (ops: "
                  + ", ".join(f"{k} x{v}" for k, v in sorted(art["tflite_ops"].items()))
                  + f"; Edge TPU check: {art.get('edgetpu_compatible')})."]
        client = art.get("mediapipe")
        if isinstance(client, dict):
            shown = {k: v for k, v in client.items() if k not in ("kind",)}
            lines += ["", f"MediaPipe Tasks ({client['kind']}, the client of an Android app) "
                      f"loads the file; against LiteRT on the same test images: "
                      + ", ".join(f"{k} {_fmt(v)}" for k, v in shown.items()) + "."]
        elif client:
            lines += ["", f"MediaPipe Tasks: {client}."]
        if art.get("edgetpu_first_unmapped"):
            lines += ["", "Edge TPU: the compiler cuts the graph at "
                      f"{art['edgetpu_first_unmapped']}."]
        if art.get("edgetpu_uncertain"):
            lines += ["", "Edge TPU: counted as mapped, but the offline check cannot be sure of "
                      "(run `edgetpu_compiler` to settle it):", ""]
            lines += [f"- {doubt}" for doubt in art["edgetpu_uncertain"]]
    lines += ["", f"![{headline} vs size vs latency](plot.png)", ""]
    for caption, file_name in pictures:
        lines += [f"![{caption}]({file_name})", "", caption, ""]
    (out_dir / "report.md").write_text("\n".join(lines))


def _breakdown_table(key, rows):
    """A table of a dict-valued score: one row per model, one column per entry."""
    names = list(rows[0][key])
    lines = [f"{key} per entry:", "", "| model | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]
    for r in rows:
        values = r.get(key) or {}
        lines.append(f"| {r['model']} | " + " | ".join(_fmt(values.get(n)) for n in names)
                     + " |")
    return lines


def plot(metrics, path):
    """The headline score against size, marker area ~ latency, one point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    headline = metrics["headline"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    rows = [r for r in metrics["rows"] if r.get("size_kb") and r.get(headline) is not None]
    lat = [r["latency_ms"] for r in rows if r.get("latency_ms")]
    scale = 600.0 / max(lat) if lat else 1.0
    for r in rows:
        size = 40 + scale * r["latency_ms"] if r.get("latency_ms") else 60
        ax.scatter(r["size_kb"], r[headline], s=size, alpha=0.7)
        label = r["model"] + (f"\n{r['latency_ms']:.2f} ms" if r.get("latency_ms") else "")
        ax.annotate(label, (r["size_kb"], r[headline]), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("model size (KB, log scale)")
    ax.set_ylabel(headline)
    ax.set_title(f"{metrics['task']}: {headline} vs size (marker area ~ TFLite latency)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def summary_line(metrics, out_dir):
    """`task: headline: model score, ... | report: path` (the last line a recipe prints)."""
    headline = metrics["headline"]
    parts = [f"{r['model']} {r[headline]:.3f}" for r in metrics["rows"]
             if r.get(headline) is not None]
    warnings = f" | {len(metrics['notes'])} warning(s) in the report" if metrics.get("notes") \
        else ""
    return (f"{metrics['task']}: {headline}: " + ", ".join(parts) + warnings
            + f" | report: {pathlib.Path(out_dir).resolve() / 'report.md'}")


def image_grid(path, rows, columns, panel_size=(2.2, 1.8), cmap=None):
    """Writes a grid of pictures: `rows[r][c]` an (H, W) or (H, W, 3) uint8 panel, `columns`
    the titles of the first row; `cmap` (e.g. "gray") for one-channel panels on 0-255."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), len(columns),
                             figsize=(panel_size[0] * len(columns), panel_size[1] * len(rows)),
                             dpi=100, squeeze=False)
    for r, panels in enumerate(rows):
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            if cmap is None:
                ax.imshow(panel, interpolation="nearest")
            else:
                ax.imshow(panel, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
