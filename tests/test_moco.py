"""MoCo against references: the hand-computed InfoNCE, chance level, an independent naive MoCo step."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._inductor.decomposition import select_decomp_table
from torch.fx.experimental.proxy_tensor import make_fx

from mocolab import MoCo, build_encoder, info_nce
from mocolab.check.step import gradient_difference
from mocolab.distributed import batch_shuffle, batch_unshuffle
from mocolab.models import Encoder, SplitBatchNorm, mlp_head
from mocolab.queue import KeyQueue
from reference_moco import NaiveMoCo


def small_moco(**kw):
    enc = build_encoder("resnet18", cifar_stem=True, head="linear", dim=16, bn_splits=kw.pop("bn_splits", 2))
    return MoCo(enc, **{"K": 32, "m": 0.9, "T": 0.1, "dim": 16, **kw})


def test_info_nce_equals_hand_computed_cross_entropy():
    q = F.normalize(torch.randn(3, 4), dim=1)
    k = F.normalize(torch.randn(3, 4), dim=1)
    queue = F.normalize(torch.randn(5, 4), dim=1)
    T = 0.2
    loss, logits = info_nce(q, k, queue, T)
    expected = 0.0
    for n in range(3):  # -log softmax of the positive, written out
        pos = sum(q[n, c] * k[n, c] for c in range(4)) / T
        negs = [sum(q[n, c] * queue[j, c] for c in range(4)) / T for j in range(5)]
        expected += -(pos - math.log(math.exp(pos) + sum(math.exp(v) for v in negs))) / 3
    assert loss.item() == pytest.approx(float(expected), rel=1e-5)
    assert logits.shape == (3, 6)
    assert logits[1, 0].item() == pytest.approx((q[1] @ k[1]).item() / T, rel=1e-5)


@pytest.mark.parametrize("T", [1.0, 0.2])
def test_loss_of_random_unit_vectors_is_near_chance(T):
    N, K, C = 2048, 4096, 128
    q, k = F.normalize(torch.randn(N, C), dim=1), F.normalize(torch.randn(N, C), dim=1)
    queue = F.normalize(torch.randn(K, C), dim=1)
    loss, _ = info_nce(q, k, queue, T)
    # Logits are ~N(0, s^2) with s = 1/(sqrt(C) T); E[logsumexp] ~ ln(K+1) + s^2/2.
    s2 = 1.0 / (C * T * T)
    assert loss.item() == pytest.approx(math.log(K + 1) + s2 / 2, abs=0.03)
    if T == 1.0:
        assert abs(loss.item() - math.log(K + 1)) < 0.03  # 8.32 for K = 4096


def test_queue_enqueue_wraps_around_and_moves_pointer():
    queue = KeyQueue(K=6, dim=2)
    before = queue.keys.clone()
    a, b, c, d = (torch.full((2, 2), float(v)) for v in (1, 2, 3, 4))
    queue.enqueue(a)
    assert queue.ptr.item() == 2 and torch.equal(queue.keys[:2], a) and torch.equal(queue.keys[2:], before[2:])
    queue.enqueue(b)
    queue.enqueue(c)
    assert queue.ptr.item() == 0  # wrapped
    queue.enqueue(d)  # overwrites the oldest keys (a)
    assert queue.ptr.item() == 2
    assert torch.equal(queue.keys, torch.cat([d, b, c]))
    with pytest.raises(ValueError, match="not divisible"):
        queue.enqueue(torch.zeros(4, 2))


def test_queue_key_ages_count_steps_since_each_key_was_enqueued():
    queue = KeyQueue(K=6, dim=2)
    assert queue.age_stats().tolist() == [0.0, 0.0, 1.0]  # only the random initial keys
    queue.enqueue(torch.ones(2, 2))  # step 0: slots 0-1, ages [0, 0], 4 of 6 slots still random
    assert queue.age_stats().tolist() == pytest.approx([0.0, 0.0, 4 / 6])
    queue.enqueue(torch.ones(2, 2))  # step 1: ages [1, 1, 0, 0]
    assert queue.age_stats().tolist() == pytest.approx([0.5, 1.0, 2 / 6])
    for _ in range(3):  # steps 2-4: full; slots hold steps [3, 3, 4, 4, 2, 2] -> ages [1, 1, 0, 0, 2, 2]
        queue.enqueue(torch.ones(2, 2))
    assert queue.age_stats().tolist() == pytest.approx([1.0, 2.0, 0.0])  # steady state: mean (K/B - 1) / 2


def test_initial_queue_is_random_unit_vectors():
    queue = KeyQueue(K=100, dim=8)
    assert torch.allclose(queue.keys.norm(dim=1), torch.ones(100))
    assert queue.keys.std() > 0.1


def test_shuffle_is_a_permutation_and_unshuffle_inverts_it():
    x = torch.arange(64).float().view(16, 4)
    shuffled, unshuffle = batch_shuffle(x)
    assert not torch.equal(shuffled, x)
    assert sorted(shuffled[:, 0].tolist()) == x[:, 0].tolist()
    assert torch.equal(batch_unshuffle(shuffled, unshuffle), x)


def test_shuffle_draws_randperm_and_inductor_sees_no_rows_read_straight_off_it():
    """The shuffle is randperm's permutation (x[torch.randperm(N)] from the same draws), written so that inductor
    in torch 2.11, the GPU machines' image, compiles it: its joint-graph pattern for index(x, randperm(N))
    raised "Not all inputs to pattern found" and compile="model" failed (torch 2.14 has a pattern of its own for
    it). x.index_select(0, perm) fails too: inductor decomposes it into the same index. The graph is traced with
    inductor's decompositions, as its pattern matcher sees it."""
    x = torch.randn(16, 3, 4, 4)
    torch.manual_seed(0)
    shuffled, unshuffle = batch_shuffle(x)
    torch.manual_seed(0)
    perm = torch.randperm(16)
    assert torch.equal(shuffled, x[perm]) and torch.equal(unshuffle, torch.argsort(perm))
    graph = make_fx(batch_shuffle, decomposition_table=select_decomp_table())(x).graph
    for node in graph.find_nodes(op="call_function", target=torch.ops.aten.index.Tensor):
        indices = node.args[1]
        assert all(getattr(i, "target", None) is not torch.ops.aten.randperm.default for i in indices), node


def test_momentum_update_matches_formula_and_key_encoder_gets_no_gradient():
    model = small_moco(m=0.75)
    with torch.no_grad():  # make the encoders differ so the update is visible
        for p in model.encoder_q.parameters():
            p.add_(torch.randn_like(p))
    q0 = [p.clone() for p in model.encoder_q.parameters()]
    k0 = [p.clone() for p in model.encoder_k.parameters()]
    bn_k0 = model.encoder_k.backbone.bn1.running_mean.clone()
    model.momentum_update()
    for pq, pk0, pk in zip(q0, k0, model.encoder_k.parameters()):
        assert torch.allclose(pk, 0.75 * pk0 + 0.25 * pq, atol=1e-6)
        assert torch.equal(pk, pk0.clone().mul_(0.75).add_(pq, alpha=0.25))  # the fused form, bit for bit
    assert torch.equal(model.encoder_k.backbone.bn1.running_mean, bn_k0)  # buffers are not averaged

    out = model(torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16))
    out.loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.encoder_k.parameters())
    assert all(p.grad is not None for p in model.encoder_q.parameters())


def test_key_encoder_starts_as_exact_copy():
    model = small_moco()
    for pq, pk in zip(model.query_encoder.parameters(), model.key_encoder.parameters()):
        assert torch.equal(pq, pk) and pq.data_ptr() != pk.data_ptr()
    assert not any(p.requires_grad for p in model.key_encoder.parameters())  # moved by momentum only
    assert torch.equal(model.queue_stats(), model.queue.age_stats())


def test_step_enqueues_the_new_keys_and_reports_statistics():
    model = small_moco(m=0.0, bn_splits=1, shuffle_bn=False)
    x_q, x_k = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    queue_before = model.queue.keys.clone()
    with torch.no_grad():
        q = F.normalize(model.encoder_q(x_q), dim=1)
        k = F.normalize(model.encoder_q(x_k), dim=1)  # m = 0: key encoder == query encoder
    out = model(x_q, x_k)
    assert torch.allclose(model.queue.keys[:8], k, atol=1e-5)
    assert model.queue.ptr.item() == 8
    l_pos, l_neg = (q * k).sum(1), q @ queue_before.T
    assert out.pos_sim.item() == pytest.approx(l_pos.mean().item(), abs=1e-5)
    assert out.neg_sim.item() == pytest.approx(l_neg.mean().item(), abs=1e-5)
    acc = (l_pos > l_neg.max(1).values).float().mean().item()
    assert out.acc.item() == pytest.approx(acc)
    expected_loss, _ = info_nce(q, k, queue_before, 0.1)
    assert out.loss.item() == pytest.approx(expected_loss.item(), rel=1e-5)


def test_identical_views_with_m0_give_positive_similarity_one():
    model = small_moco(m=0.0, bn_splits=1, shuffle_bn=True)  # one BN over the batch: order-free
    x = torch.randn(8, 3, 16, 16)
    out = model(x, x)
    assert out.pos_sim.item() == pytest.approx(1.0, abs=1e-5)  # so unshuffle restored the order


def test_symmetric_loss_sums_both_directions_and_enqueues_both_key_batches():
    model = small_moco(symmetric=True, m=0.0, bn_splits=1, shuffle_bn=False)
    x1, x2 = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    queue_before = model.queue.keys.clone()
    with torch.no_grad():
        z1, z2 = F.normalize(model.encoder_q(x1), dim=1), F.normalize(model.encoder_q(x2), dim=1)
    out = model(x1, x2)
    expected = info_nce(z1, z2, queue_before, 0.1)[0] + info_nce(z2, z1, queue_before, 0.1)[0]
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert model.queue.ptr.item() == 16
    assert torch.allclose(model.queue.keys[:16], torch.cat([z1, z2]), atol=1e-5)


@pytest.mark.parametrize("symmetric", [False, True])
def test_matches_an_independent_naive_step_in_float64(symmetric):
    """Same weights, inputs and shuffles, in float64: over 3 SGD steps the losses, the queue and its pointer
    equal those of tests/reference_moco.py (written from the method's definition), with split BN (4 groups)
    and shuffle BN."""
    ours = small_moco(symmetric=symmetric, bn_splits=4).double()
    ref = NaiveMoCo(
        copy.deepcopy(ours.encoder_q),
        copy.deepcopy(ours.encoder_k),
        list(ours.queue.keys),
        m=0.9,
        T=0.1,
        symmetric=symmetric,
    )
    opt_ours = torch.optim.SGD(ours.encoder_q.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    opt_ref = torch.optim.SGD(ref.encoder_q.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for step in range(3):
        x1, x2 = torch.randn(8, 3, 16, 16, dtype=torch.float64), torch.randn(8, 3, 16, 16, dtype=torch.float64)
        torch.manual_seed(100 + step)  # the same shuffle permutations in both
        loss_ours = ours(x1, x2).loss
        opt_ours.zero_grad()
        loss_ours.backward()
        opt_ours.step()
        torch.manual_seed(100 + step)
        loss_ref = ref.step(x1, x2)
        opt_ref.zero_grad()
        loss_ref.backward()
        opt_ref.step()
        assert loss_ours.item() == pytest.approx(loss_ref.item(), rel=1e-12)
        assert torch.allclose(ours.queue.keys, torch.stack(ref.queue), rtol=0, atol=1e-12)
        assert ours.queue.ptr.item() == ref.pointer == (step + 1) * 8 * (2 if symmetric else 1) % 32
    for (name, a), b in zip(ours.encoder_q.named_parameters(), ref.encoder_q.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-12), name  # the gradients agreed too
    for (name, a), b in zip(ours.encoder_k.named_parameters(), ref.encoder_k.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-12), name


def test_bf16_autocast_keeps_the_loss_of_fp32_and_an_fp32_queue():
    """Mixed precision: the encoders run in bf16, InfoNCE and the queue stay fp32; over 4 SGD steps
    from the same weights on the same images the losses stay within 2% of fp32's."""

    def run(autocast: bool):
        torch.manual_seed(0)
        model = MoCo(build_encoder("resnet18", cifar_stem=True, bn_splits=2), K=64, m=0.99, T=0.1)
        opt = torch.optim.SGD(model.encoder_q.parameters(), lr=0.05, momentum=0.9)
        losses = []
        for step in range(4):
            g = torch.Generator().manual_seed(step)
            x_q, x_k = torch.randn(16, 3, 16, 16, generator=g), torch.randn(16, 3, 16, 16, generator=g)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out = model(x_q, x_k)
            assert out.loss.dtype == torch.float32 and model.queue.keys.dtype == torch.float32
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            losses.append(out.loss.item())
        return losses

    fp32, bf16 = run(False), run(True)
    assert all(abs(a - b) < 0.02 * a for a, b in zip(fp32, bf16)), (fp32, bf16)


@pytest.mark.parametrize("symmetric", [False, True])
def test_the_whole_step_forward_traces_as_one_graph(symmetric):
    """The precondition for CUDA graphs (one capture replays every kernel of the step: issue 26, item 2) and for
    compiling the whole forward (benchmarks/step_time.py --compile model): the momentum update, shuffle BN with
    split BN, both encoders, InfoNCE and the enqueue trace into one graph, with no break. A host read in the
    forward (an .item(), a Python branch on a tensor) would break it."""
    encoder = build_encoder("resnet10_w16", cifar_stem=True, head="mlp", dim=16, bn_splits=4)
    model = MoCo(encoder, K=64, dim=16, symmetric=symmetric, shuffle_bn=True)
    x_q, x_k = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    explained = torch._dynamo.explain(model)(x_q, x_k)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_steps_compiled_whole_by_inductor_have_the_gradients_and_state_of_eager():
    """The whole forward compiled (compile="model" / "graphs") must back-propagate through the queue as the loss
    read it, not as the enqueue left it. Inductor saved the queue buffer itself for the backward pass, in place of
    the loss's copy, and the gradients came out 30% off with the loss unchanged; KeyQueue.snapshot keeps the copy.
    And what the graph writes into the module must be what eager writes: after two steps, the key encoder's
    momentum-averaged weights, both encoders' BN running statistics, the queue and its pointer.
    Inductor's C++ backend on the CPU."""
    torch._dynamo.reset()

    def two_steps(compiled: bool):
        torch.manual_seed(0)
        # The parts a MoCo encoder is made of (split BN, an in-place ReLU, the MLP head), few: inductor's C++
        # build of a ResNet's step takes a minute and a half on 2 cores, and adds nothing the queue depends on
        backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False),
            SplitBatchNorm(8, num_splits=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, padding=1, bias=False),
            SplitBatchNorm(8, num_splits=2),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        model = MoCo(Encoder(backbone, mlp_head(8, 16)), K=64, m=0.9, dim=16, shuffle_bn=True)
        with torch.no_grad():  # so that the momentum update moves the key encoder: f_q != f_k
            for p in model.encoder_q.parameters():
                p.add_(0.01 * torch.randn_like(p))
        if compiled:
            model.compile(backend="inductor")
        g = torch.Generator().manual_seed(1)
        losses, grads = [], []
        for step in range(2):
            x_q, x_k = torch.randn(2, 16, 3, 16, 16, generator=g)
            torch.manual_seed(2 + step)  # the same shuffles
            loss = model(x_q, x_k).loss
            model.zero_grad()
            loss.backward()
            losses.append(loss.item())
            grads.append({name: p.grad.clone() for name, p in model.encoder_q.named_parameters()})
        return losses, grads, {name: t.clone() for name, t in model.state_dict().items()}

    eager, compiled = two_steps(False), two_steps(True)
    assert compiled[0] == pytest.approx(eager[0], rel=1e-5)
    for step in range(2):  # fp32 rounding makes it about 1e-3 (mocolab.check.step); the fault made it 0.3
        diff = gradient_difference(compiled[1][step], eager[1][step])
        assert diff < 1e-2, f"step {step + 1}: the gradients differ from eager's by {diff:.1%} of their norm"
    for name, theirs in eager[2].items():
        ours = compiled[2][name]
        assert torch.allclose(ours.double(), theirs.double(), atol=1e-5), name
