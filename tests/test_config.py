"""Config plumbing: typed overrides, unknown keys, JSON round trips."""

from __future__ import annotations

import json
import math
import shlex

import pytest

from pixart import config as config_io
from pixart.config import ConfigError
from pixart.recipes import get_recipe
from pixart.train.config import TrainConfig


def test_overrides_are_typed_and_nested():
    config = config_io.apply_overrides(
        get_recipe("tiny"),
        [
            "optim.lr=1e-4",
            "steps=7",
            "model.depth=3",
            "data.caption_probs={'dense': 0.9, 'alt': 0.1}",
            "sample_prompts=['a red circle', 'a blue square']",
            "init_from=runs/stage1",
            "optim.ema_decay=0",
        ],
    )
    assert config.optim.lr == 1e-4 and config.steps == 7 and config.model.depth == 3
    assert config.data.caption_probs == {"dense": 0.9, "alt": 0.1}
    assert config.sample_prompts == ("a red circle", "a blue square")
    assert config.init_from == "runs/stage1"
    assert isinstance(config.optim.ema_decay, float)


def test_a_text_setting_takes_number_like_words_as_typed():
    """data.root=2024 was refused ("2024 is not a str"): a folder may be named like a number."""
    config = config_io.apply_overrides(get_recipe("tiny"), ["data.root=2024", "init_from=1.50", "data.synthetic=''"])
    assert (config.data.root, config.init_from, config.data.synthetic) == ("2024", "1.50", "")
    assert config_io.apply_overrides(get_recipe("tiny"), ["steps=12"]).steps == 12  # numbers stay numbers


@pytest.mark.parametrize(
    ("text", "expected"), [("true", True), ("True", True), ("yes", True), ("1", True), ("false", False), ("OFF", False)]
)
def test_booleans_take_the_spellings_of_a_command_line(text, expected):
    config = config_io.apply_overrides(get_recipe("tiny"), [f"compile={text}", f"previews={not expected}"])
    assert config.compile is expected and config.previews is (not expected)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.dpeth=3", "did you mean model.depth"),
        ("steps=1.5", "steps: 1.5 is not a int"),
        ("precision=fp8", "precision must be one of"),
        ("model=3", "model is a group of settings"),
        ("steps", "must look like key=value"),
        ("data.caption_probs=[1]", "is not a dict"),
        ("compile=maybe", "compile: 'maybe' is not a bool"),
        ("compile=2", "compile: 2 is not a bool"),
        ("model.hidden_size=100", "not divisible by num_heads"),
        ("data.synthetic_sizes=['32y32']", "synthetic_sizes: a size must look like 512x768"),
        (  # one bucket per aspect ratio: two canvas sizes in one would not stack into a batch
            "data.synthetic_sizes=['32x48','64x96']",
            "synthetic_sizes: 32x48 and 64x96 have the same aspect ratio (0.67); keep one of them",
        ),
        ("optim.lr=-1", "lr must be a finite number > 0"),
        ("optim.lr=1e400", "lr must be a finite number > 0"),
        ("optim.lr=0", "lr must be a finite number > 0, got 0"),  # a run that never learns
        (
            "model.in_channels=0",
            "caption_channels and in_channels must be at least 1",
        ),  # refused after the data was built
        ("dit.in_channels=-3", "num_classes and in_channels must be at least 1"),
        ("dit.input_size=33", "input_size 33 is not divisible by patch_size 2"),  # trained and saved so
        ("optim.beta2=1.5", "beta2 must lie in .0, 1., got 1.5"),
        ("optim.weight_decay=-1", "weight_decay must be a finite number >= 0"),
        ("optim.grad_clip=0", "eps and grad_clip must be > 0"),
        ("optim.warmup_steps=-5", "warmup_steps >= 0"),
        ("data.num_workers=-1", "num_workers must be >= 0"),
        ("data.synthetic_count=0", "synthetic_count must be at least 1"),
        ("data.caption_probs={}", "caption_probs must give each caption field a weight"),
        ("data.caption_probs={'dense': 0.0}", "caption_probs must give each caption field a weight"),
        ("sample_steps=0", "sample_steps, max_nonfinite_steps >= 1"),
        ("sample_every=-3", "sample_every must be >= 0"),
        ("max_nonfinite_steps=0", "max_nonfinite_steps >= 1"),
        ("init_new_keys=['']", r"init_new_keys: \[''\] holds an empty prefix, which would let init_from miss"),
        ("model.depth=0", "depth, num_heads, hidden_size"),
        ("seed=-1", r"seed must lie in \[0, 2\*\*64 - 1\], got -1"),
        (f"seed={2**64}", rf"seed must lie in \[0, 2\*\*64 - 1\], got {2**64}"),  # torch.manual_seed's overflow
        (f"data.synthetic_seed={2**64}", rf"synthetic_seed must lie in \[0, 2\*\*64 - 1\], got {2**64}"),
        # found once the shapes were built and encoded: "no complete batch"
        ("data.synthetic_count=4", "synthetic_count=4 images per canvas size are fewer than one batch (batch_size=16)"),
        ("optim.eps=inf", "eps must be finite, got inf"),  # AdamW would never move the weights
        ("model.mlp_ratio=-1", "mlp_ratio must give the MLP at least one unit"),
        ("dit.mlp_ratio=0", "mlp_ratio must give the MLP at least one unit"),
        ("dit.depth=0", "depth, num_heads, hidden_size, patch_size, input_size, num_classes and in_channels must be"),
        ("model.max_length=600", "more than the shapes data's MiniLM encoder in .* has positions for .512."),
        ("data.synthetic=bogus", "synthetic must be 'shapes', or '' to train on data.root; got 'bogus'"),
        ("data.synthetic_sizes=[]", "synthetic_sizes must name at least one canvas size, e.g. .'32x32'."),
        ("data.synthetic_sizes=['30x32']", "30x32 is not a multiple of the patch size 4 on each side; use 32x32"),
        ("data.caption_probs={'bogus': 1.0}", "the shapes data has the caption fields .'alt', 'dense'., not .'bogus'."),
        # each of these trained on timesteps off the schedule (negative, or all 0) without a word, or (the
        # position scale) stopped after 5 non-finite steps with advice about the learning rate
        ("diffusion.high_noise_start=-1.0", "high_noise_start must lie in .0, 1), got -1.0"),
        ("diffusion.high_noise_start=1", "high_noise_start must lie in .0, 1), got 1"),
        ("diffusion.flow_shift=0", "flow_shift must be a positive number (1 shifts nothing), got 0"),
        ("diffusion.flow_shift=-1", "flow_shift must be a positive number"),
        ("diffusion.logit_std=-1", "logit_std finite and 0 or more, got 0.0, -1"),
        ("diffusion.shift_base_tokens=-4", "shift_base_tokens must be 0 (a fixed shift) or more, got -4"),
        ("model.interpolation_scale=0", "interpolation_scale must be a positive number, got 0"),
        ("model.interpolation_scale=inf", "interpolation_scale must be a positive number, got inf"),
        ("model.in_channels=4", "the shapes data is RGB pixels (3 channels): set model.in_channels=3, not 4"),
        ("sample_prompts=a cat", "sample_prompts: 'a cat' is not a tuple; write a list, quoted for the shell: --set"),
    ],
)
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_io.apply_overrides(get_recipe("tiny"), [override])


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("sample_prompts=a cat", {"sample_prompts": ("a cat",)}),
        ("data.synthetic_sizes=32x32,64x32", {"synthetic_sizes": ("32x32", "64x32")}),
        ("data.caption_probs=alt:1.0", {"caption_probs": {"alt": 1.0}}),
        ("data.caption_probs=alt:0.5, dense:0.5", {"caption_probs": {"alt": 0.5, "dense": 0.5}}),
    ],
)
def test_a_list_or_dict_typed_bare_is_answered_with_a_form_the_shell_passes_on(typed, meant):
    """The advice for a list typed bare was data.synthetic_sizes=['32x32,64x32'] (one size, joined), which a
    shell passes on as [32x32,64x32], a string again; for a dict there was none (review). The advice, read as
    a shell reads it, sets what was meant."""
    with pytest.raises(ConfigError) as refused:
        config_io.apply_overrides(get_recipe("tiny"), [typed])
    command = str(refused.value).split("quoted for the shell: ")[1]
    flag, override = shlex.split(command)
    assert flag == "--set"
    config = config_io.apply_overrides(get_recipe("tiny"), [override])
    for name, value in meant.items():
        assert getattr(config.data if name != "sample_prompts" else config, name) == value


def test_json_round_trip_and_unknown_keys():
    config = get_recipe("stage3-aesthetic-1024")
    data = json.loads(config_io.to_json(config))
    assert config_io.from_dict(TrainConfig, data) == config
    data["optim"]["momentum"] = 0.9
    with pytest.raises(ConfigError, match="optim.momentum"):
        config_io.from_dict(TrainConfig, data)
    del data["optim"]["momentum"]
    data["optim"]["lrr"] = 0.1  # a hand-edited config.json: the key it meant is named, as --set names it
    with pytest.raises(ConfigError, match=r"unknown config keys \['optim.lrr'\]; did you mean lr\?"):
        config_io.from_dict(TrainConfig, data)


def test_strict_json_refuses_a_key_given_twice():
    assert config_io.strict_json('{"a": {"b": 1}, "c": [{"b": 2}]}') == {"a": {"b": 1}, "c": [{"b": 2}]}
    with pytest.raises(ValueError, match="the key 'b' is given twice in one object"):
        config_io.strict_json('{"a": {"b": 1, "b": 2}}')


def test_diff_lists_changes():
    a = get_recipe("tiny")
    b = config_io.apply_overrides(a, ["optim.lr=1", "steps=3"])
    assert config_io.diff(a, b) == ["optim.lr: 0.001 -> 1.0", "steps: 30 -> 3"]


@pytest.mark.parametrize("order", [1, -1], ids=["as-written", "reversed"])
def test_overrides_checked_across_fields_do_not_depend_on_their_order(order):
    """learn_sigma=false alone is refused while the objective is iddpm; together with objective=flow it is
    a valid config whichever comes first."""
    iddpm = config_io.apply_overrides(get_recipe("tiny"), ["diffusion.objective=iddpm", "model.learn_sigma=true"])
    config = config_io.apply_overrides(iddpm, ["model.learn_sigma=false", "diffusion.objective=flow"][::order])
    assert (config.model.learn_sigma, config.diffusion.objective) == (False, "flow")
    with pytest.raises(ConfigError, match="the iddpm objective needs model.learn_sigma=True"):
        config_io.apply_overrides(iddpm, ["model.learn_sigma=false"])


@pytest.mark.parametrize("order", [1, -1], ids=["as-written", "reversed"])
def test_overrides_valid_only_together_are_set_together(order):
    """hidden 96 with 3 heads (tiny) to hidden 160 with 5: each override alone breaks divisibility with the
    other's old value, so both were refused whatever their order, though the config asked for is valid."""
    asked = ["model.hidden_size=160", "model.num_heads=5", "optim.lr=0.002"][::order]
    config = config_io.apply_overrides(get_recipe("tiny"), asked)
    assert (config.model.hidden_size, config.model.num_heads, config.optim.lr) == (160, 5, 0.002)
    with pytest.raises(ConfigError, match="hidden_size 160 is not divisible by num_heads 7"):
        config_io.apply_overrides(get_recipe("tiny"), ["model.hidden_size=160", "model.num_heads=7"][::order])


def test_the_class_stage_checks_its_dit_for_the_iddpm_objective():
    """Stage 1 trains config.dit, not config.model: without a learned sigma the iddpm objective crashed at
    the first step, after the run folder and data were made, naming learn_sigma without its section."""
    stage1 = config_io.apply_overrides(
        get_recipe("tiny"), ["stage=class", "dit.in_channels=3", "diffusion.objective=iddpm"]
    )
    with pytest.raises(ConfigError, match=r"the iddpm objective needs dit\.learn_sigma=True"):
        config_io.apply_overrides(stage1, ["dit.learn_sigma=false"])
    assert not config_io.apply_overrides(stage1, ["model.learn_sigma=false"]).model.learn_sigma  # not trained


def test_the_class_stage_names_its_dit_for_the_channels_of_the_shapes_data():
    """Stage 1 on shapes data with its recipe's 4-channel DiT was refused once the data was built (a minute
    in), naming model.in_channels, which stage 1 does not train."""
    with pytest.raises(ConfigError, match=r"RGB pixels \(3 channels\): set dit\.in_channels=3, not 4"):
        config_io.apply_overrides(get_recipe("stage1-class-256"), ["data.synthetic=shapes"])
    with pytest.raises(ConfigError, match=r"set dit\.in_channels=3, not 4"):
        config_io.apply_overrides(get_recipe("tiny"), ["stage=class"])


def test_a_key_set_twice_takes_its_last_value_and_floats_take_inf():
    tiny = get_recipe("tiny")
    assert config_io.apply_overrides(tiny, ["steps=-1", "steps=5"]).steps == 5
    with pytest.raises(ConfigError, match="steps must be >= 0"):
        config_io.apply_overrides(tiny, ["steps=5", "steps=-1"])
    assert config_io.apply_overrides(tiny, ["optim.grad_clip=inf"]).optim.grad_clip == math.inf  # no clipping
    with pytest.raises(ConfigError, match="lr must be a finite number"):
        config_io.apply_overrides(tiny, ["optim.lr=inf"])


def test_synthetic_count_is_checked_only_where_the_shapes_are_trained_on():
    """data.root replaces a recipe's synthetic shapes: its synthetic_count said nothing of the batches then,
    yet a batch of 512 on one's own features was refused for the tiny recipe's 256 shapes a size."""
    config = config_io.apply_overrides(get_recipe("tiny"), ["data.root=/features", "data.batch_size=512"])
    assert config.data.batch_size == 512
    with pytest.raises(ConfigError, match="synthetic_count=256 images per canvas size are fewer than one batch"):
        config_io.apply_overrides(get_recipe("tiny"), ["data.batch_size=512"])
