"""The audit's HTML report: one self-contained page that opens offline, usable at 1,000 images.

Sections: the scores over the folder; per group a sortable table and plotly plots (the share of
map energy inside the box with its spread, the prediction distribution, faithfulness); the
images a person should look at (highest and lowest box share); and every image in a table that
sorts by any score, filters by name, group or class and shows one page at a time. Plotly's
JavaScript is inlined once; thumbnails load lazily, and rows off the current page never load
theirs.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from explainers.methods.core import method_title
from explainers.services.audit_groups import ALL, GroupSummary
from explainers.services.audit_work import Row

LOOK_AT = 12  # images in each of the highest / lowest box-share lists
TOP_CLASSES = 8  # classes drawn in the prediction plot; the rest are "other"

# Inline, no fonts or scripts from elsewhere: the report opens offline, from the disk.
_STYLE = """
:root{color-scheme:light;--line:#e3e5ea;--muted:#5f6570;--accent:#c0392b}
*{box-sizing:border-box}
body{margin:0;padding:24px 32px;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:#1f2328;background:#f6f7f9}
h1{font-size:26px;margin:0 0 4px} h2{font-size:20px;margin:32px 0 8px} h3{font-size:16px;margin:18px 0 6px}
nav a{margin-right:14px} .context{color:var(--muted);margin:0 0 12px}
table{width:100%;border-collapse:collapse;background:#fff;border:1px solid var(--line);border-radius:8px}
th,td{padding:8px 10px;text-align:left;vertical-align:top;border-bottom:1px solid var(--line)}
thead th{position:sticky;top:0;background:#eef0f4;font-size:13px;z-index:1}
table.sortable th{cursor:pointer;user-select:none} th[aria-sort=ascending]::after{content:" ▲"}
th[aria-sort=descending]::after{content:" ▼"}
td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
.thumb{display:block;width:112px;height:112px;object-fit:cover;border-radius:4px}
.name{font-weight:600;overflow-wrap:anywhere} #groups td:nth-child(-n+2){white-space:nowrap}
.scroll{overflow-x:auto} .small{font-size:13px;color:var(--muted)}
.err td{color:var(--accent)} .legend{color:var(--muted);font-size:13px;max-width:100ch}
.plot{background:#fff;border:1px solid var(--line);border-radius:8px;margin:12px 0;padding:4px}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:6px;width:136px;font-size:12px}
.card img{width:122px;height:122px;object-fit:cover;border-radius:4px;display:block}
.controls{display:flex;flex-wrap:wrap;gap:12px;align-items:center;margin:8px 0}
.controls input{padding:5px 8px;min-width:260px} button{padding:4px 10px}
"""

# Sorting for every table.sortable (click a header; numbers by data-v, blanks last), and for the
# image table a text filter, a group filter and pages: only the current page's rows are shown,
# so only their lazy thumbnails load.
_SCRIPT = """
(function(){
function key(row,i){const c=row.cells[i];if(!c)return null;const v=c.dataset.v;
 if(v!==undefined)return v===''?null:parseFloat(v);return c.textContent.trim().toLowerCase();}
document.querySelectorAll('table.sortable').forEach(function(table){
 const heads=table.tHead.rows[0].cells;
 Array.from(heads).forEach(function(th,i){th.addEventListener('click',function(){
  const dir=th.getAttribute('aria-sort')==='descending'?'ascending':'descending';
  Array.from(heads).forEach(function(h){h.removeAttribute('aria-sort');});th.setAttribute('aria-sort',dir);
  const sign=dir==='ascending'?1:-1,body=table.tBodies[0];
  const rows=Array.from(body.rows).sort(function(a,b){const x=key(a,i),y=key(b,i);
   if(x===null||y===null)return (x===null)-(y===null);return x<y?-sign:x>y?sign:0;});
  rows.forEach(function(r){body.appendChild(r);});
  if(table.render)table.render(true);});});});
const table=document.getElementById('images');if(!table)return;
const text=document.getElementById('filter'),group=document.getElementById('group'),
 size=document.getElementById('size'),info=document.getElementById('pageinfo');let page=0;
table.render=function(reset){if(reset)page=0;const q=text.value.trim().toLowerCase(),g=group?group.value:'';
 const rows=Array.from(table.tBodies[0].rows),shown=rows.filter(function(r){
  return (!q||r.dataset.text.indexOf(q)>=0)&&(!g||r.dataset.group===g);});
 const n=size.value==='all'?Math.max(shown.length,1):parseInt(size.value,10),pages=Math.max(1,Math.ceil(shown.length/n));
 page=Math.min(Math.max(page,0),pages-1);rows.forEach(function(r){r.hidden=true;});
 shown.slice(page*n,page*n+n).forEach(function(r){r.hidden=false;});
 info.textContent=shown.length?(page*n+1)+'–'+Math.min(shown.length,page*n+n)+' of '+shown.length+
  ' images (page '+(page+1)+' of '+pages+')':'no image matches';};
[text,group,size].forEach(function(el){if(el)el.addEventListener('input',function(){table.render(true);});});
document.getElementById('prev').addEventListener('click',function(){page-=1;table.render();});
document.getElementById('next').addEventListener('click',function(){page+=1;table.render();});
table.render(true);})();
"""

e = html.escape


def _cell(value: float, shown: str, empty: str = "—", why: str = "") -> str:
    """A numeric cell sortable by its exact value; blank (sorted last) when not measured."""
    if value != value:
        title = f' title="{e(why)}"' if why else ""
        return f'<td class="num" data-v=""{title}>{empty}</td>'
    return f'<td class="num" data-v="{value:.6g}">{shown}</td>'


def _percent(value: float, digits: int = 0) -> str:
    return f"{100 * value:.{digits}f}%"


def _figure(fig, top: int = 50) -> str:
    fig.update_layout(margin={"l": 60, "r": 20, "t": top, "b": 50}, template="plotly_white")
    body = fig.to_html(
        full_html=False, include_plotlyjs=False, config={"displaylogo": False, "responsive": True}
    )
    return f'<div class="plot">{body}</div>'


def box_share_plot(rows: Sequence[Row], methods: Sequence[str], grouped: bool) -> str:
    """Per group and method the images' box shares as a box plot (mean and standard deviation
    marked, every image a point), and each group's mean box area: what a uniform map scores."""
    import plotly.graph_objects as go

    fig = go.Figure()
    good = [r for r in rows if r.status == "ok" and r.box]
    label = (lambda r: r.group) if grouped else (lambda r: ALL)
    for m in methods:
        scored = [r for r in good if r.scores[m]["energy_in_box"] == r.scores[m]["energy_in_box"]]
        fig.add_trace(
            go.Box(
                x=[label(r) for r in scored],
                y=[r.scores[m]["energy_in_box"] for r in scored],
                text=[r.image for r in scored],
                name=method_title(m),
                boxmean="sd",
                boxpoints="all" if len(scored) <= 3000 else "outliers",
                jitter=0.4,
                pointpos=0,
                marker={"size": 4, "opacity": 0.6},
                hovertemplate="%{text}<br>box share %{y:.0%}<extra>%{fullData.name}</extra>",
            )
        )
    areas: dict[str, list[float]] = {}
    for r in good:
        areas.setdefault(label(r), []).append(r.box_area)
    fig.add_trace(
        go.Scatter(
            x=list(areas),
            y=[sum(v) / len(v) for v in areas.values()],
            mode="markers",
            name="box area (a uniform map's share)",
            marker={"symbol": "line-ew-open", "size": 40, "line": {"width": 3, "color": "#444"}},
            hovertemplate="box area %{y:.0%}<extra></extra>",
        )
    )
    fig.update_layout(
        title="Share of map energy inside each image's box, per group",
        boxmode="group",
        yaxis={"title": "share of the map inside the box", "tickformat": ".0%", "range": [0, 1]},
        xaxis={
            "title": "group" if grouped else "",
            "type": "category",
            "categoryorder": "category ascending",
        },
        height=460,
    )
    return _figure(fig)


def predictions_plot(summaries: Sequence[GroupSummary]) -> str:
    """Per group the share of images predicted as each of the most frequent classes."""
    import plotly.graph_objects as go

    overall = Counter()
    for g in summaries[:1]:
        overall.update(dict(g.predictions))
    top = [label for label, _ in overall.most_common(TOP_CLASSES)]
    shown = (
        [g for g in summaries if g.audited]
        if len(summaries) == 1
        else [g for g in summaries[1:] if g.audited]
    )
    names = [g.name for g in shown]
    fig = go.Figure()
    for label in [*top, "other"]:
        shares = []
        for g in shown:
            counts = dict(g.predictions)
            count = (
                counts.get(label, 0)
                if label != "other"
                else sum(c for k, c in counts.items() if k not in top)
            )
            shares.append(count / g.audited)
        if any(shares):
            fig.add_trace(
                go.Bar(y=names, x=shares, name=label, orientation="h", hovertemplate="%{y}: %{x:.0%}")
            )
    fig.update_layout(
        title="Prediction distribution per group",
        barmode="stack",
        xaxis={"title": "share of the group's images", "tickformat": ".0%", "range": [0, 1]},
        yaxis={"type": "category", "autorange": "reversed"},
        height=max(260, 60 + 40 * len(names)),
    )
    return _figure(fig)


def faithfulness_plot(summaries: Sequence[GroupSummary], methods: Sequence[str]) -> str:
    """Average Drop, deletion AUC and insertion AUC per group and method."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    titles = (
        "Average Drop (lower is better)",
        "deletion AUC (lower is better)",
        "insertion AUC (higher is better)",
    )
    fig = make_subplots(rows=1, cols=3, subplot_titles=titles)
    shown = [g for g in (summaries if len(summaries) == 1 else summaries[1:]) if g.audited]
    scores = ("average_drop", "deletion_auc", "insertion_auc")
    if not any(
        getattr(g.methods[m], s) == getattr(g.methods[m], s) for g in shown for m in methods for s in scores
    ):
        # No bar to draw: empty axes over 0% would read as a perfect score.
        return (
            '<p class="legend">Faithfulness per group: not scored, every map is blank or guided '
            "(cannot judge).</p>"
        )
    colours = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
    for i, m in enumerate(methods):
        for col, score in enumerate(scores, start=1):
            fig.add_trace(
                go.Bar(
                    x=[g.name for g in shown],
                    y=[getattr(g.methods[m], score) for g in shown],
                    name=method_title(m),
                    legendgroup=m,
                    showlegend=col == 1,
                    marker_color=colours[i % len(colours)],
                ),
                row=1,
                col=col,
            )
    fig.update_yaxes(range=[0, 1])
    fig.update_yaxes(tickformat=".0%", row=1, col=1)
    fig.update_xaxes(type="category")
    fig.update_layout(title="Faithfulness per group", barmode="group", height=400)
    return _figure(fig, top=90)  # room for the title above the subplot titles


def group_table(summaries: Sequence[GroupSummary], methods: Sequence[str]) -> str:
    """One row per group and method (all images first), sortable by any column."""
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "group",
            "method",
            "images",
            "audited",
            "box share (mean ± sd, n)",
            "box area",
            "cannot judge",
            "Average Drop",
            "Increase in Confidence",
            "deletion AUC",
            "insertion AUC",
            "predictions",
        )
    )
    body = []
    for g in summaries:
        top = ", ".join(f"{label} {count / g.audited:.0%}" for label, count in g.predictions[:3])
        more = f" (+{len(g.predictions) - 3} more)" if len(g.predictions) > 3 else ""
        for m in methods:
            s = g.methods[m]
            spread = f" ± {_percent(s.box_share_std)}" if s.box_share_std == s.box_share_std else ""
            shown = f"{_percent(s.box_share_mean)}{spread} <span class='small'>({len(s.box_shares)})</span>"
            cells = [f'<td class="name">{e(g.name)}</td>', f"<td>{e(method_title(m))}</td>"]
            cells += [_cell(g.images, str(g.images)), _cell(g.audited, str(g.audited))]
            cells.append(_cell(s.box_share_mean, shown, why="no box, or only blank maps"))
            cells.append(_cell(s.box_area_mean, _percent(s.box_area_mean)))
            cells.append(_cell(s.cannot_judge, str(s.cannot_judge)))
            cells.append(
                _cell(s.average_drop, _percent(s.average_drop, 1), why="blank or guided maps: not scored")
            )
            cells.append(_cell(s.increase_in_confidence, _percent(s.increase_in_confidence, 1)))
            cells.append(_cell(s.deletion_auc, f"{s.deletion_auc:.3f}", why="not computed (--steps 0)"))
            cells.append(_cell(s.insertion_auc, f"{s.insertion_auc:.3f}", why="not computed (--steps 0)"))
            cells.append(f'<td class="small">{e(top + more)}</td>')
            body.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f'<div class="scroll"><table class="sortable" id="groups"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def look_at(rows: Sequence[Row], methods: Sequence[str], grouped: bool) -> str:
    """Per method the images whose map puts the most and the least of its energy in the box."""
    parts = []
    for m in methods:
        scored = [
            r
            for r in rows
            if r.status == "ok" and r.scores[m]["energy_in_box"] == r.scores[m]["energy_in_box"]
        ]
        if not scored:
            continue
        ranked = sorted(scored, key=lambda r: (r.scores[m]["energy_in_box"], r.image))
        count = min(LOOK_AT, max(1, len(ranked) // 2))  # few images: the two lists do not overlap
        lowest, highest = ranked[:count], ranked[::-1][:count]
        for title, chosen in (("highest", highest), ("lowest", lowest)):
            cards = []
            for r in chosen:
                group = f"{e(r.group)} · " if grouped else ""
                cards.append(
                    f'<div class="card"><img loading="lazy" src="{e(r.pictures[m])}" alt="{e(method_title(m))} on {e(r.image)}">'
                    f'<div class="name">{e(r.image)}</div><div class="small">{group}box share '
                    f"{_percent(r.scores[m]['energy_in_box'])} (area {_percent(r.box_area)})<br>"
                    f"predicted {e(r.prediction)}</div></div>"
                )
            parts.append(
                f'<h3 id="{e(m)}-{title}">{e(method_title(m))}: the {len(chosen)} images with the {title} box share</h3>'
                f'<div class="cards">{"".join(cards)}</div>'
            )
    return "".join(parts)


def image_table(rows: Sequence[Row], methods: Sequence[str], grouped: bool, boxed: bool) -> str:
    head = "<th>image</th>" + ("<th>group</th>" if grouped else "") + "<th>prediction</th><th>explained</th>"
    for m in methods:
        t = e(method_title(m))
        head += f"<th>{t}</th>" + (f"<th>{t}: box share</th>" if boxed else "")
        head += f"<th>{t}: Average Drop</th><th>{t}: deletion AUC</th><th>{t}: insertion AUC</th>"
    columns = head.count("<th>")
    body = []
    for r in rows:
        data = f'data-text="{e(" ".join((r.image, r.group, r.prediction, r.target)).lower())}" data-group="{e(r.group)}"'
        if r.status != "ok":
            body.append(
                f'<tr class="err" {data}><td colspan="{columns}">{e(r.image)}: {e(r.status)}: {e(r.reason)}</td></tr>'
            )
            continue
        cells = [
            f'<td><img class="thumb" loading="lazy" src="{e(r.pictures["image"])}" alt="{e(r.image)}">'
            f'<div class="name">{e(r.image)}</div></td>'
        ]
        if grouped:
            cells.append(f"<td>{e(r.group)}</td>")
        cells.append(
            f'<td data-v="{r.probability:.6g}">{e(r.prediction)} <span class="small">{r.probability:.1%}</span></td>'
        )
        cells.append(f"<td>{e(r.target)} <span class='small'>{r.target_probability:.1%}</span></td>")
        for m in methods:
            s = r.scores[m]
            alt = e(f"{method_title(m)} on {r.image}")
            cells.append(f'<td><img class="thumb" loading="lazy" src="{e(r.pictures[m])}" alt="{alt}"></td>')
            if boxed:
                why = "no box" if not r.box else "cannot judge: the map is blank"
                cells.append(_cell(s["energy_in_box"], _percent(s["energy_in_box"]), why=why))
            rose = " ↑" if s["increase_in_confidence"] == 1 else ""
            cells.append(
                _cell(
                    s["average_drop"],
                    _percent(s["average_drop"], 1) + rose,
                    why="not scored (guided or blank map)",
                )
            )
            cells.append(_cell(s["deletion_auc"], f"{s['deletion_auc']:.3f}", why="not computed"))
            cells.append(_cell(s["insertion_auc"], f"{s['insertion_auc']:.3f}", why="not computed"))
        body.append(f"<tr {data}>{''.join(cells)}</tr>")
    return (
        f'<div class="scroll"><table class="sortable" id="images"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def write_report(
    path: Path,
    rows: Sequence[Row],
    methods: Sequence[str],
    summaries: Sequence[GroupSummary],
    context: str,
    grouped: bool,
    skipped: Sequence[str] = (),
) -> None:
    """Write the report page (index.html) next to the overlays it links to."""
    from plotly.offline import get_plotlyjs

    overall = summaries[0]
    totals = "".join(
        f"<tr><td>{e(method_title(m))}</td>"
        + _cell(s.average_drop, _percent(s.average_drop, 1), why="not scored (guided or blank maps)")
        + _cell(s.increase_in_confidence, _percent(s.increase_in_confidence, 1))
        + _cell(s.deletion_auc, f"{s.deletion_auc:.3f}", why="not computed (--steps 0)")
        + _cell(s.insertion_auc, f"{s.insertion_auc:.3f}", why="not computed (--steps 0)")
        + "</tr>"
        for m, s in overall.methods.items()
    )
    summary_table = (
        '<table class="summary"><thead><tr><th>method</th><th>Average Drop (lower is better)</th>'
        "<th>Increase in Confidence (higher is better)</th><th>deletion AUC (lower is better)</th>"
        f"<th>insertion AUC (higher is better)</th></tr></thead><tbody>{totals}</tbody></table>"
        if overall.audited
        else "<p>No image could be explained.</p>"
    )
    boxed = any(r.box for r in rows if r.status == "ok")
    shares = any(
        r.scores[m]["energy_in_box"] == r.scores[m]["energy_in_box"]
        for r in rows
        if r.status == "ok"
        for m in methods
    )
    sections = []
    if overall.audited:
        plots = [box_share_plot(rows, methods, grouped)] if shares else []
        plots += [predictions_plot(summaries), faithfulness_plot(summaries, methods)]
        no_box = (
            ""
            if shares
            else '<p class="legend">No box share: every map is blank (cannot judge).</p>'
            if boxed
            else '<p class="legend">No box share: give --box, or box columns x0,y0,x1,y1 in the --groups file.</p>'
        )
        sections.append(
            f'<h2 id="per-group">{"Per group" if grouped else "Over the images"}</h2>{group_table(summaries, methods)}'
            f"{no_box}{''.join(plots)}"
        )
    if shares:
        sections.append(
            '<h2 id="look-at">Look at these</h2><p class="legend">The maps that put the most and the least of '
            "their energy inside the image's box: where the model looks at the region, and where it looks "
            f"elsewhere.</p>{look_at(rows, methods, grouped)}"
        )
    groups = sorted({r.group for r in rows})
    group_select = (
        '<label>group <select id="group"><option value="">all</option>'
        + "".join(f'<option value="{e(g)}">{e(g)}</option>' for g in groups)
        + "</select></label>"
        if grouped
        else ""
    )
    controls = (
        '<div class="controls"><input id="filter" type="search" placeholder="filter by name, group or class">'
        f'{group_select}<label>per page <select id="size"><option>25</option><option selected>50</option>'
        '<option>100</option><option value="all">all</option></select></label>'
        '<button id="prev" type="button">◀ previous</button><button id="next" type="button">next ▶</button>'
        '<span id="pageinfo" class="small"></span></div>'
    )
    not_audited = (
        f'<p class="legend">Not audited (not images): {e(", ".join(skipped))}</p>' if skipped else ""
    )
    nav = '<nav><a href="#folder">Over the folder</a><a href="#per-group">Per group</a>'
    nav += (
        '<a href="#look-at">Look at these</a>' if shares else ""
    ) + '<a href="#per-image">Per image</a></nav>'
    path.write_text(
        f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>CAM Explorer audit</title><style>{_STYLE}</style>
<script>{get_plotlyjs()}</script></head>
<body><h1>CAM Explorer audit</h1><p class="context">{e(context)}</p>{nav}
<h2 id="folder">Over the folder</h2>{summary_table}
<p class="legend">Average Drop: how much the class score falls on image ⊙ map. Increase in Confidence:
the share of images whose score rose (↑). Deletion / insertion AUC: the class probability as the
map's most important pixels are removed / added (RISE). Box share: the map's share of energy
inside the image's box; a uniform map scores the box's share of the area; a blank map cannot be
judged (—). The CSV holds the same numbers as fractions in [0, 1].</p>{not_audited}
{"".join(sections)}
<h2 id="per-image">Per image</h2>{controls}
{image_table(rows, methods, grouped, boxed)}
<script>{_SCRIPT}</script></body></html>
""",
        encoding="utf-8",
    )
