"""Study files (kdjax.config_file): every preset written as TOML reads back to the same config, through
the library and through ``kdjax distill --config FILE.toml --show-config``; a preset base with a few
keys is the preset with those ``--set`` overrides; every bad file is refused before any training with
the file, the line and the key."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path

import pytest

from kdjax.cli import STUDY_KINDS, main
from kdjax.config import StudyConfig, TrainConfig, override, validate_study
from kdjax.config_file import StudyFileError, dumps_toml, key_lines, load_toml, loads_toml
from kdjax.lm_study import LM_PRESETS, LMStudyConfig, validate_lm_study
from kdjax.presets import HINTON_MNIST, PRESETS

DOCS = Path(__file__).resolve().parent.parent / "docs"
ALL_PRESETS = [("study", name) for name in PRESETS] + [("lm_study", name) for name in LM_PRESETS]


def _preset(kind: str, name: str):
  return STUDY_KINDS[kind][1][name]


@pytest.mark.parametrize("kind,name", ALL_PRESETS)
def test_every_preset_round_trips(kind, name):
  cfg = _preset(kind, name)
  text = dumps_toml(cfg, kind=kind)
  assert loads_toml(text, STUDY_KINDS, path=f"{name}.toml") == (kind, cfg)
  doc = tomllib.loads(text)
  assert doc["kind"] == kind and "preset" not in doc and doc["name"] == name
  assert text.startswith("# A kdjax study file") and "kdjax distill --config" in text.splitlines()[1]


def test_values_of_every_kind_round_trip_exactly():
  weird = "quote \" backslash \\ tab \t newline \n bell \x07 del \x7f unicode é ✓ #not a comment"
  cfg = dataclasses.replace(
      HINTON_MNIST, name=weird, tfds_data_dir="C:\\data\\tfds", num_classes=None, seeds=(7, -1, 2**40),
      teacher=dataclasses.replace(HINTON_MNIST.teacher, learning_rate=0.1 + 0.2, weight_decay=5e-300, momentum=1e300,
                                  clip_norm=1.5e-7, warmup_epochs=-0.0, decay_epochs=(1, 2), dropout=0.0,
                                  cache_features=("block1", "pre_logits")),
      method="reviewkd", method_hparams=(("layers", ("block1", "block2")), ("max_mid_channels", 2),
                                         ("teacher_layers", ("a",)), ("warmup_epochs", 3.5), ("weight", 1.5)))
  text = dumps_toml(cfg, kind="study")
  assert loads_toml(text, STUDY_KINDS) == ("study", cfg)
  assert "learning_rate = 0.30000000000000004" in text and "clip_norm = 1.5e-07" in text
  # inf and nan are written as TOML has them, and refused on reading with their line, as --set refuses them
  bad = dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, momentum=math.nan, clip_norm=math.inf))
  text = dumps_toml(bad)
  with pytest.raises(StudyFileError) as e:
    loads_toml(text, STUDY_KINDS, path="s.toml")
  lines = text.splitlines()
  assert str(e.value).splitlines() == [
      f"s.toml:{lines.index('momentum = nan') + 1}: teacher.momentum: expected a finite number, got a float (nan)",
      f"s.toml:{lines.index('clip_norm = inf') + 1}: teacher.clip_norm: expected a finite number, got a float (inf)"]
  # None: a left-out key where the default is None; "none" where it is not (max_rows is 8000 by default)
  lm = dataclasses.replace(LM_PRESETS["lm_tiny"], max_rows=None, corpus_bytes=None)
  text = dumps_toml(lm, kind="lm_study")
  assert 'max_rows = "none"' in text and "# corpus_bytes: none" in text
  assert loads_toml(text, STUDY_KINDS) == ("lm_study", lm)


@dataclasses.dataclass(frozen=True)
class _Inner:
  model: str
  path: str | None = "somewhere"


@dataclasses.dataclass(frozen=True)
class _Outer:
  name: str
  inner: _Inner
  other: _Inner = _Inner(model="x", path=None)


def test_the_writer_refuses_what_it_cannot_write_back():
  with pytest.raises(ValueError, match=r"inner\.path is None, which a study file cannot hold"):
    dumps_toml(_Outer(name="n", inner=_Inner(model="m", path=None)))
  with pytest.raises(ValueError, match=r"method_hparams\.x = \{'a': 1\}"):
    dumps_toml(dataclasses.replace(HINTON_MNIST, method_hparams=(("x", {"a": 1}),)))
  with pytest.raises(ValueError, match=r"teacher\.epochs = '10'"):
    dumps_toml(dataclasses.replace(HINTON_MNIST, teacher=dataclasses.replace(HINTON_MNIST.teacher, epochs="10")))
  # a None whose left-out key means None (other.path) is written as a comment and reads back
  cfg = _Outer(name="n", inner=_Inner(model="m"))
  assert "# path: none" in dumps_toml(cfg) and loads_toml(dumps_toml(cfg), {"toy": (_Outer, {})}) == ("toy", cfg)


def test_a_required_field_left_out_is_named_at_its_table():
  text = 'name = "n"\n\n[inner]\npath = "p"\n'
  with pytest.raises(StudyFileError) as e:
    loads_toml(text, {"toy": (_Outer, {})}, path="toy.toml")
  assert e.value.problems == ["toy.toml:3: inner.model: missing: _Inner has no default for it"]


def _cli(argv, capsys):
  code = main(argv)
  out = capsys.readouterr()
  return code, out.out, out.err


@pytest.mark.parametrize("argv", [
    ["--config", "hinton_mnist"],
    ["--config", "hinton_mnist", "--method", "dkd", "--set", "method.beta=4", "--set", "method.warmup_epochs=2",
     "--seeds", "3,4", "--set", "teacher.epochs=5", "--set", "num_classes=none", "--set", "distilled.dropout=0.1"],
    ["--config", "cifar100_resnet32x4_resnet8x4", "--set", "health.loss_rise=3"],
    ["--config", "text_negation", "--method", "reviewkd", "--set", "method.layers=block1,block2"],
    ["--config", "lm_tiny"],
    ["--config", "lm_tiny", "--set", "max_rows=none", "--seeds", "4,5", "--set", "recipes=sft,word_kd"],
])
def test_show_config_loads_back_to_the_same_config(argv, capsys, tmp_path):
  code, shown, _ = _cli(["distill", *argv, "--show-config"], capsys)
  assert code == 0
  path = tmp_path / "study.toml"
  path.write_text(shown)
  code, again, err = _cli(["distill", "--config", str(path), "--show-config"], capsys)
  assert code == 0 and again == shown, err
  kind, cfg = load_toml(path, STUDY_KINDS)
  assert kind == ("lm_study" if argv[1].startswith("lm_") else "study")
  (validate_lm_study if kind == "lm_study" else validate_study)(cfg)


def test_flags_apply_on_top_of_a_file(capsys, tmp_path):
  path = tmp_path / "s.toml"
  path.write_text(dumps_toml(HINTON_MNIST, kind="study"))
  code, shown, _ = _cli(["distill", "--config", str(path), "--seeds", "5", "--set", "student.epochs=2",
                         "--method", "dkd", "--set", "method.beta=3", "--show-config"], capsys)
  assert code == 0
  expected = override(HINTON_MNIST, ["seeds=5", "student.epochs=2", "method=dkd", "method.beta=3"])
  assert loads_toml(shown, STUDY_KINDS) == ("study", expected)


def test_a_preset_base_with_a_few_keys_is_the_preset_with_those_overrides(capsys, tmp_path):
  path = tmp_path / "dkd.toml"
  path.write_text('# DKD on the Hinton pair\npreset = "hinton_mnist"\nname = "dkd_mnist"\nmethod = "dkd"\n'
                  'seeds = [0, 1, 2, 3]\n\n[teacher]\nepochs = 5\n\n[distilled]\ndropout = 0.1\n\n'
                  '[method_hparams]\nbeta = 4\nwarmup_epochs = 2\n\n[health]\nloss_rise = 3\n')
  expected = override(HINTON_MNIST, ["name=dkd_mnist", "method=dkd", "seeds=0,1,2,3", "teacher.epochs=5",
                                     "distilled.dropout=0.1", "method.beta=4", "method.warmup_epochs=2",
                                     "health.loss_rise=3"])
  assert load_toml(path, STUDY_KINDS) == ("study", expected)
  # the resolved config it shows has every field and no preset, and loads back the same
  code, shown, _ = _cli(["distill", "--config", str(path), "--show-config"], capsys)
  assert code == 0 and "preset" not in tomllib.loads(shown)
  assert loads_toml(shown, STUDY_KINDS) == ("study", expected)
  # a language-model preset makes an lm_study file, and "none" unsets a field whose default is not None
  path.write_text('preset = "lm_tiny"\nmax_rows = "none"\n[student]\nepochs = 2\n')
  assert load_toml(path, STUDY_KINDS) == ("lm_study", override(LM_PRESETS["lm_tiny"], ["max_rows=none",
                                                                                        "student.epochs=2"]))


BAD_FILES = [
    # (name, text, line, the key, the problem)
    ("unknown top-level key", 'name = "x"\nalpha = 0.3\ntemprature = 4.0\n', 3, "temprature",
     "unknown key (did you mean 'temperature'?)"),
    ("unknown table", 'name = "x"\n\n[teachr]\nepochs = 3\n', 3, "teachr", "unknown key (did you mean 'teacher'?)"),
    ("unknown nested key", 'name = "x"\n\n[teacher]\nmodel = "mlp1200"\nepoch = 3\n', 5, "teacher.epoch",
     "unknown key (did you mean 'epochs'?)"),
    ("unknown dotted key", 'name = "x"\nteacher.epohcs = 3\n', 2, "teacher.epohcs", "did you mean 'epochs'?"),
    ("wrong type", 'name = "x"\n\n[teacher]\nepochs = "10"\n', 4, "teacher.epochs",
     'expected an integer, got a string ("10")'),
    ("a float for an int", 'name = "x"\n[student]\nbatch_size = 64.0\n', 3, "student.batch_size",
     "expected an integer, got a float (64.0)"),
    ("bool for int", 'name = "x"\n\n[distilled]\njitter = true\n', 4, "distilled.jitter",
     "expected an integer, got a boolean (true)"),
    ("a number for a list", 'name = "x"\nseeds = 3\n', 2, "seeds", "expected an array of integers, got an integer (3)"),
    ("an item of another type", 'name = "x"\nseeds = [\n  0,\n  1,\n  "2",\n]\n', 5, "seeds[2]",
     'expected an integer, got a string ("2")'),
    ("none where None is no value", 'name = "x"\nworkdir = "none"\nnum_classes = "ten"\n', 3, "num_classes",
     'expected an integer or "none", got a string ("ten")'),
    ("a scalar for a table", 'name = "x"\nteacher = "mlp1200"\n', 2, "teacher", "expected a table ([teacher])"),
    ("syntax error", 'name = "x"\n\n[teacher]\nepochs = 10\nlearning_rate = 0.1.2\n', 5, None,
     "invalid TOML (column 20): Expected newline or end of document after a statement"),
    ("a key twice", 'name = "x"\nalpha = 0.1\n\nalpha = 0.2\n', 4, "alpha", "defined twice (first at line 2)"),
    ("missing required field", '# no name\nalpha = 0.3\n', 1, "name", "missing: StudyConfig has no default for it"),
    ("unknown preset", 'preset = "hinton_mnsit"\n', 1, "preset", "unknown preset 'hinton_mnsit' (did you mean"),
    ("unknown kind", 'kind = "lm"\nname = "x"\n', 1, "kind", 'expected one of "study", "lm_study", got a string'),
    ("preset of another kind", 'kind = "study"\npreset = "lm_tiny"\n', 2, "preset",
     "'lm_tiny' is a preset of kind 'lm_study', but the file's kind is 'study'"),
    ("an lm key without kind", 'name = "x"\nseq_len = 32\n', 2, "seq_len",
     'a field of LMStudyConfig: put kind = "lm_study" at the file\'s top'),
    ("unknown method", 'name = "x"\nmethod = "dkdd"\n', 2, "method", "unknown method 'dkdd'"),
    ("unknown hyperparameter", 'preset = "hinton_mnist"\nmethod = "dkd"\n\n[method_hparams]\nbetta = 4\n', 5,
     "method_hparams.betta", "method 'dkd' has no hyperparameter 'betta' (did you mean 'beta'?)"),
    ("hyperparameter of the wrong type", 'preset = "hinton_mnist"\nmethod = "dkd"\n[method_hparams]\nbeta = "4"\n', 4,
     "method_hparams.beta", 'expected a number, got a string ("4")'),
    ("a threshold the config refuses", 'preset = "hinton_mnist"\n[health]\nloss_rise = 2.0\ntop_class_share = 2\n',
     4, "health.top_class_share", "must lie in (0, 1], got 2.0"),
    ("lm study wrong type", 'kind = "lm_study"\nname = "x"\nrecipes = "sft"\n', 3, "recipes",
     'expected an array of strings, got a string ("sft")'),
]


@pytest.mark.parametrize("name,text,line,key,problem", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_a_bad_file_is_refused_with_its_line_and_key(name, text, line, key, problem, capsys, tmp_path):
  path = tmp_path / "bad.toml"
  path.write_text(text)
  code, out, err = _cli(["distill", "--config", str(path), "--workdir", str(tmp_path / "runs")], capsys)
  assert code == 2 and not out
  first = err.splitlines()[0]
  assert first.startswith(f"kdjax: error: {path}:{line}: " + (f"{key}: " if key else "")) and problem in first, err
  assert not (tmp_path / "runs").exists()  # refused before any training


def test_every_problem_is_named_at_once_in_line_order():
  text = ('name = "x"\nseeds = [0, true]\n\n[teacher]\nepochs = "3"\nlearnig_rate = 0.1\n\n[student]\n'
          'jitter = 1.5\n')
  with pytest.raises(StudyFileError) as e:
    loads_toml(text, STUDY_KINDS, path="s.toml")
  assert e.value.problems == [
      "s.toml:2: seeds[1]: expected an integer, got a boolean (true)",
      's.toml:5: teacher.epochs: expected an integer, got a string ("3")',
      "s.toml:6: teacher.learnig_rate: unknown key (did you mean 'learning_rate'?)",
      "s.toml:9: student.jitter: expected an integer, got a float (1.5)"]


def test_a_file_the_config_checks_refuse_fails_before_training(capsys, tmp_path):
  path = tmp_path / "s.toml"
  path.write_text('preset = "hinton_mnist"\nalpha = 1.5\n')
  code, _, err = _cli(["distill", "--config", str(path), "--workdir", str(tmp_path / "runs")], capsys)
  assert code == 2 and err.startswith(f"kdjax: error: {path}:2: alpha (weight of the hard-label term) must") and not (tmp_path / "runs").exists()
  # the line of the key the check names, in a table too; a value the file left to its preset has none
  path.write_text('preset = "hinton_mnist"\n# the student\n[distilled]\nmodel = "mlp800"\nepochs = 0\n')
  code, _, err = _cli(["distill", "--config", str(path), "--workdir", str(tmp_path / "runs")], capsys)
  assert code == 2 and err.startswith(f"kdjax: error: {path}:5: distilled.epochs must be >= 1, got 0")
  path.write_text('preset = "hinton_mnist"\nname = "alpha"\n')
  code, _, err = _cli(["distill", "--config", str(path), "--set", "temperature=-1"], capsys)
  assert code == 2 and err.startswith("kdjax: error: temperature must be")
  # a value --set gives is not the file's, though the file sets the key; a table's header is not its keys
  path.write_text('preset = "hinton_mnist"\n[distilled]\nepochs = 3\njitter = 1\n')
  code, _, err = _cli(["distill", "--config", str(path), "--set", "distilled.epochs=0"], capsys)
  assert code == 2 and err.startswith("kdjax: error: distilled.epochs must be >= 1, got 0")
  code, _, err = _cli(["distill", "--config", str(tmp_path / "missing.toml")], capsys)
  assert code == 2 and err.startswith(f"kdjax: error: {tmp_path / 'missing.toml'}: cannot read the study file")


def test_an_unknown_config_name_still_lists_the_presets(capsys):
  with pytest.raises(SystemExit) as e:
    main(["distill", "--config", "hinton_mnsit"])
  err = capsys.readouterr().err
  assert e.value.code == 2 and "invalid choice: 'hinton_mnsit'" in err
  assert all(repr(name) in err for name in [*PRESETS, *LM_PRESETS]) and "PATH.toml" in err


def test_key_lines_finds_keys_past_strings_comments_and_arrays():
  text = ('# a = 1\nname = "x # y = 2"  # z = 3\nmulti = """\nfake = 1\n"""\nlit = \'\'\'q = 2\'\'\'\n'
          '"quoted.key" = 1\na.b . c = 2\narr = [\n  {x = 1, y = [1,\n  2]},\n  "]",\n]\nend = """a""""\n'
          '[t . "u"]\nk = "\\" = "\n[[aot]]\nv = 1\n[[aot]]\nv = 2\n')
  tomllib.loads(text)  # valid TOML
  lines = key_lines(text)
  assert lines[("name",)] == 2 and lines[("multi",)] == 3 and ("fake",) not in lines and lines[("lit",)] == 6
  assert lines[("quoted.key",)] == 7 and lines[("a",)] == lines[("a", "b", "c")] == 8
  assert lines[("arr", 0, "y", 1)] == 11 and lines[("arr", 1)] == 12 and lines[("end",)] == 14
  assert lines[("t", "u", "k")] == 16 and lines[("aot", 0, "v")] == 18 and lines[("aot", 1, "v")] == 20


def test_the_example_study_files_load():
  # docs/examples/hinton_mnist.toml is `kdjax distill --show-config` (rewrite it with that command if this fails)
  assert load_toml(DOCS / "examples" / "hinton_mnist.toml", STUDY_KINDS) == ("study", HINTON_MNIST)
  assert (DOCS / "examples" / "hinton_mnist.toml").read_text() == dumps_toml(HINTON_MNIST, kind="study")
  kind, cfg = load_toml(DOCS / "examples" / "dkd_mnist.toml", STUDY_KINDS)
  assert kind == "study" and cfg == override(HINTON_MNIST, [  # as docs/study_files.md says
      "name=dkd_mnist", "method=dkd", "seeds=0,1,2,3,4", "distilled.epochs=15", "method.beta=8",
      "method.warmup_epochs=5"])
  validate_study(cfg)
  assert isinstance(cfg, StudyConfig) and isinstance(cfg.teacher, TrainConfig)
  assert not isinstance(cfg, LMStudyConfig)


def test_kdjax_sweep_takes_a_study_file_of_an_image_or_text_study(capsys, tmp_path):
  """``kdjax sweep FILE.toml``: the file's problems and its config's, with their lines, before anything
  runs; a language-model study file is refused (LM recipes are compared by kdjax distill)."""
  path = tmp_path / "s.toml"
  path.write_text('preset = "hinton_mnist"\n[student]\nepochs = 0\n')
  code, _, err = _cli(["sweep", str(path), "--grid", "seed=0,1", "--out", str(tmp_path / "out")], capsys)
  assert code == 2 and err.startswith(f"kdjax: error: {path}:3: student.epochs must be >= 1, got 0")
  path.write_text('preset = "hinton_mnist"\n[student]\nepochs = "1"\n')
  code, _, err = _cli(["sweep", str(path), "--grid", "seed=0,1", "--out", str(tmp_path / "out")], capsys)
  assert code == 2 and f"{path}:3: student.epochs: expected an integer" in err
  path.write_text('preset = "lm_tiny"\n')
  code, _, err = _cli(["sweep", str(path), "--grid", "seed=0,1", "--out", str(tmp_path / "out")], capsys)
  assert code == 2 and "is a lm_study file: kdjax sweep varies image and text studies" in err
  assert not (tmp_path / "out").exists()
  with pytest.raises(SystemExit):
    main(["sweep", "lm_tiny"])
  assert "language-model studies do not sweep" in capsys.readouterr().err
