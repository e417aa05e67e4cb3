"""The shape of the code: rooms that import only the rooms below them, a training command that
is a thin entry point nothing imports, and one batch recipe."""

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


# The package's rooms, bottom to top: a room imports only from itself and the rooms before it
# (config.py is a room of one). runtime knows nothing of the model; commands are the top.
ROOMS = ("runtime", "config", "model", "data", "distributed", "evaluation", "training", "serving", "commands")


def room_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "dimerec_dist" and len(parts) > 1 else None


def test_every_module_lives_in_a_room():
    package = REPO / "dimerec_dist"
    loose = sorted(p.name for p in package.glob("*.py") if p.name not in ("__init__.py", "config.py"))
    assert loose == [], "a module belongs in one of the rooms " + ", ".join(ROOMS)
    rooms = sorted(p.name for p in package.iterdir() if (p / "__init__.py").is_file())
    assert sorted(set(ROOMS) - {"config"}) == rooms


def test_each_room_imports_only_itself_and_the_rooms_below_it():
    upward = []
    for path in sorted((REPO / "dimerec_dist").rglob("*.py")):
        relative = path.relative_to(REPO / "dimerec_dist")
        room = relative.parts[0].removesuffix(".py")
        if room == "__init__":
            continue
        below = set(ROOMS[: ROOMS.index(room) + 1])
        for module in imported_modules(path):
            target = room_of(module)
            if target in ROOMS and target not in below:
                upward.append(f"{relative} imports {module}")
    assert upward == [], "an import up the rooms (" + " < ".join(ROOMS) + ")"


def test_no_product_or_tool_module_imports_the_training_command():
    sources = sorted((REPO / "dimerec_dist").rglob("*.py")) + sorted((REPO / "tools").rglob("*.py"))
    importers = [
        str(path.relative_to(REPO))
        for path in sources
        if path.name != "train.py" and "dimerec_dist.commands.train" in imported_modules(path)
    ]
    assert importers == [], "build through dimerec_dist.training.builders / trainer, not the training command"


def test_the_training_command_is_an_entry_point_only():
    train = REPO / "dimerec_dist" / "commands" / "train.py"
    assert len(train.read_text().splitlines()) < 80
    assert imported_modules(train) & {"dimerec_dist.training.trainer", "dimerec_dist.training.trainer.train_command"}


def test_the_product_never_imports_the_research_area():
    importers = [
        str(path.relative_to(REPO))
        for path in sorted((REPO / "dimerec_dist").rglob("*.py"))
        if any(name == "research" or name.startswith("research.") for name in imported_modules(path))
    ]
    assert importers == [], "dimerec_dist must work from an installed wheel, without research/"


def calls_in(path: Path) -> set[str]:
    """Names called in `path`: f(...) as 'f', a.b(...) as 'a.b' (the last two parts)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                names.add(func.id)
            elif isinstance(func, ast.Attribute):
                owner = func.value.id if isinstance(func.value, ast.Name) else ""
                names.add(f"{owner}.{func.attr}" if owner else func.attr)
    return names


def test_the_batch_recipe_is_made_in_one_place_that_the_trainer_and_the_benchmark_both_use():
    """Negatives, logQ corrections and the diffusion noise of a step's batch are made only by
    data/batch_maker.py: a second recipe (say in the benchmark) would time a step training never runs."""
    recipe = {"make_batch", "NegativeSampler", "NoiseDraw.draw", "noise_for_rank", "logq_corrections"}
    sources = sorted((REPO / "dimerec_dist").rglob("*.py")) + sorted((REPO / "tools").rglob("*.py"))
    allowed = {
        "dimerec_dist/data/batch_maker.py": recipe,
        "dimerec_dist/evaluation/ranking.py": {"make_batch"},  # batches of users to rank: no negatives, no noise
        "dimerec_dist/model/dimerec.py": {"NoiseDraw.draw"},  # the reverse process's own start
    }
    makers = {
        str(path.relative_to(REPO)): sorted(calls_in(path) & recipe)
        for path in sources
        if calls_in(path) & recipe - allowed.get(str(path.relative_to(REPO)), set())
    }
    assert makers == {}, "make a step's batch with dimerec_dist.data.batch_maker.BatchMaker"
    for user in ("dimerec_dist/data/job_data.py", "tools/bench_train.py", "tools/bench_data.py"):
        assert "BatchMaker" in calls_in(REPO / user), user
    bench = calls_in(REPO / "tools" / "bench_train.py")
    assert "build_step_runner" in bench, "the benchmark times the trainer's own step runner"
    trainer = (REPO / "dimerec_dist" / "training" / "trainer.py").read_text()
    assert "__new__" not in trainer and "self.data.batch_maker" in trainer


def test_every_command_line_option_says_what_it_is_for():
    """--help is a newcomer's first page: no option of any command without its help text."""
    silent = []
    for path in sorted((REPO / "dimerec_dist").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            is_option = isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument"
            if is_option and not any(keyword.arg == "help" for keyword in node.keywords):
                silent.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert silent == []
