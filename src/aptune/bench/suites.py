"""What a benchmark suite runs: one job per (task, method variant), with its recipe and overrides.

A job's recipe is the shipped `<scale>/<task>-<method>` recipe; the suite adds overrides (a
sparsity, an ablation switch) and wires the prerequisites that the methods declare
(aptune.methods): LoRA+Prune prunes the suite's own LoRA run, and the CoFi methods distil from
the suite's own FT run, so both are trained once and their time is charged to the methods that
need them (docs/protocol.md#prerequisite-stages).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import load_recipe
from ..errors import AptuneError
from ..methods import METHODS

SUITES = ("table2", "ablations", "sweep")
SCALES = ("smoke", "cpu", "paper")
TASKS = ("sst2", "mnli", "squad_v2")
# Model families: the encoder half of Table 2 (RoBERTa-base in the paper, MiniLM at cpu scale) and
# its T5 half (T5-base; the MiniLM BERT2BERT stand-in at cpu scale), with the tasks and the methods
# that the paper runs on each. Seq2seq recipes are <scale>/seq2seq-<task>-<method> for GLUE as text
# to text and <scale>/cnn_dailymail-<method> for summarisation.
FAMILIES = ("encoder", "seq2seq")
FAMILY_TASKS = {"encoder": TASKS, "seq2seq": ("sst2", "mnli", "cnn_dailymail")}
SEQ2SEQ_METHODS = ("ft", "lora", "lora-prune", "apt")

# Table 2 rows in the paper's order (the registry's), with the paper's labels.
TABLE2_METHODS = tuple((name, m.label) for name, m in METHODS.items())
# Table 4 (docs/method.md#ablations): job name, label, overrides of the APT recipe.
ABLATIONS = (("apt-no-ap", "w/o A_P", {"prune": False, "distill": False}),
             ("apt-uniform", "w/o salience", {"rank_selection": "all"}),
             ("apt-no-at", "w/o A_T", {"grow_ranks": False}),
             ("apt-no-ds", "w/o D_S", {"distill": False}))
APT_SWEEP = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
LORA_PRUNE_SWEEP = (0.4, 0.6, 0.8)
PAPER_SPARSITY = 0.6


@dataclass(frozen=True)
class Job:
    task: str
    name: str  # folder name under results/<run>/<task>/, unique within a task
    label: str  # the row label in tables and plots
    method: str
    recipe: str  # shipped recipe name, e.g. cpu/sst2-apt
    overrides: dict[str, Any] = field(default_factory=dict)
    needs: str | None = None  # the job (same task) whose run this one starts from (its prerequisite)
    family: str = "encoder"  # FAMILIES

    @property
    def settings_key(self) -> str:
        """The job's entry in recipes/bench.yaml: the task, or seq2seq-<task> for GLUE as text to text."""
        glue_as_text = self.family == "seq2seq" and self.task != "cnn_dailymail"
        return f"seq2seq-{self.task}" if glue_as_text else self.task

    @property
    def key(self) -> str:
        return f"{self.task}/{self.name}"

    @property
    def scale(self) -> str:
        return self.recipe.split("/")[0]

    @property
    def sparsity(self) -> float | None:
        return self.overrides.get("sparsity", PAPER_SPARSITY) if METHODS[self.method].prunes else None


def _recipe(scale: str, task: str, method: str, family: str = "encoder") -> str:
    if family == "seq2seq" and task != "cnn_dailymail":
        return f"{scale}/seq2seq-{task}-{method}"
    return f"{scale}/{task}-{method}"


def _needs(method: str) -> str | None:
    """The job a method's declared prerequisite is: the suite's own run of that method."""
    need = METHODS[method].prerequisite
    return need.method if need else None


def _base_jobs(scale: str, task: str, methods: tuple[str, ...], family: str = "encoder") -> list[Job]:
    return [Job(task, m, METHODS[m].label, m, _recipe(scale, task, m, family),
                {"sparsity": PAPER_SPARSITY} if METHODS[m].prunes else {}, _needs(m), family)
            for m in methods]


def _sparsity_tag(s: float) -> str:
    return f"s{round(s * 100):02d}"


def suite_jobs(suite: str, scale: str, tasks: list[str], family: str = "encoder") -> list[Job]:
    """Every job of a suite, prerequisites before the jobs that need them."""
    if suite not in SUITES:
        raise AptuneError(f"unknown suite '{suite}'", f"choose one of: {', '.join(SUITES)}")
    if scale not in SCALES:
        raise AptuneError(f"unknown scale '{scale}'", f"choose one of: {', '.join(SCALES)}")
    if family not in FAMILIES:
        raise AptuneError(f"unknown model family '{family}'", f"choose one of: {', '.join(FAMILIES)}")
    known = FAMILY_TASKS[family]
    bad = [t for t in tasks if t not in known]
    if bad or not tasks:
        raise AptuneError(f"unknown task(s) for the {family} family: {', '.join(bad) or '(none given)'}",
                          f"pass --tasks with some of: {', '.join(known)}")
    if family == "seq2seq":
        if suite != "table2":
            raise AptuneError(f"--suite {suite} runs on encoders only so far",
                              "use --suite table2 with --model-family seq2seq (the T5 half of Table 2)")
        return [job for task in tasks for job in _base_jobs(scale, task, SEQ2SEQ_METHODS, family)]
    jobs: list[Job] = []
    for task in tasks:
        if suite == "table2":
            jobs += _base_jobs(scale, task, tuple(m for m, _ in TABLE2_METHODS))
        elif suite == "ablations":
            jobs += _base_jobs(scale, task, ("ft", "apt"))
            apt_recipe = _recipe(scale, task, "apt")
            for name, label, overrides in ABLATIONS:
                jobs.append(Job(task, name, label, "apt", apt_recipe,
                                {"sparsity": PAPER_SPARSITY, **overrides}))
            jobs.append(_kurtosis_job(task, apt_recipe))
        else:  # sweep
            jobs += _base_jobs(scale, task, ("ft", "lora", "lora-prune", "apt"))
            for s in APT_SWEEP:
                if s != PAPER_SPARSITY:
                    jobs.append(Job(task, f"apt-{_sparsity_tag(s)}", METHODS["apt"].label, "apt",
                                    _recipe(scale, task, "apt"), {"sparsity": s}))
            for s in LORA_PRUNE_SWEEP:
                if s != PAPER_SPARSITY:
                    jobs.append(Job(task, f"lora-prune-{_sparsity_tag(s)}", METHODS["lora-prune"].label,
                                    "lora-prune", _recipe(scale, task, "lora-prune"), {"sparsity": s},
                                    _needs("lora-prune")))
    return jobs


def _kurtosis_job(task: str, apt_recipe: str) -> Job:
    """The kurtosis row flips whatever the recipe chose (cpu recipes turn kurtosis off)."""
    recipe_uses_kurtosis = bool(load_recipe(apt_recipe).get("use_kurtosis", True))
    if recipe_uses_kurtosis:
        return Job(task, "apt-no-kurtosis", "w/o kurtosis", "apt", apt_recipe,
                   {"sparsity": PAPER_SPARSITY, "use_kurtosis": False})
    return Job(task, "apt-kurtosis", "w/ kurtosis", "apt", apt_recipe,
               {"sparsity": PAPER_SPARSITY, "use_kurtosis": True})


def select_jobs(jobs: list[Job], only: list[str] | None) -> list[Job]:
    """Keep the named jobs (by name or task/name) and whatever they need."""
    if not only:
        return jobs
    by_key = {j.key: j for j in jobs}
    wanted = {j.key for j in jobs if j.name in only or j.key in only}
    unknown = [o for o in only if not any(o in (j.name, j.key) for j in jobs)]
    if unknown:
        raise AptuneError(f"--only names no job of this suite: {', '.join(unknown)}",
                          f"pick from: {', '.join(sorted({j.name for j in jobs}))}")
    frontier = list(wanted)
    while frontier:
        job = by_key[frontier.pop()]
        if job.needs and f"{job.task}/{job.needs}" not in wanted:
            wanted.add(f"{job.task}/{job.needs}")
            frontier.append(f"{job.task}/{job.needs}")
    return [j for j in jobs if j.key in wanted]
