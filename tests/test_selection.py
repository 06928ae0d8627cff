"""Model selection on dev while training (issue 11, item 5): the best epoch's weights, early stopping, resume."""
from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from edgekd.configs import TrainConfig
from edgekd.data.batching import Encoded
from edgekd.train.loop import fit
from edgekd.train.selection import BEST


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, input_ids, attention_mask):
        return self.out((self.emb(input_ids) * attention_mask[..., None]).mean(1))


def _data(n=64) -> Encoded:
    rng = np.random.default_rng(0)
    ids = [list(rng.integers(1, 50, rng.integers(2, 20))) for _ in range(n)]
    return Encoded(np.array([int(x[0] > 25) for x in ids]), ids=ids)


def _ce(m, batch, idx, labels):
    return nn.functional.cross_entropy(m(**batch), labels)


class Scripted:
    """Scores epochs from a script and remembers the weights each score was given for."""

    def __init__(self, scores):
        self.scores, self.seen = list(scores), []

    def __call__(self, model):
        self.seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return self.scores[len(self.seen) - 1]


def test_the_model_ends_with_the_weights_of_its_best_dev_epoch(tmp_path):
    torch.manual_seed(0)
    model, score = Tiny(), Scripted([0.6, 0.9, 0.7])
    stats = fit(model, _data(), TrainConfig(epochs=3, batch_size=16, lr=1e-2), _ce, seed=0, desc="t",
                work_dir=tmp_path, select=score)
    assert len(score.seen) == 3 and stats["selection"]["best_epoch"] == 2
    assert [s["score"] for s in stats["selection"]["scores"]] == [0.6, 0.9, 0.7]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, score.seen[1][k])  # epoch 2's weights, not the last epoch's
    assert not torch.equal(score.seen[1]["out.weight"], score.seen[2]["out.weight"])  # training did move on
    assert json.loads((tmp_path / BEST / "scores.json").read_text())[1] == [2.0, 0.9]


def test_patience_stops_training_after_epochs_without_a_better_score():
    model, score = Tiny(), Scripted([0.8, 0.7, 0.75, 0.9, 0.95])
    stats = fit(model, _data(), TrainConfig(epochs=5, batch_size=16, lr=1e-2), _ce, seed=0, desc="t",
                select=score, patience=2)
    assert len(score.seen) == 3  # epochs 2 and 3 were no better than epoch 1: epochs 4 and 5 never ran
    assert stats["selection"]["stopped_early"] and stats["selection"]["best_epoch"] == 1
    assert stats["steps"] == 3 * 4  # 64 examples in batches of 16
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, score.seen[0][k])


def test_a_fractional_last_epoch_is_scored_too_and_a_resumed_run_selects_among_every_epoch(tmp_path):
    torch.manual_seed(0)
    first, score = Tiny(), Scripted([0.9, 0.1])
    fit(first, _data(), TrainConfig(epochs=1.5, batch_size=16, lr=1e-2), _ce, seed=0, desc="t", work_dir=tmp_path,
        select=score)
    assert [e for e, _ in json.loads((tmp_path / BEST / "scores.json").read_text())] == [1.0, 1.5]
    # a run that resumes after epoch 1 (its scores on disk) and scores worse later restores epoch 1's weights
    (tmp_path / BEST / "scores.json").write_text(json.dumps([[1.0, 0.9]]))
    resumed = Tiny()
    selection_state = {k: v.clone() for k, v in score.seen[0].items()}
    from edgekd.train.selection import EpochSelection

    sel = EpochSelection(Scripted([0.5]), None, tmp_path)
    sel.resume()
    sel.after_epoch(resumed, 2.0)
    sel.restore_best(resumed)
    for k, v in resumed.state_dict().items():
        torch.testing.assert_close(v, selection_state[k])


def test_an_epoch_checkpointed_but_not_scored_before_a_kill_is_scored_on_resume(tmp_path):
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-2, checkpoint_every=4)  # a checkpoint at each epoch's end
    first = Scripted([0.9, 0.5])
    fit(Tiny(), _data(), cfg, _ce, seed=0, desc="t", work_dir=tmp_path, select=first)
    # as if killed after the last checkpoint was written but before epoch 2 was scored
    (tmp_path / BEST / "scores.json").write_text(json.dumps([[1.0, 0.9]]))
    model, again = Tiny(), Scripted([0.5])
    stats = fit(model, _data(), cfg, _ce, seed=0, desc="t", work_dir=tmp_path, select=again)
    assert len(again.seen) == 1 and [s["epoch"] for s in stats["selection"]["scores"]] == [1.0, 2.0]
    assert stats["selection"]["best_epoch"] == 1.0
    for k, v in model.state_dict().items():  # epoch 1's weights, read back from disk
        torch.testing.assert_close(v, first.seen[0][k])


def _trajectory(cfg: TrainConfig, **kw) -> tuple[Tiny, list[dict]]:
    """fit() on a fresh Tiny, with the weights seen before every step (on_step) and at the end."""
    torch.manual_seed(0)
    model, seen = Tiny(), []

    def record(progress):
        seen.append({k: v.detach().clone() for k, v in model.named_parameters()})

    fit(model, _data(), cfg, _ce, seed=0, desc="t", on_step=record, **kw)
    return model, seen + [{k: v.detach().clone() for k, v in model.named_parameters()}]


def test_weight_ema_ends_with_the_moving_average_of_every_step_s_weights():
    decay = 0.7
    plain, weights = _trajectory(TrainConfig(epochs=2, batch_size=16, lr=5e-2))
    averaged, _ = _trajectory(TrainConfig(epochs=2, batch_size=16, lr=5e-2, weight_ema=decay))
    # the average starts at the weights after the first step and follows every later step
    expect = dict(weights[1])
    for w in weights[2:]:
        expect = {k: decay * expect[k] + (1 - decay) * w[k] for k in expect}
    for k, v in averaged.named_parameters():
        torch.testing.assert_close(v, expect[k])
    assert not torch.allclose(averaged.out.weight, plain.out.weight)  # it is not the last step's weights


def test_weight_ema_resumes_from_its_checkpoint_and_is_what_selection_scores(tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=16, lr=5e-2, weight_ema=0.8, checkpoint_every=2)  # 4 steps per epoch
    torch.manual_seed(0)
    ref = Tiny()
    fit(ref, _data(), cfg, _ce, seed=0, desc="t")

    class Killed(Exception):
        pass

    def kill_at_step_7(progress):
        if progress >= 7 / 12:
            raise Killed

    torch.manual_seed(0)
    try:
        fit(Tiny(), _data(), cfg, _ce, seed=0, desc="t", work_dir=tmp_path, on_step=kill_at_step_7)
    except Killed:
        pass
    else:
        raise AssertionError("the run was not killed")
    torch.manual_seed(1)  # the resumed run must take weights and average from the checkpoint (step 6), not a seed
    resumed = Tiny()
    stats = fit(resumed, _data(), cfg, _ce, seed=0, desc="t", work_dir=tmp_path)
    assert stats["steps_this_run"] == 6 and stats["weight_ema"] == 0.8
    for k, v in resumed.state_dict().items():
        torch.testing.assert_close(v, ref.state_dict()[k])

    torch.manual_seed(0)
    selected, score = Tiny(), Scripted([0.5, 0.9, 0.5])
    fit(selected, _data(), cfg, _ce, seed=0, desc="t", select=score)
    for k, v in selected.state_dict().items():
        torch.testing.assert_close(score.seen[2][k], ref.state_dict()[k])  # what was scored: the average
        torch.testing.assert_close(v, score.seen[1][k])  # and the model ends with the best epoch's average
