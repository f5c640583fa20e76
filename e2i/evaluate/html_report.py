"""One self-contained ``report.html`` per evaluation (``e2i evaluate``) and per tune experiment (``e2i report``).

Self-contained: CSS inline, every plot a base64 ``data:image/png`` URI, no script and no network
request; the only external references are the corpus files of the retrieval browser (``<audio>`` /
``<img>``), written relative to the HTML file when they are local files, so the page works when the
run directory and the corpus are moved together (absolute or remote paths are kept as they are).

Sections (each a function returning an HTML fragment; :func:`write_report` joins them):

* :func:`metrics_section`: metric, value, 95% CI and the best closed-form baseline's value per
  metric, with a banner that flags when the trained head loses to the baseline (text->item R@1).
* :func:`images_section`: PNGs inline (training curves, t-SNE/PCA, tune plots).
* :func:`table_section`: any header + rows table (the tune leaderboard).
* :func:`browser_section`: caption queries with their top-5 items: path, score, relevant yes/no and
  an audio player / image; one ``<tr class="result">`` per retrieved item.
"""

from __future__ import annotations

import base64
import html
import os
import urllib.parse
from pathlib import Path

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp")
HEADLINE = "text_to_item/recall@1"
METRIC_ORDER = ("recall@1", "recall@5", "recall@10", "mAP@10", "mAP@16", "nDCG@10", "median_rank", "mean_rank")

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;
color:#1f2328;background:#fff;line-height:1.4}
h1{font-size:1.6em;margin-bottom:4px}h2{font-size:1.25em;border-bottom:1px solid #d0d7de;padding-bottom:4px;
margin-top:32px}.sub{color:#57606a;margin-top:0}
table{border-collapse:collapse;margin:8px 0;font-size:0.9em}th,td{border:1px solid #d0d7de;padding:4px 8px;
text-align:left;vertical-align:middle}th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.banner{padding:8px 12px;border-radius:6px;margin:8px 0;font-weight:600}.ok{background:#dafbe1;color:#116329}
.lose{background:#ffebe9;color:#a40e26}.worse{color:#a40e26;font-weight:600}
tr.query td{background:#f6f8fa;font-weight:600}tr.rel td.relv{color:#116329;font-weight:700}
tr.nonrel td.relv{color:#a40e26}.plots{display:flex;flex-wrap:wrap;gap:12px}.plots figure{margin:0;
flex:1 1 360px;max-width:100%}.plots figure.wide{flex-basis:100%}img.plot{width:100%;border:1px solid #d0d7de}
img.item{max-height:64px}audio{height:28px;width:220px}.path{font-family:monospace;font-size:0.85em;
word-break:break-all}.tag{font-size:0.75em;padding:1px 6px;border-radius:10px;background:#ddf4ff;color:#0969da}
.tag.worst{background:#fff1e5;color:#bc4c00}
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return esc(value)


def data_uri(png: str | os.PathLike) -> str:
    """``data:image/png;base64,...`` of a PNG file (the page needs no file beside it)."""
    return "data:image/png;base64," + base64.b64encode(Path(png).read_bytes()).decode("ascii")


def media_src(path: str, html_dir: str | os.PathLike) -> str:
    """A URL for a corpus file: relative to ``html_dir`` for local files, the path itself otherwise."""
    if "://" in path or not path:
        return path
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(html_dir))
    return urllib.parse.quote(Path(rel).as_posix())  # spaces in Clotho names -> %20


def media_tag(path: str, html_dir: str | os.PathLike) -> str:
    suffix = os.path.splitext(path)[1].lower()
    src = esc(media_src(path, html_dir))
    if suffix in AUDIO_SUFFIXES:
        return f'<audio controls preload="none" src="{src}"></audio>'
    if suffix in IMAGE_SUFFIXES:
        return f'<img class="item" loading="lazy" alt="" src="{src}">'
    return ""


def lower_is_better(key: str) -> bool:
    return key.endswith("_rank")


def loses(metrics: dict, baseline: dict | None, key: str = HEADLINE) -> bool | None:
    """True when the trained head is worse than the baseline on ``key`` (None without a baseline)."""
    if not baseline or key not in metrics or key not in baseline.get("metrics", {}):
        return None
    ours, theirs = float(metrics[key]), float(baseline["metrics"][key])
    return ours > theirs if lower_is_better(key) else ours < theirs


def baseline_banner(metrics: dict, baseline: dict | None, key: str = HEADLINE, *,
                    subject: str = "trained head") -> str:
    """One line: "vs best closed-form baseline NAME: ours X vs Y" (red when ours is worse)."""
    verdict = loses(metrics, baseline, key)
    if verdict is None:
        return '<p class="banner ok">no closed-form baseline available for this store</p>' if baseline is None else ""
    ours, theirs = float(metrics[key]), float(baseline["metrics"][key])
    word = "LOSES to" if verdict else "beats"
    return (f'<p class="banner {"lose" if verdict else "ok"}" id="baseline">{esc(subject)} {word} the best closed-form '
            f'baseline ({esc(baseline["name"])}): {esc(key)} {ours:.4f} vs {theirs:.4f}</p>')


def metrics_section(metrics: dict, baseline: dict | None = None, *, title: str = "Retrieval metrics") -> str:
    """Both directions: value, 95% CI, baseline value (worse-than-baseline values in red)."""
    base = (baseline or {}).get("metrics", {})
    head = "<tr><th>metric</th><th>value</th><th>95% CI</th>"
    head += f"<th>baseline {esc(baseline['name'])}</th></tr>" if baseline else "</tr>"
    rows = []
    for direction in ("text_to_item", "item_to_text"):
        names = [n for n in METRIC_ORDER if f"{direction}/{n}" in metrics]
        for name in names:
            key = f"{direction}/{name}"
            ci = metrics.get(f"{key}/ci95")
            ci_text = f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""
            worse = loses(metrics, baseline, key)
            cls = ' class="num worse"' if worse else ' class="num"'
            cells = f"<td>{esc(key)}</td><td{cls}>{_fmt(float(metrics[key]))}</td><td class=\"num\">{ci_text}</td>"
            if baseline:
                cells += f'<td class="num">{_fmt(float(base[key])) if key in base else ""}</td>'
            rows.append(f"<tr>{cells}</tr>")
    table = f'<table id="metrics">{head}{"".join(rows)}</table>'
    return f"<h2>{esc(title)}</h2>{baseline_banner(metrics, baseline)}{table}"


def images_section(title: str, pngs: list[str | os.PathLike]) -> str:
    """PNGs inline, two per row (a figure wider than 2:1, like the training curves, takes a whole row)."""
    imgs = []
    for p in (Path(p) for p in pngs if Path(p).is_file()):
        wide = _aspect(p) > 2.0
        imgs.append(f'<figure{" class=wide" if wide else ""}><img class="plot" alt="{esc(p.stem)}" '
                    f'src="{data_uri(p)}"><figcaption>{esc(p.name)}</figcaption></figure>')
    return f'<h2>{esc(title)}</h2><div class="plots">{"".join(imgs)}</div>' if imgs else ""


def _aspect(png: Path) -> float:
    """width / height from the PNG header (IHDR: bytes 16-24, big-endian)."""
    head = png.read_bytes()[:24]
    w, h = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return w / h if h else 1.0


def table_section(title: str, header: list[str], rows: list[list], *, table_id: str = "") -> str:
    ident = f' id="{esc(table_id)}"' if table_id else ""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<h2>{esc(title)}</h2><table{ident}><tr>{head}</tr>{body}</table>"


def browser_section(entries: list[dict], html_dir: str | os.PathLike) -> str:
    """The retrieval browser: per query a header row, then one ``tr.result`` per retrieved item."""
    n_sample = sum(e["group"] == "sample" for e in entries)
    intro = (f"<p>{n_sample} random test captions and the {len(entries) - n_sample} worst-ranked ones "
             "(largest rank of their own item); top-5 items by score, relevant = the caption's own item, "
             "or its listed items when a relevance file names the caption.</p>")
    rows = ["<tr><th>#</th><th>item</th><th>path</th><th>score</th><th>relevant</th><th>listen / view</th></tr>"]
    for e in entries:
        tag = f'<span class="tag {e["group"]}">{esc(e["group"])}</span>'
        rows.append(f'<tr class="query"><td colspan="6">{tag} {esc(e["text"])} <span class="sub">'
                    f'({esc(e["caption_id"])}; own item {esc(e["own_item"])} at rank {e["own_rank"]})</span></td></tr>')
        for r in e["results"]:
            cls = "rel" if r["relevant"] else "nonrel"
            rows.append(f'<tr class="result {cls}"><td class="num">{r["rank"]}</td><td>{esc(r["item_id"])}</td>'
                        f'<td class="path">{esc(r["path"])}</td><td class="num">{r["score"]:.4f}</td>'
                        f'<td class="relv">{"yes" if r["relevant"] else "no"}</td>'
                        f'<td>{media_tag(r["path"], html_dir)}</td></tr>')
    return f'<h2>Retrieval browser</h2>{intro}<table id="browser">{"".join(rows)}</table>'


def write_report(path: str | os.PathLike, title: str, sections: list[str], *, subtitle: str = "") -> Path:
    """Join the sections into one HTML file (UTF-8) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(s for s in sections if s)
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f'<body><h1>{esc(title)}</h1><p class="sub">{esc(subtitle)}</p>{body}</body></html>\n')
    path.write_text(page, encoding="utf-8")
    return path


def tune_baseline(info: dict, cache_dir: Path | None = None) -> tuple[dict, str] | None:
    """(best closed-form baseline on the base config's val split, its key for the tune metric) or None;
    cached in ``cache_dir`` (the report dir) so re-running the report does not refit it."""
    data = info.get("base", {}).get("data", {})
    if not data.get("store"):
        return None
    from e2i.evaluate.evaluation import store_baseline  # torch & co.: only when there is a store

    metric = info["metric"].removeprefix("val/")
    key = metric if "/" in metric else f"text_to_item/{metric}"  # val/recall@1 = text->item recall@1
    best = store_baseline(data["store"], data.get("val_split", "val"), cache_dir)
    return (best, key) if best and key in best.get("metrics", {}) else None


def tune_page(path: str | os.PathLike, title: str, header: list[str], table: list[list[str]], plots: list,
              baseline: tuple[dict, str] | None, info: dict) -> Path:
    """report.html: baseline line vs the best trial, leaderboard, every plot (self-contained)."""
    sections = []
    if baseline:
        best, key = baseline
        col = header.index(info["metric"])
        values = [float(r[col]) for r in table if r[col] != "-"]
        ours = (max if info["mode"] == "max" else min)(values) if values else float("nan")
        sections.append(baseline_banner({key: ours}, best, key, subject=f"best trial ({info['metric']})"))
    first = [p for p in plots if Path(p).name == "best_so_far_time.png"]
    sections += [table_section("Leaderboard", header, table, table_id="leaderboard"),
                 images_section("Plots", first + [p for p in plots if p not in first])]
    return write_report(path, title, sections, subtitle=f"experiment {info.get('tune_experiment', '')}")

