"""The code's layout: no import cycle among the modules of agent/ (nor among its packages), so each concern can
be read, imported and tested on its own."""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def agent_imports() -> dict[str, set[str]]:
    """{module: the agent.* modules it imports} for every module under agent/."""
    graph = {}
    for folder, _, files in os.walk(os.path.join(REPO, "agent")):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".").removesuffix(".__init__")
            with open(path) as f:
                tree = ast.parse(f.read())
            graph[module] = {node.module for node in ast.walk(tree)
                             if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("agent.")}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path (first node repeated at the end), or None (depth-first search)."""
    done, path = set(), []

    def visit(node: str) -> list[str] | None:
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                return path[path.index(nxt):] + [nxt]
            if nxt not in done:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done:
            found = visit(node)
            if found:
                return found
    return None


def package_of(module: str) -> str:
    """agent.finetune.base -> agent.finetune"""
    return ".".join(module.split(".")[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between agent's packages that `graph` (between modules) implies."""
    out = {}
    for module, imports in graph.items():
        out.setdefault(package_of(module), set()).update(
            package_of(m) for m in imports if package_of(m) != package_of(module))
    return out


def test_no_import_cycle_among_agent_modules_or_packages():
    graph = agent_imports()
    assert "agent.finetune.base" in graph and graph["agent.finetune.base"], "the parser read agent/"
    assert cycle(graph) is None, cycle(graph)
    assert cycle(package_graph(graph)) is None, cycle(package_graph(graph))


def test_the_cycle_finder_finds_a_package_cycle():
    graph = {"agent.finetune.base": {"agent.eval.rollout"}, "agent.eval.rollout": {"agent.finetune.episodes"},
             "agent.finetune.episodes": set()}
    assert cycle(graph) is None
    assert cycle(package_graph(graph)) == ["agent.eval", "agent.finetune", "agent.eval"]
