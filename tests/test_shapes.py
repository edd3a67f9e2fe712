"""The flagship's shapes and counts, measured on Borealis-5B built on the meta device."""

from borealis.shapes import flagship_numbers, format_table, main


def test_flagship_table_matches_the_reference_write_up():
    n = flagship_numbers()
    assert n["encoder_out"] == (1500, 1280)
    assert n["stacked"] == (375, 5120)
    assert n["adapter_out"] == (375, 2560)
    assert n["adapter_params"] == 5120 * 2560 + 2560 * 2560  # 19.66M
    assert round(n["adapter_params"] / 1e6, 2) == 19.66
    assert n["vocab"] == 151669 + 3
    assert n["prompt_tokens_30s"] == 377
    assert 4.8e9 < n["total_params"] < 5.4e9
    # default LoRA (configs/it_fresh.yaml) + adapter lands near the reference write-up's ~500M trainable
    assert 0.45e9 < n["trainable_params"] < 0.6e9
    assert n["trainable_params"] == n["lora_params"] + n["adapter_params"]
    table = format_table(n)
    assert "377" in table and "19.66M" in table


def test_deep_adapter_is_about_80m():
    from borealis.shapes import build_meta_model

    model = build_meta_model(adapter="deep")
    params = sum(p.numel() for p in model.adapter.parameters())
    assert 75e6 < params < 85e6


def test_command_prints_the_table_with_the_lora_rank(capsys):
    main(["--lora-r", "0"])  # full fine-tuning: every LLM weight trains
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["quantity", "measured", "reference"]
    assert "LoRA: None" in out and "375 x 2560" in out


def test_tiny_config_keeps_the_flagship_geometry():
    from borealis.prompts import num_audio_tokens
    from borealis.shapes import tiny_config, whisper_large_v3_config

    config, flagship = tiny_config(trim_audio_tokens=False), whisper_large_v3_config()
    enc = config.encoder_config
    assert (enc.max_source_positions, enc.num_mel_bins) == (flagship.max_source_positions, flagship.num_mel_bins)
    assert num_audio_tokens(30 * 16000, downsample_factor=config.downsample_factor,
                            max_source_positions=enc.max_source_positions, trim=False) == 375
    assert config.lora["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"]
