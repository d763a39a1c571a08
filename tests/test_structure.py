"""How the code is laid out, checked: no import cycles among far_export and far_runtime
modules, no file over 500 lines, no ``causal_*`` twin of a module (a variant is added in
``far_runtime/variants/`` and ``far_export/families/``, never as a copy of existing files),
and the torch-free runtime imports neither torch nor far_export."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = {"far_export": ROOT / "far_export", "far_runtime": ROOT / "runtime" / "far_runtime"}
MAX_LINES = 500


def modules() -> dict[str, pathlib.Path]:
    out = {}
    for pkg, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([pkg, *parts])] = path
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in mods and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1
        stack.append(root); on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1
                    stack.append(w); on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop(); on.discard(w); comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_no_file_over_500_lines():
    long = []
    for path in [*ROOT.joinpath("far_export").rglob("*.py"), *ROOT.joinpath("runtime").rglob("*.py"),
                 *ROOT.joinpath("tests").rglob("*.py"), *ROOT.joinpath("runtime", "cpp").rglob("*.[ch]pp"),
                 *ROOT.joinpath("runtime", "cpp").rglob("*.h")]:
        if ".venv" in path.parts or "build" in path.parts:
            continue
        n = len(path.read_text().splitlines())
        if n > MAX_LINES:
            long.append(f"{path.relative_to(ROOT)}: {n}")
    assert long == []


def test_no_causal_twin_modules():
    twins = [str(p.relative_to(ROOT)) for root in PACKAGES.values() for p in root.rglob("causal_*.py")]
    assert twins == []


def test_runtime_imports_neither_torch_nor_far_export():
    bad = []
    for name, path in modules().items():
        if not name.startswith("far_runtime"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            bad += [f"{name}: {n}" for n in names if n.split(".")[0] in ("torch", "far_export")]
    assert bad == []
