#!/usr/bin/env python3
"""Checks the import structure of src/: top-level modules form layers and
every `crate::` reference points down the list (or stays inside its own
module), so no import circle can form. `make lint` runs it.

    tests/layers.py [SRC]      check SRC (default: src/ next to this file)
    tests/layers.py --self-test

Exit 0 when the tree keeps to the layers; 1 with one line per offending
reference (file:line, from -> to) otherwise.
"""

import os
import re
import sys
import tempfile

# Highest first. A module may use any module on a lower line, and modules
# on its own line only where listed in SIDEWAYS.
LAYERS = [
    ["cli"],
    ["agent"],
    ["api", "coord"],
    ["runtime"],
    ["providers", "store", "metrics", "logging"],
    ["config"],
    ["protocol", "os", "http"],
]
SIDEWAYS = set()

REF = re.compile(r"\bcrate::(?:\{\s*)?([a-z_][a-z0-9_]*)")
GROUP = re.compile(r"\bcrate::\{([^}]*)\}")


def top_module(src, path):
    rel = os.path.relpath(path, src)
    first = rel.split(os.sep)[0]
    return first[:-3] if first.endswith(".rs") else first


def references(path):
    """(line number, module) for every `crate::x` outside comments,
    including the members of `use crate::{...}` groups spread over lines."""
    with open(path, encoding="utf-8") as f:
        lines = [line.split("//", 1)[0] for line in f]
    text = "\n".join(lines)
    line_of = lambda pos: text.count("\n", 0, pos) + 1
    for m in REF.finditer(text):
        yield line_of(m.start()), m.group(1)
    for m in GROUP.finditer(text):
        for item in m.group(1).split(","):
            name = item.strip().split("::")[0].split(" ")[0].strip("{ \n")
            if name:
                yield line_of(m.start()), name


def check(src):
    rank = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    problems = []
    edges = {}
    for root, _, files in os.walk(src):
        for name in sorted(files):
            if not name.endswith(".rs"):
                continue
            path = os.path.join(root, name)
            if os.path.dirname(path) == src and name in ("lib.rs", "main.rs"):
                continue
            here = top_module(src, path)
            if here not in rank:
                problems.append(f"{path}: module {here} is in no layer of tests/layers.py")
                continue
            for n, there in references(path):
                if there == here or there not in rank:
                    # `crate::VERSION` and the like: items of lib.rs.
                    continue
                edges.setdefault(here, set()).add(there)
                up = rank[there] < rank[here]
                beside = rank[there] == rank[here] and (here, there) not in SIDEWAYS
                if up or beside:
                    problems.append(
                        f"{path}:{n}: {here} -> {there} points "
                        + ("up" if up else "sideways")
                        + " the layers"
                    )
    problems.extend(cycles(edges))
    return problems


def cycles(edges):
    """Import circles among top-level modules, each named once."""
    found, seen = [], set()

    def walk(node, stack):
        for nxt in sorted(edges.get(node, ())):
            if nxt in stack:
                circle = stack[stack.index(nxt):] + [nxt]
                key = frozenset(circle)
                if key not in seen:
                    seen.add(key)
                    found.append("import circle: " + " -> ".join(circle))
            elif len(stack) < len(edges) + 1:
                walk(nxt, stack + [nxt])

    for start in sorted(edges):
        walk(start, [start])
    return found


def self_test():
    """The check must catch an upward reference and a circle."""
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "runtime"))
        with open(os.path.join(d, "runtime", "mod.rs"), "w") as f:
            f.write("use crate::api::routes; // up\n")
        with open(os.path.join(d, "api.rs"), "w") as f:
            f.write("use crate::runtime::Runtime;\n")
        got = check(d)
        assert any("runtime -> api points up" in p for p in got), got
        assert any(p.startswith("import circle:") for p in got), got
        with open(os.path.join(d, "runtime", "mod.rs"), "w") as f:
            f.write("// crate::api in a comment is fine\nuse crate::{os, protocol::Code};\n")
        got = check(d)
        assert got == [], got
        with open(os.path.join(d, "runtime", "mod.rs"), "w") as f:
            f.write("use crate::{\n    os,\n    api::routes,\n};\n")
        got = check(d)
        assert any("runtime/mod.rs:1: runtime -> api points up" in p for p in got), got
    print("layers: self-test ok")


def main():
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        return 0
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "src")
    src = os.path.normpath(src)
    problems = check(src)
    for p in problems:
        print(p)
    if problems:
        print(f"layers: {len(problems)} problem(s); see the layer list in tests/layers.py")
        return 1
    print("layers: ok (" + " > ".join("/".join(l) for l in LAYERS) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
