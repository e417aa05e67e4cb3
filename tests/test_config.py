"""Configuration: YAML + overrides, one-line errors naming the key and where it came from."""

import pytest

from dimerec_dist.config import ConfigError, JobConfig, config_to_dict, load_config, parse_override, settings_changes


def write(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_defaults_validate_and_round_trip_to_a_dict():
    config = load_config()
    assert config.model.gem == "comirec_sa"
    assert config_to_dict(config)["model"]["num_interests"] == 4


def test_yaml_then_overrides_in_order(tmp_path):
    path = write(tmp_path, "model:\n  num_interests: 8\n  gem: comirec_dr\nseed: 3\n")
    config = load_config(path, ["model.num_interests=2", "model.cosine_logits=false", "model.temperature=0.1"])
    assert (config.model.num_interests, config.model.gem, config.seed) == (2, "comirec_dr", 3)
    assert config.model.cosine_logits is False and config.model.temperature == 0.1


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("model:\n  num_interest: 4\n", r"job.yaml: unknown key 'model.num_interest'"),
        ("modle:\n  gem: x\n", r"unknown key 'modle'"),
        ("model: 3\n", r"model must be a section"),
        ("model:\n  num_interests: four\n", r"model.num_interests='four' is not a valid int"),
        ("model:\n  cosine_logits: maybe\n", r"not a valid bool"),
        ("- a\n- b\n", r"top level must be a mapping"),
        ("model: [unclosed\n", r"not valid YAML"),
    ],
)
def test_bad_files_give_one_line_errors_naming_key_and_file(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(write(tmp_path, text))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("model.gem=gru", r"model.gem='gru' is not one of"),
        ("model.num_interests=0", r"model.num_interests=0 must be >= 1"),
        ("model.sample_steps=99", r"sample_steps=99 must lie in 1..model.diffusion_steps=50"),
        ("model.temperature=0", r"temperature=0.0 must be > 0"),
        ("model.beta_start=0.5", r"beta_start"),
        ("model.dropout=1.5", r"dropout=1.5"),
        ("model.history_dropout=1", r"history_dropout=1.0 must lie in \[0, 1\)"),
        ("model.grw_max_angle=4", r"grw_max_angle"),
        ("model.recon_weight=-1", r"recon_weight=-1.0 must be >= 0"),
        ("model.sasrec_heads=3", r"must divide model.embedding_dim"),
        ("model.no_such=1", r"override 'model.no_such=1': unknown key"),
        # NaN passes every range comparison, so these used to pass validation and fail mid-run.
        ("train.dense_lr=nan", r"train.dense_lr=nan must be a finite number"),
        ("train.sparse_lr=inf", r"train.sparse_lr=inf must be a finite number"),
        ("model.temperature=nan", r"model.temperature=nan must be a finite number"),
        ("model.ssm_weight=-inf", r"model.ssm_weight=-inf must be a finite number"),
        ("seed=-1", r"seed=-1 must lie in 0..2\^32-1"),
        ("train.popularity_alpha=-1", r"train.popularity_alpha=-1.0 must be >= 0"),
        ("data.kcore=-2", r"data.kcore=-2 must be >= 0"),
        ("model.num_interests=51", r"model.num_interests=51 must be <= model.max_history=50"),
        ("seed", r"is not key=value"),
    ],
)
def test_out_of_range_and_unknown_overrides_are_refused(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


def test_a_dam_query_without_a_trained_dam_is_refused():
    with pytest.raises(ConfigError, match=r"eval.query=dam\+gem retrieves with the DAM.*use eval.query=gem"):
        load_config(None, ["eval.query=dam+gem", "model.recon_weight=0", "model.ssm_weight=0"])
    assert load_config(None, ["eval.query=dam+gem", "model.recon_weight=0"]).query_mode() == "dam+gem"


def test_all_loss_weights_zero_is_refused():
    with pytest.raises(ConfigError, match="nothing to train"):
        load_config(None, ["model.gem_weight=0", "model.recon_weight=0", "model.ssm_weight=0"])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_parse_override_nests_dotted_keys():
    assert parse_override("model.gem=sasrec") == {"model": {"gem": "sasrec"}}
    assert parse_override("seed=4") == {"seed": "4"}
    assert isinstance(JobConfig().model.num_interests, int)


def test_what_changes_a_run_is_a_learned_setting_and_not_where_it_writes():
    base = load_config(None, ["model.temperature=0.1"])
    assert settings_changes(base, load_config(None, ["model.temperature=0.1", "train.log_every=7"])) == []
    assert settings_changes(base, load_config(None, ["model.temperature=0.5"])) == ["model.temperature 0.1 -> 0.5"]


def test_the_temperature_is_no_setting_of_a_model_trained_without_a_softmax():
    # L_recon alone (the DreamRec-like baseline) reads no temperature: a tuned default must not make its runs stale.
    recon_only = ["model.gem_weight=0", "model.ssm_weight=0"]
    before = load_config(None, [*recon_only, "model.temperature=0.1"])
    assert settings_changes(before, load_config(None, [*recon_only, "model.temperature=0.5"])) == []
    assert settings_changes(
        before, load_config(None, [*recon_only, "model.temperature=0.5", "model.recon_weight=2"])
    ) == ["model.recon_weight 1.0 -> 2.0"]
    with_ssm = ["model.gem_weight=0", "model.temperature=0.1"]
    assert "model.temperature 0.1 -> 0.5" in settings_changes(
        load_config(None, with_ssm), load_config(None, ["model.gem_weight=0", "model.temperature=0.5"])
    )


def test_a_yaml_error_names_its_line_and_column(tmp_path):
    expected = r"job.yaml:4:6: not valid YAML: expected .,. or .\].(, but got .:.)?"
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(write(tmp_path, "model:\n  gem: comirec_sa\n  num_interests: [4\ntrain:\n  epochs: 2\n"))
    assert "\n" not in str(info.value)


def test_settings_that_must_fit_the_catalog_are_checked_against_it():
    config = load_config(None, ["eval.ks=10,500"])
    config.check_catalog(1000, "data/x")
    with pytest.raises(ConfigError, match=r"eval.ks=\[10, 500\] asks for more items than data/x's catalog of 300"):
        config.check_catalog(300, "data/x")
