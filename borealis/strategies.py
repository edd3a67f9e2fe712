"""FSDP for Borealis: Lightning's `FSDPStrategy` with the settings this model needs, from YAML.

What: `BorealisFSDPStrategy` makes every Whisper encoder layer and every Qwen3 decoder layer
its own FSDP unit (the adapter, embeddings and norms share the root unit), recomputes the
decoder layers' activations in backward, and keeps `use_orig_params=True`, so the frozen base
and the LoRA factors of one layer can share a unit and AdamW holds the original trainable
parameters only (`BorealisLightningModule.configure_optimizers` picks `requires_grad` ones).
Select it with the `configs/distributed/fsdp.yaml` overlay; the layer classes are typed import paths, so
a typo fails when the config is parsed, before any weight loads.

Why a subclass: `class_path: lightning.pytorch.strategies.FSDPStrategy` can express the layer
sets in YAML, but with lightning 2.6 / torch 2.11 that run fails, one way after another:
  * gradient clipping: Lightning's `FSDPPrecision` raises "`gradient_clip_algorithm='norm'`
    is currently not supported for `FSDPPrecision`" for any `trainer.gradient_clip_val`
    (it_fresh clips at 1.0). `BorealisFSDPPrecision` clips through the root's
    `FullyShardedDataParallel.clip_grad_norm_`: the norm over all shards, what DDP clips;
  * buffers: under `bf16-mixed` Lightning casts buffers to bf16 too, and the log-mel then
    fails ("expected scalar type Float but found BFloat16" at the mel filterbank). Buffers
    (Hann window, mel filters, Qwen3's rotary `inv_freq`) stay float32 here; parameters
    still compute in bf16 and gradients are reduced in bf16;
  * dtypes: FSDP flattens each unit into one tensor of one dtype, so the DDP recipe's
    `model.base_dtype: bfloat16` (bf16 frozen base, fp32 LoRA) fails in torch with "Must
    flatten tensors with uniform dtype"; here the error names the setting to change;
  * `use_orig_params` is a pass-through `**kwargs` entry in Lightning that YAML cannot set;
  * CPU (tests, debugging; gloo): Lightning refuses `accelerator: cpu` for its own class,
    torch FSDP refuses `device_id=None` without an accelerator ("FSDP needs a non-CPU
    accelerator device"), and the full state dict's CPU offload frees the gathered weights
    it read when they were on the CPU already (a segfault). The CPU path passes
    `device_id=torch.device("cpu")` and gathers without offload; GPUs take Lightning's code.
  * resume: Lightning's FSDP load puts the weights in itself and drops them from the
    checkpoint dict, where `BorealisLightningModule.on_load_checkpoint` checks the key set;
    the key names are put back;
  * checkpoint size: FSDP's full AdamW state holds each parameter's moments as views into
    the gathered state of its whole unit, frozen part included, and `torch.save` writes a
    view's whole storage; the moments are copied compact, else every checkpoint would carry
    AdamW state of the whole model's size (measured on the tiny test model: 357 kB of
    optimizer state for 117 kB of moments).
Checkpoints are always `full` (one `.ckpt` file, loadable by `borealis validate` on one
device, trainable weights only). Lightning's `sharded` kind loads only into a model whose
every key is in the checkpoint, and the frozen base never is ("Missing key in checkpoint
state_dict: model.model.encoder.conv1.weight"). Launching stays Lightning's (torchrun or
SLURM environment detection); see docs/distributed.md.

Cost: activation checkpointing re-runs each decoder layer's forward in backward (about a
third more LLM compute per step) and keeps one layer's activations instead of all 36. With
frozen and trainable weights in one unit, FSDP (`use_orig_params`) allocates and
reduce-scatters gradients for the whole unit (zeros for the frozen part): under LoRA every
LLM unit, so per step it moves gradients of the LLM's size (~4.5B), where DDP all-reduces
the ~0.55B trainable ones only. FSDP pays off when the model (or the batch) does not fit one
GPU under DDP, not for the 5B LoRA recipe, which does. Each checkpoint gathers, in rank 0's
CPU memory, the full fp32 weights (~20 GB at 5B) and the AdamW moments in buffers of those
units' size (2 x ~18 GB) before the trainable parts are kept: plan ~60 GB of host memory
on the first node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.plugins.precision import FSDPPrecision
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.strategies.fsdp import _move_torchmetrics_to_device, _setup_activation_checkpointing
from lightning_utilities.core.apply_func import apply_to_collection
from torch import nn
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer
from transformers.models.whisper.modeling_whisper import WhisperEncoderLayer


class BorealisFSDPPrecision(FSDPPrecision):
    """`FSDPPrecision` that clips gradients by norm through the FSDP root and keeps buffers
    in float32. `root` is set by `BorealisFSDPStrategy` once the model is wrapped."""

    def __init__(self, precision, scaler=None) -> None:
        super().__init__(precision, scaler)
        self.root: nn.Module | None = None

    @property
    def mixed_precision_config(self):
        config = super().mixed_precision_config
        config.buffer_dtype = torch.float32
        return config

    def clip_grad_by_norm(self, optimizer, clip_val: int | float) -> None:
        if self.root is None:
            raise RuntimeError("BorealisFSDPPrecision.clip_grad_by_norm before the model was wrapped: use it "
                               "through BorealisFSDPStrategy")
        # A collective over the shards: every rank calls it (Lightning clips on every rank).
        self.root.clip_grad_norm_(clip_val)


class BorealisFSDPStrategy(FSDPStrategy):
    """Fully Sharded Data Parallel over Borealis's encoder and decoder layers.

    Args:
        wrap_layers: module classes (import paths in YAML) that each become one FSDP unit.
        checkpoint_layers: module classes whose activations are recomputed in backward
            (activation checkpointing); [] turns it off.
        sharding_strategy: FULL_SHARD shards weights, gradients and optimizer state (ZeRO-3);
            SHARD_GRAD_OP keeps weights gathered between forward and backward (ZeRO-2);
            HYBRID_SHARD shards within a node and replicates across nodes (less inter-node
            traffic, more memory per GPU); NO_SHARD is DDP.
        use_orig_params: keep the original parameters visible to the optimizer; required when
            one unit holds frozen and trainable weights (every LoRA decoder layer does).
        cpu_offload: keep the sharded weights and optimizer state in CPU memory (slow; for
            models that do not fit the GPUs even sharded).
    """

    def __init__(self, wrap_layers: list[type[nn.Module]] = [WhisperEncoderLayer, Qwen3DecoderLayer],  # noqa: B006
                 checkpoint_layers: list[type[nn.Module]] = [Qwen3DecoderLayer],  # noqa: B006
                 sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"] = "FULL_SHARD",
                 use_orig_params: bool = True, cpu_offload: bool = False) -> None:
        problems = [f"{key}: {cls!r} is not a torch.nn.Module subclass"
                    for key, classes in (("wrap_layers", wrap_layers), ("checkpoint_layers", checkpoint_layers))
                    for cls in classes if not (isinstance(cls, type) and issubclass(cls, nn.Module))]
        if not wrap_layers:
            problems.append("wrap_layers is empty: the whole model would be one FSDP unit, gathered in full on "
                            "every rank (no memory saved); name the layer classes to shard")
        if problems:
            raise ValueError("BorealisFSDPStrategy: " + "; ".join(problems))
        super().__init__(auto_wrap_policy=set(wrap_layers),
                         activation_checkpointing_policy=set(checkpoint_layers) if checkpoint_layers else None,
                         sharding_strategy=sharding_strategy, state_dict_type="full",
                         cpu_offload=cpu_offload, use_orig_params=use_orig_params)

    @property
    def precision_plugin(self) -> BorealisFSDPPrecision:
        plugin = self._precision_plugin
        if plugin is None:
            self._precision_plugin = plugin = BorealisFSDPPrecision("32-true")
        return plugin

    @precision_plugin.setter
    def precision_plugin(self, plugin) -> None:
        # The Trainer builds a plain FSDPPrecision from `trainer.precision`; keep its precision and scaler.
        if plugin is not None and type(plugin) is FSDPPrecision:
            plugin = BorealisFSDPPrecision(plugin.precision, plugin.scaler)
        if plugin is not None and not isinstance(plugin, BorealisFSDPPrecision):
            raise TypeError(f"BorealisFSDPStrategy needs a BorealisFSDPPrecision plugin (or none: it is built from "
                            f"trainer.precision), got {type(plugin).__name__}")
        self._precision_plugin = plugin

    def _setup_model(self, model: nn.Module) -> nn.Module:
        _check_dtypes(model)
        if self.root_device.type == "cpu":
            model = self._wrap_on_cpu(model)
        else:
            model = super()._setup_model(model)
        self.precision_plugin.root = model
        return model

    def _wrap_on_cpu(self, model: nn.Module) -> nn.Module:
        """Lightning's `_setup_model` with `device_id=torch.device("cpu")`: torch FSDP refuses
        `device_id=None` when no accelerator is present ("FSDP needs a non-CPU accelerator device")."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                         mixed_precision=self.mixed_precision_config,
                                         sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"),
                                         **self.kwargs)
        _move_torchmetrics_to_device(model, self.root_device)
        _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        return model

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict:
        """Lightning's FSDP load, which loads the weights itself (non-strictly: the frozen base
        is not in the file) and drops them from the returned dict; the key names are put back
        (values None; the load is done) so `on_load_checkpoint` checks them as under DDP."""
        checkpoint = super().load_checkpoint(checkpoint_path, weights_only)
        path = Path(self.broadcast(checkpoint_path))
        if "state_dict" not in checkpoint and path.is_file():
            # mmap: the names only, no tensor data is read
            checkpoint["state_dict"] = dict.fromkeys(torch.load(path, map_location="cpu", mmap=True,
                                                                weights_only=True)["state_dict"])
        return checkpoint

    def optimizer_state(self, optimizer) -> dict:
        """Lightning's full AdamW state, with each tensor copied compact: FSDP hands out every
        parameter's moments as views into the gathered state of its whole unit, frozen part
        included, and `torch.save` writes a view's whole storage, so the checkpoint would
        carry AdamW state of the LLM's size (2 x ~18 GB at 5B), not the trainable part's (2 x 2.2 GB)."""
        state = super().optimizer_state(optimizer)
        return apply_to_collection(state, torch.Tensor, lambda t: t.clone())

    def lightning_module_state_dict(self) -> dict:
        if self.root_device.type != "cpu":
            return super().lightning_module_state_dict()
        # Lightning gathers with offload_to_cpu=True; torch's offload "moves" a CPU tensor to the
        # CPU (a no-op) and then frees its storage, so the state dict reads freed memory (segfault).
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.state_dict_type(self.model, StateDictType.FULL_STATE_DICT,
                                  FullStateDictConfig(offload_to_cpu=False, rank0_only=True)):
            return self.model.state_dict()


def _check_dtypes(model: nn.Module) -> None:
    """FSDP flattens the weights of each unit into one tensor of one dtype; name the setting
    that mixes them rather than let torch fail on the flattening."""
    dtypes = {p.dtype for p in model.parameters()}
    if len(dtypes) > 1:
        frozen = sorted({str(p.dtype) for p in model.parameters() if not p.requires_grad})
        trainable = sorted({str(p.dtype) for p in model.parameters() if p.requires_grad})
        raise ValueError(f"BorealisFSDPStrategy: the model holds weights of several dtypes (frozen: {frozen}, "
                         f"trainable: {trainable}), but FSDP keeps one dtype per unit. Set model.base_dtype: "
                         f"float32 (configs/distributed/fsdp.yaml does): FSDP shards the fp32 weights over the ranks and "
                         f"trainer.precision: bf16-mixed computes in bf16")
