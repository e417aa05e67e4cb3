"""The shape of the code: the training command is a thin entry point that nothing imports."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_no_product_or_tool_module_imports_the_training_command():
    sources = sorted((REPO / "dimerec_dist").rglob("*.py")) + sorted((REPO / "tools").rglob("*.py"))
    importers = [
        str(path.relative_to(REPO))
        for path in sources
        if path.name != "train.py" and "dimerec_dist.train" in imported_modules(path)
    ]
    assert importers == [], "build through dimerec_dist.builders / trainer, not the training command"


def test_the_training_command_is_an_entry_point_only():
    train = REPO / "dimerec_dist" / "train.py"
    assert len(train.read_text().splitlines()) < 80
    assert imported_modules(train) & {"dimerec_dist.trainer", "dimerec_dist.trainer.train_command"}


def test_the_product_never_imports_the_research_area():
    importers = [
        str(path.relative_to(REPO))
        for path in sorted((REPO / "dimerec_dist").rglob("*.py"))
        if any(name == "research" or name.startswith("research.") for name in imported_modules(path))
    ]
    assert importers == [], "dimerec_dist must work from an installed wheel, without research/"
