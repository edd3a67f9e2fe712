"""The Borealis model for inference, and the remote code of every exported model.

The `*_borealis.py` files are the only implementation of the log-mel, frame stacking, the
adapters, audio-token counts, prompt encoding, the splice and `generate`. The training
package imports them (`borealis.features`, `adapters`, `prompts`, `modeling`), and
`borealis.export` copies them as they are into every exported directory, where
`AutoModel.from_pretrained(dir, trust_remote_code=True)` loads them on machines without
borealis. So they import only torch, transformers, the standard library and each other
(relatively), and this file imports nothing.
"""
