"""In-place distillation in the sandwich step: the loss by hand, the teacher's forward reused, the config rule."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import randomize_adapters, tiny_model
from lonas_ray.config_io import ConfigError
from lonas_ray.elastic.supernet import SuperNetwork
from lonas_ray.space import SpaceSpec
from lonas_ray.train.config import DistillSpec, SamplingSpec, TrainSettings
from lonas_ray.train.distill import answer_logits, distillation_loss, mixed_loss
from lonas_ray.train.step import train_step

SPACE = {"lora": {"r_max": 4, "rank_choices": [4, 2]}, "mlp": {"choices": [1.0, 0.5]}, "heads": {"choices": [1.0, 0.5]}}


def test_distillation_loss_by_hand():
    student = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    teacher = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    t = 2.0
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        ps = [math.exp(v / t) for v in s_row]
        pt = [math.exp(v / t) for v in t_row]
        ps = [v / sum(ps) for v in ps]
        pt = [v / sum(pt) for v in pt]
        expected += sum(q * math.log(q / p) for p, q in zip(ps, pt))
    assert float(distillation_loss(student, teacher, t)) == pytest.approx(expected / 2 * t * t, rel=1e-5)  # float32
    assert float(distillation_loss(teacher, teacher, 3.0)) == pytest.approx(0.0, abs=1e-7)
    assert float(mixed_loss(torch.tensor(2.0), torch.tensor(4.0), 0.25)) == 2.5
    with pytest.raises(ValueError, match="differ in shape"):
        distillation_loss(student, teacher[:1], 1.0)


def test_answer_logits_are_the_positions_that_predict_answer_tokens():
    logits = torch.arange(2 * 4 * 3, dtype=torch.float).reshape(2, 4, 3)
    labels = torch.tensor([[-100, -100, 5, 6], [-100, 7, -100, -100]])
    got = answer_logits(logits, labels)
    # row 0: positions 1 and 2 predict labels 2 and 3; row 1: position 0 predicts label 1
    assert torch.equal(got, torch.stack([logits[0, 1], logits[0, 2], logits[1, 0]]))


def batches():
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(2):
        ids = torch.randint(0, 256, (2, 10), generator=g)
        labels = ids.clone()
        labels[:, :5] = -100  # the prompt
        out.append({"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)})
    return out


def test_the_sandwich_step_distils_from_the_maximal_without_a_second_teacher_forward():
    supernet = SuperNetwork(tiny_model(), SpaceSpec.from_dict(SPACE))
    randomize_adapters(supernet, seed=2)
    subnets = [supernet.space.maximal(), supernet.space.minimal(), supernet.space.sample(1)]
    data = batches()
    weight, temperature = 0.7, 2.0

    # by hand: the maximal's logits first, then each student's mixed loss, no gradient anywhere
    with torch.no_grad():
        supernet.activate(subnets[0])
        teacher = [answer_logits(supernet(**b).logits, b["labels"]) for b in data]
        expected = [float(supernet(**b).loss) for b in data]
        for sub in subnets[1:]:
            supernet.activate(sub)
            for b, t in zip(data, teacher):
                out = supernet(**b)
                kd = distillation_loss(answer_logits(out.logits, b["labels"]), t, temperature)
                expected.append(float(mixed_loss(out.loss, kd, weight)))

    forwards, losses = [], []

    def forward(batch):
        forwards.append(supernet.active_config)
        return supernet(**batch)

    def backward(loss):
        losses.append(float(loss.detach()))
        loss.backward()

    stats = train_step(subnets, data, activate=supernet.activate, forward=forward, backward=backward,
                       distill_weight=weight, temperature=temperature)
    assert len(forwards) == stats.passes == len(subnets) * len(data)  # the teacher ran once per micro-batch
    assert losses == pytest.approx(expected, rel=1e-5)
    assert stats.loss == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    assert stats.tokens == sum(int(b["attention_mask"].sum()) for b in data) * len(subnets)
    # the soft targets carry no graph: every adapter gradient comes from a backward above, none is left dangling
    assert all(p.grad is not None for p in supernet.adapter_parameters())


def test_without_distillation_every_pass_is_plain_cross_entropy():
    supernet = SuperNetwork(tiny_model(), SpaceSpec.from_dict(SPACE))
    randomize_adapters(supernet, seed=2)
    subnets = [supernet.space.maximal(), supernet.space.minimal()]
    data = batches()
    with torch.no_grad():
        expected = []
        for sub in subnets:
            supernet.activate(sub)
            expected += [float(supernet(**b).loss) for b in data]
    losses = []
    stats = train_step(subnets, data, activate=supernet.activate, forward=lambda b: supernet(**b),
                       backward=lambda loss: losses.append(float(loss.detach())))
    assert losses == pytest.approx(expected, rel=1e-6)
    assert stats.ce_sum == pytest.approx(sum(expected), rel=1e-6)


def test_distillation_needs_the_sandwich_rule_and_sane_settings():
    with pytest.raises(ConfigError, match="needs sampling.strategy: sandwich"):
        TrainSettings(sampling=SamplingSpec(strategy="random"), distill=DistillSpec(weight=0.5))
    TrainSettings(sampling=SamplingSpec(strategy="sandwich"), distill=DistillSpec(weight=0.5))
    with pytest.raises(ConfigError, match=r"distill.weight must lie in \[0, 1\]"):
        DistillSpec(weight=1.5)
    with pytest.raises(ConfigError, match="distill.temperature must be > 0"):
        DistillSpec(temperature=0)
    assert TrainSettings().distill.weight == 0.0  # off unless asked for


# --------------------------------------------------------------------------- a frozen (dense) teacher


def test_a_frozen_teacher_teaches_every_subnetwork_with_one_forward_per_micro_batch():
    from lonas_ray.train.teacher import TeacherLogits

    supernet = SuperNetwork(tiny_model(), SpaceSpec.from_dict(SPACE))
    randomize_adapters(supernet, seed=2)
    teacher_model = tiny_model(seed=7)  # a different dense model with the same vocabulary
    subnets = [supernet.space.maximal(), supernet.space.minimal(), supernet.space.sample(1)]
    data = batches()
    weight, t = 0.6, 1.5

    # by hand: the teacher's softened answer distribution against each student's, the maximal included
    expected = []
    with torch.no_grad():
        soft = []
        for b in data:
            rows = teacher_model(input_ids=b["input_ids"]).logits[:, :-1][b["labels"][:, 1:] != -100]
            soft.append(torch.softmax(rows / t, dim=-1))
        for sub in subnets:
            supernet.activate(sub)
            for b, p_teacher in zip(data, soft):
                out = supernet(**b)
                student = out.logits[:, :-1][b["labels"][:, 1:] != -100]
                log_p_student = student / t - torch.logsumexp(student / t, dim=-1, keepdim=True)
                kl = (p_teacher * (p_teacher.log() - log_p_student)).sum(-1).mean()
                expected.append(float((1 - weight) * out.loss + weight * t * t * kl))

    teacher = TeacherLogits(teacher_model)
    losses = []

    def backward(loss):
        losses.append(float(loss.detach()))
        loss.backward()

    stats = train_step(subnets, data, activate=supernet.activate, forward=lambda b: supernet(**b), backward=backward,
                       distill_weight=weight, temperature=t, teacher=teacher)
    assert teacher.calls == stats.teacher_passes == len(data)  # once per micro-batch, not per sub-network
    assert stats.passes == len(subnets) * len(data)
    assert losses == pytest.approx(expected, rel=1e-4)
    assert all(p.grad is None for p in teacher_model.parameters())  # frozen: no graph reaches it
    assert all(p.grad is not None for p in supernet.adapter_parameters())


def test_the_maximal_can_learn_from_the_labels_alone_and_weigh_more_in_the_update():
    """distill.maximal: false leaves the maximal's loss plain cross-entropy while the teacher still teaches the
    others; sampling.maximal_weight scales what the maximal back-propagates, and only that."""
    from lonas_ray.train.teacher import TeacherLogits

    supernet = SuperNetwork(tiny_model(), SpaceSpec.from_dict(SPACE))
    randomize_adapters(supernet, seed=2)
    teacher = TeacherLogits(tiny_model(seed=7))
    subnets = [supernet.space.maximal(), supernet.space.minimal(), supernet.space.sample(1)]
    data = batches()

    def run(**levers):
        sent, ce = [], []

        def forward(b):
            out = supernet(**b)
            ce.append(float(out.loss.detach()))
            return out

        train_step(subnets, data, activate=supernet.activate, forward=forward,
                   backward=lambda loss: sent.append(float(loss.detach())), distill_weight=0.6, temperature=1.5,
                   teacher=teacher, **levers)
        return sent, ce

    taught, ce = run()
    n = len(data)
    assert all(abs(a - b) > 1e-4 for a, b in zip(taught, ce))  # every pass mixes in the teacher, the maximal's too
    labels_only, ce = run(distill_maximal=False)
    assert labels_only[:n] == pytest.approx(ce[:n], rel=1e-6)  # the maximal: plain cross-entropy
    assert labels_only[n:] == pytest.approx(taught[n:], rel=1e-6)  # the others: taught as before
    weighted, _ = run(maximal_weight=3.0)
    assert weighted[:n] == pytest.approx([3 * x for x in taught[:n]], rel=1e-6)
    assert weighted[n:] == pytest.approx(taught[n:], rel=1e-6)


def test_a_maximal_weight_needs_the_sandwich_rule_and_a_positive_value():
    assert SamplingSpec(maximal_weight=2.0).maximal_weight == 2.0
    with pytest.raises(ConfigError, match="must be a number > 0"):
        SamplingSpec(maximal_weight=0)
    with pytest.raises(ConfigError, match="but sampling.strategy is 'random'"):
        SamplingSpec(strategy="random", maximal_weight=2.0)
    assert DistillSpec(teacher="baseline", weight=0.5, maximal=False).maximal is False


def test_teachers_load_from_a_supernet_directory_or_a_model_directory_and_give_their_own_logits(tmp_path):
    from lonas_ray.build import SupernetSpec, build_supernet, save_prepared
    from lonas_ray.config_io import from_dict
    from lonas_ray.train.state import ADAPTER_FILE, save_adapter
    from lonas_ray.train.teacher import TeacherLogits, load_teacher, teacher_kind

    spec = from_dict(SupernetSpec, {"model": {"kind": "tiny", "family": "llama"}, "space": SPACE,
                                    "importance": {"enabled": False}}, where="test")
    built = build_supernet(spec)
    randomize_adapters(built.supernet, seed=4)
    save_prepared(built, spec, tmp_path / "supernet")
    save_adapter(built.supernet, tmp_path / "supernet" / ADAPTER_FILE)
    plain = tiny_model(seed=3)
    plain.save_pretrained(tmp_path / "hf")
    b = batches()[0]
    built.supernet.activate(built.supernet.space.maximal())
    for path, reference in ((tmp_path / "supernet", built.supernet), (tmp_path / "hf", plain)):
        teacher = load_teacher(path, torch.device("cpu"))
        assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
        with torch.no_grad():
            want = answer_logits(reference(input_ids=b["input_ids"]).logits, b["labels"])
        assert torch.allclose(TeacherLogits(teacher)(b), want, atol=1e-5), path
    assert teacher_kind(tmp_path / "supernet") == "supernet" and teacher_kind(tmp_path / "hf") == "hf"


def test_a_teacher_that_is_not_a_model_or_not_available_is_a_config_error(tmp_path):
    from lonas_ray.train.teacher import check_teacher

    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for bad, message in ((tmp_path / "missing", "is not a directory"), (tmp_path / "file.txt", "is not a directory"),
                         (tmp_path / "empty", "holds no model")):
        with pytest.raises(ConfigError, match=message):
            check_teacher(str(bad), in_pipeline=True)
    with pytest.raises(ConfigError, match="only `lonas-ray run` trains"):
        check_teacher("baseline", in_pipeline=False)
    check_teacher("baseline", in_pipeline=True)
    check_teacher("maximal", in_pipeline=False)
    # a frozen teacher frees distillation from the sandwich rule; in place still needs it
    TrainSettings(sampling=SamplingSpec(strategy="random"), distill=DistillSpec(teacher="baseline", weight=0.5))
    with pytest.raises(ConfigError, match="needs sampling.strategy: sandwich"):
        TrainSettings(sampling=SamplingSpec(strategy="random"), distill=DistillSpec(teacher="maximal", weight=0.5))
    with pytest.raises(ConfigError, match="distill.teacher must be"):
        DistillSpec(teacher="")
