"""Bad input and faults: every case gets one clear line naming the file or flag, a non-zero exit,
and nothing already saved is lost. Most cases run in-process (fast); a few go through the real
command line to check the one-line output and the exit code."""

import fcntl
import json
import shutil
import subprocess
import sys

import pytest
import torch

import generate
import train
from conftest import FIXTURES, ROOT, TINY_MODEL, TINY_VOCAB, one_line_error, run, tiny_translator
from minibert.attention import padding_mask
from minibert.checkpoint import LOCK, load_translator, lock_run_folder
from minibert.files import CheckpointError, DataError
from minibert.tokenizer import load_bert_tokenizer, train_source_tokenizer, train_target_tokenizer


def copy_run(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    (out / LOCK).unlink(missing_ok=True)
    return out


def parse_error(parse, argv, capsys) -> str:
    """The last line argparse printed for argv (it exits with status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


# -----------------------------------------------------------------------------
# every numeric flag is checked when the command line is parsed


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
    (["--lr", "-1"], "argument --lr: must be greater than 0, got -1"),
    (["--lr", "nan"], "argument --lr: must be finite, got nan"),
    (["--accum", "0"], "argument --accum: must be at least 1, got 0"),
    (["--dropout", "1"], "argument --dropout: must be in [0, 1), got 1"),
    (["--label-smoothing", "-0.1"], "argument --label-smoothing: must be in [0, 1), got -0.1"),
    (["--batch-tokens", "0"], "argument --batch-tokens: must be at least 1, got 0"),
    (["--dec-width", "30", "--dec-heads", "4"], "argument --dec-heads: 4 does not divide --dec-width 30"),
    (["--clip", "0"], "argument --clip: must be greater than 0, got 0"),
    (["--max-steps", "-5"], "argument --max-steps: must be at least 0, got -5"),
    (["--max-minutes", "inf"], "argument --max-minutes: must be finite, got inf"),
    (["--beam", "0"], "argument --beam: must be at least 1, got 0"),
    (["--warmup", "x"], "argument --warmup: expected an integer, got 'x'"),
    (["--src", "../en"], "argument --src: must be a file suffix such as en or de, got ../en"),
    (["--adapter", "big"], "argument --adapter: invalid choice: 'big'"),
    (["--resume", "--overwrite"], "--resume continues the run in --out and --overwrite replaces it"),
])
def test_train_flags_are_checked_at_parse_time(argv, message, capsys):
    assert message in parse_error(train.parse_args, argv, capsys)


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "-1"], "argument --batch-size: must be at least 1, got -1"),
    (["--max-len", "1"], "argument --max-len: must be at least 2, got 1"),
    (["--sample", "--temperature", "-1"], "argument --temperature: must be greater than 0, got -1"),
    (["--sample", "--temperature", "0"], "argument --temperature: must be greater than 0, got 0"),
    (["--sample", "--top-p", "0"], "argument --top-p: must be in (0, 1], got 0"),
    (["--sample", "--top-p", "1.5"], "argument --top-p: must be in (0, 1], got 1.5"),
    (["--sample", "--top-k", "-2"], "argument --top-k: must be at least 0, got -2"),
    (["--beam", "2", "--nbest", "3"], "argument --nbest: 3 is more than --beam 2"),
    (["--top-p", "0.9"], "--temperature, --top-k and --top-p apply only with --sample"),
    (["--length-penalty", "0.6"], "--length-penalty applies only with --beam > 1"),
    (["--beam", "4", "--length-penalty", "-1"], "argument --length-penalty: must be at least 0, got -1"),
    (["--sample", "--beam", "2"], "--sample and --beam > 1 exclude each other"),
])
def test_generate_flags_are_checked_at_parse_time(argv, message, capsys):
    assert message in parse_error(generate.parse_args, ["--checkpoint", "x", *argv], capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU, so --device cuda is valid")
def test_device_cuda_without_a_gpu_is_a_flag_error(capsys):
    message = "argument --device: cuda, but torch sees no CUDA GPU"
    assert message in parse_error(train.parse_args, ["--device", "cuda"], capsys)
    assert message in parse_error(generate.parse_args, ["--checkpoint", "x", "--device", "cuda"], capsys)


def test_bad_flag_through_the_command_line_is_one_line_and_exit_2(trained):
    result = run("generate.py", "--checkpoint", trained, "--batch-size", "-1", "a dog.", check=False)
    assert result.returncode == 2 and not result.stdout
    assert result.stderr.strip().splitlines()[-1].endswith("argument --batch-size: must be at least 1, got -1")


# -----------------------------------------------------------------------------
# the run folder: never silently replaced, one trainer at a time, no stale files


def test_new_run_refuses_a_folder_that_holds_a_run(trained, tmp_path, data):
    out = copy_run(trained, tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    line = one_line_error(run("train.py", "--data", data, "--out", out, *TINY_MODEL, check=False))
    assert f"{out}: already holds files (config.json" in line and "--resume" in line and "--overwrite" in line
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != LOCK} == before


def test_overwrite_replaces_the_old_run(trained, tmp_path, data):
    out = copy_run(trained, tmp_path)
    (out / "metrics.json").write_text('{"old": true}')
    run("train.py", "--data", data, "--out", out, "--overwrite", "--max-steps", "3", "--seed", "4", *TINY_MODEL[:-4],
        "--dec-max-len", "24")
    assert json.loads((out / "config.json").read_text())["train"]["seed"] == 4
    assert json.loads((out / "metrics.json").read_text())["steps"] == 3


def test_a_second_trainer_on_the_same_folder_is_refused(trained, tmp_path):
    out = copy_run(trained, tmp_path)
    holder = lock_run_folder(out)
    with pytest.raises(CheckpointError, match=f"{out}: another train.py \\(pid \\d+\\) is training into this folder"):
        lock_run_folder(out)
    line = one_line_error(run("train.py", "--out", out, "--resume", check=False))
    assert "another train.py" in line
    holder.close()  # released: the folder is free again
    lock_run_folder(out).close()


def test_stale_temporary_files_are_removed_under_the_lock(tmp_path):
    (tmp_path / ".model.safetensors.x1y2.tmp").write_bytes(b"half a file")
    (tmp_path / "notes.tmp").write_text("a user's file: not ours, so it stays")
    lock = lock_run_folder(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK, "notes.tmp"]
    lock.close()


def test_lock_is_released_when_the_process_dies(trained, tmp_path):
    out = copy_run(trained, tmp_path)
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from minibert.checkpoint import lock_run_folder; " \
           f"lock = lock_run_folder(__import__('pathlib').Path({str(out)!r})); import os; os._exit(9)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    with open(out / LOCK) as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # would raise if a lock outlived its process


# -----------------------------------------------------------------------------
# --resume: the saved limits hold, a finished run is a no-op, missing files are found at start


def test_resume_keeps_the_saved_limits_and_never_trains_past_them(tmp_path, data, capsys):
    out = tmp_path / "limited"
    train.main(["--data", str(data), "--out", str(out), "--max-steps", "6", *TINY_MODEL])  # in-process: faster
    state = lambda: torch.load(out / "trainer_state.pt", weights_only=True)
    assert state()["step"] == 6
    capsys.readouterr()
    train.main(["--out", str(out), "--resume"])
    again = capsys.readouterr().err
    assert "finished at step 6" in again and "nothing to do" in again
    assert state()["step"] == 6 and "training pairs" not in again  # stopped before reading any data
    train.main(["--out", str(out), "--resume", "--max-steps", "9"])
    assert state()["step"] == 9
    # A kill during the final validation: the step is done, its validation and the test are not.
    saved = state()
    saved["validated"], saved["metrics"] = 0, [m for m in saved["metrics"] if m["step"] < 9]
    torch.save(saved, out / "trainer_state.pt")
    (out / "metrics.json").unlink()
    train.main(["--out", str(out), "--resume"])
    assert state()["step"] == 9 and state()["validated"] == 9
    assert json.loads((out / "metrics.json").read_text())["steps"] == 9


def test_resume_refuses_a_changed_setting(trained, capsys):
    line = parse_error(train.parse_args, ["--out", str(trained), "--resume", "--lr", "0.1"], capsys)
    assert "argument --lr: cannot change when resuming (the run has 0.0015)" in line
    # Repeating the saved value, or changing a limit, is fine.
    assert train.parse_args(["--out", str(trained), "--resume", "--lr", "0.0015", "--max-steps", "99"]).max_steps == 99


def test_resume_without_the_best_weights_fails_at_start(trained, tmp_path):
    out = copy_run(trained, tmp_path)
    (out / "model.safetensors").unlink()
    before = (out / "trainer_state.pt").read_bytes()
    with pytest.raises(CheckpointError, match="model.safetensors: missing, but this run has validated"):
        train.main(["--out", str(out), "--resume", "--epochs", "5"])
    assert (out / "trainer_state.pt").read_bytes() == before


# -----------------------------------------------------------------------------
# broken, empty and foreign files name themselves


CORRUPTIONS = {
    "empty": lambda path: path.write_bytes(b""),
    "truncated": lambda path: path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2]),
    "missing": lambda path: path.unlink(),
    "foreign": lambda path: path.write_text('{"model_type": "gpt2", "n_layer": 2}'),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
@pytest.mark.parametrize("name", ["config.json", "source_tokenizer.json", "target_tokenizer.json",
                                  "model.safetensors"])
def test_broken_run_folder_files_are_named(trained, tmp_path, name, corruption):
    out = copy_run(trained, tmp_path)
    CORRUPTIONS[corruption](out / name)
    with pytest.raises(CheckpointError) as error:
        load_translator(out)
    message = str(error.value)
    assert message.startswith(str(out)) and (name in message or corruption == "missing" and name == "config.json")
    assert "\n" not in message


@pytest.mark.parametrize("corruption", ["empty", "truncated", "foreign"])
def test_broken_trainer_state_is_named(trained, tmp_path, corruption):
    out = copy_run(trained, tmp_path)
    CORRUPTIONS[corruption](out / "trainer_state.pt")
    with pytest.raises(CheckpointError, match=f"{out / 'trainer_state.pt'}: not a"):
        train.read_trainer_state(out)


def test_missing_target_tokenizer_through_generate_is_one_line(trained, tmp_path):
    out = copy_run(trained, tmp_path)
    (out / "target_tokenizer.json").unlink()
    line = one_line_error(run("generate.py", "--checkpoint", out, "a dog.", check=False))
    assert line == f"error: {out / 'target_tokenizer.json'}: no such file"


@pytest.mark.parametrize("lines, word", [(98, "entries but the model's vocab_size is 99"),
                                         (100, "entries but the model's vocab_size is 99")])
def test_vocabulary_must_match_the_checkpoint(tmp_path, lines, word):
    bert = tmp_path / "bert"
    shutil.copytree(FIXTURES / "tiny_bert_tanh", bert)
    vocab = (TINY_VOCAB + ["extra"])[:lines]
    (bert / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match=f"vocab.txt: the vocabulary has {lines} {word}"):
        load_bert_tokenizer(bert, vocab_size=99)
    with pytest.raises(CheckpointError, match=f"vocab.txt: the vocabulary has {lines} {word}"):
        train.main(["--bert", str(bert), "--out", str(tmp_path / "r"), "--dec-width", "24", "--dec-heads", "3"])
    assert not (tmp_path / "r").exists()


# -----------------------------------------------------------------------------
# smaller ones: BOM, long targets, deterministic vocabularies, the frozen-encoder cache


def test_long_targets_are_counted_in_a_warning(capsys):
    cfg = train.TrainConfig(dec_max_len=6)
    src_tok = train_source_tokenizer(["a b c d e f g"] * 4, 30)
    tgt_tok = train_target_tokenizer(["a b c d e f g"] * 4, 30)
    split = train.tokenize_split(cfg, (["a b", "a b c d e f g"], ["a b", "a b c d e f g"]), ("x.en", "x.de"),
                                 src_tok, tgt_tok)
    assert "warning: 1 sentences of x.de are longer than the decoder's 6 positions" in capsys.readouterr().err
    assert [len(t) for t in split.tgt_ids] == [4, 6]


def test_utf8_bom_never_becomes_a_token(tmp_path):
    (tmp_path / "train.de").write_bytes(b"\xef\xbb\xbfDer Hund.\nDie Katze.\n")
    (tmp_path / "train.en").write_text("The dog.\nThe cat.\n", encoding="utf-8")
    src, tgt = train.read_parallel(tmp_path / "train.en", tmp_path / "train.de")
    assert tgt == ["Der Hund.", "Die Katze."]


def test_bert_none_vocabulary_is_the_same_in_every_process(data):
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from minibert.tokenizer import train_source_tokenizer; "
            f"from minibert.files import read_lines; import json; "
            f"t = train_source_tokenizer(read_lines({str(data / 'train.en')!r}), 80); "
            "print(json.dumps(t.get_vocab(), sort_keys=True))")
    vocabs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout for _ in range(2)}
    assert len(vocabs) == 1 and len(json.loads(vocabs.pop())) > 20


@pytest.mark.parametrize("unfreeze_top", [0, 1])
def test_cached_encoder_output_equals_the_live_encoder(unfreeze_top):
    """The default path (frozen BERT): the frozen layers' output computed once per sentence and
    padded again per batch gives the same H, and the same loss, as running BERT on the batch;
    also when BERT's top layer still trains on top of the cache."""
    model = tiny_translator()
    model.freeze_encoder(unfrozen_top=unfreeze_top)
    assert model.cached_layers == 2 - unfreeze_top
    src_ids = [[2, 5, 9, 3], [2, 7, 3], [2, 4, 4, 8, 11, 6, 3], [2, 3]]
    tgt_ids = [[1, 5, 6, 2], [1, 7, 2], [1, 9, 9, 9, 2], [1, 2]]
    split = train.Split(["x"] * 4, ["y"] * 4, src_ids, tgt_ids)
    train.encode_sources(model.encoder, split, torch.device("cpu"), max_tokens=12, stop=model.cached_layers)
    assert [h.shape[0] for h in split.encoded] == [4, 3, 7, 2]
    src, tgt, cached = train.collate(model, split, [2, 0, 3], torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        live = model.encoder(src, padding_mask(src, 0))
        torch.testing.assert_close(model.encoder.run_layers(cached, padding_mask(src, 0), model.cached_layers), live,
                                   atol=1e-6, rtol=1e-6)
        loss_cached = model(src, tgt[:, :-1], tgt[:, 1:], cached=cached)
        loss_live = model(src, tgt[:, :-1], tgt[:, 1:])
    torch.testing.assert_close(loss_cached, loss_live, atol=1e-6, rtol=1e-6)


def test_data_errors_are_not_tracebacks(tmp_path):
    with pytest.raises(DataError, match="no such data folder"):
        train.main(["--data", str(tmp_path / "none"), "--out", str(tmp_path / "r"), *TINY_MODEL])
    assert not (tmp_path / "r").exists()
