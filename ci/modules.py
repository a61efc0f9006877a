#!/usr/bin/env python3
"""The crate's module graph, from its `crate::` and `super::` paths: which
file uses which, import cycles between files, and modules that use the
internals of a module above them (an item of their parent, or further up,
that is not `pub`: the parent's own business, not its interface). Test modules (`#[cfg(test)]` to the end of a file, and files named
tests.rs) are left out: tests may reach anywhere.

Usage: ci/modules.py [--edges] [SRC]   (SRC defaults to src/)
Exit status 1 when there is a cycle or an upward use; ci/test.sh runs it.
"""

import os
import re
import sys


def module_of(rel):
    """src-relative file path -> module path (tuple of names)."""
    parts = rel[:-3].split("/")
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def product_text(text):
    """The file without its test module (from #[cfg(test)] on)."""
    m = re.search(r"^\s*#\[cfg\(test\)\]\s*\n\s*mod ", text, re.M)
    text = text[: m.start()] if m else text
    text = strip_comments_and_strings(text)
    # Visibilities name modules without using them.
    return re.sub(r"pub\((?:in )?(?:super|crate|self)[^)]*\)", "pub", text)


def strip_comments_and_strings(text):
    """The code without comments, string literals and char literals (which
    may name modules without using them)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c == "r" and re.match(r'r#*"', text[i:]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r"r(#*)\"", text[i:]).group(1)
            j = text.find('"' + hashes, i + 2 + len(hashes))
            i = n if j < 0 else j + 1 + len(hashes)
            out.append('""')
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            out.append('""')
        elif c == "'" and re.match(r"'(\\.[^']*|[^'\\])'", text[i:]):
            i += len(re.match(r"'(\\.[^']*|[^'\\])'", text[i:]).group(0))
            out.append("' '")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def is_pub(src, rel, name):
    """Whether `name` is declared `pub` (or re-exported with `pub use`) in
    the file `rel`; anything else there is its internals."""
    text = open(os.path.join(src, rel), encoding="utf-8").read()
    item = rf"^\s*pub (?:async )?(?:unsafe )?(?:fn|struct|enum|trait|const|static|type|mod) {name}\b"
    reexport = rf"^pub use [^;]*\b{name}\b[^;]*;"
    return bool(re.search(item, text, re.M) or re.search(reexport, text, re.M | re.S))


def paths_used(text):
    """Every crate::a::b and super::a path, with the names in braces."""
    out = []
    for m in re.finditer(r"\b((?:crate|super)(?:::(?:super|[A-Za-z_][A-Za-z0-9_]*))*)(::\{([^;]*?)\})?", text, re.S):
        base = m.group(1).split("::")
        inner = m.group(3)
        if inner is None:
            out.append(base)
            continue
        for item in re.split(r",(?![^{]*\})", inner):
            item = item.strip()
            if not item:
                continue
            name = re.split(r"\s|::|\{", item)[0]
            out.append(base + ([] if name == "self" else [name]))
    return out


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    show_edges = "--edges" in sys.argv
    src = args[0] if args else "src"
    files = {}
    for dp, _, names in os.walk(src):
        for n in names:
            if n.endswith(".rs") and n != "tests.rs" and n != "main.rs":
                rel = os.path.relpath(os.path.join(dp, n), src)
                files[module_of(rel)] = rel
    modules = set(files)
    edges = {}
    upward = []
    for mod, rel in sorted(files.items()):
        text = product_text(open(os.path.join(src, rel), encoding="utf-8").read())
        for path in paths_used(text):
            if path[0] == "crate":
                target = list(path[1:])
            else:
                target = list(mod)
                for p in path:
                    if p == "super":
                        target = target[:-1]
                    else:
                        target.append(p)
            # The longest prefix that is a file of the crate.
            while target and tuple(target) not in modules:
                target.pop()
            target = tuple(target)
            if target == mod or tuple(target) not in modules:
                continue
            edges.setdefault(mod, set()).add(target)
            # A private item of a module above this one.
            if len(target) < len(mod) and mod[: len(target)] == target:
                name = path[-1]
                if name not in ("super", "crate", "self") and not is_pub(src, files[target], name):
                    upward.append((rel, files[target], "::".join(path)))
    # Cycles: strongly connected components with more than one file.
    index, low, stack, on, sccs = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.remove(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(modules):
        if v not in index:
            visit(v)
    n_edges = sum(len(t) for t in edges.values())
    print(f"modules: {len(modules)} files, {n_edges} uses between them")
    if show_edges:
        for m in sorted(edges):
            print(f"  {files[m]} -> " + ", ".join(sorted(files[t] for t in edges[m])))
    for comp in sccs:
        print("cycle: " + " <-> ".join(sorted(files[m] for m in comp)))
    for rel, parent, path in upward:
        print(f"upward: {rel} uses {path} of {parent}")
    print(f"cycles: {len(sccs)}, upward uses: {len(upward)}")
    return 1 if sccs or upward else 0


if __name__ == "__main__":
    sys.exit(main())
