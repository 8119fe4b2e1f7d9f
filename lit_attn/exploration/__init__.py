"""Tree exploration for RL training (AttnRL, TreeRL): the map of this package.

Start with ``step.py``: :func:`~lit_attn.exploration.step.explore_step` is one training step,
its stages called top to bottom::

    take_prompts → sample → rule.score → plan_expansion (ADS) → choose_branch_points
                 → build_trees → training_sequences (filter, pack) → next_batch_size

=================  ===========================================================================
file               what it holds
=================  ===========================================================================
``step.py``        ``explore_step`` (the stage order above) and ``COUNT_METRICS``
``stages.py``      the stages, as plain functions over values (never importing the step)
``state.py``       ``ExplorationState``: all that carries between steps (checkpointed)
``settings.py``    ``ExplorationSettings``: every exploration knob once, documented and checked
``rules.py``       the ``BranchRule`` protocol and the rules that run the model:
                   ``FCIBranching`` (AttnRL), ``EntropyBranching`` (TreeRL); ``Chosen``
``selection.py``   the pure maths: ATB, early steps, entropy offsets, ADS counts and choices,
                   ``RunningMean``, the adaptive batch size
``groups.py``      ``PromptGroup``: a prompt, its responses, their branch offsets
``host.py``        ``Host``: what the step needs of the RL module; chunking of no-grad calls
``audit.py``       what branching finds (before the first error, rescued), shared with
                   ``bench/branching.py``
=================  ===========================================================================

Imports go one way: ``step`` → ``stages`` → ``rules``, ``state``, ``settings`` → ``selection``,
``groups``, ``host``. No module here imports ``step`` or the package itself (this file exports
nothing; tests/test_exploration_layout.py checks). Lightning sees none of this directly: the
callbacks in ``lit_attn.callbacks.branching`` (``AttentionBranchCallback``,
``EntropyBranchCallback``) build the settings and a rule from their arguments, hold the state,
and call the step::

    python -m lit_attn fit --config lit_attn/configs/attnrl.yaml     # AttnRL
    python -m lit_attn fit --config lit_attn/configs/treerl.yaml     # TreeRL

The maths and the paper's sections: docs/attnrl.md.
"""
