"""compile="model" and "graphs": the whole MoCo step compiled (issue 26, item 2), a run's results unchanged.

Inductor's own arithmetic against eager is tests/test_moco.py's (the gradients of a step compiled whole); here
torch.compile's aot_eager backend stands in for inductor, as the compiled graph's plumbing (AOTAutograd's forward
and backward graphs, the mutated buffers written back) is what a run depends on, and it is exact.
"""

import pytest
import torch

from conftest import tiny
from mocolab import ConfigError, make_config, pretrain
from mocolab.check.step import gradient_difference, timed_step
from mocolab.train import Trainer, build_trainer


@pytest.fixture
def compiled_by_aot_eager(monkeypatch):
    """Module.compile with the aot_eager backend; the calls, as (module class, mode), in the list returned."""
    calls, compile_module = [], torch.nn.Module.compile

    def compile_(self, **kw):
        calls.append((type(self).__name__, kw.get("mode")))
        compile_module(self, backend="aot_eager")

    monkeypatch.setattr(torch.nn.Module, "compile", compile_)
    torch._dynamo.reset()
    return calls


@pytest.mark.slow
def test_a_run_compiled_whole_is_the_eager_run_and_resumes_into_it(cifar10_root, tmp_path, compiled_by_aot_eager):
    """compile="model" compiles the MoCo module itself, in place: the same losses, kNN readings and weights as the
    eager run, bit for bit, across a stop and a resume (the checkpoint keys are the plain model's)."""
    compiled_by_aot_eager.clear()
    eager = pretrain(tiny(cifar10_root, tmp_path / "eager"), progress=False)
    assert compiled_by_aot_eager == []
    first = pretrain(tiny(cifar10_root, tmp_path / "model", compile="model", stop_after=1), progress=False)
    assert compiled_by_aot_eager == [("MoCo", None)]  # the whole module, not its encoders
    assert first.model._compiled_call_impl is not None
    resumed = pretrain(tiny(cifar10_root, tmp_path / "model", compile="model", resume=True), progress=False)
    assert [r["loss"] for r in resumed.steps] == [r["loss"] for r in eager.steps]
    assert [r["knn_top1"] for r in resumed.history] == [r["knn_top1"] for r in eager.history]
    for (name, ours), theirs in zip(resumed.model.state_dict().items(), eager.model.state_dict().values()):
        assert torch.equal(ours, theirs), name


def test_the_step_compiled_whole_has_the_first_gradients_of_eager(compiled_by_aot_eager):
    """What the gpu-check and benchmarks/step_time.py compare: the first step's loss and gradients, from the same
    weights and views."""
    cfg = make_config("tiny", gpus=0)
    eager = timed_step(cfg, torch.device("cpu"), warmup=1, steps=1)
    model = timed_step(make_config("tiny", gpus=0, compile="model"), torch.device("cpu"), warmup=1, steps=1)
    assert eager.operations > 500 and model.operations is None  # a compiled step is not counted
    assert model.loss == eager.loss
    assert gradient_difference(model.grads, eager.grads) == 0.0
    shifted = {name: g + 0.1 * g.norm() / g.numel() ** 0.5 for name, g in eager.grads.items()}
    assert 0.05 < gradient_difference(shifted, eager.grads) < 0.2  # and it sees a difference


def test_cuda_graphs_are_refused_on_the_cpu_with_the_compile_that_works_there():
    with pytest.raises(ConfigError, match="need a GPU.*compile='model'"):
        build_trainer(make_config("tiny", gpus=0, compile="graphs"), torch.device("cpu"), 1, 4)


def test_the_whole_step_compiles_in_one_process_only():
    with pytest.raises(ConfigError, match="compile='model'.*2 processes.*compile=True"):
        make_config("tiny", gpus=0, processes=2, compile="model")
    assert make_config("tiny", gpus=0, processes=2, compile=True).compile is True


def test_an_unknown_compile_is_named():
    with pytest.raises(ConfigError, match="compile='fast'"):
        make_config("tiny", compile="fast")


def test_under_cuda_graphs_each_step_is_marked_as_a_new_one(monkeypatch):
    """Without the mark, CUDA graph trees cannot tell a new step from a second call within one, and refuse to
    overwrite outputs of the step before."""
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(len(marks)))
    trainer = build_trainer(make_config("tiny", gpus=0), torch.device("cpu"), 1, 4)
    graphs = Trainer(**{**vars(trainer), "graphs": True})
    x = torch.randn(16, 3, 16, 16)
    trainer.step(x, x, 0)
    assert marks == []
    graphs.step(x, x, 1)
    graphs.step(x, x, 2)
    assert marks == [0, 1]


def test_a_graph_run_without_cuda_graphs_fails_the_checks_row():
    """The gpu-check's CUDA graphs rows count the graphs inductor ran without them (here: on the CPU, where
    mode="reduce-overhead" cannot capture), so that a row does not time "model" under the name "graphs"."""
    from mocolab.check.stages import _graphs_used

    assert _graphs_used(lambda: "12.0 ms") == "12.0 ms"

    def measure() -> str:
        torch.compile(lambda x: (2 * x).sin(), mode="reduce-overhead")(torch.randn(4))
        return "12.0 ms"

    status, text = _graphs_used(measure)
    assert status == "FAIL" and text.startswith("12.0 ms; inductor ran 1 graph(s) without CUDA graphs")
