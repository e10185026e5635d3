"""train.py and generate.py through their real command lines, on tiny made-up data with a tiny
random encoder (--bert none): checkpoint, kill, resume exactly, translate, and every bad input
gets a one-line error or warning instead of a traceback."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXTURES, ROOT, TINY_MODEL, TINY_VOCAB, one_line_error, run, write_tiny_data

def weights_equal(a: Path, b: Path) -> bool:
    a, b = load_file(a), load_file(b)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def wait_for_step(state_path: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "training finished before it could be interrupted"
        try:
            if torch.load(state_path, weights_only=True)["step"] >= step:
                return
        except (FileNotFoundError, RuntimeError, EOFError):
            pass  # not written yet
        time.sleep(0.02)
    raise TimeoutError(f"{state_path} never reached step {step}")


# -----------------------------------------------------------------------------
# the happy path: train, kill, resume, translate


def test_run_folder_has_everything(trained):
    for name in ("config.json", "source_tokenizer.json", "target_tokenizer.json", "model.safetensors",
                 "last.safetensors", "trainer_state.pt", "metrics.jsonl", "metrics.json"):
        assert (trained / name).is_file(), name
    metrics = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    valid = [m for m in metrics if m["split"] == "valid"]
    assert [m["epoch"] for m in valid] == [1, 2, 3]
    assert {"loss", "ppl", "bleu", "chrf", "bleu_signature"} <= set(valid[0])
    train_steps = [m["step"] for m in metrics if m["split"] == "train"]
    assert train_steps and train_steps == list(range(10, valid[-1]["step"] + 1, 10))  # --log-every 10
    assert "bleu" in json.loads((trained / "metrics.json").read_text())["test"]


def test_training_loss_falls(trained):
    losses = [m["loss"] for m in map(json.loads, (trained / "metrics.jsonl").read_text().splitlines())
              if m["split"] == "train"]
    assert len(losses) >= 4
    half = len(losses) // 2
    assert losses[-1] < losses[0] - 0.3 and sum(losses[half:]) / (len(losses) - half) < sum(losses[:half]) / half, \
        losses


def test_results_go_to_stdout_and_progress_to_stderr(trained):
    stdout, stderr = trained.with_suffix(".stdout").read_text(), trained.with_suffix(".stderr").read_text()
    assert stdout.count("valid loss") == 3 and "test: BLEU" in stdout and "done: " in stdout
    assert "valid loss" not in stderr and "test: BLEU" not in stderr
    assert "training pairs" in stderr and "epoch 1" in stderr  # the start-up line and the progress bar


def test_plot_draws_the_curves_of_a_run_folder(tmp_path, trained):
    pytest.importorskip("matplotlib")  # a test extra: installed by pip install -e ".[test]"
    out = tmp_path / "curves.png"
    result = subprocess.run([sys.executable, "-m", "minibert.plot", str(trained), "--out", str(out)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = subprocess.run([sys.executable, "-m", "minibert.plot", str(tmp_path), "--out", str(out)],
                             capture_output=True, text=True, cwd=ROOT)
    assert one_line_error(missing) == f"error: {tmp_path / 'metrics.jsonl'}: no such file " \
                                      f"(is {tmp_path} a train.py run folder?)"


def test_random_encoders_train_at_the_full_rate_and_pretrained_ones_gently():
    from train import parse_args
    pretrained, random_init, scratch = parse_args([]), parse_args(["--no-pretrained"]), parse_args(["--bert", "none"])
    assert (pretrained.freeze_encoder, pretrained.encoder_lr_scale) == (True, 0.05)
    assert (random_init.freeze_encoder, random_init.encoder_lr_scale) == (False, 1.0)
    assert (scratch.freeze_encoder, scratch.encoder_lr_scale) == (False, 1.0)
    assert parse_args(["--no-freeze-encoder", "--encoder-lr-scale", "0.1"]).encoder_lr_scale == 0.1


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, data, trained):
    out = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "train.py"), "--data", str(data), "--out", str(out), "--epochs", "3",
           "--save-every", "4", *TINY_MODEL]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_step(out / "trainer_state.pt", 4, proc)  # the first checkpoint, mid-epoch 1 (~20 steps)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = torch.load(out / "trainer_state.pt", weights_only=True)
    assert state["epoch"] == 0 and state["batch"] > 0, "the kill should land mid-epoch"
    result = run("train.py", "--out", out, "--resume")
    assert "resuming at epoch 1" in result.stderr
    assert result.stdout.startswith("epoch 1 step "), "the first validation after the resume is epoch 1's"
    a, b = load_file(trained / "last.safetensors"), load_file(out / "last.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    metrics = lambda run_dir: [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics(out) == metrics(trained)


def test_ctrl_c_saves_a_resumable_checkpoint(tmp_path, data):
    out = tmp_path / "interrupted"
    # Far more epochs than the test waits for, so the run cannot end before Ctrl-C arrives.
    cmd = [sys.executable, str(ROOT / "train.py"), "--data", str(data), "--out", str(out), "--epochs", "500",
           "--save-every", "2", *TINY_MODEL]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(out / "trainer_state.pt", 4, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr
    assert "--resume" in stderr
    assert torch.load(out / "trainer_state.pt", weights_only=True)["step"] >= 4
    run("train.py", "--out", out, "--resume", "--max-steps", "8")


def test_ctrl_c_resume_matches_uninterrupted_run(tmp_path, data, trained):
    out = tmp_path / "ctrl-c"
    cmd = [sys.executable, str(ROOT / "train.py"), "--data", str(data), "--out", str(out), "--epochs", "3",
           "--save-every", "4", *TINY_MODEL]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_step(out / "trainer_state.pt", 4, proc)
    proc.send_signal(signal.SIGINT)  # lands mid-step or mid-validation: either must resume exactly
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr
    stopped = torch.load(out / "trainer_state.pt", weights_only=True)["step"]
    assert 4 <= stopped < json.loads((trained / "metrics.json").read_text())["steps"], "stop mid-run"
    run("train.py", "--out", out, "--resume")
    assert weights_equal(trained / "last.safetensors", out / "last.safetensors"), \
        f"resumed after Ctrl-C at step {stopped}, the weights differ from the uninterrupted run"


def test_resume_after_sigkill_with_a_frozen_pretrained_encoder(tmp_path, data):
    """The default path: a pre-trained BERT loaded through the converter, frozen, its H cached."""
    bert = tmp_path / "bert"
    shutil.copytree(FIXTURES / "tiny_bert_tanh", bert)
    (bert / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    args = ["--data", data, "--epochs", "1", "--save-every", "3", "--bert", bert, *TINY_MODEL[2:]]
    run("train.py", "--out", tmp_path / "whole", *args)
    steps = json.loads((tmp_path / "whole" / "metrics.json").read_text())["steps"]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--out", str(out), *map(str, args)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_step(out / "trainer_state.pt", 3, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert torch.load(out / "trainer_state.pt", weights_only=True)["step"] < steps, "the kill should land mid-run"
    run("train.py", "--out", out, "--resume")
    assert weights_equal(tmp_path / "whole" / "last.safetensors", out / "last.safetensors")
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["freeze_encoder"] and config["encoder"]["hidden_act"] == "gelu_new"


def test_generate_gives_one_line_per_input_line(trained, tmp_path):
    source = tmp_path / "in.en"
    source.write_text("the dog sees a cat.\n\nthe small cat.\n", encoding="utf-8")
    out = tmp_path / "out.de"
    run("generate.py", "--checkpoint", trained, "--input", source, "--output", out, "--beam", "3", "--nbest", "2")
    lines = out.read_text(encoding="utf-8").split("\n")
    assert len(lines) == 4 and lines[3] == ""  # three lines, newline-terminated
    assert lines[1] == "" and " ||| " in lines[0]
    # The rest in-process (the same main(), without starting Python each time).
    stdin = generate_in_process(["--checkpoint", trained], "a dog.\n\n")
    alone = generate_in_process(["--checkpoint", trained, "a dog."])
    assert alone.strip() and stdin == alone + "\n"  # the sentence's translation, then a blank line
    assert generate_in_process(["--checkpoint", trained], " \n\n") == "\n\n"
    sampled = generate_in_process(["--checkpoint", trained, "--sample", "--top-p", "0.9", "the cat.", "a dog."])
    assert len(sampled.splitlines()) == 2


def generate_in_process(argv: list, stdin: str = "") -> str:
    """What generate.py writes to standard output for argv and the given standard input."""
    import io

    import generate
    out = io.StringIO()
    with mock.patch.object(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode()))), \
            mock.patch.object(sys, "stdout", out):
        generate.main([str(a) for a in argv])
    return out.getvalue()


def test_generate_draws_the_cross_attention(trained, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "attention.png"
    run("generate.py", "--checkpoint", trained, "--attention", png, "the big dog likes the cat.")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_torchrun_two_processes_on_cpu(tmp_path, data):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             str(ROOT / "train.py"), "--data", str(data), "--out", str(out), "--epochs", "1",
                             "--device", "cpu", *TINY_MODEL], capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world 2" in result.stderr
    assert result.stdout.count("test: BLEU") == 1  # only rank 0 logs
    assert result.stderr.count("training pairs") == 1
    assert (out / "model.safetensors").is_file() and (out / "metrics.json").is_file()


# -----------------------------------------------------------------------------
# bad input: one clear line, nothing half-written


def test_mismatched_line_counts(tmp_path, data):
    bad = write_tiny_data(tmp_path / "d")
    (bad / "train.de").write_text("ein hund.\n", encoding="utf-8")
    line = one_line_error(run("train.py", "--data", bad, "--out", tmp_path / "r", *TINY_MODEL, check=False))
    assert "train.en has 240 lines but" in line and "train.de has 1" in line
    assert not (tmp_path / "r").exists(), "a failed run leaves no empty run folder behind"


def test_invalid_utf8_names_file_and_line(tmp_path):
    bad = write_tiny_data(tmp_path / "d")
    lines = (bad / "valid.en").read_bytes().split(b"\n")
    lines[4] = b"the dog \xff\xfe sees."
    (bad / "valid.en").write_bytes(b"\n".join(lines))
    line = one_line_error(run("train.py", "--data", bad, "--out", tmp_path / "r", *TINY_MODEL, check=False))
    assert "valid.en, line 5: invalid UTF-8" in line


def test_empty_file(tmp_path):
    bad = write_tiny_data(tmp_path / "d")
    (bad / "train.de").write_text("", encoding="utf-8")
    line = one_line_error(run("train.py", "--data", bad, "--out", tmp_path / "r", *TINY_MODEL, check=False))
    assert "train.de: file is empty" in line


def test_overlong_sentence_is_truncated_with_a_counted_warning(tmp_path, trained):
    long = "the dog " * 400 + "sees."
    result = run("generate.py", "--checkpoint", trained, "--max-len", "8", long, "the cat.", long)
    assert "warning: 2 input lines are longer than BERT's 512 positions and were truncated" in result.stderr
    assert len(result.stdout.splitlines()) == 3


def test_missing_and_foreign_checkpoints(tmp_path, data):
    line = one_line_error(run("generate.py", "--checkpoint", tmp_path / "nothing", "hi", check=False))
    assert "nothing: no such run folder" in line
    foreign = tmp_path / "gpt2"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"model_type": "gpt2"}')
    (foreign / "model.safetensors").write_bytes(b"")
    line = one_line_error(run("generate.py", "--checkpoint", foreign, "hi", check=False))
    assert "gpt2/config.json: not a minibert run config" in line
    line = one_line_error(run("train.py", "--data", data, "--out", tmp_path / "r", "--bert", foreign, check=False))
    assert "model_type is 'gpt2', not a BERT checkpoint" in line


def test_unwritable_output_folder(tmp_path, data):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    line = one_line_error(run("train.py", "--data", data, "--out", blocker / "run", *TINY_MODEL, check=False))
    assert "a-file/run: cannot write the run folder" in line


def test_resume_without_a_run_is_an_error(tmp_path):
    line = one_line_error(run("train.py", "--out", tmp_path / "empty", "--resume", check=False))
    assert "nothing to resume" in line


def test_weight_average_is_what_validation_saves_and_resume_keeps(tmp_path, data):
    import train
    model = torch.nn.Linear(3, 2)
    average = train.WeightAverage(model, decay=0.5)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    average.update(step=100)  # d = min(0.5, 101 / 110) = 0.5: halfway to the new weights
    torch.testing.assert_close(average.state_dict()["weight"], start + 0.5)
    with average.applied():
        torch.testing.assert_close(model.weight, start + 0.5)
    torch.testing.assert_close(model.weight, start + 1.0)  # the model's own weights are back
    out = tmp_path / "ema"
    train.main(["--data", str(data), "--out", str(out), "--max-steps", "8", "--ema", "0.9", *TINY_MODEL])
    saved = torch.load(out / "trainer_state.pt", weights_only=True)
    best, last = load_file(out / "model.safetensors"), load_file(out / "last.safetensors")
    name = "decoder.layers.0.intermediate.weight"
    torch.testing.assert_close(best[name], saved["average"][name])  # validated and saved: the average
    assert not torch.equal(best[name], last[name])
