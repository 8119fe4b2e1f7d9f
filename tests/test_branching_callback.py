"""AttentionBranchCallback / EntropyBranchCallback: the one-step off-policy tree schedule,
exact resume, the hosting contract, and the CLI configs that use them."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_attn import EvaluationSettings, OptimizerSettings, PolicyModule, UpdateSettings, PromptDataModule, RewardsSettings, SamplingSettings
from lit_attn.callbacks import AttentionBranchCallback, EntropyBranchCallback
from lit_attn.cli import main
from lit_attn.errors import UserError
from lit_attn.logprobs import token_logprobs

CONFIGS = Path(__file__).resolve().parents[1] / "lit_attn" / "configs"


def small_module(model_dir: Path, *, rewards: list[str] | None = None) -> PolicyModule:
    return PolicyModule(
        name_or_path=str(model_dir), sampling=SamplingSettings(group_size=4, prompts_per_step=2, max_new_tokens=14),
        update=UpdateSettings(minibatch_size=8), optimizer=OptimizerSettings(lr=0.01),
        evaluation=EvaluationSettings(validate_at_start=False), rewards=RewardsSettings(rewards or RewardsSettings().functions),
    )


def small_data() -> PromptDataModule:
    return PromptDataModule(train_size=40, val_size=4, num_distractors=0, num_ops=1)


def trainer(max_steps: int, callbacks: list, **kwargs) -> Trainer:
    return Trainer(
        max_steps=max_steps, callbacks=callbacks, logger=False, limit_val_batches=0, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", devices=1, **{"enable_checkpointing": False, **kwargs},
    )


class Recorder:
    """Wraps a callback's make_experience: keeps each experience, a copy of the weights that
    sampled it (the weights in place when make_experience runs) and the prompts it took."""

    def __init__(self, callback, module):
        self.experiences, self.weights, self.prompts = [], [], []
        inner = callback.make_experience

        def wrapped(mod, records):
            self.weights.append(copy.deepcopy(mod.model.state_dict()))
            exp = inner(mod, records)
            self.experiences.append(exp)
            self.prompts.append([g.record["prompt"] for g in callback.state.pending])  # the prompts this step took
            return exp

        callback.make_experience = wrapped


def completion_logprobs(model, exp, temperature=1.0):
    with torch.no_grad():
        lp, _ = token_logprobs(model, exp.input_ids, exp.attention_mask, temperature=temperature)
    return lp[:, exp.prompt_length - 1 :]


@pytest.mark.parametrize("callback_cls", [AttentionBranchCallback, EntropyBranchCallback])
def test_off_policy_schedule_tokens_carry_the_policy_that_sampled_them(tiny_model_dir, reward_module, callback_cls):
    module = small_module(tiny_model_dir, rewards=[reward_module])
    kwargs = {"min_gap": 1} if callback_cls is AttentionBranchCallback else {}
    callback = callback_cls(adaptive_sampling=False, adaptive_batch=False, **kwargs)
    rec = Recorder(callback, module)
    trainer(3, [callback]).fit(module, small_data())

    first = rec.experiences[0]
    assert first.num_sequences == 0 and first.generated_tokens > 0  # step 0 only samples batch 0
    for name, value in rec.weights[0].items():  # ...and its optimiser step changes nothing
        assert torch.equal(value, rec.weights[1][name]), name
    trained = [e for e in rec.experiences[1:] if e.num_sequences]
    assert trained, "no step trained on trees"
    model = copy.deepcopy(module.model).eval()
    for m, exp in enumerate(rec.experiences):
        if m == 0 or not exp.num_sequences:
            continue
        versions = exp.versions[exp.completion_mask.bool().cpu()]
        # batch m-1's responses came from step m-1's weights, its continuations from step m's
        assert set(versions.tolist()) <= {m - 1, m} and (versions == m - 1).any()
        for version in (m - 1, m):
            model.load_state_dict(rec.weights[version])
            lp = completion_logprobs(model, exp)
            sel = (exp.versions == version) & exp.completion_mask.bool()
            if sel.any():
                torch.testing.assert_close(exp.old_logprobs[sel], lp[sel], atol=2e-4, rtol=0)
        # per sequence, tokens of the later policy only follow tokens of the earlier one
        for row in range(exp.num_sequences):
            v = exp.versions[row][exp.completion_mask[row].bool()]
            assert torch.all(v[1:] >= v[:-1])
        # tree advantages: each path's tokens share one value per segment; not all zero
        assert exp.advantages.abs().sum() > 0


def test_attnrl_config_runs_end_to_end_and_logs_exploration(tmp_path):
    # the shipped model and the built-in task, as lit_attn/configs/attnrl.yaml has them, only smaller
    run_dir = tmp_path / "runs"
    rc = main([
        "fit", f"--config={CONFIGS / 'attnrl.yaml'}", "--model.sampling.prompts_per_step=4", "--model.sampling.group_size=4",
        "--model.update.minibatch_size=8", "--model.sampling.max_new_tokens=128", "--model.evaluation.batch_size=4",
        "--data.train_size=40", "--data.val_size=4", "--trainer.max_steps=3",
        "--trainer.val_check_interval=3", f"--trainer.default_root_dir={run_dir}",
        f"--trainer.logger.init_args.save_dir={run_dir}",
    ])
    assert rc == 0
    events = sorted(run_dir.rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events[0].parent), size_guidance={"histograms": 0})
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    for tag in (
        "reward", "tokens/generated", "branching/batch_prompts", "branching/responses_expanded",
        "branching/points_per_expanded_response", "branching/prompts_dropped",
        "branching/fci_filter_kept", "branching/fci_filter_dropped", "branching/sequences_after_filter",
        "branching/fci_mean", "loss", "clip_ratio/high_mean", "branching/before_first_error", "branching/rescued",
    ):
        assert tag in scalars, f"{tag} not logged; got {sorted(scalars)}"
    points = [e.value for e in acc.Scalars("branching/points_per_expanded_response")]
    assert max(points) == 2.0, points  # N = 2 branch points per expanded response (the default num_points)
    histograms = acc.Tags()["histograms"]
    assert "branching/fci" in histograms and "branching/position" in histograms
    positions = acc.Histograms("branching/position")[-1].histogram_value
    assert 0 < positions.min and positions.max < 1  # relative to response length, strictly inside
    for tag in ("branching/before_first_error", "branching/rescued"):  # shares
        assert all(0.0 <= e.value <= 1.0 for e in acc.Scalars(tag))
    version = next((run_dir / "attnrl").iterdir())
    assert (version / "policy" / "config.json").is_file()


def run_steps(model_dir, reward, steps, *, ckpt_in=None, ckpt_dir=None):
    module = small_module(model_dir, rewards=[reward])
    # a low bar for "correct" so that ADS makes random choices (its generator must resume too)
    callback = AttentionBranchCallback(min_gap=1, seed=3, correct_threshold=0.1)
    callbacks: list = [callback]
    if ckpt_dir is not None:  # a checkpoint in the middle of the run, as a killed job leaves behind
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=2, save_top_k=-1))
    t = trainer(steps, callbacks, enable_checkpointing=ckpt_dir is not None)
    t.fit(module, small_data(), ckpt_path=ckpt_in)
    return module, callback


def test_kill_and_resume_continues_exactly(tiny_model_dir, reward_module, tmp_path):
    straight, cb_straight = run_steps(tiny_model_dir, reward_module, 5, ckpt_dir=tmp_path)
    ckpt = next(tmp_path.glob("*step=2*.ckpt"))
    state = torch.load(ckpt, weights_only=False)
    saved = next(v for k, v in state["callbacks"].items() if "AttentionBranchCallback" in k)
    assert saved["pending"] and saved["rl_step"] == 2, "the pending batch must be in the checkpoint"
    resumed, cb_resumed = run_steps(tiny_model_dir, reward_module, 5, ckpt_in=ckpt)
    # (global_step counts optimiser steps: a step with several minibatches takes more than one)
    assert cb_straight.rl_step == cb_resumed.rl_step >= 3
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"{name} differs after resume")
    assert cb_straight.state_dict()["pending"] == cb_resumed.state_dict()["pending"]
    assert cb_straight.state_dict()["queue"] == cb_resumed.state_dict()["queue"]


def test_setup_names_what_the_module_lacks():
    class Foreign(LightningModule):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Linear(2, 2)

    with pytest.raises(UserError, match="tokenizer, group_size, max_new_tokens, temperature, score, experience_source"):
        AttentionBranchCallback().setup(Trainer(logger=False), Foreign(), "fit")


def test_two_exploration_callbacks_are_refused(tiny_model_dir):
    module = small_module(tiny_model_dir)
    AttentionBranchCallback().setup(Trainer(logger=False), module, "fit")
    with pytest.raises(UserError, match="two exploration callbacks"):
        EntropyBranchCallback().setup(Trainer(logger=False), module, "fit")


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(UserError, match="selection"):
        AttentionBranchCallback(selection="best")
    with pytest.raises(UserError, match="continuations"):
        EntropyBranchCallback(continuations=0)
    with pytest.raises(UserError, match="batch_lambda"):
        AttentionBranchCallback(batch_lambda=2.0)


class FixedScores:
    """A branch rule with given per-prompt filter scores and a marker branch point."""

    def __init__(self, scores):
        self.scores = scores

    def score(self, host, groups):
        return self.scores

    def filter_scores(self, scores):
        return scores

    def choose(self, host, groups, expand, scores, num_points):
        from lit_attn.exploration.rules import Chosen

        for p, group in enumerate(groups):
            for i in expand[p]:
                group.offsets[i] = [1]
        return Chosen()


def pending(rewards):
    from lit_attn.tree import Sample
    from lit_attn.exploration.groups import PromptGroup

    return PromptGroup({"prompt": "p"}, [1], [Sample((5, 6, 7), r, (0.0,) * 3, 0) for r in rewards])


def plan(rule, state, batch):
    from lit_attn.exploration.settings import ExplorationSettings
    from lit_attn.exploration.stages import choose_branch_points, plan_expansion

    settings = ExplorationSettings()
    scores = rule.score(None, batch)
    expand, metrics = plan_expansion(batch, rule.filter_scores(scores), state, settings)
    choose_branch_points(None, batch, expand, scores, settings, rule)
    return metrics


def test_ads_through_the_callback_fci_filter_and_expansion_counts():
    from lit_attn.exploration.state import ExplorationState

    all_right = [1.0] * 6
    mostly_right = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]  # z = 4/6 → ceil(3.08) = 4 expanded, both wrong ones among them
    rule, state = FixedScores([1.0, 3.0, 9.0]), ExplorationState()
    batch = [pending(all_right), pending(all_right), pending(mostly_right)]
    metrics = plan(rule, state, batch)
    # running mean over the all-correct prompts seen so far, this batch included: (1 + 3) / 2 = 2
    assert state.fci_mean.value == pytest.approx(2.0)
    assert [bool(o) for o in batch[0].offsets] == [False] * 6  # 1.0 ≤ 2: dropped
    assert sum(bool(o) for o in batch[1].offsets) == 3  # 3.0 > 2: kept, 3 expanded
    expanded = [i for i, o in enumerate(batch[2].offsets) if o]
    assert len(expanded) == 4 and {1, 4} <= set(expanded)  # rounding gave 3
    assert metrics["branching/fci_filter_kept"] == 1 and metrics["branching/fci_filter_dropped"] == 1

    # the next batch compares against the mean of everything seen: (1 + 3 + 2.5) / 3
    rule.scores = [2.5]
    later = [pending(all_right)]
    plan(rule, state, later)
    assert state.fci_mean.value == pytest.approx(6.5 / 3)
    assert sum(bool(o) for o in later[0].offsets) == 3  # 2.5 > 2.1667: kept


def test_state_dict_round_trip_restores_every_piece_of_state():
    a = AttentionBranchCallback(seed=5)
    st = a.state
    st.rl_step, st.batch_prompts, st.queue = 7, 11, [{"prompt": "q"}]
    st.pending = [pending([1.0, 0.0])]
    st.pending[0].offsets[1] = [2]
    st.fci_mean.update([0.5, 1.5])
    torch.randperm(10, generator=st.generator)  # the generator has moved on from its seed
    saved = copy.deepcopy(a.state_dict())
    b = AttentionBranchCallback(seed=5)
    b.load_state_dict(saved)
    assert b.state_dict()["pending"] == a.state_dict()["pending"] and b.state.queue == st.queue
    assert b.state.pending[0].offsets == [[], [2]]
    assert (b.rl_step, b.state.batch_prompts, b.state.fci_mean.value) == (7, 11, 1.0)
    assert torch.equal(torch.randperm(10, generator=st.generator), torch.randperm(10, generator=b.state.generator))


class _Host:
    tokenizer = type("Tok", (), {"pad_token_id": 0})()
    device = torch.device("cpu")
    temperature = 1.0


def test_unbranched_responses_count_in_the_root_value_but_give_no_sequence():
    from lit_attn.tree import Sample
    from lit_attn.exploration.settings import ExplorationSettings
    from lit_attn.exploration.stages import build_trees, training_sequences

    batch = pending([1.0, 0.0, 0.0])
    batch.offsets[0] = [1]
    continuations = {(0, 0, 1): [Sample((8, 9), 0.0, (0.0, 0.0), 1), Sample((8,), 1.0, (0.0,), 1)]}
    counts = {}
    for train_unbranched in (False, True):
        trees = build_trees([batch], continuations)
        experience, metrics = training_sequences(_Host(), trees, [batch], ExplorationSettings(train_unbranched=train_unbranched))
        counts[train_unbranched] = experience.num_sequences
        # V(root) = 2/5 (responses 1 and 2 count); response 0's first segment has V = 2/3
        first = ((2 / 3 - 2 / 5) * 2) / 3**0.5
        assert experience.advantages[0, 0].item() == pytest.approx(first, abs=1e-6)
        assert metrics["branching/prompts_dropped"] == 0
    assert counts == {False: 3, True: 5}  # the response and its two continuations; + the two unexpanded


def test_the_prompt_batch_grows_when_the_filter_leaves_fewer_sequences_than_wanted(tiny_model_dir, reward_module):
    module = small_module(tiny_model_dir, rewards=[reward_module])
    callback = AttentionBranchCallback(min_gap=1, seed=1)
    rec = Recorder(callback, module)
    data = small_data()
    trainer(4, [callback]).fit(module, data)
    sizes = [e.metrics["branching/batch_prompts"] for e in rec.experiences]
    # B' = 2 prompts × G=4 × (1 + 2 points × 2 continuations) = 40 sequences, far more than a
    # step of 2 prompts yields: B_m grows past the loader's 2 prompts
    assert sizes[0] == 2 and max(sizes) > 2, sizes
    assert any(e.num_sequences for e in rec.experiences)
    # the extra prompts are the loader's next ones: the steps took the data order, each prompt once
    order = [r["prompt"] for batch in data.train_dataloader() for r in batch]  # a fresh loader: the same first epoch
    taken = [p for step in rec.prompts for p in step]
    assert len(taken) > 2 * len(rec.prompts) and taken == order[: len(taken)]


class _NoRule:
    """A branch rule that needs no model: one branch point at offset 1 of every expanded response."""

    def score(self, host, groups):
        return None

    def filter_scores(self, scores):
        return None

    def choose(self, host, groups, expand, scores, num_points):
        from lit_attn.exploration.rules import Chosen

        for p, group in enumerate(groups):
            for i in expand[p]:
                group.offsets[i] = [1]
        return Chosen()


def fake_steps(monkeypatch, callback, *, loader_prompts, sequences_left, steps, group_size=6, start=None):
    """Runs ``callback.make_experience`` as Lightning's fit loop would (the loader's batches read
    through Lightning's data fetcher), with sampling and the trees faked: step m's filter leaves
    ``sequences_left[m - 1]`` sequences. Returns the batch sizes taken, the prompts taken in
    order, and the stand-in trainer (pass it back as ``start`` to go on with the same data)."""
    from types import SimpleNamespace

    from lightning.pytorch.loops.fetchers import _PrefetchDataFetcher
    from lightning.pytorch.utilities.combined_loader import CombinedLoader
    from torch.utils.data import DataLoader

    import lit_attn.exploration.step as step_module
    from lit_attn.exploration.groups import PromptGroup
    from lit_attn.exploration.stages import Sampled
    from lit_attn.tree import Sample

    def sample(host, prompts, pending, settings, step, rank=0):
        groups = [
            PromptGroup(r, [1], [Sample((5, 6, 7), float(i % 2), (0.0,) * 3, step) for i in range(host.group_size)])
            for r in prompts
        ]
        return Sampled(groups, {}, 0, {})

    def training_sequences(host, trees, pending, settings):
        return SimpleNamespace(num_sequences=sequences_left.pop(0) if pending else 0), {}

    monkeypatch.setattr(step_module, "sample", sample)
    monkeypatch.setattr(step_module, "training_sequences", training_sequences)
    stand_in = start
    if stand_in is None:
        loader = DataLoader([{"prompt": f"p{i}"} for i in range(1000)], batch_size=loader_prompts, collate_fn=list)
        fetcher = _PrefetchDataFetcher()
        fetcher.setup(CombinedLoader(loader, "max_size_cycle"))
        iter(fetcher)
        stand_in = SimpleNamespace(fit_loop=SimpleNamespace(_data_fetcher=fetcher), train_dataloader=loader, world_size=1)
    fetcher = stand_in.fit_loop._data_fetcher
    callback.rule = _NoRule()
    callback._trainer = stand_in
    host = SimpleNamespace(group_size=group_size, tokenizer=None)  # records carry no solution: nothing is decoded
    sizes, taken = [], []
    for _ in range(steps):
        batch, _, _ = next(fetcher)
        experience = callback.make_experience(host, batch)
        sizes.append(int(experience.metrics["branching/batch_prompts"]))
        taken += [int(g.record["prompt"][1:]) for g in callback.state.pending]
    return sizes, taken, stand_in


def test_the_adaptive_batch_follows_its_own_recurrence_step_by_step(monkeypatch):
    # B_m = ceil(0.1·floor(B_{m-1}·B'/B'') + 0.9·B_{m-1}) with B_{m-1} the recurrence's own last
    # value, B' = 16 × 6 × 5 = 480: B'' = 270 → 18, then 320 → 19, 20, 21. Multiplying by the size
    # of the batch trained (one step older) gave two interleaved chains: 16, 16, 17, 17, 18, 18.
    callback = AttentionBranchCallback(adaptive_sampling=False)
    sizes, taken, _ = fake_steps(monkeypatch, callback, loader_prompts=16, sequences_left=[270, 320, 320, 320, 320], steps=6)
    assert sizes == [16, 16, 18, 19, 20, 21]
    assert callback.state.batch_prompts == 22  # 0.1·floor(21·1.5) + 0.9·21 = 3.1 + 18.9
    # the extra prompts are the next ones in data order: every prompt once, none skipped
    assert taken == list(range(sum(sizes)))
    # read ahead by whole loader batches: the rest of the last one waits for the next step
    assert callback.state.queue == [{"prompt": "p110"}, {"prompt": "p111"}]


def test_the_recurrence_resumes_exactly_from_the_checkpointed_state(monkeypatch):
    straight = AttentionBranchCallback(adaptive_sampling=False)
    sizes, taken, _ = fake_steps(monkeypatch, straight, loader_prompts=16, sequences_left=[270, 320, 320, 320, 320], steps=6)
    first = AttentionBranchCallback(adaptive_sampling=False)
    head, head_taken, stand_in = fake_steps(monkeypatch, first, loader_prompts=16, sequences_left=[270, 320], steps=3)
    saved = copy.deepcopy(first.state_dict())  # what a checkpoint after step 3 holds (the loader keeps its own position)
    resumed = AttentionBranchCallback(adaptive_sampling=False)
    resumed.load_state_dict(saved)
    tail, tail_taken, _ = fake_steps(monkeypatch, resumed, loader_prompts=16, sequences_left=[320, 320, 320], steps=3, start=stand_in)
    assert head + tail == sizes and head_taken + tail_taken == taken


def test_no_cap_on_the_batch_unless_max_batch_prompts_guards_memory(monkeypatch):
    # loader batch 4, B' = 4 × 6 × 5 = 120, B'' = 10: 4 → 9 → 19 → 40, past 4 × the loader's batch
    grown, taken, _ = fake_steps(monkeypatch, AttentionBranchCallback(adaptive_sampling=False), loader_prompts=4, sequences_left=[10] * 4, steps=5)
    assert grown == [4, 4, 9, 19, 40]
    assert taken == list(range(sum(grown)))
    # the optional guard caps B_m, and the recurrence goes on from the capped value
    capped, _, _ = fake_steps(
        monkeypatch, AttentionBranchCallback(adaptive_sampling=False, max_batch_prompts=12), loader_prompts=4,
        sequences_left=[10] * 4, steps=5,
    )
    assert capped == [4, 4, 9, 12, 12]
