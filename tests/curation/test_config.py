"""pipelines.yaml validation: every error names the key path; --set overrides."""
import os

import pytest

from curation.config import ConfigError, load_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write(tmp_path, text: str) -> str:
    (tmp_path / "v.mp4").write_bytes(b"x")
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return str(p)


def test_valid_config_and_relative_paths(tmp_path):
    cfg = load_config(write(tmp_path, "root: out\ninputs: ['*.mp4']\n"))
    assert cfg.root == str(tmp_path / "out")
    assert cfg.split.detector == "content"


@pytest.mark.parametrize("text,key,reason", [
    ("root: o\ninputs: ['*.mp4']\nsplit: {treshold: 3}\n", "split.treshold", "unknown key"),
    ("root: o\ninputs: ['*.mp4']\nsplit: {min_clip_s: abc}\n", "split.min_clip_s", "valid number"),
    ("root: o\ninputs: ['*.mp4']\nsplit: {min_clip_s: -1}\n", "split.min_clip_s", "greater than 0"),
    ("root: o\ninputs: ['*.mp4']\nsplit: {detector: magic}\n", "split.detector", "content"),
    ("root: o\ninputs: ['*.mp4']\nsplit: {min_clip_s: 10, max_clip_s: 5}\n", "split", "max_clip_s"),
    ("root: o\ninputs: ['*.mp4']\nbogus: 1\n", "bogus", "unknown key"),
    ("inputs: ['*.mp4']\n", "root", "Field required"),
])
def test_errors_name_the_key(tmp_path, text, key, reason):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    msg = str(e.value)
    assert f"{key}:" in msg and reason in msg, msg


def test_missing_input_fails_before_work(tmp_path):
    with pytest.raises(ConfigError, match="inputs: no file matches .*nothing-here"):
        load_config(write(tmp_path, "root: o\ninputs: ['nothing-here/*.mp4']\n"))


def test_set_overrides_and_validates(tmp_path):
    p = write(tmp_path, "root: o\ninputs: ['*.mp4']\n")
    cfg = load_config(p, ["split.threshold=30", "split.detector=adaptive", "ray.num_cpus=2"])
    assert (cfg.split.threshold, cfg.split.detector, cfg.ray.num_cpus) == (30.0, "adaptive", 2)
    with pytest.raises(ConfigError, match="split.crf"):
        load_config(p, ["split.crf=99"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(p, ["split.crf"])


def test_repository_pipelines_yaml_is_valid():
    from vidcurate.flow import load_config as load_flow

    cfg = load_flow(os.path.join(REPO, "pipelines.yaml"), check_inputs=False)
    assert cfg.split.preset == "veryfast"


def test_cli_reports_config_error(tmp_path, capsys):
    from curation.__main__ import main

    assert main(["run", write(tmp_path, "root: o\ninputs: ['*.mp4']\nsplit: {crf: 80}\n")]) == 2
    assert "split.crf" in capsys.readouterr().err


def test_repository_pipelines_yaml_uses_no_deprecated_key():
    import warnings

    from curation.schema import ConfigDeprecationWarning
    from vidcurate.flow import load_config as load_flow

    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigDeprecationWarning)
        cfg = load_flow(os.path.join(REPO, "pipelines.yaml"), check_inputs=False)
    assert cfg.filter.model.resources.batch_size == 8 and cfg.caption.frames.resources.num_cpus == 1


OLD_RESOURCES = ("filter: {decode: {num_cpus: 0.5}, model: {num_gpus: 1, batch_size: 4}}\n"
                 "dedup: {hash: {num_cpus: 2}, cluster_tasks: 4}\n"
                 "caption: {frames_resources: {num_cpus: 2, batch_size: 3}}\n")
NEW_RESOURCES = ("filter: {decode: {resources: {num_cpus: 0.5}}, model: {resources: {num_gpus: 1, batch_size: 4}}}\n"
                 "dedup: {hash: {resources: {num_cpus: 2}}, link: {resources: {num_cpus: 1, workers: 4}}}\n"
                 "caption: {frames: {resources: {num_cpus: 2, batch_size: 3}}}\n")


def test_old_resource_keys_work_for_a_release_with_a_warning_naming_both_keys(tmp_path):
    from curation.schema import ConfigDeprecationWarning
    from vidcurate.flow import load_config as load_flow

    with pytest.warns(ConfigDeprecationWarning) as got:
        old = load_flow(path := write(tmp_path, "root: o\ninputs: ['*.mp4']\n" + OLD_RESOURCES))
    msgs = [str(w.message) for w in got]
    assert {w.filename for w in got} == {path}  # shown at the user's file, not at a line of our source
    for old_key, new_key in [("filter.decode: {num_cpus}", "filter.decode.resources: {num_cpus}"),
                             ("filter.model: {num_gpus, batch_size}", "filter.model.resources: {num_gpus, batch_size}"),
                             ("dedup.hash: {num_cpus}", "dedup.hash.resources: {num_cpus}"),
                             ("dedup.cluster_tasks", "dedup.link.resources.workers"),
                             ("caption.frames_resources", "caption.frames.resources")]:
        assert any(f"{old_key} is deprecated" in m and f"write {new_key} instead" in m for m in msgs), (old_key, msgs)
    (tmp_path / "new").mkdir()
    new = load_flow(write(tmp_path / "new", "root: o\ninputs: ['*.mp4']\n" + NEW_RESOURCES))
    for section in ("filter", "dedup", "caption"):
        assert getattr(old, section) == getattr(new, section), section
    assert old.dedup.link.resources.num_cpus == 1.0  # the old key left out keeps its old default


def test_old_and_new_resource_key_together_is_an_error_naming_both(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "root: o\ninputs: ['*.mp4']\n"
                                    "filter: {model: {num_gpus: 1, resources: {num_gpus: 0}}}\n"))
    assert "filter.model.num_gpus (deprecated) and filter.model.resources.num_gpus" in str(e.value)


def test_set_of_an_old_resource_key_on_a_new_file_still_works(tmp_path):
    from curation.schema import ConfigDeprecationWarning

    p = write(tmp_path, "root: o\ninputs: ['*.mp4']\nfilter: {model: {resources: {workers: 2}}}\n")
    with pytest.warns(ConfigDeprecationWarning, match="filter.model.resources: {num_gpus}"):
        cfg = load_config(p, ["filter.model.num_gpus=1"])
    assert (cfg.filter.model.resources.num_gpus, cfg.filter.model.resources.workers) == (1, 2)


def test_one_demo_switch_and_the_old_ones_with_a_warning(tmp_path):
    from curation.schema import ConfigDeprecationWarning
    from vidcurate.flow import load_config as load_flow

    cfg = load_flow(write(tmp_path, "root: o\ninputs: ['*.mp4']\ndemo: {models: m}\n"))
    assert cfg.demo.models == str(tmp_path / "m")
    assert load_flow(write(tmp_path, "root: o\ninputs: ['*.mp4']\n")).demo.models is None  # real runs: off
    with pytest.warns(ConfigDeprecationWarning, match="filter.demo_models is deprecated .* write demo.models"):
        old = load_flow(write(tmp_path, "root: o\ninputs: ['*.mp4']\nfilter: {demo_models: m}\n"))
    assert old.demo.models == str(tmp_path / "m")
    with pytest.warns(ConfigDeprecationWarning, match="caption.enhance.demo_model is deprecated"):
        load_flow(write(tmp_path, "root: o\ninputs: ['*.mp4']\ncaption: {enhance: {demo_model: true}}\n"))
    with pytest.raises(ConfigError, match="filter.demo_models .deprecated. and demo.models"):
        load_flow(write(tmp_path, "root: o\ninputs: ['*.mp4']\ndemo: {models: m}\nfilter: {demo_models: m}\n"))


def test_demo_models_builds_only_a_missing_model_under_its_folder(tmp_path):
    from captioning.config import SummaryConfig
    from captioning.models import prepare_text_model

    outside = prepare_text_model(SummaryConfig(model=str(tmp_path / "elsewhere" / "lm")), str(tmp_path / "m"))
    assert not os.path.exists(outside.model)  # not under demo.models: left missing (the engine names it)
    inside = prepare_text_model(SummaryConfig(model=str(tmp_path / "m" / "lm")), str(tmp_path / "m"))
    assert os.path.isfile(os.path.join(inside.model, "config.json"))


ENGINES = ("engines:\n  lm: {engine: vllm, model: org/lm, vllm: {tensor_parallel_size: 2}}\n"
           "  vlm: {engine: openai, model: served-vlm, openai: {base_url: 'http://h:1/v1'}}\n")


def test_steps_name_an_engine_of_the_one_engines_table(tmp_path):
    from captioning.config import load_caption_config
    from vidcurate.flow import load_config as load_flow

    p = write(tmp_path, "root: o\ninputs: ['*.mp4']\n" + ENGINES +
              "caption: {engine: vlm, summary: {engine: lm}, enhance: {engine: lm, max_tokens: 9}}\n")
    for c in (load_flow(p).caption, load_caption_config(p, [], None)):  # the pipeline and the captioning commands
        assert (c.engine, c.model, c.openai.base_url) == ("openai", "served-vlm", "http://h:1/v1")
        for lm in (c.summary, c.enhance):
            assert (lm.engine, lm.model, lm.vllm.tensor_parallel_size) == ("vllm", "org/lm", 2)
        assert c.enhance.max_tokens == 9
    inline = load_flow(write(tmp_path, "root: o\ninputs: ['*.mp4']\ncaption: {summary: "
                                       "{engine: vllm, model: org/lm, vllm: {tensor_parallel_size: 2}}}\n"))
    assert inline.caption.summary == load_flow(p).caption.summary  # a name is only a shorter spelling


@pytest.mark.parametrize("caption,message", [
    ("{summary: {engine: nope}}", "caption.summary.engine: 'nope' is neither an engine kind (transformers, vllm, "
                                  "openai) nor a name in engines (lm, vlm)"),
    ("{enhance: {engine: lm, model: other}}", "caption.enhance.model is set by engines.lm (caption.enhance.engine: lm)"),
    ("{engine: vlm, openai: {concurrency: 2}}", "caption.openai is set by engines.vlm"),
])
def test_engine_name_errors_name_the_key(tmp_path, caption, message):
    with pytest.raises(ConfigError) as e:
        from vidcurate.flow import load_config as load_flow

        load_flow(write(tmp_path, "root: o\ninputs: ['*.mp4']\n" + ENGINES + f"caption: {caption}\n"))
    assert message in str(e.value), str(e.value)
