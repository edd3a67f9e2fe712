"""Export contracts: the reference client snippet (README) runs on an export without borealis, token for token.

A tiny model is "trained" (LoRA and adapter given random weights) and saved as a Lightning
checkpoint the way `module.py` does it (trainable weights + hyper_parameters), then exported:
* `hf` merged and `--keep-adapter`: the client snippet, run in a subprocess where `import
  borealis` fails, gives the same greedy ids as the in-repo model `borealis predict` uses;
* `voxtral`: stock `VoxtralForConditionalGeneration` gives the same logits (< 1e-4) and the same
  greedy ids, and what Voxtral cannot express is refused with the reason;
* the model card (`README.md` of every export): its `pip install` line pins the versions installed
  here, and its snippet runs as printed where only those packages and their requirements can be
  imported, giving the in-repo model's text; `--wer` puts a `borealis validate` report's table in it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from borealis.export import export, load_checkpoint, voxtral_problems
from borealis.modeling import BorealisForConditionalGeneration, LoraSettings
from borealis.commands import export_main
from borealis.testing import build_tokenizer, run_cli, tiny_qwen3_config, tiny_whisper_config

SR = 16000
PROMPT = "What is this audio about? <|start_of_audio|><|end_of_audio|>"
SYSTEM = "You are a helpful voice assistant."
ASR_PROMPT = "Transcribe the audio. <|start_of_audio|><|end_of_audio|>"  # the model card snippet's
MAX_NEW = 12
LORA = LoraSettings(r=4, alpha=8, dropout=0.0)  # as LightningCLI builds it from the YAML


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """(whisper_dir, qwen3_dir) shaped like the flagship where it matters for export."""
    from transformers import Qwen3ForCausalLM, WhisperModel

    root = tmp_path_factory.mktemp("export_parts")
    torch.manual_seed(0)
    whisper = tiny_whisper_config()
    whisper.encoder_ffn_dim = 4 * whisper.d_model  # 4 x d_model as in every Whisper size (5120 = 4 x 1280)
    WhisperModel(whisper).save_pretrained(root / "whisper")
    tok = build_tokenizer()
    # 13 spare embedding rows, as Qwen3's 151,936 rows for 151,669 tokens: the audio tokens take
    # spare (saved) rows, so rebuilding the model from its parts is deterministic
    Qwen3ForCausalLM(tiny_qwen3_config(len(tok) + 13)).save_pretrained(root / "qwen3")
    tok.save_pretrained(root / "qwen3")
    return root / "whisper", root / "qwen3"


def _train(tmp_path, parts, lora=LORA, **module_kwargs):
    """A Lightning-style checkpoint of a 'trained' model; returns (ckpt path, the trained model)."""
    from borealis.module import BorealisLightningModule

    enc, llm = parts
    module = BorealisLightningModule(str(enc), str(llm), lora=lora, **module_kwargs)
    module.configure_model()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if p.requires_grad:  # "training": LoRA B leaves 0; the adapter moves enough that the audio matters
                p.add_(torch.randn(p.shape, generator=g) * (0.5 if name.startswith("adapter.") else 0.1))
    import lightning

    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                  "pytorch-lightning_version": lightning.__version__}  # as Lightning writes it
    module.on_save_checkpoint(checkpoint)  # keeps the trainable weights only, as every real checkpoint
    path = tmp_path / "last.ckpt"
    torch.save(checkpoint, path)

    # the model `borealis predict --ckpt_path` runs: a fresh module, then Lightning's checkpoint loading
    checkpoint = load_checkpoint(path)  # torch.load(weights_only=True), as borealis' CheckpointIO
    predict = BorealisLightningModule(**checkpoint["hyper_parameters"])
    predict.configure_model()
    predict.on_load_checkpoint(checkpoint)
    predict.load_state_dict(checkpoint["state_dict"], strict=predict.strict_loading)
    assert all(torch.equal(p, q) for p, q in zip(module.model.parameters(), predict.model.parameters()))
    return path, predict.model.eval()


def _clips():
    g = torch.Generator().manual_seed(3)
    # 0.7 s and 1.6 s inside the tiny 2 s window (9 and 20 audio slots), 2.5 s cut to the window
    return [torch.randn(int(s * SR), generator=g) * 0.1 for s in (0.7, 1.6, 2.5)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, parts):
    """The default run: trimmed audio tokens, LoRA + adapter trained."""
    return _train(tmp_path_factory.mktemp("run"), parts)


@pytest.fixture(scope="module")
def hf_exports(tmp_path_factory, trained, parts):
    """(merged_dir, kept_dir): merged through the CLI with stacked training YAMLs; kept sharded, from hparams."""
    root = tmp_path_factory.mktemp("hf")
    ckpt, _ = trained
    enc, llm = parts
    (root / "base.yaml").write_text(textwrap.dedent(f"""\
        model:
          encoder: {enc}
          llm: {llm}
          lora: {{r: 4, alpha: 16}}
        data: {{}}
        """))
    (root / "ablation.yaml").write_text("model:\n  lora: {alpha: 8, dropout: 0.0}\n")  # merged into base's lora
    _tiny_wer(root / "wer.json")
    assert export_main(["--ckpt", str(ckpt), "--config", str(root / "base.yaml"), "--config",
                        str(root / "ablation.yaml"), "--out", str(root / "merged"),
                        "--wer", str(root / "wer.json")]) == 0
    export(ckpt, root / "kept", keep_adapter=True, max_shard_size="100KB")
    return root / "merged", root / "kept"


def _tiny_wer(path: Path) -> dict:
    """A `borealis validate` report (metrics.write_report) of two benchmarks, with the Whisper row."""
    from borealis.metrics import write_report

    ours = {"golos_crowd": {"wer": 0.1234, "errors": 5, "words": 40, "samples": 4},
            "librispeech_clean": {"wer": 0.05, "errors": 2, "words": 40, "samples": 3}}
    whisper = {"model": "openai/whisper-large-v3", "avg": 0.2,
               "benchmarks": {"golos_crowd": {"wer": 0.25}, "librispeech_clean": {"wer": 0.15}}}
    return write_report(path, "last.ckpt", ours, baselines={"whisper": whisper})


# The client snippet (README "Export and inference"), in a process where borealis cannot be imported.
_CLIENT = """
import json, sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
sys.path[:] = [p for p in sys.path if "__editable__" not in p]
try:
    import borealis
    hidden = None
except ImportError as err:
    hidden = str(err)
import torch
from transformers import AutoModel

merged, kept, clips_path, max_new = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
clips = torch.load(clips_path)
prompt = "What is this audio about? <|start_of_audio|><|end_of_audio|>"
result = {"borealis_import_error": hidden}

def snippet(path):
    model = AutoModel.from_pretrained(path, trust_remote_code=True, device="cpu")
    ids, texts = [], []
    for audio in clips:
        output = model.generate(audio=audio, user_prompt=prompt,
                                system_prompt="You are a helpful voice assistant.", max_new_tokens=max_new)
        ids.append(output[0].tolist())
        texts.append(model.decode(output[0]))
    batched = model.generate(audio=clips, user_prompt=prompt, system_prompt="You are a helpful voice assistant.",
                             max_new_tokens=max_new)
    return {"ids": ids, "texts": texts, "batched": batched.tolist()}

sys.modules["peft"] = None  # peft missing: a merged export must not need it, a kept adapter must say so
result["merged"] = snippet(merged)
try:
    AutoModel.from_pretrained(kept, trust_remote_code=True)
    result["no_peft_error"] = None
except ImportError as err:
    result["no_peft_error"] = str(err)
del sys.modules["peft"]
result["kept"] = snippet(kept)
result["borealis_modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "borealis")
print(json.dumps(result))
"""


def test_client_snippet_without_borealis_matches_in_repo_generate(hf_exports, trained, tmp_path):
    merged, kept = hf_exports
    _, model = trained
    clips = _clips()
    torch.save(clips, tmp_path / "clips.pt")
    hide = tmp_path / "hide" / "borealis"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ImportError('borealis is hidden from this process')\n")
    env = {**os.environ, "PYTHONPATH": str(hide.parent), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", _CLIENT, str(merged), str(kept), str(tmp_path / "clips.pt"),
                           str(MAX_NEW)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["borealis_import_error"] == "borealis is hidden from this process"
    assert got["borealis_modules"] == []

    want = [model.generate(audio=c, user_prompt=PROMPT, system_prompt=SYSTEM, max_new_tokens=MAX_NEW)[0].tolist()
            for c in clips]
    want_batched = model.generate(audio=clips, user_prompt=PROMPT, system_prompt=SYSTEM,
                                  max_new_tokens=MAX_NEW).tolist()
    assert len({tuple(w) for w in want}) == len(clips), "outputs should depend on the audio"
    assert all(len(w) >= 4 for w in want)
    for kind in ("merged", "kept"):
        assert got[kind]["ids"] == want, kind
        assert got[kind]["texts"] == [model.decode(w) for w in want], kind
        assert got[kind]["batched"] == want_batched, kind
    assert "needs peft" in got["no_peft_error"] and "without --keep-adapter" in got["no_peft_error"]


def test_export_layout(hf_exports):
    from transformers import WhisperFeatureExtractor

    merged, kept = hf_exports
    config = json.loads((merged / "config.json").read_text())
    assert config["model_type"] == "borealis"
    assert config["auto_map"] == {"AutoConfig": "configuration_borealis.BorealisConfig",
                                  "AutoModel": "modeling_borealis.BorealisForConditionalGeneration"}
    assert config["lora"] is None and config["lora_adapter"] is None
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "model.safetensors"):
        assert (merged / name).is_file(), name
    extractor = WhisperFeatureExtractor.from_pretrained(merged)
    assert (extractor.feature_size, extractor.sampling_rate, extractor.nb_max_frames) == (80, SR, 200)
    with safe_open(merged / "model.safetensors", "pt") as f:
        assert not any("lora_" in k for k in f.keys()) and "adapter.w_in.weight" in f.keys()
    BorealisForConditionalGeneration.from_pretrained(merged)  # the training package reads it too (strict)

    # the remote code is the package's (test_exported_code_is_the_packages_code_byte_for_byte), whose
    # imports tests/test_hf_remote.py checks: torch, transformers, the standard library, never borealis
    kept_config = json.loads((kept / "config.json").read_text())
    assert kept_config["lora_adapter"] == "lora" and kept_config["lora"]["r"] == 4
    assert json.loads((kept / "lora" / "adapter_config.json").read_text())["r"] == 4
    shards = sorted(p.name for p in kept.glob("model-*.safetensors"))
    assert len(shards) > 1 and (kept / "model.safetensors.index.json").is_file()
    with safe_open(kept / "lora" / "adapter_model.safetensors", "pt") as f:  # one file: peft reads no shards
        assert all(k.startswith("base_model.model.model.layers.") and ".lora_" in k for k in f.keys())


def test_exported_code_is_the_packages_code_byte_for_byte(hf_exports):
    """Export copies `borealis/hf_remote/` as it is: the model a client loads is the one borealis runs."""
    import borealis.hf_remote

    package = Path(borealis.hf_remote.__file__).parent
    source = sorted(p.name for p in package.glob("*_borealis.py"))
    assert {"configuration_borealis.py", "modeling_borealis.py"} <= set(source)
    for export_dir in hf_exports:
        assert sorted(p.name for p in export_dir.glob("*.py")) == source
        for name in source:
            assert (export_dir / name).read_bytes() == (package / name).read_bytes(), name


def test_deep_adapter_full_fine_tune_and_bf16_exports(parts, tmp_path):
    # the demo's setting (no LoRA, encoder trained) with the deep adapter: every weight comes from the checkpoint
    from borealis.hf_remote.modeling_borealis import BorealisForConditionalGeneration as Remote

    ckpt, model = _train(tmp_path, parts, lora=None, freeze_encoder=False, adapter="deep")
    clip = _clips()[1]
    want = model.generate(audio=clip, user_prompt=PROMPT, system_prompt=SYSTEM, max_new_tokens=MAX_NEW)
    with pytest.raises(ValueError, match="--keep-adapter needs a model trained with LoRA"):
        export(ckpt, tmp_path / "kept", keep_adapter=True)
    remote = Remote.from_pretrained(export(ckpt, tmp_path / "fp32"))  # the copied file's class, in-process
    assert remote.generate(audio=clip, user_prompt=PROMPT, system_prompt=SYSTEM,
                           max_new_tokens=MAX_NEW).tolist() == want.tolist()

    half = Remote.from_pretrained(export(ckpt, tmp_path / "bf16", dtype="bfloat16"))
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert half.features.mel_filters.dtype == torch.float32  # the log-mel stays float32
    assert half.generate(audio=clip.numpy(), user_prompt=PROMPT, max_new_tokens=4).shape[0] == 1


def test_batch_encoder_window_exports(parts, tmp_path):
    """A model trained with `encoder_window: batch` runs the same shorter window after export."""
    from borealis.hf_remote.modeling_borealis import BorealisForConditionalGeneration as Remote

    ckpt, model = _train(tmp_path, parts, encoder_window="batch")
    clips = _clips()[:2]  # 0.7 + 1.6 s: a 1.6 s window of the 2 s one
    want = model.generate(audio=clips, user_prompt=PROMPT, system_prompt=SYSTEM, max_new_tokens=MAX_NEW)
    exported = export(ckpt, tmp_path / "hf")
    assert json.loads((exported / "config.json").read_text())["encoder_window"] == "batch"
    remote = Remote.from_pretrained(exported)
    assert remote.generate(audio=clips, user_prompt=PROMPT, system_prompt=SYSTEM,
                           max_new_tokens=MAX_NEW).tolist() == want.tolist()
    ids, _, waves, lengths = model._client_batch(clips, PROMPT, SYSTEM)
    with torch.no_grad():
        torch.testing.assert_close(remote.embed(ids, waves, lengths), model.embed(ids, waves, lengths))


@pytest.fixture(scope="module")
def voxtral_run(tmp_path_factory, parts):
    """The flagship setting: the full window of audio tokens (trim_audio_tokens: false)."""
    return _train(tmp_path_factory.mktemp("vox_run"), parts, trim_audio_tokens=False)


def test_voxtral_export_matches_logits_and_greedy_ids(voxtral_run, tmp_path):
    from transformers import VoxtralForConditionalGeneration, WhisperFeatureExtractor

    ckpt, model = voxtral_run
    out = export(ckpt, tmp_path / "vox", format="voxtral")
    assert "auto_map" not in json.loads((out / "config.json").read_text())
    assert not list(out.glob("*.py"))
    voxtral = VoxtralForConditionalGeneration.from_pretrained(out).eval()  # stock class, no remote code
    extractor = WhisperFeatureExtractor.from_pretrained(out)

    clips = _clips()
    chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]
    ids = torch.tensor([model.prompts.encode(chat, num_samples=len(c), generation=True).input_ids for c in clips])
    lengths = torch.tensor([len(c) for c in clips])
    features = extractor([c.numpy() for c in clips], sampling_rate=SR, return_tensors="pt").input_features
    with torch.no_grad():
        ours = model(input_ids=ids, waveforms=torch.nn.utils.rnn.pad_sequence(clips, batch_first=True),
                     audio_lengths=lengths).logits
        theirs = voxtral(input_ids=ids, input_features=features).logits
    assert (ours - theirs).abs().max() < 1e-4, (ours - theirs).abs().max()

    want = model.generate(audio=clips[1], user_prompt=PROMPT, system_prompt=SYSTEM, max_new_tokens=MAX_NEW)
    got = voxtral.generate(input_ids=ids[1:2], input_features=features[1:2], max_new_tokens=MAX_NEW, do_sample=False)
    assert got[0, ids.shape[1]:].tolist() == want[0].tolist()


def test_voxtral_refuses_what_it_cannot_express(trained, tiny_parts, tmp_path):
    ckpt, model = trained
    with pytest.raises(ValueError, match="trim_audio_tokens=True") as err:
        export(ckpt, tmp_path / "vox", format="voxtral")
    assert "375" not in str(err.value) and "25 per 2 s" in str(err.value)  # the tiny window's full count
    assert not (tmp_path / "vox").exists()

    # borealis.testing's tiny Whisper has encoder_ffn_dim = 2 x d_model: Voxtral would stack 2 frames, not 4
    enc, llm = tiny_parts
    half = BorealisForConditionalGeneration.from_parts(str(enc), str(llm), trim_audio_tokens=False)
    assert any("intermediate_size = encoder_ffn_dim = 64" in p for p in voxtral_problems(half))
    deep = BorealisForConditionalGeneration.from_parts(str(enc), str(llm), adapter="deep", trim_audio_tokens=False)
    assert any("adapter='deep'" in p for p in voxtral_problems(deep))

    # a bias Voxtral's projector lacks: zero is exportable (it adds nothing), non-zero is refused
    w_in = model.adapter.w_in
    biased = torch.nn.Linear(w_in.in_features, w_in.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(w_in.weight)
        biased.bias.zero_()
    model.adapter.w_in = biased
    try:
        assert not any("bias" in p for p in voxtral_problems(model))
        with torch.no_grad():
            biased.bias.fill_(0.1)
        assert any("['w_in.bias']" in p for p in voxtral_problems(model))
    finally:
        model.adapter.w_in = w_in


class _Opaque:
    """Stands for any pickled Python object in a checkpoint."""


def test_bad_inputs_fail_clearly(trained, parts, tmp_path, capsys):
    ckpt, _ = trained
    enc, llm = parts
    with pytest.raises(FileNotFoundError, match="missing.ckpt not found"):
        export(tmp_path / "missing.ckpt", tmp_path / "a")
    assert export_main(["--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "a")]) == 2
    assert "not found" in capsys.readouterr().err

    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        export(tmp_path / "plain.pt", tmp_path / "a")
    torch.save({"state_dict": {}, "callback": _Opaque()}, tmp_path / "code.ckpt")
    with pytest.raises(ValueError, match="Python objects beyond tensors.*_Opaque"):
        export(tmp_path / "code.ckpt", tmp_path / "a")  # never unpickled: weights_only=True

    other = tmp_path / "other.yaml"  # trained with r=4, this config says r=8
    other.write_text(f"model:\n  encoder: {enc}\n  llm: {llm}\n  lora: {{r: 8, alpha: 16, dropout: 0.0}}\n")
    with pytest.raises(ValueError, match="does not describe the model this checkpoint was trained as: lora"):
        export(ckpt, tmp_path / "a", config=other)
    stripped = load_checkpoint(ckpt)
    del stripped["hyper_parameters"]  # no stored settings to compare: the weights themselves must not fit
    torch.save(stripped, tmp_path / "bare.ckpt")
    with pytest.raises(ValueError, match=r"checkpoint \(read as adapter='simple', lora=\{'r': 8.*does not match "
                                         r"this model's trainable weights: .*shape mismatch"):
        export(tmp_path / "bare.ckpt", tmp_path / "a", config=other)
    with pytest.raises(ValueError, match="no hyper_parameters; pass --config"):
        export(tmp_path / "bare.ckpt", tmp_path / "a")

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        export(ckpt, tmp_path / "full")
    with pytest.raises(ValueError, match="--keep-adapter is for --format hf"):
        export(ckpt, tmp_path / "a", format="voxtral", keep_adapter=True)
    assert not (tmp_path / "a").exists()


def test_borealis_predict_on_files_gives_the_snippets_text(trained, parts, tmp_path):
    """`borealis predict --data.predict.files` on the clips, from the same checkpoint, writes the
    text the client snippet decodes (the snippet's ids equal in-repo `generate`, above)."""
    import soundfile as sf

    ckpt, model = trained
    enc, llm = parts
    clips = _clips()[:2]  # both inside the 2 s window: one window each
    files = []
    for i, clip in enumerate(clips):
        files.append(str(tmp_path / f"clip{i}.wav"))
        sf.write(files[-1], clip.numpy(), SR, subtype="FLOAT")  # float WAV: the exact samples
    run_cli("predict", "--ckpt_path", str(ckpt), "--model.encoder", str(enc), "--model.llm", str(llm),
            "--model.max_new_tokens", str(MAX_NEW), "--model.report_dir", str(tmp_path / "out"),
            "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--data.num_workers", "0",
            "--data.predict.prompt", PROMPT, "--data.predict.files", json.dumps(files), cwd=tmp_path, timeout=300)
    rows = [json.loads(x) for x in (tmp_path / "out" / "predictions.rank0.jsonl").read_text().splitlines()]
    want = model.generate(audio=clips, user_prompt=PROMPT, system_prompt=SYSTEM, max_new_tokens=MAX_NEW)
    assert [r["file"] for r in rows] == files
    # predict joins a file's window texts word by word (inference.merge_texts), so whitespace is normalised
    assert [r["prediction"] for r in rows] == [" ".join(model.decode(w).split()) for w in want]
    assert all(len(r["windows"]) == 1 for r in rows)


# ---------------------------------------------------------------------- the model card
def _fresh_env(root: Path, packages: list[str]) -> Path:
    """A site folder holding only `packages` and what they require (Requires-Dist, markers and extras
    evaluated), linked from this environment: what `pip install <packages>` gives in a new venv.
    `python -S` with PYTHONPATH=<it> sees nothing else (no .pth files: no editable borealis)."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: dict[str, set[str]] = {}
    todo = [(name, frozenset()) for name in packages]
    while todo:
        name, extras = todo.pop()
        try:
            dist = distribution(name)
        except PackageNotFoundError:  # a requirement this platform's wheels do without
            continue
        key = canonicalize_name(name)
        if key in seen and extras <= seen[key]:
            continue
        seen.setdefault(key, set()).update(extras)
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
                todo.append((req.name, frozenset(req.extras)))
        for file in dist.files or []:  # top-level entries: packages, modules, .libs, dist-info
            top = file.parts[0]
            if top not in ("..", "__pycache__") and not top.endswith(".pth") and not (root / top).exists():
                root.mkdir(parents=True, exist_ok=True)
                if Path(dist.locate_file(top)).exists():
                    (root / top).symlink_to(dist.locate_file(top))
    return root


def _card(export_dir: Path) -> tuple[dict, dict[str, str], str, str]:
    """(front matter, {package: version} of the install line, the python snippet verbatim, the text)."""
    import re

    import yaml

    text = (export_dir / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    (line,) = re.findall(r"^pip install (.+)$", text, flags=re.MULTILINE)
    pins = dict(p.split("==") for p in line.split())
    (snippet,) = re.findall(r"^```python\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)
    return front, pins, snippet, text


def _imported(snippet: str) -> set[str]:
    import ast

    names = set()
    for node in ast.walk(ast.parse(snippet)):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module.split(".")[0])
    return names


def _stereo_22k(path: Path) -> torch.Tensor:
    """A 1.3 s stereo WAV at 22.05 kHz (channels differ); returns the mono 16 kHz wave the model should hear."""
    import soundfile as sf
    import torchaudio.functional as F

    rate = 22050
    t = torch.arange(int(1.3 * rate)) / rate
    g = torch.Generator().manual_seed(5)
    wave = torch.stack([torch.sin(2 * torch.pi * 220 * t), 0.1 * torch.randn(len(t), generator=g)], 1) * 0.3
    sf.write(path, wave.numpy(), rate, subtype="FLOAT")
    return F.resample(wave.mean(dim=1), rate, SR)


@pytest.fixture(scope="module")
def voxtral_export(tmp_path_factory, voxtral_run):
    return export(voxtral_run[0], tmp_path_factory.mktemp("vox_card") / "vox", format="voxtral")


@pytest.mark.parametrize("case", ["merged", "kept", "voxtral"])
def test_model_card_snippet_runs_as_printed_in_a_fresh_environment(case, hf_exports, voxtral_export, trained,
                                                                   voxtral_run, tmp_path):
    """The card's install line pins this environment's versions and the snippet imports nothing else; the
    snippet, copied verbatim, runs on a stereo 22.05 kHz `audio.wav` where only the named packages (and what
    they require) are importable, and prints the text the in-repo model gives for the same audio."""
    from importlib.metadata import version

    export_dir = {"merged": hf_exports[0], "kept": hf_exports[1], "voxtral": voxtral_export}[case]
    model = (voxtral_run if case == "voxtral" else trained)[1]
    front, pins, snippet, text = _card(export_dir)
    assert front["library_name"] == "transformers" and front["language"] == ["ru", "en"]
    assert front["pipeline_tag"] == "audio-text-to-text" and "borealis" in front["tags"]
    named = ["torch", "transformers", "soundfile", "torchaudio"] + (["peft"] if case == "kept" else [])
    assert pins == {name: version(name).split("+")[0] for name in named}  # the versions the export ran with
    assert _imported(snippet) <= set(pins), _imported(snippet)  # the snippet needs nothing the line omits
    assert "torchcodec" in text and "FFmpeg" in text
    assert ("merged into the LLM" in text) == (case != "kept")
    assert ("kept as a peft adapter" in text) == (case == "kept")

    site = _fresh_env(tmp_path / "site", list(pins))
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1",
           "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TRANSFORMERS_VERBOSITY": "error",
           "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}  # the snippet's CPU branch, as `want`
    check = "import " + ", ".join(pins) + "\ntry:\n    import borealis\nexcept ImportError as err:\n    print(err)\n"
    # cwd: not the repository, whose borealis/ `-c` would find
    proc = subprocess.run([sys.executable, "-S", "-c", check], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "No module named 'borealis'", proc.stderr[-3000:]

    work = tmp_path / "work"
    work.mkdir()
    audio = _stereo_22k(work / "audio.wav")
    (work / "snippet.py").write_text(snippet)
    proc = subprocess.run([sys.executable, "-S", "snippet.py"], cwd=work, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = model.decode(model.generate(audio=audio, user_prompt=ASR_PROMPT,
                                       system_prompt=SYSTEM, max_new_tokens=256)[0])
    assert want and proc.stdout.strip() == want


def test_model_card_wer_table_and_model_facts(hf_exports, tmp_path, capsys):
    merged, kept = hf_exports
    text = (merged / "README.md").read_text()
    assert "## Evaluation" in text and "checkpoint `last.ckpt`" in text
    assert "| benchmark | samples | words | this model WER % | whisper `openai/whisper-large-v3` WER % |" in text
    assert "| golos_crowd | 4 | 40 | 12.34 | 25.00 |" in text
    assert "| librispeech_clean | 3 | 40 | 5.00 | 15.00 |" in text
    assert "| **average** | | | **8.67** | **20.00** |" in text
    assert "r=4, alpha=8" in text and "float32" in text and "at most 25 per 2 s window" in text
    assert "## Evaluation" not in (kept / "README.md").read_text()  # no --wer given

    (tmp_path / "bad.json").write_text(json.dumps({"benchmarks": {"x": {"words": 3}}}))
    assert export_main(["--ckpt", "never-read.ckpt", "--out", str(tmp_path / "a"), "--wer",
                        str(tmp_path / "bad.json")]) == 2  # the report is checked before the checkpoint loads
    assert "not a `borealis validate` report: 'benchmarks.x' has no numeric 'wer'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
