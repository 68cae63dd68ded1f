"""``decision.html``: one self-contained page (no script, no network): the recommendation, the table and
three plots as inline SVG (accuracy with intervals, accuracy against inference cost with the frontier,
the data curve). matplotlib comes with the ``report`` extra; without it the page says so."""

from __future__ import annotations

import html
import io
from typing import Any

__all__ = ["render_html"]

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #222; }
table { border-collapse: collapse; font-size: 0.85rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.5rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td.skipped { text-align: left; color: #777; }
.recommendation { font-size: 1.2rem; background: #eef5ee; padding: 0.6rem 1rem; border-left: 4px solid #4a4; }
figure { display: inline-block; margin: 1rem 1rem 0 0; vertical-align: top; }
figcaption { font-size: 0.85rem; color: #555; max-width: 30rem; }
"""


def render_html(decision: Any) -> str:
    from autoprompt.decision import HOW_TO_READ, LABELS, table_rows

    e = html.escape
    rows = table_rows(decision)
    body = [f"<h1>Prompt, fine-tune, or both? Task <code>{e(decision.task)}</code></h1>",
            f'<p class="recommendation">Recommendation: <strong>{e(LABELS[decision.recommendation])}</strong></p>',
            "<ul>" + "".join(f"<li>{e(r)}</li>" for r in decision.reasons) + "</ul>",
            '<h2>Variants</h2><table id="variants"><thead><tr>'
            + "".join(f"<th>{e(c)}</th>" for c in rows[0]) + "</tr></thead><tbody>"]
    for row in rows[1:]:
        if all(c == "" for c in row[2:]):
            body.append(f'<tr><td>{e(row[0])}</td><td class="skipped" colspan="{len(row) - 1}">{e(row[1])}</td></tr>')
        else:
            body.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
    body.append("</tbody></table>")
    body.append(f"<p>{e(HOW_TO_READ).replace('*', '')}</p>")
    body.append("<h2>Plots</h2>")
    body += _plots(decision)
    body.append(f"<p>Run folder: <code>{e(str(decision.run_dir))}</code>; every number is in "
                "<code>decision.json</code>.</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><link rel=\"icon\" href=\"data:,\">"
            f"<title>autoprompt decide: {e(decision.task)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _plots(decision: Any) -> list[str]:
    try:
        import matplotlib
    except ImportError:
        return ['<p class="no-plot">The plots need matplotlib: pip install \'autoprompt[report]\', then '
                "<code>autoprompt report RUN</code> writes this page again.</p>"]
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.hashsalt"] = "autoprompt"  # the same run gives the same page
    scored = [v for v in decision.variants.values() if v.accuracy is not None]
    out = []
    fig, ax = plt.subplots(figsize=(5.5, 1.2 + 0.45 * max(len(scored), 1)))
    for i, v in enumerate(scored):
        lo, hi = v.interval or (v.accuracy, v.accuracy)
        ax.errorbar(100 * v.accuracy, i, xerr=[[100 * (v.accuracy - lo)], [100 * (hi - v.accuracy)]], fmt="o",
                    capsize=4, color="#2a7" if v.name == decision.recommendation else "#357")
    ax.set_yticks(range(len(scored)), [v.name for v in scored], fontsize=8)
    ax.set_ylim(len(scored) - 0.5, -0.5)  # the first variant on top, half a row of room at both ends
    ref = decision.reference
    if ref:
        ax.axvline(100 * ref["accuracy"], color="#999", linestyle=":", label=f"no LM: {ref['k']}-neighbour vote")
        # above the axes: inside, it hid the point of whichever variant scored near the reference
        ax.legend(fontsize=7, loc="lower right", bbox_to_anchor=(1, 1), frameon=False, borderaxespad=0.2)
    ax.set_xlabel("test accuracy % (95% bootstrap interval)")
    out.append(_figure(fig, "plot-accuracy", "Test accuracy of each variant with its 95% bootstrap interval "
                                             "(the recommended one in green" +
                       ("; dotted: the reference without an LM" if ref else "") + ")."))
    costed = [v for v in scored if v.inference]
    if costed:
        priced = all(v.cost_per_1000_calls is not None for v in costed)
        x = [v.cost_per_1000_calls if priced else v.inference["prompt_tokens_per_call"] for v in costed]
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        ax.scatter(x, [100 * v.accuracy for v in costed], color="#357")
        for xi, v in zip(x, costed):
            ax.annotate(v.name, (xi, 100 * v.accuracy), textcoords="offset points", xytext=(4, 4), fontsize=8)
        front, best = [], -1.0
        for xi, v in sorted(zip(x, costed), key=lambda t: (t[0], -t[1].accuracy)):
            if v.accuracy > best:
                front.append((xi, 100 * v.accuracy))
                best = v.accuracy
        ax.plot(*zip(*front), "--o", color="#2a7", mfc="none", ms=10, label="frontier")
        ax.margins(x=0.2, y=0.1)  # room for the names beside the points at the right and top edges
        ax.set_xlabel("cost per 1,000 calls" if priced else "prompt tokens per call")
        ax.set_ylabel("test accuracy %")
        ax.legend(fontsize=8)
        out.append(_figure(fig, "plot-frontier", "Accuracy against inference cost per call; the dashed line joins "
                                                 "the variants no other beats on both."))
    curves = [v for v in scored if v.data_curve]
    if curves:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for v in curves:
            points = [(p["examples"], 100 * p["score"]) for p in v.data_curve if "score" in p]
            if points:
                ax.plot(*zip(*points), "o-", label=v.label)
        ax.set_xscale("log")
        sizes = sorted({p["examples"] for v in curves for p in v.data_curve})
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set_xlabel("labelled train examples")
        ax.set_ylabel("test accuracy %")
        ax.legend(fontsize=8)
        out.append(_figure(fig, "plot-data", "Test accuracy against the number of labelled examples used."))
    return out


def _figure(fig: Any, ident: str, caption: str) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.tight_layout()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    plt.close(fig)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML prolog and doctype: the page is HTML
    return f'<figure id="{ident}">{svg}<figcaption>{html.escape(caption)}</figcaption></figure>'
