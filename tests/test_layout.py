"""The house rules that keep the architecture readable, checked: no import cycle, configs (and
the CLI) load without torch, method facts are declared once and consistently, every reference
in code and docs resolves inside the repository, and ruff is clean."""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

SRC = REPO / "src" / "aptune"


# -- imports -------------------------------------------------------------------------------------
def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Every aptune module `path` imports, at module level or inside functions (imports guarded
    by `if TYPE_CHECKING:` do not run, so they do not count)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node):
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from . import hooks` imports the module aptune.hooks
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    return {name: imported_modules(path, set(files)) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            connect(v)
    return found


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50 and "aptune.apt.pruner" in graph["aptune.apt.callback"]
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_algorithms_never_import_the_layers_above_them():
    graph = import_graph()
    above = {"aptune.pipeline", "aptune.cli", "aptune.methods", "aptune.bench", "aptune.config"}
    for name, deps in graph.items():
        if name.startswith(("aptune.apt.", "aptune.cofi.", "aptune.mask_tuning.", "aptune.arch",
                            "aptune.surgery", "aptune.hooks", "aptune.structure", "aptune.train")):
            upward = {d for d in deps if any(d == a or d.startswith(a + ".") for a in above)}
            assert not upward, (name, upward)


@pytest.mark.parametrize("module", ["aptune.config", "aptune.methods", "aptune.cli", "aptune"])
def test_configs_and_the_cli_load_without_torch(module):
    code = (f"import sys, {module}; heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- method facts --------------------------------------------------------------------------------
def test_method_facts_are_declared_once_and_consistently():
    from aptune.bench.suites import TABLE2_METHODS
    from aptune.config import TrainConfig
    from aptune.methods import METHODS

    assert list(METHODS) == ["ft", "lora", "lora-prune", "cofi", "cofi-lora", "apt"]
    assert [m for m, _ in TABLE2_METHODS] == list(METHODS)
    config_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for name, method in METHODS.items():
        assert method.name == name and method.label and method.default_lr > 0
        cfg = TrainConfig(method=name)
        # learning rates wait for the model's width (aptune.defaults); weight decay does not
        assert (cfg.lr, cfg.weight_decay) == (None, method.default_weight_decay)
        assert set(method.paper_learning_rates()) <= config_fields
        assert all(getattr(cfg, name) is None for name in method.paper_learning_rates())
        if method.config_section is not None:
            assert issubclass(TrainConfig, method.config_section)
        need = method.prerequisite
        if need is not None:
            assert need.method in METHODS and METHODS[need.method].prerequisite is None
            assert need.folder_field in config_fields
            assert set(need.inline.values()) <= config_fields and set(need.inline) <= config_fields


def test_choice_fields_are_validated_and_shown_from_one_list():
    from aptune.cli import app
    from aptune.config import TrainConfig
    from aptune.errors import AptuneError
    from aptune.fields import choices, field_types
    from tests.helpers import RUNNER

    types = field_types(TrainConfig)
    listed = {name: choices(t) for name, t in types.items() if choices(t)}
    assert {"method", "rank_selection", "mt_constraint", "cofi_lora_tr"} <= set(listed)
    with pytest.raises(AptuneError, match="--rank-selection must be one of tophalf, all"):
        TrainConfig(rank_selection="best")
    text = " ".join(RUNNER.invoke(app, ["train", "--help"], env={"COLUMNS": "300"}).stdout.split())
    assert "One of: tophalf, all." in text
    assert "One of: ft, lora, lora-prune, cofi, cofi-lora, apt." in text
    # one --help panel per method config section, named after the methods that read it
    for panel in ("Run (every method", "APT options (--method apt)",
                  "LoRA+Prune options (--method lora-prune)",
                  "Prune+Distill and LoRA+Prune+Distill options (--method cofi, cofi-lora)", "Adapters"):
        assert panel in text, panel


def test_train_help_reads_at_80_columns():
    """Every flag's full name starts a line, no line passes 80 columns, and the panels come in
    the order a reader needs them: the common flags, adapters, APT, then the baselines."""
    from dataclasses import fields

    from aptune.cli import app
    from aptune.config import TrainConfig
    from tests.helpers import RUNNER

    text = RUNNER.invoke(app, ["train", "--help"], env={"COLUMNS": "80"}).stdout
    assert max(len(line) for line in text.splitlines()) <= 80
    starts = {line.split()[0] for line in text.splitlines() if line.startswith("  --")}
    for f in fields(TrainConfig):
        assert f"--{f.name.replace('_', '-')}" in starts, f.name
    panels = [ln for ln in text.splitlines() if ln and not ln.startswith(" ") and ln.endswith(":")]
    assert [p.split()[0].rstrip(":") for p in panels] == \
        ["Run", "Your", "Question", "Summarisation", "Adapters", "APT", "LoRA+Prune", "Prune+Distill",
             "Options"]
    assert "aptune recipes" in text.split("Options:")[1]  # the epilog points to the recipes
    overview = RUNNER.invoke(app, ["--help"], env={"COLUMNS": "80"}).stdout.split("Commands:")[1]
    assert [ln.split()[0] for ln in overview.strip().splitlines()] == \
        ["train", "eval", "predict", "export", "bench", "recipes"]
    assert "..." not in overview  # one whole line each


# -- references ----------------------------------------------------------------------------------
SCANNED = [*SRC.rglob("*.py"), *(REPO / "tests").rglob("*.py"), *(REPO / "bench").glob("*"),
           REPO / "README.md", *(REPO / "docs").glob("*.md"), *SRC.rglob("*.yaml")]
DOC_REF = re.compile(r"docs/([\w-]+)\.md(?:#([\w-]+))?")
DOC_LINK = re.compile(r"\]\(([\w-]+)\.md(?:#([\w-]+))?\)")  # a link from one doc to another
# Specification files that are not part of the repository, and their private numbering.
SPEC_FILES = r"(apt-method|baselines|protocol|models|design|paper-results)\.md"
OUTSIDE_REF = re.compile(r"(?<![\w/\[])(?<!\]\()" + SPEC_FILES
                         + r"|shared/spec|pitfall P\d|(?<!paper )(?<!Paper )§ ?\d|\bB1\d\b")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@functools.lru_cache(maxsize=None)  # every link into a page reads the same headings
def anchors(doc: Path) -> set[str]:
    text = doc.read_text()
    found = {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}
    return found | set(re.findall(r"<a id=\"([\w-]+)\"", text))


def scanned_files() -> list[Path]:
    return [p for p in SCANNED if p.is_file() and p.name != "test_layout.py" and p.suffix != ".png"]


def test_every_docs_reference_resolves():
    refs = 0
    for path in scanned_files():
        text = path.read_text(errors="ignore")
        links = DOC_LINK.finditer(text) if path.parent == REPO / "docs" else ()
        for m in [*DOC_REF.finditer(text), *links]:
            doc = REPO / "docs" / f"{m.group(1)}.md"
            assert doc.is_file(), (path, m.group(0))
            if m.group(2):
                assert m.group(2) in anchors(doc), (str(path.relative_to(REPO)), m.group(0))
            refs += 1
    assert refs > 60  # the code cites the docs throughout


MD_LINK = re.compile(r"\]\(([^)\s]*)\)")  # [text](target) in Markdown


def test_every_markdown_link_resolves():
    """The README and the docs link to their own sections, to each other and to result folders;
    a renamed heading or a moved file would leave a link that leads nowhere."""
    checked = 0
    for page in [REPO / "README.md", *(REPO / "docs").rglob("*.md")]:
        text = page.read_text()
        for target in MD_LINK.findall(text):
            if re.match(r"[a-z]+:", target):  # http(s):, mailto: ... leave the repository
                continue
            path, _, anchor = target.partition("#")
            doc = (page.parent / path).resolve() if path else page
            assert doc.exists(), (str(page.relative_to(REPO)), target)
            if anchor and doc.suffix == ".md":
                assert anchor in anchors(doc), (str(page.relative_to(REPO)), target)
            checked += 1
    assert checked > 100


def test_no_reference_leads_outside_the_repository():
    leaks = [f"{p.relative_to(REPO)}: {m.group(0)}" for p in scanned_files()
             for m in OUTSIDE_REF.finditer(p.read_text(errors="ignore"))]
    assert leaks == []


def test_the_linter_wheel_is_not_committed():
    assert not list(REPO.glob("*.whl"))


# -- lint ----------------------------------------------------------------------------------------
def test_ruff_is_clean():
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (it comes with the test extra: pip install -e '.[test]')")
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "src", "tests", "bench"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
