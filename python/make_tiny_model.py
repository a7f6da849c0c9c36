"""Makes a tiny random-weight Llama with its own tokenizer, offline (no hub),
for the orchestrator's vLLM tests and demo.

Usage: python make_tiny_model.py OUT_DIR [--large]

bfloat16, 2 layers, hidden 128, 4 heads (head size 32: vLLM's CPU attention
accepts 32, 64, 80, 96 and up), 2 KV heads, vocabulary 512; a byte-level BPE
tokenizer trained here on a built-in text, and a chat template. Under 1 MB.

--large: the same tokenizer, 16 layers, hidden 1536, 12 heads (head size
128), 6 KV heads, intermediate 4608, vocabulary 32256 (tensor parallel 3
divides them all): about 551M parameters, 1.1 GB of safetensors in three
shards, for `cargo xtask bench coldstart`.
"""
import os
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

out = sys.argv[1]
large = "--large" in sys.argv[2:]
os.makedirs(out, exist_ok=True)

text = [
    "The orchestrator starts Ray, waits for every node, then serves the model.",
    "A readiness policy decides when the cluster is ready; a health policy keeps it healthy.",
    "ping pong hello world tensor parallel pipeline parallel placement group",
] * 50
tokenizer = Tokenizer(models.BPE())
tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tokenizer.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(
    vocab_size=512,
    special_tokens=["<s>", "</s>", "<unk>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
)
tokenizer.train_from_iterator(text, trainer)

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
import torch

fast = PreTrainedTokenizerFast(
    tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
)
fast.chat_template = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
fast.save_pretrained(out)

sizes = dict(
    vocab_size=fast.vocab_size if fast.vocab_size >= 512 else 512,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)
if large:
    sizes = dict(
        vocab_size=32256,
        hidden_size=1536,
        intermediate_size=4608,
        num_hidden_layers=16,
        num_attention_heads=12,
        num_key_value_heads=6,
    )
config = LlamaConfig(
    **sizes,
    max_position_embeddings=512,
    bos_token_id=fast.bos_token_id,
    eos_token_id=fast.eos_token_id,
    torch_dtype="bfloat16",
)
torch.manual_seed(0)
torch.set_default_dtype(torch.bfloat16)
model = LlamaForCausalLM(config).to(torch.bfloat16)
model.save_pretrained(out, max_shard_size="400MB")
print(f"{'large' if large else 'tiny'} model written to {out}")
