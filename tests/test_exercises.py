"""The exercise checkers: each passes the solution and names each usual mistake in its sentence."""

from pathlib import Path

import nbformat
import papermill
import pytest
import torch
import torch.nn.functional as F

from mocolab import exercises
from mocolab.ui import exercise_book
from mocolab.moco import info_nce as mocolab_info_nce

# ----------------------------------------------------------------------------
# Solutions, as a student would write them from the definitions
# ----------------------------------------------------------------------------


def info_nce(q, k, queue, T):
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.detach().T], dim=1) / T
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))


def momentum_update(theta_k, theta_q, m):
    for k, q in zip(theta_k, theta_q):
        k.mul_(m).add_(q, alpha=1 - m)


def enqueue(queue, ptr, keys):
    queue[ptr : ptr + len(keys)] = keys.detach()
    return (ptr + len(keys)) % len(queue)


def knn_vote(sim, labels, num_classes, T):
    return torch.zeros(len(sim), num_classes).scatter_add_(1, labels, (sim / T).exp())


def shuffle(x):
    perm = torch.randperm(len(x))
    return x[perm], torch.argsort(perm)


def test_the_solutions_pass_and_the_info_nce_one_equals_mocolabs():
    for check, solution in [
        (exercises.check_info_nce, info_nce),
        (exercises.check_momentum_update, momentum_update),
        (exercises.check_enqueue, enqueue),
        (exercises.check_knn_vote, knn_vote),
        (exercises.check_shuffle, shuffle),
    ]:
        verdict = check(solution)
        assert verdict and str(verdict).startswith("correct: "), (check.__name__, verdict)
    q, k, queue = torch.randn(4, 8), torch.randn(4, 8), F.normalize(torch.randn(16, 8), dim=1)
    loss, _ = mocolab_info_nce(F.normalize(q, dim=1), F.normalize(k, dim=1), queue, 0.2)
    assert torch.allclose(info_nce(q, k, queue, 0.2), loss)
    assert exercises.check_info_nce(
        lambda q, k, queue, T: mocolab_info_nce(F.normalize(q, dim=1), F.normalize(k, dim=1), queue.detach(), T)[0]
    )


def _logits(q, k, queue, T, normalise=True, detach=True):
    if normalise:
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    queue = queue.detach() if detach else queue
    return torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], dim=1) / T


def _zeros(q):
    return torch.zeros(len(q), dtype=torch.long)


INFO_NCE_MISTAKES = {
    "the sign is wrong": lambda q, k, queue, T: -F.cross_entropy(_logits(q, k, queue, T), _zeros(q)),
    "the temperature is missing": lambda q, k, queue, T: F.cross_entropy(_logits(q, k, queue, 1.0), _zeros(q)),
    "the temperature multiplies": lambda q, k, queue, T: F.cross_entropy(_logits(q, k, queue, 1 / T), _zeros(q)),
    "the positive is not where the labels say": lambda q, k, queue, T: F.cross_entropy(
        torch.cat(
            [_logits(q, k, queue, T)[:, 1:2], _logits(q, k, queue, T)[:, :1], _logits(q, k, queue, T)[:, 2:]], dim=1
        ),
        _zeros(q),
    ),
    "q and k are not normalised": lambda q, k, queue, T: F.cross_entropy(
        _logits(q, k, queue, T, normalise=False), _zeros(q)
    ),
    "the loss is summed": lambda q, k, queue, T: F.cross_entropy(_logits(q, k, queue, T), _zeros(q), reduction="sum"),
    "gradients flow into the queue": lambda q, k, queue, T: F.cross_entropy(
        _logits(q, k, queue, T, detach=False), _zeros(q)
    ),
    "raised ZeroDivisionError": lambda q, k, queue, T: 1 / 0,
}


@pytest.mark.parametrize("mistake", INFO_NCE_MISTAKES)
def test_each_info_nce_mistake_is_named(mistake):
    verdict = exercises.check_info_nce(INFO_NCE_MISTAKES[mistake])
    assert not verdict and mistake in verdict.message, verdict


def _swapped(theta_k, theta_q, m):
    for k, q in zip(theta_k, theta_q):
        k.mul_(1 - m).add_(q, alpha=m)


def _copied(theta_k, theta_q, m):
    for k, q in zip(theta_k, theta_q):
        k.copy_(q)


def _not_in_place(theta_k, theta_q, m):
    for k, q in zip(theta_k, theta_q):
        k = m * k + (1 - m) * q  # noqa: F841 - the mistake: a new tensor bound to the loop variable


def _query_moved(theta_k, theta_q, m):
    for k, q in zip(theta_k, theta_q):
        q.mul_(m).add_(k, alpha=1 - m)


def _summed(theta_k, theta_q, m):
    for k, q in zip(theta_k, theta_q):
        k.mul_(m).add_(q)


@pytest.mark.parametrize(
    "update, mistake",
    [
        (_swapped, "m and 1 - m are swapped"),
        (_copied, "became a copy of theta_q"),
        (_not_in_place, "theta_k did not change"),
        (_query_moved, "theta_q changed"),
        (_summed, "the update adds both"),
    ],
)
def test_each_momentum_mistake_is_named(update, mistake):
    verdict = exercises.check_momentum_update(update)
    assert not verdict and mistake in verdict.message, verdict


def _no_wrap(queue, ptr, keys):
    queue[ptr : ptr + len(keys)] = keys.detach()
    return ptr + len(keys)


def _at_zero(queue, ptr, keys):
    queue[: len(keys)] = keys.detach()
    return (ptr + len(keys)) % len(queue)


def _new_tensor(queue, ptr, keys):
    queue = torch.cat([keys.detach(), queue[: -len(keys)]])
    return (ptr + len(keys)) % len(queue)


def _shifted(queue, ptr, keys):
    queue.copy_(torch.cat([queue[len(keys) :], keys.detach()]))
    return (ptr + len(keys)) % len(queue)


def _kept_graph(queue, ptr, keys):
    queue[ptr : ptr + len(keys)] = keys  # the mistake: no detach, so the queue joins the step's graph
    return (ptr + len(keys)) % len(queue)


@pytest.mark.parametrize(
    "write, mistake",
    [
        (_no_wrap, "the pointer does not wrap"),
        (_at_zero, "written at slot 0, not at the pointer"),
        (_new_tensor, "the queue is unchanged"),
        (_shifted, "the queue was shifted"),
        (_kept_graph, "carry the graph"),
        (lambda queue, ptr, keys: None, "it should return the new pointer"),
    ],
)
def test_each_enqueue_mistake_is_named(write, mistake):
    verdict = exercises.check_enqueue(write)
    assert not verdict and mistake in verdict.message, verdict


@pytest.mark.parametrize(
    "weight, mistake",
    [
        (lambda sim, T: torch.ones_like(sim), "the votes are not weighted"),
        (lambda sim, T: sim, "the weight is the similarity itself"),
        (lambda sim, T: sim.exp(), "the temperature is missing from the weight"),
        (lambda sim, T: (sim * T).exp(), "the weight multiplies by T"),
    ],
)
def test_each_knn_vote_mistake_is_named(weight, mistake):
    def vote(sim, labels, num_classes, T):
        return torch.zeros(len(sim), num_classes).scatter_add_(1, labels, weight(sim, T))

    verdict = exercises.check_knn_vote(vote)
    assert not verdict and mistake in verdict.message, verdict


@pytest.mark.parametrize(
    "shuffle_fn, mistake",
    [
        (lambda x: (x, torch.arange(len(x))), "came back in its own order"),
        (lambda x: (x[torch.randint(0, len(x), (len(x),))], torch.arange(len(x))), "not a permutation"),
        (lambda x: (lambda perm: (x[perm], perm))(torch.randperm(len(x))), "unshuffle is the permutation itself"),
        (lambda x: x[torch.randperm(len(x))], "should return two things"),
    ],
)
def test_each_shuffle_mistake_is_named(shuffle_fn, mistake):
    verdict = exercises.check_shuffle(shuffle_fn)
    assert not verdict and mistake in verdict.message, verdict


def test_strict_raises_the_sentence_instead_of_returning_it():
    with pytest.raises(exercises.ExerciseError, match="not yet: the sign is wrong"):
        exercises.check_info_nce(INFO_NCE_MISTAKES["the sign is wrong"], strict=True)
    assert exercises.check_info_nce(info_nce, strict=True)


# ----------------------------------------------------------------------------
# The design question
# ----------------------------------------------------------------------------


def _costs(measured):
    base = sum(measured["base"]) / 2
    return {name: base - sum(vs) / len(vs) for name, vs in measured.items() if name != "base"}


def test_the_design_question_is_judged_on_the_measurement():
    """The right answer is the largest mean cost in DESIGN_MEASURED, computed here from the seeds' values; every
    other choice is either named as a tie (within the seeds' spread) or told its cost beside the largest."""
    measured = exercises.DESIGN_MEASURED
    assert set(measured) == {*exercises.DESIGN_CHOICES, "base"} and all(len(v) == 2 for v in measured.values())
    cost = _costs(measured)
    worst = max(cost, key=cost.get)
    verdict = exercises.check_design_question(lambda: worst.upper().replace(" ", "  "))  # spaces and case aside
    assert verdict and f"{worst} costs {cost[worst]:.1f} points" in verdict.message, verdict
    half = {n: (max(v) - min(v)) / 2 for n, v in measured.items()}
    for name in cost:
        if name == worst:
            continue
        verdict = exercises.check_design_question(lambda: name)
        tie = cost[worst] - cost[name] <= half[worst] + half[name] + 2 * half["base"]
        assert bool(verdict) == tie and worst in verdict.message, (name, verdict)
    unknown = exercises.check_design_question(lambda: "a bigger GPU")
    assert not unknown and "is not one of the choices: m = 0, m = 0.9" in unknown.message


def test_the_design_question_can_be_judged_on_a_class_s_own_runs():
    """Rows as sweep.collect gives them (one final row per seed of each variant): here no shuffle BN is the
    worst by far, so it is the answer, whatever the shipped measurement says."""

    def rows(ablation_values):
        return [
            {"variant": f"{variant} seed={seed}", "epoch": 3, "knn_top1": value, "state": "done"}
            for variant, values in ablation_values.items()
            for seed, value in enumerate(values)
        ]

    results = {
        "momentum": rows({"m=0": [30.0, 30.2], "m=0.9": [31.0, 31.2], "m=0.99": [32.0, 32.2]}),
        "queue": rows({"K=256": [33.0, 33.1]}),
        "shuffle_bn": rows({"no shuffle": [20.0, 20.4]}),
    }
    verdict = exercises.check_design_question(lambda: "no shuffle BN", results=results)
    assert verdict and "no shuffle BN costs 11.9 points (20.2 against the base's 32.1)" in verdict.message
    verdict = exercises.check_design_question(lambda: "m = 0", results=results)
    assert not verdict and "m = 0 costs 2.0 points" in verdict.message and "K = 256" not in verdict.message
    del results["queue"]
    assert "hold no 'K = 256' run" in exercises.check_design_question(lambda: "K = 256", results=results).message


def test_the_shipped_measurement_is_the_one_in_docs_ablations_cpu():
    """DESIGN_MEASURED's means are those of the claims table in docs/ablations_cpu.md (one copy cannot drift)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "ablations_cpu.md").read_text()
    for name, ((ablation, variant), _) in [*exercises.DESIGN_CHOICES.items(), ("base", (exercises.DESIGN_BASE, ""))]:
        mean = sum(exercises.DESIGN_MEASURED[name]) / 2
        row = next(line for line in text.splitlines() if line.startswith(f"| {ablation} |"))
        assert f"{variant} {mean:.1f} ± " in row, (name, variant, mean, row)


# ----------------------------------------------------------------------------
# The exercise notebook: two versions from one source
# ----------------------------------------------------------------------------

SOURCE = Path(__file__).resolve().parents[1] / "notebooks" / "exercises" / "source.ipynb"


def test_the_committed_exercises_are_the_build_of_the_source_without_its_solutions(tmp_path):
    student, solutions = exercise_book.build(SOURCE, tmp_path)
    committed = nbformat.read(SOURCE.parent / "exercises.ipynb", as_version=4)
    built = nbformat.read(student, as_version=4)
    assert [c.source for c in committed.cells] == [c.source for c in built.cells], "run make exercises"
    code = "\n".join(c.source for c in built.cells if c.cell_type == "code")
    assert code.count('raise NotImplementedError("your code here")') == 6 and "BEGIN SOLUTION" not in code
    assert "torch.argsort(perm)" in "\n".join(c.source for c in nbformat.read(solutions, as_version=4).cells)
    with pytest.raises(ValueError, match="without its"):
        exercise_book._strip("x = 1\n# BEGIN SOLUTION\ny = 2", keep=False)


def _checker_lines(executed) -> list[str]:
    return [
        str(o.get("data", {}).get("text/plain", ""))
        for c in executed.cells
        if c.cell_type == "code" and "exercises.check_" in c.source
        for o in c.outputs
    ]


@pytest.mark.slow
def test_the_solutions_pass_every_checker_strictly_and_the_blank_exercises_say_not_yet(tmp_path):
    student, solutions = exercise_book.build(SOURCE, tmp_path)
    papermill.execute_notebook(
        str(solutions),
        str(tmp_path / "solved.ipynb"),
        parameters={"strict": True},
        cwd=str(tmp_path),
        progress_bar=False,
    )
    lines = _checker_lines(nbformat.read(tmp_path / "solved.ipynb", as_version=4))
    assert len(lines) == 6 and all(line.startswith("correct: ") for line in lines), lines
    papermill.execute_notebook(str(student), str(tmp_path / "blank.ipynb"), cwd=str(tmp_path), progress_bar=False)
    lines = _checker_lines(nbformat.read(tmp_path / "blank.ipynb", as_version=4))
    assert len(lines) == 6 and all(
        line.startswith("not yet: the function raised NotImplementedError") for line in lines
    )
