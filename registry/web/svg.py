"""Draw a lineage graph as SVG, laid out in Python (no Graphviz binary needed).

Why not Graphviz: `make demo` and `registry report` must work on a machine with nothing but
Python, and a lineage graph is a forest (each run has one parent, each checkpoint one writer), for
which a lane layout reads like `git log --graph`: a node sits one row below its parent, the first
child keeps its parent's lane, every further child opens a new lane to the right. Linear in the
number of nodes, so a 200-run chain lays out in milliseconds.
"""

from __future__ import annotations

from html import escape

from .graph import LineageGraph

NODE_W, NODE_H = 230, 46
LANE_W, ROW_H = 260, 78
MARGIN = 16
_FILL = {"run": "#e8f0fe", "checkpoint": "#fff7e0", "collapsed": "#eeeeee"}
_STROKE = {"run": "#3b6fd8", "checkpoint": "#c08a00", "collapsed": "#777777"}
_STATUS = {"failed": "#c62828", "preempted": "#ef6c00", "running": "#2e7d32", "cancelled": "#777777"}


def layout(graph: LineageGraph) -> dict[str, tuple[int, int]]:
    """(lane, row) of every node."""
    ids = [n.id for n in graph.nodes]
    children: dict[str, list[str]] = {}
    has_parent: set[str] = set()
    for edge in graph.edges:
        if edge.source in ids and edge.target in ids and edge.target not in has_parent:
            children.setdefault(edge.source, []).append(edge.target)
            has_parent.add(edge.target)
    order = {node_id: i for i, node_id in enumerate(ids)}
    for kids in children.values():
        kids.sort(key=order.__getitem__)
    place: dict[str, tuple[int, int]] = {}
    next_lane = 0
    for root in [i for i in ids if i not in has_parent]:
        stack = [(root, next_lane, 0)]
        next_lane += 1
        while stack:
            node_id, lane, row = stack.pop()
            if node_id in place:
                continue
            place[node_id] = (lane, row)
            kids = children.get(node_id, [])
            extra = []
            for k, kid in enumerate(kids):
                if k == 0:
                    extra.append((kid, lane, row + 1))
                else:
                    extra.append((kid, next_lane, row + 1))
                    next_lane += 1
            stack.extend(reversed(extra))
    return place


def render_svg(graph: LineageGraph) -> str:
    """The graph as one `<svg>` element; every node is a link (`<a href>`) with `data-node` set."""
    place = layout(graph)
    lanes = max((lane for lane, _ in place.values()), default=0) + 1
    rows = max((row for _, row in place.values()), default=0) + 1
    width, height = lanes * LANE_W + 2 * MARGIN, rows * ROW_H + 2 * MARGIN
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="lineage" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="lineage of run {escape(graph.root)}">']

    def corner(node_id: str) -> tuple[int, int]:
        lane, row = place[node_id]
        return MARGIN + lane * LANE_W, MARGIN + row * ROW_H

    for edge in graph.edges:
        if edge.source not in place or edge.target not in place:
            continue
        (x1, y1), (x2, y2) = corner(edge.source), corner(edge.target)
        x1, y1, x2 = x1 + NODE_W // 2, y1 + NODE_H, x2 + NODE_W // 2
        dash = ' stroke-dasharray="5,3"' if edge.kind in ("converted", "collapsed") else ""
        out.append(f'<path class="edge edge-{edge.kind}" d="M{x1},{y1} C{x1},{y1 + 20} {x2},{y2 - 20} {x2},{y2}" '
                   f'fill="none" stroke="#888"{dash}/>')
        if edge.kind in ("resumed", "converted") and edge.label:
            # Just above the target: two edges leaving one node never share that spot.
            out.append(f'<text class="edge-label" x="{x2 + 6}" y="{y2 - 8}" font-size="10" '
                       f'fill="#555">{escape(edge.label[:60])}</text>')
    for node in graph.nodes:
        if node.id not in place:
            continue
        x, y = corner(node.id)
        stroke = _STATUS.get(node.status, _STROKE[node.kind])
        rx = 22 if node.kind == "checkpoint" else 4
        shape = (f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="{rx}" fill="{_FILL[node.kind]}" '
                 f'stroke="{stroke}" stroke-width="1.5"/>'
                 f'<text x="{x + 10}" y="{y + 18}" font-size="12" font-weight="600">{escape(node.label[:34])}</text>'
                 f'<text x="{x + 10}" y="{y + 35}" font-size="10" fill="#444">{escape(node.detail[:44])}</text>'
                 f'<title>{escape(node.label)} — {escape(node.detail)}</title>')
        group = f'<g class="node node-{node.kind}" id="{escape(node.id)}" data-node="{escape(node.id)}">{shape}</g>'
        if node.href:
            group = f'<a href="{escape(node.href)}" class="node-link">{group}</a>'
        out.append(group)
    out.append("</svg>")
    return "".join(out)
