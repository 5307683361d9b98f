import os

import pytest

from trainer import config as config_lib
from trainer import kinds
from trainer.config import ConfigError

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs")


def test_every_shipped_config_loads():
    names = sorted(n for n in os.listdir(CONFIGS) if n.endswith(".yaml"))
    assert {"demo.yaml", "tiny.yaml"} <= set(names)
    pipelines = [n for n in names if config_lib.is_pipeline_config(os.path.join(CONFIGS, n))]
    assert pipelines == ["retrieve_rerank.yaml"]
    for name in names:
        path = os.path.join(CONFIGS, name)
        if name in pipelines:
            assert isinstance(config_lib.load_pipeline(path), config_lib.PipelineConfig)
            with pytest.raises(config_lib.ConfigError, match="recommend --pipeline"):
                config_lib.load_config(path)
        else:
            assert isinstance(config_lib.load_config(path), config_lib.ExperimentConfig)


def test_tiny_inherits_from_demo_and_overrides():
    demo = config_lib.load_config(os.path.join(CONFIGS, "demo.yaml"))
    tiny = config_lib.load_config(os.path.join(CONFIGS, "tiny.yaml"))
    assert tiny.name == "tiny" and demo.name == "demo"
    assert tiny.model.hidden_dim < demo.model.hidden_dim
    # Keys tiny does not set come from demo.
    assert tiny.train.learning_rate == demo.train.learning_rate
    assert tiny.data.synthetic.query_fraction == demo.data.synthetic.query_fraction


def test_dotted_overrides_are_typed():
    cfg = config_lib.load_config(os.path.join(CONFIGS, "tiny.yaml"), [
        "train.learning_rate=3e-5", "model.num_layers=1", "train.jit_compile=true",
        "data.item_text_fields=[title]", "runtime.strategy=one_device"])
    assert cfg.train.learning_rate == pytest.approx(3e-5)
    assert isinstance(cfg.train.learning_rate, float)
    assert cfg.model.num_layers == 1
    assert cfg.train.jit_compile is True
    assert cfg.data.item_text_fields == ["title"]
    assert cfg.runtime.strategy == "one_device"


@pytest.mark.parametrize("override,key", [
    ("train.learnin_rate=1e-3", "train.learnin_rate"),
    ("modle.num_layers=1", "modle"),
    ("data.synthetic.bogus=1", "data.synthetic.bogus"),
])
def test_unknown_keys_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
        config_lib.load_config(os.path.join(CONFIGS, "tiny.yaml"), [override])


@pytest.mark.parametrize("override,key", [
    ("model.num_layers=two", "model.num_layers"),
    ("model.num_layers=1.5", "model.num_layers"),
    ("train.jit_compile=1", "train.jit_compile"),
    ("train.learning_rate=fast", "train.learning_rate"),
    ("data.item_text_fields=title", "data.item_text_fields"),
])
def test_wrong_types_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"config key '{key}' expects"):
        config_lib.load_config(os.path.join(CONFIGS, "tiny.yaml"), [override])


@pytest.mark.parametrize("override,key", [
    ("runtime.strategy=gpu", "runtime.strategy"),
    ("model.kind=gpt", "model.kind"),
    ("data.item_max_tokens=60", "data.item_max_tokens"),
    ("data.sequence_length=512", "data.sequence_length"),
    ("model.hidden_dim=15", "model.hidden_dim"),
    ("train.batch_size=0", "train.batch_size"),
    ("model.pooling=max", "model.pooling"),
])
def test_invalid_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_checked(os.path.join(CONFIGS, "tiny.yaml"), [override])


def load_checked(path, overrides):
    """What a command validates before it writes: the config, then its kind's checks."""
    return kinds.for_config(config_lib.load_config(path, overrides))


@pytest.mark.parametrize("overrides,key", [
    (["model.interaction=sideways"], "model.interaction"),
    (["train.loss=hinge"], "train.loss"),
    (["model.kind=cross_encoder", "train.loss=softmax"], "train.loss"),
    (["model.kind=mf", "train.loss=softmax"], "train.loss"),
    (["model.kind=mf", "train.loss=full_softmax"], "train.loss"),
    (["model.kind=two_tower", "train.loss=full_softmax"], "train.loss"),
    (["model.kind=sasrec", "train.loss=full_softmax", "train.privacy.enabled=true"],
     "train.privacy.enabled"),
    (["model.kind=two_tower", "model.user_layers=-1"], "model.user_layers"),
    (["model.kind=two_tower", "model.user_heads=3"], "model.user_heads"),
    (["model.kind=sasrec", "data.max_history=0"], "data.max_history"),
    (["model.kind=popularity", "train.privacy.enabled=true", "train.loss=bce"],
     "train.privacy.enabled"),
    (["model.kind=item_knn", "data.max_history=0"], "data.max_history"),
    (["model.kind=item_knn", "model.knn_neighbours=0"], "model.knn_neighbours"),
    (["model.kind=item_knn", "model.knn_recency_decay=0"], "model.knn_recency_decay"),
    (["model.kind=item_knn", "model.knn_popularity_exponent=1.5"],
     "model.knn_popularity_exponent"),
])
def test_kind_settings_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_checked(os.path.join(CONFIGS, "tiny.yaml"), overrides)


@pytest.mark.parametrize("kind", ["sasrec", "gru4rec"])
def test_id_only_kinds_train_with_the_full_softmax(kind):
    load_checked(os.path.join(CONFIGS, "tiny.yaml"),
                 [f"model.kind={kind}", "train.loss=full_softmax"])


def test_unknown_kind_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="model.kind.*two_tower.*cross_encoder"):
        config_lib.load_config(os.path.join(CONFIGS, "tiny.yaml"), ["model.kind=gpt"])


@pytest.mark.parametrize("model, kind", [
    ({"kind": "bert", "interaction": "two_tower"}, "two_tower"),
    ({"kind": "bert", "interaction": "cross"}, "cross_encoder"),
    ({"kind": "bert"}, "cross_encoder"),
    ({"interaction": "two_tower"}, "two_tower"),
    ({"kind": "sasrec", "interaction": "cross"}, "sasrec"),  # a resolved sasrec config
])
def test_configs_written_before_the_registry_name_their_kind(model, kind):
    raw = config_lib.to_dict(config_lib.ExperimentConfig())
    raw["model"].pop("kind")
    raw["model"].update(model)
    assert config_lib.config_from_dict(raw).model.kind == kind


def test_interaction_beside_a_new_kind_name_is_refused():
    with pytest.raises(ConfigError, match="model.interaction.*model.kind"):
        config_lib.load_config(os.path.join(CONFIGS, "tiny.yaml"),
                               ["model.kind=two_tower", "model.interaction=cross"])


def test_pretrained_with_normalize_first_is_refused():
    with pytest.raises(ConfigError, match="model.normalize_first"):
        config_lib.load_config(os.path.join(CONFIGS, "tiny.yaml"),
                               ["model.pretrained=/some/dir", "model.normalize_first=true"])


def test_activation_is_checked_and_needs_the_pre_ln_encoder():
    tiny = os.path.join(CONFIGS, "tiny.yaml")
    with pytest.raises(ConfigError, match="'model.activation' must be gelu or relu.*'tanh'"):
        config_lib.load_config(tiny, ["model.activation=tanh", "model.normalize_first=true"])
    with pytest.raises(ConfigError, match="model.activation.*model.normalize_first=true"):
        config_lib.load_config(tiny, ["model.activation=relu", "model.normalize_first=false"])
    cfg = config_lib.load_config(tiny, ["model.activation=relu", "model.normalize_first=true"])
    assert cfg.model.activation == "relu"


def test_yaml_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  num_layers: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config_lib.load_config(str(bad))
    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  hiden_dim: 8\n")
    with pytest.raises(ConfigError, match="'model.hiden_dim'"):
        config_lib.load_config(str(typo))
    with pytest.raises(ConfigError, match="not found"):
        config_lib.load_config(str(tmp_path / "missing.yaml"))
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        config_lib.load_config(str(loop))
    with pytest.raises(ConfigError, match="group.key=value"):
        config_lib.load_config(os.path.join(CONFIGS, "tiny.yaml"), ["learning_rate"])


def test_resolved_config_round_trips():
    cfg = config_lib.load_config(os.path.join(CONFIGS, "tiny.yaml"), ["train.epochs=7"])
    import yaml
    again = config_lib.config_from_dict(yaml.safe_load(config_lib.dump_yaml(cfg)))
    assert again == cfg


def test_runs_written_before_runtime_precision_still_load():
    raw = config_lib.to_dict(config_lib.ExperimentConfig())
    raw["runtime"].pop("precision")
    raw["runtime"]["mixed_precision"] = False  # what earlier config.yaml files hold
    assert config_lib.config_from_dict(raw).runtime.precision == "float32"
    raw["runtime"]["mixed_precision"] = True
    with pytest.raises(config_lib.ConfigError, match="runtime.precision"):
        config_lib.config_from_dict(raw)


@pytest.mark.parametrize("override, key", [
    ("distill.alpha=1.5", "distill.alpha"), ("distill.temperature=0", "distill.temperature"),
    ("distill.unlabelled_per_example=-1", "distill.unlabelled_per_example"),
    ("distill.teacher_centering=mean", "distill.teacher_centering")])
def test_bad_distillation_settings_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key):
        config_lib.load_config(os.path.join(CONFIGS, "demo_student.yaml"), [override])
