"""`generate(synced_gpus=True)`: the forwards a rank runs do not depend on its own batch.

Under sharded weights (FSDP) every forward of a layer is a collective, so a rank that ran fewer
forwards than another (its rows finished first, its batch had no shared prefix or no audio)
deadlocks the group. One process stands in for a rank here: a gloo group of one whose
all-reduce adds the flag of a fake second rank that is still running for `peer_steps` more
steps. Forward hooks on the first decoder and encoder layer count the forwards. The 2-rank FSDP
fit that validates inside the fit is tests/test_strategies.py::test_fsdp_on_two_cpu_ranks.
"""

import pytest
import torch
import torch.distributed as dist
from transformers import LogitsProcessor, LogitsProcessorList

from borealis.prompts import AUDIO_PLACEHOLDER

SR = 16000


class EndAfter(LogitsProcessor):
    """Every row's token number `n` (1-based) is the end token: the rows finish together, early."""

    def __init__(self, n: int, eos: int) -> None:
        self.n, self.eos, self.step = n, eos, 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.step += 1
        if self.step == self.n:
            scores = torch.full_like(scores, -float("inf"))
            scores[:, self.eos] = 0.0
        return scores


@pytest.fixture()
def one_rank_group(monkeypatch):
    """A gloo group of one; returns a setter for how many more steps a fake peer keeps running, and
    the list of flags the all-reduces returned."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    real = dist.all_reduce
    state = {"peer_steps": 0, "flags": []}

    def all_reduce(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
        work = real(tensor, op=op, group=group, async_op=async_op)
        if state["peer_steps"] > 0:  # the peer's "still running" flag joins the sum
            state["peer_steps"] -= 1
            tensor += 1
        state["flags"].append(float(tensor))
        return work

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    yield state
    dist.destroy_process_group()


def _count_forwards(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _audio_batch(model):
    g = torch.Generator().manual_seed(3)
    clips = [torch.randn(int(s * SR), generator=g) * 0.1 for s in (0.5, 1.1)]
    ids, mask, waves, lengths = model._client_batch(clips, f"Transcribe. {AUDIO_PLACEHOLDER}", "Be brief.")
    return dict(input_ids=ids, attention_mask=mask, waveforms=waves, audio_lengths=lengths)


def test_synced_generation_steps_until_the_peer_is_done_with_the_same_tokens(tiny_model, one_rank_group):
    model = tiny_model.eval()
    with torch.no_grad():
        for p in model.adapter.parameters():
            p.normal_(std=0.5)  # make the output depend strongly on the audio
    eos = model.prompts.eos_token_id
    batch = _audio_batch(model)
    decoder = _count_forwards(model.llm.get_decoder().layers[0])

    def generate(**kwargs):
        decoder[0] = 0
        ids = model.generate(**batch, max_new_tokens=8, logits_processor=LogitsProcessorList([EndAfter(3, eos)]),
                             **kwargs)
        return ids, decoder[0]

    alone, alone_forwards = generate()
    assert alone.shape == (2, 3) and alone[:, -1].tolist() == [eos, eos]  # the rows end at token 3
    assert alone_forwards == 1 + 3  # the shared-prefix pass, then one forward per token
    assert one_rank_group["flags"] == []  # no all-reduce without synced_gpus

    synced, synced_forwards = generate(synced_gpus=True)
    assert synced.tolist() == alone.tolist()
    assert synced_forwards == 3  # no shared-prefix pass: the whole prompt is the first forward
    assert one_rank_group["flags"][-1] == 0.0  # every rank finished: the loop ended on the all-reduce

    one_rank_group["peer_steps"] = 3 + 4  # the peer runs 4 steps past this rank's 3
    one_rank_group["flags"].clear()
    waited, waited_forwards = generate(synced_gpus=True)
    assert waited.tolist() == alone.tolist()  # the steps run for the peer are discarded
    assert waited_forwards == 3 + 4
    assert one_rank_group["flags"] == [2.0] * 3 + [1.0] * 4 + [0.0]  # both running, the peer alone, all finished
    assert model.decode(waited[0]) == model.decode(alone[0])


def test_synced_generation_without_audio_still_runs_the_encoder(tiny_model, one_rank_group):
    """A rank whose batch has no clip joins the encoder layers' forwards the ranks with audio run."""
    model = tiny_model.eval()
    encoder = _count_forwards(model.encoder.layers[0])
    chat = [{"role": "user", "content": "Say something."}]
    ids = torch.tensor([model.prompts.encode(chat, num_samples=None, generation=True).input_ids])
    plain = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3)
    assert encoder[0] == 0
    synced = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, synced_gpus=True)
    assert encoder[0] == 1
    assert synced.tolist() == plain.tolist()
