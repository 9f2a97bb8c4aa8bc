"""The file's floor plan: banner sections that are layers, a scenario whose every declared
field a draw sets, and functions short enough to read in one screen."""

import ast
import re

import pytest

from conftest import SCRIPT, load_llmtrain

lt = load_llmtrain()

with open(SCRIPT, encoding="utf-8") as source_file:
    SOURCE = source_file.read()

#: A banner: a rule of `=`, one or more comment lines (the first is the title), a rule.
BANNER = re.compile(r"^# ={20,}\n# (.+)\n(?:#.*\n)*?# ={20,}$", re.M)


def sections(source):
    """[(first line, title)] of each banner section in file order; what comes before the
    first banner (the manual and the imports) is section 0, "header"."""
    found = [(1, "header")]
    for match in BANNER.finditer(source):
        found.append((source.count("\n", 0, match.start()) + 1, match.group(1)))
    return found


def section_of(lineno, starts):
    index = 0
    for position, (first, _) in enumerate(starts):
        if first <= lineno:
            index = position
    return index


def bound_names(node):
    """Names a function, lambda or comprehension binds for itself."""
    names = set()
    args = getattr(node, "args", None)
    if isinstance(args, ast.arguments):
        for arg in args.args + args.kwonlyargs + [args.vararg, args.kwarg]:
            if arg is not None:
                names.add(arg.arg)
    for child in ast.walk(node):
        if isinstance(child, ast.Name) and isinstance(child.ctx, (ast.Store, ast.Del)):
            names.add(child.id)
        elif isinstance(child, (ast.FunctionDef, ast.ClassDef)) and child is not node:
            names.add(child.name)
        elif isinstance(child, ast.ExceptHandler) and child.name:
            names.add(child.name)
        elif isinstance(child, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in child.names)
    return names


def used_globals(statement):
    """Module-level names a top-level statement reads, wherever in its body."""
    used = set()

    def visit(node, local):
        if isinstance(node, (ast.FunctionDef, ast.Lambda, ast.ListComp, ast.SetComp,
                             ast.DictComp, ast.GeneratorExp)):
            for default in getattr(getattr(node, "args", None), "defaults", []):
                visit(default, local)
            local = local | bound_names(node)
            children = node.body if isinstance(node, ast.FunctionDef) else [
                child for child in ast.iter_child_nodes(node) if not isinstance(
                    child, ast.arguments)]
            for decorator in getattr(node, "decorator_list", []):
                visit(decorator, local)
        else:
            children = list(ast.iter_child_nodes(node))
        if (isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
                and node.id not in local):
            used.add(node.id)
        for child in children:
            visit(child, local)

    visit(statement, frozenset())
    return used


def defined_names(statement):
    if isinstance(statement, (ast.FunctionDef, ast.ClassDef)):
        return {statement.name}
    if isinstance(statement, ast.Assign):
        return {target.id for target in statement.targets if isinstance(target, ast.Name)}
    if isinstance(statement, (ast.Import, ast.ImportFrom)):
        return {(alias.asname or alias.name).split(".")[0] for alias in statement.names}
    return set()


def layering_violations(source):
    """['name (section) uses name (later section)'] for every top-level statement that reads
    a name a later banner section defines."""
    starts = sections(source)
    tree = ast.parse(source)
    home = {}
    for statement in tree.body:
        for name in defined_names(statement):
            home.setdefault(name, section_of(statement.lineno, starts))
    found = []
    for statement in tree.body:
        here = section_of(statement.lineno, starts)
        user = sorted(defined_names(statement)) or ["line %d" % statement.lineno]
        for name in sorted(used_globals(statement)):
            if home.get(name, 0) > here:
                found.append("%s (%s) uses %s (%s)" % (user[0], starts[here][1], name,
                                                       starts[home[name]][1]))
    return found


def test_banner_sections_are_layers():
    assert len(sections(SOURCE)) >= 12
    assert layering_violations(SOURCE) == []


def test_the_layering_check_catches_a_name_from_a_later_section():
    first_banner = BANNER.search(SOURCE)
    probe = "\n\ndef probe():\n    return main(), Plot\n"
    broken = SOURCE[:first_banner.end()] + probe + SOURCE[first_banner.end():]
    found = layering_violations(broken)
    assert len(found) == 2 and all(text.startswith("probe (") for text in found)
    assert "uses Plot (" in found[0] + found[1] and "uses main (" in found[0] + found[1]


def test_the_layering_check_knows_local_names_from_globals():
    local = "def later():\n    pass\n\n\ndef early(later=1):\n    return [later for later in ()]\n"
    assert used_globals(ast.parse(local).body[1]) == set()
    assert used_globals(ast.parse("def f():\n    return later\n").body[0]) == {"later"}


def test_functions_read_in_one_screen():
    lengths = sorted((node.end_lineno - node.lineno + 1, node.name)
                     for node in ast.walk(ast.parse(SOURCE))
                     if isinstance(node, ast.FunctionDef))
    assert lengths[-1][0] < 50, "longest: %s (%d lines)" % (lengths[-1][1], lengths[-1][0])


#: Requests at the edges the other tests use: every GPU, tiny and huge clusters and models.
EDGES = ([{"gpu_key": key} for key in ("a100-40g", "a100", "h100", "h200", "b200", "mi300x")]
         + [{"gpus": n} for n in (1, 2, 3, 12, 24, 256, 4096)]
         + [{"model_name": m.name} for m in lt.MODELS]
         + [{"model_name": "acme-125M"}, {"model_name": "acme-1000B"},
            {"model_name": "acme-125M", "gpus": 64, "gpu_key": "h100"},
            {"model_name": "Llama-3.1-405B", "gpus": 8, "gpu_key": "a100"},
            {"humor": "max"}, {"humor": "off"}])


def unset_fields(sc):
    return [name for name in lt.Scenario.__slots__ if not hasattr(sc, name)]


def test_every_declared_field_is_set_by_every_draw():
    for seed in range(300):
        sc = lt.build_scenario(seed)
        assert unset_fields(sc) == [], seed
    for options in EDGES:
        for seed in range(4):
            sc = lt.build_scenario(seed, **options)
            assert unset_fields(sc) == [], (seed, options)


def test_a_field_is_assigned_once_and_only_if_declared():
    sc = lt.build_scenario(1)
    with pytest.raises(AttributeError):
        sc.fill(lt.Session(1, 10, 2, 0.0))
    with pytest.raises(AttributeError):
        sc.not_a_field = 1
    fresh = lt.Scenario()
    assert len(unset_fields(fresh)) == len(lt.Scenario.__slots__)
    fresh.fill(lt.Session(1, 10, 2, 0.0))
    assert fresh.eval_every == 10 and len(unset_fields(fresh)) == len(lt.Scenario.__slots__) - 4
