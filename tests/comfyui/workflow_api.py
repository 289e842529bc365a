"""UI-format workflow (what the ComfyUI page saves: nodes/links/widgets_values) -> API-format prompt.

The widget values of a node are matched to its widget inputs in the order of ``/object_info``'s
``input_order`` (required, then optional). A widget with ``control_after_generate`` (or an INT named
``seed``/``noise_seed``, which the page gives one too) is followed by one extra value in ``widgets_values``
("fixed", "randomize", ...), which is skipped. Linked inputs (sockets, or widgets converted to inputs) come from
``links``. Frontend-only nodes (Note, MarkdownNote, Reroute is not supported) are dropped; muted nodes
(mode 2) are dropped; bypassed nodes (mode 4) are not supported.
"""
from __future__ import annotations

FRONTEND_ONLY = {"Note", "MarkdownNote"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _all_inputs(info: dict) -> list:
    """[(name, spec)] in widget order."""
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    out = []
    for section in ("required", "optional"):
        specs = info["input"].get(section, {})
        for name in order.get(section, []):
            if name in specs:
                out.append((name, specs[name]))
    return out


def is_widget(spec) -> bool:
    t = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if opts.get("forceInput"):
        return False
    return isinstance(t, list) or t in WIDGET_TYPES


def has_control(name: str, spec) -> bool:
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "control_after_generate" in opts:
        return bool(opts["control_after_generate"])
    return spec[0] == "INT" and name in ("seed", "noise_seed")


def widget_names(info: dict) -> list:
    return [n for n, s in _all_inputs(info) if is_widget(s)]


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    links = {lk[0]: lk for lk in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        ntype = node["type"]
        if ntype in FRONTEND_ONLY or node.get("mode", 0) == 2:
            continue
        if node.get("mode", 0) == 4:
            raise ValueError(f"node {node['id']} ({ntype}) is bypassed; the converter does not support bypass")
        if ntype not in object_info:
            raise ValueError(f"node {node['id']}: unknown node type {ntype!r} (not in /object_info)")
        info = object_info[ntype]
        inputs = {}
        for inp in node.get("inputs", []) or []:
            if inp.get("link") is not None:
                lk = links[inp["link"]]
                inputs[inp["name"]] = [str(lk[1]), int(lk[2])]
        values = node.get("widgets_values", [])
        specs = _all_inputs(info)
        if isinstance(values, dict):
            for name, spec in specs:
                if is_widget(spec) and name in values and name not in inputs:
                    inputs[name] = values[name]
        else:
            i = 0
            for name, spec in specs:
                if not is_widget(spec):
                    continue
                if i >= len(values):
                    break
                val = values[i]
                i += 1
                if has_control(name, spec):
                    i += 1
                if name not in inputs:
                    inputs[name] = val
        prompt[str(node["id"])] = {"class_type": ntype, "inputs": inputs,
                                   "_meta": {"title": node.get("title") or ntype}}
    return prompt
