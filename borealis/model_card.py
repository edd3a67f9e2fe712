"""The model card: the `README.md` that `borealis export` writes into every exported folder.

What: a Hugging Face card (YAML front matter, then Markdown) that says what the model is
(encoder, adapter, LLM, LoRA merged or kept, audio tokens, dtype, parameter counts), its WER
table from the `wer.json` of `borealis validate` when `--wer` gives one, the `pip install` line
with the exact versions the export was made with, and a snippet that runs as printed.

Why: a published folder is used where Borealis is not installed, by someone who knows only
what the card says. The snippet reads audio with soundfile, not `torchaudio.load`: torchaudio
2.11 decodes files through torchcodec, which needs FFmpeg's shared libraries, so
`torchaudio.load` fails in an environment built from pip packages alone; soundfile's wheel
bundles libsndfile (WAV, FLAC, OGG, MP3). torchaudio stays in the install line for the one job
it does there: resampling to 16 kHz on the tensor (`torchaudio.functional.resample`).
tests/test_export.py runs each format's snippet in an environment holding only the packages the
card names and what they require.

Cost: a few kilobytes of text; the parameter counts walk the model's parameters once.
"""

from __future__ import annotations

import json
import math
from importlib.metadata import version
from pathlib import Path

import yaml

from borealis.features import SAMPLE_RATE
from borealis.prompts import (ASR_PROMPTS, AUDIO_END, AUDIO_PLACEHOLDER, AUDIO_START, AUDIO_TOKEN,
                              DEFAULT_SYSTEM_PROMPT, IM_END, IM_START)

# What the snippet needs, by pip name; peft joins them for a kept LoRA adapter (the remote code applies it).
CLIENT_PACKAGES = ("torch", "transformers", "soundfile", "torchaudio")
CARD_NAME = "README.md"


# ---------------------------------------------------------------------- inputs
def read_wer(path: str | Path) -> dict:
    """The report `borealis validate` writes (`metrics.write_report`), checked; a ValueError names every problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--wer {path} not found; pass the wer.json that `borealis validate` wrote")
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"--wer {path} is not JSON ({err}); pass the wer.json that `borealis validate` wrote") from err
    problems = []
    if not isinstance(report, dict):
        problems.append(f"the top level is a {type(report).__name__}, not an object")
    else:
        tables = {"benchmarks": report.get("benchmarks")}
        baselines = report.get("baselines") or {}
        tables.update({f"baselines.{k}.benchmarks": (v or {}).get("benchmarks") if isinstance(v, dict) else None
                       for k, v in (baselines.items() if isinstance(baselines, dict) else [("?", None)])})
        for key, table in tables.items():
            if not isinstance(table, dict) or not table:
                problems.append(f"'{key}' is missing or empty (want {{benchmark: {{wer, words, samples, ...}}}})")
                continue
            problems += [f"'{key}.{name}' has no numeric 'wer'" for name, row in table.items()
                         if not isinstance(row, dict) or not isinstance(row.get("wer"), (int, float))]
    if problems:
        raise ValueError(f"--wer {path} is not a `borealis validate` report: " + "; ".join(problems))
    return report


def installed_versions(names: tuple[str, ...]) -> dict[str, str]:
    """The versions of `names` in this environment, without a local part (`2.11.0+cu130` -> `2.11.0`: PyPI's)."""
    return {name: version(name).split("+")[0] for name in names}


def parameter_counts(model) -> dict[str, int]:
    """Parameters per part (shared tensors once): encoder, adapter, llm, and lora (0 when merged or absent)."""
    counts = {"encoder": 0, "adapter": 0, "llm": 0, "lora": 0}
    for name, p in model.named_parameters():
        part = "lora" if ".lora_" in name else name.split(".")[0]
        counts[part] = counts.get(part, 0) + p.numel()
    return counts


# ---------------------------------------------------------------------- pieces
def _millions(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n:,}"


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def wer_markdown(report: dict) -> str:
    """The report as a Markdown table: a row per benchmark plus the average, a WER (%) column per model."""
    columns = [("this model", report["benchmarks"], report.get("avg"))]
    for name, base in (report.get("baselines") or {}).items():
        columns.append((f"{name} `{base.get('model', '?')}`", base["benchmarks"], base.get("avg")))
    names = list(report["benchmarks"]) + [b for _, t, _ in columns[1:] for b in t if b not in report["benchmarks"]]
    lines = ["| benchmark | samples | words | " + " | ".join(f"{c} WER %" for c, _, _ in columns) + " |",
             "|---|---:|---:|" + "---:|" * len(columns)]
    for name in names:
        row = report["benchmarks"].get(name, {})
        lines.append(f"| {name} | {row.get('samples', '-')} | {row.get('words', '-')} | "
                     + " | ".join(_pct(t.get(name, {}).get("wer")) for _, t, _ in columns) + " |")
    lines.append("| **average** | | | " + " | ".join(f"**{_pct(avg)}**" for _, _, avg in columns) + " |")
    return "\n".join(lines)


_READ_AUDIO = f"""\
wave, rate = sf.read("audio.wav", dtype="float32", always_2d=True)  # (samples, channels), any rate
audio = torch.from_numpy(wave).mean(dim=1)  # mono
if rate != {SAMPLE_RATE}:
    audio = F.resample(audio, rate, {SAMPLE_RATE})  # the model hears {SAMPLE_RATE // 1000} kHz
"""


def hf_snippet(model_ref: str, system_prompt: str) -> str:
    """The client snippet of a remote-code export (DESIGN.md's client interface)."""
    prompt = f"{ASR_PROMPTS['default']} {AUDIO_PLACEHOLDER}"
    return f"""\
import soundfile as sf
import torch
import torchaudio.functional as F
from transformers import AutoModel

MODEL = {json.dumps(model_ref)}  # this folder, or its hub id once uploaded
device = "cuda" if torch.cuda.is_available() else "cpu"
model = AutoModel.from_pretrained(MODEL, trust_remote_code=True, device=device)

{_READ_AUDIO}
ids = model.generate(audio=audio, user_prompt={json.dumps(prompt, ensure_ascii=False)},
                     system_prompt={json.dumps(system_prompt, ensure_ascii=False)}, max_new_tokens=256)
print(model.decode(ids[0]))
"""


def voxtral_snippet(model_ref: str, system_prompt: str, audio_tokens: int, seconds: float) -> str:
    """Stock Voxtral on Borealis' ChatML prompt, its pieces tokenised one by one as in training."""
    user = json.dumps(f"{ASR_PROMPTS['default']} {AUDIO_START}", ensure_ascii=False)
    turns = ([[json.dumps(f"{IM_START}system\n"), json.dumps(system_prompt + IM_END, ensure_ascii=False),
               json.dumps("\n")]] if system_prompt else [])  # "" trains without a system turn
    turns.append([json.dumps(f"{IM_START}user\n"), "user", json.dumps("\n"), json.dumps(f"{IM_START}assistant\n")])
    pieces = ",\n          ".join(", ".join(turn) for turn in turns)  # a line per turn
    return f"""\
import soundfile as sf
import torch
import torchaudio.functional as F
from transformers import AutoTokenizer, VoxtralForConditionalGeneration, WhisperFeatureExtractor

MODEL = {json.dumps(model_ref)}  # this folder, or its hub id once uploaded
device = "cuda" if torch.cuda.is_available() else "cpu"
model = VoxtralForConditionalGeneration.from_pretrained(MODEL).to(device)
tokenizer = AutoTokenizer.from_pretrained(MODEL)
extractor = WhisperFeatureExtractor.from_pretrained(MODEL)

{_READ_AUDIO}
# the log-mel of the first {seconds:g} s
features = extractor(audio.numpy(), sampling_rate={SAMPLE_RATE}, return_tensors="pt").input_features
# Borealis' ChatML prompt: {audio_tokens} audio slots per {seconds:g} s window, each piece tokenised on its own
user = {user} + "{AUDIO_TOKEN}" * {audio_tokens} + "{AUDIO_END}{IM_END}"
pieces = [{pieces}]
input_ids = torch.tensor([sum((tokenizer(p, add_special_tokens=False).input_ids for p in pieces), [])])
out = model.generate(input_ids=input_ids.to(device), input_features=features.to(device, model.dtype),
                     max_new_tokens=256, do_sample=False)
print(tokenizer.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True).strip())
"""


def system_prompt(settings: dict) -> str:
    """The system turn the model was trained with ("" for none), as the export's config holds it."""
    return DEFAULT_SYSTEM_PROMPT if settings.get("system_prompt") is None else settings["system_prompt"]


def _front_matter(settings: dict, format: str) -> str:
    hub_ids = [str(settings[k]) for k in ("encoder", "llm")
               if str(settings[k]).count("/") == 1 and not Path(str(settings[k])).exists()]
    meta = {"library_name": "transformers", "pipeline_tag": "audio-text-to-text", "language": ["ru", "en"],
            "tags": ["borealis", "audio", "speech", "automatic-speech-recognition", "whisper",
                     "custom_code" if format == "hf" else "voxtral"]}
    if hub_ids:
        meta["base_model"] = hub_ids
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _model_lines(model, settings: dict, format: str, keep_adapter: bool, dtype: str, counts: dict) -> list[str]:
    cfg = model.config
    k, window = cfg.downsample_factor, model.features.max_seconds
    full = -(-cfg.encoder_config.max_source_positions // k)
    lora = settings.get("lora")
    if not lora:
        lora_line = "none: the whole LLM was trained"
    elif keep_adapter:
        lora_line = (f"r={lora['r']}, alpha={lora['alpha']} on {', '.join(lora['target_modules'])}; kept as a peft "
                     f"adapter in `lora/` ({_millions(counts['lora'])} parameters), applied on load (needs peft)")
    else:
        lora_line = (f"r={lora['r']}, alpha={lora['alpha']} on {', '.join(lora['target_modules'])}; "
                     f"merged into the LLM")
    tokens = (f"the clip's length: ceil(mel frames / {2 * k}), at most {full} per {window:g} s window"
              if cfg.trim_audio_tokens else f"always {full} per {window:g} s window")
    total = counts["encoder"] + counts["adapter"] + counts["llm"] + (counts["lora"] if keep_adapter else 0)
    return [
        "- **Format**: " + ("Borealis remote code (`trust_remote_code=True`), torch + transformers only"
                            if format == "hf" else "stock `VoxtralForConditionalGeneration`, no remote code"),
        (f"- **Audio encoder**: Whisper encoder from `{settings['encoder']}` ({cfg.encoder_config.encoder_layers} "
         f"layers, d_model {cfg.encoder_config.d_model}, {window:g} s window), "
         + ("frozen in training" if cfg.freeze_encoder else "trained")),
        f"- **Adapter**: {k} encoder frames stacked, then the `{cfg.adapter}` adapter into the LLM's embeddings",
        f"- **Audio tokens**: {tokens}",
        (f"- **LLM**: `{settings['llm']}` ({type(model.llm).__name__}, {cfg.llm_config.num_hidden_layers} layers, "
         f"hidden {cfg.llm_config.hidden_size})"),
        f"- **LoRA**: {lora_line}",
        (f"- **Weights**: {dtype}; parameters: encoder {_millions(counts['encoder'])}, adapter "
         f"{_millions(counts['adapter'])}, LLM {_millions(counts['llm'])}, total {_millions(total)}"),
        (f"- **Prompt**: ChatML; system prompt {json.dumps(system_prompt(settings), ensure_ascii=False)}; "
         "instructions used in training: " + ", ".join(f"`{p}` ({lang})" for lang, p in ASR_PROMPTS.items()
                                                       if lang != "default")),
    ]


# ---------------------------------------------------------------------- the card
def model_card(model, settings: dict, *, out: str | Path, format: str, keep_adapter: bool, dtype: str,
               source: str, wer: dict | None = None, counts: dict | None = None) -> str:
    """The card's Markdown for `model` exported to `out` (its path as the user gave it goes into the snippet).

    `counts` are `parameter_counts(model)` taken before LoRA was merged; `wer` is `read_wer`'s report.
    """
    counts = counts or parameter_counts(model)
    packages = CLIENT_PACKAGES + (("peft",) if keep_adapter else ())
    pins = installed_versions(packages)
    ref, system = str(out), system_prompt(settings)
    window = model.features.max_seconds
    if format == "hf":
        snippet = hf_snippet(ref, system)
        usage = (f"`model.generate` also takes a list of clips (a batch) and returns one row of ids per clip. "
                 f"The model hears the first {window:g} s of a clip; cut longer audio into pieces "
                 f"(`borealis predict --data.predict.files` cuts at pauses).")
    else:
        full = -(-model.config.encoder_config.max_source_positions // model.config.downsample_factor)
        snippet = voxtral_snippet(ref, system, full, window)
        usage = (f"Voxtral's own processor expects a Mistral tokenizer and does not apply: the prompt is Borealis' "
                 f"ChatML with `{AUDIO_START}` + {full} `{AUDIO_TOKEN}` + `{AUDIO_END}` per {window:g} s clip, and "
                 f"the log-mel comes from this folder's `WhisperFeatureExtractor`.")
    name = Path(ref).name or ref
    parts = [
        _front_matter(settings, format),
        f"# {name}\n",
        ("A Russian/English audio-language model trained with Borealis: a Whisper encoder hears the audio, an "
         "adapter turns it into LLM embeddings, and the LLM answers the prompt (a transcript for an ASR "
         f"instruction). Exported by `borealis export` from `{source}`.\n"),
        "## Model\n", "\n".join(_model_lines(model, settings, format, keep_adapter, dtype, counts)) + "\n",
    ]
    if wer is not None:
        parts += ["## Evaluation\n",
                  (f"Word error rate (%) measured by `borealis validate` on checkpoint "
                   f"`{wer.get('checkpoint', '?')}`: corpus-level per benchmark after Whisper's basic normaliser "
                   "(ё folded into е); the average is the unweighted mean over benchmarks.\n"),
                  wer_markdown(wer) + "\n"]
    parts += [
        "## Install\n",
        "```bash\npip install " + " ".join(f"{k}=={v}" for k, v in pins.items()) + "\n```\n",
        ("These are the versions the export was made with. Audio is read with soundfile, whose wheel bundles "
         "libsndfile (WAV, FLAC, OGG, MP3). `torchaudio.load` is not used: torchaudio 2.11 reads files through "
         "torchcodec, which needs FFmpeg's shared libraries, absent from a plain pip environment. torchaudio "
         f"resamples to {SAMPLE_RATE // 1000} kHz."
         + (" peft applies the LoRA adapter in `lora/` on load." if keep_adapter else "") + "\n"),
        "## Use\n",
        "Put a recording at `audio.wav` (any rate, mono or stereo) and run:\n",
        "```python\n" + snippet + "```\n",
        usage + "\n",
    ]
    return "\n".join(parts)


def write_card(out: Path, text: str) -> Path:
    """Write the card as `out/README.md`."""
    path = Path(out) / CARD_NAME
    path.write_text(text, encoding="utf-8")
    return path
