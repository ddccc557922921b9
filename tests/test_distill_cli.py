"""python -m distill: default message, --help, teach end to end on a tiny model, and bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest
from _distill_tiny import SENTENCES, tiny_bert_dir

from distill.cli import main


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_bert_dir(tmp_path_factory.mktemp("tiny"))


def write_scored(path, shift: int, classes: int):
    """TAB pairs ``SENTENCES[i], SENTENCES[i + shift]`` with label ``i % classes``."""
    pairs = zip(SENTENCES, SENTENCES[shift:], strict=False)
    path.write_text("".join(f"{a}\t{b}\t{i % classes}\n" for i, (a, b) in enumerate(pairs)))
    return path


def teach_args(objective, model, data, out, max_steps, *extra):
    """A short ``teach`` run on the tiny model: batch 4, 16 tokens, no progress bar."""
    return ["teach", "--objective", objective, "--model", str(model), "--train", str(data),
            "--out", str(out), "--batch-size", "4", "--max-steps", str(max_steps), "--no-progress",
            "--max-length", "16", *extra]


def test_no_arguments_runs_the_main_job(monkeypatch):
    import distill.main_job

    calls = []
    monkeypatch.setattr(distill.main_job, "run", lambda cfg: calls.append(cfg))
    assert main([]) == 0
    assert len(calls) == 1 and calls[0] == distill.main_job.MainConfig()


def test_module_help_runs():
    out = subprocess.run(
        [sys.executable, "-m", "distill", "teach", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "--objective" in out.stdout and "simcse-unsup" in out.stdout


def test_teach_cosent_end_to_end(tiny_dir, tmp_path, capsys):
    data = write_scored(tmp_path / "pairs.tsv", 1, 5)
    dev = write_scored(tmp_path / "dev.tsv", 2, 3)
    out = tmp_path / "out"
    args = teach_args("cosent", tiny_dir, data, out, 2, "--eval-every", "1", "--dev", str(dev),
                      "--group-by-length", "--test", str(dev))
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "best dev" in text and "Spearman" in text
    assert (out / "best" / "modules.json").is_file()
    assert main(args) == 2  # exists without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_teach_bad_input(tiny_dir, tmp_path, capsys):
    sents = tmp_path / "s.txt"
    sents.write_text("\n".join(SENTENCES))
    base = [
        "--model",
        str(tiny_dir),
        "--train",
        str(sents),
        "--out",
        str(tmp_path / "o"),
        "--dev",
        "none",
    ]
    assert main(["teach", "--objective", "nope", *base]) == 2
    assert "valid objectives: sbert-softmax" in capsys.readouterr().err
    assert main(["teach", "--objective", "simcse-unsup", *base, "--batch-size", "1"]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert main(["teach", "--objective", "simcse-unsup", *base[:1], str(tmp_path), *base[2:]]) == 2
    assert "not a supported encoder" in capsys.readouterr().err
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\t1\nbroken line\n")
    assert main(["teach", "--objective", "cosent", *base[:2], "--train", str(bad), *base[4:]]) == 2
    assert "bad.tsv:2:" in capsys.readouterr().err


def test_textcnn_and_evaluate_commands(tmp_path, capsys):
    corpus = tmp_path / "zh.tsv"
    corpus.write_text("你好\t您好\t1\n天气不错\t下雨了\t0\n")
    assert (
        main(
            [
                "textcnn",
                "--char-vocab",
                str(corpus),
                "--out",
                str(tmp_path / "cnn"),
                "--embed-dim",
                "8",
                "--num-filters",
                "4",
                "--out-dim",
                "8",
            ]
        )
        == 0
    )
    assert main(["evaluate", "--model", str(tmp_path / "cnn"), "--data", str(corpus)]) == 0
    assert "Spearman" in capsys.readouterr().out


@pytest.mark.parametrize(
    "objective", ["sbert-softmax", "sbert-triplet", "simcse-sup", "sbert-regression"]
)
def test_teach_every_sentence_objective_runs_a_step(tiny_dir, tmp_path, objective):
    nli = tmp_path / "nli.csv"
    nli.write_text(
        "sent0,sent1,hard_neg\n"
        + "".join(f'"{a}",{b},{c}\n' for a, b, c in zip(SENTENCES, SENTENCES[1:], SENTENCES[2:], strict=False))
    )
    scored = write_scored(tmp_path / "scored.tsv", 1, 5)
    data = scored if objective == "sbert-regression" else nli
    out = tmp_path / "out"
    args = teach_args(objective, tiny_dir, data, out, 1, "--dev", "none")
    assert main(args) == 0
    assert (out / "best" / "model.safetensors").is_file() and (
        out / "last" / "objective.safetensors"
    ).is_file()


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if a command loads a model or the teacher, or starts the main job."""
    import distill.main_job
    import distill.model
    import distill.shrink

    def fail(*_a, **_k):
        pytest.fail("a model was loaded before the arguments were checked")

    monkeypatch.setattr(distill.model.SentenceEncoder, "from_pretrained", fail)
    monkeypatch.setattr(distill.model, "load_encoder", fail)
    monkeypatch.setattr(distill.shrink, "teacher_bundle", fail)
    monkeypatch.setattr(distill.main_job, "default_teacher", fail)


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--epochs", "0", "epochs must be an integer >= 1, got 0"),
        ("--batch-size", "0", "batch_size must be an integer >= 1, got 0"),
        ("--max-steps", "0", "max_steps must be an integer >= 1, got 0"),
        ("--lr", "0", "lr must be a finite number > 0.0, got 0.0"),
        ("--lr", "nan", "lr must be a finite number > 0.0, got nan"),
        ("--eval-every", "-1", "eval_every must be an integer >= 0, got -1"),
        ("--seed", "-1", "seed must be an integer >= 0, got -1"),
        ("--layers", "0", "layers must be an integer >= 1, got 0"),
        ("--hidden-size", "0", "hidden_size must be an integer >= 1, got 0"),
        ("--max-sentences", "0", "max_sentences must be an integer >= 1, got 0"),
        ("--max-length", "1", "max_length must be an integer >= 2, got 1"),
    ],
)
def test_shrink_checks_every_argument_before_touching_the_disk(tiny_dir, tmp_path, capsys, no_loading, flag,
                                                               value, message):
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ["shrink", "--teacher", str(tiny_dir), "--out", str(out), "--cache-dir", str(cache), flag, value]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not out.exists() and not cache.exists()


def test_shrink_refuses_an_output_that_holds_its_teacher(tiny_dir, tmp_path, capsys, no_loading):
    assert main(["shrink", "--teacher", str(tiny_dir), "--out", str(tiny_dir.parent), "--overwrite"]) == 2
    assert "would delete the input" in capsys.readouterr().err
    assert (tiny_dir / "config.json").is_file()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--epochs", "0"], "epochs must be an integer >= 1, got 0"),
        (["--grad-accum", "0"], "grad_accum must be an integer >= 1, got 0"),
        (["--warmup-ratio", "1.5"], "warmup_ratio must be a finite number in 0.0..1.0, got 1.5"),
        (["--max-grad-norm", "inf"], "max_grad_norm must be a finite number > 0.0, got inf"),
        (["--tau", "0"], "--tau must be a finite number > 0.0, got 0.0"),
        (["--num-labels", "1"], "--num-labels must be an integer >= 2, got 1"),
        (["--max-examples", "0"], "--max-examples must be an integer >= 1, got 0"),
    ],
)
def test_teach_checks_its_numbers_before_loading(tiny_dir, tmp_path, capsys, no_loading, extra, message):
    sents = tmp_path / "s.txt"
    sents.write_text("\n".join(SENTENCES))
    out = tmp_path / "o"
    argv = ["teach", "--objective", "simcse-unsup", "--model", str(tiny_dir), "--train", str(sents),
            "--out", str(out), "--dev", "none", *extra]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not out.exists()


def test_a_refused_training_run_leaves_no_output_directory(tiny_dir, tmp_path, capsys):
    """Refused after the model loaded (too few examples for one batch): the rerun is not blocked."""
    sents = tmp_path / "s.txt"
    sents.write_text("\n".join(SENTENCES))
    out = tmp_path / "o"
    args = teach_args("simcse-unsup", tiny_dir, sents, out, 1, "--dev", "none")
    assert main([*args, "--batch-size", "1000"]) == 2
    assert "do not fill one step" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["textcnn", "--tokenizer", "T", "--out", "O", "--dropout", "1.5"], "--dropout must be a finite number in 0.0..0.99"),
        (["textcnn", "--tokenizer", "T", "--out", "O", "--kernel-sizes", "1,x"], "--kernel-sizes must be comma-separated"),
        (["textcnn", "--tokenizer", "T", "--out", "O", "--num-filters", "0"], "--num-filters must be an integer >= 1, got 0"),
        (["whiten", "--model", "T", "--corpus", "C", "--out", "O", "--k", "0"], "--k must be an integer >= 1, got 0"),
        (["evaluate", "--model", "T", "--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
        (["main", "--rounds", "0"], "rounds must be an integer >= 1, got 0"),
        (["main", "--tinybert-steps", "0"], "tinybert_steps must be an integer >= 1, got 0"),
    ],
)
def test_other_commands_check_their_numbers_first(tmp_path, capsys, no_loading, argv, message):
    argv = [str(tmp_path / a) if a in ("T", "O", "C") else a for a in argv]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(f"error: {message}")
    assert not (tmp_path / "O").exists()
